//! The app enrolment protocol (`docs/mobile-protocol.md`): a phone app, or `lanyard mobile
//! enroll`, redeems a one-time derived-PIV code, sends its CSR (and a key attestation when its
//! platform gives one), receives the certificate and chain, and confirms the installation.
//!
//! No login: the code in the body is the credential. Failures that are about the code (unknown,
//! expired, used) are counted per source address, like failed logins per username, and an address
//! with too many is refused for a while. Every refusal is JSON with the message, a stable
//! `reason` and the operation id, and changes nothing.

use std::net::{IpAddr, SocketAddr};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use lanyard_ca::mobile_attestation::{self, MobileEvidence};
use lanyard_core::DomainError;
use lanyard_core::audit::{Actor, NewAuditEvent};
use lanyard_core::authz::{Redeemed, System};
use lanyard_core::ids::UserId;
use lanyard_core::model::{
    CertSlot, Credential, CredentialKind, EnrollmentCode, EnrollmentError, EnrollmentKind,
};
use lanyard_core::repo::prelude::*;
use lanyard_core::repo::{AuditQuery, Repo, StoreError};
use lanyard_core::secrets::TokenHash;
use lanyard_issuance::IssuanceError;
use lanyard_protocol::mobile::{
    self as protocol, Attestation, AttestationOffer, AttestationResult, CertificatePlan, CertificateResponse,
    ConfirmResponse, EnrollmentState, ErrorResponse, KeyRequirement, RedeemResponse, StatusResponse,
};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::operation;
use crate::{ApiError, AppState, CURRENT_OPERATION};

/// What the app protocol needs beyond the CA: the roots phone attestations must chain to.
#[derive(Debug, Clone, Default)]
pub struct MobileConfig {
    /// DER certificates; Android Key Attestation chains must end at one (Google's hardware
    /// attestation roots in production). Empty: Android attestations are not accepted.
    pub android_roots: Vec<Vec<u8>>,
    /// DER certificates; App Attest chains must end at one (Apple's App Attestation Root CA).
    pub apple_roots: Vec<Vec<u8>>,
    /// The App IDs (`<team id>.<bundle id>`) whose App Attest attestations are accepted.
    pub apple_app_ids: Vec<String>,
}

/// Refused codes (unknown, expired, used) allowed per source address within
/// [`CODE_FAILURE_WINDOW`]; more are answered 429 until the oldest leaves the window. Codes have
/// 160 random bits, so this only slows down a scan; the allowance covers a few honest mistakes of
/// several phones behind one address.
pub const MAX_CODE_FAILURES: usize = 10;
pub const CODE_FAILURE_WINDOW: time::Duration = time::Duration::minutes(15);
/// The throttle scope of refused enrolment codes (per source address).
pub const THROTTLE_SCOPE: &str = "mobile_code";

/// The audit action recording that the app installed its credential.
pub const INSTALLED: &str = "mobile.installed";

/// A refusal of the app protocol.
#[derive(Debug)]
pub struct MobileError {
    status: StatusCode,
    reason: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl MobileError {
    fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self { status, reason, message: message.into(), retry_after: None }
    }

    fn bad_request(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, reason, message)
    }

    /// Failures that say the presented code is wrong or dead: these count against the address.
    fn about_the_code(&self) -> bool {
        matches!(self.reason, "unknown_code" | "code_expired" | "code_used" | "session_ended")
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl From<ApiError> for MobileError {
    fn from(e: ApiError) -> Self {
        let reason = match e.status() {
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            StatusCode::INTERNAL_SERVER_ERROR => "internal",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::CONFLICT => "conflict",
            _ => "bad_request",
        };
        Self { retry_after: e.retry_after, ..Self::new(e.status(), reason, e.message().to_owned()) }
    }
}

impl From<StoreError> for MobileError {
    fn from(e: StoreError) -> Self {
        ApiError::from(e).into()
    }
}

impl From<DomainError> for MobileError {
    fn from(e: DomainError) -> Self {
        use EnrollmentError as E;
        let message = e.to_string();
        let (status, reason) = match &e {
            DomainError::Enrollment(E::WrongCode) => (StatusCode::NOT_FOUND, "unknown_code"),
            DomainError::Enrollment(E::Expired(_)) => (StatusCode::GONE, "code_expired"),
            DomainError::Enrollment(E::AlreadyUsed(_)) => (StatusCode::GONE, "code_used"),
            DomainError::Enrollment(E::SessionEnded) => (StatusCode::GONE, "session_ended"),
            DomainError::Enrollment(E::WrongKind { .. }) => (StatusCode::CONFLICT, "wrong_kind"),
            DomainError::Enrollment(E::NotInProgress) => (StatusCode::CONFLICT, "not_in_progress"),
            DomainError::PolicyDenied(_) | DomainError::Forbidden(_) => {
                (StatusCode::FORBIDDEN, "policy_denied")
            }
            DomainError::Validation(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            DomainError::Conflict(_) | DomainError::Lifecycle(_) => (StatusCode::CONFLICT, "conflict"),
            _ => return ApiError::from(e).into(),
        };
        Self::new(status, reason, message)
    }
}

impl From<IssuanceError> for MobileError {
    fn from(e: IssuanceError) -> Self {
        let message = e.to_string();
        match e {
            IssuanceError::KeyAlgorithm { .. } => Self::bad_request("wrong_key_algorithm", message),
            IssuanceError::PublicKey(_) => Self::bad_request("bad_csr", message),
            IssuanceError::AttestationRequired { .. } => {
                Self::new(StatusCode::FORBIDDEN, "attestation_required", message)
            }
            IssuanceError::DeviceState { .. } => Self::new(StatusCode::CONFLICT, "conflict", message),
            IssuanceError::SlotNotInPolicy { .. } => {
                Self::new(StatusCode::FORBIDDEN, "policy_denied", message)
            }
            IssuanceError::Subject(_) => Self::new(StatusCode::CONFLICT, "conflict", message),
            other => ApiError::internal("signing the certificate", other).into(),
        }
    }
}

impl IntoResponse for MobileError {
    fn into_response(self) -> Response {
        let body = ErrorResponse {
            error: self.message,
            reason: self.reason.to_owned(),
            operation_id: CURRENT_OPERATION.try_with(Clone::clone).ok(),
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&seconds.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// The client's address as the listener saw it (`None` in process, without a socket). Behind a
/// reverse proxy this is the proxy's: forwarded headers are not trusted.
pub struct Source(Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Source {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let served = parts.extensions.get::<ConnectInfo<crate::tls::ClientAddr>>().map(|c| c.0.0.ip());
        Ok(Source(served.or_else(|| parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()))))
    }
}

impl Source {
    fn key(&self) -> String {
        self.0.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
    }
}

/// Runs `work` unless the address is throttled; counts its failures about the code.
async fn throttled<R: lanyard_core::repo::Repo, T>(
    s: &AppState<R>,
    source: &Source,
    work: impl Future<Output = Result<T, MobileError>>,
) -> Result<T, MobileError> {
    let key = source.key();
    if let Err(wait) = s.mobile_throttle.check(s.repo.as_ref(), &key, s.clock.now()).await? {
        return Err(MobileError {
            retry_after: Some(wait),
            ..MobileError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                format!("too many refused enrolment codes from this address; try again in {wait} seconds"),
            )
        });
    }
    let result = work.await;
    if let Err(e) = &result
        && e.about_the_code()
    {
        s.mobile_throttle.record_failure(s.repo.as_ref(), &key, s.clock.now()).await?;
    }
    result
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn request(e: protocol::RequestError) -> MobileError {
    MobileError::bad_request("bad_request", e.0)
}

fn challenge_of(code: &EnrollmentCode) -> [u8; 32] {
    mobile_attestation::enrolment_challenge(&code.id.to_string())
}

/// The formats the server can verify: those with roots (and, for Apple, App IDs) configured.
fn accepted_formats<R>(s: &AppState<R>) -> Vec<String> {
    let mut formats = Vec::new();
    if !s.mobile.android_roots.is_empty() {
        formats.push(protocol::FORMAT_ANDROID_KEY.to_owned());
    }
    if !s.mobile.apple_roots.is_empty() && !s.mobile.apple_app_ids.is_empty() {
        formats.push(protocol::FORMAT_APPLE_APP_ATTEST.to_owned());
    }
    formats
}

#[utoipa::path(post, path = "/api/v1/mobile/redeem", tag = "mobile", security(()),
    request_body = lanyard_protocol::mobile::RedeemRequest,
    responses((status = 200, body = lanyard_protocol::mobile::RedeemResponse, description = "the code is used up; a mobile (Enrolling) exists for the holder"),
        (status = 400, body = lanyard_protocol::mobile::ErrorResponse), (status = 403, body = lanyard_protocol::mobile::ErrorResponse),
        (status = 404, body = lanyard_protocol::mobile::ErrorResponse), (status = 409, body = lanyard_protocol::mobile::ErrorResponse),
        (status = 410, body = lanyard_protocol::mobile::ErrorResponse), (status = 429, body = lanyard_protocol::mobile::ErrorResponse)))]
/// Redeems a derived-PIV enrolment code: the code is used up, a mobile is created for its holder,
/// and the answer says what key to generate, what the CA will certify, until when, and which key
/// attestations the server verifies.
pub(super) async fn redeem<R: Repo>(
    State(s): State<AppState<R>>,
    op: Option<axum::Extension<crate::OperationId>>,
    source: Source,
    body: Bytes,
) -> Result<Json<RedeemResponse>, MobileError> {
    throttled(&s, &source, async {
        let req = protocol::parse_redeem(&body).map_err(request)?;
        let suffix = format!(" ({})", req.platform.label());
        let room = 64usize.saturating_sub(suffix.chars().count());
        let model: String = req.model.chars().take(room).collect::<String>().trim_end().to_owned() + &suffix;
        let system = System::new(operation(op.as_ref()), s.clock.now());
        let redeemed =
            system.redeem_enrollment(s.repo.as_ref(), &req.code, EnrollmentKind::DerivedPiv, &model).await?;
        Ok(Json(redeem_response(&s, &redeemed)?))
    })
    .await
}

fn redeem_response<R>(s: &AppState<R>, r: &Redeemed) -> Result<RedeemResponse, MobileError> {
    let slot = r.policy.certificates.get(&CertSlot::DerivedPivAuthentication).ok_or_else(|| {
        MobileError::new(
            StatusCode::FORBIDDEN,
            "policy_denied",
            "the holder's policy issues no derived PIV certificate",
        )
    })?;
    let subject = lanyard_ca::common_name(&r.holder.display_name)
        .map_err(|e| MobileError::new(StatusCode::CONFLICT, "conflict", format!("the holder's name: {e}")))?;
    Ok(RedeemResponse {
        protocol: protocol::PROTOCOL_VERSION,
        enrollment_id: r.code.id.to_string(),
        device_id: r.device.id.to_string(),
        holder: r.holder.display_name.clone(),
        expires_at: rfc3339(r.code.expires_at),
        key: KeyRequirement { algorithm: slot.algorithm.to_string() },
        certificate: CertificatePlan {
            subject: subject.to_string(),
            profile: "derived-piv-auth".into(),
            hardware_profile: "derived-piv-auth-hardware".into(),
            validity_days: slot.validity_days,
        },
        attestation: AttestationOffer {
            challenge: B64.encode(challenge_of(&r.code)),
            formats: accepted_formats(s),
            required: slot.profile == "derived-piv-auth-hardware",
        },
    })
}

/// Verifies the app's attestation for the CSR key `spki`.
fn verify_attestation<R>(
    s: &AppState<R>,
    attestation: &Attestation,
    code: &EnrollmentCode,
    spki: &[u8],
    now: OffsetDateTime,
) -> Result<MobileEvidence, MobileError> {
    let challenge = challenge_of(code);
    let format = attestation.format();
    if !accepted_formats(s).iter().any(|f| f == format) {
        return Err(MobileError::bad_request(
            "attestation_not_accepted",
            format!(
                "this server verifies no {format} attestations (no roots configured); send the CSR without one"
            ),
        ));
    }
    let result = match attestation {
        Attestation::AndroidKey { chain } => mobile_attestation::verify_android_key_attestation(
            chain,
            &s.mobile.android_roots,
            spki,
            &challenge,
            now,
        ),
        Attestation::AppleAppAttest { key_id, object } => mobile_attestation::verify_apple_app_attest(
            object,
            key_id,
            &mobile_attestation::apple_client_data_hash(&challenge, spki),
            &s.mobile.apple_roots,
            &s.mobile.apple_app_ids,
            now,
        ),
    };
    result.map_err(|e| {
        MobileError::bad_request("attestation_rejected", format!("the {format} attestation: {e}"))
    })
}

#[utoipa::path(post, path = "/api/v1/mobile/certificate", tag = "mobile", security(()),
    request_body = lanyard_protocol::mobile::CertificateRequest,
    responses((status = 201, body = lanyard_protocol::mobile::CertificateResponse, description = "the certificate is issued and recorded; the mobile is Active"),
        (status = 400, body = lanyard_protocol::mobile::ErrorResponse), (status = 403, body = lanyard_protocol::mobile::ErrorResponse),
        (status = 404, body = lanyard_protocol::mobile::ErrorResponse), (status = 409, body = lanyard_protocol::mobile::ErrorResponse),
        (status = 410, body = lanyard_protocol::mobile::ErrorResponse), (status = 429, body = lanyard_protocol::mobile::ErrorResponse)))]
/// Certifies the key of a redeemed enrolment: the CSR (its signature proves the key) and, when
/// given, a key attestation verified against the configured roots; a hardware-attested key gets
/// the AAL3 profile, any other the AAL2 one. The enrolment completes.
pub(super) async fn certificate<R: Repo>(
    State(s): State<AppState<R>>,
    op: Option<axum::Extension<crate::OperationId>>,
    source: Source,
    body: Bytes,
) -> Result<Response, MobileError> {
    throttled(&s, &source, async {
        let req = protocol::parse_certificate(&body).map_err(request)?;
        let now = s.clock.now();
        let op = operation(op.as_ref());
        let system = System::new(op.clone(), now);
        let redeemed =
            system.enrollment_in_progress(s.repo.as_ref(), &req.code, EnrollmentKind::DerivedPiv).await?;
        let csr = lanyard_ca::parse_csr(&req.csr)
            .map_err(|e| MobileError::bad_request("bad_csr", format!("csr: {e}")))?;
        let spki = der::Encode::to_der(&csr.public_key)
            .map_err(|e| MobileError::bad_request("bad_csr", format!("csr: {e}")))?;
        let evidence = match &req.attestation {
            Some(a) => Some(verify_attestation(&s, a, &redeemed.code, &spki, now)?),
            None => None,
        };
        let hardware = evidence.as_ref().is_some_and(|e| e.hardware);
        let mut signed = lanyard_issuance::sign_for_mobile(
            &s.pki.issuing,
            &redeemed,
            CertSlot::DerivedPivAuthentication,
            &spki,
            hardware,
            now,
        )?;
        let CredentialKind::Certificate { attestation_der, profile, serial_hex, not_after, .. } =
            &mut signed.kind;
        if let Some(e) = &evidence {
            *attestation_der = Some(e.leaf_der.clone());
        }
        let (profile, serial, not_after) = (profile.clone(), serial_hex.clone(), *not_after);
        if let Some(e) = &evidence {
            record_attestation(&s, &op, &redeemed, e, &profile, now).await?;
        }
        let mut credentials = [Credential::new(redeemed.device.id, signed.kind.clone(), now)];
        system.complete_enrollment(s.repo.as_ref(), &req.code, &mut credentials).await?;
        let chain = [s.pki.issuing.certificate_der().to_vec(), s.pki.root.certificate_der().to_vec()];
        let mut pem = lanyard_ca::issue::pem("CERTIFICATE", &signed.der);
        for c in &chain {
            pem.push_str(&lanyard_ca::issue::pem("CERTIFICATE", c));
        }
        let body = CertificateResponse {
            credential_id: credentials[0].id.to_string(),
            device_id: redeemed.device.id.to_string(),
            assurance: if profile == "derived-piv-auth-hardware" { "aal3" } else { "aal2" }.into(),
            profile,
            attestation: evidence.as_ref().map(|e| AttestationResult {
                format: e.format.clone(),
                hardware: e.hardware,
                security_level: e.security_level.map(|l| {
                    serde_json::to_value(l)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                }),
                root_subject: e.root_subject.clone(),
            }),
            serial,
            not_after: rfc3339(not_after),
            certificate: B64.encode(&signed.der),
            chain: chain.iter().map(|c| B64.encode(c)).collect(),
            pem,
        };
        Ok((StatusCode::CREATED, Json(body)).into_response())
    })
    .await
}

/// Records what the attestation proved, before the credential it vouches for is recorded.
async fn record_attestation<R: Repo>(
    s: &AppState<R>,
    op: &lanyard_core::audit::OperationId,
    r: &Redeemed,
    e: &MobileEvidence,
    profile: &str,
    now: OffsetDateTime,
) -> Result<(), MobileError> {
    let event = NewAuditEvent::new(now, Actor::System, "mobile.attestation_verified", op)
        .target(format!("device:{}", r.device.id))
        .after(json!({
            "format": e.format,
            "hardware": e.hardware,
            "security_level": e.security_level,
            "environment": e.environment,
            "app_id": e.app_id,
            "root_subject": e.root_subject,
            "root_sha256": e.root_sha256,
            "profile": profile,
            "user": r.holder.id,
        }));
    let mut tx = s.repo.begin().await?;
    tx.append_audit(event).await?;
    tx.commit().await?;
    Ok(())
}

async fn installed<T: Tx>(tx: &mut T, device: &str) -> Result<bool, StoreError> {
    let query = AuditQuery {
        target: Some(format!("device:{device}")),
        action: Some(INSTALLED.into()),
        limit: 1,
        ..AuditQuery::default()
    };
    Ok(!tx.list_audit(&query).await?.is_empty())
}

async fn code_record<T: Tx>(tx: &mut T, code: &str) -> Result<EnrollmentCode, MobileError> {
    tx.get_enrollment_code_by_hash(&TokenHash::of(code))
        .await?
        .ok_or_else(|| DomainError::from(EnrollmentError::WrongCode).into())
}

#[utoipa::path(post, path = "/api/v1/mobile/confirm", tag = "mobile", security(()),
    request_body = lanyard_protocol::mobile::CodeRequest,
    responses((status = 200, body = lanyard_protocol::mobile::ConfirmResponse, description = "the installation is recorded (once)"),
        (status = 400, body = lanyard_protocol::mobile::ErrorResponse), (status = 404, body = lanyard_protocol::mobile::ErrorResponse),
        (status = 409, body = lanyard_protocol::mobile::ErrorResponse), (status = 429, body = lanyard_protocol::mobile::ErrorResponse)))]
/// The app reports that it stored the credential. Recorded in the audit log once; repeating it
/// answers the same and records nothing more.
pub(super) async fn confirm<R: Repo>(
    State(s): State<AppState<R>>,
    op: Option<axum::Extension<crate::OperationId>>,
    source: Source,
    body: Bytes,
) -> Result<Json<ConfirmResponse>, MobileError> {
    throttled(&s, &source, async {
        let code = protocol::parse_code_request(&body).map_err(request)?;
        let op = operation(op.as_ref());
        let now = s.clock.now();
        let mut tx = s.repo.begin().await?;
        let record = code_record(&mut tx, &code).await?;
        if record.purpose.kind() != EnrollmentKind::DerivedPiv {
            return Err(DomainError::from(EnrollmentError::WrongKind {
                expected: record.purpose.kind().as_str(),
                presented: EnrollmentKind::DerivedPiv.as_str(),
            })
            .into());
        }
        let (Some(device), Some(_)) = (record.device, record.completed_at) else {
            return Err(MobileError::new(
                StatusCode::CONFLICT,
                "not_completed",
                "no certificate was issued for this code yet; send the certificate request first",
            ));
        };
        let device = device.to_string();
        let already = installed(&mut tx, &device).await?;
        if !already {
            let event = NewAuditEvent::new(now, Actor::System, INSTALLED, &op)
                .target(format!("device:{device}"))
                .after(json!({"user": record.user, "enrollment_code": record.id}));
            tx.append_audit(event).await?;
        }
        tx.commit().await?;
        Ok(Json(ConfirmResponse { device_id: device, already_confirmed: already }))
    })
    .await
}

/// Where the enrolment of `code` stands at `now`.
async fn status_of<T: Tx>(
    tx: &mut T,
    code: &EnrollmentCode,
    now: OffsetDateTime,
) -> Result<StatusResponse, StoreError> {
    let state = match (code.completed_at, code.used_at) {
        (Some(_), _) => EnrollmentState::Completed,
        _ if now >= code.expires_at => EnrollmentState::Expired,
        (None, Some(_)) => EnrollmentState::Redeemed,
        (None, None) => EnrollmentState::Issued,
    };
    let installed = match code.device {
        Some(d) => installed(tx, &d.to_string()).await?,
        None => false,
    };
    Ok(StatusResponse {
        state,
        expires_at: rfc3339(code.expires_at),
        device_id: code.device.map(|d| d.to_string()),
        completed_at: code.completed_at.map(rfc3339),
        installed,
    })
}

#[utoipa::path(post, path = "/api/v1/mobile/status", tag = "mobile", security(()),
    request_body = lanyard_protocol::mobile::CodeRequest,
    responses((status = 200, body = lanyard_protocol::mobile::StatusResponse),
        (status = 400, body = lanyard_protocol::mobile::ErrorResponse), (status = 404, body = lanyard_protocol::mobile::ErrorResponse),
        (status = 429, body = lanyard_protocol::mobile::ErrorResponse)))]
/// Where the enrolment of a code stands: issued, redeemed, completed or expired, and whether
/// the app confirmed the installation. Changes nothing.
pub(super) async fn status<R: Repo>(
    State(s): State<AppState<R>>,
    source: Source,
    body: Bytes,
) -> Result<Json<StatusResponse>, MobileError> {
    throttled(&s, &source, async {
        let code = protocol::parse_code_request(&body).map_err(request)?;
        let mut tx = s.repo.read().await?;
        let record = code_record(&mut tx, &code).await?;
        Ok(Json(status_of(&mut tx, &record, s.clock.now()).await?))
    })
    .await
}

/// For the portal (the derived flow's Done page): where the enrolment of the code whose hash is
/// `code_hash` stands, when that code is `holder`'s; `None` for an unknown code or another
/// user's (which the portal must not learn about).
pub async fn enrollment_status<R: Repo>(
    repo: &R,
    holder: UserId,
    code_hash: &TokenHash,
    now: OffsetDateTime,
) -> Result<Option<StatusResponse>, StoreError> {
    let mut tx = repo.read().await?;
    match tx.get_enrollment_code_by_hash(code_hash).await? {
        Some(code) if code.user == holder => Ok(Some(status_of(&mut tx, &code, now).await?)),
        _ => Ok(None),
    }
}
