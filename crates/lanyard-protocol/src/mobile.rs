//! The app enrolment protocol (`docs/mobile-protocol.md`): how a phone app, or `lanyard mobile
//! enroll`, turns a one-time enrolment link into a derived PIV credential. JSON over HTTPS under
//! [`API_PREFIX`]; no login, the one-time code in the body is the credential.
//!
//! The server and the reference client both use these types and parsers, so they cannot drift
//! apart. The parsers take the raw body and answer a validated request or a precise
//! [`RequestError`]; they never panic (property-tested here, fuzzed in `fuzz/`).

use base64::Engine;
use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks; answered by redeem.
pub const PROTOCOL_VERSION: u32 = 1;
/// Where the JSON endpoints live, below the server's base URL.
pub const API_PREFIX: &str = "/api/v1/mobile";
pub const REDEEM_PATH: &str = "/api/v1/mobile/redeem";
pub const CERTIFICATE_PATH: &str = "/api/v1/mobile/certificate";
pub const CONFIRM_PATH: &str = "/api/v1/mobile/confirm";
pub const STATUS_PATH: &str = "/api/v1/mobile/status";
/// The one-time link is `<server base>/m/<code>`.
pub const LINK_PREFIX: &str = "/m/";
/// Request bodies larger than this are refused (an Android chain of five certificates in base64
/// is about 8 KiB).
pub const MAX_BODY: usize = 64 * 1024;
/// The longest code accepted (codes Lanyard issues are 40 characters).
pub const MAX_CODE: usize = 128;
/// The longest device model accepted.
pub const MAX_MODEL: usize = 64;
/// Attestation formats (`attestation.format`).
pub const FORMAT_ANDROID_KEY: &str = "android-key";
pub const FORMAT_APPLE_APP_ATTEST: &str = "apple-appattest";

/// Why a request body was refused; the server answers 400 with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RequestError(pub String);

fn bad(message: impl Into<String>) -> RequestError {
    RequestError(message.into())
}

/// The phone's platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Platform {
    Android,
    Ios,
    /// Anything else, e.g. the reference client on a desktop.
    Other,
}

impl Platform {
    pub const fn label(self) -> &'static str {
        match self {
            Platform::Android => "Android",
            Platform::Ios => "iOS",
            Platform::Other => "other",
        }
    }
}

/// `POST /api/v1/mobile/redeem`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RedeemRequest {
    /// The one-time code: the last path segment of the link.
    pub code: String,
    pub platform: Platform,
    /// The phone's model as the user would recognise it, e.g. "Pixel 8" (1-64 characters).
    pub model: String,
}

/// A key attestation as the app sends it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "format", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AttestationRequest {
    /// Android Key Attestation: the Keystore's certificate chain for the key, leaf first, each
    /// certificate DER in standard base64.
    #[serde(rename = "android-key")]
    AndroidKey { certificate_chain: Vec<String> },
    /// Apple App Attest: the key id and attestation object `DCAppAttestService` answered,
    /// standard base64.
    #[serde(rename = "apple-appattest")]
    AppleAppAttest { key_id: String, attestation_object: String },
}

/// `POST /api/v1/mobile/certificate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CertificateRequest {
    pub code: String,
    /// The PKCS#10 request: PEM, or the DER in base64.
    pub csr: String,
    #[serde(default)]
    pub attestation: Option<AttestationRequest>,
}

/// `POST /api/v1/mobile/confirm` and `POST /api/v1/mobile/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CodeRequest {
    pub code: String,
}

/// A redeem request, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redeem {
    pub code: String,
    pub platform: Platform,
    pub model: String,
}

/// An attestation, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attestation {
    AndroidKey { chain: Vec<Vec<u8>> },
    AppleAppAttest { key_id: Vec<u8>, object: Vec<u8> },
}

impl Attestation {
    pub const fn format(&self) -> &'static str {
        match self {
            Attestation::AndroidKey { .. } => FORMAT_ANDROID_KEY,
            Attestation::AppleAppAttest { .. } => FORMAT_APPLE_APP_ATTEST,
        }
    }
}

/// A certificate request, checked: the CSR as PEM text or DER bytes (for `lanyard_ca::parse_csr`,
/// which checks its signature) and the decoded attestation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitCsr {
    pub code: String,
    pub csr: Vec<u8>,
    pub attestation: Option<Attestation>,
}

fn json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, RequestError> {
    if body.len() > MAX_BODY {
        return Err(bad(format!("the body is larger than {MAX_BODY} bytes")));
    }
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

/// Checks a presented code: 1-128 characters of the URL-safe alphabet (letters, digits, `-`,
/// `_`), surrounding whitespace dropped.
pub fn check_code(code: &str) -> Result<String, RequestError> {
    let code = code.trim();
    if code.is_empty() {
        return Err(bad("code: empty"));
    }
    if code.len() > MAX_CODE {
        return Err(bad(format!("code: longer than {MAX_CODE} characters")));
    }
    if !code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(bad("code: only letters, digits, '-' and '_' (copy it from the link)"));
    }
    Ok(code.to_owned())
}

fn check_model(model: &str) -> Result<String, RequestError> {
    let model = model.trim();
    if model.is_empty() || model.chars().count() > MAX_MODEL {
        return Err(bad(format!("model: 1-{MAX_MODEL} characters")));
    }
    if model.chars().any(char::is_control) {
        return Err(bad("model: no control characters"));
    }
    Ok(model.to_owned())
}

fn base64(field: &str, text: &str) -> Result<Vec<u8>, RequestError> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact.is_empty() {
        return Err(bad(format!("{field}: empty")));
    }
    base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(compact.trim_end_matches('=')))
        .map_err(|_| bad(format!("{field}: not base64")))
}

/// Parses and checks a redeem body.
pub fn parse_redeem(body: &[u8]) -> Result<Redeem, RequestError> {
    let r: RedeemRequest = json(body)?;
    Ok(Redeem { code: check_code(&r.code)?, platform: r.platform, model: check_model(&r.model)? })
}

/// Parses and checks a certificate body (the CSR's signature is the CA's to check).
pub fn parse_certificate(body: &[u8]) -> Result<SubmitCsr, RequestError> {
    let r: CertificateRequest = json(body)?;
    let code = check_code(&r.code)?;
    let text = r.csr.trim();
    let csr = if text.starts_with("-----BEGIN") { text.as_bytes().to_vec() } else { base64("csr", text)? };
    let attestation = match r.attestation {
        None => None,
        Some(AttestationRequest::AndroidKey { certificate_chain }) => {
            if certificate_chain.is_empty() || certificate_chain.len() > 8 {
                return Err(bad("attestation.certificate_chain: 1-8 certificates, leaf first"));
            }
            let chain = certificate_chain
                .iter()
                .enumerate()
                .map(|(i, c)| base64(&format!("attestation.certificate_chain[{i}]"), c))
                .collect::<Result<Vec<_>, _>>()?;
            Some(Attestation::AndroidKey { chain })
        }
        Some(AttestationRequest::AppleAppAttest { key_id, attestation_object }) => {
            let key_id = base64("attestation.key_id", &key_id)?;
            if key_id.len() != 32 {
                return Err(bad(
                    "attestation.key_id: must be 32 bytes (the SHA-256 App Attest names the key by)",
                ));
            }
            Some(Attestation::AppleAppAttest {
                key_id,
                object: base64("attestation.attestation_object", &attestation_object)?,
            })
        }
    };
    Ok(SubmitCsr { code, csr, attestation })
}

/// Parses and checks a confirm or status body: the code.
pub fn parse_code_request(body: &[u8]) -> Result<String, RequestError> {
    let r: CodeRequest = json(body)?;
    check_code(&r.code)
}

/// An enrolment link taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The server's base URL (scheme, host, port and any path prefix before `/m/`).
    pub server: String,
    pub code: String,
}

/// Takes apart `https://<server>[/prefix]/m/<code>` (what the QR code holds). Plain http only to
/// a loopback address, as for every Lanyard client.
pub fn parse_link(link: &str) -> Result<Link, RequestError> {
    let link = link.trim();
    let at = link
        .rfind(LINK_PREFIX)
        .ok_or_else(|| bad(format!("{link:?} is not an enrolment link (https://<server>/m/<code>)")))?;
    let (server, code) = (&link[..at], &link[at + LINK_PREFIX.len()..]);
    let code = check_code(code.trim_end_matches('/')).map_err(|e| bad(format!("the link's {e}")))?;
    crate::url::parse_server(server).map_err(|e| bad(format!("the link's server: {e}")))?;
    Ok(Link { server: server.to_owned(), code })
}

/// What the key must be and what the CA will put in the certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyRequirement {
    /// `p-256`, `p-384` or `rsa-2048`: the holder's policy for derived PIV credentials.
    pub algorithm: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CertificatePlan {
    /// The subject the CA will use (RFC 4514); the CSR's own subject is ignored.
    pub subject: String,
    /// The certificate profile without a hardware attestation (`derived-piv-auth`, policy OID
    /// 2.16.840.1.101.3.2.1.3.40) …
    pub profile: String,
    /// … and with a verified hardware key attestation (`derived-piv-auth-hardware`, …3.41).
    pub hardware_profile: String,
    pub validity_days: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttestationOffer {
    /// The enrolment's attestation challenge, standard base64 of 32 bytes: Android's
    /// `setAttestationChallenge`; iOS hashes it with the CSR key (docs/mobile-protocol.md).
    pub challenge: String,
    /// The formats this server can verify (its roots are configured).
    pub formats: Vec<String>,
    /// Whether the policy issues only hardware-attested credentials.
    pub required: bool,
}

/// The answer to redeem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RedeemResponse {
    pub protocol: u32,
    /// The enrolment (the code's record id; not secret).
    pub enrollment_id: String,
    /// The mobile device created for the phone.
    pub device_id: String,
    /// Whose credential this becomes (display name).
    pub holder: String,
    /// When the enrolment ends (RFC 3339): the certificate request must arrive before.
    pub expires_at: String,
    pub key: KeyRequirement,
    pub certificate: CertificatePlan,
    pub attestation: AttestationOffer,
}

/// What the server made of an attestation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttestationResult {
    pub format: String,
    /// Whether it proves a hardware key (and so earned the AAL3 profile).
    pub hardware: bool,
    /// Android: `software`, `trusted_environment` or `strong_box`.
    pub security_level: Option<String>,
    /// The configured root the chain ended at.
    pub root_subject: String,
}

/// The answer to a certificate request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CertificateResponse {
    pub credential_id: String,
    pub device_id: String,
    pub profile: String,
    /// `aal2` (software key, …3.40) or `aal3` (attested hardware key, …3.41).
    pub assurance: String,
    pub attestation: Option<AttestationResult>,
    pub serial: String,
    pub not_after: String,
    /// The certificate, DER in standard base64.
    pub certificate: String,
    /// The issuing CA's certificate, then the root's, DER in standard base64.
    pub chain: Vec<String>,
    /// The certificate and the chain as one PEM text.
    pub pem: String,
}

/// The answer to confirm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfirmResponse {
    pub device_id: String,
    /// Whether an earlier confirm had already recorded the installation.
    pub already_confirmed: bool,
}

/// Where an enrolment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EnrollmentState {
    /// Not redeemed yet.
    Issued,
    /// Redeemed; the certificate is not issued yet.
    Redeemed,
    /// The certificate was issued.
    Completed,
    /// Expired before it completed.
    Expired,
}

/// The answer to status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusResponse {
    pub state: EnrollmentState,
    pub expires_at: String,
    pub device_id: Option<String>,
    pub completed_at: Option<String>,
    /// Whether the app confirmed the installation.
    pub installed: bool,
}

/// Every refusal: the message, a stable machine-readable reason, the request's operation id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorResponse {
    pub error: String,
    /// E.g. `unknown_code`, `code_expired`, `code_used`, `wrong_key_algorithm`
    /// (docs/mobile-protocol.md lists them all).
    pub reason: String,
    pub operation_id: Option<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn links_name_server_and_code() {
        let l = parse_link("https://lanyard.example.org/m/0123abcd").unwrap();
        assert_eq!((l.server.as_str(), l.code.as_str()), ("https://lanyard.example.org", "0123abcd"));
        let l = parse_link(" https://h:8443/prefix/m/abc/ ").unwrap();
        assert_eq!((l.server.as_str(), l.code.as_str()), ("https://h:8443/prefix", "abc"));
        assert!(parse_link("http://127.0.0.1:8080/m/abc").is_ok());
        for (link, why) in [
            ("https://h/x/abc", "not an enrolment link"),
            ("https://h/m/", "code: empty"),
            ("https://h/m/a%20b", "only letters"),
            ("http://example.org/m/abc", "only allowed to a loopback"),
            ("ftp://h/m/abc", "must start with https"),
        ] {
            let e = parse_link(link).unwrap_err();
            assert!(e.0.contains(why), "{link}: {e}");
        }
    }

    #[test]
    fn bodies_are_checked_field_by_field() {
        let r = parse_redeem(br#"{"code":" abc ","platform":"ios","model":"iPhone 15"}"#).unwrap();
        assert_eq!(r, Redeem { code: "abc".into(), platform: Platform::Ios, model: "iPhone 15".into() });
        for (body, why) in [
            (&br#"{"code":"abc","platform":"ios","model":"x","extra":1}"#[..], "unknown field `extra`"),
            (br#"{"code":"abc","platform":"windows","model":"x"}"#, "unknown variant `windows`"),
            (br#"{"code":"abc","platform":"ios","model":""}"#, "model: 1-64"),
            (br#"{"code":"abc","platform":"ios","model":"a\nb"}"#, "control characters"),
            (br#"{"code":"a/b","platform":"ios","model":"x"}"#, "code: only letters"),
            (b"not json", "invalid JSON body"),
        ] {
            let e = parse_redeem(body).unwrap_err();
            assert!(e.0.contains(why), "{}: {e}", String::from_utf8_lossy(body));
        }
        let c = parse_certificate(br#"{"code":"abc","csr":"MIIB"}"#).unwrap();
        assert_eq!(c.csr, vec![0x30, 0x82, 0x01]);
        let c =
            parse_certificate(br#"{"code":"abc","csr":"-----BEGIN CERTIFICATE REQUEST-----\nx"}"#).unwrap();
        assert!(c.csr.starts_with(b"-----BEGIN"));
        let c = parse_certificate(
            br#"{"code":"abc","csr":"MIIB","attestation":{"format":"android-key","certificate_chain":["MIIB","AAEC"]}}"#,
        )
        .unwrap();
        assert_eq!(
            c.attestation,
            Some(Attestation::AndroidKey { chain: vec![vec![0x30, 0x82, 0x01], vec![0, 1, 2]] })
        );
        for (body, why) in [
            (&br#"{"code":"abc","csr":"***"}"#[..], "csr: not base64"),
            (br#"{"code":"abc","csr":""}"#, "csr: empty"),
            (br#"{"code":"abc","csr":"MIIB","attestation":{"format":"android-key","certificate_chain":[]}}"#, "1-8 certificates"),
            (br#"{"code":"abc","csr":"MIIB","attestation":{"format":"tpm"}}"#, "unknown variant `tpm`"),
            (
                br#"{"code":"abc","csr":"MIIB","attestation":{"format":"apple-appattest","key_id":"AAEC","attestation_object":"AA=="}}"#,
                "must be 32 bytes",
            ),
        ] {
            let e = parse_certificate(body).unwrap_err();
            assert!(e.0.contains(why), "{}: {e}", String::from_utf8_lossy(body));
        }
        assert_eq!(parse_code_request(br#"{"code":"abc"}"#).unwrap(), "abc");
        let huge = vec![b' '; MAX_BODY + 1];
        assert!(parse_code_request(&huge).unwrap_err().0.contains("larger than"));
    }

    proptest! {
        /// Any bytes: an answer or a refusal, never a panic; a code that passes is URL-safe.
        #[test]
        fn the_parsers_take_any_bytes(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(r) = parse_redeem(&body) {
                prop_assert!(r.code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            }
            let _ = parse_certificate(&body);
            let _ = parse_code_request(&body);
            let _ = parse_link(&String::from_utf8_lossy(&body));
        }

        /// Any JSON object of the right shape with any strings: the same.
        #[test]
        fn well_shaped_bodies_with_any_strings(code in ".{0,140}", model in ".{0,80}", csr in ".{0,200}") {
            let redeem = serde_json::json!({"code": code, "platform": "android", "model": model}).to_string();
            if let Ok(r) = parse_redeem(redeem.as_bytes()) {
                prop_assert_eq!(r.code, code.trim());
                prop_assert!(!r.model.is_empty() && r.model.chars().count() <= MAX_MODEL);
            }
            let cert = serde_json::json!({"code": code, "csr": csr}).to_string();
            let _ = parse_certificate(cert.as_bytes());
        }

        /// Links built from a server and a code of the URL-safe alphabet come apart into them.
        #[test]
        fn links_round_trip(host in "[a-z]{1,20}(\\.[a-z]{2,5})?", code in "[A-Za-z0-9_-]{1,128}") {
            let l = parse_link(&format!("https://{host}/m/{code}")).unwrap();
            prop_assert_eq!(l.server, format!("https://{host}"));
            prop_assert_eq!(l.code, code);
        }
    }
}
