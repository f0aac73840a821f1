//! Workstation agents paired with their user (DESIGN §4): a signed-in user asks for a one-time
//! pairing code, the agent redeems it (unauthenticated, the code is the proof) for a long-lived
//! credential, and the user lists and revokes their own agents.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lanyard_core::authz::System;
use lanyard_core::ids::{AgentId, UserId};
use lanyard_core::model::Agent;
use lanyard_core::repo::Repo;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::operation;
use crate::auth::Auth;
use crate::{ApiError, AppState};

/// What a client is told for a code that pairs nothing: one message whether the code is wrong,
/// used or expired, so guessing learns nothing.
pub const BAD_PAIRING_CODE: &str =
    "the pairing code is wrong, already used or expired; ask the portal for a new one";

/// A paired agent as the API shows it: everything but the credential hash.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct AgentView {
    id: AgentId,
    user: UserId,
    /// The workstation's host name, as the agent reported it when pairing.
    host_name: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: time::OffsetDateTime,
    /// When the agent's credential last authenticated (to the minute); null until it has.
    #[serde(with = "time::serde::rfc3339::option")]
    last_seen_at: Option<time::OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    revoked_at: Option<time::OffsetDateTime>,
}

impl From<&Agent> for AgentView {
    fn from(a: &Agent) -> Self {
        Self {
            id: a.id,
            user: a.user,
            host_name: a.host_name.clone(),
            created_at: a.created_at,
            last_seen_at: a.last_seen_at,
            revoked_at: a.revoked_at,
        }
    }
}

/// A one-time pairing code, shown only here.
#[derive(Serialize, utoipa::ToSchema)]
struct PairingStarted {
    /// To type into `lanyard agent pair` (e.g. `ABCDE-FGHJK`; case, hyphens and spaces do not
    /// matter).
    code: String,
    /// The same code as a `lanyard://pair?server=…&code=…` link; null when the server was started
    /// without a public URL.
    link: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: time::OffsetDateTime,
}

#[utoipa::path(post, path = "/api/v1/agents/pairing", tag = "agents",
    responses((status = 201, body = PairingStarted), (status = 401, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody)))]
pub(super) async fn start_pairing<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
) -> Result<Response, ApiError> {
    let me = auth.principal.self_service()?;
    let (code, secret) = me.start_pairing(s.repo.as_ref()).await?;
    let body = PairingStarted {
        code: secret.expose_secret().to_owned(),
        link: s.public_url.as_deref().map(|url| lanyard_protocol::pairing::link(url, secret.expose_secret())),
        expires_at: code.expires_at,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PairRequest {
    /// The pairing code as shown or typed.
    code: String,
    /// The workstation's host name (1–253 characters).
    host_name: String,
}

/// A newly paired agent and its credential, shown only here.
#[derive(Serialize, utoipa::ToSchema)]
struct Paired {
    /// The agent's credential: keep it secret; only its hash is stored.
    credential: String,
    agent: AgentView,
}

#[utoipa::path(post, path = "/api/v1/agents/pair", tag = "agents", request_body = PairRequest, security(()),
    responses((status = 201, body = Paired), (status = 400, body = crate::openapi::ErrorBody), (status = 401, body = crate::openapi::ErrorBody)))]
pub(super) async fn pair<R: Repo>(
    State(s): State<AppState<R>>,
    op: Option<axum::Extension<crate::OperationId>>,
    body: Result<Json<PairRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let system = System::new(operation(op.as_ref()), s.clock.now());
    let Some((agent, credential)) = system.pair_agent(s.repo.as_ref(), &req.code, &req.host_name).await?
    else {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, BAD_PAIRING_CODE));
    };
    let body = Paired { credential: credential.expose_secret().to_owned(), agent: AgentView::from(&agent) };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[utoipa::path(get, path = "/api/v1/agents", tag = "agents",
    responses((status = 200, body = Vec<AgentView>), (status = 401, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody)))]
pub(super) async fn list_agents<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
) -> Result<Json<Vec<AgentView>>, ApiError> {
    let me = auth.principal.self_service()?;
    let agents = me.agents(s.repo.as_ref()).await?;
    Ok(Json(agents.iter().map(AgentView::from).collect()))
}

#[utoipa::path(delete, path = "/api/v1/agents/{id}", tag = "agents", params(("id" = String, Path, description = "Agent id")),
    responses((status = 200, body = AgentView), (status = 400, body = crate::openapi::ErrorBody), (status = 401, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
pub(super) async fn revoke_agent<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<AgentView>, ApiError> {
    let id = id.parse::<AgentId>().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{e}")))?;
    let me = auth.principal.self_service()?;
    let agent = me.revoke_agent(s.repo.as_ref(), id).await?;
    Ok(Json(AgentView::from(&agent)))
}
