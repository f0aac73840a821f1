//! Checking a PIV card's authentication certificate as a relying party: the certificate the card
//! holds in slot 9A, presented by the card itself, is trusted only when
//!
//! - its path leads to one of the configured trust anchors ([`TrustStore::validate`]: every
//!   signature verifies, every certificate is inside its validity, every issuer is a CA);
//! - its revocation status is known: from an OCSP response ([`ocsp_request`],
//!   [`ocsp_status`]) or a CRL ([`crl_status`]) signed by its issuer, fresh at the time asked;
//! - the card proves it holds the private key by signing a fresh challenge
//!   ([`challenge_input`] builds what the card signs, [`verify_challenge`] checks the answer).
//!
//! No I/O here: the caller fetches the OCSP answer or the CRL from the URLs the certificate
//! names ([`ocsp_urls`], [`crl_urls`]) and passes the bytes in, along with the time.

use aws_lc_rs::digest;
use der::asn1::{Any, Null, ObjectIdentifier, OctetString};
use der::{Decode, Encode};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use time::{Duration, OffsetDateTime};
use x509_cert::Certificate;
use x509_cert::crl::CertificateList;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{
    AuthorityInfoAccessSyntax, BasicConstraints, CrlDistributionPoints, ExtendedKeyUsage, SubjectAltName,
};
use x509_ocsp::{
    BasicOcspResponse, CertId, OcspRequest, OcspResponse, OcspResponseStatus, Request, TbsRequest,
};

use crate::crl::RevocationReason;
use crate::keys::verify_signature;
use crate::{oids, x509time};

/// The longest path accepted (leaf, intermediates, anchor).
const MAX_PATH: usize = 8;
/// How far a responder's or CRL issuer's clock may be ahead of ours.
const CLOCK_SKEW: Duration = Duration::minutes(5);

/// Why a card certificate is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardCheckError {
    #[error("the card's certificate cannot be read: {0}")]
    Malformed(String),
    #[error("the certificate of {subject} expired at {not_after}")]
    Expired { subject: String, not_after: String },
    #[error("the certificate of {subject} is not valid before {not_before}")]
    NotYetValid { subject: String, not_before: String },
    #[error("the certificate is not issued under a trusted PIV root (its issuer is {issuer})")]
    Untrusted { issuer: String },
    #[error("{subject} is not a CA, yet it would have issued a certificate on the path")]
    NotACa { subject: String },
    #[error("the card's certificate is a CA certificate, not a card's")]
    NotAnEndEntity,
    #[error("the certificate path is longer than {MAX_PATH} certificates")]
    PathTooLong,
    #[error("the card's key ({0}) is not one a PIV Authentication key can be")]
    UnsupportedKey(String),
    #[error("the card's signature over the challenge does not verify with its certificate's key")]
    BadSignature,
}

/// The configured PIV trust anchors, and the intermediate CA certificates that may complete a
/// path to them (a card holds only its own certificate).
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    anchors: Vec<Certificate>,
    intermediates: Vec<Certificate>,
}

/// A path from a card's certificate to an anchor, leaf first, anchor last.
#[derive(Debug, Clone)]
pub struct ValidPath {
    pub chain: Vec<Certificate>,
}

impl ValidPath {
    /// The card's certificate.
    pub fn leaf(&self) -> &Certificate {
        &self.chain[0]
    }

    /// Its issuer (the anchor itself for a card issued directly by a root).
    pub fn issuer(&self) -> &Certificate {
        // A path holds the leaf and at least its anchor (`validate` never builds a shorter one).
        &self.chain[1.min(self.chain.len() - 1)]
    }

    /// The anchor.
    pub fn anchor(&self) -> &Certificate {
        &self.chain[self.chain.len() - 1]
    }
}

fn subject(cert: &Certificate) -> String {
    cert.tbs_certificate.subject.to_string()
}

fn is_ca(cert: &Certificate) -> bool {
    matches!(cert.tbs_certificate.get::<BasicConstraints>(), Ok(Some((_, bc))) if bc.ca)
}

/// Whether `cert`'s signature verifies with `issuer`'s key, and `issuer` names itself as the
/// certificate's issuer.
fn issued_by(cert: &Certificate, issuer: &Certificate) -> bool {
    if cert.tbs_certificate.issuer != issuer.tbs_certificate.subject {
        return false;
    }
    let Ok(tbs) = cert.tbs_certificate.to_der() else { return false };
    let Some(signature) = cert.signature.as_bytes() else { return false };
    verify_signature(
        &issuer.tbs_certificate.subject_public_key_info,
        &cert.signature_algorithm,
        &tbs,
        signature,
    )
    .is_ok()
}

fn check_validity(cert: &Certificate, now: OffsetDateTime) -> Result<(), CardCheckError> {
    let v = &cert.tbs_certificate.validity;
    let bad = |e: crate::CaError| CardCheckError::Malformed(e.to_string());
    let not_before = x509time::from_x509(&v.not_before).map_err(bad)?;
    let not_after = x509time::from_x509(&v.not_after).map_err(bad)?;
    if now < not_before {
        return Err(CardCheckError::NotYetValid {
            subject: subject(cert),
            not_before: x509time::rfc3339(not_before),
        });
    }
    if now > not_after {
        return Err(CardCheckError::Expired {
            subject: subject(cert),
            not_after: x509time::rfc3339(not_after),
        });
    }
    Ok(())
}

impl TrustStore {
    /// A store of `anchors` and `intermediates`, each DER.
    pub fn new(anchors: &[Vec<u8>], intermediates: &[Vec<u8>]) -> Result<Self, crate::CaError> {
        let parse = |v: &[Vec<u8>]| v.iter().map(|d| Certificate::from_der(d)).collect::<Result<Vec<_>, _>>();
        Ok(Self { anchors: parse(anchors)?, intermediates: parse(intermediates)? })
    }

    /// Adds the certificates of a PEM bundle: self-signed ones become anchors, the others
    /// intermediates. Returns how many anchors were added.
    pub fn add_pem_bundle(&mut self, pem: &[u8]) -> Result<usize, crate::CaError> {
        let certs = Certificate::load_pem_chain(pem)?;
        if certs.is_empty() {
            return Err(crate::CaError::Pem("no CERTIFICATE block".into()));
        }
        let mut anchors = 0;
        for cert in certs {
            if issued_by(&cert, &cert) {
                anchors += 1;
                self.anchors.push(cert);
            } else {
                self.intermediates.push(cert);
            }
        }
        Ok(anchors)
    }

    /// The anchors' subjects, for messages and logs.
    pub fn anchor_subjects(&self) -> Vec<String> {
        self.anchors.iter().map(subject).collect()
    }

    /// Builds and checks the path from `leaf_der` to an anchor at `now`.
    pub fn validate(&self, leaf_der: &[u8], now: OffsetDateTime) -> Result<ValidPath, CardCheckError> {
        let leaf = Certificate::from_der(leaf_der).map_err(|e| CardCheckError::Malformed(e.to_string()))?;
        if is_ca(&leaf) {
            return Err(CardCheckError::NotAnEndEntity);
        }
        check_validity(&leaf, now)?;
        let mut chain = vec![leaf];
        loop {
            if chain.len() >= MAX_PATH {
                return Err(CardCheckError::PathTooLong);
            }
            let current = &chain[chain.len() - 1];
            if let Some(anchor) = self.anchors.iter().find(|a| issued_by(current, a)) {
                check_validity(anchor, now)?;
                let anchor = anchor.clone();
                chain.push(anchor);
                return Ok(ValidPath { chain });
            }
            let next =
                self.intermediates.iter().find(|i| issued_by(current, i) && !chain.contains(i)).ok_or_else(
                    || CardCheckError::Untrusted { issuer: current.tbs_certificate.issuer.to_string() },
                )?;
            if !is_ca(next) {
                return Err(CardCheckError::NotACa { subject: subject(next) });
            }
            check_validity(next, now)?;
            let next = next.clone();
            chain.push(next);
        }
    }
}

/// What a card's certificate says about whose card it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CardNames {
    /// Every `urn:uuid:` URI of the SAN (the card UUID, and the cardholder UUID when present).
    pub uuids: Vec<[u8; 16]>,
    /// The Microsoft UPN otherName.
    pub upn: Option<String>,
    /// rfc822Name entries of the SAN, then emailAddress attributes of the subject.
    pub emails: Vec<String>,
    /// The subject's common name.
    pub common_name: Option<String>,
    /// The serial number, lowercase hex without leading zero bytes (as Lanyard records it).
    pub serial_hex: String,
    /// The subject DN (RFC 4514).
    pub subject: String,
}

fn parse_uuid_urn(uri: &str) -> Option<[u8; 16]> {
    let rest = uri.get(..9).filter(|p| p.eq_ignore_ascii_case("urn:uuid:")).map(|_| &uri[9..])?;
    let hex: String = rest.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || rest.len() != 36 {
        return None;
    }
    let bytes = ::hex::decode(hex).ok()?;
    bytes.try_into().ok()
}

/// Reads the names of a card's certificate.
pub fn card_names(cert: &Certificate) -> Result<CardNames, CardCheckError> {
    let tbs = &cert.tbs_certificate;
    let serial = tbs.serial_number.as_bytes();
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len().saturating_sub(1));
    let mut names = CardNames {
        serial_hex: ::hex::encode(&serial[start..]),
        subject: tbs.subject.to_string(),
        ..CardNames::default()
    };
    let san =
        tbs.get::<SubjectAltName>().map_err(|e| CardCheckError::Malformed(format!("subjectAltName: {e}")))?;
    for name in san.map(|(_, s)| s.0).unwrap_or_default() {
        match name {
            GeneralName::UniformResourceIdentifier(uri) => {
                if let Some(uuid) = parse_uuid_urn(uri.as_str()) {
                    names.uuids.push(uuid);
                }
            }
            GeneralName::Rfc822Name(mail) => names.emails.push(mail.as_str().to_owned()),
            GeneralName::OtherName(other) if other.type_id == oids::MS_UPN => {
                let upn = other
                    .value
                    .decode_as::<String>()
                    .map_err(|e| CardCheckError::Malformed(format!("UPN: {e}")))?;
                names.upn = Some(upn);
            }
            _ => {}
        }
    }
    for rdn in tbs.subject.0.iter() {
        for atv in rdn.0.iter() {
            let text = || {
                atv.value
                    .decode_as::<String>()
                    .or_else(|_| {
                        atv.value.decode_as::<der::asn1::PrintableStringRef<'_>>().map(|s| s.to_string())
                    })
                    .or_else(|_| atv.value.decode_as::<der::asn1::Ia5StringRef<'_>>().map(|s| s.to_string()))
                    .ok()
            };
            if atv.oid == COMMON_NAME {
                names.common_name = text();
            } else if atv.oid == EMAIL_ADDRESS
                && let Some(mail) = text()
            {
                names.emails.push(mail);
            }
        }
    }
    Ok(names)
}

const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
const EMAIL_ADDRESS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.1");

// ------------------------------------------------------------------------------------------------
// The challenge

/// What the card's key is, as far as signing a challenge goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKey {
    EcP256,
    EcP384,
    /// RSA with a modulus of this many bytes.
    Rsa {
        modulus_len: usize,
    },
}

impl ChallengeKey {
    /// The key of a certificate's SubjectPublicKeyInfo.
    pub fn of(spki: &SubjectPublicKeyInfoOwned) -> Result<Self, CardCheckError> {
        let unsupported = |what: String| CardCheckError::UnsupportedKey(what);
        if spki.algorithm.oid == oids::EC_PUBLIC_KEY {
            let curve: ObjectIdentifier = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as().ok())
                .ok_or_else(|| unsupported("an EC key without a named curve".into()))?;
            return match curve {
                c if c == oids::SECP256R1 => Ok(Self::EcP256),
                c if c == oids::SECP384R1 => Ok(Self::EcP384),
                c => Err(unsupported(format!("EC curve {c}"))),
            };
        }
        if spki.algorithm.oid == oids::RSA_ENCRYPTION {
            let key = spki
                .subject_public_key
                .as_bytes()
                .ok_or_else(|| unsupported("an RSA key that is not octet-aligned".into()))?;
            let modulus_len =
                rsa_modulus_len(key).ok_or_else(|| unsupported("a malformed RSA key".into()))?;
            if !(256..=512).contains(&modulus_len) {
                return Err(unsupported(format!("RSA-{}", modulus_len * 8)));
            }
            return Ok(Self::Rsa { modulus_len });
        }
        Err(unsupported(spki.algorithm.oid.to_string()))
    }

    /// The PIV algorithm identifier of GENERAL AUTHENTICATE for this key (SP 800-78).
    pub fn piv_algorithm(self) -> u8 {
        match self {
            Self::EcP256 => 0x11,
            Self::EcP384 => 0x14,
            Self::Rsa { modulus_len } if modulus_len <= 256 => 0x07,
            Self::Rsa { modulus_len } if modulus_len <= 384 => 0x05,
            Self::Rsa { .. } => 0x16,
        }
    }

    fn signature_algorithm(self) -> AlgorithmIdentifierOwned {
        match self {
            Self::EcP256 => AlgorithmIdentifierOwned { oid: oids::ECDSA_WITH_SHA256, parameters: None },
            Self::EcP384 => AlgorithmIdentifierOwned { oid: oids::ECDSA_WITH_SHA384, parameters: None },
            Self::Rsa { .. } => {
                AlgorithmIdentifierOwned { oid: oids::SHA256_WITH_RSA, parameters: Some(Any::from(Null)) }
            }
        }
    }
}

/// The modulus length in bytes of an RSAPublicKey (`SEQUENCE { INTEGER n, INTEGER e }`).
fn rsa_modulus_len(key: &[u8]) -> Option<usize> {
    #[derive(der::Sequence)]
    struct RsaPublicKey<'a> {
        modulus: der::asn1::UintRef<'a>,
        _exponent: der::asn1::UintRef<'a>,
    }
    let key = RsaPublicKey::from_der(key).ok()?;
    Some(key.modulus.as_bytes().len())
}

/// DigestInfo prefix of SHA-256 (RFC 8017 §9.2, note 1).
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00,
    0x04, 0x20,
];

/// What the card signs with GENERAL AUTHENTICATE for `challenge`: the SHA-256 (P-256) or SHA-384
/// (P-384) digest for ECDSA, which the card signs as given; for RSA the whole EMSA-PKCS1-v1_5
/// block of a SHA-256 digest, which the card raises to its private exponent.
pub fn challenge_input(key: ChallengeKey, challenge: &[u8]) -> Vec<u8> {
    match key {
        ChallengeKey::EcP256 => digest::digest(&digest::SHA256, challenge).as_ref().to_vec(),
        ChallengeKey::EcP384 => digest::digest(&digest::SHA384, challenge).as_ref().to_vec(),
        ChallengeKey::Rsa { modulus_len } => {
            let hash = digest::digest(&digest::SHA256, challenge);
            let t_len = SHA256_DIGEST_INFO.len() + hash.as_ref().len();
            // The modulus is at least 256 bytes (checked in `ChallengeKey::of`), far above t_len + 11.
            let mut block = Vec::with_capacity(modulus_len);
            block.extend_from_slice(&[0x00, 0x01]);
            block.resize(modulus_len - t_len - 1, 0xFF);
            block.push(0x00);
            block.extend_from_slice(&SHA256_DIGEST_INFO);
            block.extend_from_slice(hash.as_ref());
            block
        }
    }
}

/// Checks the card's answer to [`challenge_input`]: an ECDSA signature (DER) or an RSA PKCS#1
/// v1.5 signature over `challenge`, with the key of `cert`.
pub fn verify_challenge(
    cert: &Certificate,
    challenge: &[u8],
    signature: &[u8],
) -> Result<(), CardCheckError> {
    let spki = &cert.tbs_certificate.subject_public_key_info;
    let key = ChallengeKey::of(spki)?;
    verify_signature(spki, &key.signature_algorithm(), challenge, signature).map_err(|e| match e {
        crate::CsrError::BadSignature => CardCheckError::BadSignature,
        other => CardCheckError::UnsupportedKey(other.to_string()),
    })
}

// ------------------------------------------------------------------------------------------------
// Revocation

fn extension(cert: &Certificate, oid: ObjectIdentifier) -> Option<&Extension> {
    cert.tbs_certificate.extensions.iter().flatten().find(|e| e.extn_id == oid)
}

fn http_uri(name: &GeneralName) -> Option<String> {
    match name {
        GeneralName::UniformResourceIdentifier(uri)
            if uri.as_str().starts_with("http://") || uri.as_str().starts_with("https://") =>
        {
            Some(uri.as_str().to_owned())
        }
        _ => None,
    }
}

/// The OCSP responders the certificate names (AIA id-ad-ocsp, HTTP URLs only).
pub fn ocsp_urls(cert: &Certificate) -> Vec<String> {
    let Some(ext) = extension(cert, oids::AUTHORITY_INFO_ACCESS) else { return Vec::new() };
    let Ok(aia) = AuthorityInfoAccessSyntax::from_der(ext.extn_value.as_bytes()) else { return Vec::new() };
    aia.0
        .iter()
        .filter(|d| d.access_method == oids::AD_OCSP)
        .filter_map(|d| http_uri(&d.access_location))
        .collect()
}

/// The CRLs the certificate names (CRL distribution points, full names, HTTP URLs only).
pub fn crl_urls(cert: &Certificate) -> Vec<String> {
    let Some(ext) = extension(cert, oids::CRL_DISTRIBUTION_POINTS) else { return Vec::new() };
    let Ok(cdp) = CrlDistributionPoints::from_der(ext.extn_value.as_bytes()) else { return Vec::new() };
    cdp.0
        .iter()
        .filter_map(|dp| match &dp.distribution_point {
            Some(DistributionPointName::FullName(names)) => {
                Some(names.iter().filter_map(http_uri).collect::<Vec<_>>())
            }
            _ => None,
        })
        .flatten()
        .collect()
}

/// What the issuer says of a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    Good,
    Revoked { at: OffsetDateTime, reason: Option<RevocationReason> },
}

/// Why a revocation answer could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RevocationError(pub String);

fn rev_err(m: impl Into<String>) -> RevocationError {
    RevocationError(m.into())
}

fn cert_id(cert: &Certificate, issuer: &Certificate) -> Result<CertId, crate::CaError> {
    let sha1 = |b: &[u8]| OctetString::new(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, b).as_ref());
    Ok(CertId {
        hash_algorithm: AlgorithmIdentifierOwned { oid: oids::SHA1, parameters: Some(Any::from(Null)) },
        issuer_name_hash: sha1(&issuer.tbs_certificate.subject.to_der()?)?,
        issuer_key_hash: sha1(issuer.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes())?,
        serial_number: cert.tbs_certificate.serial_number.clone(),
    })
}

/// An OCSP request (DER) for `cert` issued by `issuer`, with `nonce` (1 to 32 bytes), SHA-1
/// CertID as responders universally accept.
pub fn ocsp_request(
    cert: &Certificate,
    issuer: &Certificate,
    nonce: &[u8],
) -> Result<Vec<u8>, crate::CaError> {
    let nonce_ext = Extension {
        extn_id: oids::OCSP_NONCE,
        critical: false,
        extn_value: OctetString::new(OctetString::new(nonce)?.to_der()?)?,
    };
    let request = OcspRequest {
        tbs_request: TbsRequest {
            version: Default::default(),
            requestor_name: None,
            request_list: vec![Request { req_cert: cert_id(cert, issuer)?, single_request_extensions: None }],
            request_extensions: Some(vec![nonce_ext]),
        },
        optional_signature: None,
    };
    Ok(request.to_der()?)
}

fn generalized(t: &der::asn1::GeneralizedTime) -> Result<OffsetDateTime, RevocationError> {
    let secs = i64::try_from(t.to_unix_duration().as_secs()).map_err(|_| rev_err("a time out of range"))?;
    OffsetDateTime::from_unix_timestamp(secs).map_err(|_| rev_err("a time out of range"))
}

/// Checks that an answer made at `this_update`, good until `next_update`, is current at `now`.
fn fresh(
    what: &str,
    this_update: OffsetDateTime,
    next_update: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Result<(), RevocationError> {
    if this_update > now + CLOCK_SKEW {
        return Err(rev_err(format!(
            "the {what} is dated in the future ({})",
            x509time::rfc3339(this_update)
        )));
    }
    match next_update {
        Some(next) if next + CLOCK_SKEW < now => Err(rev_err(format!(
            "the {what} is out of date (next update was due {})",
            x509time::rfc3339(next)
        ))),
        Some(_) => Ok(()),
        None => Err(rev_err(format!("the {what} says nothing of when it will be updated"))),
    }
}

/// Reads an OCSP response for `cert`: it must be successful, signed by `issuer` or by a
/// responder certificate `issuer` issued for OCSP signing, name `cert`, be current at `now`, and
/// echo `nonce` when it carries one.
pub fn ocsp_status(
    response_der: &[u8],
    cert: &Certificate,
    issuer: &Certificate,
    nonce: &[u8],
    now: OffsetDateTime,
) -> Result<Revocation, RevocationError> {
    let response =
        OcspResponse::from_der(response_der).map_err(|e| rev_err(format!("unreadable OCSP answer: {e}")))?;
    if response.response_status != OcspResponseStatus::Successful {
        return Err(rev_err(format!("the OCSP responder answered {:?}", response.response_status)));
    }
    let bytes = response.response_bytes.ok_or_else(|| rev_err("the OCSP answer has no body"))?;
    if bytes.response_type != oids::OCSP_BASIC {
        return Err(rev_err(format!("unknown OCSP answer type {}", bytes.response_type)));
    }
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes())
        .map_err(|e| rev_err(format!("unreadable OCSP answer: {e}")))?;
    let tbs = basic.tbs_response_data.to_der().map_err(|e| rev_err(e.to_string()))?;
    let signature =
        basic.signature.as_bytes().ok_or_else(|| rev_err("the OCSP signature is not octet-aligned"))?;
    let signed_with = |spki: &SubjectPublicKeyInfoOwned| {
        verify_signature(spki, &basic.signature_algorithm, &tbs, signature).is_ok()
    };
    let by_issuer = signed_with(&issuer.tbs_certificate.subject_public_key_info);
    let by_delegate = || {
        basic.certs.iter().flatten().any(|responder| {
            let eku = matches!(
                responder.tbs_certificate.get::<ExtendedKeyUsage>(),
                Ok(Some((_, eku))) if eku.0.contains(&oids::KP_OCSP_SIGNING)
            );
            eku && issued_by(responder, issuer)
                && check_validity(responder, now).is_ok()
                && signed_with(&responder.tbs_certificate.subject_public_key_info)
        })
    };
    if !by_issuer && !by_delegate() {
        return Err(rev_err(
            "the OCSP answer is not signed by the card's issuer or a responder it authorised",
        ));
    }
    if let Some(echoed) =
        basic.tbs_response_data.response_extensions.iter().flatten().find(|e| e.extn_id == oids::OCSP_NONCE)
    {
        let theirs = OctetString::from_der(echoed.extn_value.as_bytes())
            .map(|o| o.as_bytes().to_vec())
            .unwrap_or_else(|_| echoed.extn_value.as_bytes().to_vec());
        if theirs != nonce {
            return Err(rev_err("the OCSP answer carries another request's nonce"));
        }
    }
    let wanted = cert_id(cert, issuer).map_err(|e| rev_err(e.to_string()))?;
    let single = basic
        .tbs_response_data
        .responses
        .iter()
        .find(|r| {
            r.cert_id.serial_number == wanted.serial_number
                && r.cert_id.issuer_name_hash == wanted.issuer_name_hash
                && r.cert_id.issuer_key_hash == wanted.issuer_key_hash
        })
        .ok_or_else(|| rev_err("the OCSP answer does not speak of this certificate"))?;
    let next = single.next_update.as_ref().map(|t| generalized(&t.0)).transpose()?;
    fresh("OCSP answer", generalized(&single.this_update.0)?, next, now)?;
    match &single.cert_status {
        x509_ocsp::CertStatus::Good(_) => Ok(Revocation::Good),
        x509_ocsp::CertStatus::Revoked(info) => Ok(Revocation::Revoked {
            at: generalized(&info.revocation_time.0)?,
            reason: info.revocation_reason.and_then(|r| RevocationReason::from_code(r as u8)),
        }),
        x509_ocsp::CertStatus::Unknown(_) => {
            Err(rev_err("the OCSP responder does not know this certificate"))
        }
    }
}

/// Reads a CRL (DER) for `cert`: signed by `issuer`, current at `now`.
pub fn crl_status(
    crl_der: &[u8],
    cert: &Certificate,
    issuer: &Certificate,
    now: OffsetDateTime,
) -> Result<Revocation, RevocationError> {
    let crl = CertificateList::from_der(crl_der).map_err(|e| rev_err(format!("unreadable CRL: {e}")))?;
    if crl.tbs_cert_list.issuer != issuer.tbs_certificate.subject {
        return Err(rev_err("the CRL is not the card issuer's"));
    }
    let tbs = crl.tbs_cert_list.to_der().map_err(|e| rev_err(e.to_string()))?;
    let signature =
        crl.signature.as_bytes().ok_or_else(|| rev_err("the CRL signature is not octet-aligned"))?;
    verify_signature(
        &issuer.tbs_certificate.subject_public_key_info,
        &crl.signature_algorithm,
        &tbs,
        signature,
    )
    .map_err(|_| rev_err("the CRL's signature does not verify with the issuer's key"))?;
    let time = |t: &x509_cert::time::Time| x509time::from_x509(t).map_err(|e| rev_err(e.to_string()));
    let next = crl.tbs_cert_list.next_update.as_ref().map(time).transpose()?;
    fresh("CRL", time(&crl.tbs_cert_list.this_update)?, next, now)?;
    let serial = &cert.tbs_certificate.serial_number;
    match crl.tbs_cert_list.revoked_certificates.iter().flatten().find(|r| &r.serial_number == serial) {
        None => Ok(Revocation::Good),
        Some(entry) => {
            let reason = entry
                .crl_entry_extensions
                .iter()
                .flatten()
                .find(|e| e.extn_id == oids::CRL_REASON)
                .and_then(|e| x509_cert::ext::pkix::CrlReason::from_der(e.extn_value.as_bytes()).ok())
                .and_then(|r| RevocationReason::from_code(r as u8));
            if reason == Some(RevocationReason::RemoveFromCrl) {
                return Ok(Revocation::Good);
            }
            Ok(Revocation::Revoked { at: time(&entry.revocation_date)?, reason })
        }
    }
}
