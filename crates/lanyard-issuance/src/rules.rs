//! The issuance rules: [`plan`] decides everything about a certificate but its key and serial;
//! [`sign`] has the CA sign it.

use der::Decode;
use lanyard_ca::{
    CertificateAuthority, CertificateProfile, IssueRequest, Name, Presence, SanInput, SoftwareKey,
    SubjectPublicKeyInfoOwned, common_name,
};
use lanyard_core::lifecycle::{CredentialState, DeviceState};
use lanyard_core::model::{CertSlot, CredentialKind, Device, KeyAlgorithm, Policy, User};
use lanyard_personalize::Attestation;
use thiserror::Error;
use time::{Duration, OffsetDateTime};

use crate::card::fasc_n;

/// What one enrolment path contributes beyond the device, its holder and the key.
#[derive(Clone, Copy, Debug)]
pub enum Channel<'a> {
    /// A key the card generated during a server-driven card session. Its attestation (YubiKey
    /// slot F9) is verified against `attestation_roots` when any are configured, and recorded with
    /// the credential either way.
    CardSession { attestation: Option<&'a Attestation>, attestation_roots: &'a [Vec<u8>] },
    /// A CSR an operator sent through the API (`POST /api/v1/devices/{id}/certificates`). The
    /// CSR's own signature was checked when it was parsed; its subject and extensions are not
    /// used. `profile`, when given, must be the one the holder's policy names for the slot;
    /// `validity_days` may shorten the policy's validity, never lengthen it.
    OperatorCsr { profile: Option<&'a str>, validity_days: Option<u32> },
    /// A key a phone generated while enrolling with a one-time code (SCEP, or the app protocol).
    /// The mobile is Enrolling; the certificate is recorded Active as the enrolment completes.
    /// `hardware_attested`: a key attestation verified against the configured roots proved the
    /// key lives in hardware, which alone earns a derived credential the AAL3 (hardware) profile.
    Mobile { hardware_attested: bool },
    /// A new key for an Active mobile, asked for with its current certificate (SCEP RenewalReq);
    /// the certificate is recorded Active and supersedes the one that asked.
    MobileRenewal,
}

/// Everything the rules look at.
#[derive(Clone, Copy, Debug)]
pub struct Enrolment<'a> {
    pub device: &'a Device,
    /// The device's holder.
    pub holder: &'a User,
    /// The policy of the holder's group.
    pub policy: &'a Policy,
    pub slot: CertSlot,
    /// The key to certify, as a DER SubjectPublicKeyInfo.
    pub public_key_der: &'a [u8],
    pub channel: Channel<'a>,
    pub now: OffsetDateTime,
}

/// Why a certificate cannot be issued. Every variant names what to change.
#[derive(Debug, Error)]
pub enum IssuanceError {
    #[error("device {device} is {state}; certificates are issued only to issuing, pending or active devices")]
    DeviceState { device: String, state: DeviceState },
    #[error("device {device} has no holder")]
    NoHolder { device: String },
    #[error("the policy of the holder's group issues no certificate for slot {slot}")]
    SlotNotInPolicy { slot: CertSlot },
    #[error("profile {requested:?} is not the one the holder's policy names for slot {slot} ({policy:?})")]
    ProfileMismatch { slot: CertSlot, requested: String, policy: String },
    #[error("the policy names profile {profile:?} for slot {slot}, which the CA does not know")]
    UnknownProfile { slot: CertSlot, profile: String },
    #[error("slot {slot} is not a mobile credential; a phone enrols only derived_piv or mobile")]
    NotAMobileSlot { slot: CertSlot },
    #[error("validity_days must be at least 1")]
    ZeroValidity,
    #[error("the public key is not a DER SubjectPublicKeyInfo: {0}")]
    PublicKey(String),
    #[error("slot {slot} takes {expected} keys under the holder's policy, and this key is {found}")]
    KeyAlgorithm { slot: CertSlot, expected: KeyAlgorithm, found: String },
    #[error(
        "profile {profile} needs the card UUID (CHUID GUID) of the device, and device {device} has none (it has not been personalised)"
    )]
    NoCardUuid { profile: String, device: String },
    #[error("profile {profile} needs a key attestation that verifies against the configured roots")]
    AttestationRequired { profile: String },
    #[error("slot {slot}: the key attestation does not verify: {reason}")]
    Attestation { slot: CertSlot, reason: String },
    #[error("the holder's name cannot be a subject: {0}")]
    Subject(String),
    #[error("the card's FASC-N: {0}")]
    FascN(String),
    #[error("the CA refused the request: {0}")]
    Ca(String),
}

/// A certificate decided in every respect but its key and serial.
#[derive(Clone, Debug)]
pub struct Plan {
    pub slot: CertSlot,
    pub profile: CertificateProfile,
    pub subject: Name,
    pub public_key: SubjectPublicKeyInfoOwned,
    pub san: SanInput,
    pub not_before: OffsetDateTime,
    pub requested_not_after: OffsetDateTime,
    /// The card's expiry, for card slots of a device that records one.
    pub cap_not_after: Option<OffsetDateTime>,
    /// The state the credential is recorded in: Pending while the device's issuance is not
    /// confirmed (Issuing, Pending), Active on an Active device. The record step re-checks it
    /// against the device as it is then.
    pub initial_state: CredentialState,
    /// The attestation certificate to keep with the credential.
    pub attestation_der: Option<Vec<u8>>,
}

/// A signed certificate, ready to be recorded.
#[derive(Clone, Debug)]
pub struct Signed {
    pub kind: CredentialKind,
    pub initial_state: CredentialState,
    pub der: Vec<u8>,
}

/// The credential state a certificate for `device` starts in, or why it cannot be issued.
pub fn initial_state(device: &Device) -> Result<CredentialState, IssuanceError> {
    lanyard_core::lifecycle::new_certificate_state(device.state)
        .ok_or_else(|| IssuanceError::DeviceState { device: device.id.to_string(), state: device.state })
}

/// Profiles whose policy OID promises a key generated in attested hardware (SP 800-157 AAL3).
fn needs_attestation(profile: &CertificateProfile) -> bool {
    profile.id == "derived-piv-auth-hardware"
}

fn key_algorithm(spki: &SubjectPublicKeyInfoOwned) -> Result<KeyAlgorithm, String> {
    let found = lanyard_ca::KeyAlgorithm::of_spki(spki).map_err(|e| e.to_string())?;
    Ok(match found {
        lanyard_ca::KeyAlgorithm::EcP256 => KeyAlgorithm::P256,
        lanyard_ca::KeyAlgorithm::EcP384 => KeyAlgorithm::P384,
        lanyard_ca::KeyAlgorithm::Rsa2048 => KeyAlgorithm::Rsa2048,
        lanyard_ca::KeyAlgorithm::Rsa3072 => KeyAlgorithm::Rsa3072,
        #[allow(unreachable_patterns)]
        other => return Err(format!("{other:?}")),
    })
}

/// Applies the rules. Pure: reads nothing, signs nothing.
pub fn plan(e: &Enrolment<'_>) -> Result<Plan, IssuanceError> {
    let device = e.device;
    if device.owner != Some(e.holder.id) {
        return Err(IssuanceError::NoHolder { device: device.id.to_string() });
    }
    let slot = e.slot;
    let initial_state = match e.channel {
        Channel::Mobile { .. } => {
            if !slot.is_mobile() || device.kind != lanyard_core::model::DeviceKind::Mobile {
                return Err(IssuanceError::NotAMobileSlot { slot });
            }
            if device.state != DeviceState::Enrolling {
                return Err(IssuanceError::DeviceState {
                    device: device.id.to_string(),
                    state: device.state,
                });
            }
            CredentialState::Active
        }
        Channel::MobileRenewal => {
            if !slot.is_mobile() || device.kind != lanyard_core::model::DeviceKind::Mobile {
                return Err(IssuanceError::NotAMobileSlot { slot });
            }
            if device.state != DeviceState::Active {
                return Err(IssuanceError::DeviceState {
                    device: device.id.to_string(),
                    state: device.state,
                });
            }
            CredentialState::Active
        }
        _ => initial_state(device)?,
    };
    let planned = e.policy.certificates.get(&slot).ok_or(IssuanceError::SlotNotInPolicy { slot })?;
    // A derived credential whose key attestation proved hardware takes the AAL3 profile; without
    // that proof it never does (the hardware profile then asks for an attestation below).
    let planned_profile = match e.channel {
        Channel::Mobile { hardware_attested: true } if slot == CertSlot::DerivedPivAuthentication => {
            "derived-piv-auth-hardware"
        }
        _ => planned.profile.as_str(),
    };
    if let Channel::OperatorCsr { profile: Some(requested), .. } = e.channel {
        // The long name is accepted for the 9A profile, as clients tend to spell it out.
        let requested = if requested == "piv-authentication" { "piv-auth" } else { requested };
        if requested != planned.profile {
            return Err(IssuanceError::ProfileMismatch {
                slot,
                requested: requested.to_owned(),
                policy: planned.profile.clone(),
            });
        }
    }
    let profile = CertificateProfile::builtin(planned_profile)
        .filter(|p| p.ca.is_none())
        .ok_or_else(|| IssuanceError::UnknownProfile { slot, profile: planned_profile.to_owned() })?;

    let public_key = SubjectPublicKeyInfoOwned::from_der(e.public_key_der)
        .map_err(|err| IssuanceError::PublicKey(err.to_string()))?;
    let found = key_algorithm(&public_key).map_err(IssuanceError::PublicKey)?;
    if found != planned.algorithm {
        return Err(IssuanceError::KeyAlgorithm {
            slot,
            expected: planned.algorithm,
            found: found.to_string(),
        });
    }

    // Attestation: verified when the path brings one and roots are configured; required by
    // hardware-bound profiles.
    let attestation_der = match e.channel {
        Channel::CardSession { attestation: Some(a), attestation_roots } => {
            if !attestation_roots.is_empty() {
                let evidence = lanyard_ca::verify_piv_attestation(
                    &a.attestation_cert_der,
                    &a.f9_cert_der,
                    attestation_roots,
                    e.public_key_der,
                    e.now,
                )
                .map_err(|err| IssuanceError::Attestation { slot, reason: err.to_string() })?;
                tracing::info!(slot = %slot, serial = ?evidence.serial, "key attestation verified");
            } else if needs_attestation(&profile) {
                return Err(IssuanceError::AttestationRequired { profile: profile.id });
            }
            Some(a.attestation_cert_der.clone())
        }
        Channel::Mobile { hardware_attested: true } => None,
        _ if needs_attestation(&profile) => {
            return Err(IssuanceError::AttestationRequired { profile: profile.id });
        }
        _ => None,
    };

    let subject =
        common_name(&e.holder.display_name).map_err(|err| IssuanceError::Subject(err.to_string()))?;

    let mut san = SanInput::default();
    let card_uuid_rule = profile.san.card_uuid;
    let fasc_n_rule = profile.san.fasc_n;
    if card_uuid_rule != Presence::Forbidden || fasc_n_rule != Presence::Forbidden {
        match device.card_guid {
            Some(guid) => {
                if card_uuid_rule != Presence::Forbidden {
                    san.card_uuid = Some(guid);
                }
                if fasc_n_rule != Presence::Forbidden {
                    san.fasc_n = Some(
                        fasc_n(device.id).map_err(|err| IssuanceError::FascN(err.to_string()))?.to_bytes(),
                    );
                }
            }
            None if card_uuid_rule == Presence::Required || fasc_n_rule == Presence::Required => {
                return Err(IssuanceError::NoCardUuid {
                    profile: profile.id.clone(),
                    device: device.id.to_string(),
                });
            }
            None => {}
        }
    }
    if profile.san.email != Presence::Forbidden
        && let Some(email) = &e.holder.email
    {
        san.email.push(email.as_str().to_owned());
    }

    let policy_days = u32::from(planned.validity_days);
    let days = match e.channel {
        Channel::OperatorCsr { validity_days: Some(0), .. } => return Err(IssuanceError::ZeroValidity),
        Channel::OperatorCsr { validity_days: Some(d), .. } => d.min(policy_days),
        _ => policy_days,
    };
    let cap_not_after = if slot.piv_key_reference().is_some() { device.card_expires_at } else { None };
    Ok(Plan {
        slot,
        profile,
        subject,
        public_key,
        san,
        not_before: e.now,
        requested_not_after: e.now + Duration::days(i64::from(days)),
        cap_not_after,
        initial_state,
        attestation_der,
    })
}

/// Has `ca` sign the plan. CPU work only: call it outside any unit of work.
pub fn sign(ca: &CertificateAuthority<SoftwareKey>, plan: &Plan) -> Result<Signed, IssuanceError> {
    let issued = ca
        .issue(&IssueRequest {
            profile: &plan.profile,
            subject: plan.subject.clone(),
            public_key: plan.public_key.clone(),
            san: plan.san.clone(),
            not_before: plan.not_before,
            requested_not_after: plan.requested_not_after,
            cap_not_after: plan.cap_not_after,
        })
        .map_err(|e| IssuanceError::Ca(e.to_string()))?;
    let not_before = issued.not_before().map_err(|e| IssuanceError::Ca(e.to_string()))?;
    let not_after = issued.not_after().map_err(|e| IssuanceError::Ca(e.to_string()))?;
    let kind = CredentialKind::Certificate {
        slot: plan.slot,
        profile: plan.profile.id.clone(),
        serial_hex: serial_hex(issued.serial().as_bytes()),
        not_before,
        not_after,
        certificate_der: issued.der.clone(),
        attestation_der: plan.attestation_der.clone(),
    };
    Ok(Signed { kind, initial_state: plan.initial_state, der: issued.der })
}

/// A certificate serial as Lanyard stores it: lowercase hex without leading zero bytes.
pub fn serial_hex(bytes: &[u8]) -> String {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len().saturating_sub(1));
    bytes[start..].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use lanyard_core::ids::GroupId;
    use lanyard_core::model::{DeviceKind, Email, Username};
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-12-03 12:00 UTC);

    struct World {
        device: Device,
        holder: User,
        policy: Policy,
        key: Vec<u8>,
    }

    fn world(state: DeviceState) -> World {
        let mut holder =
            User::new(Username::parse("alice").unwrap(), "Alice, Example", GroupId::new(), NOW).unwrap();
        holder.email = Some(Email::parse("alice@example.org").unwrap());
        let mut device = Device::new(DeviceKind::SmartCard, "YubiKey 5", NOW).unwrap();
        device.owner = Some(holder.id);
        device.state = state;
        device.card_guid = Some([7; 16]);
        device.card_expires_at = Some(NOW + Duration::days(30));
        let key = lanyard_ca::SoftwareKey::generate(lanyard_ca::KeyAlgorithm::EcP256).unwrap();
        let key = der::Encode::to_der(&lanyard_ca::CaSigner::public_key(&key)).unwrap();
        World { device, holder, policy: Policy::default(), key }
    }

    fn enrolment<'a>(w: &'a World, slot: CertSlot, channel: Channel<'a>) -> Enrolment<'a> {
        Enrolment {
            device: &w.device,
            holder: &w.holder,
            policy: &w.policy,
            slot,
            public_key_der: &w.key,
            channel,
            now: NOW,
        }
    }

    const CSR: Channel<'static> = Channel::OperatorCsr { profile: None, validity_days: None };

    #[test]
    fn card_certificates_carry_the_card_and_the_holder_and_end_with_the_card() {
        let w = world(DeviceState::Pending);
        let p = plan(&enrolment(&w, CertSlot::PivAuthentication, CSR)).unwrap();
        assert_eq!(p.profile.id, "piv-auth");
        assert_eq!(p.initial_state, CredentialState::Pending);
        assert_eq!(p.san.card_uuid, Some([7; 16]));
        assert_eq!(p.san.fasc_n, Some(fasc_n(w.device.id).unwrap().to_bytes()));
        assert_eq!(p.san.email, ["alice@example.org"]);
        assert_eq!(p.subject.to_string(), "CN=Alice\\, Example");
        assert_eq!(p.cap_not_after, w.device.card_expires_at);
        assert_eq!(p.requested_not_after, NOW + Duration::days(365));
    }

    #[test]
    fn the_device_state_decides_the_credential_state() {
        for (state, want) in [
            (DeviceState::Issuing, Some(CredentialState::Pending)),
            (DeviceState::Pending, Some(CredentialState::Pending)),
            (DeviceState::Active, Some(CredentialState::Active)),
            (DeviceState::Suspended, None),
            (DeviceState::Revoked, None),
            (DeviceState::Available, None),
        ] {
            let w = world(state);
            let got = plan(&enrolment(&w, CertSlot::DigitalSignature, CSR)).map(|p| p.initial_state);
            match want {
                Some(s) => assert_eq!(got.unwrap(), s, "{state}"),
                None => assert!(matches!(got, Err(IssuanceError::DeviceState { .. })), "{state}"),
            }
        }
    }

    #[test]
    fn the_request_may_shorten_but_not_lengthen_or_change_the_policy() {
        let w = world(DeviceState::Active);
        let ch = |profile, validity_days| Channel::OperatorCsr { profile, validity_days };
        let p = plan(&enrolment(&w, CertSlot::KeyManagement, ch(None, Some(30)))).unwrap();
        assert_eq!(p.requested_not_after, NOW + Duration::days(30));
        let p = plan(&enrolment(&w, CertSlot::KeyManagement, ch(None, Some(5000)))).unwrap();
        assert_eq!(p.requested_not_after, NOW + Duration::days(365));
        assert!(matches!(
            plan(&enrolment(&w, CertSlot::KeyManagement, ch(None, Some(0)))),
            Err(IssuanceError::ZeroValidity)
        ));
        assert!(matches!(
            plan(&enrolment(&w, CertSlot::KeyManagement, ch(Some("piv-auth"), None))),
            Err(IssuanceError::ProfileMismatch { .. })
        ));
        // The long spelling of the 9A profile is the same profile.
        plan(&enrolment(&w, CertSlot::PivAuthentication, ch(Some("piv-authentication"), None))).unwrap();
    }

    #[test]
    fn keys_and_cards_must_fit() {
        let mut w = world(DeviceState::Active);
        w.policy.certificates.get_mut(&CertSlot::DigitalSignature).unwrap().algorithm = KeyAlgorithm::P384;
        assert!(matches!(
            plan(&enrolment(&w, CertSlot::DigitalSignature, CSR)),
            Err(IssuanceError::KeyAlgorithm { expected: KeyAlgorithm::P384, .. })
        ));
        w.device.card_guid = None;
        assert!(matches!(
            plan(&enrolment(&w, CertSlot::CardAuthentication, CSR)),
            Err(IssuanceError::NoCardUuid { .. })
        ));
        let other = world(DeviceState::Active);
        w.device.owner = Some(other.holder.id);
        assert!(matches!(
            plan(&enrolment(&w, CertSlot::KeyManagement, CSR)),
            Err(IssuanceError::NoHolder { .. })
        ));
    }

    #[test]
    fn hardware_bound_profiles_need_an_attestation() {
        let mut w = world(DeviceState::Active);
        w.device.kind = DeviceKind::Mobile;
        w.policy.certificates.get_mut(&CertSlot::DerivedPivAuthentication).unwrap().profile =
            "derived-piv-auth-hardware".into();
        assert!(matches!(
            plan(&enrolment(&w, CertSlot::DerivedPivAuthentication, CSR)),
            Err(IssuanceError::AttestationRequired { .. })
        ));
        // Mobile slots are not capped by a card's expiry.
        w.policy.certificates.get_mut(&CertSlot::DerivedPivAuthentication).unwrap().profile =
            "derived-piv-auth".into();
        let p = plan(&enrolment(&w, CertSlot::DerivedPivAuthentication, CSR)).unwrap();
        assert_eq!(p.cap_not_after, None);
    }

    /// The value of the subject's only attribute, decoded.
    fn common_name(name: &Name) -> String {
        let rdns = &name.0;
        assert_eq!(rdns.len(), 1, "{name}");
        let atvs: Vec<_> = rdns[0].0.iter().collect();
        assert_eq!(atvs.len(), 1, "{name}");
        assert_eq!(atvs[0].oid.to_string(), "2.5.4.3");
        let value = &atvs[0].value;
        match der::asn1::Utf8StringRef::try_from(value) {
            Ok(v) => v.as_str().to_owned(),
            Err(_) => der::asn1::PrintableStringRef::try_from(value).unwrap().as_str().to_owned(),
        }
    }

    #[test]
    fn phones_get_mobile_slots_only_and_the_hardware_profile_only_with_proof() {
        let mut w = world(DeviceState::Enrolling);
        w.device.kind = DeviceKind::Mobile;
        w.device.card_guid = None;
        let mobile = |hardware_attested| Channel::Mobile { hardware_attested };
        let p = plan(&enrolment(&w, CertSlot::DerivedPivAuthentication, mobile(false))).unwrap();
        assert_eq!((p.profile.id.as_str(), p.initial_state), ("derived-piv-auth", CredentialState::Active));
        assert_eq!(p.san.card_uuid, None);
        let p = plan(&enrolment(&w, CertSlot::DerivedPivAuthentication, mobile(true))).unwrap();
        assert_eq!(p.profile.id, "derived-piv-auth-hardware");
        // A policy naming the hardware profile still needs the proof.
        if let Some(slot) = w.policy.certificates.get_mut(&CertSlot::DerivedPivAuthentication) {
            slot.profile = "derived-piv-auth-hardware".into();
        }
        assert!(matches!(
            plan(&enrolment(&w, CertSlot::DerivedPivAuthentication, mobile(false))),
            Err(IssuanceError::AttestationRequired { .. })
        ));
        assert!(matches!(
            plan(&enrolment(&w, CertSlot::PivAuthentication, mobile(false))),
            Err(IssuanceError::NotAMobileSlot { slot: CertSlot::PivAuthentication })
        ));
        // The mobile slot takes RSA-2048 (SCEP), so this P-256 key does not fit.
        assert!(matches!(
            plan(&enrolment(&w, CertSlot::MobileDevice, mobile(false))),
            Err(IssuanceError::KeyAlgorithm { expected: KeyAlgorithm::Rsa2048, .. })
        ));
        w.device.state = DeviceState::Active;
        assert!(matches!(
            plan(&enrolment(&w, CertSlot::DerivedPivAuthentication, mobile(false))),
            Err(IssuanceError::DeviceState { state: DeviceState::Active, .. })
        ));
    }

    proptest::proptest! {
        /// Whatever a valid display name holds (DN specials, a leading `#`, inner spaces,
        /// non-ASCII), the subject's CN is exactly that name, or the plan says why not.
        #[test]
        fn the_subject_is_the_display_name_verbatim(
            name in r#"[#a-zA-Z0-9 ,+"\\<>;=éß漢-]{1,80}"#
        ) {
            let mut w = world(DeviceState::Active);
            w.holder.display_name = name.clone();
            proptest::prop_assume!(w.holder.validate().is_ok());
            match plan(&enrolment(&w, CertSlot::PivAuthentication, CSR)) {
                Ok(p) => proptest::prop_assert_eq!(common_name(&p.subject), name),
                Err(IssuanceError::Subject(reason)) => {
                    proptest::prop_assert!(name.chars().count() > 64, "{name:?}: {reason}")
                }
                Err(other) => proptest::prop_assert!(false, "{name:?}: {other}"),
            }
        }
    }
}
