//! *My Workstations*: the signed-in person's paired agents, pairing a new one, and revoking one.
//! The domain's [`Workstations`](lanyard_core::authz::Workstations) view does the work, as for the
//! API's `/api/v1/agents` routes: cardholders, operators (the agent at their desk, for issuing in
//! person) and administrators have the page; another account's agent is a 404 like a missing
//! one, whatever the viewer's roles.

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use lanyard_core::ids::AgentId;
use lanyard_core::model::Agent;
use lanyard_core::repo::Repo;
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::session::CsrfForm;
use super::{Nav, PortalError, SignedIn, is_htmx, render, server_url, when};
use crate::AppState;

/// One paired agent as the page shows it.
pub(crate) struct AgentRow {
    pub id: String,
    pub host_name: String,
    pub paired: String,
    pub last_seen: String,
    pub revoked: Option<String>,
}

impl From<&Agent> for AgentRow {
    fn from(a: &Agent) -> Self {
        Self {
            id: a.id.to_string(),
            host_name: a.host_name.clone(),
            paired: when(a.created_at),
            last_seen: a.last_seen_at.map(when).unwrap_or_else(|| "not yet connected".into()),
            revoked: a.revoked_at.map(when),
        }
    }
}

#[derive(Template)]
#[template(path = "portal/workstations.html")]
struct WorkstationsPage {
    nav: Option<Nav>,
    section: &'static str,
    agents: Vec<AgentRow>,
    revoked_now: Option<String>,
    csrf_token: String,
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    /// After a revocation: the agent just revoked, to confirm it on the page.
    #[serde(default)]
    revoked: Option<String>,
}

pub(crate) async fn list<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Query(q): Query<ListQuery>,
) -> Result<Response, PortalError> {
    let nav = signed.nav();
    let inner = async {
        let me = signed.principal().workstations()?;
        let agents = me.agents(s.repo.as_ref()).await?;
        // Only a name from the user's own list is echoed back.
        let revoked_now = q
            .revoked
            .and_then(|id| agents.iter().find(|a| a.id.to_string() == id && a.revoked_at.is_some()))
            .map(|a| a.host_name.clone());
        Ok::<_, PortalError>(WorkstationsPage {
            nav: signed.nav(),
            section: "workstations",
            agents: agents.iter().map(AgentRow::from).collect(),
            revoked_now,
            csrf_token: signed.session.csrf_token.clone(),
        })
    };
    let page = inner.await.map_err(|e| e.with_nav(nav))?;
    Ok(render(StatusCode::OK, &page))
}

#[derive(Template)]
#[template(path = "portal/pairing_code.html")]
struct PairingCode {
    code: String,
    link: Option<String>,
    expires: String,
    server: String,
}

#[derive(Template)]
#[template(path = "portal/pairing.html")]
struct PairingPage {
    nav: Option<Nav>,
    section: &'static str,
    pairing: PairingCode,
}

/// A one-time pairing code for a workstation agent: the fragment for htmx, or a page.
pub(crate) async fn start_pairing<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let nav = signed.nav();
    let inner = async {
        let me = signed.principal().workstations()?;
        let (code, secret) = me.start_pairing(s.repo.as_ref()).await?;
        let server = server_url(&s, &headers);
        Ok::<_, PortalError>(PairingCode {
            code: secret.expose_secret().to_owned(),
            link: s
                .public_url
                .as_deref()
                .map(|url| lanyard_protocol::pairing::link(url, secret.expose_secret())),
            expires: when(code.expires_at),
            server,
        })
    };
    let pairing = inner.await.map_err(|e| e.with_nav(nav))?;
    if is_htmx(&headers) {
        return Ok(render(StatusCode::OK, &pairing));
    }
    Ok(render(StatusCode::OK, &PairingPage { nav: signed.nav(), section: "workstations", pairing }))
}

#[derive(Template)]
#[template(path = "portal/confirm_revoke.html")]
struct ConfirmRevokePage {
    nav: Option<Nav>,
    section: &'static str,
    agent: AgentRow,
    csrf_token: String,
}

/// One of the user's agents; anyone else's, or a malformed id, is a 404.
async fn my_agent<R: Repo>(s: &AppState<R>, signed: &SignedIn, id: &str) -> Result<Agent, PortalError> {
    let id = id.parse::<AgentId>().map_err(|_| PortalError::not_found())?;
    let me = signed.principal().workstations()?;
    me.agents(s.repo.as_ref()).await?.into_iter().find(|a| a.id == id).ok_or_else(PortalError::not_found)
}

/// Asks before revoking (the form works without script).
pub(crate) async fn confirm_revoke<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
) -> Result<Response, PortalError> {
    let agent = my_agent(&s, &signed, &id).await.map_err(|e| e.with_nav(signed.nav()))?;
    let page = ConfirmRevokePage {
        nav: signed.nav(),
        section: "workstations",
        agent: AgentRow::from(&agent),
        csrf_token: signed.session.csrf_token.clone(),
    };
    Ok(render(StatusCode::OK, &page))
}

/// Revokes the agent: its credential stops working at once.
pub(crate) async fn revoke<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let nav = signed.nav();
    let inner = async {
        let id = id.parse::<AgentId>().map_err(|_| PortalError::not_found())?;
        let me = signed.principal().workstations()?;
        me.revoke_agent(s.repo.as_ref(), id).await?;
        Ok::<_, PortalError>(id)
    };
    let id = inner.await.map_err(|e| e.with_nav(nav))?;
    Ok(Redirect::to(&format!("/portal/workstations?revoked={id}")).into_response())
}
