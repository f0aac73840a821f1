//! An administrator's own API tokens (for scripts and the `lanyard` CLI): the list, a new one
//! (its value shown once, on the answer to the POST), and revoking one. Through the same
//! [`Principal`](lanyard_core::authz::Principal) calls as `/api/v1/tokens`; someone else's
//! token is a 404 like a missing one. The page is in the administration section, so anyone
//! without the administrator role gets a 404.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use lanyard_core::DomainError;
use lanyard_core::authz::MAX_TOKEN_DAYS;
use lanyard_core::ids::ApiTokenId;
use lanyard_core::model::ApiToken;
use lanyard_core::repo::Repo;
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::session::CsrfForm;
use super::{Nav, PortalError, SignedIn, render, when};
use crate::AppState;

pub(crate) fn routes<R: Repo + 'static>() -> Router<AppState<R>> {
    Router::new()
        .route("/portal/admin/tokens", get(list::<R>).post(create::<R>))
        .route("/portal/admin/tokens/{id}/revoke", post(revoke::<R>))
}

fn require_admin(signed: &SignedIn) -> Result<(), PortalError> {
    signed.principal().admin().map(|_| ()).map_err(|_| PortalError::not_found())
}

struct TokenRow {
    id: String,
    name: String,
    created: String,
    expires: String,
    last_used: String,
    revoked: Option<String>,
}

impl From<&ApiToken> for TokenRow {
    fn from(t: &ApiToken) -> Self {
        Self {
            id: t.id.to_string(),
            name: t.name.clone(),
            created: when(t.created_at),
            expires: t.expires_at.map_or_else(|| "never".into(), when),
            last_used: t.last_used_at.map_or_else(|| "never".into(), when),
            revoked: t.revoked_at.map(when),
        }
    }
}

#[derive(Template)]
#[template(path = "portal/admin_tokens.html")]
struct TokensPage {
    nav: Option<Nav>,
    section: &'static str,
    csrf_token: String,
    tokens: Vec<TokenRow>,
    name: String,
    days: String,
    error: Option<(String, String)>,
    /// A token just made: its name and value, shown this once.
    created: Option<(String, String)>,
    max_days: u32,
}

async fn page<R: Repo>(s: &AppState<R>, signed: &SignedIn) -> Result<TokensPage, PortalError> {
    require_admin(signed)?;
    let tokens = signed.principal().api_tokens(s.repo.as_ref()).await?;
    Ok(TokensPage {
        nav: signed.nav(),
        section: "admin",
        csrf_token: signed.session.csrf_token.clone(),
        tokens: tokens.iter().rev().map(TokenRow::from).collect(),
        name: String::new(),
        days: "90".into(),
        error: None,
        created: None,
        max_days: MAX_TOKEN_DAYS,
    })
}

pub(crate) async fn list<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
) -> Result<Response, PortalError> {
    let p = page(&s, &signed).await.map_err(|e| e.with_nav(signed.nav()))?;
    Ok(render(StatusCode::OK, &p))
}

#[derive(Deserialize)]
pub(crate) struct NewTokenForm {
    #[serde(default)]
    csrf_token: Option<String>,
    #[serde(default)]
    name: String,
    /// Days until it expires; empty for never.
    #[serde(default)]
    days: String,
}

/// Creates a token and shows its value once; a refusal names the field.
pub(crate) async fn create<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Form(form): Form<NewTokenForm>,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let nav = signed.nav();
    let inner = async {
        let mut p = page(&s, &signed).await?;
        p.name = form.name.clone();
        p.days = form.days.clone();
        let days = match form.days.trim() {
            "" => None,
            d => match d.parse::<u32>() {
                Ok(n) => Some(n),
                Err(_) => {
                    p.error = Some(("days".into(), format!("Expires in: {d:?} is not a number of days.")));
                    return Ok(render(StatusCode::BAD_REQUEST, &p));
                }
            },
        };
        match signed.principal().create_api_token(s.repo.as_ref(), form.name.trim(), days).await {
            Ok((token, secret)) => {
                let mut p = page(&s, &signed).await?;
                p.created = Some((token.name.clone(), secret.expose_secret().to_owned()));
                Ok(render(StatusCode::OK, &p))
            }
            Err(DomainError::Validation(e)) => {
                let (field, label) =
                    if e.field == "expires_in_days" { ("days", "Expires in") } else { ("name", "Name") };
                p.error = Some((field.into(), format!("{label}: {}.", e.reason)));
                Ok(render(StatusCode::BAD_REQUEST, &p))
            }
            Err(e) => Err(e.into()),
        }
    };
    inner.await.map_err(|e: PortalError| e.with_nav(nav))
}

/// Revokes one of the administrator's own tokens.
pub(crate) async fn revoke<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let nav = signed.nav();
    let inner = async {
        require_admin(&signed)?;
        let id = id.parse::<ApiTokenId>().map_err(|_| PortalError::not_found())?;
        signed.principal().revoke_api_token(s.repo.as_ref(), id).await?;
        Ok::<_, PortalError>(Redirect::to("/portal/admin/tokens").into_response())
    };
    inner.await.map_err(|e| e.with_nav(nav))
}
