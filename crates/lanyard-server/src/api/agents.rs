//! Workstation agents paired with their user (DESIGN §4): a signed-in user asks for a one-time
//! pairing code, the agent redeems it (unauthenticated, the code is the proof) for a long-lived
//! credential, and the user lists and revokes their own agents. Cardholders, operators (for the
//! agent at their desk, issuing in person) and administrators pair agents
//! ([`lanyard_core::authz::Workstations`]); each reaches only their own.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lanyard_core::authz::{System, TicketPurpose};
use lanyard_core::ids::{AgentId, JobId, UserId};
use lanyard_core::model::Agent;
use lanyard_core::repo::Repo;
use lanyard_protocol::link::{ReaderReport, ServerLinkFrame};
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
    /// Whether the agent's link is connected to this server now.
    online: bool,
    /// While online: the agent's version (`lanyard-agent/<version>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_version: Option<String>,
    /// While online: when the link was opened.
    #[serde(with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    connected_at: Option<time::OffsetDateTime>,
    /// While online: the agent's latest reader report, as `lanyard_protocol::link::ReaderReport`
    /// (`name`, `card_present`, `atr`, and `card` with `model`, `serial`, `verdict`, `reason`,
    /// `busy`); null when offline or before its first report.
    #[schema(value_type = Option<Vec<Object>>)]
    readers: Option<Vec<ReaderReport>>,
    /// While online: when the latest reader report arrived.
    #[serde(with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    readers_reported_at: Option<time::OffsetDateTime>,
}

impl AgentView {
    /// The agent as stored, without its link (a freshly paired or revoked agent).
    fn stored(a: &Agent) -> Self {
        Self {
            id: a.id,
            user: a.user,
            host_name: a.host_name.clone(),
            created_at: a.created_at,
            last_seen_at: a.last_seen_at,
            revoked_at: a.revoked_at,
            online: false,
            agent_version: None,
            connected_at: None,
            readers: None,
            readers_reported_at: None,
        }
    }

    /// The agent with what its link, if connected to this or another server, says now.
    async fn with_link<R: Repo>(a: &Agent, s: &AppState<R>) -> Self {
        let mut view = Self::stored(a);
        let link = if a.revoked_at.is_none() { crate::link::status_anywhere(s, a.id).await } else { None };
        if let Some((user, snapshot)) = link
            && user == a.user
        {
            view.online = true;
            view.agent_version = Some(snapshot.agent);
            view.connected_at = Some(snapshot.connected_at);
            view.readers = snapshot.readers;
            view.readers_reported_at = snapshot.reported_at;
        }
        view
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
    let me = auth.principal.workstations()?;
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
    let body = Paired { credential: credential.expose_secret().to_owned(), agent: AgentView::stored(&agent) };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[utoipa::path(get, path = "/api/v1/agents", tag = "agents",
    responses((status = 200, body = Vec<AgentView>), (status = 401, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody)))]
pub(super) async fn list_agents<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
) -> Result<Json<Vec<AgentView>>, ApiError> {
    let me = auth.principal.workstations()?;
    let agents = me.agents(s.repo.as_ref()).await?;
    let mut views = Vec::with_capacity(agents.len());
    for a in &agents {
        views.push(AgentView::with_link(a, &s).await);
    }
    Ok(Json(views))
}

#[utoipa::path(delete, path = "/api/v1/agents/{id}", tag = "agents", params(("id" = String, Path, description = "Agent id")),
    responses((status = 200, body = AgentView), (status = 400, body = crate::openapi::ErrorBody), (status = 401, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
pub(super) async fn revoke_agent<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<AgentView>, ApiError> {
    let id = id.parse::<AgentId>().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{e}")))?;
    let me = auth.principal.workstations()?;
    let agent = me.revoke_agent(s.repo.as_ref(), id).await?;
    s.links.disconnect(agent.id, "this agent has been revoked");
    Ok(Json(AgentView::stored(&agent)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct StartSessionRequest {
    /// The job to run: one of the caller's own (a cardholder) or any (an operator).
    job: String,
    /// The reader, exactly as the agent's latest report names it; it must hold a card.
    reader: String,
    /// `run` (start or resume; the default) or `rollback` (reset the card of a failed job).
    #[serde(default)]
    purpose: Option<String>,
    /// Who types the new PIN: `agent` (at the workstation; the default) or `portal` (in the
    /// browser, handed in with `POST /api/v1/jobs/{id}/pin`; the agent must take PINs from the
    /// server).
    #[serde(default)]
    new_pin_from: Option<String>,
}

/// A card session sent to an agent.
#[derive(Serialize, utoipa::ToSchema)]
struct SessionStarted {
    /// The job, as it stands now; follow it with `GET /api/v1/jobs/{id}`.
    job: super::jobs::JobView,
    agent: AgentId,
    reader: String,
}

#[utoipa::path(post, path = "/api/v1/agents/{id}/sessions", tag = "agents", params(("id" = String, Path, description = "Agent id")),
    request_body = StartSessionRequest,
    responses((status = 202, body = SessionStarted), (status = 400, body = crate::openapi::ErrorBody), (status = 401, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody), (status = 503, body = crate::openapi::ErrorBody)))]
/// Runs a job's card session on one of the caller's own agents: a fresh ticket, bound to that
/// agent, goes over its link with the reader to use; the agent opens the session channel with
/// the ticket and its credential. The agent must be the caller's (another user's is 404, even
/// for an operator), connected, and must have reported the reader with a card in it.
pub(super) async fn start_session<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<StartSessionRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let id = id.parse::<AgentId>().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{e}")))?;
    let Json(req) = body?;
    crate::issuance::config(&s)?;
    let job_id: JobId =
        req.job.trim().parse().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("job: {e}")))?;
    let reader = req.reader;
    if reader.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "reader: must name a reader of the agent"));
    }
    let purpose = match req.purpose.as_deref().map(str::trim) {
        None | Some("run") => TicketPurpose::Run,
        Some("rollback") => TicketPurpose::Rollback,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("purpose: {other:?} (expected run or rollback)"),
            ));
        }
    };
    let from_portal = match req.new_pin_from.as_deref().map(str::trim) {
        None | Some("agent") => false,
        Some("portal") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("new_pin_from: {other:?} (expected agent or portal)"),
            ));
        }
    };
    let (job, agent) =
        crate::link::start_session(&s, &auth.principal, id, job_id, &reader, purpose, from_portal).await?;
    let body = SessionStarted { job: job.into(), agent, reader };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

#[utoipa::path(post, path = "/api/v1/agents/{id}/refresh", tag = "agents", params(("id" = String, Path, description = "Agent id")),
    responses((status = 202), (status = 400, body = crate::openapi::ErrorBody), (status = 401, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
/// Asks one of the caller's connected agents to report its readers again now (a page's reload
/// button); the new report shows in `GET /api/v1/agents` once it arrives.
pub(super) async fn refresh_agent<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = id.parse::<AgentId>().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{e}")))?;
    let agent = auth.principal.workstations()?.agent(s.repo.as_ref(), id).await?;
    s.links
        .send(agent.id, ServerLinkFrame::Refresh)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, format!("agent {}: {e}", agent.id)))?;
    Ok(StatusCode::ACCEPTED)
}
