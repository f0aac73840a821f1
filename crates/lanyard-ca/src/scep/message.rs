//! PKIMessage parsing and CertRep building (RFC 8894 §3).

use ::cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use ::cms::content_info::{CmsVersion, ContentInfo};
use ::cms::revocation::{RevocationInfoChoice, RevocationInfoChoices};
use ::cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedAttributes, SignedData, SignerIdentifier, SignerInfo,
    SignerInfos, UnsignedAttributes,
};
use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use der::asn1::{Ia5StringRef, ObjectIdentifier, OctetString, PrintableStringRef, SetOfVec, Utf8StringRef};
use der::{Any, Decode, Encode, Tag, Tagged};
use spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;
use x509_cert::attr::Attribute;
use x509_cert::certificate::{CertificateInner, Raw};
use x509_cert::crl::CertificateList;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;

use super::ber::{self, split_tlv};
use super::envelope::{self, ContentCipher, RaKey};
use super::{FailInfo, MessageType, ScepFailure, oids};
use crate::csr::{ParsedCsr, parse_csr_der};
use crate::error::{CaError, CsrError};
use crate::keys::{CaSigner, verify_signature};
use crate::oids as pkix;

/// A certificate a SCEP client signs its request with, read without RFC 5280's limit of 20
/// octets on the serial number: a client's self-signed certificate is no CA's, and certmonger's
/// carry 32-byte serials. Everything else is checked as for any certificate.
pub type ClientCertificate = CertificateInner<Raw>;

/// IssuerAndSerialNumber (RFC 5652 §10.2.4) with a serial number of any length.
#[derive(Debug, Clone, PartialEq, Eq, der::Sequence)]
pub struct ClientIssuerAndSerial {
    pub issuer: Name,
    pub serial_number: SerialNumber<Raw>,
}

/// SignedData (RFC 5652 §5.1) as a client sends it: the `cms` crate's own type refuses
/// certificates and signer identifiers whose serial exceeds 20 octets, so the certificates and
/// SignerInfos are kept raw here and read one by one.
#[derive(Debug, Clone, der::Sequence)]
struct ClientSignedData {
    version: CmsVersion,
    /// DigestAlgorithmIdentifiers; the SignerInfo's own digestAlgorithm is the one used.
    digest_algorithms: Any,
    encap_content_info: EncapsulatedContentInfo,
    /// CertificateSet (IMPLICIT [0]): every choice kept as it came.
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", optional = "true")]
    certificates: Option<Vec<Any>>,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    crls: Option<Vec<Any>>,
    /// SET OF SignerInfo.
    signer_infos: Any,
}

/// SignerInfo (RFC 5652 §5.3) with the signer identifier kept raw (see [`SignerId`]).
#[derive(Debug, Clone, der::Sequence)]
struct ClientSignerInfo {
    version: CmsVersion,
    sid: Any,
    digest_alg: AlgorithmIdentifierOwned,
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", optional = "true")]
    signed_attrs: Option<SignedAttributes>,
    signature_algorithm: AlgorithmIdentifierOwned,
    signature: OctetString,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    unsigned_attrs: Option<UnsignedAttributes>,
}

/// SignerIdentifier: issuer and serial (any length), or subjectKeyIdentifier (IMPLICIT [0]).
enum SignerId {
    IssuerAndSerial(ClientIssuerAndSerial),
    SubjectKeyIdentifier(Vec<u8>),
}

impl SignerId {
    fn read(sid: &Any) -> Result<Self, String> {
        if sid.tag() == Tag::Sequence {
            let der = sid.to_der().map_err(|e| e.to_string())?;
            ClientIssuerAndSerial::from_der(&der)
                .map(SignerId::IssuerAndSerial)
                .map_err(|e| format!("the signer identifier: {e}"))
        } else if sid.tag() == (Tag::ContextSpecific { constructed: false, number: der::TagNumber::N0 }) {
            Ok(SignerId::SubjectKeyIdentifier(sid.value().to_vec()))
        } else {
            Err(format!("the signer identifier has tag {}", sid.tag()))
        }
    }
}

/// What a reply to a request needs, read before anything in the request is trusted.
#[derive(Debug, Clone)]
pub struct Header {
    /// messageType as sent (a number), for the log.
    pub message_type: String,
    /// transactionID, exactly as sent (echoed in the reply with its string type).
    pub transaction_id: Any,
    /// transactionID as text, for the log.
    pub transaction_id_text: String,
    /// senderNonce, echoed as the reply's recipientNonce.
    pub sender_nonce: Vec<u8>,
}

/// What a request asks for, once its signature verified and its envelope opened.
#[derive(Debug, Clone)]
pub enum RequestContent {
    /// PKCSReq and RenewalReq: a PKCS#10 request (its own signature verified).
    Csr(Box<ParsedCsr>),
    /// CertPoll: IssuerAndSubject.
    Poll { issuer: Name, subject: Name },
    /// GetCert and GetCRL: IssuerAndSerialNumber.
    IssuerAndSerial { issuer: Name, serial: SerialNumber },
}

/// A request whose signature verified and whose envelope opened.
#[derive(Debug, Clone)]
pub struct Request {
    pub header: Header,
    pub message_type: MessageType,
    /// The certificate that signed the request: self-signed for a first enrolment, the current
    /// certificate for RenewalReq. Replies are encrypted to it.
    pub signer: ClientCertificate,
    /// Its DER as it came in the request.
    pub signer_der: Vec<u8>,
    /// The request's digest algorithm.
    pub digest: ObjectIdentifier,
    /// The content cipher the client chose; the reply uses it too.
    pub cipher: ContentCipher,
    pub content: RequestContent,
}

/// Why a request cannot be served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    /// Not even the transactionID and senderNonce could be read, so no CertRep can answer it
    /// (the server answers HTTP 400).
    #[error("not a SCEP PKIMessage: {0}")]
    Unreadable(String),
    /// A signed CertRep FAILURE answers it.
    #[error("{failure}")]
    Failed { header: Box<Header>, failure: ScepFailure },
}

fn unreadable(what: impl std::fmt::Display) -> RequestError {
    RequestError::Unreadable(what.to_string())
}

/// The single value of attribute `oid`, if present.
fn attr_value(attrs: &SignedAttributes, oid: ObjectIdentifier) -> Result<Option<&Any>, String> {
    let mut found = attrs.iter().filter(|a| a.oid == oid);
    let Some(attr) = found.next() else { return Ok(None) };
    if found.next().is_some() || attr.values.len() != 1 {
        return Err(format!("attribute {oid} must have exactly one value"));
    }
    Ok(attr.values.iter().next())
}

/// A PrintableString (as RFC 8894 says), or the other string types clients use.
fn text(value: &Any) -> Option<String> {
    match value.tag() {
        Tag::PrintableString => PrintableStringRef::try_from(value).ok().map(|s| s.as_str().to_owned()),
        Tag::Utf8String => Utf8StringRef::try_from(value).ok().map(|s| s.as_str().to_owned()),
        Tag::Ia5String => Ia5StringRef::try_from(value).ok().map(|s| s.as_str().to_owned()),
        _ => None,
    }
}

/// The signedAttrs of the first SignerInfo exactly as sent (after BER normalisation), retagged
/// as the SET OF the signature covers (RFC 5652 §5.4). Re-encoding the decoded set would sort it
/// and break signatures of clients that sent it unsorted.
fn raw_signed_attrs(content_info: &[u8]) -> Option<Vec<u8>> {
    let (_, ci, _) = split_tlv(content_info)?;
    let (_, ci_rest) = skip(ci)?; // contentType
    let (tag, explicit, _) = split_tlv(ci_rest)?;
    if tag != 0xa0 {
        return None;
    }
    let (_, sd, _) = split_tlv(explicit)?;
    let mut rest = sd;
    let mut signer_infos = None;
    while !rest.is_empty() {
        let (tag, value, after) = split_tlv(rest)?;
        if tag == 0x31 && after.is_empty() {
            signer_infos = Some(value);
        }
        rest = after;
    }
    let (_, si, _) = split_tlv(signer_infos?)?;
    let (_, si) = skip(si)?; // version
    let (_, si) = skip(si)?; // sid
    let (_, si) = skip(si)?; // digestAlgorithm
    let (tag, value, _) = split_tlv(si)?;
    if tag != 0xa0 {
        return None;
    }
    let mut out = vec![0x31];
    ber::push_length(&mut out, value.len());
    out.extend_from_slice(value);
    Some(out)
}

fn skip(der: &[u8]) -> Option<((), &[u8])> {
    let (_, _, rest) = split_tlv(der)?;
    Some(((), rest))
}

fn digest_alg(oid: ObjectIdentifier) -> Result<&'static digest::Algorithm, ScepFailure> {
    if oid == pkix::SHA256 {
        Ok(&digest::SHA256)
    } else if oid == pkix::SHA384 {
        Ok(&digest::SHA384)
    } else if oid == pkix::SHA512 {
        Ok(&digest::SHA512)
    } else if oid == pkix::SHA1 {
        Err(ScepFailure::new(FailInfo::BadAlg, "SHA-1 is refused; use SHA-256 or SHA-512 (see GetCACaps)"))
    } else if oid == oids::MD5 {
        Err(ScepFailure::new(FailInfo::BadAlg, "MD5 is refused; use SHA-256 or SHA-512 (see GetCACaps)"))
    } else {
        Err(ScepFailure::new(FailInfo::BadAlg, format!("digest algorithm {oid} is not supported")))
    }
}

fn signer_matches(cert: &ClientCertificate, sid: &SignerId) -> bool {
    match sid {
        SignerId::IssuerAndSerial(ias) => {
            cert.tbs_certificate.issuer == ias.issuer
                && cert.tbs_certificate.serial_number == ias.serial_number
        }
        SignerId::SubjectKeyIdentifier(ski) => cert
            .tbs_certificate
            .extensions
            .iter()
            .flatten()
            .filter(|e| e.extn_id == pkix::SUBJECT_KEY_IDENTIFIER)
            .any(|e| OctetString::from_der(e.extn_value.as_bytes()).is_ok_and(|v| v.as_bytes() == ski)),
    }
}

/// Parses and checks a PKIMessage: BER normalised, SignedData with one SignerInfo, the SCEP
/// attributes, the signature over the signed attributes under the certificate the message
/// carries, the digest of the content, and then the envelope opened with the RA key and its
/// content read for the message type.
///
/// Returns [`RequestError::Unreadable`] only when no reply could name the transaction; every
/// later problem is [`RequestError::Failed`] with the failInfo to answer.
pub fn parse_request(input: &[u8], ra: &RaKey, ra_cert: &Certificate) -> Result<Request, RequestError> {
    let der = ber::to_der(input).map_err(unreadable)?;
    let info = ContentInfo::from_der(&der).map_err(unreadable)?;
    if info.content_type != pkix::CMS_SIGNED_DATA {
        return Err(unreadable(format!("content type {} is not signedData", info.content_type)));
    }
    let sd: ClientSignedData = info.content.decode_as().map_err(unreadable)?;
    if sd.signer_infos.tag() != Tag::Set {
        return Err(unreadable("signerInfos is not a SET"));
    }
    let signer_infos = {
        let mut reader = der::SliceReader::new(sd.signer_infos.value()).map_err(unreadable)?;
        let mut all = Vec::new();
        while !der::Reader::is_finished(&reader) {
            all.push(ClientSignerInfo::decode(&mut reader).map_err(unreadable)?);
        }
        all
    };
    let si = match signer_infos.as_slice() {
        [one] => one,
        many => return Err(unreadable(format!("{} SignerInfos; SCEP has exactly one", many.len()))),
    };
    let attrs = si.signed_attrs.as_ref().ok_or_else(|| unreadable("no signed attributes"))?;
    let transaction_id = attr_value(attrs, oids::TRANSACTION_ID)
        .map_err(unreadable)?
        .ok_or_else(|| unreadable("no transactionID"))?
        .clone();
    let transaction_id_text =
        text(&transaction_id).ok_or_else(|| unreadable("transactionID is not a string"))?;
    if transaction_id_text.is_empty() || transaction_id_text.len() > 256 {
        return Err(unreadable("transactionID must have 1 to 256 characters"));
    }
    let sender_nonce: OctetString = attr_value(attrs, oids::SENDER_NONCE)
        .map_err(unreadable)?
        .ok_or_else(|| unreadable("no senderNonce"))?
        .decode_as()
        .map_err(|_| unreadable("senderNonce is not an OCTET STRING"))?;
    if !(8..=64).contains(&sender_nonce.as_bytes().len()) {
        return Err(unreadable("senderNonce must have 8 to 64 bytes"));
    }
    let message_type_text =
        attr_value(attrs, oids::MESSAGE_TYPE).ok().flatten().and_then(text).unwrap_or_default();
    let header = Header {
        message_type: message_type_text.clone(),
        transaction_id,
        transaction_id_text,
        sender_nonce: sender_nonce.as_bytes().to_vec(),
    };
    let fail = |failure: ScepFailure| RequestError::Failed { header: Box::new(header.clone()), failure };
    let bad = |text: String| fail(ScepFailure::new(FailInfo::BadMessageCheck, text));

    let (message_type, kind) = match MessageType::from_number(&message_type_text) {
        Some(t @ (MessageType::PkcsReq | MessageType::RenewalReq)) => (t, Kind::Csr),
        Some(t @ MessageType::CertPoll) => (t, Kind::Poll),
        Some(t @ (MessageType::GetCert | MessageType::GetCrl)) => (t, Kind::IssuerAndSerial),
        Some(MessageType::CertRep) | None => {
            return Err(fail(ScepFailure::new(
                FailInfo::BadRequest,
                format!("messageType {message_type_text:?} is not a request this server serves"),
            )));
        }
    };
    let digest = digest_alg(si.digest_alg.oid).map_err(&fail)?;

    let sid = SignerId::read(&si.sid).map_err(&bad)?;
    // Certificates that do not decode (other CertificateChoices, or broken ones) cannot be the
    // signer's; the signer's must be among those that do.
    let signer = sd
        .certificates
        .iter()
        .flatten()
        .filter(|c| c.tag() == Tag::Sequence)
        .filter_map(|c| c.to_der().ok().and_then(|der| ClientCertificate::from_der(&der).ok()))
        .find(|cert| signer_matches(cert, &sid))
        .ok_or_else(|| bad("the signer's certificate is not in the message".into()))?;
    let signer_der = signer.to_der().map_err(|e| bad(e.to_string()))?;

    // contentType and messageDigest bind the content to the signature.
    if sd.encap_content_info.econtent_type != pkix::CMS_DATA {
        return Err(bad("the signed content is not id-data".into()));
    }
    let content_type: ObjectIdentifier = attr_value(attrs, pkix::CMS_CONTENT_TYPE)
        .map_err(&bad)?
        .ok_or_else(|| bad("no contentType attribute".into()))?
        .decode_as()
        .map_err(|_| bad("contentType is not an OID".into()))?;
    if content_type != pkix::CMS_DATA {
        return Err(bad("the contentType attribute is not id-data".into()));
    }
    let content: Vec<u8> = match &sd.encap_content_info.econtent {
        Some(any) => {
            let octets: OctetString =
                any.decode_as().map_err(|_| bad("the signed content is not an OCTET STRING".into()))?;
            octets.as_bytes().to_vec()
        }
        None => return Err(bad("the message has no signed content".into())),
    };
    let message_digest: OctetString = attr_value(attrs, pkix::CMS_MESSAGE_DIGEST)
        .map_err(&bad)?
        .ok_or_else(|| bad("no messageDigest attribute".into()))?
        .decode_as()
        .map_err(|_| bad("messageDigest is not an OCTET STRING".into()))?;
    if message_digest.as_bytes() != digest::digest(digest, &content).as_ref() {
        return Err(bad("messageDigest does not match the content".into()));
    }

    // The signature, over the signed attributes as sent. rsaEncryption leaves the hash to the
    // digestAlgorithm (RFC 5754 §3.2).
    let signed = raw_signed_attrs(&der).ok_or_else(|| bad("cannot locate the signed attributes".into()))?;
    let mut sig_alg = si.signature_algorithm.clone();
    if sig_alg.oid == pkix::RSA_ENCRYPTION {
        sig_alg = AlgorithmIdentifierOwned {
            oid: match si.digest_alg.oid {
                o if o == pkix::SHA256 => pkix::SHA256_WITH_RSA,
                o if o == pkix::SHA384 => pkix::SHA384_WITH_RSA,
                _ => pkix::SHA512_WITH_RSA,
            },
            parameters: None,
        };
    }
    verify_signature(
        &signer.tbs_certificate.subject_public_key_info,
        &sig_alg,
        &signed,
        si.signature.as_bytes(),
    )
    .map_err(|e| match e {
        CsrError::BadSignature => bad("the message signature does not verify".into()),
        CsrError::UnsupportedSignatureAlgorithm(a) => {
            fail(ScepFailure::new(FailInfo::BadAlg, format!("signature algorithm {a} is not supported")))
        }
        other => bad(format!("the message signature cannot be checked: {other}")),
    })?;

    // Replies are encrypted to the signer, so its key must take RSA key transport.
    if signer.tbs_certificate.subject_public_key_info.algorithm.oid != pkix::RSA_ENCRYPTION {
        return Err(fail(ScepFailure::new(
            FailInfo::BadAlg,
            "the signer's key is not RSA, so no reply could be encrypted to it",
        )));
    }

    let (plain, cipher) = envelope::open(&content, ra, ra_cert).map_err(&fail)?;
    let plain = ber::to_der(&plain).unwrap_or(plain);
    let content = match kind {
        Kind::Csr => {
            let csr = parse_csr_der(&plain).map_err(|e| {
                let info = match e {
                    CsrError::BadSignature => FailInfo::BadMessageCheck,
                    CsrError::UnsupportedSignatureAlgorithm(_) => FailInfo::BadAlg,
                    _ => FailInfo::BadRequest,
                };
                fail(ScepFailure::new(info, format!("the certificate request: {e}")))
            })?;
            RequestContent::Csr(Box::new(csr))
        }
        Kind::Poll => {
            let (issuer, subject) = issuer_and_subject(&plain).map_err(|e| {
                fail(ScepFailure::new(FailInfo::BadRequest, format!("IssuerAndSubject: {e}")))
            })?;
            RequestContent::Poll { issuer, subject }
        }
        Kind::IssuerAndSerial => {
            let ias = IssuerAndSerialNumber::from_der(&plain).map_err(|e| {
                fail(ScepFailure::new(FailInfo::BadRequest, format!("IssuerAndSerialNumber: {e}")))
            })?;
            RequestContent::IssuerAndSerial { issuer: ias.issuer, serial: ias.serial_number }
        }
    };
    Ok(Request { header, message_type, signer, signer_der, digest: si.digest_alg.oid, cipher, content })
}

/// The inner content each request type carries.
enum Kind {
    Csr,
    Poll,
    IssuerAndSerial,
}

/// IssuerAndSubject ::= SEQUENCE { issuer Name, subject Name }.
fn issuer_and_subject(der: &[u8]) -> der::Result<(Name, Name)> {
    let mut reader = der::SliceReader::new(der)?;
    let pair = der::Reader::sequence(&mut reader, |r| Ok((Name::decode(r)?, Name::decode(r)?)))?;
    der::Reader::finish(reader, pair)
}

/// What a CertRep says.
#[derive(Debug)]
pub enum Reply<'a> {
    /// SUCCESS: `certificates` (the issued one first, then its chain) and `crls` in a degenerate
    /// SignedData, encrypted to `recipient` with `cipher`.
    Success {
        certificates: &'a [Vec<u8>],
        crls: &'a [Vec<u8>],
        recipient: &'a ClientCertificate,
        cipher: ContentCipher,
    },
    /// FAILURE with its failInfo and text.
    Failure(&'a ScepFailure),
}

fn attribute(oid: ObjectIdentifier, value: Any) -> Result<Attribute, CaError> {
    let mut values = SetOfVec::new();
    values.insert(value)?;
    Ok(Attribute { oid, values })
}

fn printable(s: &str) -> Result<Any, CaError> {
    Ok(Any::encode_from(&PrintableStringRef::new(s)?)?)
}

/// A degenerate certificates-only SignedData (RFC 8894 §3.4, also GetCACert's answer): no
/// content, no signers, only `certificates` and `crls`.
pub fn degenerate(certificates: &[Vec<u8>], crls: &[Vec<u8>]) -> Result<Vec<u8>, CaError> {
    let mut certs = SetOfVec::new();
    for der in certificates {
        certs.insert(CertificateChoices::Certificate(Certificate::from_der(der)?))?;
    }
    let mut lists = SetOfVec::new();
    for der in crls {
        lists.insert(RevocationInfoChoice::Crl(CertificateList::from_der(der)?))?;
    }
    let sd = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::new(),
        encap_content_info: EncapsulatedContentInfo { econtent_type: pkix::CMS_DATA, econtent: None },
        certificates: (!certificates.is_empty()).then_some(CertificateSet(certs)),
        crls: (!crls.is_empty()).then_some(RevocationInfoChoices(lists)),
        signer_infos: SignerInfos(SetOfVec::new()),
    };
    Ok(ContentInfo { content_type: pkix::CMS_SIGNED_DATA, content: Any::encode_from(&sd)? }.to_der()?)
}

/// Builds a CertRep answering `header`, signed by the RA (SHA-256 with RSA), carrying the RA
/// certificate so the client can check the signature.
pub fn cert_rep(
    ra: &RaKey,
    ra_cert_der: &[u8],
    header: &Header,
    reply: &Reply<'_>,
) -> Result<Vec<u8>, CaError> {
    let ra_cert = Certificate::from_der(ra_cert_der)?;
    let content = match reply {
        Reply::Success { certificates, crls, recipient, cipher } => {
            Some(envelope::seal(&degenerate(certificates, crls)?, recipient, *cipher)?)
        }
        Reply::Failure(_) => None,
    };
    let mut nonce = [0u8; 16];
    SystemRandom::new().fill(&mut nonce).map_err(|_| CaError::SelfCheckFailed("random number generator"))?;

    let digested = digest::digest(&digest::SHA256, content.as_deref().unwrap_or_default());
    let mut attrs: SignedAttributes = SetOfVec::new();
    attrs.insert(attribute(pkix::CMS_CONTENT_TYPE, Any::encode_from(&pkix::CMS_DATA)?)?)?;
    attrs.insert(attribute(
        pkix::CMS_MESSAGE_DIGEST,
        Any::encode_from(&OctetString::new(digested.as_ref())?)?,
    )?)?;
    attrs.insert(attribute(oids::MESSAGE_TYPE, printable(&MessageType::CertRep.number().to_string())?)?)?;
    attrs.insert(attribute(oids::TRANSACTION_ID, header.transaction_id.clone())?)?;
    attrs.insert(attribute(oids::SENDER_NONCE, Any::encode_from(&OctetString::new(nonce.to_vec())?)?)?)?;
    attrs.insert(attribute(
        oids::RECIPIENT_NONCE,
        Any::encode_from(&OctetString::new(header.sender_nonce.clone())?)?,
    )?)?;
    match reply {
        Reply::Success { .. } => {
            attrs.insert(attribute(oids::PKI_STATUS, printable("0")?)?)?;
        }
        Reply::Failure(f) => {
            attrs.insert(attribute(oids::PKI_STATUS, printable("2")?)?)?;
            attrs.insert(attribute(oids::FAIL_INFO, printable(&f.info.number().to_string())?)?)?;
            let text: String = f.text.chars().take(500).collect();
            attrs.insert(attribute(oids::FAIL_INFO_TEXT, Any::encode_from(&Utf8StringRef::new(&text)?)?)?)?;
        }
    }
    let signature = ra.sign(&attrs.to_der()?)?;
    let digest_alg = AlgorithmIdentifierOwned { oid: pkix::SHA256, parameters: None };
    let signer_info = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: ra_cert.tbs_certificate.issuer.clone(),
            serial_number: ra_cert.tbs_certificate.serial_number.clone(),
        }),
        digest_alg: digest_alg.clone(),
        signed_attrs: Some(attrs),
        signature_algorithm: ra.algorithm(),
        signature: OctetString::new(signature)?,
        unsigned_attrs: None,
    };
    let mut digest_algorithms = SetOfVec::new();
    digest_algorithms.insert(digest_alg)?;
    let mut certificates = SetOfVec::new();
    certificates.insert(CertificateChoices::Certificate(ra_cert))?;
    let mut signer_infos = SetOfVec::new();
    signer_infos.insert(signer_info)?;
    let econtent = content.map(|c| OctetString::new(c).and_then(|o| Any::encode_from(&o))).transpose()?;
    let sd = SignedData {
        version: CmsVersion::V1,
        digest_algorithms,
        encap_content_info: EncapsulatedContentInfo { econtent_type: pkix::CMS_DATA, econtent },
        certificates: Some(CertificateSet(certificates)),
        crls: None,
        signer_infos: SignerInfos(signer_infos),
    };
    Ok(ContentInfo { content_type: pkix::CMS_SIGNED_DATA, content: Any::encode_from(&sd)? }.to_der()?)
}
