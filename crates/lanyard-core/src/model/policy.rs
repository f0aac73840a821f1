//! Per-group policy (DESIGN §6).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{CertSlot, KeyAlgorithm};
use crate::macros::string_enum;

string_enum! {
    /// How the FIDO2 PIN of a security key is set during issuance (DESIGN §2 B).
    pub enum FidoPinMode ("FIDO PIN mode") {
        /// Issuance leaves the key's FIDO application alone.
        None = "none",
        /// During issuance, before the device PIN, the holder sets a FIDO PIN of their own.
        Independent = "independent",
        /// Lanyard sets a random temporary FIDO PIN for the passkey registration made during
        /// issuance; the device PIN the holder sets at Change PIN becomes the FIDO PIN too.
        Shared = "shared",
        /// Lanyard sets a random FIDO PIN with CTAP 2.1's forcePINChange, shown once; the key
        /// gives no PIN token until the holder changes it.
        Temporary = "temporary",
    }
}

impl FidoPinMode {
    /// Whether issuance sets a FIDO PIN at all.
    pub fn sets_pin(self) -> bool {
        self != FidoPinMode::None
    }
}

/// The shortest and longest FIDO PIN minimum a policy may ask for (CTAP 2.1: a PIN has at least
/// 4 code points and at most 63 bytes).
pub const FIDO_MIN_PIN_LENGTH_RANGE: std::ops::RangeInclusive<u8> = 4..=63;

/// Policies stored before `fido_min_pin_length` existed get this: six, the shortest PIV PIN, so
/// that a device PIN always fits as the FIDO PIN (`shared`), and the six digits SP 800-63B asks of
/// an authenticator's activation PIN, where CTAP's own floor of four is weaker.
pub const DEFAULT_FIDO_MIN_PIN_LENGTH: u8 = 6;

const fn default_fido_min_pin_length() -> u8 {
    DEFAULT_FIDO_MIN_PIN_LENGTH
}

fn default_fido_pin_mode() -> FidoPinMode {
    FidoPinMode::None
}

string_enum! {
    /// Whether the portal shows the initial PIN after issuance (for a Pending card an operator
    /// may need to deliver it).
    pub enum InitialPinDisplay ("initial PIN display") {
        Shown = "shown",
        Hidden = "hidden",
    }
}

/// PIN rules. PINs are digits only; PIV allows 6–8 of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PinRules {
    /// 6..=8.
    pub min_len: u8,
    /// 6..=8 and at least `min_len`.
    pub max_len: u8,
    /// Refuse all-same (`111111`) and consecutive runs (`123456`, `654321`, `890123`).
    pub forbid_trivial: bool,
}

impl Default for PinRules {
    fn default() -> Self {
        Self { min_len: 6, max_len: 8, forbid_trivial: true }
    }
}

/// Which certificate profile and key algorithm a slot gets, and for how long.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SlotProfile {
    /// The CA's certificate profile name, e.g. `"piv-auth"`.
    pub profile: String,
    pub algorithm: KeyAlgorithm,
    /// Certificate validity in days, 1..=3650.
    pub validity_days: u16,
}

/// A group's policy. `Policy::default()` is a sensible, valid starting point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Policy {
    /// Whether members may add a smart card / USB key themselves.
    pub may_add_device: bool,
    /// How many smart cards / USB keys (mobiles do not count) a member may hold at once, 1..=20.
    /// Devices count while Issuing, Pending, Active or Suspended.
    pub max_devices: u8,
    /// Whether members may add a mobile through a configuration profile (flow D: the phone
    /// enrols a device certificate over SCEP).
    pub may_add_mobile: bool,
    /// Whether members may enrol a derived PIV credential on a phone (flow C, NIST SP 800-157).
    #[serde(default = "yes")]
    pub may_add_derived_piv: bool,
    /// How many mobiles (profile or derived) a member may have at once, 1..=20. Mobiles count
    /// while Enrolling, Active or Suspended.
    #[serde(default = "default_max_mobiles")]
    pub max_mobiles: u8,
    /// Whether a derived PIV enrollment must be sponsored by an existing PIV card. Without it,
    /// derived credentials may be enrolled only in person or supervised (SP 800-157r1 §2.2.3).
    pub derived_piv_requires_sponsor: bool,
    /// How issuance sets a security key's FIDO PIN: `none` (default), `independent`, `shared`,
    /// `temporary`.
    #[serde(default = "default_fido_pin_mode")]
    pub fido_pin_mode: FidoPinMode,
    /// The minimum FIDO PIN length issuance sets on the key (authenticatorConfig
    /// setMinPINLength), 4..=63, default 6. In `shared` mode the device PIN becomes the FIDO
    /// PIN, so `pin.min_len` must be at least this.
    #[serde(default = "default_fido_min_pin_length")]
    pub fido_min_pin_length: u8,
    pub pin: PinRules,
    pub initial_pin_display: InitialPinDisplay,
    /// Certificates to issue, per slot. A missing optional slot (9C, 9D, 9E) is simply not issued;
    /// 9A is required; derived PIV and mobile slots are required when mobiles are allowed.
    pub certificates: BTreeMap<CertSlot, SlotProfile>,
    /// Card models that may be issued, compared exactly with what the agent reports.
    pub accepted_card_models: Vec<String>,
    /// Days after remote (derived PIV) issuance when the parent card's status is checked again,
    /// 1..=365: a sponsor card reported lost, stolen or compromised within this window revokes
    /// the derived credentials it sponsored in it (when `derived_revoke_on_card_loss`).
    pub derived_recheck_days: u16,
    /// Whether a sponsor card reported lost, stolen or compromised revokes the derived credentials
    /// it sponsored in the preceding `derived_recheck_days` (SP 800-157r1's default review
    /// outcome). Older ones, and all of them on a routine replacement, stay: they follow the
    /// identity account, not the card.
    #[serde(default = "yes")]
    pub derived_revoke_on_card_loss: bool,
    /// How long a one-time mobile enrolment code (QR code / link) stays valid, in minutes, 1..=10:
    /// iOS discards a downloaded configuration profile that is not installed after about eight.
    #[serde(default = "default_enrollment_code_minutes")]
    pub enrollment_code_minutes: u8,
    /// Password, passkey or either for portal sign-in, and whether passkeys must verify the user
    /// ([`super::SignInPolicy`]). Policies stored before passkeys existed get the default.
    #[serde(default)]
    pub sign_in: super::SignInPolicy,
}

fn yes() -> bool {
    true
}

fn default_max_mobiles() -> u8 {
    3
}

/// Policies stored before `enrollment_code_minutes` existed get this.
const fn default_enrollment_code_minutes() -> u8 {
    10
}

impl Default for Policy {
    fn default() -> Self {
        let p = |profile: &str, validity_days| SlotProfile {
            profile: profile.to_owned(),
            algorithm: KeyAlgorithm::P256,
            validity_days,
        };
        Self {
            may_add_device: true,
            max_devices: 2,
            may_add_mobile: true,
            may_add_derived_piv: true,
            max_mobiles: default_max_mobiles(),
            derived_piv_requires_sponsor: true,
            fido_pin_mode: FidoPinMode::None,
            fido_min_pin_length: DEFAULT_FIDO_MIN_PIN_LENGTH,
            pin: PinRules::default(),
            initial_pin_display: InitialPinDisplay::Hidden,
            certificates: BTreeMap::from([
                (CertSlot::PivAuthentication, p("piv-auth", 365)),
                (CertSlot::DigitalSignature, p("digital-signature", 365)),
                (CertSlot::KeyManagement, p("key-management", 365)),
                (CertSlot::CardAuthentication, p("card-auth", 365)),
                (CertSlot::DerivedPivAuthentication, p("derived-piv-auth", 365)),
                // Configuration profiles enrol over SCEP, which takes RSA keys only.
                (
                    CertSlot::MobileDevice,
                    SlotProfile { algorithm: KeyAlgorithm::Rsa2048, ..p("mobile-device", 365) },
                ),
            ]),
            accepted_card_models: vec!["YubiKey 5".to_owned(), "Lanyard virtual card".to_owned()],
            derived_recheck_days: 7,
            derived_revoke_on_card_loss: true,
            enrollment_code_minutes: default_enrollment_code_minutes(),
            sign_in: super::SignInPolicy::default(),
        }
    }
}

/// One broken policy rule.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PolicyError {
    #[error("max_devices must be between 1 and 20, got {0}")]
    MaxDevicesOutOfRange(u8),
    #[error("pin.min_len must be between 6 and 8, got {0}")]
    PinMinLenOutOfRange(u8),
    #[error("pin.max_len must be between 6 and 8, got {0}")]
    PinMaxLenOutOfRange(u8),
    #[error("pin.max_len ({max}) must not be less than pin.min_len ({min})")]
    PinMaxBelowMin { min: u8, max: u8 },
    #[error("certificates.{0} is required (every card gets a PIV Authentication certificate)")]
    MissingPivAuthentication(CertSlot),
    #[error("certificates.{0} is required while {1} is true")]
    MissingMobileProfile(CertSlot, &'static str),
    #[error("max_mobiles must be between 1 and 20, got {0}")]
    MaxMobilesOutOfRange(u8),
    #[error("certificates.{slot}.profile must be 1-64 characters without spaces or control characters")]
    BadProfileName { slot: CertSlot },
    #[error("certificates.{slot}.validity_days must be between 1 and 3650, got {days}")]
    ValidityOutOfRange { slot: CertSlot, days: u16 },
    #[error("certificates.{slot}.algorithm {algorithm} is not allowed for this slot ({reason})")]
    AlgorithmNotAllowed { slot: CertSlot, algorithm: KeyAlgorithm, reason: &'static str },
    #[error("accepted_card_models is empty, so no card could be issued while may_add_device is true")]
    NoCardModels,
    #[error("accepted_card_models[{index}] must be 1-64 characters without control characters")]
    BadCardModel { index: usize },
    #[error("accepted_card_models lists {0:?} twice")]
    DuplicateCardModel(String),
    #[error("derived_recheck_days must be between 1 and 365, got {0}")]
    RecheckDaysOutOfRange(u16),
    #[error(
        "enrollment_code_minutes must be between 1 and 10 (iOS drops a downloaded profile after about 8), got {0}"
    )]
    EnrollmentCodeMinutesOutOfRange(u8),
    #[error("fido_min_pin_length must be between 4 and 63, got {0}")]
    FidoMinPinLengthOutOfRange(u8),
    #[error(
        "fido_min_pin_length ({fido}) must not exceed pin.min_len ({piv}) in shared mode, where the device PIN becomes the FIDO PIN"
    )]
    FidoMinAbovePivMin { fido: u8, piv: u8 },
}

impl PolicyError {
    /// The policy field at fault, as the JSON (and the portal's form) names it: `max_devices`,
    /// `pin.min_len`, `certificates.9c`, `accepted_card_models`…
    pub fn field(&self) -> String {
        match self {
            Self::MaxDevicesOutOfRange(_) => "max_devices".into(),
            Self::PinMinLenOutOfRange(_) => "pin.min_len".into(),
            Self::PinMaxLenOutOfRange(_) | Self::PinMaxBelowMin { .. } => "pin.max_len".into(),
            Self::MaxMobilesOutOfRange(_) => "max_mobiles".into(),
            Self::MissingPivAuthentication(slot) | Self::MissingMobileProfile(slot, _) => {
                format!("certificates.{slot}")
            }
            Self::BadProfileName { slot } => format!("certificates.{slot}.profile"),
            Self::ValidityOutOfRange { slot, .. } => format!("certificates.{slot}.validity_days"),
            Self::AlgorithmNotAllowed { slot, .. } => format!("certificates.{slot}.algorithm"),
            Self::NoCardModels | Self::BadCardModel { .. } | Self::DuplicateCardModel(_) => {
                "accepted_card_models".into()
            }
            Self::RecheckDaysOutOfRange(_) => "derived_recheck_days".into(),
            Self::EnrollmentCodeMinutesOutOfRange(_) => "enrollment_code_minutes".into(),
            Self::FidoMinPinLengthOutOfRange(_) | Self::FidoMinAbovePivMin { .. } => {
                "fido_min_pin_length".into()
            }
        }
    }
}

/// Every broken rule of a policy, in a stable order. Displays one per line.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "invalid policy ({n} problem{}):", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            write!(f, "\n- {e}")?;
        }
        Ok(())
    }
}

/// A PIN that the rules refuse.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PinRuleError {
    #[error("PIN must contain digits only")]
    NotDigits,
    #[error("PIN must have at least {min} digits, got {len}")]
    TooShort { min: u8, len: usize },
    #[error("PIN must have at most {max} digits, got {len}")]
    TooLong { max: u8, len: usize },
    #[error("PIN must not repeat one digit (like 111111)")]
    AllSame,
    #[error("PIN must not be a run of consecutive digits (like 123456 or 654321)")]
    Sequential,
}

/// What a FIDO PIN the holder chooses must be: at least `min_len` characters (Unicode code
/// points, as CTAP counts them), at most 63 bytes of UTF-8, no NUL; an all-digit PIN is also held
/// to the PIV rule against trivial PINs when `forbid_trivial`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FidoPinRules {
    pub min_len: u8,
    pub forbid_trivial: bool,
}

/// A FIDO PIN the rules refuse.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum FidoPinRuleError {
    #[error("the FIDO PIN must have at least {min} characters, got {len}")]
    TooShort { min: u8, len: usize },
    #[error("the FIDO PIN must have at most 63 bytes, got {0}")]
    TooLong(usize),
    #[error("the FIDO PIN must not contain a NUL character")]
    Nul,
    #[error("the FIDO PIN must not repeat one digit or be a run of consecutive digits")]
    Trivial,
}

impl FidoPinRules {
    pub fn check(&self, pin: &str) -> Result<(), FidoPinRuleError> {
        let chars = pin.chars().count();
        if chars < usize::from(self.min_len) {
            return Err(FidoPinRuleError::TooShort { min: self.min_len, len: chars });
        }
        if pin.len() > 63 {
            return Err(FidoPinRuleError::TooLong(pin.len()));
        }
        if pin.contains('\0') {
            return Err(FidoPinRuleError::Nul);
        }
        if self.forbid_trivial && pin.bytes().all(|b| b.is_ascii_digit()) {
            let trivial = PinRules { min_len: 1, max_len: u8::MAX, forbid_trivial: true };
            if matches!(trivial.check(pin), Err(PinRuleError::AllSame | PinRuleError::Sequential)) {
                return Err(FidoPinRuleError::Trivial);
            }
        }
        Ok(())
    }
}

/// Something a policy does not allow this user to do now.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PolicyDenied {
    #[error("your group's policy does not allow adding a smart card or USB key")]
    AddDeviceDisabled,
    #[error("your group's policy allows at most {max} smart cards or USB keys, and you have {current}")]
    DeviceLimitReached { max: u8, current: usize },
    #[error("your group's policy does not allow adding a mobile device")]
    AddMobileDisabled,
    #[error("your group's policy does not allow derived PIV credentials on mobiles")]
    DerivedPivDisabled,
    #[error("your group's policy allows at most {max} mobiles, and you have {current}")]
    MobileLimitReached { max: u8, current: usize },
    #[error("card model {0:?} is not accepted by your group's policy")]
    CardModelNotAccepted(String),
    /// The same refusals, told to an operator issuing a card to `holder` in person.
    #[error("{holder}'s group policy does not allow adding a smart card or USB key")]
    HolderAddDeviceDisabled { holder: String },
    #[error(
        "{holder}'s group policy allows at most {max} smart cards or USB keys, and {holder} has {current}"
    )]
    HolderDeviceLimitReached { holder: String, max: u8, current: usize },
    #[error("card model {model:?} is not accepted by {holder}'s group policy")]
    HolderCardModelNotAccepted { holder: String, model: String },
    #[error("your group's policy does not allow passkeys (its members sign in with a password)")]
    PasskeysDisabled,
}

impl Policy {
    /// Checks every rule and reports all broken ones at once, so an administrator can fix a policy
    /// in one go.
    pub fn validate(&self) -> Result<(), PolicyErrors> {
        let mut errors = Vec::new();
        if !(1..=20).contains(&self.max_devices) {
            errors.push(PolicyError::MaxDevicesOutOfRange(self.max_devices));
        }
        let pin_len_ok = |n: u8| (6..=8).contains(&n);
        if !pin_len_ok(self.pin.min_len) {
            errors.push(PolicyError::PinMinLenOutOfRange(self.pin.min_len));
        }
        if !pin_len_ok(self.pin.max_len) {
            errors.push(PolicyError::PinMaxLenOutOfRange(self.pin.max_len));
        }
        if self.pin.max_len < self.pin.min_len {
            errors.push(PolicyError::PinMaxBelowMin { min: self.pin.min_len, max: self.pin.max_len });
        }
        if !self.certificates.contains_key(&CertSlot::PivAuthentication) {
            errors.push(PolicyError::MissingPivAuthentication(CertSlot::PivAuthentication));
        }
        for (allowed, slot, flag) in [
            (self.may_add_derived_piv, CertSlot::DerivedPivAuthentication, "may_add_derived_piv"),
            (self.may_add_mobile, CertSlot::MobileDevice, "may_add_mobile"),
        ] {
            if allowed && !self.certificates.contains_key(&slot) {
                errors.push(PolicyError::MissingMobileProfile(slot, flag));
            }
        }
        if !(1..=20).contains(&self.max_mobiles) {
            errors.push(PolicyError::MaxMobilesOutOfRange(self.max_mobiles));
        }
        for (&slot, p) in &self.certificates {
            let name_ok = !p.profile.is_empty()
                && p.profile.chars().count() <= 64
                && !p.profile.chars().any(|c| c.is_whitespace() || c.is_control());
            if !name_ok {
                errors.push(PolicyError::BadProfileName { slot });
            }
            if !(1..=3650).contains(&p.validity_days) {
                errors.push(PolicyError::ValidityOutOfRange { slot, days: p.validity_days });
            }
            if slot.is_mobile() && p.algorithm == KeyAlgorithm::Rsa3072 {
                errors.push(PolicyError::AlgorithmNotAllowed {
                    slot,
                    algorithm: p.algorithm,
                    reason: "mobile key stores generate RSA-2048, P-256 or P-384 only",
                });
            } else if slot == CertSlot::MobileDevice && p.algorithm != KeyAlgorithm::Rsa2048 {
                errors.push(PolicyError::AlgorithmNotAllowed {
                    slot,
                    algorithm: p.algorithm,
                    reason: "configuration profiles enrol over SCEP, which takes RSA-2048 keys",
                });
            }
        }
        if self.may_add_device && self.accepted_card_models.is_empty() {
            errors.push(PolicyError::NoCardModels);
        }
        let mut seen = std::collections::BTreeSet::new();
        for (index, model) in self.accepted_card_models.iter().enumerate() {
            if super::check_text("card model", model, 64).is_err() {
                errors.push(PolicyError::BadCardModel { index });
            } else if !seen.insert(model.as_str()) {
                errors.push(PolicyError::DuplicateCardModel(model.clone()));
            }
        }
        if !(1..=365).contains(&self.derived_recheck_days) {
            errors.push(PolicyError::RecheckDaysOutOfRange(self.derived_recheck_days));
        }
        if !(1..=10).contains(&self.enrollment_code_minutes) {
            errors.push(PolicyError::EnrollmentCodeMinutesOutOfRange(self.enrollment_code_minutes));
        }
        if !FIDO_MIN_PIN_LENGTH_RANGE.contains(&self.fido_min_pin_length) {
            errors.push(PolicyError::FidoMinPinLengthOutOfRange(self.fido_min_pin_length));
        } else if self.fido_pin_mode == FidoPinMode::Shared && self.fido_min_pin_length > self.pin.min_len {
            errors.push(PolicyError::FidoMinAbovePivMin {
                fido: self.fido_min_pin_length,
                piv: self.pin.min_len,
            });
        }
        if errors.is_empty() { Ok(()) } else { Err(PolicyErrors(errors)) }
    }

    /// The rules a FIDO PIN the holder chooses (`independent`) must meet.
    pub fn fido_pin_rules(&self) -> FidoPinRules {
        FidoPinRules { min_len: self.fido_min_pin_length, forbid_trivial: self.pin.forbid_trivial }
    }

    /// Checks a PIN against [`Policy::pin`]. Trivial means one digit repeated, or every digit one
    /// more (or one less) than the one before, wrapping 9→0 (so `890123` is trivial too).
    pub fn check_pin(&self, pin: &str) -> Result<(), PinRuleError> {
        self.pin.check(pin)
    }

    /// How long a new mobile enrolment code stays valid.
    pub fn enrollment_code_ttl(&self) -> time::Duration {
        time::Duration::minutes(i64::from(self.enrollment_code_minutes))
    }

    /// Whether a card of `model` may be issued.
    pub fn accepts_card_model(&self, model: &str) -> bool {
        self.accepted_card_models.iter().any(|m| m == model)
    }
}

impl PinRules {
    /// See [`Policy::check_pin`].
    pub fn check(&self, pin: &str) -> Result<(), PinRuleError> {
        if pin.is_empty() || !pin.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PinRuleError::NotDigits);
        }
        let len = pin.len();
        if len < usize::from(self.min_len) {
            return Err(PinRuleError::TooShort { min: self.min_len, len });
        }
        if len > usize::from(self.max_len) {
            return Err(PinRuleError::TooLong { max: self.max_len, len });
        }
        if self.forbid_trivial {
            let d: Vec<u8> = pin.bytes().map(|b| b - b'0').collect();
            let all_steps = |step: u8| d.windows(2).all(|w| (w[0] + step) % 10 == w[1]);
            if all_steps(0) {
                return Err(PinRuleError::AllSame);
            }
            if all_steps(1) || all_steps(9) {
                return Err(PinRuleError::Sequential);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_is_valid() {
        Policy::default().validate().unwrap();
    }

    #[test]
    fn policies_stored_before_the_mobile_fields_read_with_their_defaults() {
        let mut json = serde_json::to_value(Policy::default()).unwrap();
        let map = json.as_object_mut().unwrap();
        map.remove("may_add_derived_piv");
        map.remove("max_mobiles");
        let p: Policy = serde_json::from_value(json).unwrap();
        assert!(p.may_add_derived_piv);
        assert_eq!(p.max_mobiles, 3);
    }

    #[test]
    fn every_problem_names_the_field_its_message_starts_with() {
        let mut p = Policy { max_devices: 0, derived_recheck_days: 0, ..Policy::default() };
        p.pin = PinRules { min_len: 5, max_len: 9, forbid_trivial: true };
        if let Some(sig) = p.certificates.get_mut(&CertSlot::DigitalSignature) {
            sig.validity_days = 0;
            sig.profile = "has space".into();
        }
        p.accepted_card_models = vec!["".into()];
        for e in p.validate().unwrap_err().0 {
            assert!(e.to_string().starts_with(&e.field()), "{e} names {}", e.field());
        }
        let e = PolicyError::PinMaxBelowMin { min: 8, max: 7 };
        assert_eq!(e.field(), "pin.max_len");
    }

    #[test]
    fn validate_reports_every_problem_precisely() {
        let mut p = Policy { max_devices: 0, max_mobiles: 0, derived_recheck_days: 0, ..Policy::default() };
        p.pin = PinRules { min_len: 8, max_len: 7, forbid_trivial: true };
        p.certificates.remove(&CertSlot::PivAuthentication);
        p.certificates.remove(&CertSlot::MobileDevice);
        if let Some(sig) = p.certificates.get_mut(&CertSlot::DigitalSignature) {
            sig.validity_days = 0;
            sig.profile = "has space".into();
        }
        if let Some(d) = p.certificates.get_mut(&CertSlot::DerivedPivAuthentication) {
            d.algorithm = KeyAlgorithm::Rsa3072;
        }
        p.accepted_card_models = vec!["YubiKey 5".into(), "".into(), "YubiKey 5".into()];
        let errors = p.validate().unwrap_err();
        let text: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            text,
            [
                "max_devices must be between 1 and 20, got 0",
                "pin.max_len (7) must not be less than pin.min_len (8)",
                "certificates.9a is required (every card gets a PIV Authentication certificate)",
                "certificates.mobile is required while may_add_mobile is true",
                "max_mobiles must be between 1 and 20, got 0",
                "certificates.9c.profile must be 1-64 characters without spaces or control characters",
                "certificates.9c.validity_days must be between 1 and 3650, got 0",
                "certificates.derived_piv.algorithm rsa-3072 is not allowed for this slot (mobile key stores generate RSA-2048, P-256 or P-384 only)",
                "accepted_card_models[1] must be 1-64 characters without control characters",
                "accepted_card_models lists \"YubiKey 5\" twice",
                "derived_recheck_days must be between 1 and 365, got 0",
            ]
        );
        assert!(errors.to_string().starts_with("invalid policy (11 problems):\n- max_devices"));
    }

    #[test]
    fn enrollment_codes_live_one_to_ten_minutes_and_old_policies_get_ten() {
        for (minutes, ok) in [(0, false), (1, true), (10, true), (11, false)] {
            let p = Policy { enrollment_code_minutes: minutes, ..Policy::default() };
            match p.validate() {
                Ok(()) => assert!(ok, "{minutes} accepted"),
                Err(e) => {
                    assert!(!ok, "{minutes} refused: {e}");
                    assert_eq!(e.0, [PolicyError::EnrollmentCodeMinutesOutOfRange(minutes)]);
                    assert_eq!(e.0[0].field(), "enrollment_code_minutes");
                }
            }
        }
        assert_eq!(Policy::default().enrollment_code_ttl(), time::Duration::minutes(10));
        // A policy stored before the field existed.
        let mut json = serde_json::to_value(Policy::default()).unwrap();
        json.as_object_mut().unwrap().remove("enrollment_code_minutes");
        let read: Policy = serde_json::from_value(json).unwrap();
        assert_eq!(read.enrollment_code_minutes, 10);
    }

    #[test]
    fn fido_pin_settings_are_checked_and_old_policies_read_as_none_and_six() {
        for (len, ok) in [(3, false), (4, true), (63, true), (64, false)] {
            let p = Policy { fido_min_pin_length: len, ..Policy::default() };
            assert_eq!(p.validate().is_ok(), ok, "{len}");
        }
        let shared =
            Policy { fido_pin_mode: FidoPinMode::Shared, fido_min_pin_length: 7, ..Policy::default() };
        let e = shared.validate().unwrap_err();
        assert_eq!(e.0, [PolicyError::FidoMinAbovePivMin { fido: 7, piv: 6 }]);
        assert_eq!(e.0[0].field(), "fido_min_pin_length");
        // Independent and temporary PINs are the key's alone: longer than the PIV PIN is fine.
        for mode in [FidoPinMode::Independent, FidoPinMode::Temporary] {
            Policy { fido_pin_mode: mode, fido_min_pin_length: 12, ..Policy::default() }.validate().unwrap();
        }
        let mut json = serde_json::to_value(Policy::default()).unwrap();
        let map = json.as_object_mut().unwrap();
        map.remove("fido_pin_mode");
        map.remove("fido_min_pin_length");
        let read: Policy = serde_json::from_value(json).unwrap();
        assert_eq!((read.fido_pin_mode, read.fido_min_pin_length), (FidoPinMode::None, 6));
        assert!(!read.fido_pin_mode.sets_pin());
    }

    #[test]
    fn fido_pins_the_holder_chooses() {
        let rules = Policy { fido_min_pin_length: 6, ..Policy::default() }.fido_pin_rules();
        for ok in ["135790", "correct horse", "ünïcødé", &"x".repeat(63)] {
            assert_eq!(rules.check(ok), Ok(()), "{ok}");
        }
        assert_eq!(rules.check("13579"), Err(FidoPinRuleError::TooShort { min: 6, len: 5 }));
        // Six code points, twelve bytes: long enough.
        assert_eq!(rules.check("ääääää"), Ok(()));
        assert_eq!(rules.check(&"é".repeat(32)), Err(FidoPinRuleError::TooLong(64)));
        assert_eq!(rules.check("abc\0def"), Err(FidoPinRuleError::Nul));
        assert_eq!(rules.check("123456"), Err(FidoPinRuleError::Trivial));
        assert_eq!(rules.check("0000000000"), Err(FidoPinRuleError::Trivial));
        let lax = FidoPinRules { forbid_trivial: false, ..rules };
        assert_eq!(lax.check("123456"), Ok(()));
    }

    #[test]
    fn pin_lengths_out_of_range() {
        let p =
            Policy { pin: PinRules { min_len: 4, max_len: 9, forbid_trivial: false }, ..Policy::default() };
        assert_eq!(
            p.validate().unwrap_err().0,
            [PolicyError::PinMinLenOutOfRange(4), PolicyError::PinMaxLenOutOfRange(9)]
        );
    }

    #[test]
    fn card_models_may_be_empty_when_cards_are_not_self_service() {
        let mut p = Policy { accepted_card_models: vec![], ..Policy::default() };
        assert_eq!(p.validate().unwrap_err().0, [PolicyError::NoCardModels]);
        p.may_add_device = false;
        p.validate().unwrap();
    }

    #[test]
    fn pins() {
        let p = Policy::default();
        for ok in ["135790", "2580147", "11112222", "124578", "012346"] {
            assert_eq!(p.check_pin(ok), Ok(()), "{ok}");
        }
        let cases = [
            ("", PinRuleError::NotDigits),
            ("12a456", PinRuleError::NotDigits),
            ("１２３４５６", PinRuleError::NotDigits),
            ("13579", PinRuleError::TooShort { min: 6, len: 5 }),
            ("135791357", PinRuleError::TooLong { max: 8, len: 9 }),
            ("000000", PinRuleError::AllSame),
            ("99999999", PinRuleError::AllSame),
            ("123456", PinRuleError::Sequential),
            ("12345678", PinRuleError::Sequential),
            ("654321", PinRuleError::Sequential),
            ("890123", PinRuleError::Sequential),
            ("210987", PinRuleError::Sequential),
        ];
        for (pin, err) in cases {
            assert_eq!(p.check_pin(pin), Err(err), "{pin:?}");
        }
        let lax = Policy { pin: PinRules { forbid_trivial: false, ..PinRules::default() }, ..p };
        assert_eq!(lax.check_pin("123456"), Ok(()));
        assert_eq!(
            PinRuleError::TooShort { min: 6, len: 5 }.to_string(),
            "PIN must have at least 6 digits, got 5"
        );
    }

    #[test]
    fn policy_json_round_trips_and_rejects_unknown_fields() {
        let p = Policy::default();
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["certificates"]["9a"]["algorithm"], "p-256");
        assert_eq!(serde_json::from_value::<Policy>(json.clone()).unwrap(), p);
        let mut bad = json;
        bad["max_device"] = 3.into();
        let err = serde_json::from_value::<Policy>(bad).unwrap_err().to_string();
        assert!(err.contains("unknown field `max_device`"), "{err}");
    }
}
