//! YubiKey PIV attestation: evidence that a key was generated on a card, checked before the CA
//! certifies it.
//!
//! The card answers ATTEST (INS `F9`) with a certificate for the slot's public key, signed by the
//! device's attestation key in slot F9. The F9 certificate (object `5FFF01`) is in turn signed by
//! the manufacturer's attestation root (Yubico's, or the installation root of Lanyard's software
//! card). Checking the chain, and that the attested key is the key the card just returned, tells
//! the issuer the private key never left that card.

use aws_lc_rs::digest;
use der::asn1::Uint;
use der::{Decode, Encode};
use serde::{Deserialize, Serialize};
use spki::SubjectPublicKeyInfoOwned;
use time::OffsetDateTime;
use x509_cert::Certificate;

use crate::error::{AttestationError, ChainPosition, CsrError};
use crate::keys::verify_signature;
use crate::{oids, x509time};

/// What a verified attestation says about the key and the device, for the credential's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationEvidence {
    /// Firmware version as `major.minor.patch` (extension …41482.3.3), if present.
    pub firmware_version: Option<String>,
    /// Device serial number (extension …41482.3.7), if present.
    pub serial: Option<u64>,
    /// PIN policy byte (extension …41482.3.8, first byte): 1 never, 2 once, 3 always,
    /// 4 match-once, 5 match-always.
    pub pin_policy: Option<u8>,
    /// Touch policy byte (extension …41482.3.8, second byte): 1 never, 2 always, 3 cached.
    pub touch_policy: Option<u8>,
    /// Form factor byte (extension …41482.3.9), if present.
    pub form_factor: Option<u8>,
    /// Subject DN of the attestation certificate (RFC 4514).
    pub attestation_subject: String,
    /// Subject DN of the F9 intermediate.
    pub intermediate_subject: String,
    /// Subject DN of the root that signed the intermediate.
    pub root_subject: String,
    /// Lower-case hex SHA-256 of the attestation certificate's DER.
    pub attestation_sha256: String,
    /// Lower-case hex SHA-256 of the F9 intermediate certificate's DER.
    pub intermediate_sha256: String,
    /// Lower-case hex SHA-256 of the root certificate's DER.
    pub root_sha256: String,
}

fn sha256_hex(der: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, der))
}

fn parse(der: &[u8], position: ChainPosition) -> Result<Certificate, AttestationError> {
    Certificate::from_der(der).map_err(|_| AttestationError::MalformedDer(position))
}

fn check_validity(
    cert: &Certificate,
    position: ChainPosition,
    now: OffsetDateTime,
) -> Result<(), AttestationError> {
    let validity = &cert.tbs_certificate.validity;
    let not_before =
        x509time::from_x509(&validity.not_before).map_err(|_| AttestationError::MalformedDer(position))?;
    let not_after =
        x509time::from_x509(&validity.not_after).map_err(|_| AttestationError::MalformedDer(position))?;
    if now < not_before {
        return Err(AttestationError::NotYetValid { position, not_before: x509time::rfc3339(not_before) });
    }
    if now > not_after {
        return Err(AttestationError::Expired { position, not_after: x509time::rfc3339(not_after) });
    }
    Ok(())
}

/// Verifies `cert`'s signature with `issuer_key`.
fn signed_by(
    cert: &Certificate,
    issuer_key: &SubjectPublicKeyInfoOwned,
    position: ChainPosition,
) -> Result<bool, AttestationError> {
    let tbs = cert.tbs_certificate.to_der().map_err(|_| AttestationError::MalformedDer(position))?;
    let signature = cert.signature.as_bytes().ok_or(AttestationError::MalformedDer(position))?;
    match verify_signature(issuer_key, &cert.signature_algorithm, &tbs, signature) {
        Ok(()) => Ok(true),
        Err(CsrError::BadSignature) => Ok(false),
        Err(other) => Err(AttestationError::UnsupportedAlgorithm { position, reason: other.to_string() }),
    }
}

/// The raw extnValue contents of the extension `oid`, if present.
fn extension(cert: &Certificate, oid: der::asn1::ObjectIdentifier) -> Option<&[u8]> {
    cert.tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == oid)
        .map(|e| e.extn_value.as_bytes())
}

/// Checks a YubiKey PIV attestation and returns what it attests.
///
/// - `attestation_cert_der`: the ATTEST answer for the slot.
/// - `intermediate_f9_der`: the device's attestation certificate (object `5FFF01`).
/// - `roots`: the trusted attestation roots, DER.
/// - `expected_public_key_spki_der`: the SubjectPublicKeyInfo the card returned from GENERATE.
///
/// The F9 certificate must be signed by one of the roots, the attestation certificate by the F9
/// key, every certificate of the chain must be valid at `now`, and the attested key must be the
/// expected key.
pub fn verify_piv_attestation(
    attestation_cert_der: &[u8],
    intermediate_f9_der: &[u8],
    roots: &[Vec<u8>],
    expected_public_key_spki_der: &[u8],
    now: OffsetDateTime,
) -> Result<AttestationEvidence, AttestationError> {
    let attestation = parse(attestation_cert_der, ChainPosition::Attestation)?;
    let intermediate = parse(intermediate_f9_der, ChainPosition::Intermediate)?;
    let expected = SubjectPublicKeyInfoOwned::from_der(expected_public_key_spki_der)
        .map_err(|_| AttestationError::MalformedDer(ChainPosition::ExpectedKey))?;
    if roots.is_empty() {
        return Err(AttestationError::NoRoots);
    }

    // Any root whose key verifies the F9 signature anchors the chain. Names are not enough:
    // every installation of the software card uses the same root name, with its own key.
    let mut anchor = None;
    for root_der in roots {
        let root = parse(root_der, ChainPosition::Root)?;
        if root.tbs_certificate.subject == intermediate.tbs_certificate.issuer
            && signed_by(
                &intermediate,
                &root.tbs_certificate.subject_public_key_info,
                ChainPosition::Intermediate,
            )?
        {
            anchor = Some((root, root_der));
            break;
        }
    }
    let (root, root_der) = anchor.ok_or(AttestationError::UntrustedRoot)?;

    if attestation.tbs_certificate.issuer != intermediate.tbs_certificate.subject {
        return Err(AttestationError::IssuerMismatch);
    }
    if !signed_by(
        &attestation,
        &intermediate.tbs_certificate.subject_public_key_info,
        ChainPosition::Attestation,
    )? {
        return Err(AttestationError::BadSignature);
    }

    check_validity(&root, ChainPosition::Root, now)?;
    check_validity(&intermediate, ChainPosition::Intermediate, now)?;
    check_validity(&attestation, ChainPosition::Attestation, now)?;

    // Compare re-encoded structures so a key given with (say) long-form lengths still matches.
    let attested = attestation
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|_| AttestationError::MalformedDer(ChainPosition::Attestation))?;
    let expected =
        expected.to_der().map_err(|_| AttestationError::MalformedDer(ChainPosition::ExpectedKey))?;
    if attested != expected {
        return Err(AttestationError::KeyMismatch);
    }

    let bad_ext = |oid: der::asn1::ObjectIdentifier| AttestationError::MalformedExtension(oid.to_string());
    let firmware_version = match extension(&attestation, oids::YUBICO_FIRMWARE) {
        None => None,
        Some([major, minor, patch]) => Some(format!("{major}.{minor}.{patch}")),
        Some(_) => return Err(bad_ext(oids::YUBICO_FIRMWARE)),
    };
    let serial = match extension(&attestation, oids::YUBICO_SERIAL) {
        None => None,
        Some(value) => {
            let int = Uint::from_der(value).map_err(|_| bad_ext(oids::YUBICO_SERIAL))?;
            let bytes = int.as_bytes();
            if bytes.len() > 8 {
                return Err(bad_ext(oids::YUBICO_SERIAL));
            }
            Some(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
        }
    };
    let (pin_policy, touch_policy) = match extension(&attestation, oids::YUBICO_POLICY) {
        None => (None, None),
        Some([pin, touch]) => (Some(*pin), Some(*touch)),
        Some(_) => return Err(bad_ext(oids::YUBICO_POLICY)),
    };
    let form_factor = match extension(&attestation, oids::YUBICO_FORM_FACTOR) {
        None => None,
        Some([ff]) => Some(*ff),
        Some(_) => return Err(bad_ext(oids::YUBICO_FORM_FACTOR)),
    };

    Ok(AttestationEvidence {
        firmware_version,
        serial,
        pin_policy,
        touch_policy,
        form_factor,
        attestation_subject: attestation.tbs_certificate.subject.to_string(),
        intermediate_subject: intermediate.tbs_certificate.subject.to_string(),
        root_subject: root.tbs_certificate.subject.to_string(),
        attestation_sha256: sha256_hex(attestation_cert_der),
        intermediate_sha256: sha256_hex(intermediate_f9_der),
        root_sha256: sha256_hex(root_der),
    })
}
