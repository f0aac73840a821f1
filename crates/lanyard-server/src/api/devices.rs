//! Devices: listing and reading them, registering cards and USB keys, and their lifecycle
//! (suspend, resume, activate, revoke, mark, terminate, recycle).

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lanyard_core::lifecycle::RevocationReason;
use lanyard_core::model::Device;
use lanyard_core::repo::Repo;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::{RevokeRequest, device_id};
use crate::auth::Auth;
use crate::{ApiError, AppState};

#[utoipa::path(get, path = "/api/v1/devices", tag = "devices",
    responses((status = 200, body = Vec<Device>, description = "the caller's own devices"), (status = 401, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody)))]
pub(super) async fn devices<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
) -> Result<Json<Vec<Device>>, ApiError> {
    Ok(Json(auth.principal.self_service()?.devices(s.repo.as_ref()).await?))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}", tag = "devices", params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = Device), (status = 400, body = crate::openapi::ErrorBody), (status = 401, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
/// Operators see any device; everyone else only their own, and someone else's is a plain 404.
pub(super) async fn device<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Device>, ApiError> {
    let id = device_id(&id)?;
    let repo = s.repo.as_ref();
    let device = match auth.principal.operator() {
        Ok(op) => op.device(repo, id).await?,
        Err(_) => auth.principal.self_service()?.device(repo, id).await?,
    };
    Ok(Json(device))
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/suspend", tag = "devices", params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = Device), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
pub(super) async fn suspend<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Device>, ApiError> {
    let op = auth.principal.operator()?;
    Ok(Json(op.suspend_device(s.repo.as_ref(), device_id(&id)?).await?))
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/resume", tag = "devices", params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = Device), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
pub(super) async fn resume<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Device>, ApiError> {
    let op = auth.principal.operator()?;
    Ok(Json(op.resume_device(s.repo.as_ref(), device_id(&id)?).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateDeviceRequest {
    kind: String,
    model: String,
    #[serde(default)]
    serial: Option<String>,
    /// A user id or username; issuance to that user begins at once.
    #[serde(default)]
    owner: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/devices", tag = "devices", request_body = CreateDeviceRequest,
    responses((status = 201, body = Device), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
/// Registers a card or USB key (operators): stock without an owner, Issuing with one.
pub(super) async fn create_device<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    body: Result<Json<CreateDeviceRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let op = auth.principal.operator()?;
    let Json(req) = body?;
    let repo = s.repo.as_ref();
    let kind = req.kind.trim().parse().map_err(|e| ApiError::bad_request(format!("kind: {e}")))?;
    let owner = match req.owner.as_deref().map(str::trim).filter(|o| !o.is_empty()) {
        None => None,
        Some(raw) => Some(
            op.user(repo, raw)
                .await
                .map_err(|_| {
                    ApiError::bad_request(format!(
                        "owner: there is no user {raw:?} (give a user id or username)"
                    ))
                })?
                .id,
        ),
    };
    let card = lanyard_core::authz::CardInfo {
        kind,
        model: req.model.trim().to_owned(),
        serial: req.serial.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()),
    };
    let device = op.register_device(repo, card, owner).await?;
    Ok((StatusCode::CREATED, Json(device)).into_response())
}

/// An activated card and its initial PIN, shown this once.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Activated {
    device: Device,
    initial_pin: String,
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/activate", tag = "devices", params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = Activated), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
/// Operators activate a Pending card whose holder never changed the PIN, and receive its initial
/// PIN once (audited) to deliver it.
pub(super) async fn activate<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Activated>, ApiError> {
    let op = auth.principal.operator()?;
    let cfg = crate::issuance::config(&s)?;
    let (device, pin) =
        op.activate_and_reveal_initial_pin(s.repo.as_ref(), device_id(&id)?, &cfg.kek).await?;
    Ok(Json(Activated { device, initial_pin: pin.expose_secret().to_owned() }))
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/revoke", tag = "devices", params(("id" = String, Path, description = "device id")),
    request_body = RevokeRequest,
    responses((status = 200, body = Device), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
/// Revokes a device with an RFC 5280 reason: every certificate on it is revoked with it, and so
/// are the derived credentials that depend on it.
pub(super) async fn revoke_device<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<RevokeRequest>, JsonRejection>,
) -> Result<Json<Device>, ApiError> {
    let op = auth.principal.operator()?;
    let id = device_id(&id)?;
    let Json(req) = body?;
    let reason = req.reason.parse::<RevocationReason>().map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(op.revoke_device(s.repo.as_ref(), id, reason).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MarkRequest {
    /// `lost`, `stolen` or `damaged`.
    condition: String,
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/mark", tag = "devices", params(("id" = String, Path, description = "device id")),
    request_body = MarkRequest,
    responses((status = 200, body = Device), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
/// Marks a device lost, stolen or damaged: it is revoked with the matching reason.
pub(super) async fn mark_device<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<MarkRequest>, JsonRejection>,
) -> Result<Json<Device>, ApiError> {
    let op = auth.principal.operator()?;
    let id = device_id(&id)?;
    let Json(req) = body?;
    let repo = s.repo.as_ref();
    let device = match req.condition.trim() {
        "lost" => op.mark_device_lost(repo, id).await?,
        "stolen" => op.mark_device_stolen(repo, id).await?,
        "damaged" => op.mark_device_damaged(repo, id).await?,
        other => {
            return Err(ApiError::bad_request(format!(
                "condition: {other:?} (expected lost, stolen or damaged)"
            )));
        }
    };
    Ok(Json(device))
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/terminate", tag = "devices", params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = Device), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
/// Retires a device (its certificates are revoked, reason cessationOfOperation); a terminated
/// card may then be wiped and recycled.
pub(super) async fn terminate_device<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Device>, ApiError> {
    let op = auth.principal.operator()?;
    Ok(Json(op.terminate_device(s.repo.as_ref(), device_id(&id)?).await?))
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/recycle", tag = "devices", params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = Device), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
/// Returns a terminated or failed card to unowned stock; its stored card secrets are discarded.
pub(super) async fn recycle_device<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Device>, ApiError> {
    let op = auth.principal.operator()?;
    Ok(Json(op.recycle_device(s.repo.as_ref(), device_id(&id)?).await?))
}
