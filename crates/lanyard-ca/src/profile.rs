//! Certificate profiles: what goes into a certificate of each kind.
//!
//! Profiles are plain serde data so an administrator can adjust them in configuration; the
//! built-in ones follow the FIPS 201-3 / FPKI Common Policy certificate profiles (see
//! `docs/ca.md` for the table). [`CertificateProfile::validate`] rejects a profile that contradicts
//! itself or RFC 5280 before anything is signed with it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use spki::ObjectIdentifier;

use crate::error::CaError;
use crate::keys::KeyAlgorithm;
use crate::oids;

/// An OID that (de)serialises as its dotted-decimal string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Oid(pub ObjectIdentifier);

impl TryFrom<String> for Oid {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        ObjectIdentifier::from_str(&s).map(Oid).map_err(|e| format!("invalid OID {s:?}: {e}"))
    }
}

impl From<Oid> for String {
    fn from(o: Oid) -> String {
        o.0.to_string()
    }
}

impl From<ObjectIdentifier> for Oid {
    fn from(o: ObjectIdentifier) -> Self {
        Oid(o)
    }
}

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Whether something must, may or must not appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    /// Must not appear.
    #[default]
    Forbidden,
    /// May appear.
    Optional,
    /// Must appear.
    Required,
}

/// The keyUsage bits (RFC 5280 §4.2.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyUsageBit {
    /// digitalSignature (0).
    DigitalSignature = 0,
    /// nonRepudiation / contentCommitment (1).
    NonRepudiation = 1,
    /// keyEncipherment (2): RSA key transport.
    KeyEncipherment = 2,
    /// dataEncipherment (3).
    DataEncipherment = 3,
    /// keyAgreement (4): EC(DH) keys.
    KeyAgreement = 4,
    /// keyCertSign (5): CA certificates only.
    KeyCertSign = 5,
    /// cRLSign (6).
    CrlSign = 6,
    /// encipherOnly (7), with keyAgreement.
    EncipherOnly = 7,
    /// decipherOnly (8), with keyAgreement.
    DecipherOnly = 8,
}

/// keyUsage of a profile. The bits may differ by key type, as for PIV Key Management, where RSA
/// keys transport keys (keyEncipherment) and EC keys agree on them (keyAgreement).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyUsageRule {
    /// Mark the extension critical (FPKI: always).
    pub critical: bool,
    /// Bits for P-256/P-384 keys.
    pub ec: Vec<KeyUsageBit>,
    /// Bits for RSA keys.
    pub rsa: Vec<KeyUsageBit>,
}

impl KeyUsageRule {
    fn same(critical: bool, bits: &[KeyUsageBit]) -> Self {
        KeyUsageRule { critical, ec: bits.to_vec(), rsa: bits.to_vec() }
    }

    /// The bits for a key of `alg`.
    pub fn bits_for(&self, alg: KeyAlgorithm) -> &[KeyUsageBit] {
        if alg.is_ec() { &self.ec } else { &self.rsa }
    }
}

/// extKeyUsage of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtKeyUsageRule {
    /// Mark the extension critical.
    pub critical: bool,
    /// The key purposes.
    pub purposes: Vec<Oid>,
}

/// basicConstraints of a CA profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConstraints {
    /// pathLenConstraint: how many CA certificates may follow this one; `None` for no limit.
    #[serde(default)]
    pub path_len: Option<u8>,
}

/// A part of the subject alternative name a request can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SanPart {
    /// FASC-N otherName (2.16.840.1.101.3.6.6).
    FascN,
    /// Card UUID as a `urn:uuid:` URI.
    CardUuid,
    /// Cardholder UUID as a `urn:uuid:` URI.
    CardholderUuid,
    /// Microsoft UPN otherName (1.3.6.1.4.1.311.20.2.3).
    Upn,
    /// rfc822Name.
    Email,
    /// dNSName.
    Dns,
    /// iPAddress.
    Ip,
}

impl fmt::Display for SanPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SanPart::FascN => "FASC-N (otherName 2.16.840.1.101.3.6.6)",
            SanPart::CardUuid => "card UUID (URI urn:uuid:)",
            SanPart::CardholderUuid => "cardholder UUID (URI urn:uuid:)",
            SanPart::Upn => "UPN (otherName 1.3.6.1.4.1.311.20.2.3)",
            SanPart::Email => "email (rfc822Name)",
            SanPart::Dns => "DNS name (dNSName)",
            SanPart::Ip => "IP address (iPAddress)",
        })
    }
}

/// Which subject-alternative-name parts a profile allows or requires.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SanRules {
    /// FASC-N otherName.
    pub fasc_n: Presence,
    /// Card UUID URI.
    pub card_uuid: Presence,
    /// Cardholder UUID URI.
    pub cardholder_uuid: Presence,
    /// UPN otherName.
    pub upn: Presence,
    /// rfc822Name(s).
    pub email: Presence,
    /// dNSName(s).
    pub dns: Presence,
    /// iPAddress(es).
    pub ip: Presence,
    /// Require at least one SAN entry of any allowed kind (e.g. a TLS server needs a DNS name or
    /// an IP address).
    pub at_least_one: bool,
}

impl SanRules {
    /// The rule for one part.
    pub fn get(&self, part: SanPart) -> Presence {
        match part {
            SanPart::FascN => self.fasc_n,
            SanPart::CardUuid => self.card_uuid,
            SanPart::CardholderUuid => self.cardholder_uuid,
            SanPart::Upn => self.upn,
            SanPart::Email => self.email,
            SanPart::Dns => self.dns,
            SanPart::Ip => self.ip,
        }
    }

    fn any_allowed(&self) -> bool {
        [
            SanPart::FascN,
            SanPart::CardUuid,
            SanPart::CardholderUuid,
            SanPart::Upn,
            SanPart::Email,
            SanPart::Dns,
            SanPart::Ip,
        ]
        .into_iter()
        .any(|p| self.get(p) != Presence::Forbidden)
    }
}

fn default_true() -> bool {
    true
}

/// A certificate profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateProfile {
    /// Stable identifier (`piv-auth`, `card-auth`, …).
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// Present for CA certificates (basicConstraints cA=TRUE, critical); absent for end entities,
    /// which then carry no basicConstraints at all.
    #[serde(default)]
    pub ca: Option<CaConstraints>,
    /// Key algorithms the subject key may use.
    pub key_algorithms: Vec<KeyAlgorithm>,
    /// Longest validity in days; shorter when capped by the request (e.g. the card's expiry) or by
    /// the issuer's own expiry.
    pub max_validity_days: u32,
    /// Whether the subject DN may be empty (then the SAN is marked critical, RFC 5280 §4.2.1.6).
    pub subject: Presence,
    /// keyUsage.
    pub key_usage: KeyUsageRule,
    /// extKeyUsage; none when absent.
    #[serde(default)]
    pub extended_key_usage: Option<ExtKeyUsageRule>,
    /// certificatePolicies (non-critical); none when empty.
    #[serde(default)]
    pub policies: Vec<Oid>,
    /// Subject alternative name rules.
    #[serde(default)]
    pub san: SanRules,
    /// Add id-pkix-ocsp-nocheck (delegated OCSP responders only).
    #[serde(default)]
    pub ocsp_no_check: bool,
    /// Put the issuer's OCSP URL into authorityInfoAccess.
    #[serde(default = "default_true")]
    pub aia_ocsp: bool,
    /// Add a cRLDistributionPoints extension with the issuer's CRL URL.
    #[serde(default = "default_true")]
    pub crl_distribution_point: bool,
}

impl CertificateProfile {
    /// Checks that the profile is self-consistent and RFC 5280-compliant.
    pub fn validate(&self) -> Result<(), CaError> {
        let bad = |reason: String| Err(CaError::InvalidProfile { profile: self.id.clone(), reason });
        if self.id.is_empty() {
            return bad("empty id".into());
        }
        if self.max_validity_days == 0 {
            return bad("max_validity_days must be at least 1".into());
        }
        if self.key_algorithms.is_empty() {
            return bad("no key algorithm allowed".into());
        }
        for (label, bits, is_ec) in [("ec", &self.key_usage.ec, true), ("rsa", &self.key_usage.rsa, false)] {
            let used = self.key_algorithms.iter().any(|a| a.is_ec() == is_ec);
            if !used {
                continue;
            }
            if bits.is_empty() {
                return bad(format!("key_usage.{label} is empty (RFC 5280 requires at least one bit)"));
            }
            let has = |b| bits.contains(&b);
            if is_ec && (has(KeyUsageBit::KeyEncipherment) || has(KeyUsageBit::DataEncipherment)) {
                return bad("keyEncipherment/dataEncipherment cannot be used with EC keys".into());
            }
            if !is_ec
                && [KeyUsageBit::KeyAgreement, KeyUsageBit::EncipherOnly, KeyUsageBit::DecipherOnly]
                    .iter()
                    .any(|b| has(*b))
            {
                return bad("keyAgreement (and encipherOnly/decipherOnly) is only for EC keys".into());
            }
            if (has(KeyUsageBit::EncipherOnly) || has(KeyUsageBit::DecipherOnly))
                && !has(KeyUsageBit::KeyAgreement)
            {
                return bad("encipherOnly/decipherOnly need keyAgreement".into());
            }
            if self.ca.is_some() != has(KeyUsageBit::KeyCertSign) {
                return bad("keyCertSign must be set exactly when the profile is a CA profile".into());
            }
        }
        if let Some(eku) = &self.extended_key_usage
            && eku.purposes.is_empty()
        {
            return bad("extended_key_usage has no purposes".into());
        }
        if self.ocsp_no_check
            && !self
                .extended_key_usage
                .as_ref()
                .is_some_and(|e| e.purposes.contains(&Oid(oids::KP_OCSP_SIGNING)))
        {
            return bad(
                "ocsp_no_check is only for OCSP responder certificates (EKU id-kp-OCSPSigning)".into()
            );
        }
        if self.subject != Presence::Required && !self.san.any_allowed() {
            return bad("the subject may be empty but no subject alternative name is allowed".into());
        }
        Ok(())
    }

    /// All built-in profiles.
    pub fn builtin_all() -> Vec<CertificateProfile> {
        vec![
            Self::piv_authentication(),
            Self::card_authentication(),
            Self::digital_signature(),
            Self::key_management(),
            Self::derived_piv_authentication(),
            Self::derived_piv_authentication_hardware(),
            Self::mobile_device(),
            Self::content_signer(),
            Self::profile_signer(),
            Self::scep_ra(),
            Self::ocsp_signer(),
            Self::tls_server(),
            Self::root_ca(),
            Self::issuing_ca(),
        ]
    }

    /// A built-in profile by id.
    pub fn builtin(id: &str) -> Option<CertificateProfile> {
        Self::builtin_all().into_iter().find(|p| p.id == id)
    }

    fn end_entity(id: &str, name: &str, ku: KeyUsageRule) -> Self {
        CertificateProfile {
            id: id.into(),
            name: name.into(),
            ca: None,
            key_algorithms: KeyAlgorithm::ALL.to_vec(),
            // FPKI Common Policy: subscriber certificates live at most three years.
            max_validity_days: 3 * 365,
            subject: Presence::Required,
            key_usage: ku,
            extended_key_usage: None,
            policies: Vec::new(),
            san: SanRules::default(),
            ocsp_no_check: false,
            aia_ocsp: true,
            crl_distribution_point: true,
        }
    }

    fn eku(critical: bool, purposes: &[ObjectIdentifier]) -> Option<ExtKeyUsageRule> {
        Some(ExtKeyUsageRule { critical, purposes: purposes.iter().copied().map(Oid).collect() })
    }

    /// PIV Authentication, slot 9A.
    pub fn piv_authentication() -> Self {
        let mut p = Self::end_entity(
            "piv-auth",
            "PIV Authentication (9A)",
            KeyUsageRule::same(true, &[KeyUsageBit::DigitalSignature]),
        );
        p.extended_key_usage =
            Self::eku(false, &[oids::KP_CLIENT_AUTH, oids::KP_PKINIT_CLIENT, oids::KP_MS_SMARTCARD_LOGON]);
        p.policies = vec![Oid(oids::FPKI_COMMON_AUTHENTICATION)];
        p.san = SanRules {
            fasc_n: Presence::Required,
            card_uuid: Presence::Required,
            cardholder_uuid: Presence::Optional,
            upn: Presence::Optional,
            email: Presence::Optional,
            ..SanRules::default()
        };
        p
    }

    /// Card Authentication, slot 9E. The subject may be empty; the SAN is then critical.
    pub fn card_authentication() -> Self {
        let mut p = Self::end_entity(
            "card-auth",
            "Card Authentication (9E)",
            KeyUsageRule::same(true, &[KeyUsageBit::DigitalSignature]),
        );
        p.subject = Presence::Optional;
        p.extended_key_usage = Self::eku(true, &[oids::KP_PIV_CARD_AUTH]);
        p.policies = vec![Oid(oids::FPKI_COMMON_CARD_AUTH)];
        p.san = SanRules { fasc_n: Presence::Required, card_uuid: Presence::Required, ..SanRules::default() };
        p
    }

    /// Digital Signature, slot 9C.
    pub fn digital_signature() -> Self {
        let mut p = Self::end_entity(
            "digital-signature",
            "Digital Signature (9C)",
            KeyUsageRule::same(true, &[KeyUsageBit::DigitalSignature, KeyUsageBit::NonRepudiation]),
        );
        p.extended_key_usage = Self::eku(
            false,
            &[oids::KP_EMAIL_PROTECTION, oids::KP_MS_DOCUMENT_SIGNING, oids::KP_ADOBE_AUTHENTIC_DOCUMENTS],
        );
        p.policies = vec![Oid(oids::FPKI_COMMON_HARDWARE)];
        p.san = SanRules { email: Presence::Optional, upn: Presence::Optional, ..SanRules::default() };
        p
    }

    /// Key Management, slot 9D: keyEncipherment for RSA keys, keyAgreement for EC keys.
    pub fn key_management() -> Self {
        let mut p = Self::end_entity(
            "key-management",
            "Key Management (9D)",
            KeyUsageRule {
                critical: true,
                ec: vec![KeyUsageBit::KeyAgreement],
                rsa: vec![KeyUsageBit::KeyEncipherment],
            },
        );
        p.extended_key_usage = Self::eku(false, &[oids::KP_EMAIL_PROTECTION]);
        p.policies = vec![Oid(oids::FPKI_COMMON_HARDWARE)];
        p.san = SanRules { email: Presence::Optional, upn: Presence::Optional, ..SanRules::default() };
        p
    }

    fn derived(id: &str, name: &str, policy: ObjectIdentifier) -> Self {
        let mut p = Self::end_entity(id, name, KeyUsageRule::same(true, &[KeyUsageBit::DigitalSignature]));
        p.extended_key_usage =
            Self::eku(false, &[oids::KP_CLIENT_AUTH, oids::KP_PKINIT_CLIENT, oids::KP_MS_SMARTCARD_LOGON]);
        p.policies = vec![Oid(policy)];
        // Derived credentials are bound to the identity account, not to the sponsor card, so the
        // card's FASC-N and UUID stay out of them.
        p.san = SanRules {
            cardholder_uuid: Presence::Optional,
            upn: Presence::Optional,
            email: Presence::Optional,
            ..SanRules::default()
        };
        p
    }

    /// Derived PIV Authentication, software token (AAL2).
    pub fn derived_piv_authentication() -> Self {
        Self::derived("derived-piv-auth", "Derived PIV Authentication", oids::FPKI_COMMON_DERIVED_PIV_AUTH)
    }

    /// Derived PIV Authentication, hardware token (AAL3).
    pub fn derived_piv_authentication_hardware() -> Self {
        Self::derived(
            "derived-piv-auth-hardware",
            "Derived PIV Authentication (hardware)",
            oids::FPKI_COMMON_DERIVED_PIV_AUTH_HARDWARE,
        )
    }

    /// A mobile device enrolled through a configuration profile (SCEP/ACME): client authentication
    /// for Wi-Fi/VPN/MDM. No FPKI policy covers it, so none is asserted.
    pub fn mobile_device() -> Self {
        let mut p = Self::end_entity(
            "mobile-device",
            "Mobile device",
            KeyUsageRule {
                critical: true,
                ec: vec![KeyUsageBit::DigitalSignature],
                rsa: vec![KeyUsageBit::DigitalSignature, KeyUsageBit::KeyEncipherment],
            },
        );
        p.max_validity_days = 365;
        p.extended_key_usage = Self::eku(false, &[oids::KP_CLIENT_AUTH]);
        p.san = SanRules {
            upn: Presence::Optional,
            email: Presence::Optional,
            dns: Presence::Optional,
            ..SanRules::default()
        };
        p
    }

    /// PIV content signer: signs the CHUID and the card security object. It must outlive the cards
    /// it signs for, and PIV cards live up to six years.
    pub fn content_signer() -> Self {
        let mut p = Self::end_entity(
            "content-signer",
            "PIV Content Signer",
            KeyUsageRule::same(true, &[KeyUsageBit::DigitalSignature]),
        );
        p.max_validity_days = 6 * 365 + 2;
        p.extended_key_usage = Self::eku(true, &[oids::KP_PIV_CONTENT_SIGNING]);
        p.policies = vec![Oid(oids::FPKI_COMMON_PIV_CONTENT_SIGNING)];
        p
    }

    /// Signs Apple configuration profiles (`.mobileconfig`) so that devices show them as verified.
    /// Re-issued by the server as it ages, like the OCSP responder. No extKeyUsage: no purpose
    /// names profile signing, and a CMS verifier's default (S/MIME signing, as `openssl cms
    /// -verify` checks) refuses a certificate whose EKU lists other purposes only.
    pub fn profile_signer() -> Self {
        let mut p = Self::end_entity(
            "profile-signer",
            "Configuration Profile Signer",
            KeyUsageRule::same(true, &[KeyUsageBit::DigitalSignature]),
        );
        p.max_validity_days = 2 * 365;
        p
    }

    /// The SCEP registration authority (RFC 8894 §2.1.1): signs CertReps and receives requests
    /// encrypted to it. Clients, Apple's among them, only do RSA key transport, so the key is RSA
    /// even under an EC CA, and both usages are needed: iOS stops before sending a request to an
    /// RA certificate that lacks either.
    pub fn scep_ra() -> Self {
        let mut p = Self::end_entity(
            "scep-ra",
            "SCEP RA",
            KeyUsageRule {
                critical: true,
                ec: vec![KeyUsageBit::DigitalSignature],
                rsa: vec![KeyUsageBit::DigitalSignature, KeyUsageBit::KeyEncipherment],
            },
        );
        p.key_algorithms = vec![KeyAlgorithm::Rsa2048, KeyAlgorithm::Rsa3072];
        p.max_validity_days = 2 * 365;
        p
    }

    /// Delegated OCSP responder (RFC 6960 §4.2.2.2), with id-pkix-ocsp-nocheck. Short-lived because
    /// clients do not check its revocation status.
    pub fn ocsp_signer() -> Self {
        let mut p = Self::end_entity(
            "ocsp-signer",
            "OCSP Signer",
            KeyUsageRule::same(true, &[KeyUsageBit::DigitalSignature]),
        );
        p.max_validity_days = 90;
        p.extended_key_usage = Self::eku(false, &[oids::KP_OCSP_SIGNING]);
        p.ocsp_no_check = true;
        p.aia_ocsp = false;
        p.crl_distribution_point = false;
        p
    }

    /// TLS server (Lanyard's own HTTPS endpoints): DNS names and/or IP addresses.
    pub fn tls_server() -> Self {
        let mut p = Self::end_entity(
            "tls-server",
            "TLS server",
            KeyUsageRule {
                critical: true,
                ec: vec![KeyUsageBit::DigitalSignature],
                rsa: vec![KeyUsageBit::DigitalSignature, KeyUsageBit::KeyEncipherment],
            },
        );
        p.max_validity_days = 397;
        p.subject = Presence::Optional;
        p.extended_key_usage = Self::eku(false, &[oids::KP_SERVER_AUTH]);
        p.san = SanRules {
            dns: Presence::Optional,
            ip: Presence::Optional,
            at_least_one: true,
            ..SanRules::default()
        };
        p
    }

    /// Self-signed root CA.
    pub fn root_ca() -> Self {
        let mut p = Self::end_entity(
            "root-ca",
            "Root CA",
            KeyUsageRule::same(true, &[KeyUsageBit::KeyCertSign, KeyUsageBit::CrlSign]),
        );
        p.ca = Some(CaConstraints { path_len: None });
        p.max_validity_days = 20 * 365 + 5;
        p
    }

    /// Issuing CA under the root: issues end-entity certificates only (pathLenConstraint 0) and
    /// asserts anyPolicy so that it can issue under every subscriber policy above.
    pub fn issuing_ca() -> Self {
        let mut p = Self::end_entity(
            "issuing-ca",
            "Issuing CA",
            KeyUsageRule::same(true, &[KeyUsageBit::KeyCertSign, KeyUsageBit::CrlSign]),
        );
        p.ca = Some(CaConstraints { path_len: Some(0) });
        p.max_validity_days = 10 * 365 + 3;
        p.policies = vec![Oid(oids::ANY_POLICY)];
        // The root publishes a CRL (an ARL) but runs no OCSP responder.
        p.aia_ocsp = false;
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_valid_and_unique() {
        let all = CertificateProfile::builtin_all();
        for p in &all {
            p.validate().unwrap();
        }
        let mut ids: Vec<_> = all.iter().map(|p| p.id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), all.len());
    }

    #[test]
    fn key_agreement_with_rsa_is_rejected() {
        let mut p = CertificateProfile::key_management();
        p.key_usage.rsa = vec![KeyUsageBit::KeyAgreement];
        let err = p.validate().unwrap_err().to_string();
        assert!(err.contains("keyAgreement"), "{err}");
        let mut p = CertificateProfile::key_management();
        p.key_usage.ec = vec![KeyUsageBit::KeyEncipherment];
        assert!(p.validate().is_err());
    }

    #[test]
    fn key_cert_sign_only_for_ca() {
        let mut p = CertificateProfile::piv_authentication();
        p.key_usage.ec.push(KeyUsageBit::KeyCertSign);
        assert!(p.validate().is_err());
        let mut p = CertificateProfile::issuing_ca();
        p.key_usage = KeyUsageRule::same(true, &[KeyUsageBit::CrlSign]);
        assert!(p.validate().is_err());
    }
}
