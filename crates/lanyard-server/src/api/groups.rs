//! Groups and their policies.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use lanyard_core::ids::GroupId;
use lanyard_core::model::Policy;
use lanyard_core::repo::Repo;
use serde::Deserialize;

use crate::auth::Auth;
use crate::{ApiError, AppState};

#[utoipa::path(get, path = "/api/v1/groups", tag = "groups",
    responses((status = 200, body = Vec<lanyard_core::model::Group>), (status = 403, body = crate::openapi::ErrorBody)))]
/// Groups and their policies: administrators and operators read them.
pub(super) async fn list_groups<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
) -> Result<Json<Vec<lanyard_core::model::Group>>, ApiError> {
    let repo = s.repo.as_ref();
    let groups = match auth.principal.admin() {
        Ok(admin) => admin.groups(repo).await?,
        Err(_) => auth.principal.operator()?.groups(repo).await?,
    };
    Ok(Json(groups))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewGroupRequest {
    name: String,
    /// The group's policy [default: `Policy::default()`].
    policy: Option<Policy>,
}

#[utoipa::path(post, path = "/api/v1/groups", tag = "groups", request_body = NewGroupRequest,
    responses((status = 201, body = lanyard_core::model::Group), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
pub(super) async fn create_group<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    body: Result<Json<NewGroupRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<lanyard_core::model::Group>), ApiError> {
    let admin = auth.principal.admin()?;
    let Json(req) = body?;
    let group = admin.create_group(s.repo.as_ref(), &req.name, req.policy.unwrap_or_default()).await?;
    Ok((StatusCode::CREATED, Json(group)))
}

#[utoipa::path(put, path = "/api/v1/groups/{id}/policy", tag = "groups", params(("id" = String, Path, description = "group id")),
    request_body = Policy,
    responses((status = 200, body = lanyard_core::model::Group), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
/// Replaces a group's whole policy (administrators only).
pub(super) async fn update_policy<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<Policy>, JsonRejection>,
) -> Result<Json<lanyard_core::model::Group>, ApiError> {
    let admin = auth.principal.admin()?;
    let id = id.parse::<GroupId>().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{e}")))?;
    let Json(policy) = body?;
    Ok(Json(admin.update_policy(s.repo.as_ref(), id, policy).await?))
}
