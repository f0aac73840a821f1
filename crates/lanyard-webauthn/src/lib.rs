//! `lanyard-webauthn`: what a WebAuthn relying party checks, for Lanyard's passkey sign-in to its
//! portal (W3C Web Authentication Level 2/3 §7), on the crypto crates the workspace already has
//! (p256, sha2) and the strict CBOR decoder of `lanyard-ctap`. Sans-IO: bytes in, a verdict out;
//! challenges, storage and sessions belong to the caller.
//!
//! - [`client_data`]: `clientDataJSON` (type, challenge, origin, crossOrigin).
//! - [`auth_data`]: authenticator data (RP ID hash, flags, counter, attested credential data).
//! - [`cose`]: COSE public keys; ES256 (ECDSA P-256 with SHA-256) only, others refused by name.
//! - [`attestation`]: attestation objects, formats `none` and `packed` (self and x5c).
//! - [`ceremony`]: the registration and authentication checks that put the pieces together, and
//!   the signature counter rule.
//!
//! What is deliberately not done: attestation *trust* (an x5c chain is checked for its signature
//! and the certificate requirements of the packed format, not against a list of vendor roots), and
//! token binding (obsolete in browsers).

pub mod attestation;
pub mod auth_data;
pub mod ceremony;
pub mod client_data;
pub mod cose;

use thiserror::Error;

pub use attestation::{AttestationKind, AttestationObject};
pub use auth_data::{AttestedCredential, AuthenticatorData, Flags};
pub use ceremony::{
    Assertion, CounterVerdict, RelyingParty, RpError, UserVerification, VerifiedRegistration, check_counter,
    verify_assertion, verify_registration,
};
pub use client_data::{Ceremony, ClientData};
pub use cose::CoseKey;

/// Length of the challenges Lanyard issues, in bytes (the spec asks for at least 16).
pub const CHALLENGE_LEN: usize = 32;
/// The longest credential id WebAuthn allows (Level 3 §6.1: at most 1023 bytes).
pub const MAX_CREDENTIAL_ID_LEN: usize = 1023;

/// Why a WebAuthn response was refused. Each message says what was wrong, for the audit log and
/// for the person who sees it; none quotes key material.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WebAuthnError {
    #[error("clientDataJSON: {0}")]
    ClientData(String),
    #[error("the response is for a {found} ceremony, expected {expected}")]
    WrongCeremony { expected: &'static str, found: String },
    #[error("the response answers another challenge than the one issued")]
    ChallengeMismatch,
    #[error("the response comes from origin {found:?}, expected {expected:?}")]
    OriginMismatch { expected: String, found: String },
    #[error("the response was made inside a cross-origin frame, which Lanyard does not allow")]
    CrossOrigin,
    #[error("authenticator data: {0}")]
    AuthData(String),
    #[error("the authenticator data is for another relying party (its RP ID hash does not match {0:?})")]
    RpIdHashMismatch(String),
    #[error("the authenticator did not report user presence (UP flag clear)")]
    UserNotPresent,
    #[error("the authenticator did not verify the user (UV flag clear), and the policy requires it")]
    UserNotVerified,
    #[error("COSE key: {0}")]
    Cose(String),
    #[error(
        "the credential uses COSE algorithm {alg} ({name}); Lanyard accepts ES256 (-7, ECDSA P-256 with SHA-256) only"
    )]
    UnsupportedAlgorithm { alg: i64, name: &'static str },
    #[error("attestation object: {0}")]
    AttestationObject(String),
    #[error("attestation format {0:?} is not supported (Lanyard accepts \"none\" and \"packed\")")]
    UnsupportedFormat(String),
    #[error("attestation statement: {0}")]
    AttestationStatement(String),
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the registration carries no attested credential data (AT flag clear)")]
    NoCredential,
}

impl WebAuthnError {
    /// A short stable name for the audit log (`reason` of a refused ceremony).
    pub fn code(&self) -> &'static str {
        match self {
            Self::ClientData(_) => "client_data",
            Self::WrongCeremony { .. } => "wrong_ceremony",
            Self::ChallengeMismatch => "challenge",
            Self::OriginMismatch { .. } => "origin",
            Self::CrossOrigin => "cross_origin",
            Self::AuthData(_) => "authenticator_data",
            Self::RpIdHashMismatch(_) => "rp_id_hash",
            Self::UserNotPresent => "user_presence",
            Self::UserNotVerified => "user_verification",
            Self::Cose(_) => "cose_key",
            Self::UnsupportedAlgorithm { .. } => "algorithm",
            Self::AttestationObject(_) => "attestation_object",
            Self::UnsupportedFormat(_) => "attestation_format",
            Self::AttestationStatement(_) => "attestation_statement",
            Self::BadSignature => "signature",
            Self::NoCredential => "no_credential",
        }
    }
}

/// base64url without padding, as WebAuthn's JSON encodings use.
pub fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url (padding tolerated, as some clients add it); `what` names the field in the
/// error.
pub fn from_b64url(text: &str, what: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let trimmed = text.trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(trimmed)
        .map_err(|e| format!("{what} is not base64url: {e}"))
}

#[cfg(any(test, feature = "testing"))]
pub mod testkit;
