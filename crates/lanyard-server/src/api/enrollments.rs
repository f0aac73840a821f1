//! `POST /api/v1/me/mobile-enrollments`: a cardholder's one-time code for *Add Mobile*, the
//! same as the portal's **Continue** ([`SelfService::start_mobile_enrollment`], audited
//! `enrollment_code.issue`), for a script or an app that shows the link itself.
//!
//! The code belongs to the caller: the phone that opens the link becomes the caller's mobile.
//! Asked with a session cookie, the code is bound to that session (signing out ends it); with an
//! API token it lives until it expires or is used.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use lanyard_core::authz::SelfService;
use lanyard_core::ids::EnrollmentCodeId;
use lanyard_core::model::{EnrollmentKind, EnrollmentPurpose};
use lanyard_core::repo::Repo;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::auth::{Auth, Via};
use crate::{ApiError, AppState};

/// What the phone is to enrol.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum MobileEnrollmentType {
    /// An Apple configuration profile that enrols a device certificate over SCEP.
    MobileProfile,
    /// A derived PIV credential. Refused here: its code is issued only after the sponsor card
    /// proved itself in the portal (*My Devices* → *Add Identity Device*).
    DerivedPiv,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MobileEnrollmentRequest {
    #[serde(rename = "type")]
    kind: MobileEnrollmentType,
}

/// A one-time enrolment code, shown only in this answer (only its hash is stored).
#[derive(Serialize, utoipa::ToSchema)]
struct MobileEnrollmentStarted {
    /// The code's record (it appears in the audit log as `enrollment_code:<id>`).
    id: EnrollmentCodeId,
    #[serde(rename = "type")]
    kind: MobileEnrollmentType,
    /// The one-time code (URL-safe, 160 bits).
    code: String,
    /// The link to open on the phone, `<server>/enroll/profile/<code>`: it downloads the signed
    /// configuration profile once. Show it as a QR code or as text.
    link: String,
    /// When the code stops working if unused (the group policy's `enrollment_code_minutes`).
    #[serde(with = "time::serde::rfc3339")]
    expires_at: time::OffsetDateTime,
}

/// Why this route does not issue derived PIV codes.
pub const DERIVED_NEEDS_SPONSOR: &str = "type derived_piv: a derived PIV credential's code is issued only \
     after the sponsor card proves itself (its PIN and its PIV Authentication key) in the portal, under My \
     Devices → Add Identity Device; this route issues mobile_profile codes";

#[utoipa::path(post, path = "/api/v1/me/mobile-enrollments", tag = "devices", request_body = MobileEnrollmentRequest,
    responses(
        (status = 201, body = MobileEnrollmentStarted, description = "A one-time code and the profile link"),
        (status = 400, body = crate::openapi::ErrorBody, description = "A body that is not `{\"type\": \"mobile_profile\"}`, or `derived_piv` (needs the portal's sponsor-card step)"),
        (status = 401, body = crate::openapi::ErrorBody),
        (status = 403, body = crate::openapi::ErrorBody, description = "Not a cardholder, or the group policy's reason: mobiles not allowed, or `max_mobiles` reached"),
    ))]
/// A cardholder starts *Add Mobile*: a one-time code for a configuration profile, valid for the
/// group policy's `enrollment_code_minutes`. Refused with the policy's reason when the group
/// allows no mobiles or the caller has `max_mobiles` mobiles (Enrolling, Active or Suspended).
pub(super) async fn start_mobile_enrollment<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    headers: HeaderMap,
    body: Result<Json<MobileEnrollmentRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let me: SelfService<'_> = auth.principal.self_service()?;
    let Json(req) = body?;
    let repo = s.repo.as_ref();
    if let MobileEnrollmentType::DerivedPiv = req.kind {
        // The policy's own refusal comes first: it is the better answer when it applies.
        me.may_add_mobile(repo, EnrollmentKind::DerivedPiv).await?;
        return Err(ApiError::new(StatusCode::BAD_REQUEST, DERIVED_NEEDS_SPONSOR));
    }
    let policy = me.policy(repo).await?;
    let session = match &auth.via {
        Via::Session(hash) => Some(*hash),
        Via::ApiToken => None,
    };
    let (code, secret) = me
        .start_mobile_enrollment(
            repo,
            EnrollmentPurpose::MobileProfile,
            policy.enrollment_code_ttl(),
            session,
        )
        .await?;
    let base = crate::portal::server_url(&s, &headers);
    let body = MobileEnrollmentStarted {
        id: code.id,
        kind: req.kind,
        code: secret.expose_secret().to_owned(),
        link: crate::portal::profile_link(&base, secret.expose_secret()),
        expires_at: code.expires_at,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}
