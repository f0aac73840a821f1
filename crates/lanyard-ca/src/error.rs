//! The CA's error types: one enum for the crate, with a nested one for CSR parsing so a caller (the
//! SCEP/EST endpoints) can tell the requester precisely what was wrong with what they sent.

use std::path::PathBuf;

use crate::keys::KeyAlgorithm;
use crate::profile::SanPart;

/// Everything that can go wrong in the CA.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The crypto library could not generate a key.
    #[error("generating a {0} key failed")]
    KeyGeneration(KeyAlgorithm),

    /// A PKCS#8 document did not hold a usable private key.
    #[error("private key rejected: {0}")]
    InvalidPrivateKey(String),

    /// Exporting a private key to PKCS#8 failed.
    #[error("exporting the {0} private key to PKCS#8 failed")]
    KeyExport(KeyAlgorithm),

    /// The signing operation itself failed.
    #[error("signing with the {0} key failed")]
    Signing(KeyAlgorithm),

    /// A public key of a type or size the CA does not certify.
    #[error("unsupported public key: {0}")]
    UnsupportedPublicKey(String),

    /// A signature this CA just produced does not verify under the issuer's key (broken key store,
    /// or an issuer key that does not match the issuer certificate).
    #[error("self-check failed: the {0} just signed does not verify with the issuer's public key")]
    SelfCheckFailed(&'static str),

    /// A profile that contradicts itself or RFC 5280.
    #[error("profile {profile:?} is invalid: {reason}")]
    InvalidProfile {
        /// Profile id.
        profile: String,
        /// What is wrong.
        reason: String,
    },

    /// The request's key algorithm is not among the profile's allowed ones.
    #[error("profile {profile:?} does not allow {key} keys (allowed: {allowed})")]
    KeyNotAllowed {
        /// Profile id.
        profile: String,
        /// The key presented.
        key: KeyAlgorithm,
        /// The profile's list, for the message.
        allowed: String,
    },

    /// The profile needs a subject DN and the request has none.
    #[error("profile {profile:?} requires a non-empty subject name")]
    SubjectRequired {
        /// Profile id.
        profile: String,
    },

    /// A SAN part the profile requires is missing.
    #[error("profile {profile:?} requires the subject alternative name part {part}")]
    SanPartMissing {
        /// Profile id.
        profile: String,
        /// The missing part.
        part: SanPart,
    },

    /// A SAN part the profile forbids is present.
    #[error("profile {profile:?} does not allow the subject alternative name part {part}")]
    SanPartNotAllowed {
        /// Profile id.
        profile: String,
        /// The offending part.
        part: SanPart,
    },

    /// The profile needs at least one SAN entry and the request has none.
    #[error("profile {profile:?} requires at least one subject alternative name")]
    SanRequired {
        /// Profile id.
        profile: String,
    },

    /// Neither a subject DN nor any SAN: the certificate would name nobody.
    #[error(
        "profile {profile:?}: the certificate would have neither a subject name nor a subject alternative name"
    )]
    NoSubjectIdentity {
        /// Profile id.
        profile: String,
    },

    /// A SAN value that is not well formed.
    #[error("invalid {part} value {value:?}: {reason}")]
    InvalidSanValue {
        /// Which part.
        part: SanPart,
        /// The value given.
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A distinguished name string that could not be parsed.
    #[error("invalid distinguished name {input:?}: {reason}")]
    InvalidName {
        /// The input.
        input: String,
        /// Why it was refused.
        reason: String,
    },

    /// notAfter not after notBefore (before or after capping).
    #[error("empty validity period: notAfter {not_after} is not after notBefore {not_before}")]
    EmptyValidity {
        /// Start (RFC 3339).
        not_before: String,
        /// End (RFC 3339).
        not_after: String,
    },

    /// The caller's cap (e.g. the card's expiry) is not after the start of validity.
    #[error("validity cap {cap} is not after notBefore {not_before}")]
    CapBeforeNotBefore {
        /// The cap (RFC 3339).
        cap: String,
        /// Start (RFC 3339).
        not_before: String,
    },

    /// A time outside what X.509 can carry here (before 1970 or after 9999).
    #[error("time {0} cannot be encoded in a certificate, CRL or OCSP response")]
    TimeOutOfRange(String),

    /// The issuer certificate or key cannot act as the CA the operation needs.
    #[error("issuer cannot sign: {0}")]
    UnusableIssuer(String),

    /// An OCSP responder certificate that clients would not accept.
    #[error("OCSP responder certificate unusable: {0}")]
    UnusableResponder(String),

    /// The issuer's pathLenConstraint is 0, so it may not issue CA certificates.
    #[error("the issuer's path length constraint forbids issuing a CA certificate")]
    PathLengthExceeded,

    /// removeFromCRL in a full CRL (RFC 5280 §5.3.1 reserves it for delta CRLs).
    #[error("serial {serial}: reason removeFromCRL is only allowed in delta CRLs, and this is a full CRL")]
    RemoveFromCrlInFullCrl {
        /// Serial in hex.
        serial: String,
    },

    /// The system random generator failed.
    #[error("the random number generator failed")]
    Randomness,

    /// A serial number that is not a positive integer of at most 20 octets.
    #[error("invalid serial number: {0}")]
    InvalidSerial(String),

    /// nextUpdate not after thisUpdate.
    #[error("nextUpdate {next_update} is not after thisUpdate {this_update}")]
    NextUpdateNotAfterThisUpdate {
        /// thisUpdate (RFC 3339).
        this_update: String,
        /// nextUpdate (RFC 3339).
        next_update: String,
    },

    /// A URL base that is empty or not http(s).
    #[error("invalid PKI URL base {0:?}: must start with http:// or https:// and contain no spaces")]
    InvalidUrlBase(String),

    /// A PKCS#10 request that was refused.
    #[error(transparent)]
    Csr(#[from] CsrError),

    /// Producing or checking a CMS signature (CHUID issuer signature) failed.
    #[error(transparent)]
    Cms(#[from] CmsError),

    /// ASN.1 encoding or decoding failed.
    #[error("DER: {0}")]
    Der(#[from] der::Error),

    /// PEM input that is not a single well-formed block of the expected kind.
    #[error("PEM: {0}")]
    Pem(String),

    /// A key-store name with characters outside `[a-z0-9_-]`.
    #[error("invalid key name {0:?}: use 1-64 characters from a-z, 0-9, '-' and '_'")]
    InvalidKeyName(String),

    /// A key file already exists; CA keys are never silently overwritten.
    #[error("key file {0} already exists; refusing to overwrite a key")]
    KeyExists(PathBuf),

    /// File-system error in the key store.
    #[error("key store {path}: {source}")]
    KeyStore {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a PKCS#10 certificate request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// Empty input.
    #[error("the certificate request is empty")]
    Empty,

    /// PEM armour or base64 that could not be decoded.
    #[error("the certificate request PEM could not be decoded: {0}")]
    Pem(String),

    /// A PEM block of another type (a certificate, a key, …).
    #[error("expected a PEM block labelled CERTIFICATE REQUEST, found {0:?}")]
    WrongPemLabel(String),

    /// Not a DER-encoded PKCS#10 CertificationRequest.
    #[error("the certificate request is not valid DER PKCS#10: {0}")]
    Der(String),

    /// A signature algorithm we do not verify (SHA-1, PSS, Ed25519, …).
    #[error("unsupported signature algorithm {0}")]
    UnsupportedSignatureAlgorithm(String),

    /// Algorithm parameters that the algorithm does not allow.
    #[error("signature algorithm {0} has invalid parameters")]
    InvalidAlgorithmParameters(String),

    /// A public key we cannot verify with (unknown algorithm or curve, or malformed).
    #[error("unsupported or malformed public key: {0}")]
    UnsupportedPublicKey(String),

    /// The signature algorithm does not belong to the key type.
    #[error("signature algorithm {signature} cannot be used with a {key} key")]
    AlgorithmMismatch {
        /// Signature algorithm OID.
        signature: String,
        /// Key description.
        key: String,
    },

    /// The signature BIT STRING has unused bits.
    #[error("the signature BIT STRING is not octet-aligned")]
    MalformedSignature,

    /// The signature does not verify: the request was altered or the requester lacks the key.
    #[error("the certificate request signature does not verify")]
    BadSignature,

    /// An attribute appears twice.
    #[error("attribute {0} appears more than once")]
    DuplicateAttribute(String),

    /// An attribute whose value cannot be decoded.
    #[error("attribute {oid} is malformed: {reason}")]
    MalformedAttribute {
        /// Attribute OID.
        oid: String,
        /// Why.
        reason: String,
    },

    /// The same extension requested twice.
    #[error("extension {0} is requested more than once")]
    DuplicateExtension(String),
}

/// Why a CMS detached signature could not be made or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CmsError {
    /// Not DER, or not the structure RFC 5652 defines.
    #[error("malformed CMS: {0}")]
    Malformed(String),

    /// The outer ContentInfo is not id-signedData.
    #[error("the CMS ContentInfo holds {0}, not SignedData")]
    NotSignedData(String),

    /// The signed content is encapsulated; a detached signature was expected.
    #[error("the SignedData carries eContent; expected a detached signature")]
    NotDetached,

    /// Zero or several SignerInfos; the PIV signatures have exactly one.
    #[error("expected exactly one SignerInfo, found {0}")]
    SignerCount(usize),

    /// No certificate in `certificates` matches the SignerInfo's signer identifier.
    #[error("the signer's certificate is not in the SignedData")]
    SignerCertificateMissing,

    /// A digest algorithm other than SHA-256/384/512.
    #[error("unsupported digest algorithm {0}")]
    UnsupportedDigest(String),

    /// A signature algorithm or key we cannot verify with.
    #[error("unsupported signature algorithm or key: {0}")]
    UnsupportedSignature(String),

    /// A signed attribute that must be present is absent, duplicated or malformed.
    #[error("signed attribute {0} is missing or malformed")]
    SignedAttribute(&'static str),

    /// The contentType attribute does not match eContentType.
    #[error("the contentType attribute does not match eContentType")]
    ContentTypeMismatch,

    /// The content's digest differs from the messageDigest attribute: the content was altered.
    #[error("the content does not match the signed message digest")]
    DigestMismatch,

    /// pivSigner-DN is not the signer certificate's subject.
    #[error("the pivSigner-DN attribute is not the signer certificate's subject")]
    PivSignerDnMismatch,

    /// The signature over the signed attributes does not verify with the signer's key.
    #[error("the CMS signature does not verify")]
    BadSignature,

    /// The signer certificate does not certify the signing key.
    #[error("the signer certificate's public key is not the signing key")]
    KeyMismatch,

    /// The signer certificate lacks the id-PIV-content-signing extended key usage.
    #[error("the signer certificate does not assert id-PIV-content-signing")]
    NotContentSigner,
}

/// Why a YubiKey PIV attestation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttestationError {
    /// A certificate (or the expected key) that is not DER of the expected structure.
    #[error("the {0} is not valid DER")]
    MalformedDer(ChainPosition),

    /// No root was configured.
    #[error("no attestation roots are configured")]
    NoRoots,

    /// The F9 (intermediate) certificate is not signed by any configured root.
    #[error("the attestation intermediate (F9) certificate does not chain to a configured root")]
    UntrustedRoot,

    /// The attestation certificate's issuer name is not the F9 certificate's subject.
    #[error("the attestation certificate was not issued by the F9 certificate (issuer name differs)")]
    IssuerMismatch,

    /// The attestation certificate's signature does not verify with the F9 key.
    #[error("the attestation certificate's signature does not verify with the F9 key")]
    BadSignature,

    /// A signature algorithm or key the verifier does not support.
    #[error("the {position} uses an unsupported algorithm or key: {reason}")]
    UnsupportedAlgorithm {
        /// Which certificate.
        position: ChainPosition,
        /// What is unsupported.
        reason: String,
    },

    /// A certificate of the chain has expired at `now`.
    #[error("the {position} expired at {not_after}")]
    Expired {
        /// Which certificate.
        position: ChainPosition,
        /// notAfter (RFC 3339).
        not_after: String,
    },

    /// A certificate of the chain is not valid yet at `now`.
    #[error("the {position} is not valid before {not_before}")]
    NotYetValid {
        /// Which certificate.
        position: ChainPosition,
        /// notBefore (RFC 3339).
        not_before: String,
    },

    /// The attested key is not the key the card just generated.
    #[error("the attested public key is not the expected key")]
    KeyMismatch,

    /// A Yubico extension that is present but cannot be decoded.
    #[error("attestation extension {0} is malformed")]
    MalformedExtension(String),
}

/// A certificate's place in an attestation chain, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainPosition {
    /// The per-slot attestation certificate (ATTEST's answer).
    Attestation,
    /// The device's attestation certificate (object 5FFF01, key in slot F9).
    Intermediate,
    /// A configured attestation root.
    Root,
    /// The expected SubjectPublicKeyInfo.
    ExpectedKey,
}

impl std::fmt::Display for ChainPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChainPosition::Attestation => "attestation certificate",
            ChainPosition::Intermediate => "F9 attestation intermediate certificate",
            ChainPosition::Root => "attestation root certificate",
            ChainPosition::ExpectedKey => "expected public key",
        })
    }
}
