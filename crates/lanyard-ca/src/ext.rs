//! Encoders for the extensions the CA writes. Each returns a ready [`Extension`] so the criticality
//! decision sits next to the content.

use aws_lc_rs::digest;
use der::Encode;
use der::asn1::{BitString, Ia5String, Null, ObjectIdentifier, OctetString};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::certpolicy::PolicyInformation;
use x509_cert::ext::pkix::crl::dp::DistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{
    AccessDescription, AuthorityInfoAccessSyntax, AuthorityKeyIdentifier, BasicConstraints,
    CertificatePolicies, CrlDistributionPoints, ExtendedKeyUsage, SubjectAltName, SubjectKeyIdentifier,
};

use crate::error::CaError;
use crate::oids;
use crate::profile::{KeyUsageBit, Oid};

pub(crate) fn extension<T: Encode>(
    oid: ObjectIdentifier,
    critical: bool,
    value: &T,
) -> Result<Extension, CaError> {
    Ok(Extension { extn_id: oid, critical, extn_value: OctetString::new(value.to_der()?)? })
}

/// Key identifier per RFC 7093 §2 method 1: the leftmost 160 bits of the SHA-256 hash of the
/// subjectPublicKey BIT STRING value (no SHA-1).
pub(crate) fn key_identifier(spki: &SubjectPublicKeyInfoOwned) -> Vec<u8> {
    let hash = digest::digest(&digest::SHA256, spki.subject_public_key.raw_bytes());
    hash.as_ref()[..20].to_vec()
}

/// keyUsage as a DER BIT STRING with trailing zero bits removed (X.690 §11.2.2).
pub(crate) fn key_usage(bits: &[KeyUsageBit], critical: bool) -> Result<Extension, CaError> {
    let mut bytes = [0u8; 2];
    let mut highest = 0usize;
    for bit in bits {
        let i = *bit as usize;
        bytes[i / 8] |= 0x80 >> (i % 8);
        highest = highest.max(i);
    }
    let len = highest / 8 + 1;
    // `highest % 8` is at most 7, so the unused-bit count is 0..=7 as BitString requires.
    let unused = (7 - highest % 8) as u8;
    let value = BitString::new(unused, bytes[..len].to_vec())?;
    extension(oids::KEY_USAGE, critical, &value)
}

pub(crate) fn basic_constraints(ca: bool, path_len: Option<u8>) -> Result<Extension, CaError> {
    extension(oids::BASIC_CONSTRAINTS, true, &BasicConstraints { ca, path_len_constraint: path_len })
}

pub(crate) fn extended_key_usage(purposes: &[Oid], critical: bool) -> Result<Extension, CaError> {
    extension(oids::EXT_KEY_USAGE, critical, &ExtendedKeyUsage(purposes.iter().map(|o| o.0).collect()))
}

pub(crate) fn certificate_policies(policies: &[Oid]) -> Result<Extension, CaError> {
    let value = CertificatePolicies(
        policies
            .iter()
            .map(|o| PolicyInformation { policy_identifier: o.0, policy_qualifiers: None })
            .collect(),
    );
    extension(oids::CERTIFICATE_POLICIES, false, &value)
}

pub(crate) fn subject_key_identifier(id: &[u8]) -> Result<Extension, CaError> {
    extension(oids::SUBJECT_KEY_IDENTIFIER, false, &SubjectKeyIdentifier(OctetString::new(id)?))
}

pub(crate) fn authority_key_identifier(id: &[u8]) -> Result<Extension, CaError> {
    let value = AuthorityKeyIdentifier {
        key_identifier: Some(OctetString::new(id)?),
        authority_cert_issuer: None,
        authority_cert_serial_number: None,
    };
    extension(oids::AUTHORITY_KEY_IDENTIFIER, false, &value)
}

pub(crate) fn subject_alt_name(names: Vec<GeneralName>, critical: bool) -> Result<Extension, CaError> {
    extension(oids::SUBJECT_ALT_NAME, critical, &SubjectAltName(names))
}

pub(crate) fn uri(u: &str) -> Result<GeneralName, CaError> {
    Ok(GeneralName::UniformResourceIdentifier(Ia5String::new(u)?))
}

pub(crate) fn authority_info_access(
    ocsp: Option<&str>,
    ca_issuers: Option<&str>,
) -> Result<Extension, CaError> {
    let mut access = Vec::new();
    if let Some(u) = ocsp {
        access.push(AccessDescription { access_method: oids::AD_OCSP, access_location: uri(u)? });
    }
    if let Some(u) = ca_issuers {
        access.push(AccessDescription { access_method: oids::AD_CA_ISSUERS, access_location: uri(u)? });
    }
    extension(oids::AUTHORITY_INFO_ACCESS, false, &AuthorityInfoAccessSyntax(access))
}

pub(crate) fn crl_distribution_points(url: &str) -> Result<Extension, CaError> {
    let value = CrlDistributionPoints(vec![DistributionPoint {
        distribution_point: Some(DistributionPointName::FullName(vec![uri(url)?])),
        reasons: None,
        crl_issuer: None,
    }]);
    extension(oids::CRL_DISTRIBUTION_POINTS, false, &value)
}

/// id-pkix-ocsp-nocheck: the extension value is NULL (RFC 6960 §4.2.2.2.1).
pub(crate) fn ocsp_no_check() -> Result<Extension, CaError> {
    extension(oids::OCSP_NO_CHECK, false, &Null)
}

/// `urn:uuid:` form of a UUID (RFC 9562 / RFC 4122 §3), lower-case as FIPS 201 shows it.
pub(crate) fn uuid_urn(uuid: &[u8; 16]) -> String {
    let mut s = String::from("urn:uuid:");
    for (i, b) in uuid.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Decode;

    #[test]
    fn key_usage_encoding_is_minimal() {
        let e = key_usage(&[KeyUsageBit::DigitalSignature], true).unwrap();
        assert_eq!(e.extn_value.as_bytes(), &[0x03, 0x02, 0x07, 0x80]);
        let e = key_usage(&[KeyUsageBit::KeyCertSign, KeyUsageBit::CrlSign], true).unwrap();
        assert_eq!(e.extn_value.as_bytes(), &[0x03, 0x02, 0x01, 0x06]);
        let e = key_usage(&[KeyUsageBit::KeyAgreement, KeyUsageBit::DecipherOnly], true).unwrap();
        assert_eq!(e.extn_value.as_bytes(), &[0x03, 0x03, 0x07, 0x08, 0x80]);
        // And x509-cert reads back what we wrote.
        let ku = x509_cert::ext::pkix::KeyUsage::from_der(e.extn_value.as_bytes()).unwrap();
        assert!(ku.key_agreement() && ku.decipher_only() && !ku.digital_signature());
    }

    #[test]
    fn uuid_urn_format() {
        let u =
            [0x3f, 0x25, 0x04, 0xe0, 0x4f, 0x89, 0x11, 0xd3, 0x9a, 0x0c, 0x03, 0x05, 0xe8, 0x2c, 0x33, 0x01];
        assert_eq!(uuid_urn(&u), "urn:uuid:3f2504e0-4f89-11d3-9a0c-0305e82c3301");
    }
}
