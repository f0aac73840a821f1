//! Passkeys (WebAuthn): registering one for a security key of mine, signing in with one, listing
//! and removing them. The relying party is the portal's host: its id is the host name of the
//! server's public URL, and the only origin accepted is that URL's (`docs/passkeys.md`).
//!
//! Options and responses use WebAuthn's JSON forms (binary fields as base64url), which browsers
//! read and write with `PublicKeyCredential.parse…OptionsFromJSON` and `credential.toJSON()`.
//! Members a browser adds beyond the ones read here (`authenticatorAttachment`,
//! `clientExtensionResults`, `transports`, …) are ignored.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lanyard_core::DomainError;
use lanyard_core::authz::{
    NewPasskey, PasskeyRefused, PasskeySignIn, PasskeyStatus, Principal, RegistrationStart, SelfService,
};
use lanyard_core::ids::{DeviceId, JobId, PasskeyId, UserId};
use lanyard_core::lifecycle::DeviceState;
use lanyard_core::model::{JobKind, Passkey, PasskeyUserVerification, Session, User};
use lanyard_core::repo::Repo;
use lanyard_core::secrets::TokenHash;
use lanyard_webauthn::{
    ClientData, CoseKey, RelyingParty, UserVerification, b64url, from_b64url, verify_assertion,
    verify_registration,
};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::operation;
use crate::auth::{Auth, SESSION_IDLE, SESSION_TTL, Via, cookie, session_cookie};
use crate::{ApiError, AppState};

/// The cookie that binds a sign-in challenge to the browser that asked for it.
pub const SIGN_IN_COOKIE: &str = "__Host-lanyard_webauthn";
/// How long the browser is given for a ceremony (the challenge lives as long, see
/// [`lanyard_core::model::WEBAUTHN_CHALLENGE_TTL`]).
const CEREMONY_TIMEOUT_MS: u64 = 300_000;
/// What the relying party is called in the browser's dialogs.
const RP_NAME: &str = "Lanyard";

/// The relying party of this server, from its public URL.
pub(crate) fn relying_party<R>(s: &AppState<R>) -> Result<RelyingParty, ApiError> {
    let url = s.public_url.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "passkeys are not available: the server has no public URL (set public_url to its https:// address)",
        )
    })?;
    RelyingParty::from_public_url(url).map_err(|e| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("passkeys are not available: {e}"))
    })
}

/// Whether this request reached the server at the relying party's own origin, where a browser
/// may use its passkeys (the portal hides passkey buttons elsewhere).
pub(crate) fn at_relying_party<R>(s: &AppState<R>, headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    host_is_relying_party(s, host)
}

/// [`at_relying_party`] for a `Host` value already read.
pub(crate) fn host_is_relying_party<R>(s: &AppState<R>, host: &str) -> bool {
    let Ok(rp) = relying_party(s) else { return false };
    crate::portal::origin_authority(&rp.origin).is_some_and(|a| a.eq_ignore_ascii_case(host))
}

fn uv(policy: PasskeyUserVerification) -> UserVerification {
    match policy {
        PasskeyUserVerification::Required => UserVerification::Required,
        PasskeyUserVerification::Preferred => UserVerification::Preferred,
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

fn b64(field: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    from_b64url(text, field).map_err(bad)
}

/// A registration response (`PublicKeyCredential` with an `AuthenticatorAttestationResponse`,
/// as `toJSON()` writes it).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AttestationCredential {
    /// The credential id, base64url.
    raw_id: String,
    #[serde(rename = "type")]
    kind: String,
    response: AttestationResponse,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AttestationResponse {
    /// base64url.
    #[serde(rename = "clientDataJSON")]
    client_data_json: String,
    /// base64url.
    attestation_object: String,
}

/// A sign-in response (`PublicKeyCredential` with an `AuthenticatorAssertionResponse`).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AssertionCredential {
    raw_id: String,
    #[serde(rename = "type")]
    kind: String,
    response: AssertionResponse,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AssertionResponse {
    #[serde(rename = "clientDataJSON")]
    client_data_json: String,
    authenticator_data: String,
    signature: String,
    /// Required: Lanyard's passkeys are discoverable and carry the account's user handle.
    user_handle: Option<String>,
}

/// Options for `navigator.credentials.create` / `.get`, WebAuthn's JSON form.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct CeremonyOptions {
    #[serde(rename = "publicKey")]
    #[schema(value_type = Object)]
    public_key: Value,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegistrationOptionsRequest {
    /// The security key (smart card or USB key, mine) the passkey will live on: Active, or being
    /// issued by my own issuance job while it runs.
    device: DeviceId,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterRequest {
    credential: AttestationCredential,
}

/// A passkey as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct PasskeyBody {
    #[serde(flatten)]
    passkey: Passkey,
    /// The current state of the device it lives on.
    device_state: DeviceState,
    /// Whether it can sign in now (Active, on an Active device of its holder).
    usable: bool,
}

impl From<PasskeyStatus> for PasskeyBody {
    fn from(s: PasskeyStatus) -> Self {
        Self { passkey: s.passkey, device_state: s.device_state, usable: s.usable }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct PasskeySignedIn {
    csrf_token: String,
    user: User,
}

fn session_binding(auth: &Auth) -> Result<TokenHash, ApiError> {
    match auth.via {
        Via::Session(hash) => Ok(hash),
        Via::ApiToken => {
            Err(bad("passkeys are registered from a browser session (the portal), not with an API token"))
        }
    }
}

/// The creation options for `start`.
pub(crate) fn creation_options(rp: &RelyingParty, start: &RegistrationStart) -> Value {
    let exclude: Vec<Value> =
        start.exclude.iter().map(|id| json!({"type": "public-key", "id": b64url(id)})).collect();
    json!({
        "rp": {"id": rp.id, "name": RP_NAME},
        "user": {
            // The account's random id, never its name or e-mail.
            "id": b64url(start.user.id.as_bytes()),
            "name": start.user.username.as_str(),
            "displayName": start.user.display_name,
        },
        "challenge": b64url(&start.challenge),
        "pubKeyCredParams": [{"type": "public-key", "alg": lanyard_webauthn::cose::ES256}],
        "timeout": CEREMONY_TIMEOUT_MS,
        "excludeCredentials": exclude,
        "authenticatorSelection": {
            "residentKey": "required",
            "requireResidentKey": true,
            "userVerification": uv(start.user_verification).as_str(),
        },
        "attestation": "direct",
    })
}

#[utoipa::path(post, path = "/api/v1/me/passkeys/registration-options", tag = "passkeys",
    request_body = RegistrationOptionsRequest,
    responses((status = 200, body = CeremonyOptions, description = "options for navigator.credentials.create; a challenge bound to this session, valid 5 minutes"),
        (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody),
        (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody),
        (status = 503, body = crate::openapi::ErrorBody)))]
/// Starts registering a passkey on one of my Active security keys, or on the key my own running
/// issuance job is issuing (session only).
pub(crate) async fn registration_options<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    body: Result<Json<RegistrationOptionsRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<CeremonyOptions>, ApiError> {
    let Json(req) = body?;
    let rp = relying_party(&s)?;
    let binding = session_binding(&auth)?;
    let me = auth.principal.self_service()?;
    let issuance = waiting_issuance(&s, &me, req.device).await;
    let start = me.start_passkey_registration(s.repo.as_ref(), req.device, binding, issuance).await?;
    Ok(Json(CeremonyOptions { public_key: creation_options(&rp, &start) }))
}

/// Verifies a registration response for the principal's session and records the passkey.
pub(crate) async fn finish_registration<R: Repo>(
    s: &AppState<R>,
    principal: &Principal,
    binding: TokenHash,
    credential: &AttestationCredential,
) -> Result<Passkey, ApiError> {
    let rp = relying_party(s)?;
    if credential.kind != "public-key" {
        return Err(bad(format!("credential type {:?}, expected \"public-key\"", credential.kind)));
    }
    let raw_id = b64("rawId", &credential.raw_id)?;
    let client_data = b64("clientDataJSON", &credential.response.client_data_json)?;
    let attestation = b64("attestationObject", &credential.response.attestation_object)?;
    let cd = ClientData::parse(&client_data).map_err(|e| bad(e.to_string()))?;
    let me = principal.self_service()?;
    let repo = s.repo.as_ref();
    let (device, policy_uv) = me.redeem_registration_challenge(repo, binding, &cd.challenge).await?;
    let reg = match verify_registration(&rp, &cd, &cd.challenge, &attestation, uv(policy_uv)) {
        Ok(reg) => reg,
        Err(e) => {
            me.refuse_registration(repo, device, e.code(), &e.to_string()).await?;
            return Err(bad(format!("the passkey was not registered: {e}")));
        }
    };
    if reg.credential_id != raw_id {
        return Err(bad("rawId differs from the credential id in the authenticator data"));
    }
    let new = NewPasskey {
        credential_id: reg.credential_id,
        rp_id: rp.id,
        public_key: reg.public_key.to_bytes(),
        sign_count: reg.sign_count,
        aaguid: reg.aaguid,
        attestation: reg.attestation.as_str().to_owned(),
    };
    let issuance = waiting_issuance(s, &me, device).await;
    Ok(me.register_passkey(repo, device, &new, issuance).await?)
}

/// The issuance job of my `device` whose card session waits in this server, right now, for the
/// device PIN from the portal (flow B: the passkey step comes just before it), if any. Only this
/// process knows that its session is live; the domain checks the job is mine, of this device and
/// neither failed nor undone. Nothing when the device is not mine (the domain then says
/// NotFound).
async fn waiting_issuance<R: Repo>(s: &AppState<R>, me: &SelfService<'_>, device: DeviceId) -> Option<JobId> {
    let jobs = me.device_jobs(s.repo.as_ref(), device).await.ok()?;
    let job = jobs.iter().rev().find(|j| j.kind == JobKind::Issuance)?;
    let asking = crate::cluster::pin_wanted(s, job.id).await?;
    (asking.fido.is_none() && !asking.current && !asking.verify).then_some(job.id)
}

#[utoipa::path(post, path = "/api/v1/me/passkeys", tag = "passkeys", request_body = RegisterRequest,
    responses((status = 201, body = PasskeyBody, description = "the passkey is registered"),
        (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody),
        (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody),
        (status = 503, body = crate::openapi::ErrorBody)))]
/// Completes a registration started with `registration-options` in the same session.
pub(crate) async fn register<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    body: Result<Json<RegisterRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let binding = session_binding(&auth)?;
    let passkey = finish_registration(&s, &auth.principal, binding, &req.credential).await?;
    // Registered during issuance, the key is not Active yet: say so (read back, not assumed).
    let mine = auth.principal.self_service()?.passkeys(s.repo.as_ref()).await?;
    let body = match mine.into_iter().find(|p| p.passkey.id == passkey.id) {
        Some(status) => PasskeyBody::from(status),
        None => {
            return Err(ApiError::from(DomainError::NotFound {
                kind: "passkey",
                id: passkey.id.to_string(),
            }));
        }
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[utoipa::path(get, path = "/api/v1/me/passkeys", tag = "passkeys",
    responses((status = 200, body = Vec<PasskeyBody>), (status = 401, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody)))]
/// My passkeys, removed ones included, oldest first.
pub(crate) async fn my_passkeys<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
) -> Result<Json<Vec<PasskeyBody>>, ApiError> {
    let list = auth.principal.self_service()?.passkeys(s.repo.as_ref()).await?;
    Ok(Json(list.into_iter().map(PasskeyBody::from).collect()))
}

#[utoipa::path(get, path = "/api/v1/users/{id}/passkeys", tag = "passkeys",
    params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = Vec<PasskeyBody>), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody)))]
/// A user's passkeys (operators).
pub(crate) async fn user_passkeys<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Vec<PasskeyBody>>, ApiError> {
    let id = id.parse::<UserId>().map_err(|e| bad(e.to_string()))?;
    let list = auth.principal.operator()?.passkeys_of_user(s.repo.as_ref(), id).await?;
    Ok(Json(list.into_iter().map(PasskeyBody::from).collect()))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/passkeys", tag = "passkeys",
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = Vec<PasskeyBody>), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
/// The passkeys on a device: operators see any device's, a holder their own (another user's
/// device is 404).
pub(crate) async fn device_passkeys<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Vec<PasskeyBody>>, ApiError> {
    let id = super::device_id(&id)?;
    let repo = s.repo.as_ref();
    let list = match auth.principal.operator() {
        Ok(op) => op.passkeys_of_device(repo, id).await?,
        Err(_) => {
            let me = auth.principal.self_service()?;
            me.device(repo, id).await?;
            me.passkeys(repo).await?.into_iter().filter(|p| p.passkey.device == id).collect()
        }
    };
    Ok(Json(list.into_iter().map(PasskeyBody::from).collect()))
}

#[utoipa::path(delete, path = "/api/v1/passkeys/{id}", tag = "passkeys",
    params(("id" = String, Path, description = "passkey id")),
    responses((status = 200, body = PasskeyBody, description = "removed"), (status = 400, body = crate::openapi::ErrorBody),
        (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
/// Removes a passkey: its holder, or an operator (anyone's). Another user's passkey is 404 for a
/// holder.
pub(crate) async fn remove_passkey<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<PasskeyBody>, ApiError> {
    let id = id.parse::<PasskeyId>().map_err(|e| bad(e.to_string()))?;
    let removed = remove(&s, &auth.principal, id).await?;
    Ok(Json(PasskeyBody { passkey: removed, device_state: DeviceState::Active, usable: false }))
}

/// Removes passkey `id` as an operator when the principal is one, else as its holder.
pub(crate) async fn remove<R: Repo>(
    s: &AppState<R>,
    p: &Principal,
    id: PasskeyId,
) -> Result<Passkey, ApiError> {
    let repo = s.repo.as_ref();
    Ok(match p.operator() {
        Ok(op) => op.remove_passkey(repo, id).await?,
        Err(_) => p.self_service()?.remove_passkey(repo, id).await?,
    })
}

fn set_cookie(resp: &mut Response, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn sign_in_cookie(value: &str, max_age: time::Duration) -> String {
    cookie::Cookie::build((SIGN_IN_COOKIE, value))
        .secure(true)
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .path("/")
        .max_age(max_age)
        .build()
        .to_string()
}

fn same_site(headers: &HeaderMap) -> Result<(), ApiError> {
    if crate::portal::same_site_request(headers) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::FORBIDDEN, "passkey sign-in is accepted from Lanyard's own pages only"))
    }
}

#[utoipa::path(post, path = "/api/v1/passkeys/sign-in/options", tag = "passkeys", security(()),
    responses((status = 200, body = CeremonyOptions, description = "options for navigator.credentials.get; sets a short-lived cookie the challenge is bound to"),
        (status = 403, body = crate::openapi::ErrorBody), (status = 503, body = crate::openapi::ErrorBody)))]
/// Starts a passkey sign-in (no authentication).
pub(crate) async fn sign_in_options<R: Repo>(
    State(s): State<AppState<R>>,
    op: Option<axum::Extension<crate::OperationId>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    same_site(&headers)?;
    let rp = relying_party(&s)?;
    let (binding_secret, binding) =
        lanyard_core::secrets::generate_token(32).map_err(lanyard_core::DomainError::from)?;
    let si = PasskeySignIn::new(s.repo.as_ref(), operation(op.as_ref()), s.clock.now());
    let challenge = si.start(binding).await?;
    let options = json!({
        "challenge": b64url(&challenge),
        "rpId": rp.id,
        "timeout": CEREMONY_TIMEOUT_MS,
        // The account is not known yet; each group's policy is enforced when the answer arrives.
        "userVerification": "preferred",
        "allowCredentials": [],
    });
    let mut resp = Json(CeremonyOptions { public_key: options }).into_response();
    set_cookie(
        &mut resp,
        sign_in_cookie(binding_secret.expose_secret(), lanyard_core::model::WEBAUTHN_CHALLENGE_TTL),
    );
    Ok(resp)
}

#[utoipa::path(post, path = "/api/v1/passkeys/sign-in", tag = "passkeys", security(()),
    request_body = AssertionCredential,
    responses((status = 200, body = PasskeySignedIn, description = "signed in; sets the session cookie"),
        (status = 400, body = crate::openapi::ErrorBody), (status = 401, body = crate::openapi::ErrorBody),
        (status = 403, body = crate::openapi::ErrorBody), (status = 503, body = crate::openapi::ErrorBody)))]
/// Completes a passkey sign-in started with `sign-in/options` in the same browser.
pub(crate) async fn sign_in<R: Repo>(
    State(s): State<AppState<R>>,
    op: Option<axum::Extension<crate::OperationId>>,
    headers: HeaderMap,
    body: Result<Json<AssertionCredential>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    same_site(&headers)?;
    let Json(cred) = body?;
    let user = passkey_sign_in(&s, operation(op.as_ref()), &headers, &cred).await?;
    let (user, secret) = user;
    let secret = secret.expose_secret();
    let body = PasskeySignedIn { csrf_token: Session::csrf_token(secret), user };
    let mut resp = Json(body).into_response();
    set_cookie(&mut resp, session_cookie(secret, SESSION_TTL));
    set_cookie(&mut resp, sign_in_cookie("", time::Duration::ZERO));
    Ok(resp)
}

/// Verifies a sign-in response and starts a session: the user and the new cookie value. Every
/// refusal after the challenge is audited (`passkey.sign_in_refused`).
pub(crate) async fn passkey_sign_in<R: Repo>(
    s: &AppState<R>,
    op: lanyard_core::audit::OperationId,
    headers: &HeaderMap,
    cred: &AssertionCredential,
) -> Result<(User, secrecy::SecretString), ApiError> {
    let rp = relying_party(s)?;
    let binding = cookie(headers, SIGN_IN_COOKIE).map(TokenHash::of).ok_or_else(|| {
        bad("this browser has no passkey sign-in under way (its cookie is missing or expired); start again")
    })?;
    if cred.kind != "public-key" {
        return Err(bad(format!("credential type {:?}, expected \"public-key\"", cred.kind)));
    }
    let raw_id = b64("rawId", &cred.raw_id)?;
    let client_data = b64("clientDataJSON", &cred.response.client_data_json)?;
    let auth_data = b64("authenticatorData", &cred.response.authenticator_data)?;
    let signature = b64("signature", &cred.response.signature)?;
    let user_handle = cred.response.user_handle.as_deref().map(|h| b64("userHandle", h)).transpose()?;
    let now = s.clock.now();
    let si = PasskeySignIn::new(s.repo.as_ref(), op, now);
    let refused = |status: StatusCode, message: String| ApiError::new(status, message);
    let cd = match ClientData::parse(&client_data) {
        Ok(cd) => cd,
        Err(e) => {
            si.refuse(None, &raw_id, e.code(), &e.to_string()).await?;
            return Err(bad(e.to_string()));
        }
    };
    if let Err(e) = si.redeem(binding, &cd.challenge).await {
        si.refuse(None, &raw_id, "challenge", &e.to_string()).await?;
        return Err(e.into());
    }
    let Some(candidate) = si.candidate(&raw_id).await? else {
        let r = PasskeyRefused::Unknown;
        si.refuse(None, &raw_id, r.code(), &r.to_string()).await?;
        return Err(refused(StatusCode::UNAUTHORIZED, r.to_string()));
    };
    if user_handle.as_deref() != Some(candidate.user.id.as_bytes().as_slice()) {
        let r = PasskeyRefused::WrongUserHandle;
        si.refuse(Some(&candidate.passkey), &raw_id, r.code(), &r.to_string()).await?;
        return Err(refused(StatusCode::UNAUTHORIZED, r.to_string()));
    }
    let key = CoseKey::from_bytes(&candidate.passkey.public_key)
        .map_err(|e| ApiError::internal("reading a stored passkey", e))?;
    let policy_uv = uv(candidate.policy.passkey_user_verification);
    let assertion = match verify_assertion(&rp, &cd, &cd.challenge, &auth_data, &signature, &key, policy_uv) {
        Ok(a) => a,
        Err(e) => {
            si.refuse(Some(&candidate.passkey), &raw_id, e.code(), &e.to_string()).await?;
            return Err(refused(StatusCode::UNAUTHORIZED, format!("passkey sign-in refused: {e}")));
        }
    };
    let (session, secret) =
        Session::start(candidate.user.id, SESSION_IDLE, now).map_err(lanyard_core::DomainError::from)?;
    match si.complete(&candidate, assertion.sign_count, &rp.id, &session).await? {
        Ok(user) => Ok((user, secret)),
        Err(r) => Err(refused(StatusCode::FORBIDDEN, format!("passkey sign-in refused: {r}"))),
    }
}
