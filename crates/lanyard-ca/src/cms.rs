//! CMS signatures (RFC 5652): detached ones for PIV signed data objects, above all the CHUID
//! issuer signature (tag `3E`, SP 800-73-4 Part 1 §3.1.2.1), and attached ones (content inside)
//! for Apple configuration profiles ([`sign_attached`]).
//!
//! For the PIV signatures:
//! The shape follows SP 800-73-4 rather than whatever a generic CMS library would pick:
//! SignedData v3 (the eContentType is not id-data), `eContent` absent, exactly one certificate and
//! one SignerInfo, the signer named by issuerAndSerialNumber (so SignerInfo v1), and the signed
//! attributes contentType, messageDigest and pivSigner-DN. No signingTime: the card issuer's
//! signature must not depend on a clock, and SP 800-73 does not ask for one.

use ::cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use ::cms::content_info::{CmsVersion, ContentInfo};
use ::cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedAttributes, SignedData, SignerIdentifier, SignerInfo,
    SignerInfos,
};
use aws_lc_rs::digest;
use der::asn1::{ObjectIdentifier, OctetString, SetOfVec};
use der::{Any, Decode, Encode};
use spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;
use x509_cert::attr::Attribute;
use x509_cert::ext::pkix::ExtendedKeyUsage;

use crate::error::{CaError, CmsError, CsrError};
use crate::hierarchy::SignerCredential;
use crate::keys::{CaSigner, verify_signature};
use crate::oids;

/// What [`verify_detached`] found in a signature that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignerInfoSummary {
    /// eContentType (for a CHUID signature, [`oids::PIV_CHUID_SECURITY_OBJECT`]).
    pub econtent_type: ObjectIdentifier,
    /// The digest algorithm of the SignerInfo.
    pub digest_algorithm: ObjectIdentifier,
    /// The signature algorithm of the SignerInfo.
    pub signature_algorithm: ObjectIdentifier,
    /// Every signed attribute's type, in encoding order.
    pub signed_attributes: Vec<ObjectIdentifier>,
    /// The pivSigner-DN attribute, if present (RFC 4514 string).
    pub piv_signer_dn: Option<String>,
    /// DER of the certificate whose key made the signature. The caller still has to decide
    /// whether it trusts that certificate (path validation against its own CA).
    pub signer_certificate_der: Vec<u8>,
}

/// The digest a signature algorithm hashes with, which is also the CMS digestAlgorithm we declare.
fn digest_for_signature(
    sig_alg: &ObjectIdentifier,
) -> Result<(ObjectIdentifier, &'static digest::Algorithm), CmsError> {
    let alg = *sig_alg;
    if alg == oids::ECDSA_WITH_SHA256 || alg == oids::SHA256_WITH_RSA {
        Ok((oids::SHA256, &digest::SHA256))
    } else if alg == oids::ECDSA_WITH_SHA384 || alg == oids::SHA384_WITH_RSA {
        Ok((oids::SHA384, &digest::SHA384))
    } else if alg == oids::ECDSA_WITH_SHA512 || alg == oids::SHA512_WITH_RSA {
        Ok((oids::SHA512, &digest::SHA512))
    } else {
        Err(CmsError::UnsupportedSignature(alg.to_string()))
    }
}

fn digest_by_oid(oid: &ObjectIdentifier) -> Result<&'static digest::Algorithm, CmsError> {
    let oid = *oid;
    if oid == oids::SHA256 {
        Ok(&digest::SHA256)
    } else if oid == oids::SHA384 {
        Ok(&digest::SHA384)
    } else if oid == oids::SHA512 {
        Ok(&digest::SHA512)
    } else {
        Err(CmsError::UnsupportedDigest(oid.to_string()))
    }
}

fn attribute(oid: ObjectIdentifier, value: Any) -> Result<Attribute, CaError> {
    let mut values = SetOfVec::new();
    values.insert(value)?;
    Ok(Attribute { oid, values })
}

fn malformed(e: der::Error) -> CmsError {
    CmsError::Malformed(e.to_string())
}

/// Signs `content` as a detached CMS SignedData of type `econtent_type`.
///
/// The signed attributes are contentType, messageDigest and `extra_signed_attrs` (which must not
/// repeat those two). The digest is the one the signer's signature algorithm uses (SHA-256 for
/// P-256 and RSA, SHA-384 for P-384), as SP 800-78 pairs them. `signer_cert_der` must certify
/// `signer`'s key; it is the only certificate in the result. The signature is verified before it
/// is returned.
pub fn sign_detached<K: CaSigner + ?Sized>(
    signer: &K,
    signer_cert_der: &[u8],
    econtent_type: ObjectIdentifier,
    content: &[u8],
    extra_signed_attrs: &[Attribute],
) -> Result<Vec<u8>, CaError> {
    let der = signed_data(signer, signer_cert_der, &[], econtent_type, content, false, extra_signed_attrs)?;
    verify_detached(&der, content).map_err(|_| CaError::SelfCheckFailed("CMS signature"))?;
    Ok(der)
}

/// Signs `content` as CMS SignedData of type id-data with the content inside (`eContent`), as
/// Apple configuration profiles are signed. The certificates are `signer_cert_der` followed by
/// `chain` (the issuing CA, so that a verifier holding only the root can build the path). The
/// signed attributes are contentType and messageDigest. Verified before it is returned.
pub fn sign_attached<K: CaSigner + ?Sized>(
    signer: &K,
    signer_cert_der: &[u8],
    chain: &[&[u8]],
    content: &[u8],
) -> Result<Vec<u8>, CaError> {
    let der = signed_data(signer, signer_cert_der, chain, oids::CMS_DATA, content, true, &[])?;
    match verify_attached(&der) {
        Ok((inner, _)) if inner == content => Ok(der),
        _ => Err(CaError::SelfCheckFailed("CMS signature")),
    }
}

fn signed_data<K: CaSigner + ?Sized>(
    signer: &K,
    signer_cert_der: &[u8],
    chain: &[&[u8]],
    econtent_type: ObjectIdentifier,
    content: &[u8],
    attached: bool,
    extra_signed_attrs: &[Attribute],
) -> Result<Vec<u8>, CaError> {
    let cert = Certificate::from_der(signer_cert_der)?;
    if cert.tbs_certificate.subject_public_key_info.to_der()? != signer.public_key().to_der()? {
        return Err(CmsError::KeyMismatch.into());
    }
    let signature_algorithm = signer.algorithm();
    let (digest_oid, digest_alg) = digest_for_signature(&signature_algorithm.oid)?;
    let message_digest = digest::digest(digest_alg, content);

    let mut signed_attrs: SignedAttributes = SetOfVec::new();
    signed_attrs.insert(attribute(oids::CMS_CONTENT_TYPE, Any::encode_from(&econtent_type)?)?)?;
    signed_attrs.insert(attribute(
        oids::CMS_MESSAGE_DIGEST,
        Any::encode_from(&OctetString::new(message_digest.as_ref())?)?,
    )?)?;
    for extra in extra_signed_attrs {
        if extra.oid == oids::CMS_CONTENT_TYPE || extra.oid == oids::CMS_MESSAGE_DIGEST {
            return Err(CmsError::SignedAttribute("contentType/messageDigest given twice").into());
        }
        signed_attrs.insert(extra.clone())?;
    }
    // RFC 5652 §5.4: the signature covers the DER of the attributes with the SET OF tag, not the
    // [0] IMPLICIT tag they carry inside SignerInfo.
    let signature = signer.sign(&signed_attrs.to_der()?)?;

    let digest_algorithm = AlgorithmIdentifierOwned { oid: digest_oid, parameters: None };
    let signer_info = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: cert.tbs_certificate.issuer.clone(),
            serial_number: cert.tbs_certificate.serial_number.clone(),
        }),
        digest_alg: digest_algorithm.clone(),
        signed_attrs: Some(signed_attrs),
        signature_algorithm,
        signature: OctetString::new(signature)?,
        unsigned_attrs: None,
    };
    let mut digest_algorithms = SetOfVec::new();
    digest_algorithms.insert(digest_algorithm)?;
    let mut certificates = SetOfVec::new();
    certificates.insert(CertificateChoices::Certificate(cert))?;
    for extra in chain {
        certificates.insert(CertificateChoices::Certificate(Certificate::from_der(extra)?))?;
    }
    let mut signer_infos = SetOfVec::new();
    signer_infos.insert(signer_info)?;
    // RFC 5652 §5.1: version 1 for id-data with issuerAndSerialNumber signers, 3 otherwise.
    let version = if econtent_type == oids::CMS_DATA { CmsVersion::V1 } else { CmsVersion::V3 };
    let econtent = if attached { Some(Any::encode_from(&OctetString::new(content)?)?) } else { None };
    let signed_data = SignedData {
        version,
        digest_algorithms,
        encap_content_info: EncapsulatedContentInfo { econtent_type, econtent },
        certificates: Some(CertificateSet(certificates)),
        crls: None,
        signer_infos: SignerInfos(signer_infos),
    };
    Ok(ContentInfo { content_type: oids::CMS_SIGNED_DATA, content: Any::encode_from(&signed_data)? }
        .to_der()?)
}

/// Signs a PIV data object's content with the pivSigner-DN attribute SP 800-73-4 requires, after
/// checking that the certificate is a content signing certificate (id-PIV-content-signing EKU).
pub fn sign_piv_object<K: CaSigner + ?Sized>(
    signer: &K,
    signer_cert_der: &[u8],
    econtent_type: ObjectIdentifier,
    content: &[u8],
) -> Result<Vec<u8>, CaError> {
    let cert = Certificate::from_der(signer_cert_der)?;
    let eku = cert
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == oids::EXT_KEY_USAGE)
        .map(|e| ExtendedKeyUsage::from_der(e.extn_value.as_bytes()))
        .transpose()?;
    if !eku.is_some_and(|eku| eku.0.contains(&oids::KP_PIV_CONTENT_SIGNING)) {
        return Err(CmsError::NotContentSigner.into());
    }
    let piv_signer_dn = attribute(oids::PIV_SIGNER_DN, Any::encode_from(&cert.tbs_certificate.subject)?)?;
    sign_detached(signer, signer_cert_der, econtent_type, content, &[piv_signer_dn])
}

/// The CHUID issuer asymmetric signature (the value of CHUID tag `3E`) over `chuid_signed_content`,
/// which is the CHUID's TLVs without the `3E` signature and `FE` error-detection elements.
pub fn sign_chuid<K: CaSigner>(
    content_signer: &SignerCredential<K>,
    chuid_signed_content: &[u8],
) -> Result<Vec<u8>, CaError> {
    sign_piv_object(
        &content_signer.key,
        &content_signer.certificate.der,
        oids::PIV_CHUID_SECURITY_OBJECT,
        chuid_signed_content,
    )
}

/// The single value of the signed attribute `oid`, if the attribute is present.
fn single_value<'a>(
    attrs: &'a SignedAttributes,
    oid: ObjectIdentifier,
    name: &'static str,
) -> Result<Option<&'a Any>, CmsError> {
    let mut found = attrs.iter().filter(|a| a.oid == oid);
    let Some(attr) = found.next() else { return Ok(None) };
    if found.next().is_some() || attr.values.len() != 1 {
        return Err(CmsError::SignedAttribute(name));
    }
    attr.values.iter().next().map(Some).ok_or(CmsError::SignedAttribute(name))
}

fn signer_matches(cert: &Certificate, sid: &SignerIdentifier) -> bool {
    match sid {
        SignerIdentifier::IssuerAndSerialNumber(ias) => {
            cert.tbs_certificate.issuer == ias.issuer
                && cert.tbs_certificate.serial_number == ias.serial_number
        }
        SignerIdentifier::SubjectKeyIdentifier(ski) => cert
            .tbs_certificate
            .extensions
            .iter()
            .flatten()
            .filter(|e| e.extn_id == oids::SUBJECT_KEY_IDENTIFIER)
            .any(|e| OctetString::from_der(e.extn_value.as_bytes()).is_ok_and(|v| v == ski.0)),
    }
}

/// Parses a detached CMS SignedData and verifies it over `content`: one SignerInfo, the signer's
/// certificate present, contentType and messageDigest attributes consistent with the content, a
/// pivSigner-DN (when present) equal to the certificate's subject, and the signature valid under
/// the certificate's key.
///
/// It does not decide whether the certificate is trusted; the summary returns it for the caller's
/// path validation.
pub fn verify_detached(cms_der: &[u8], content: &[u8]) -> Result<SignerInfoSummary, CmsError> {
    let sd = signed_data_of(cms_der)?;
    if sd.encap_content_info.econtent.is_some() {
        return Err(CmsError::NotDetached);
    }
    verify_signed_data(&sd, content)
}

/// Parses a CMS SignedData that carries its content (`eContent`, as in a signed configuration
/// profile) and verifies it as [`verify_detached`] does; returns the content and the summary.
/// Whether the signer's certificate is trusted is, again, the caller's decision.
pub fn verify_attached(cms_der: &[u8]) -> Result<(Vec<u8>, SignerInfoSummary), CmsError> {
    let sd = signed_data_of(cms_der)?;
    let content: OctetString = sd
        .encap_content_info
        .econtent
        .as_ref()
        .ok_or_else(|| CmsError::Malformed("the SignedData carries no eContent".into()))?
        .decode_as()
        .map_err(malformed)?;
    let summary = verify_signed_data(&sd, content.as_bytes())?;
    Ok((content.into_bytes(), summary))
}

fn signed_data_of(cms_der: &[u8]) -> Result<SignedData, CmsError> {
    let info = ContentInfo::from_der(cms_der).map_err(malformed)?;
    if info.content_type != oids::CMS_SIGNED_DATA {
        return Err(CmsError::NotSignedData(info.content_type.to_string()));
    }
    info.content.decode_as().map_err(malformed)
}

fn verify_signed_data(sd: &SignedData, content: &[u8]) -> Result<SignerInfoSummary, CmsError> {
    let econtent_type = sd.encap_content_info.econtent_type;
    let si = match sd.signer_infos.0.as_slice() {
        [one] => one,
        many => return Err(CmsError::SignerCount(many.len())),
    };
    // The version numbers RFC 5652 §5.1 and §5.3 derive from the content (attribute and "other"
    // certificate formats, which would call for v4/v5, are not accepted here anyway).
    let si_version = match si.sid {
        SignerIdentifier::IssuerAndSerialNumber(_) => CmsVersion::V1,
        SignerIdentifier::SubjectKeyIdentifier(_) => CmsVersion::V3,
    };
    if si.version != si_version {
        return Err(CmsError::Malformed(format!("SignerInfo version must be {}", si_version as u8)));
    }
    let sd_version = if econtent_type != oids::CMS_DATA || si_version == CmsVersion::V3 {
        CmsVersion::V3
    } else {
        CmsVersion::V1
    };
    if sd.version != sd_version {
        return Err(CmsError::Malformed(format!("SignedData version must be {}", sd_version as u8)));
    }
    if !sd.digest_algorithms.iter().any(|a| a.oid == si.digest_alg.oid) {
        return Err(CmsError::Malformed("digestAlgorithms does not list the signer's digest".into()));
    }
    let cert = sd
        .certificates
        .as_ref()
        .and_then(|set| {
            set.0.iter().find_map(|c| match c {
                CertificateChoices::Certificate(cert) if signer_matches(cert, &si.sid) => Some(cert),
                _ => None,
            })
        })
        .ok_or(CmsError::SignerCertificateMissing)?;

    let digest_alg = digest_by_oid(&si.digest_alg.oid)?;
    let attrs = si.signed_attrs.as_ref().ok_or(CmsError::SignedAttribute("signedAttrs"))?;
    let content_type: ObjectIdentifier = single_value(attrs, oids::CMS_CONTENT_TYPE, "contentType")?
        .ok_or(CmsError::SignedAttribute("contentType"))?
        .decode_as()
        .map_err(|_| CmsError::SignedAttribute("contentType"))?;
    if content_type != econtent_type {
        return Err(CmsError::ContentTypeMismatch);
    }
    let message_digest: OctetString = single_value(attrs, oids::CMS_MESSAGE_DIGEST, "messageDigest")?
        .ok_or(CmsError::SignedAttribute("messageDigest"))?
        .decode_as()
        .map_err(|_| CmsError::SignedAttribute("messageDigest"))?;
    if message_digest.as_bytes() != digest::digest(digest_alg, content).as_ref() {
        return Err(CmsError::DigestMismatch);
    }
    let piv_signer_dn = match single_value(attrs, oids::PIV_SIGNER_DN, "pivSigner-DN")? {
        None => None,
        Some(v) => {
            let dn: x509_cert::name::Name =
                v.decode_as().map_err(|_| CmsError::SignedAttribute("pivSigner-DN"))?;
            if dn != cert.tbs_certificate.subject {
                return Err(CmsError::PivSignerDnMismatch);
            }
            Some(dn.to_string())
        }
    };

    // OpenSSL and others write rsaEncryption as the SignerInfo's signature algorithm and let the
    // digestAlgorithm pick the hash (RFC 5754 §3.2 allows both forms).
    let mut sig_alg = si.signature_algorithm.clone();
    if sig_alg.oid == oids::RSA_ENCRYPTION {
        sig_alg.oid = match si.digest_alg.oid {
            o if o == oids::SHA256 => oids::SHA256_WITH_RSA,
            o if o == oids::SHA384 => oids::SHA384_WITH_RSA,
            _ => oids::SHA512_WITH_RSA,
        };
    }
    let signed = attrs.to_der().map_err(malformed)?;
    verify_signature(
        &cert.tbs_certificate.subject_public_key_info,
        &sig_alg,
        &signed,
        si.signature.as_bytes(),
    )
    .map_err(|e| match e {
        CsrError::BadSignature => CmsError::BadSignature,
        other => CmsError::UnsupportedSignature(other.to_string()),
    })?;

    Ok(SignerInfoSummary {
        econtent_type,
        digest_algorithm: si.digest_alg.oid,
        signature_algorithm: si.signature_algorithm.oid,
        signed_attributes: attrs.iter().map(|a| a.oid).collect(),
        piv_signer_dn,
        signer_certificate_der: cert.to_der().map_err(malformed)?,
    })
}
