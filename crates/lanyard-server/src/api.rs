//! The JSON API under `/api/v1`. Handlers authenticate with [`Auth`], take a capability view
//! from its principal (a missing role is `403`), call the domain, and let [`ApiError`] map the
//! outcome. `docs/api.md` lists the routes and their rules.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lanyard_core::DomainError;
use lanyard_core::audit::{Actor, NewAuditEvent, OperationId};
use lanyard_core::authz::NewUser;
use lanyard_core::ids::{ApiTokenId, CredentialId, DeviceId, GroupId};
use lanyard_core::lifecycle::RevocationReason;
use lanyard_core::model::{
    ApiToken, CertSlot, Credential, Device, Email, Policy, Role, Session, User, Username,
};
use lanyard_core::password::authenticate;
use lanyard_core::repo::prelude::*;
use lanyard_core::repo::{AuditQuery, DeviceQuery, Repo, UserQuery};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::auth::{Auth, SESSION_IDLE, SESSION_TTL, Via};
use crate::{ApiError, AppState};

/// Largest page of audit events one request returns.
pub const MAX_AUDIT_PAGE: u32 = 1000;

pub(crate) fn routes<R: Repo + 'static>() -> Router<AppState<R>> {
    Router::new()
        .route("/api/v1/login", post(login::<R>))
        .route("/api/v1/logout", post(logout::<R>))
        .route("/api/v1/me", get(me))
        .route("/api/v1/devices", get(devices::<R>).post(create_device::<R>))
        .route("/api/v1/devices/{id}", get(device::<R>))
        .route("/api/v1/devices/{id}/suspend", post(suspend::<R>))
        .route("/api/v1/devices/{id}/resume", post(resume::<R>))
        .route("/api/v1/devices/{id}/credentials", get(device_credentials::<R>))
        .route("/api/v1/devices/{id}/certificates", post(issue_certificate::<R>))
        .route("/api/v1/credentials/{id}/revoke", post(revoke_credential::<R>))
        .route("/api/v1/credentials/{id}/hold", post(hold_credential::<R>))
        .route("/api/v1/credentials/{id}/release", post(release_credential::<R>))
        .route("/api/v1/users", get(find_users::<R>).post(create_user::<R>))
        .route("/api/v1/users/{id}/devices", get(user_devices::<R>))
        .route("/api/v1/groups", get(list_groups::<R>).post(create_group::<R>))
        .route("/api/v1/issuance", post(begin_issuance::<R>))
        .route("/api/v1/jobs/{id}", get(job::<R>))
        .route("/api/v1/jobs/{id}/ticket", post(job_ticket::<R>))
        .route("/api/v1/devices/{id}/activate", post(activate::<R>))
        .route("/api/v1/devices/{id}/revoke", post(revoke_device::<R>))
        .route("/api/v1/devices/{id}/mark", post(mark_device::<R>))
        .route("/api/v1/devices/{id}/terminate", post(terminate_device::<R>))
        .route("/api/v1/devices/{id}/recycle", post(recycle_device::<R>))
        .route("/api/v1/devices/{id}/unlock", post(unlock_pin::<R>))
        .route("/api/v1/devices/{id}/wipe", post(wipe_device::<R>))
        .route("/api/v1/devices/{id}/replace", post(replace_device::<R>))
        .route("/api/v1/groups/{id}/policy", axum::routing::put(update_policy::<R>))
        .route("/api/v1/tokens", get(list_tokens::<R>).post(create_token::<R>))
        .route("/api/v1/tokens/{id}", axum::routing::delete(revoke_token::<R>))
        .route("/api/v1/audit", get(audit::<R>))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
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

/// The request's operation id as the audit log takes it.
pub(crate) fn operation(op: Option<&axum::Extension<crate::OperationId>>) -> OperationId {
    op.and_then(|axum::Extension(op)| OperationId::parse(&op.0).ok()).unwrap_or_else(OperationId::random)
}

#[utoipa::path(post, path = "/api/v1/login", tag = "session", request_body = LoginRequest, security(()),
    responses((status = 200, body = LoginResponse, description = "signed in; sets the session cookie"),
        (status = 400, body = crate::openapi::ErrorBody), (status = 401, body = crate::openapi::ErrorBody), (status = 429, body = crate::openapi::ErrorBody)))]
async fn login<R: Repo>(
    State(s): State<AppState<R>>,
    op: Option<axum::Extension<crate::OperationId>>,
    body: Result<Json<LoginRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let now = s.clock.now();
    let key = req.username.trim().to_ascii_lowercase();
    if let Err(seconds) = s.throttle.check(&key, now) {
        return Err(ApiError::too_many_requests(
            format!("too many failed logins for this username; try again in {seconds} s"),
            seconds,
        ));
    }
    let op = operation(op.as_ref());
    let Some(user) = authenticate(s.repo.as_ref(), &req.username, &req.password).await? else {
        s.throttle.record_failure(&key, now);
        // Recorded by Lanyard itself: nobody is authenticated. The name is cut short so that
        // garbage input cannot bloat the log.
        let claimed: String = key.chars().take(lanyard_core::model::Username::MAX_LEN).collect();
        let event = NewAuditEvent::new(now, Actor::System, "session.login_failed", &op)
            .target(format!("username:{claimed}"));
        let repo = s.repo.as_ref();
        let event = &event;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            tx.append_audit(event.clone()).await?;
            tx.commit().await
        })
        .await?;
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid username or password"));
    };
    s.throttle.clear(&key);
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
    let secret = secret.expose_secret();
    let body = LoginResponse { csrf_token: Session::csrf_token(secret), user };
    let mut resp = Json(body).into_response();
    set_cookie(&mut resp, &crate::auth::session_cookie(secret, SESSION_TTL));
    Ok(resp)
}

#[utoipa::path(post, path = "/api/v1/logout", tag = "session",
    responses((status = 204, description = "the session ended"), (status = 400, body = crate::openapi::ErrorBody), (status = 401, body = crate::openapi::ErrorBody)))]
async fn logout<R: Repo>(State(s): State<AppState<R>>, auth: Auth) -> Result<Response, ApiError> {
    let Via::Session(hash) = auth.via else {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "logout ends a session; API tokens have none"));
    };
    let p = &auth.principal;
    let event = NewAuditEvent::new(s.clock.now(), p.actor(), "session.logout", p.operation_id())
        .target(format!("user:{}", p.user().id));
    let (repo, hash, event) = (s.repo.as_ref(), &hash, &event);
    retry(repo, || async move {
        let mut tx = repo.begin().await?;
        tx.delete_session(hash).await?;
        tx.append_audit(event.clone()).await?;
        tx.commit().await
    })
    .await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    set_cookie(&mut resp, &crate::auth::session_cookie("", time::Duration::ZERO));
    Ok(resp)
}

#[derive(Serialize, utoipa::ToSchema)]
struct Me {
    user: User,
    /// `session` or `api_token`.
    authenticated_with: &'static str,
}

#[utoipa::path(get, path = "/api/v1/me", tag = "session",
    responses((status = 200, body = Me), (status = 401, body = crate::openapi::ErrorBody)))]
/// Who the caller is and how they authenticated.
async fn me(auth: Auth) -> Json<Me> {
    let via = match auth.via {
        Via::Session(_) => "session",
        Via::ApiToken => "api_token",
    };
    Json(Me { user: auth.principal.user().clone(), authenticated_with: via })
}

#[utoipa::path(get, path = "/api/v1/devices", tag = "devices",
    responses((status = 200, body = Vec<Device>, description = "the caller's own devices"), (status = 401, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody)))]
async fn devices<R: Repo>(State(s): State<AppState<R>>, auth: Auth) -> Result<Json<Vec<Device>>, ApiError> {
    Ok(Json(auth.principal.self_service()?.devices(s.repo.as_ref()).await?))
}

fn device_id(raw: &str) -> Result<DeviceId, ApiError> {
    raw.parse::<DeviceId>().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{e}")))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}", tag = "devices", params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = Device), (status = 400, body = crate::openapi::ErrorBody), (status = 401, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
/// Operators see any device; everyone else only their own, and someone else's is a plain 404.
async fn device<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Device>, ApiError> {
    let id = device_id(&id)?;
    let repo = s.repo.as_ref();
    let device = match auth.principal.operator() {
        Ok(op) => op.device(repo, id).await?,
        Err(_) => auth.principal.self_service()?.device(repo, id).await?,
    };
    Ok(Json(device))
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/suspend", tag = "devices", params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = Device), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
async fn suspend<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Device>, ApiError> {
    let op = auth.principal.operator()?;
    Ok(Json(op.suspend_device(s.repo.as_ref(), device_id(&id)?).await?))
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/resume", tag = "devices", params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = Device), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
async fn resume<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Device>, ApiError> {
    let op = auth.principal.operator()?;
    Ok(Json(op.resume_device(s.repo.as_ref(), device_id(&id)?).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    #[serde(default)]
    after_seq: u64,
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditParams),
    responses((status = 200, body = Vec<lanyard_core::audit::AuditEvent>), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody)))]
async fn audit<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<Vec<lanyard_core::audit::AuditEvent>>, ApiError> {
    let auditor = auth.principal.auditor()?;
    let Query(p) = params?;
    let limit = p.limit.unwrap_or(100);
    if !(1..=MAX_AUDIT_PAGE).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("limit must be 1 to {MAX_AUDIT_PAGE}, got {limit}"),
        ));
    }
    let query = AuditQuery { after_seq: p.after_seq, target: None, limit };
    Ok(Json(auditor.events(s.repo.as_ref(), &query).await?))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/credentials", tag = "credentials", params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = Vec<Credential>), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
/// The credentials on a device: operators see any device's, everyone else only their own
/// devices' (someone else's device is a plain 404).
async fn device_credentials<R: Repo>(
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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    reason: String,
}

#[utoipa::path(post, path = "/api/v1/credentials/{id}/revoke", tag = "credentials", params(("id" = String, Path, description = "credential id")),
    request_body = RevokeRequest,
    responses((status = 200, body = Credential), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
async fn revoke_credential<R: Repo>(
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
async fn hold_credential<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Credential>, ApiError> {
    let op = auth.principal.operator()?;
    Ok(Json(op.hold_credential(s.repo.as_ref(), credential_id(&id)?).await?))
}

#[utoipa::path(post, path = "/api/v1/credentials/{id}/release", tag = "credentials", params(("id" = String, Path, description = "credential id")),
    responses((status = 200, body = Credential), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
async fn release_credential<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Credential>, ApiError> {
    let op = auth.principal.operator()?;
    Ok(Json(op.release_credential(s.repo.as_ref(), credential_id(&id)?).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateUserRequest {
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
async fn create_user<R: Repo>(
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

/// An API token as the API shows it: everything but the hash.
#[derive(Serialize, utoipa::ToSchema)]
struct ApiTokenView {
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
struct CreateTokenRequest {
    name: String,
    #[serde(default)]
    expires_in_days: Option<u32>,
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = CreateTokenRequest,
    responses((status = 201, body = CreatedToken), (status = 400, body = crate::openapi::ErrorBody), (status = 401, body = crate::openapi::ErrorBody)))]
async fn create_token<R: Repo>(
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
async fn list_tokens<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
) -> Result<Json<Vec<ApiTokenView>>, ApiError> {
    let tokens = auth.principal.api_tokens(s.repo.as_ref()).await?;
    Ok(Json(tokens.iter().map(ApiTokenView::from).collect()))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", params(("id" = String, Path, description = "API token id")),
    responses((status = 200, body = ApiTokenView), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
async fn revoke_token<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<ApiTokenView>, ApiError> {
    let id = id.parse::<ApiTokenId>().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{e}")))?;
    let token = auth.principal.revoke_api_token(s.repo.as_ref(), id).await?;
    Ok(Json(ApiTokenView::from(&token)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct IssueCertificateRequest {
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
async fn issue_certificate<R: Repo>(
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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateDeviceRequest {
    kind: String,
    model: String,
    #[serde(default)]
    serial: Option<String>,
    /// A user id or username; issuance to that user begins at once.
    #[serde(default)]
    owner: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/devices", tag = "devices", request_body = CreateDeviceRequest,
    responses((status = 201, body = Device), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
/// Registers a card or USB key (operators): stock without an owner, Issuing with one.
async fn create_device<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    body: Result<Json<CreateDeviceRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let op = auth.principal.operator()?;
    let Json(req) = body?;
    let repo = s.repo.as_ref();
    let kind = req.kind.trim().parse().map_err(|e| ApiError::bad_request(format!("kind: {e}")))?;
    let owner = match req.owner.as_deref().map(str::trim).filter(|o| !o.is_empty()) {
        None => None,
        Some(raw) => Some(
            op.user(repo, raw)
                .await
                .map_err(|_| {
                    ApiError::bad_request(format!(
                        "owner: there is no user {raw:?} (give a user id or username)"
                    ))
                })?
                .id,
        ),
    };
    let card = lanyard_core::authz::CardInfo {
        kind,
        model: req.model.trim().to_owned(),
        serial: req.serial.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()),
    };
    let device = op.register_device(repo, card, owner).await?;
    Ok((StatusCode::CREATED, Json(device)).into_response())
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
struct UserSearch {
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
async fn find_users<R: Repo>(
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
struct DeviceSearch {
    /// Only devices in this state (e.g. `pending`).
    state: Option<String>,
    /// Continue after this device id (keyset pagination).
    after: Option<String>,
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/users/{id}/devices", tag = "users", params(("id" = String, Path, description = "user id or username"), DeviceSearch),
    responses((status = 200, body = Vec<Device>), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
/// Operators list the devices of any user.
async fn user_devices<R: Repo>(
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

#[utoipa::path(get, path = "/api/v1/groups", tag = "groups",
    responses((status = 200, body = Vec<lanyard_core::model::Group>), (status = 403, body = crate::openapi::ErrorBody)))]
/// Groups and their policies: administrators and operators read them.
async fn list_groups<R: Repo>(
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
struct NewGroupRequest {
    name: String,
    /// The group's policy [default: `Policy::default()`].
    policy: Option<Policy>,
}

#[utoipa::path(post, path = "/api/v1/groups", tag = "groups", request_body = NewGroupRequest,
    responses((status = 201, body = lanyard_core::model::Group), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
async fn create_group<R: Repo>(
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
async fn update_policy<R: Repo>(
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

/// A card session as the API shows it (no ticket hash).
#[derive(Serialize, utoipa::ToSchema)]
struct JobView {
    id: lanyard_core::ids::JobId,
    device: DeviceId,
    #[schema(value_type = String)]
    kind: lanyard_core::model::JobKind,
    #[schema(value_type = String)]
    state: lanyard_core::model::JobState,
    /// The step log, oldest first.
    #[schema(value_type = Vec<Object>)]
    steps: Vec<lanyard_core::model::JobStep>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: time::OffsetDateTime,
}

impl From<lanyard_core::model::Job> for JobView {
    fn from(j: lanyard_core::model::Job) -> Self {
        Self {
            id: j.id,
            device: j.device,
            kind: j.kind,
            state: j.state,
            steps: j.steps,
            created_at: j.created_at,
            updated_at: j.updated_at,
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BeginIssuanceRequest {
    /// `smart_card` or `usb_key`.
    kind: String,
    /// The model the agent reported; the group policy lists the accepted ones.
    model: String,
    #[serde(default)]
    serial: Option<String>,
}

/// A started card session: the device, the job and the one-time ticket for the agent.
#[derive(Serialize, utoipa::ToSchema)]
struct StartedJob {
    device: Device,
    job: JobView,
    /// Hand this to the agent (`x-lanyard-ticket`); it works once, for 10 minutes.
    ticket: String,
}

fn job_id(raw: &str) -> Result<lanyard_core::ids::JobId, ApiError> {
    raw.parse().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{e}")))
}

fn issuance_enabled<R>(s: &AppState<R>) -> Result<(), ApiError> {
    crate::issuance::config(s).map(drop)
}

#[utoipa::path(post, path = "/api/v1/issuance", tag = "issuance", request_body = BeginIssuanceRequest,
    responses((status = 201, body = StartedJob), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
/// A cardholder starts issuing a card they hold in a reader: the policy is checked (may add a
/// device, how many, which models), the device and job are created, and a ticket is returned.
async fn begin_issuance<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    body: Result<Json<BeginIssuanceRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let me = auth.principal.self_service()?;
    issuance_enabled(&s)?;
    let Json(req) = body?;
    let kind = req.kind.trim().parse().map_err(|e| ApiError::bad_request(format!("kind: {e}")))?;
    let card = lanyard_core::authz::CardInfo {
        kind,
        model: req.model.trim().to_owned(),
        serial: req.serial.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()),
    };
    let repo = s.repo.as_ref();
    let (device, job) = me.begin_issuance(repo, card).await?;
    let (job, ticket) = me
        .job_ticket(repo, job.id, lanyard_core::authz::TicketPurpose::Run, crate::issuance::TICKET_TTL)
        .await?;
    let ticket = crate::issuance::ticket_string(job.id, &ticket);
    Ok((StatusCode::CREATED, Json(StartedJob { device, job: job.into(), ticket })).into_response())
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "issuance", params(("id" = String, Path, description = "job id")),
    responses((status = 200, body = JobView), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
/// A card session: operators see any; a holder sees those of their own devices.
async fn job<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = job_id(&id)?;
    let repo = s.repo.as_ref();
    let job = match auth.principal.operator() {
        Ok(op) => op.job(repo, id).await?,
        Err(_) => auth.principal.self_service()?.job(repo, id).await?,
    };
    Ok(Json(job.into()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TicketRequest {
    /// `run` (start or resume; the default) or `rollback` (reset the card of a failed job).
    #[serde(default)]
    purpose: Option<String>,
}

/// A new agent ticket for a job.
#[derive(Serialize, utoipa::ToSchema)]
struct JobTicket {
    job: JobView,
    ticket: String,
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/ticket", tag = "issuance", params(("id" = String, Path, description = "job id")),
    request_body = TicketRequest,
    responses((status = 200, body = JobTicket), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
/// A new one-time agent ticket to start, resume or roll back a job.
async fn job_ticket<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<TicketRequest>, JsonRejection>,
) -> Result<Json<JobTicket>, ApiError> {
    use lanyard_core::authz::TicketPurpose;
    issuance_enabled(&s)?;
    let id = job_id(&id)?;
    let Json(req) = body?;
    let purpose = match req.purpose.as_deref().map(str::trim) {
        None | Some("run") => TicketPurpose::Run,
        Some("rollback") => TicketPurpose::Rollback,
        Some(other) => {
            return Err(ApiError::bad_request(format!("purpose: {other:?} (expected run or rollback)")));
        }
    };
    let repo = s.repo.as_ref();
    let ttl = crate::issuance::TICKET_TTL;
    let (job, ticket) = match auth.principal.operator() {
        Ok(op) => op.job_ticket(repo, id, purpose, ttl).await?,
        Err(_) => auth.principal.self_service()?.job_ticket(repo, id, purpose, ttl).await?,
    };
    let ticket = crate::issuance::ticket_string(job.id, &ticket);
    Ok(Json(JobTicket { job: job.into(), ticket }))
}

/// An activated card and its initial PIN, shown this once.
#[derive(Serialize, utoipa::ToSchema)]
struct Activated {
    device: Device,
    initial_pin: String,
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/activate", tag = "devices", params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = Activated), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
/// Operators activate a Pending card whose holder never changed the PIN, and receive its initial
/// PIN once (audited) to deliver it.
async fn activate<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Activated>, ApiError> {
    let op = auth.principal.operator()?;
    let cfg = crate::issuance::config(&s)?;
    let (device, pin) =
        op.activate_and_reveal_initial_pin(s.repo.as_ref(), device_id(&id)?, &cfg.kek).await?;
    Ok(Json(Activated { device, initial_pin: pin.expose_secret().to_owned() }))
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/revoke", tag = "devices", params(("id" = String, Path, description = "device id")),
    request_body = RevokeRequest,
    responses((status = 200, body = Device), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
/// Revokes a device with an RFC 5280 reason: every certificate on it is revoked with it, and so
/// are the derived credentials that depend on it.
async fn revoke_device<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<RevokeRequest>, JsonRejection>,
) -> Result<Json<Device>, ApiError> {
    let op = auth.principal.operator()?;
    let id = device_id(&id)?;
    let Json(req) = body?;
    let reason = req.reason.parse::<RevocationReason>().map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(op.revoke_device(s.repo.as_ref(), id, reason).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct MarkRequest {
    /// `lost`, `stolen` or `damaged`.
    condition: String,
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/mark", tag = "devices", params(("id" = String, Path, description = "device id")),
    request_body = MarkRequest,
    responses((status = 200, body = Device), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
/// Marks a device lost, stolen or damaged: it is revoked with the matching reason.
async fn mark_device<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<MarkRequest>, JsonRejection>,
) -> Result<Json<Device>, ApiError> {
    let op = auth.principal.operator()?;
    let id = device_id(&id)?;
    let Json(req) = body?;
    let repo = s.repo.as_ref();
    let device = match req.condition.trim() {
        "lost" => op.mark_device_lost(repo, id).await?,
        "stolen" => op.mark_device_stolen(repo, id).await?,
        "damaged" => op.mark_device_damaged(repo, id).await?,
        other => {
            return Err(ApiError::bad_request(format!(
                "condition: {other:?} (expected lost, stolen or damaged)"
            )));
        }
    };
    Ok(Json(device))
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/terminate", tag = "devices", params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = Device), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
/// Retires a device (its certificates are revoked, reason cessationOfOperation); a terminated
/// card may then be wiped and recycled.
async fn terminate_device<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Device>, ApiError> {
    let op = auth.principal.operator()?;
    Ok(Json(op.terminate_device(s.repo.as_ref(), device_id(&id)?).await?))
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/recycle", tag = "devices", params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = Device), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
/// Returns a terminated or failed card to unowned stock; its stored card secrets are discarded.
async fn recycle_device<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Device>, ApiError> {
    let op = auth.principal.operator()?;
    Ok(Json(op.recycle_device(s.repo.as_ref(), device_id(&id)?).await?))
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/unlock", tag = "issuance", params(("id" = String, Path, description = "device id")),
    responses((status = 201, body = JobTicket), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
/// Starts unblocking a card's PIN (operators: any card; holders: their own). The agent at the
/// card redeems the ticket; the server sends RESET RETRY COUNTER's PUK, the holder types the new
/// PIN at the agent.
async fn unlock_pin<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    issuance_enabled(&s)?;
    let id = device_id(&id)?;
    let repo = s.repo.as_ref();
    let ttl = crate::issuance::TICKET_TTL;
    let (job, ticket) = match auth.principal.operator() {
        Ok(op) => op.start_unlock(repo, id, ttl).await?,
        Err(_) => auth.principal.self_service()?.start_unlock(repo, id, ttl).await?,
    };
    let ticket = crate::issuance::ticket_string(job.id, &ticket);
    Ok((StatusCode::CREATED, Json(JobTicket { job: job.into(), ticket })).into_response())
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/wipe", tag = "issuance", params(("id" = String, Path, description = "device id")),
    responses((status = 201, body = JobTicket), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
/// Operators start wiping a terminated or failed card: the agent at the card resets it (after the
/// server checks its CHUID is this device's) and the device returns to stock.
async fn wipe_device<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let op = auth.principal.operator()?;
    issuance_enabled(&s)?;
    let (job, ticket) = op.start_wipe(s.repo.as_ref(), device_id(&id)?, crate::issuance::TICKET_TTL).await?;
    let ticket = crate::issuance::ticket_string(job.id, &ticket);
    Ok((StatusCode::CREATED, Json(JobTicket { job: job.into(), ticket })).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReplaceRequest {
    /// Why the old card goes (an RFC 5280 reason name, e.g. `superseded`, `key_compromise`).
    reason: String,
    /// The new card: `smart_card` or `usb_key`.
    kind: String,
    model: String,
    #[serde(default)]
    serial: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/replace", tag = "issuance", params(("id" = String, Path, description = "the card being replaced")),
    request_body = ReplaceRequest,
    responses((status = 201, body = StartedJob), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
/// Operators replace a holder's card: the old one is revoked, a new one starts issuance with a
/// `replaces` link, and the ticket goes to the agent at the new card.
async fn replace_device<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<ReplaceRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let op = auth.principal.operator()?;
    issuance_enabled(&s)?;
    let old = device_id(&id)?;
    let Json(req) = body?;
    let reason =
        req.reason.parse::<RevocationReason>().map_err(|e| ApiError::bad_request(format!("reason: {e}")))?;
    let kind = req.kind.trim().parse().map_err(|e| ApiError::bad_request(format!("kind: {e}")))?;
    let card = lanyard_core::authz::CardInfo {
        kind,
        model: req.model.trim().to_owned(),
        serial: req.serial.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()),
    };
    let (device, job, ticket) =
        op.replace_device(s.repo.as_ref(), old, reason, card, crate::issuance::TICKET_TTL).await?;
    let ticket = crate::issuance::ticket_string(job.id, &ticket);
    Ok((StatusCode::CREATED, Json(StartedJob { device, job: job.into(), ticket })).into_response())
}
