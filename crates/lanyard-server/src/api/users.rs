//! Users: creating and finding them, and the devices of one.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lanyard_core::DomainError;
use lanyard_core::authz::NewUser;
use lanyard_core::ids::GroupId;
use lanyard_core::model::{Device, Email, Role, User, Username};
use lanyard_core::repo::{DeviceQuery, Repo, UserQuery};
use secrecy::SecretString;
use serde::Deserialize;

use super::device_id;
use crate::auth::Auth;
use crate::{ApiError, AppState};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateUserRequest {
    username: String,
    display_name: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    roles: Vec<Role>,
    /// A group id, or a group name.
    group: String,
    #[serde(default)]
    password: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = CreateUserRequest,
    responses((status = 201, body = User), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
pub(super) async fn create_user<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    body: Result<Json<CreateUserRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let admin = auth.principal.admin()?;
    let Json(req) = body?;
    let repo = s.repo.as_ref();
    let username = Username::parse(&req.username.trim().to_ascii_lowercase()).map_err(DomainError::from)?;
    let email = match req.email.as_deref().map(str::trim).filter(|e| !e.is_empty()) {
        Some(e) => Some(Email::parse(e).map_err(DomainError::from)?),
        None => None,
    };
    let wanted = req.group.trim();
    let group = match wanted.parse::<GroupId>() {
        Ok(id) => admin.groups(repo).await?.into_iter().find(|g| g.id == id),
        Err(_) => admin.groups(repo).await?.into_iter().find(|g| g.name == wanted),
    }
    .ok_or_else(|| {
        ApiError::bad_request(format!("group: there is no group {wanted:?} (give its id or name)"))
    })?;
    let new = NewUser {
        username,
        display_name: req.display_name,
        email,
        group: group.id,
        roles: req.roles.into_iter().collect(),
    };
    let password = req.password.map(SecretString::from);
    let user = admin.create_user_with_password(repo, new, password.as_ref()).await?;
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

/// Largest page of users or devices one search returns.
pub const MAX_SEARCH_PAGE: u32 = 500;

fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(100);
    if (1..=MAX_SEARCH_PAGE).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("limit must be 1 to {MAX_SEARCH_PAGE}, got {limit}"),
        ))
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct UserSearch {
    /// Case-insensitive substring of username, display name or e-mail.
    q: Option<String>,
    role: Option<String>,
    /// Continue after this username (keyset pagination).
    after: Option<String>,
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/users", tag = "users", params(UserSearch),
    responses((status = 200, body = Vec<User>), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody)))]
/// Operators find users.
pub(super) async fn find_users<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    params: Result<Query<UserSearch>, QueryRejection>,
) -> Result<Json<Vec<User>>, ApiError> {
    let op = auth.principal.operator()?;
    let Query(p) = params?;
    let role = match p.role.as_deref() {
        Some(r) => Some(
            r.parse::<Role>().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("role: {e}")))?,
        ),
        None => None,
    };
    let after = match p.after.as_deref() {
        Some(a) => Some(
            Username::parse(a).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("after: {e}")))?,
        ),
        None => None,
    };
    if p.q.as_ref().is_some_and(|q| q.chars().count() > 128) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "q: at most 128 characters"));
    }
    let query = UserQuery { text: p.q, group: None, role, after, limit: page_limit(p.limit)? };
    Ok(Json(op.find_users(s.repo.as_ref(), &query).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct DeviceSearch {
    /// Only devices in this state (e.g. `pending`).
    state: Option<String>,
    /// Continue after this device id (keyset pagination).
    after: Option<String>,
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/users/{id}/devices", tag = "users", params(("id" = String, Path, description = "user id or username"), DeviceSearch),
    responses((status = 200, body = Vec<Device>), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
/// Operators list the devices of any user.
pub(super) async fn user_devices<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
    params: Result<Query<DeviceSearch>, QueryRejection>,
) -> Result<Json<Vec<Device>>, ApiError> {
    let op = auth.principal.operator()?;
    let Query(p) = params?;
    let owner = op.user(s.repo.as_ref(), &id).await?.id;
    let states = match p.state.as_deref() {
        Some(v) => {
            vec![v.parse().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("state: {e}")))?]
        }
        None => Vec::new(),
    };
    let after = match p.after.as_deref() {
        Some(a) => Some(device_id(a)?),
        None => None,
    };
    let query = DeviceQuery {
        owner: Some(owner),
        states,
        after,
        limit: page_limit(p.limit)?,
        ..DeviceQuery::default()
    };
    Ok(Json(op.find_devices(s.repo.as_ref(), &query).await?))
}
