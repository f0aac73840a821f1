//! API tokens: the caller creates, lists and revokes their own.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lanyard_core::ids::ApiTokenId;
use lanyard_core::model::ApiToken;
use lanyard_core::repo::Repo;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::auth::Auth;
use crate::{ApiError, AppState};

/// An API token as the API shows it: everything but the hash.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ApiTokenView {
    id: ApiTokenId,
    user: lanyard_core::ids::UserId,
    name: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    expires_at: Option<time::OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    last_used_at: Option<time::OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    revoked_at: Option<time::OffsetDateTime>,
}

impl From<&ApiToken> for ApiTokenView {
    fn from(t: &ApiToken) -> Self {
        Self {
            id: t.id,
            user: t.user,
            name: t.name.clone(),
            created_at: t.created_at,
            expires_at: t.expires_at,
            last_used_at: t.last_used_at,
            revoked_at: t.revoked_at,
        }
    }
}

/// A new API token: its value, shown only here, and its record.
#[derive(Serialize, utoipa::ToSchema)]
struct CreatedToken {
    token: String,
    api_token: ApiTokenView,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateTokenRequest {
    name: String,
    #[serde(default)]
    expires_in_days: Option<u32>,
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = CreateTokenRequest,
    responses((status = 201, body = CreatedToken), (status = 400, body = crate::openapi::ErrorBody), (status = 401, body = crate::openapi::ErrorBody)))]
pub(super) async fn create_token<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    body: Result<Json<CreateTokenRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let (token, secret) =
        auth.principal.create_api_token(s.repo.as_ref(), &req.name, req.expires_in_days).await?;
    let body =
        CreatedToken { token: secret.expose_secret().to_owned(), api_token: ApiTokenView::from(&token) };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    responses((status = 200, body = Vec<ApiTokenView>), (status = 401, body = crate::openapi::ErrorBody)))]
pub(super) async fn list_tokens<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
) -> Result<Json<Vec<ApiTokenView>>, ApiError> {
    let tokens = auth.principal.api_tokens(s.repo.as_ref()).await?;
    Ok(Json(tokens.iter().map(ApiTokenView::from).collect()))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", params(("id" = String, Path, description = "API token id")),
    responses((status = 200, body = ApiTokenView), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
pub(super) async fn revoke_token<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<ApiTokenView>, ApiError> {
    let id = id.parse::<ApiTokenId>().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{e}")))?;
    let token = auth.principal.revoke_api_token(s.repo.as_ref(), id).await?;
    Ok(Json(ApiTokenView::from(&token)))
}
