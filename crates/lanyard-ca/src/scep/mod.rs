//! SCEP (RFC 8894), sans-IO: the server side of the message layer.
//!
//! - [`ber`]: BER → DER normalisation (indefinite lengths, chunked OCTET STRINGs).
//! - [`envelope`]: EnvelopedData with RSA key transport and AES/3DES-CBC, both directions, and
//!   [`RaKey`], the RA's RSA key that signs replies and opens requests.
//! - [`message`]: parsing a PKIMessage ([`parse_request`]) and building CertRep ([`cert_rep`])
//!   and the degenerate certificates-only SignedData of GetCACert ([`degenerate`]).
//!
//! What is done with a request (checking a challenge, issuing, renewing) is the server's
//! business; this module only reads and writes the messages, and never panics on input.

pub mod ber;
pub mod envelope;
pub mod message;

pub use envelope::{ContentCipher, RaKey};
pub use message::{
    Header, Reply, Request, RequestContent, RequestError, cert_rep, degenerate, parse_request,
};

use std::fmt;

/// The OIDs SCEP and its CMS layer use.
pub mod oids {
    use der::asn1::ObjectIdentifier as Oid;

    /// id-envelopedData (RFC 5652).
    pub const CMS_ENVELOPED_DATA: Oid = Oid::new_unwrap("1.2.840.113549.1.7.3");
    /// id-VeriSign SCEP attributes (RFC 8894 §3.2.1).
    pub const MESSAGE_TYPE: Oid = Oid::new_unwrap("2.16.840.1.113733.1.9.2");
    pub const PKI_STATUS: Oid = Oid::new_unwrap("2.16.840.1.113733.1.9.3");
    pub const FAIL_INFO: Oid = Oid::new_unwrap("2.16.840.1.113733.1.9.4");
    pub const SENDER_NONCE: Oid = Oid::new_unwrap("2.16.840.1.113733.1.9.5");
    pub const RECIPIENT_NONCE: Oid = Oid::new_unwrap("2.16.840.1.113733.1.9.6");
    pub const TRANSACTION_ID: Oid = Oid::new_unwrap("2.16.840.1.113733.1.9.7");
    /// id-scep-failInfoText (RFC 8894 §3.2.1.4): a human-readable reason with failInfo.
    pub const FAIL_INFO_TEXT: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.24.1");
    /// Content encryption.
    pub const AES128_CBC: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.2");
    pub const AES192_CBC: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.22");
    pub const AES256_CBC: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.1.42");
    pub const DES_EDE3_CBC: Oid = Oid::new_unwrap("1.2.840.113549.3.7");
    /// Single DES: refused (badAlg).
    pub const DES_CBC: Oid = Oid::new_unwrap("1.3.14.3.2.7");
    /// MD5: refused (badAlg).
    pub const MD5: Oid = Oid::new_unwrap("1.2.840.113549.2.5");
}

/// messageType (RFC 8894 §3.2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    CertRep,
    RenewalReq,
    PkcsReq,
    CertPoll,
    GetCert,
    GetCrl,
}

impl MessageType {
    /// The decimal number it is sent as.
    pub fn number(self) -> u8 {
        match self {
            MessageType::CertRep => 3,
            MessageType::RenewalReq => 17,
            MessageType::PkcsReq => 19,
            MessageType::CertPoll => 20,
            MessageType::GetCert => 21,
            MessageType::GetCrl => 22,
        }
    }

    /// The type a number names.
    pub fn from_number(n: &str) -> Option<Self> {
        Some(match n {
            "3" => MessageType::CertRep,
            "17" => MessageType::RenewalReq,
            "19" => MessageType::PkcsReq,
            "20" => MessageType::CertPoll,
            "21" => MessageType::GetCert,
            "22" => MessageType::GetCrl,
            _ => return None,
        })
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MessageType::CertRep => "CertRep",
            MessageType::RenewalReq => "RenewalReq",
            MessageType::PkcsReq => "PKCSReq",
            MessageType::CertPoll => "CertPoll",
            MessageType::GetCert => "GetCert",
            MessageType::GetCrl => "GetCRL",
        })
    }
}

/// failInfo (RFC 8894 §3.2.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailInfo {
    /// Unrecognised or unsupported algorithm (single DES, MD5, SHA-1, …).
    BadAlg,
    /// Integrity check failed (signature, digest, decryption).
    BadMessageCheck,
    /// Transaction not permitted or supported (wrong, expired or used challenge, …).
    BadRequest,
    /// signingTime too far from the server's time.
    BadTime,
    /// No certificate could be identified.
    BadCertId,
}

impl FailInfo {
    /// The decimal number it is sent as.
    pub fn number(self) -> u8 {
        match self {
            FailInfo::BadAlg => 0,
            FailInfo::BadMessageCheck => 1,
            FailInfo::BadRequest => 2,
            FailInfo::BadTime => 3,
            FailInfo::BadCertId => 4,
        }
    }

    /// The failInfo a number names.
    pub fn from_number(n: &str) -> Option<Self> {
        Some(match n {
            "0" => FailInfo::BadAlg,
            "1" => FailInfo::BadMessageCheck,
            "2" => FailInfo::BadRequest,
            "3" => FailInfo::BadTime,
            "4" => FailInfo::BadCertId,
            _ => return None,
        })
    }
}

impl fmt::Display for FailInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailInfo::BadAlg => "badAlg",
            FailInfo::BadMessageCheck => "badMessageCheck",
            FailInfo::BadRequest => "badRequest",
            FailInfo::BadTime => "badTime",
            FailInfo::BadCertId => "badCertId",
        })
    }
}

/// A request refused with a signed CertRep FAILURE: the failInfo and the reason, which goes into
/// failInfoText and the server's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{info}: {text}")]
pub struct ScepFailure {
    pub info: FailInfo,
    pub text: String,
}

impl ScepFailure {
    pub fn new(info: FailInfo, text: impl Into<String>) -> Self {
        ScepFailure { info, text: text.into() }
    }
}
