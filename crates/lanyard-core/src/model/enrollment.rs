use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

use super::{ValidationError, check_text};
use crate::ids::{DeviceId, EnrollmentCodeId, UserId};
use crate::secrets::{SecretsError, TokenHash, generate_token};

/// What an enrollment code lets a phone do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EnrollmentPurpose {
    /// Install a configuration profile that enrols a mobile device certificate (DESIGN §2 D).
    MobileProfile,
    /// Enrol a derived PIV credential (DESIGN §2 C). The card that proved possession is either a
    /// Lanyard card (`sponsor`) or a card of an imported PIV root (`external_sponsor`), never
    /// both; neither when the policy needs no sponsor.
    DerivedPiv {
        sponsor: Option<DeviceId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        external_sponsor: Option<ExternalSponsor>,
    },
}

/// A sponsor card Lanyard did not issue: its PIV Authentication certificate chains to an
/// imported trust anchor (`piv_trust_anchors`). Lanyard keeps no device for it, so it is named
/// by its certificate: the issuer's distinguished name and the serial number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalSponsor {
    /// The issuer DN (RFC 4514), at most [`ExternalSponsor::MAX_ISSUER`] characters.
    pub issuer: String,
    /// The serial number, lowercase hex without leading zero bytes, at most 20 bytes (RFC 5280
    /// §4.1.2.2).
    pub serial_hex: String,
}

impl ExternalSponsor {
    pub const MAX_ISSUER: usize = 1024;

    /// Checks both names: a non-empty issuer without control characters; an even number
    /// (2 to 40) of lowercase hex digits, without a leading zero byte unless the serial is zero.
    pub fn new(issuer: &str, serial_hex: &str) -> Result<Self, ValidationError> {
        check_text("external_sponsor.issuer", issuer, Self::MAX_ISSUER)?;
        let field = "external_sponsor.serial_hex";
        if serial_hex.is_empty() || serial_hex.len() > 40 || !serial_hex.len().is_multiple_of(2) {
            return Err(ValidationError::new(field, "must be 1 to 20 bytes as an even number of hex digits"));
        }
        if !serial_hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(ValidationError::new(field, "must be lowercase hex digits"));
        }
        if serial_hex.len() > 2 && serial_hex.starts_with("00") {
            return Err(ValidationError::new(field, "must not start with a zero byte"));
        }
        Ok(Self { issuer: issuer.to_owned(), serial_hex: serial_hex.to_owned() })
    }
}

/// A one-time, short-lived code shown as a QR code or URL. Only its hash is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentCode {
    pub id: EnrollmentCodeId,
    pub user: UserId,
    pub purpose: EnrollmentPurpose,
    pub code_hash: TokenHash,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// When the code was redeemed (the phone started enrolling); a code is redeemed once.
    #[serde(with = "time::serde::rfc3339::option")]
    pub used_at: Option<OffsetDateTime>,
    /// The portal session that created the code: signing out (or the session expiring) ends the
    /// code too. `None` for codes made outside a portal session (API tokens, operators).
    pub session: Option<TokenHash>,
    /// The mobile created when the code was redeemed.
    pub device: Option<DeviceId>,
    /// When the enrolment completed (a certificate was issued to the mobile).
    #[serde(with = "time::serde::rfc3339::option")]
    pub completed_at: Option<OffsetDateTime>,
}

/// Which kind of enrolment a code is presented for, so a profile code cannot enrol a derived
/// credential and the other way round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollmentKind {
    MobileProfile,
    DerivedPiv,
}

impl EnrollmentKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            EnrollmentKind::MobileProfile => "mobile profile",
            EnrollmentKind::DerivedPiv => "derived PIV credential",
        }
    }
}

impl EnrollmentPurpose {
    /// The kind of enrolment this purpose is for.
    pub const fn kind(&self) -> EnrollmentKind {
        match self {
            EnrollmentPurpose::MobileProfile => EnrollmentKind::MobileProfile,
            EnrollmentPurpose::DerivedPiv { .. } => EnrollmentKind::DerivedPiv,
        }
    }

    /// A derived credential sponsored by the Lanyard card `card`.
    pub const fn derived_from_card(card: DeviceId) -> Self {
        EnrollmentPurpose::DerivedPiv { sponsor: Some(card), external_sponsor: None }
    }

    /// A derived credential sponsored by a card of an imported root.
    pub const fn derived_from_external(card: ExternalSponsor) -> Self {
        EnrollmentPurpose::DerivedPiv { sponsor: None, external_sponsor: Some(card) }
    }

    /// A derived credential without a sponsor card (in-person issuance, where policy allows).
    pub const fn derived_without_sponsor() -> Self {
        EnrollmentPurpose::DerivedPiv { sponsor: None, external_sponsor: None }
    }
}

/// Why a presented enrollment code was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum EnrollmentError {
    #[error("the enrollment code is not known (mistyped, or removed after it expired)")]
    WrongCode,
    #[error("the enrollment code expired at {0}")]
    Expired(OffsetDateTime),
    #[error("the enrollment code was already used at {0}")]
    AlreadyUsed(OffsetDateTime),
    #[error("the enrollment code is for a {expected}, not a {presented}")]
    WrongKind { expected: &'static str, presented: &'static str },
    #[error("the enrollment code has not been redeemed, or its enrolment already completed")]
    NotInProgress,
    #[error("the portal session that created the enrollment code has ended; start again in the portal")]
    SessionEnded,
}

impl EnrollmentCode {
    /// A fresh code valid for `ttl` from `at`. Returns the record to store and the code to show
    /// the user once (it cannot be recovered from the record).
    pub fn issue(
        user: UserId,
        purpose: EnrollmentPurpose,
        ttl: Duration,
        at: OffsetDateTime,
    ) -> Result<(Self, SecretString), SecretsError> {
        let (code, code_hash) = generate_token(20)?;
        let record = Self {
            id: EnrollmentCodeId::new(),
            user,
            purpose,
            code_hash,
            created_at: at,
            expires_at: at + ttl,
            used_at: None,
            session: None,
            device: None,
            completed_at: None,
        };
        Ok((record, code))
    }

    /// Uses the code up. Fails (changing nothing) if `presented` is not this code, or the code has
    /// expired or was used before.
    pub fn redeem(&mut self, presented: &str, at: OffsetDateTime) -> Result<(), EnrollmentError> {
        if !self.code_hash.matches(presented) {
            return Err(EnrollmentError::WrongCode);
        }
        if let Some(used) = self.used_at {
            return Err(EnrollmentError::AlreadyUsed(used));
        }
        if at >= self.expires_at {
            return Err(EnrollmentError::Expired(self.expires_at));
        }
        self.used_at = Some(at);
        Ok(())
    }

    /// Checks that `presented` is this code, redeemed and not yet completed, and not expired: the
    /// second step of an app enrolment presents the code again.
    pub fn check_in_progress(&self, presented: &str, at: OffsetDateTime) -> Result<(), EnrollmentError> {
        if !self.code_hash.matches(presented) {
            return Err(EnrollmentError::WrongCode);
        }
        if at >= self.expires_at {
            return Err(EnrollmentError::Expired(self.expires_at));
        }
        if self.used_at.is_none() || self.completed_at.is_some() || self.device.is_none() {
            return Err(EnrollmentError::NotInProgress);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use secrecy::ExposeSecret;
    use time::macros::datetime;

    #[test]
    fn external_sponsors_are_named_by_issuer_and_serial() {
        let issuer = "CN=Agency PIV CA,O=Agency,C=US";
        let ok = ExternalSponsor::new(issuer, "1f00a2").unwrap();
        assert_eq!((ok.issuer.as_str(), ok.serial_hex.as_str()), (issuer, "1f00a2"));
        ExternalSponsor::new(issuer, "00").unwrap();
        ExternalSponsor::new(issuer, &"ab".repeat(20)).unwrap();
        for (issuer, serial, field) in [
            ("", "01", "external_sponsor.issuer"),
            (" CN=x", "01", "external_sponsor.issuer"),
            ("CN=a\nb", "01", "external_sponsor.issuer"),
            (issuer, "", "external_sponsor.serial_hex"),
            (issuer, "abc", "external_sponsor.serial_hex"),
            (issuer, "1F", "external_sponsor.serial_hex"),
            (issuer, "0x1f", "external_sponsor.serial_hex"),
            (issuer, "0001", "external_sponsor.serial_hex"),
            (issuer, &"ab".repeat(21), "external_sponsor.serial_hex"),
        ] {
            assert_eq!(
                ExternalSponsor::new(issuer, serial).unwrap_err().field,
                field,
                "{issuer:?} {serial:?}"
            );
        }
        let long = "C".repeat(ExternalSponsor::MAX_ISSUER + 1);
        assert!(ExternalSponsor::new(&long, "01").is_err());
    }

    proptest! {
        /// Whatever is offered, the answer is a precise refusal or a sponsor holding exactly it.
        #[test]
        fn external_sponsor_names_are_kept_or_refused(issuer in "\\PC{0,40}", serial in "[0-9a-fA-Fx ]{0,44}") {
            match ExternalSponsor::new(&issuer, &serial) {
                Ok(s) => {
                    prop_assert_eq!(&s.issuer, &issuer);
                    prop_assert_eq!(&s.serial_hex, &serial);
                    prop_assert!(serial.len().is_multiple_of(2) && !serial.bytes().any(|b| b.is_ascii_uppercase()));
                }
                Err(e) => prop_assert!(e.field.starts_with("external_sponsor.")),
            }
        }
    }

    #[test]
    fn codes_are_one_time_and_expire() {
        let t0 = datetime!(2025-03-01 10:00 UTC);
        let (mut code, secret) =
            EnrollmentCode::issue(UserId::new(), EnrollmentPurpose::MobileProfile, Duration::minutes(10), t0)
                .unwrap();
        assert_eq!(secret.expose_secret().len(), 40);
        let before = code.clone();
        assert_eq!(code.redeem("not-it", t0), Err(EnrollmentError::WrongCode));
        assert_eq!(
            code.redeem(secret.expose_secret(), t0 + Duration::minutes(10)),
            Err(EnrollmentError::Expired(code.expires_at))
        );
        assert_eq!(code, before);
        code.redeem(secret.expose_secret(), t0 + Duration::minutes(9)).unwrap();
        assert_eq!(
            code.redeem(secret.expose_secret(), t0 + Duration::minutes(9)),
            Err(EnrollmentError::AlreadyUsed(t0 + Duration::minutes(9)))
        );
    }
}
