//! Key attestations from phones, checked before the CA certifies a derived PIV credential's key
//! (NIST SP 800-157: the AAL3 profile only for a key proven to live in hardware).
//!
//! - **Android Key Attestation**: the app generates its key in the Android Keystore with an
//!   attestation challenge; the Keystore answers an X.509 chain whose leaf certifies that key and
//!   carries the KeyDescription extension (`1.3.6.1.4.1.11129.2.1.17`). The chain must end at a
//!   configured root (Google's hardware attestation roots in production), the leaf's key must be
//!   the CSR's key, the challenge must be the enrolment's, and the security level says where the
//!   key lives: TrustedEnvironment or StrongBox is hardware, Software is not.
//! - **Apple App Attest**: the app asks the Secure Enclave to attest an App Attest key with a
//!   client-data hash; the answer is a CBOR attestation object whose certificate chain (`x5c`)
//!   must end at a configured root (Apple's App Attestation root in production) and whose
//!   leaf carries a nonce over the authenticator data and that hash. Lanyard's client-data hash
//!   binds the enrolment and the CSR's key, so the attestation proves that a genuine instance of
//!   a configured app on Apple hardware asked for this key. It does **not** prove where the CSR's
//!   own key lives (App Attest keys cannot sign anything else), so it never counts as a hardware
//!   key attestation here.
//!
//! Everything is sans-IO: bytes and the time in, evidence or a precise refusal out.

use aws_lc_rs::digest;
use der::asn1::ObjectIdentifier;
use der::{Decode, Encode};
use serde::{Deserialize, Serialize};
use spki::SubjectPublicKeyInfoOwned;
use time::OffsetDateTime;
use x509_cert::Certificate;
use x509_cert::ext::pkix::BasicConstraints;

use crate::error::CsrError;
use crate::keys::verify_signature;
use crate::{oids, x509time};

/// The Android KeyDescription extension.
pub const ANDROID_KEY_DESCRIPTION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.11129.2.1.17");
/// The App Attest nonce extension of Apple's credential certificate.
pub const APPLE_APP_ATTEST_NONCE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113635.100.8.2");

/// The longest chain accepted (Android chains with remote key provisioning have four or five).
pub const MAX_CHAIN: usize = 8;

/// Android's `SecurityLevel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityLevel {
    Software,
    TrustedEnvironment,
    StrongBox,
}

impl SecurityLevel {
    fn from_enum(v: &[u8]) -> Option<Self> {
        match v {
            [0] => Some(Self::Software),
            [1] => Some(Self::TrustedEnvironment),
            [2] => Some(Self::StrongBox),
            _ => None,
        }
    }
}

/// What a verified phone attestation says, for the credential's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MobileEvidence {
    /// `android-key` or `apple-appattest`.
    pub format: String,
    /// Whether the attestation proves that the CSR's key was generated in, and stays in,
    /// hardware (Android TrustedEnvironment or StrongBox, key origin GENERATED).
    pub hardware: bool,
    /// Android: the lower of the attestation's and KeyMint's security levels.
    pub security_level: Option<SecurityLevel>,
    /// Apple: `production` or `development` (the App Attest environment).
    pub environment: Option<String>,
    /// Apple: the App ID (`<team id>.<bundle id>`) the attestation was made for.
    pub app_id: Option<String>,
    /// The leaf certificate (Android: the key's attestation certificate; Apple: the credential
    /// certificate), DER.
    #[serde(with = "hex::serde")]
    pub leaf_der: Vec<u8>,
    /// Subject DN of the configured root the chain ends at.
    pub root_subject: String,
    /// Lower-case hex SHA-256 of that root's DER.
    pub root_sha256: String,
}

/// Why a phone attestation was refused. Every message names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MobileAttestationError {
    #[error("no {0} attestation roots are configured on the server")]
    NoRoots(&'static str),
    #[error("the certificate chain is empty")]
    EmptyChain,
    #[error("the certificate chain has {0} certificates; at most {MAX_CHAIN} are accepted")]
    ChainTooLong(usize),
    #[error("certificate {0} of the chain is not a DER X.509 certificate")]
    MalformedCertificate(usize),
    #[error("certificate {index} of the chain was not issued by certificate {next} (issuer name differs)")]
    IssuerMismatch { index: usize, next: usize },
    #[error("certificate {index} of the chain is not signed by the key of the certificate after it")]
    BadSignature { index: usize },
    #[error("certificate {index} of the chain signs others but is not a CA certificate")]
    NotACa { index: usize },
    #[error("certificate {index} of the chain uses an unsupported algorithm or key: {reason}")]
    UnsupportedAlgorithm { index: usize, reason: String },
    #[error("the chain does not end at a configured {0} attestation root")]
    UntrustedRoot(&'static str),
    #[error("certificate {index} of the chain expired at {not_after}")]
    Expired { index: usize, not_after: String },
    #[error("certificate {index} of the chain is not valid before {not_before}")]
    NotYetValid { index: usize, not_before: String },
    #[error("the attested key is not the key of the certificate request")]
    KeyMismatch,
    #[error("the leaf certificate has no {0} extension")]
    MissingExtension(&'static str),
    #[error("the {0} extension is malformed")]
    MalformedExtension(&'static str),
    #[error(
        "the attestation challenge is not this enrolment's (generate the key with the challenge redeem answered)"
    )]
    ChallengeMismatch,
    #[error("the attestation object is not CBOR of the App Attest form: {0}")]
    MalformedObject(String),
    #[error("the attestation format is {0:?}, not apple-appattest")]
    WrongFormat(String),
    #[error(
        "the App Attest nonce does not match the client data hash (it must be made as docs/mobile-protocol.md says)"
    )]
    NonceMismatch,
    #[error("the key id is not the SHA-256 of the attested App Attest key")]
    KeyIdMismatch,
    #[error("the attestation is for an app that is not configured on the server")]
    UnknownApp,
    #[error("the App Attest counter is {0}, not 0: this is not a fresh attestation")]
    CounterNotZero(u32),
    #[error("the App Attest AAGUID is neither the production nor the development environment's")]
    UnknownEnvironment,
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// The attestation challenge an enrolment hands its phone: SHA-256 over a label and the
/// enrolment's id, so it is fresh for every enrolment and the server needs to store nothing.
pub fn enrolment_challenge(enrolment_id: &str) -> [u8; 32] {
    let mut input = b"lanyard mobile attestation v1\0".to_vec();
    input.extend_from_slice(enrolment_id.as_bytes());
    sha256(&input)
}

/// The client-data hash an iOS app passes to App Attest for an enrolment: SHA-256 of the
/// enrolment's challenge followed by SHA-256 of the CSR's SubjectPublicKeyInfo (DER).
pub fn apple_client_data_hash(challenge: &[u8], csr_spki_der: &[u8]) -> [u8; 32] {
    let mut input = challenge.to_vec();
    input.extend_from_slice(&sha256(csr_spki_der));
    sha256(&input)
}

fn extension(cert: &Certificate, oid: ObjectIdentifier) -> Option<&[u8]> {
    cert.tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == oid)
        .map(|e| e.extn_value.as_bytes())
}

fn signed_by(
    cert: &Certificate,
    issuer: &SubjectPublicKeyInfoOwned,
    index: usize,
) -> Result<bool, MobileAttestationError> {
    let tbs =
        cert.tbs_certificate.to_der().map_err(|_| MobileAttestationError::MalformedCertificate(index))?;
    let signature = cert.signature.as_bytes().ok_or(MobileAttestationError::MalformedCertificate(index))?;
    match verify_signature(issuer, &cert.signature_algorithm, &tbs, signature) {
        Ok(()) => Ok(true),
        Err(CsrError::BadSignature) => Ok(false),
        Err(other) => Err(MobileAttestationError::UnsupportedAlgorithm { index, reason: other.to_string() }),
    }
}

fn is_ca(cert: &Certificate) -> bool {
    extension(cert, oids::BASIC_CONSTRAINTS)
        .and_then(|v| BasicConstraints::from_der(v).ok())
        .is_some_and(|b| b.ca)
}

fn check_validity(
    cert: &Certificate,
    index: usize,
    now: OffsetDateTime,
) -> Result<(), MobileAttestationError> {
    let v = &cert.tbs_certificate.validity;
    let bad = || MobileAttestationError::MalformedCertificate(index);
    let not_before = x509time::from_x509(&v.not_before).map_err(|_| bad())?;
    let not_after = x509time::from_x509(&v.not_after).map_err(|_| bad())?;
    if now < not_before {
        return Err(MobileAttestationError::NotYetValid { index, not_before: x509time::rfc3339(not_before) });
    }
    if now > not_after {
        return Err(MobileAttestationError::Expired { index, not_after: x509time::rfc3339(not_after) });
    }
    Ok(())
}

/// Verifies `chain` (leaf first) up to one of `roots`: each certificate issued and signed by
/// the next, every signer a CA, the last one a configured root or signed by one, everything
/// valid at `now`. Answers the parsed chain and the root (certificate and DER).
fn verify_chain<'r>(
    chain: &[Vec<u8>],
    roots: &'r [Vec<u8>],
    what: &'static str,
    now: OffsetDateTime,
) -> Result<(Vec<Certificate>, Certificate, &'r [u8]), MobileAttestationError> {
    if roots.is_empty() {
        return Err(MobileAttestationError::NoRoots(what));
    }
    if chain.is_empty() {
        return Err(MobileAttestationError::EmptyChain);
    }
    if chain.len() > MAX_CHAIN {
        return Err(MobileAttestationError::ChainTooLong(chain.len()));
    }
    let certs = chain
        .iter()
        .enumerate()
        .map(|(i, der)| {
            Certificate::from_der(der).map_err(|_| MobileAttestationError::MalformedCertificate(i))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for i in 0..certs.len() - 1 {
        let (cert, next) = (&certs[i], &certs[i + 1]);
        if cert.tbs_certificate.issuer != next.tbs_certificate.subject {
            return Err(MobileAttestationError::IssuerMismatch { index: i, next: i + 1 });
        }
        if !is_ca(next) {
            return Err(MobileAttestationError::NotACa { index: i + 1 });
        }
        if !signed_by(cert, &next.tbs_certificate.subject_public_key_info, i)? {
            return Err(MobileAttestationError::BadSignature { index: i });
        }
    }
    let last_index = certs.len() - 1;
    let last = &certs[last_index];
    let last_der = &chain[last_index];
    // The chain may end with the root itself (Android chains do) or just below it.
    let mut anchor = None;
    for root_der in roots {
        let Ok(root) = Certificate::from_der(root_der) else { continue };
        if root_der == last_der {
            anchor = Some((root, root_der.as_slice()));
            break;
        }
        if root.tbs_certificate.subject == last.tbs_certificate.issuer
            && is_ca(&root)
            && signed_by(last, &root.tbs_certificate.subject_public_key_info, last_index)?
        {
            anchor = Some((root, root_der.as_slice()));
            break;
        }
    }
    let (root, root_der) = anchor.ok_or(MobileAttestationError::UntrustedRoot(what))?;
    for (i, cert) in certs.iter().enumerate() {
        check_validity(cert, i, now)?;
    }
    check_validity(&root, certs.len(), now)?;
    Ok((certs, root, root_der))
}

fn same_key(a: &SubjectPublicKeyInfoOwned, expected_spki_der: &[u8]) -> Result<bool, MobileAttestationError> {
    let expected = SubjectPublicKeyInfoOwned::from_der(expected_spki_der)
        .map_err(|_| MobileAttestationError::KeyMismatch)?;
    let a = a.to_der().map_err(|_| MobileAttestationError::KeyMismatch)?;
    let b = expected.to_der().map_err(|_| MobileAttestationError::KeyMismatch)?;
    Ok(a == b)
}

/// A DER element as read by [`tlv`]: class bits and constructed flag (the identifier's top three
/// bits), tag number (high-tag-number form included, which Android's AuthorizationList uses) and
/// contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    pub class_and_form: u8,
    pub number: u32,
    pub value: &'a [u8],
}

/// Reads one DER element from the front of `input`; answers it and the rest. Definite lengths
/// only, at most four length octets and tag numbers below 2^28; `None` for anything else or a
/// truncation.
pub fn tlv(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let (&first, mut rest) = input.split_first()?;
    let mut number = u32::from(first & 0x1f);
    if number == 0x1f {
        number = 0;
        for i in 0..4 {
            let (&b, r) = rest.split_first()?;
            rest = r;
            number = (number << 7) | u32::from(b & 0x7f);
            if b & 0x80 == 0 {
                break;
            }
            if i == 3 {
                return None;
            }
        }
    }
    let (&len0, r) = rest.split_first()?;
    rest = r;
    let len = if len0 < 0x80 {
        usize::from(len0)
    } else {
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, r) = rest.split_at(n);
        rest = r;
        bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    if rest.len() < len {
        return None;
    }
    let (value, rest) = rest.split_at(len);
    Some((Tlv { class_and_form: first & 0xe0, number, value }, rest))
}

/// Every element of `input` in order, or `None` when one does not read.
fn elements(mut input: &[u8]) -> Option<Vec<Tlv<'_>>> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let (t, rest) = tlv(input)?;
        out.push(t);
        input = rest;
    }
    Some(out)
}

const UNIVERSAL_CONSTRUCTED: u8 = 0x20;
const CONTEXT_CONSTRUCTED: u8 = 0xa0;
/// AuthorizationList `origin [702] EXPLICIT INTEGER`; 0 is GENERATED.
const TAG_ORIGIN: u32 = 702;

/// The fields of Android's KeyDescription that decide the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDescription {
    pub attestation_security_level: SecurityLevel,
    pub keymint_security_level: SecurityLevel,
    pub challenge: Vec<u8>,
    /// `origin` from the hardware-enforced list, if there.
    pub hardware_origin: Option<u64>,
}

/// Parses the KeyDescription extension value (any attestation version: the fields read have kept
/// their places since version 1).
pub fn parse_key_description(ext: &[u8]) -> Option<KeyDescription> {
    let (seq, rest) = tlv(ext)?;
    if !rest.is_empty() || seq.class_and_form != UNIVERSAL_CONSTRUCTED || seq.number != 0x10 {
        return None;
    }
    let fields = elements(seq.value)?;
    if fields.len() < 8 {
        return None;
    }
    let is = |t: &Tlv<'_>, form: u8, number: u32| t.class_and_form == form && t.number == number;
    if !is(&fields[0], 0, 2) || !is(&fields[1], 0, 10) || !is(&fields[2], 0, 2) || !is(&fields[3], 0, 10) {
        return None;
    }
    if !is(&fields[4], 0, 4) || !is(&fields[5], 0, 4) {
        return None;
    }
    if !is(&fields[6], UNIVERSAL_CONSTRUCTED, 0x10) || !is(&fields[7], UNIVERSAL_CONSTRUCTED, 0x10) {
        return None;
    }
    let mut hardware_origin = None;
    for entry in elements(fields[7].value)? {
        if entry.class_and_form == CONTEXT_CONSTRUCTED && entry.number == TAG_ORIGIN {
            let (int, rest) = tlv(entry.value)?;
            if !rest.is_empty()
                || int.class_and_form != 0
                || int.number != 2
                || int.value.is_empty()
                || int.value.len() > 8
            {
                return None;
            }
            if int.value[0] & 0x80 != 0 {
                return None;
            }
            hardware_origin = Some(int.value.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)));
        }
    }
    Some(KeyDescription {
        attestation_security_level: SecurityLevel::from_enum(fields[1].value)?,
        keymint_security_level: SecurityLevel::from_enum(fields[3].value)?,
        challenge: fields[4].value.to_vec(),
        hardware_origin,
    })
}

/// Verifies an Android Key Attestation chain (leaf first) for the CSR key `expected_spki_der`
/// and the enrolment's `challenge`.
pub fn verify_android_key_attestation(
    chain: &[Vec<u8>],
    roots: &[Vec<u8>],
    expected_spki_der: &[u8],
    challenge: &[u8],
    now: OffsetDateTime,
) -> Result<MobileEvidence, MobileAttestationError> {
    let (certs, root, root_der) = verify_chain(chain, roots, "Android", now)?;
    let leaf = &certs[0];
    if !same_key(&leaf.tbs_certificate.subject_public_key_info, expected_spki_der)? {
        return Err(MobileAttestationError::KeyMismatch);
    }
    let ext = extension(leaf, ANDROID_KEY_DESCRIPTION)
        .ok_or(MobileAttestationError::MissingExtension("KeyDescription"))?;
    let kd =
        parse_key_description(ext).ok_or(MobileAttestationError::MalformedExtension("KeyDescription"))?;
    if kd.challenge != challenge {
        return Err(MobileAttestationError::ChallengeMismatch);
    }
    let level = kd.attestation_security_level.min(kd.keymint_security_level);
    let hardware = level >= SecurityLevel::TrustedEnvironment && kd.hardware_origin == Some(0);
    Ok(MobileEvidence {
        format: "android-key".into(),
        hardware,
        security_level: Some(level),
        environment: None,
        app_id: None,
        leaf_der: chain[0].clone(),
        root_subject: root.tbs_certificate.subject.to_string(),
        root_sha256: hex::encode(sha256(root_der)),
    })
}

const AAGUID_PRODUCTION: &[u8; 16] = b"appattest\0\0\0\0\0\0\0";
const AAGUID_DEVELOPMENT: &[u8; 16] = b"appattestdevelop";

fn cbor_text<'a>(map: &'a [(ciborium::Value, ciborium::Value)], key: &str) -> Option<&'a ciborium::Value> {
    map.iter().find(|(k, _)| k.as_text() == Some(key)).map(|(_, v)| v)
}

/// The parts of an App Attest attestation object: the `x5c` chain and the authenticator data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppAttestObject {
    pub x5c: Vec<Vec<u8>>,
    pub auth_data: Vec<u8>,
}

/// Parses an App Attest attestation object (CBOR map with `fmt`, `attStmt {x5c, receipt}`,
/// `authData`).
pub fn parse_app_attest_object(object: &[u8]) -> Result<AppAttestObject, MobileAttestationError> {
    let bad = |what: &str| MobileAttestationError::MalformedObject(what.to_owned());
    let value: ciborium::Value = ciborium::de::from_reader(object)
        .map_err(|e| MobileAttestationError::MalformedObject(e.to_string()))?;
    let map = value.as_map().ok_or_else(|| bad("not a map"))?;
    let fmt = cbor_text(map, "fmt").and_then(ciborium::Value::as_text).ok_or_else(|| bad("no fmt text"))?;
    if fmt != "apple-appattest" {
        return Err(MobileAttestationError::WrongFormat(fmt.chars().take(40).collect()));
    }
    let stmt =
        cbor_text(map, "attStmt").and_then(ciborium::Value::as_map).ok_or_else(|| bad("no attStmt map"))?;
    let x5c =
        cbor_text(stmt, "x5c").and_then(ciborium::Value::as_array).ok_or_else(|| bad("no x5c array"))?;
    let x5c = x5c
        .iter()
        .map(|c| c.as_bytes().cloned().ok_or_else(|| bad("an x5c entry is not a byte string")))
        .collect::<Result<Vec<_>, _>>()?;
    let auth_data = cbor_text(map, "authData")
        .and_then(ciborium::Value::as_bytes)
        .ok_or_else(|| bad("no authData bytes"))?
        .clone();
    Ok(AppAttestObject { x5c, auth_data })
}

/// Verifies an App Attest attestation object for the key `key_id` (SHA-256 of the App Attest
/// public key, as `DCAppAttestService` names it) and `client_data_hash` (see
/// [`apple_client_data_hash`]); `app_ids` are the accepted `<team id>.<bundle id>`.
pub fn verify_apple_app_attest(
    object: &[u8],
    key_id: &[u8],
    client_data_hash: &[u8; 32],
    roots: &[Vec<u8>],
    app_ids: &[String],
    now: OffsetDateTime,
) -> Result<MobileEvidence, MobileAttestationError> {
    if roots.is_empty() {
        return Err(MobileAttestationError::NoRoots("Apple"));
    }
    let parsed = parse_app_attest_object(object)?;
    let (certs, root, root_der) = verify_chain(&parsed.x5c, roots, "Apple", now)?;
    let leaf = &certs[0];
    let mut nonce_input = parsed.auth_data.clone();
    nonce_input.extend_from_slice(client_data_hash);
    let nonce = sha256(&nonce_input);
    let ext = extension(leaf, APPLE_APP_ATTEST_NONCE)
        .ok_or(MobileAttestationError::MissingExtension("App Attest nonce"))?;
    // SEQUENCE { [1] EXPLICIT OCTET STRING }
    let malformed = MobileAttestationError::MalformedExtension("App Attest nonce");
    let (seq, rest) = tlv(ext).ok_or(malformed.clone())?;
    let (tagged, _) = tlv(seq.value).ok_or(malformed.clone())?;
    let (octets, _) = tlv(tagged.value).ok_or(malformed.clone())?;
    if !rest.is_empty()
        || seq.number != 0x10
        || tagged.class_and_form != CONTEXT_CONSTRUCTED
        || tagged.number != 1
        || octets.number != 4
    {
        return Err(malformed);
    }
    if octets.value != nonce {
        return Err(MobileAttestationError::NonceMismatch);
    }
    let point = leaf.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes();
    if sha256(point).as_slice() != key_id {
        return Err(MobileAttestationError::KeyIdMismatch);
    }
    // authData: rpIdHash(32) flags(1) signCount(4) aaguid(16) credIdLen(2) credId …
    let a = &parsed.auth_data;
    if a.len() < 55 {
        return Err(MobileAttestationError::MalformedObject("authData is too short".into()));
    }
    let app_id = app_ids
        .iter()
        .find(|id| sha256(id.as_bytes()).as_slice() == &a[..32])
        .ok_or(MobileAttestationError::UnknownApp)?;
    let counter = u32::from_be_bytes([a[33], a[34], a[35], a[36]]);
    if counter != 0 {
        return Err(MobileAttestationError::CounterNotZero(counter));
    }
    let environment = match &a[37..53] {
        g if g == AAGUID_PRODUCTION => "production",
        g if g == AAGUID_DEVELOPMENT => "development",
        _ => return Err(MobileAttestationError::UnknownEnvironment),
    };
    let id_len = usize::from(u16::from_be_bytes([a[53], a[54]]));
    if a.len() < 55 + id_len {
        return Err(MobileAttestationError::MalformedObject(
            "authData is shorter than its credential id".into(),
        ));
    }
    if &a[55..55 + id_len] != key_id {
        return Err(MobileAttestationError::KeyIdMismatch);
    }
    Ok(MobileEvidence {
        format: "apple-appattest".into(),
        hardware: false,
        security_level: None,
        environment: Some(environment.into()),
        app_id: Some(app_id.clone()),
        leaf_der: parsed.x5c[0].clone(),
        root_subject: root.tbs_certificate.subject.to_string(),
        root_sha256: hex::encode(sha256(root_der)),
    })
}

/// Builders of attestation chains and objects signed by test roots, shaped like the real
/// platforms' (for Lanyard's tests; a test root is never a production root).
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::keys::{CaSigner, KeyAlgorithm, SoftwareKey};
    use der::asn1::{BitString, OctetString};
    use x509_cert::TbsCertificate;
    use x509_cert::certificate::Version;
    use x509_cert::ext::Extension;
    use x509_cert::serial_number::SerialNumber;
    use x509_cert::time::Validity;

    /// A test CA: its key and self-signed certificate.
    pub struct TestCa {
        pub key: SoftwareKey,
        pub der: Vec<u8>,
        pub name: x509_cert::name::Name,
    }

    fn cert(
        issuer_key: &SoftwareKey,
        issuer: &x509_cert::name::Name,
        subject: &str,
        spki: SubjectPublicKeyInfoOwned,
        ca: bool,
        extra: Vec<Extension>,
        now: OffsetDateTime,
    ) -> Vec<u8> {
        let mut extensions = extra;
        if ca {
            extensions.push(Extension {
                extn_id: oids::BASIC_CONSTRAINTS,
                critical: true,
                extn_value: OctetString::new(
                    BasicConstraints { ca: true, path_len_constraint: None }.to_der().unwrap(),
                )
                .unwrap(),
            });
        }
        let tbs = TbsCertificate {
            version: Version::V3,
            serial_number: SerialNumber::new(&rand_serial()).unwrap(),
            signature: issuer_key.algorithm(),
            issuer: issuer.clone(),
            validity: Validity {
                not_before: x509time::to_x509(now - time::Duration::days(1)).unwrap(),
                not_after: x509time::to_x509(now + time::Duration::days(3650)).unwrap(),
            },
            subject: crate::parse_dn(subject).unwrap(),
            subject_public_key_info: spki,
            issuer_unique_id: None,
            subject_unique_id: None,
            extensions: Some(extensions),
        };
        let signature = issuer_key.sign(&tbs.to_der().unwrap()).unwrap();
        Certificate {
            tbs_certificate: tbs,
            signature_algorithm: issuer_key.algorithm(),
            signature: BitString::from_bytes(&signature).unwrap(),
        }
        .to_der()
        .unwrap()
    }

    fn rand_serial() -> [u8; 8] {
        let mut s = [0u8; 8];
        aws_lc_rs::rand::fill(&mut s).unwrap();
        s[0] &= 0x7f;
        s[0] |= 0x01;
        s
    }

    impl TestCa {
        /// A self-signed root named `name` with a `algorithm` key.
        pub fn root(name: &str, algorithm: KeyAlgorithm, now: OffsetDateTime) -> Self {
            let key = SoftwareKey::generate(algorithm).unwrap();
            let dn = crate::parse_dn(name).unwrap();
            let der = cert(&key, &dn, name, key.public_key(), true, vec![], now);
            TestCa { key, der, name: dn }
        }

        /// An intermediate CA under this one.
        pub fn intermediate(&self, name: &str, now: OffsetDateTime) -> Self {
            let key = SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap();
            let der = cert(&self.key, &self.name, name, key.public_key(), true, vec![], now);
            TestCa { key, der, name: crate::parse_dn(name).unwrap() }
        }

        /// A leaf for `spki` with `extensions`, not a CA.
        pub fn leaf(
            &self,
            spki: SubjectPublicKeyInfoOwned,
            extensions: Vec<Extension>,
            now: OffsetDateTime,
        ) -> Vec<u8> {
            cert(&self.key, &self.name, "CN=Attested key", spki, false, extensions, now)
        }
    }

    fn der_len(n: usize) -> Vec<u8> {
        if n < 0x80 {
            vec![n as u8]
        } else if n < 0x100 {
            vec![0x81, n as u8]
        } else {
            vec![0x82, (n >> 8) as u8, n as u8]
        }
    }

    fn element(tag: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = tag.to_vec();
        out.extend(der_len(value.len()));
        out.extend_from_slice(value);
        out
    }

    /// A KeyDescription (attestation version 200) with the given levels, challenge and origin.
    pub fn key_description(attestation: u8, keymint: u8, challenge: &[u8], origin: Option<u8>) -> Vec<u8> {
        let mut hw = Vec::new();
        // purpose [1] SET OF INTEGER { SIGN }
        hw.extend(element(&[0xa1], &element(&[0x31], &[0x02, 0x01, 0x02])));
        if let Some(o) = origin {
            // origin [702]: identifier BF 85 3E
            hw.extend(element(&[0xbf, 0x85, 0x3e], &[0x02, 0x01, o]));
        }
        let mut body = Vec::new();
        body.extend([0x02, 0x02, 0x00, 0xc8]);
        body.extend([0x0a, 0x01, attestation]);
        body.extend([0x02, 0x02, 0x00, 0xc8]);
        body.extend([0x0a, 0x01, keymint]);
        body.extend(element(&[0x04], challenge));
        body.extend(element(&[0x04], &[]));
        body.extend(element(&[0x30], &[]));
        body.extend(element(&[0x30], &hw));
        element(&[0x30], &body)
    }

    /// The Android extension carrying `key_description`.
    pub fn android_extension(key_description: Vec<u8>) -> Extension {
        Extension {
            extn_id: ANDROID_KEY_DESCRIPTION,
            critical: false,
            extn_value: OctetString::new(key_description).unwrap(),
        }
    }

    /// An Android-shaped chain for `spki` (leaf, intermediate, root) under a fresh root; answers
    /// the chain and the root's DER.
    pub fn android_chain(
        spki: &[u8],
        key_description: Vec<u8>,
        now: OffsetDateTime,
    ) -> (Vec<Vec<u8>>, Vec<u8>) {
        let root = TestCa::root("CN=Test Android Attestation Root", KeyAlgorithm::Rsa2048, now);
        let batch = root.intermediate("CN=Test Android Batch,O=Test", now);
        let leaf = batch.leaf(
            SubjectPublicKeyInfoOwned::from_der(spki).unwrap(),
            vec![android_extension(key_description)],
            now,
        );
        (vec![leaf, batch.der.clone(), root.der.clone()], root.der)
    }

    /// An App Attest attestation object for a fresh P-256 App Attest key under a fresh P-384
    /// root; answers the object, the key id and the root's DER.
    pub fn apple_object(
        app_id: &str,
        client_data_hash: &[u8; 32],
        counter: u32,
        now: OffsetDateTime,
    ) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let root = TestCa::root("CN=Test App Attestation Root CA,O=Test", KeyAlgorithm::EcP384, now);
        let ca = root.intermediate("CN=Test App Attestation CA 1,O=Test", now);
        let key = SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap();
        let spki = key.public_key();
        let key_id = sha256(spki.subject_public_key.raw_bytes()).to_vec();
        let mut auth_data = sha256(app_id.as_bytes()).to_vec();
        auth_data.push(0x40);
        auth_data.extend(counter.to_be_bytes());
        auth_data.extend_from_slice(AAGUID_PRODUCTION);
        auth_data.extend((key_id.len() as u16).to_be_bytes());
        auth_data.extend_from_slice(&key_id);
        let mut nonce_input = auth_data.clone();
        nonce_input.extend_from_slice(client_data_hash);
        let nonce = sha256(&nonce_input);
        let ext_value = element(&[0x30], &element(&[0xa1], &element(&[0x04], &nonce)));
        let ext = Extension {
            extn_id: APPLE_APP_ATTEST_NONCE,
            critical: false,
            extn_value: OctetString::new(ext_value).unwrap(),
        };
        let leaf = ca.leaf(spki, vec![ext], now);
        use ciborium::Value as V;
        let object = V::Map(vec![
            (V::Text("fmt".into()), V::Text("apple-appattest".into())),
            (
                V::Text("attStmt".into()),
                V::Map(vec![
                    (V::Text("x5c".into()), V::Array(vec![V::Bytes(leaf), V::Bytes(ca.der.clone())])),
                    (V::Text("receipt".into()), V::Bytes(b"receipt".to_vec())),
                ]),
            ),
            (V::Text("authData".into()), V::Bytes(auth_data)),
        ]);
        let mut bytes = Vec::new();
        ciborium::ser::into_writer(&object, &mut bytes).unwrap();
        (bytes, key_id, root.der)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::fixtures::*;
    use super::*;
    use crate::keys::{CaSigner, KeyAlgorithm, SoftwareKey};
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-12-04 12:00 UTC);

    fn csr_key() -> Vec<u8> {
        SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap().public_key().to_der().unwrap()
    }

    #[test]
    fn android_strongbox_and_tee_keys_are_hardware_software_keys_are_not() {
        let spki = csr_key();
        let challenge = enrolment_challenge("e1");
        for (level, hardware, name) in [
            (2u8, true, SecurityLevel::StrongBox),
            (1, true, SecurityLevel::TrustedEnvironment),
            (0, false, SecurityLevel::Software),
        ] {
            let (chain, root) = android_chain(&spki, key_description(level, level, &challenge, Some(0)), NOW);
            let e = verify_android_key_attestation(&chain, &[root], &spki, &challenge, NOW).unwrap();
            assert_eq!((e.hardware, e.security_level), (hardware, Some(name)));
            assert_eq!(e.root_subject, "CN=Test Android Attestation Root");
        }
        // An imported key (origin 2) in a TEE is no proof of where the key was made.
        let (chain, root) = android_chain(&spki, key_description(1, 1, &challenge, Some(2)), NOW);
        assert!(!verify_android_key_attestation(&chain, &[root], &spki, &challenge, NOW).unwrap().hardware);
        // The lower of the two levels counts.
        let (chain, root) = android_chain(&spki, key_description(2, 0, &challenge, Some(0)), NOW);
        assert!(!verify_android_key_attestation(&chain, &[root], &spki, &challenge, NOW).unwrap().hardware);
    }

    #[test]
    fn android_refusals_name_the_problem() {
        let spki = csr_key();
        let challenge = enrolment_challenge("e1");
        let (chain, root) = android_chain(&spki, key_description(2, 2, &challenge, Some(0)), NOW);
        let other_root = TestCa::root("CN=Test Android Attestation Root", KeyAlgorithm::Rsa2048, NOW).der;
        let verify = |chain: &[Vec<u8>], roots: &[Vec<u8>], spki: &[u8], challenge: &[u8], now| {
            verify_android_key_attestation(chain, roots, spki, challenge, now).unwrap_err()
        };
        assert_eq!(verify(&chain, &[], &spki, &challenge, NOW), MobileAttestationError::NoRoots("Android"));
        assert_eq!(
            verify(&chain, std::slice::from_ref(&other_root), &spki, &challenge, NOW),
            MobileAttestationError::UntrustedRoot("Android")
        );
        // Without the root at its end, the chain still anchors at the configured root.
        verify_android_key_attestation(&chain[..2], std::slice::from_ref(&root), &spki, &challenge, NOW)
            .unwrap();
        assert_eq!(
            verify(&chain[..2], &[other_root], &spki, &challenge, NOW),
            MobileAttestationError::UntrustedRoot("Android")
        );
        assert_eq!(
            verify(&chain, std::slice::from_ref(&root), &csr_key(), &challenge, NOW),
            MobileAttestationError::KeyMismatch
        );
        assert_eq!(
            verify(&chain, std::slice::from_ref(&root), &spki, &enrolment_challenge("e2"), NOW),
            MobileAttestationError::ChallengeMismatch
        );
        assert!(matches!(
            verify(&chain, std::slice::from_ref(&root), &spki, &challenge, NOW + time::Duration::days(4000)),
            MobileAttestationError::Expired { .. }
        ));
        let swapped = vec![chain[1].clone(), chain[0].clone(), chain[2].clone()];
        assert!(matches!(
            verify(&swapped, std::slice::from_ref(&root), &spki, &challenge, NOW),
            MobileAttestationError::IssuerMismatch { .. }
        ));
        let mut forged = chain.clone();
        let n = forged[0].len();
        forged[0][n - 3] ^= 1;
        assert!(matches!(
            verify(&forged, std::slice::from_ref(&root), &spki, &challenge, NOW),
            MobileAttestationError::BadSignature { index: 0 }
                | MobileAttestationError::MalformedCertificate(0)
        ));
        assert_eq!(
            verify(&[vec![1, 2, 3]], std::slice::from_ref(&root), &spki, &challenge, NOW),
            MobileAttestationError::MalformedCertificate(0)
        );
        assert_eq!(
            verify(&[], std::slice::from_ref(&root), &spki, &challenge, NOW),
            MobileAttestationError::EmptyChain
        );
        // A leaf without the extension.
        let ca = TestCa::root("CN=Plain", KeyAlgorithm::EcP256, NOW);
        let leaf = ca.leaf(SubjectPublicKeyInfoOwned::from_der(&spki).unwrap(), vec![], NOW);
        assert_eq!(
            verify(&[leaf.clone(), ca.der.clone()], std::slice::from_ref(&ca.der), &spki, &challenge, NOW),
            MobileAttestationError::MissingExtension("KeyDescription")
        );
        // A leaf cannot sign another certificate.
        let leaf_key = SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap();
        let fake_ca = TestCa { key: leaf_key, der: leaf, name: crate::parse_dn("CN=Attested key").unwrap() };
        let below = fake_ca.leaf(SubjectPublicKeyInfoOwned::from_der(&spki).unwrap(), vec![], NOW);
        assert_eq!(
            verify(&[below, fake_ca.der.clone(), ca.der.clone()], &[ca.der], &spki, &challenge, NOW),
            MobileAttestationError::NotACa { index: 1 }
        );
    }

    #[test]
    fn apple_app_attest_binds_app_key_and_csr_but_is_not_a_hardware_key_proof() {
        let spki = csr_key();
        let challenge = enrolment_challenge("e1");
        let hash = apple_client_data_hash(&challenge, &spki);
        let app = "ABCDE12345.org.example.lanyard".to_owned();
        let (object, key_id, root) = apple_object(&app, &hash, 0, NOW);
        let e = verify_apple_app_attest(
            &object,
            &key_id,
            &hash,
            std::slice::from_ref(&root),
            std::slice::from_ref(&app),
            NOW,
        )
        .unwrap();
        assert_eq!(
            (e.format.as_str(), e.hardware, e.app_id.as_deref()),
            ("apple-appattest", false, Some(app.as_str()))
        );
        assert_eq!(e.environment.as_deref(), Some("production"));

        let other_hash = apple_client_data_hash(&challenge, &csr_key());
        let refuse = |object: &[u8], key_id: &[u8], hash: &[u8; 32], roots: &[Vec<u8>], apps: &[String]| {
            verify_apple_app_attest(object, key_id, hash, roots, apps, NOW).unwrap_err()
        };
        assert_eq!(
            refuse(&object, &key_id, &other_hash, std::slice::from_ref(&root), std::slice::from_ref(&app)),
            MobileAttestationError::NonceMismatch
        );
        assert_eq!(
            refuse(&object, &[0; 32], &hash, std::slice::from_ref(&root), std::slice::from_ref(&app)),
            MobileAttestationError::KeyIdMismatch
        );
        assert_eq!(
            refuse(&object, &key_id, &hash, std::slice::from_ref(&root), &["X.other".into()]),
            MobileAttestationError::UnknownApp
        );
        assert_eq!(
            refuse(&object, &key_id, &hash, &[], std::slice::from_ref(&app)),
            MobileAttestationError::NoRoots("Apple")
        );
        let (_, _, stranger) = apple_object(&app, &hash, 0, NOW);
        assert_eq!(
            refuse(&object, &key_id, &hash, &[stranger], std::slice::from_ref(&app)),
            MobileAttestationError::UntrustedRoot("Apple")
        );
        let (used, used_id, used_root) = apple_object(&app, &hash, 3, NOW);
        assert_eq!(
            refuse(&used, &used_id, &hash, &[used_root], std::slice::from_ref(&app)),
            MobileAttestationError::CounterNotZero(3)
        );
        assert!(matches!(
            refuse(b"\xa0", &key_id, &hash, std::slice::from_ref(&root), std::slice::from_ref(&app)),
            MobileAttestationError::MalformedObject(_)
        ));
        assert!(matches!(
            refuse(b"\xff\x00", &key_id, &hash, &[root], &[app]),
            MobileAttestationError::MalformedObject(_)
        ));
    }

    proptest::proptest! {
        /// Whatever the bytes, the parsers answer without panicking, and an element read is
        /// inside its input.
        #[test]
        fn the_parsers_take_any_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            if let Some((t, rest)) = tlv(&bytes) {
                proptest::prop_assert!(t.value.len() + rest.len() < bytes.len());
            }
            let _ = parse_key_description(&bytes);
            let _ = parse_app_attest_object(&bytes);
        }

        /// A KeyDescription as Android writes it reads back with its levels, challenge and origin.
        #[test]
        fn key_descriptions_round_trip(
            a in 0u8..3, k in 0u8..3,
            challenge in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            origin in proptest::option::of(0u8..4),
        ) {
            let kd = parse_key_description(&key_description(a, k, &challenge, origin)).unwrap();
            proptest::prop_assert_eq!(kd.challenge, challenge);
            proptest::prop_assert_eq!(kd.hardware_origin, origin.map(u64::from));
            proptest::prop_assert_eq!(kd.attestation_security_level, SecurityLevel::from_enum(&[a]).unwrap());
            proptest::prop_assert_eq!(kd.keymint_security_level, SecurityLevel::from_enum(&[k]).unwrap());
        }
    }
}
