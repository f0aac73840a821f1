//! The few certificates the software card makes itself: its attestation root, each card's F9
//! attestation certificate, and attestation statements. Signed with P-256 / ECDSA-SHA256.

use der::asn1::{BitString, GeneralizedTime, OctetString, UtcTime};
use der::{DateTime, Encode};
use p256::ecdsa::{DerSignature, SigningKey};
use sha2::{Digest, Sha256};
use signature::Signer;
use spki::{AlgorithmIdentifierOwned, ObjectIdentifier, SubjectPublicKeyInfoOwned};
use std::time::SystemTime;
use x509_cert::certificate::{Certificate, TbsCertificate, Version};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier,
};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("DER: {0}")]
    Der(#[from] der::Error),
    #[error("{0}")]
    Other(String),
}

/// An X.509 time: UTCTime through 2049, GeneralizedTime after (RFC 5280 §4.1.2.5).
pub fn x509_time(t: SystemTime) -> Result<Time, CertError> {
    let dt = DateTime::from_system_time(t)?;
    Ok(if dt.year() < 2050 {
        Time::UtcTime(UtcTime::from_date_time(dt)?)
    } else {
        Time::GeneralTime(GeneralizedTime::from_date_time(dt))
    })
}

/// A key identifier: the leftmost 160 bits of SHA-256 over the subjectPublicKey (RFC 7093 §2).
pub fn key_identifier(spki: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
    Sha256::digest(spki.subject_public_key.raw_bytes())[..20].to_vec()
}

pub fn extension(oid: &str, critical: bool, value: Vec<u8>) -> Result<Extension, CertError> {
    Ok(Extension {
        extn_id: ObjectIdentifier::new(oid).map_err(|e| CertError::Other(e.to_string()))?,
        critical,
        extn_value: OctetString::new(value)?,
    })
}

/// Extensions of a CA certificate: basic constraints, key usage, key identifiers.
pub fn ca_extensions(
    subject: &SubjectPublicKeyInfoOwned,
    issuer: &SubjectPublicKeyInfoOwned,
) -> Result<Vec<Extension>, CertError> {
    Ok(vec![
        extension("2.5.29.19", true, BasicConstraints { ca: true, path_len_constraint: None }.to_der()?)?,
        extension("2.5.29.15", true, KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign).to_der()?)?,
        extension(
            "2.5.29.14",
            false,
            SubjectKeyIdentifier(OctetString::new(key_identifier(subject))?).to_der()?,
        )?,
        extension(
            "2.5.29.35",
            false,
            AuthorityKeyIdentifier {
                key_identifier: Some(OctetString::new(key_identifier(issuer))?),
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            }
            .to_der()?,
        )?,
    ])
}

/// A positive random serial of 16 bytes.
pub fn random_serial() -> Result<SerialNumber, CertError> {
    let mut b = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    b[0] &= 0x7F;
    b[0] |= 0x01;
    Ok(SerialNumber::new(&b)?)
}

/// Signs a DER TBSCertificate, returning a DER ECDSA signature.
pub type TbsSigner<'a> = dyn Fn(&[u8]) -> Result<Vec<u8>, CertError> + 'a;

pub struct CertTemplate {
    pub subject: Name,
    pub spki: SubjectPublicKeyInfoOwned,
    pub serial: SerialNumber,
    pub validity: Validity,
    pub extensions: Vec<Extension>,
}

/// Signs `template` as `issuer` with a software P-256 key.
pub fn sign(template: CertTemplate, issuer: &Name, key: &SigningKey) -> Result<Certificate, CertError> {
    sign_with(template, issuer, &|tbs: &[u8]| {
        let sig: DerSignature = key.try_sign(tbs).map_err(|e| CertError::Other(e.to_string()))?;
        Ok(sig.as_bytes().to_vec())
    })
}

/// Signs `template` as `issuer` with any ECDSA-SHA256 signer (a card key, an HSM): `signer`
/// receives the DER TBSCertificate and returns a DER ECDSA signature.
pub fn sign_with(
    template: CertTemplate,
    issuer: &Name,
    signer: &TbsSigner<'_>,
) -> Result<Certificate, CertError> {
    let alg = AlgorithmIdentifierOwned { oid: ECDSA_WITH_SHA256, parameters: None };
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: template.serial,
        signature: alg.clone(),
        issuer: issuer.clone(),
        validity: template.validity,
        subject: template.subject,
        subject_public_key_info: template.spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(template.extensions),
    };
    let sig = signer(&tbs.to_der()?)?;
    Ok(Certificate {
        tbs_certificate: tbs,
        signature_algorithm: alg,
        signature: BitString::from_bytes(&sig)?,
    })
}
