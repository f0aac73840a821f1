//! PKCS#10 certificate requests (RFC 2986): parsing with signature verification, and building
//! (for Lanyard's own clients and for tests).

use der::asn1::{Any, Ia5StringRef, PrintableStringRef, SetOfVec, TeletexStringRef, Utf8StringRef};
use der::{Decode, Encode, Reader, SliceReader, Tag, Tagged};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::attr::Attribute;
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::request::{CertReq, CertReqInfo, ExtensionReq, Version};

use crate::error::{CaError, CsrError};
use crate::keys::{CaSigner, verify_signature};
use crate::oids;

/// A certificate request whose signature has been verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCsr {
    /// Requested subject DN (a CA decides what it actually certifies).
    pub subject: Name,
    /// The requester's public key, proven by the signature.
    pub public_key: SubjectPublicKeyInfoOwned,
    /// The algorithm the request was signed with.
    pub signature_algorithm: AlgorithmIdentifierOwned,
    /// Extensions from the PKCS#9 extensionRequest attribute.
    pub requested_extensions: Vec<Extension>,
    /// PKCS#9 challengePassword (SCEP one-time challenges arrive here).
    pub challenge_password: Option<String>,
    /// OIDs of any other attributes, kept for logging; they are not interpreted.
    pub other_attributes: Vec<spki::ObjectIdentifier>,
    /// The request as DER.
    pub der: Vec<u8>,
}

/// Parses a CSR given as PEM (`CERTIFICATE REQUEST`, or the older `NEW CERTIFICATE REQUEST`,
/// surrounding whitespace allowed) or DER (exactly the request's octets), and verifies its
/// signature.
pub fn parse_csr(input: &[u8]) -> Result<ParsedCsr, CsrError> {
    let trimmed = input.trim_ascii();
    if trimmed.is_empty() {
        return Err(CsrError::Empty);
    }
    if trimmed.starts_with(b"-----BEGIN") {
        let text = std::str::from_utf8(trimmed).map_err(|_| CsrError::Pem("not UTF-8 text".into()))?;
        parse_csr_pem(text)
    } else {
        // DER as given: its last octets may well be the codes of whitespace (a signature ending
        // in 0x20 or 0x0a), which trimming would cut off.
        parse_csr_der(input)
    }
}

/// Parses a PEM CSR and verifies its signature.
pub fn parse_csr_pem(pem: &str) -> Result<ParsedCsr, CsrError> {
    let pem = pem.trim();
    if pem.is_empty() {
        return Err(CsrError::Empty);
    }
    let (label, der) = der::pem::decode_vec(pem.as_bytes()).map_err(|e| CsrError::Pem(e.to_string()))?;
    if label != "CERTIFICATE REQUEST" && label != "NEW CERTIFICATE REQUEST" {
        return Err(CsrError::WrongPemLabel(label.to_string()));
    }
    parse_csr_der(&der)
}

/// Parses a DER CSR and verifies its signature.
pub fn parse_csr_der(der: &[u8]) -> Result<ParsedCsr, CsrError> {
    if der.is_empty() {
        return Err(CsrError::Empty);
    }
    let request = CertReq::from_der(der).map_err(|e| CsrError::Der(e.to_string()))?;
    // Verify over the CertificationRequestInfo bytes exactly as received, not a re-encoding.
    let info_bytes = signed_bytes(der).map_err(|e| CsrError::Der(e.to_string()))?;
    let signature = request.signature.as_bytes().ok_or(CsrError::MalformedSignature)?;
    verify_signature(&request.info.public_key, &request.algorithm, info_bytes, signature)?;

    let mut requested_extensions = None;
    let mut challenge_password = None;
    let mut other_attributes = Vec::new();
    for attribute in request.info.attributes.iter() {
        let oid = attribute.oid;
        let single_value = || -> Result<&Any, CsrError> {
            match attribute.values.as_slice() {
                [v] => Ok(v),
                _ => Err(CsrError::MalformedAttribute {
                    oid: oid.to_string(),
                    reason: "needs exactly one value".into(),
                }),
            }
        };
        if oid == oids::PKCS9_EXTENSION_REQUEST {
            if requested_extensions.is_some() {
                return Err(CsrError::DuplicateAttribute(oid.to_string()));
            }
            let extensions: Vec<Extension> = single_value()?
                .decode_as()
                .map_err(|e| CsrError::MalformedAttribute { oid: oid.to_string(), reason: e.to_string() })?;
            for (i, e) in extensions.iter().enumerate() {
                if extensions[..i].iter().any(|prev| prev.extn_id == e.extn_id) {
                    return Err(CsrError::DuplicateExtension(e.extn_id.to_string()));
                }
            }
            requested_extensions = Some(extensions);
        } else if oid == oids::PKCS9_CHALLENGE_PASSWORD {
            if challenge_password.is_some() {
                return Err(CsrError::DuplicateAttribute(oid.to_string()));
            }
            challenge_password = Some(
                directory_string(single_value()?)
                    .map_err(|reason| CsrError::MalformedAttribute { oid: oid.to_string(), reason })?,
            );
        } else {
            if other_attributes.contains(&oid) {
                return Err(CsrError::DuplicateAttribute(oid.to_string()));
            }
            other_attributes.push(oid);
        }
    }

    Ok(ParsedCsr {
        subject: request.info.subject,
        public_key: request.info.public_key,
        signature_algorithm: request.algorithm,
        requested_extensions: requested_extensions.unwrap_or_default(),
        challenge_password,
        other_attributes,
        der: der.to_vec(),
    })
}

/// The raw TLV of the first element of the outer SEQUENCE (the signed CertificationRequestInfo).
fn signed_bytes(der: &[u8]) -> der::Result<&[u8]> {
    let mut reader = SliceReader::new(der)?;
    let info = reader.sequence(|r| {
        let info = r.tlv_bytes()?;
        // Skip the rest (algorithm, signature); CertReq::from_der already checked them.
        let _algorithm = r.tlv_bytes()?;
        let _signature = r.tlv_bytes()?;
        Ok(info)
    })?;
    reader.finish(info)
}

/// challengePassword is a DirectoryString; accept the string types encoders actually use.
fn directory_string(value: &Any) -> Result<String, String> {
    let s = match value.tag() {
        Tag::Utf8String => Utf8StringRef::try_from(value).map(|s| s.as_str().to_string()),
        Tag::PrintableString => PrintableStringRef::try_from(value).map(|s| s.as_str().to_string()),
        Tag::Ia5String => Ia5StringRef::try_from(value).map(|s| s.as_str().to_string()),
        Tag::TeletexString => TeletexStringRef::try_from(value).map(|s| s.as_str().to_string()),
        other => return Err(format!("unsupported string type {other}")),
    };
    s.map_err(|e| e.to_string())
}

/// Builds a signed PKCS#10 request for `signer`'s key.
pub fn build_csr(
    signer: &dyn CaSigner,
    subject: Name,
    extensions: Vec<Extension>,
    challenge_password: Option<&str>,
) -> Result<Vec<u8>, CaError> {
    let mut attributes = SetOfVec::new();
    if !extensions.is_empty() {
        attributes.insert(Attribute::try_from(ExtensionReq(extensions))?)?;
    }
    if let Some(password) = challenge_password {
        let tag = if password.bytes().all(|b| b.is_ascii_alphanumeric() || b" '()+,-./:=?".contains(&b)) {
            Tag::PrintableString
        } else {
            Tag::Utf8String
        };
        let mut values = SetOfVec::new();
        values.insert(Any::new(tag, password.as_bytes())?)?;
        attributes.insert(Attribute { oid: oids::PKCS9_CHALLENGE_PASSWORD, values })?;
    }
    let info = CertReqInfo { version: Version::V1, subject, public_key: signer.public_key(), attributes };
    let info_der = info.to_der()?;
    let signature = signer.sign(&info_der)?;
    let request = CertReq {
        info,
        algorithm: signer.algorithm(),
        signature: der::asn1::BitString::from_bytes(&signature)?,
    };
    Ok(request.to_der()?)
}
