//! The JSON API under `/api/v1`. Handlers authenticate with [`Auth`](crate::auth::Auth), take a
//! capability view from its principal (a missing role is `403`), call the domain, and let
//! [`ApiError`] map the outcome. `docs/api.md` lists the routes and their rules.
//!
//! One module per resource; `routes` puts them together. What several resources share (the
//! operation id, device id parsing, the revocation request) lives here.

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use lanyard_core::audit::OperationId;
use lanyard_core::ids::DeviceId;
use lanyard_core::repo::Repo;
use serde::Deserialize;

use crate::{ApiError, AppState};

pub(crate) mod agents;
pub(crate) mod audit;
pub(crate) mod credentials;
pub(crate) mod devices;
pub(crate) mod enrollments;
pub(crate) mod groups;
pub(crate) mod jobs;
pub mod mobile;
pub(crate) mod passkeys;
pub(crate) mod session;
pub(crate) mod tokens;
pub(crate) mod users;

pub use audit::MAX_AUDIT_PAGE;
pub use users::MAX_SEARCH_PAGE;

use agents::{list_agents, pair, refresh_agent, revoke_agent, start_pairing, start_session};
use audit::audit;
use credentials::{
    device_credentials, hold_credential, issue_certificate, release_credential, revoke_credential,
};
use devices::{
    activate, create_device, device, devices, mark_device, recycle_device, resume, revoke_device, suspend,
    terminate_device,
};
use groups::{create_group, list_groups, update_policy};
use jobs::{begin_issuance, job, job_ticket, replace_device, submit_pin, unlock_pin, wipe_device};
use session::{login, logout, me};
use tokens::{create_token, list_tokens, revoke_token};
use users::{create_user, find_users, user_devices};

pub(crate) fn routes<R: Repo + 'static>() -> Router<AppState<R>> {
    Router::new()
        .route("/api/v1/login", post(login::<R>))
        .route("/api/v1/logout", post(logout::<R>))
        .route("/api/v1/me", get(me))
        .route("/api/v1/me/mobile-enrollments", post(enrollments::start_mobile_enrollment::<R>))
        .route("/api/v1/devices", get(devices::<R>).post(create_device::<R>))
        .route("/api/v1/devices/{id}", get(device::<R>))
        .route("/api/v1/devices/{id}/suspend", post(suspend::<R>))
        .route("/api/v1/devices/{id}/resume", post(resume::<R>))
        .route("/api/v1/devices/{id}/credentials", get(device_credentials::<R>))
        .route("/api/v1/devices/{id}/certificates", post(issue_certificate::<R>))
        .route("/api/v1/credentials/{id}/revoke", post(revoke_credential::<R>))
        .route("/api/v1/credentials/{id}/hold", post(hold_credential::<R>))
        .route("/api/v1/credentials/{id}/release", post(release_credential::<R>))
        .route("/api/v1/users", get(find_users::<R>).post(create_user::<R>))
        .route("/api/v1/users/{id}/devices", get(user_devices::<R>))
        .route("/api/v1/groups", get(list_groups::<R>).post(create_group::<R>))
        .route("/api/v1/issuance", post(begin_issuance::<R>))
        .route("/api/v1/jobs/{id}", get(job::<R>))
        .route("/api/v1/jobs/{id}/ticket", post(job_ticket::<R>))
        .route("/api/v1/jobs/{id}/pin", post(submit_pin::<R>))
        .route("/api/v1/devices/{id}/activate", post(activate::<R>))
        .route("/api/v1/devices/{id}/revoke", post(revoke_device::<R>))
        .route("/api/v1/devices/{id}/mark", post(mark_device::<R>))
        .route("/api/v1/devices/{id}/terminate", post(terminate_device::<R>))
        .route("/api/v1/devices/{id}/recycle", post(recycle_device::<R>))
        .route("/api/v1/devices/{id}/unlock", post(unlock_pin::<R>))
        .route("/api/v1/devices/{id}/wipe", post(wipe_device::<R>))
        .route("/api/v1/devices/{id}/replace", post(replace_device::<R>))
        .route("/api/v1/groups/{id}/policy", axum::routing::put(update_policy::<R>))
        .route("/api/v1/tokens", get(list_tokens::<R>).post(create_token::<R>))
        .route("/api/v1/tokens/{id}", axum::routing::delete(revoke_token::<R>))
        .route("/api/v1/audit", get(audit::<R>))
        .route("/api/v1/agents", get(list_agents::<R>))
        .route("/api/v1/agents/pairing", post(start_pairing::<R>))
        .route("/api/v1/agents/pair", post(pair::<R>))
        .route("/api/v1/agents/{id}", axum::routing::delete(revoke_agent::<R>))
        .route("/api/v1/agents/{id}/sessions", post(start_session::<R>))
        .route("/api/v1/agents/{id}/refresh", post(refresh_agent::<R>))
        .route("/api/v1/me/passkeys", get(passkeys::my_passkeys::<R>).post(passkeys::register::<R>))
        .route("/api/v1/me/passkeys/registration-options", post(passkeys::registration_options::<R>))
        .route("/api/v1/users/{id}/passkeys", get(passkeys::user_passkeys::<R>))
        .route("/api/v1/devices/{id}/passkeys", get(passkeys::device_passkeys::<R>))
        .route("/api/v1/passkeys/{id}", axum::routing::delete(passkeys::remove_passkey::<R>))
        .route("/api/v1/passkeys/sign-in/options", post(passkeys::sign_in_options::<R>))
        .route("/api/v1/passkeys/sign-in", post(passkeys::sign_in::<R>))
        .merge(mobile_routes())
}

/// The app enrolment protocol; bodies above the protocol's limit are refused before parsing.
fn mobile_routes<R: Repo + 'static>() -> Router<AppState<R>> {
    Router::new()
        .route("/api/v1/mobile/redeem", post(mobile::redeem::<R>))
        .route("/api/v1/mobile/certificate", post(mobile::certificate::<R>))
        .route("/api/v1/mobile/confirm", post(mobile::confirm::<R>))
        .route("/api/v1/mobile/status", post(mobile::status::<R>))
        .layer(axum::extract::DefaultBodyLimit::max(lanyard_protocol::mobile::MAX_BODY))
}

/// The request's operation id as the audit log takes it.
pub(crate) fn operation(op: Option<&axum::Extension<crate::OperationId>>) -> OperationId {
    op.and_then(|axum::Extension(op)| OperationId::parse(&op.0).ok()).unwrap_or_else(OperationId::random)
}

fn device_id(raw: &str) -> Result<DeviceId, ApiError> {
    raw.parse::<DeviceId>().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{e}")))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    reason: String,
}
