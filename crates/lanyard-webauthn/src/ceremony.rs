//! The two ceremonies' relying-party checks (WebAuthn §7.1 registration, §7.2 authentication)
//! that need no storage: the caller has already found the challenge it issued (by the one in
//! `clientDataJSON`, single use) and, for an assertion, the stored public key; it applies the
//! counter verdict and keeps the new counter.

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::WebAuthnError;
use crate::attestation::{AttestationKind, AttestationObject};
use crate::auth_data::AuthenticatorData;
use crate::client_data::{Ceremony, ClientData};
use crate::cose::CoseKey;

/// Whether the authenticator must verify the user (PIN or biometrics: the UV flag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserVerification {
    /// UV must be set, else the response is refused.
    Required,
    /// Asked for, not insisted on.
    Preferred,
}

impl UserVerification {
    /// The value of `userVerification` in the options sent to the browser.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Required => "required",
            Self::Preferred => "preferred",
        }
    }
}

/// The relying party: the RP ID (the portal's host name) and the one origin its pages have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelyingParty {
    pub id: String,
    pub origin: String,
}

/// Why a URL cannot name a WebAuthn relying party.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RpError {
    #[error("{0:?} is not an https:// URL (plain http is allowed for localhost only)")]
    Scheme(String),
    #[error("{0:?} has no host name; passkeys need one (browsers refuse IP addresses as relying party ids)")]
    NoHostName(String),
}

impl RelyingParty {
    /// The relying party of a server whose pages live at `public_url` (`https://host[:port][/…]`):
    /// RP ID `host` (lowercase), origin `https://host[:port]` without a default port. Plain
    /// `http://localhost` is accepted, as browsers treat it as a secure context.
    pub fn from_public_url(public_url: &str) -> Result<Self, RpError> {
        let (scheme, rest) =
            public_url.split_once("://").ok_or_else(|| RpError::Scheme(public_url.to_owned()))?;
        let scheme = scheme.to_ascii_lowercase();
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default().to_ascii_lowercase();
        if authority.contains('@') || authority.starts_with('[') {
            return Err(RpError::NoHostName(public_url.to_owned()));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h.to_owned(), Some(p)),
            Some(_) => return Err(RpError::NoHostName(public_url.to_owned())),
            None => (authority.clone(), None),
        };
        let is_name = !host.is_empty()
            && host.parse::<std::net::Ipv4Addr>().is_err()
            && host.split('.').all(|l| {
                !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
            && host.bytes().any(|b| b.is_ascii_alphabetic());
        if !is_name {
            return Err(RpError::NoHostName(public_url.to_owned()));
        }
        let default_port = match (scheme.as_str(), host.as_str()) {
            ("https", _) => "443",
            ("http", "localhost") => "80",
            _ => return Err(RpError::Scheme(public_url.to_owned())),
        };
        let origin = match port {
            Some(p) if p != default_port => format!("{scheme}://{host}:{p}"),
            _ => format!("{scheme}://{host}"),
        };
        Ok(Self { id: host, origin })
    }

    fn rp_id_hash(&self) -> [u8; 32] {
        Sha256::digest(self.id.as_bytes()).into()
    }

    fn check_auth_data(&self, data: &AuthenticatorData, uv: UserVerification) -> Result<(), WebAuthnError> {
        if data.rp_id_hash != self.rp_id_hash() {
            return Err(WebAuthnError::RpIdHashMismatch(self.id.clone()));
        }
        if !data.flags.user_present() {
            return Err(WebAuthnError::UserNotPresent);
        }
        if uv == UserVerification::Required && !data.flags.user_verified() {
            return Err(WebAuthnError::UserNotVerified);
        }
        Ok(())
    }
}

/// A registration that passed every check: what the relying party stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedRegistration {
    pub credential_id: Vec<u8>,
    pub public_key: CoseKey,
    pub sign_count: u32,
    pub aaguid: [u8; 16],
    pub user_verified: bool,
    pub backup_eligible: bool,
    pub attestation: AttestationKind,
}

/// §7.1 steps 5–21 without storage: `client_data` must be a `webauthn.create` for `challenge`
/// from the relying party's origin, not framed; the attestation object's authenticator data must
/// be for this RP ID, with UP (and UV when required) and an ES256 credential; its statement
/// (none or packed) must verify. The caller refuses a credential id already registered.
pub fn verify_registration(
    rp: &RelyingParty,
    client_data: &ClientData,
    challenge: &[u8],
    attestation_object: &[u8],
    uv: UserVerification,
) -> Result<VerifiedRegistration, WebAuthnError> {
    client_data.check(Ceremony::Create, challenge, &rp.origin)?;
    let object = AttestationObject::parse(attestation_object)?;
    let data = &object.auth_data;
    rp.check_auth_data(data, uv)?;
    let credential = data.attested.as_ref().ok_or(WebAuthnError::NoCredential)?;
    let attestation = object.verify(&client_data.hash)?;
    Ok(VerifiedRegistration {
        credential_id: credential.credential_id.clone(),
        public_key: credential.public_key.clone(),
        sign_count: data.sign_count,
        aaguid: credential.aaguid,
        user_verified: data.flags.user_verified(),
        backup_eligible: data.flags.backup_eligible(),
        attestation,
    })
}

/// An assertion that passed every check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assertion {
    pub sign_count: u32,
    pub user_verified: bool,
}

/// §7.2 steps 10–21 without storage: `client_data` must be a `webauthn.get` for `challenge` from
/// the relying party's origin, not framed; `authenticator_data` must be for this RP ID with UP
/// (and UV when required) and no attested credential; `signature` must verify with `key` over
/// `authenticator_data ‖ SHA-256(clientDataJSON)`. The counter is the caller's, with
/// [`check_counter`].
pub fn verify_assertion(
    rp: &RelyingParty,
    client_data: &ClientData,
    challenge: &[u8],
    authenticator_data: &[u8],
    signature: &[u8],
    key: &CoseKey,
    uv: UserVerification,
) -> Result<Assertion, WebAuthnError> {
    client_data.check(Ceremony::Get, challenge, &rp.origin)?;
    let data = AuthenticatorData::parse(authenticator_data)?;
    if data.attested.is_some() {
        return Err(WebAuthnError::AuthData("an assertion carries attested credential data".into()));
    }
    rp.check_auth_data(&data, uv)?;
    let mut signed = authenticator_data.to_vec();
    signed.extend_from_slice(&client_data.hash);
    key.verify(&signed, signature)?;
    Ok(Assertion { sign_count: data.sign_count, user_verified: data.flags.user_verified() })
}

/// What a signature counter says (§6.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterVerdict {
    /// The counter moved forward, or the authenticator keeps none (both zero): store `presented`.
    Fine,
    /// The counter did not increase although one of the two is non-zero: the credential's key may
    /// have been copied. Lanyard refuses the sign-in and audits it.
    PossibleClone { stored: u32, presented: u32 },
}

pub fn check_counter(stored: u32, presented: u32) -> CounterVerdict {
    if (stored == 0 && presented == 0) || presented > stored {
        CounterVerdict::Fine
    } else {
        CounterVerdict::PossibleClone { stored, presented }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth_data::Flags;
    use crate::testkit::{Authenticator, auth_data, client_data};
    use proptest::prelude::*;

    fn rp() -> RelyingParty {
        RelyingParty::from_public_url("https://lanyard.example:8443/").unwrap()
    }

    #[test]
    fn relying_parties_come_from_host_names_only() {
        let r = rp();
        assert_eq!((r.id.as_str(), r.origin.as_str()), ("lanyard.example", "https://lanyard.example:8443"));
        let r = RelyingParty::from_public_url("https://Lanyard.Example:443").unwrap();
        assert_eq!((r.id.as_str(), r.origin.as_str()), ("lanyard.example", "https://lanyard.example"));
        let r = RelyingParty::from_public_url("http://localhost:4000").unwrap();
        assert_eq!((r.id.as_str(), r.origin.as_str()), ("localhost", "http://localhost:4000"));
        for bad in [
            "https://127.0.0.1:8443",
            "https://[::1]:8443",
            "http://lanyard.example",
            "lanyard.example",
            "https://",
            "https://a..b",
            "https://u@h.example",
            "https://h.example:x",
        ] {
            assert!(RelyingParty::from_public_url(bad).is_err(), "{bad}");
        }
    }

    fn registration(a: &Authenticator, challenge: &[u8], origin: &str) -> (ClientData, Vec<u8>) {
        let cd = client_data("webauthn.create", challenge, origin, false);
        let parsed = ClientData::parse(&cd).unwrap();
        let obj = a.attestation_self("lanyard.example", &parsed.hash);
        (parsed, obj)
    }

    #[test]
    fn a_registration_passes_and_reports_the_credential() {
        let a = Authenticator::new();
        let (cd, obj) = registration(&a, b"challenge-0123456789", "https://lanyard.example:8443");
        let r = verify_registration(&rp(), &cd, b"challenge-0123456789", &obj, UserVerification::Required)
            .unwrap();
        assert_eq!(r.credential_id, a.credential_id);
        assert_eq!(r.public_key, a.cose());
        assert_eq!(r.attestation, AttestationKind::SelfAttestation);
        assert!(r.user_verified);
    }

    #[test]
    fn a_registration_for_another_site_or_without_presence_is_refused() {
        let a = Authenticator::new();
        let (cd, _) = registration(&a, b"c", "https://lanyard.example:8443");
        let other_rp = a.attestation_none("evil.example", Flags::UP | Flags::UV);
        assert!(matches!(
            verify_registration(&rp(), &cd, b"c", &other_rp, UserVerification::Required),
            Err(WebAuthnError::RpIdHashMismatch(_))
        ));
        let absent = a.attestation_none("lanyard.example", Flags::UV);
        assert_eq!(
            verify_registration(&rp(), &cd, b"c", &absent, UserVerification::Preferred),
            Err(WebAuthnError::UserNotPresent)
        );
        let unverified = a.attestation_none("lanyard.example", Flags::UP);
        assert_eq!(
            verify_registration(&rp(), &cd, b"c", &unverified, UserVerification::Required),
            Err(WebAuthnError::UserNotVerified)
        );
        assert!(verify_registration(&rp(), &cd, b"c", &unverified, UserVerification::Preferred).is_ok());
        let (foreign, obj) = registration(&a, b"c", "https://evil.example");
        assert!(matches!(
            verify_registration(&rp(), &foreign, b"c", &obj, UserVerification::Required),
            Err(WebAuthnError::OriginMismatch { .. })
        ));
    }

    fn assertion(a: &Authenticator, flags: u8, count: u32, origin: &str) -> (ClientData, Vec<u8>, Vec<u8>) {
        let cd = client_data("webauthn.get", b"sign-in", origin, false);
        let ad = auth_data("lanyard.example", flags, count);
        let sig = a.assert(&ad, &cd);
        (ClientData::parse(&cd).unwrap(), ad, sig)
    }

    #[test]
    fn an_assertion_passes_and_every_tampering_fails() {
        let a = Authenticator::new();
        let origin = "https://lanyard.example:8443";
        let (cd, ad, sig) = assertion(&a, Flags::UP | Flags::UV, 5, origin);
        let ok = verify_assertion(&rp(), &cd, b"sign-in", &ad, &sig, &a.cose(), UserVerification::Required)
            .unwrap();
        assert_eq!(ok, Assertion { sign_count: 5, user_verified: true });
        // Another key.
        let b = Authenticator::new();
        assert_eq!(
            verify_assertion(&rp(), &cd, b"sign-in", &ad, &sig, &b.cose(), UserVerification::Required),
            Err(WebAuthnError::BadSignature)
        );
        // A counter changed after signing.
        let mut bumped = ad.clone();
        bumped[36] ^= 1;
        assert_eq!(
            verify_assertion(&rp(), &cd, b"sign-in", &bumped, &sig, &a.cose(), UserVerification::Required),
            Err(WebAuthnError::BadSignature)
        );
        // An RP ID hash of another site, even signed correctly.
        let mut foreign = ad.clone();
        foreign[..32].copy_from_slice(&Sha256::digest(b"evil.example"));
        let resigned = a.sign(&[foreign.clone(), cd.hash.to_vec()].concat());
        assert!(matches!(
            verify_assertion(
                &rp(),
                &cd,
                b"sign-in",
                &foreign,
                &resigned,
                &a.cose(),
                UserVerification::Required
            ),
            Err(WebAuthnError::RpIdHashMismatch(_))
        ));
        // Wrong challenge, wrong ceremony.
        assert_eq!(
            verify_assertion(&rp(), &cd, b"other", &ad, &sig, &a.cose(), UserVerification::Required),
            Err(WebAuthnError::ChallengeMismatch)
        );
        let (up_only, ad2, sig2) = assertion(&a, Flags::UP, 6, origin);
        assert_eq!(
            verify_assertion(&rp(), &up_only, b"sign-in", &ad2, &sig2, &a.cose(), UserVerification::Required),
            Err(WebAuthnError::UserNotVerified)
        );
        assert!(
            verify_assertion(
                &rp(),
                &up_only,
                b"sign-in",
                &ad2,
                &sig2,
                &a.cose(),
                UserVerification::Preferred
            )
            .is_ok()
        );
    }

    #[test]
    fn counters_must_increase_unless_both_are_zero() {
        assert_eq!(check_counter(0, 0), CounterVerdict::Fine);
        assert_eq!(check_counter(0, 1), CounterVerdict::Fine);
        assert_eq!(check_counter(4, 5), CounterVerdict::Fine);
        assert_eq!(check_counter(5, 5), CounterVerdict::PossibleClone { stored: 5, presented: 5 });
        assert_eq!(check_counter(5, 0), CounterVerdict::PossibleClone { stored: 5, presented: 0 });
        assert_eq!(check_counter(5, 2), CounterVerdict::PossibleClone { stored: 5, presented: 2 });
    }

    proptest! {
        #[test]
        fn the_counter_rule_holds(stored in any::<u32>(), presented in any::<u32>()) {
            let fine = check_counter(stored, presented) == CounterVerdict::Fine;
            prop_assert_eq!(fine, presented > stored || (stored == 0 && presented == 0));
        }

        #[test]
        fn any_url_is_judged_without_panicking(url in "\\PC{0,60}") {
            if let Ok(rp) = RelyingParty::from_public_url(&url) {
                let with_port = format!("{}:", rp.id);
                prop_assert!(rp.origin.ends_with(&rp.id) || rp.origin.contains(&with_port));
            }
        }
    }
}
