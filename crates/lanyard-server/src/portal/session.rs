//! Signing in and out. The API's sign-in ([`crate::api::session::start_session`]) does the work:
//! the same password check, per-username throttle, session and audit events.

use askama::Template;
use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use lanyard_core::repo::Repo;
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::{Nav, PortalError, SignedIn, Viewer, render};
use crate::api::session::{end_session, start_session};
use crate::auth::{SESSION_TTL, Via, session_cookie};
use crate::{AppState, OperationId};

/// One message for a wrong username and a wrong password, so the form does not reveal which
/// usernames exist.
pub(crate) const INVALID_LOGIN_TEXT: &str = "That username and password do not match an account.";

#[derive(Template)]
#[template(path = "portal/login.html")]
struct LoginPage {
    nav: Option<Nav>,
    section: &'static str,
    username: String,
    error: Option<String>,
    throttled: bool,
    signed_out: bool,
    /// The passkey button: only where the browser can use this server's passkeys.
    passkeys: bool,
}

#[derive(Deserialize)]
pub(crate) struct LoginQuery {
    #[serde(default)]
    signed_out: Option<String>,
}

pub(crate) async fn login_page<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    viewer: Viewer,
    headers: axum::http::HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    if viewer.0.is_some() {
        return Redirect::to("/").into_response();
    }
    let page = LoginPage {
        nav: None,
        section: "login",
        username: String::new(),
        error: None,
        throttled: false,
        signed_out: q.signed_out.is_some(),
        passkeys: crate::api::passkeys::at_relying_party(&s, &headers),
    };
    render(StatusCode::OK, &page)
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// Signs in and goes to `/` (My Devices, or the help desk or audit log for staff without
/// devices); a wrong username or password shows the form again with one
/// message for both.
pub(crate) async fn login<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    op: Option<axum::Extension<OperationId>>,
    headers: axum::http::HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, PortalError> {
    let passkeys = crate::api::passkeys::at_relying_party(&s, &headers);
    let again = |status: StatusCode, error: String, throttled: bool| {
        let page = LoginPage {
            nav: None,
            section: "login",
            username: form.username.clone(),
            error: Some(error),
            throttled,
            signed_out: false,
            passkeys,
        };
        render(status, &page)
    };
    if form.username.trim().is_empty() || form.password.is_empty() {
        return Ok(again(
            StatusCode::BAD_REQUEST,
            "Enter both your username and your password.".into(),
            false,
        ));
    }
    let op = crate::api::operation(op.as_ref());
    match start_session(&s, op, &form.username, &form.password).await {
        Ok((_user, secret)) => {
            // `/` leads each user to their first section (My Devices for cardholders).
            let mut resp = Redirect::to("/").into_response();
            if let Ok(v) = HeaderValue::from_str(&session_cookie(secret.expose_secret(), SESSION_TTL)) {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
            Ok(resp)
        }
        Err(e) if e.status() == StatusCode::UNAUTHORIZED => {
            Ok(again(StatusCode::UNAUTHORIZED, INVALID_LOGIN_TEXT.to_owned(), false))
        }
        Err(e) if e.status() == StatusCode::FORBIDDEN => {
            // The group signs in with passkeys (or the account is disabled): the reason, on the form.
            Ok(again(StatusCode::FORBIDDEN, upper_first(e.message()), false))
        }
        Err(e) if e.status() == StatusCode::TOO_MANY_REQUESTS => {
            let minutes = e.retry_after.unwrap_or(60).div_ceil(60);
            let unit = if minutes == 1 { "minute" } else { "minutes" };
            let message =
                format!("Too many failed sign-ins for this username. Try again in {minutes} {unit}.");
            let mut resp = again(StatusCode::TOO_MANY_REQUESTS, message, true);
            if let Some(seconds) = e.retry_after {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            Ok(resp)
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    pub csrf_token: Option<String>,
}

/// Ends the session and clears the cookie.
pub(crate) async fn logout<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    me: SignedIn,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PortalError> {
    me.check_csrf(form.csrf_token.as_deref())?;
    let Via::Session(hash) = me.session.auth.via else {
        return Err(PortalError::not_found());
    };
    end_session(&s, me.principal(), &hash).await.map_err(|e| PortalError::from(e).with_nav(me.nav()))?;
    let mut resp = Redirect::to("/portal/login?signed_out=1").into_response();
    if let Ok(v) = HeaderValue::from_str(&session_cookie("", time::Duration::ZERO)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(resp)
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}
