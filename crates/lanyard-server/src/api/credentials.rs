//! Credentials: a device's certificates, issuing one from a CSR, and revoking, holding and
//! releasing them.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lanyard_core::ids::CredentialId;
use lanyard_core::lifecycle::RevocationReason;
use lanyard_core::model::{CertSlot, Credential};
use lanyard_core::repo::Repo;
use serde::{Deserialize, Serialize};

use super::{RevokeRequest, device_id};
use crate::auth::Auth;
use crate::{ApiError, AppState};

#[utoipa::path(get, path = "/api/v1/devices/{id}/credentials", tag = "credentials", params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = Vec<Credential>), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
/// The credentials on a device: operators see any device's, everyone else only their own
/// devices' (someone else's device is a plain 404).
pub(super) async fn device_credentials<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Vec<Credential>>, ApiError> {
    let id = device_id(&id)?;
    let repo = s.repo.as_ref();
    let credentials = match auth.principal.operator() {
        Ok(op) => {
            // The device must exist: an empty list would not tell a typo from a blank card.
            op.device(repo, id).await?;
            op.credentials(repo, id).await?
        }
        Err(_) => auth.principal.self_service()?.credentials(repo, id).await?,
    };
    Ok(Json(credentials))
}

fn credential_id(raw: &str) -> Result<CredentialId, ApiError> {
    raw.parse::<CredentialId>().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{e}")))
}

#[utoipa::path(post, path = "/api/v1/credentials/{id}/revoke", tag = "credentials", params(("id" = String, Path, description = "credential id")),
    request_body = RevokeRequest,
    responses((status = 200, body = Credential), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
pub(super) async fn revoke_credential<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<RevokeRequest>, JsonRejection>,
) -> Result<Json<Credential>, ApiError> {
    let op = auth.principal.operator()?;
    let id = credential_id(&id)?;
    let Json(req) = body?;
    let reason = req
        .reason
        .parse::<RevocationReason>()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(Json(op.revoke_credential(s.repo.as_ref(), id, reason).await?))
}

#[utoipa::path(post, path = "/api/v1/credentials/{id}/hold", tag = "credentials", params(("id" = String, Path, description = "credential id")),
    responses((status = 200, body = Credential), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
pub(super) async fn hold_credential<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Credential>, ApiError> {
    let op = auth.principal.operator()?;
    Ok(Json(op.hold_credential(s.repo.as_ref(), credential_id(&id)?).await?))
}

#[utoipa::path(post, path = "/api/v1/credentials/{id}/release", tag = "credentials", params(("id" = String, Path, description = "credential id")),
    responses((status = 200, body = Credential), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
pub(super) async fn release_credential<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Credential>, ApiError> {
    let op = auth.principal.operator()?;
    Ok(Json(op.release_credential(s.repo.as_ref(), credential_id(&id)?).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct IssueCertificateRequest {
    csr_pem: String,
    profile: String,
    slot: String,
    #[serde(default)]
    validity_days: Option<u32>,
}

/// A certificate just issued: its credential record and the certificate itself.
#[derive(Serialize, utoipa::ToSchema)]
struct IssuedCertificate {
    credential: Credential,
    certificate_pem: String,
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/certificates", tag = "credentials", params(("id" = String, Path, description = "device id")),
    request_body = IssueCertificateRequest,
    responses((status = 201, body = IssuedCertificate), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
/// Signs a CSR's key for a device under the issuance rules (the profile, subject, SANs and
/// validity the holder's policy and the card call for; the CSR proves possession of the key) and
/// records it: Pending while the device is Issuing or Pending, Active on an Active device.
pub(super) async fn issue_certificate<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<IssueCertificateRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let op = auth.principal.operator()?;
    let id = device_id(&id)?;
    let Json(req) = body?;
    let slot =
        req.slot.trim().parse::<CertSlot>().map_err(|e| ApiError::bad_request(format!("slot: {e}")))?;
    let csr = lanyard_ca::parse_csr_pem(&req.csr_pem)
        .map_err(|e| ApiError::bad_request(format!("csr_pem: {e}")))?;
    let public_key_der =
        der::Encode::to_der(&csr.public_key).map_err(|e| ApiError::bad_request(format!("csr_pem: {e}")))?;
    let channel = lanyard_issuance::Channel::OperatorCsr {
        profile: Some(req.profile.trim()),
        validity_days: req.validity_days,
    };
    let signed = lanyard_issuance::sign_for_operator(
        s.repo.as_ref(),
        &op,
        &s.pki.issuing,
        id,
        slot,
        &public_key_der,
        channel,
        s.clock.now(),
    )
    .await?;
    let credential = op.record_certificate(s.repo.as_ref(), id, signed.kind).await?;
    let body =
        IssuedCertificate { credential, certificate_pem: lanyard_ca::issue::pem("CERTIFICATE", &signed.der) };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}
