//! Signing in and out, and who the caller is.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lanyard_core::audit::{Actor, NewAuditEvent};
use lanyard_core::model::{Session, User};
use lanyard_core::password::authenticate;
use lanyard_core::repo::prelude::*;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::operation;
use crate::auth::{Auth, SESSION_IDLE, SESSION_TTL, Via};
use crate::{ApiError, AppState};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LoginRequest {
    username: String,
    password: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct LoginResponse {
    csrf_token: String,
    user: User,
}

fn set_cookie(resp: &mut Response, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

#[utoipa::path(post, path = "/api/v1/login", tag = "session", request_body = LoginRequest, security(()),
    responses((status = 200, body = LoginResponse, description = "signed in; sets the session cookie"),
        (status = 400, body = crate::openapi::ErrorBody), (status = 401, body = crate::openapi::ErrorBody),
        (status = 403, body = crate::openapi::ErrorBody, description = "the group signs in with passkeys and this user has a usable one"),
        (status = 429, body = crate::openapi::ErrorBody)))]
pub(super) async fn login<R: Repo>(
    State(s): State<AppState<R>>,
    op: Option<axum::Extension<crate::OperationId>>,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let (user, secret) = start_session(&s, operation(op.as_ref()), &req.username, &req.password).await?;
    let secret = secret.expose_secret();
    let body = LoginResponse { csrf_token: Session::csrf_token(secret), user };
    let mut resp = Json(body).into_response();
    set_cookie(&mut resp, &crate::auth::session_cookie(secret, SESSION_TTL));
    Ok(resp)
}

/// What a user whose group signs in with passkeys is told when they use their password while a
/// passkey of theirs works.
pub(crate) const PASSWORD_REFUSED: &str = "your group's policy requires signing in with your passkey (your security key); \
     the password works again only if no passkey of yours is usable — if your key is lost, ask your help desk to suspend it";

/// Checks a username and password (throttled per username; a failure is audited) and starts a
/// session: the user and the new cookie value. The one sign-in path for the API and the portal.
pub(crate) async fn start_session<R: Repo>(
    s: &AppState<R>,
    op: lanyard_core::audit::OperationId,
    username: &str,
    password: &str,
) -> Result<(User, secrecy::SecretString), ApiError> {
    let now = s.clock.now();
    let key = username.trim().to_ascii_lowercase();
    if let Err(seconds) = s.throttle.check(s.repo.as_ref(), &key, now).await? {
        return Err(ApiError::too_many_requests(
            format!("too many failed logins for this username; try again in {seconds} s"),
            seconds,
        ));
    }
    let Some(user) = authenticate(s.repo.as_ref(), username, password).await? else {
        // Recorded by Lanyard itself: nobody is authenticated. The name is cut short so that
        // garbage input cannot bloat the log.
        let claimed: String = key.chars().take(lanyard_core::model::Username::MAX_LEN).collect();
        let event = NewAuditEvent::new(now, Actor::System, "session.login_failed", &op)
            .target(format!("username:{claimed}"));
        let repo = s.repo.as_ref();
        let (event, key, throttle) = (&event, &key, s.throttle);
        // The failure counts for every server sharing the database, written with its audit event.
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            throttle.record_in(&mut tx, key, now).await?;
            tx.append_audit(event.clone()).await?;
            tx.commit().await
        })
        .await?;
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid username or password"));
    };
    s.throttle.clear(s.repo.as_ref(), &key).await?;
    if lanyard_core::authz::password_refused(s.repo.as_ref(), &user).await? {
        // The password was right, but the group signs in with passkeys and this user has one
        // that works. Audited, so the help desk sees why a user "cannot sign in".
        let actor = Actor::User { id: user.id, username: user.username.clone() };
        let event = NewAuditEvent::new(now, actor, "session.password_refused", &op)
            .target(format!("user:{}", user.id))
            .after(serde_json::json!({"reason": "passkey policy"}));
        let (repo, event) = (s.repo.as_ref(), &event);
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            tx.append_audit(event.clone()).await?;
            tx.commit().await
        })
        .await?;
        return Err(ApiError::new(StatusCode::FORBIDDEN, PASSWORD_REFUSED));
    }
    let (session, secret) =
        Session::start(user.id, SESSION_IDLE, now).map_err(lanyard_core::DomainError::from)?;
    let actor = Actor::User { id: user.id, username: user.username.clone() };
    let expires = session.expires_at.format(&time::format_description::well_known::Rfc3339).ok();
    let event = NewAuditEvent::new(now, actor, "session.login", &op)
        .target(format!("user:{}", user.id))
        .after(serde_json::json!({ "expires_at": expires }));
    let (repo, session, event) = (s.repo.as_ref(), &session, &event);
    retry(repo, || async move {
        let mut tx = repo.begin().await?;
        tx.insert_session(session).await?;
        tx.append_audit(event.clone()).await?;
        tx.commit().await
    })
    .await?;
    Ok((user, secret))
}

/// Ends the session `hash` (audited) for the signed-in principal `p`.
pub(crate) async fn end_session<R: Repo>(
    s: &AppState<R>,
    p: &lanyard_core::authz::Principal,
    hash: &lanyard_core::secrets::TokenHash,
) -> Result<(), ApiError> {
    let event = NewAuditEvent::new(s.clock.now(), p.actor(), "session.logout", p.operation_id())
        .target(format!("user:{}", p.user().id));
    let (repo, event) = (s.repo.as_ref(), &event);
    retry(repo, || async move {
        let mut tx = repo.begin().await?;
        tx.delete_session(hash).await?;
        tx.append_audit(event.clone()).await?;
        tx.commit().await
    })
    .await?;
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/logout", tag = "session",
    responses((status = 204, description = "the session ended"), (status = 400, body = crate::openapi::ErrorBody), (status = 401, body = crate::openapi::ErrorBody)))]
pub(super) async fn logout<R: Repo>(State(s): State<AppState<R>>, auth: Auth) -> Result<Response, ApiError> {
    let Via::Session(hash) = auth.via else {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "logout ends a session; API tokens have none"));
    };
    end_session(&s, &auth.principal, &hash).await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    set_cookie(&mut resp, &crate::auth::session_cookie("", time::Duration::ZERO));
    Ok(resp)
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Me {
    user: User,
    /// `session` or `api_token`.
    authenticated_with: &'static str,
}

#[utoipa::path(get, path = "/api/v1/me", tag = "session",
    responses((status = 200, body = Me), (status = 401, body = crate::openapi::ErrorBody)))]
/// Who the caller is and how they authenticated.
pub(super) async fn me(auth: Auth) -> Json<Me> {
    let via = match auth.via {
        Via::Session(_) => "session",
        Via::ApiToken => "api_token",
    };
    Json(Me { user: auth.principal.user().clone(), authenticated_with: via })
}
