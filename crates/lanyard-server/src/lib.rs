//! `lanyard-server`: the HTTP layer. Only this crate knows HTTP: handlers turn requests into
//! calls on the domain (`lanyard-core`) and the CA (`lanyard-ca`) and map their errors to
//! responses once, without leaking internals (a generic message and the operation id).
//!
//! It serves the JSON API under `/api/v1` (login, sessions and API tokens in [`auth`], the
//! routes in [`api`]), the web portal under `/portal` ([`portal`]) and the PKI endpoints: CA certificates, the CRL and the OCSP responder.

pub mod api;
pub mod auth;
pub mod bootstrap;
pub mod cluster;
pub mod install;
pub mod issuance;
pub mod link;
pub mod openapi;
pub mod pki;
pub mod portal;
pub mod portal_pin;
pub mod revocation;
pub mod scep;
pub mod tls;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use lanyard_ca::{CertStatus, CrlParams, ParsedOcspRequest};
use lanyard_core::clock::Clock;
use lanyard_core::ids::InstanceId;
use lanyard_core::repo::{Repo, StoreError};
use lanyard_issuance::rules::serial_hex;
use std::sync::Arc;
use time::OffsetDateTime;

pub use pki::{Pki, PkiError};

/// Seconds a client is asked to wait after the database stayed busy through every retry.
const BUSY_RETRY_AFTER: u64 = 1;
/// OCSP requests larger than this are not read.
const MAX_OCSP_REQUEST: usize = 16 * 1024;

/// Everything the handlers share.
pub struct AppState<R> {
    pub repo: Arc<R>,
    pub pki: Arc<Pki>,
    pub clock: Arc<dyn Clock>,
    /// OCSP and CRL caches, keyed on the revocation epoch.
    pub revocation: Arc<revocation::Revocation>,
    throttle: auth::LoginThrottle,
    /// Card issuance (key-encryption key, attestation roots); `None`: issuance routes answer 503.
    pub issuance: Option<Arc<issuance::IssuanceConfig>>,
    /// This server process, as the owner of the card-session leases it takes: random for each
    /// `AppState::new`, so a restarted server never claims its previous life's sessions.
    pub instance: InstanceId,
    /// The server's public base URL, for links it hands out (`lanyard://pair?server=…`); `None`:
    /// such links are left out.
    pub public_url: Option<Arc<str>>,
    /// The agents whose link is connected to this process.
    pub links: Arc<link::AgentLinks>,
    /// New PINs typed in the portal, on their way to card sessions.
    pub pins: Arc<portal_pin::PinDesk>,
    /// The app enrolment protocol's attestation roots.
    pub mobile: Arc<api::mobile::MobileConfig>,
    /// Refused enrolment codes per source address.
    mobile_throttle: auth::LoginThrottle,
}

impl<R> Clone for AppState<R> {
    fn clone(&self) -> Self {
        Self {
            repo: Arc::clone(&self.repo),
            pki: Arc::clone(&self.pki),
            clock: Arc::clone(&self.clock),
            revocation: Arc::clone(&self.revocation),
            throttle: self.throttle,
            issuance: self.issuance.clone(),
            instance: self.instance,
            public_url: self.public_url.clone(),
            links: Arc::clone(&self.links),
            pins: Arc::clone(&self.pins),
            mobile: Arc::clone(&self.mobile),
            mobile_throttle: self.mobile_throttle,
        }
    }
}

impl<R> AppState<R> {
    pub fn new(repo: Arc<R>, pki: Arc<Pki>, clock: Arc<dyn Clock>) -> Self {
        let shards = pki.issuing.urls().crl_shards;
        Self {
            repo,
            pki,
            clock,
            revocation: Arc::new(revocation::Revocation::new(shards, revocation::DEFAULT_OCSP_CACHE_ENTRIES)),
            throttle: auth::LoginThrottle::default(),
            issuance: None,
            instance: InstanceId::new(),
            public_url: None,
            links: Arc::new(link::AgentLinks::default()),
            pins: Arc::new(portal_pin::PinDesk::default()),
            mobile: Arc::new(api::mobile::MobileConfig::default()),
            mobile_throttle: auth::LoginThrottle::new(
                api::mobile::THROTTLE_SCOPE,
                api::mobile::MAX_CODE_FAILURES,
                api::mobile::CODE_FAILURE_WINDOW,
            ),
        }
    }

    /// Sets the roots phone key attestations must chain to (the app enrolment protocol).
    pub fn with_mobile(mut self, config: api::mobile::MobileConfig) -> Self {
        self.mobile = Arc::new(config);
        self
    }

    /// Names the server's public base URL (as clients reach it) for the links it hands out.
    pub fn with_public_url(mut self, url: &str) -> Self {
        self.public_url = Some(Arc::from(url.trim_end_matches('/')));
        self
    }

    /// The same server under another instance id (tests play several servers on one database).
    pub fn with_instance(mut self, instance: InstanceId) -> Self {
        self.instance = instance;
        self
    }

    /// Enables card issuance.
    pub fn with_issuance(mut self, config: issuance::IssuanceConfig) -> Self {
        self.issuance = Some(Arc::new(config));
        self
    }
}

impl<R: Repo + 'static> AppState<R> {
    /// PINs typed in the portal reach a card session on any server sharing the database
    /// ([`cluster::DbPins`], `docs/deployment.md`); needs issuance enabled first (the
    /// key-encryption key seals them on their way).
    pub fn with_shared_pins(mut self) -> Self {
        if let Some(cfg) = &self.issuance {
            let relay =
                cluster::DbPins::new(Arc::clone(&self.repo), Arc::clone(&self.clock), Arc::clone(cfg));
            self.pins = Arc::new(portal_pin::PinDesk::with_relay(Arc::new(relay)));
        }
        self
    }
}

/// A request's operation id: in the tracing span, the `x-operation-id` response header, audit
/// events and error bodies.
#[derive(Debug, Clone)]
pub struct OperationId(pub String);

tokio::task_local! {
    /// The operation id of the request being handled, so an [`ApiError`] built anywhere in a
    /// handler can name it in its body.
    static CURRENT_OPERATION: String;
}

/// An error answered to a client: a status and a message safe to show, as JSON
/// `{"error": …, "operation_id": …}`. Server faults are logged with the detail and answered with
/// a generic message; the operation id connects the two.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
    /// Made from [`StoreError::Retryable`]: a unit of work run through
    /// [`lanyard_core::repo::retry`] in the server may run again.
    retryable: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), retry_after: None, retryable: false }
    }

    fn internal(what: &str, detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "{what}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, format!("internal error while {what}"))
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 429 with a `Retry-After` of `seconds`.
    pub fn too_many_requests(message: impl Into<String>, seconds: u64) -> Self {
        Self { retry_after: Some(seconds), ..Self::new(StatusCode::TOO_MANY_REQUESTS, message) }
    }

    /// What went wrong, in the words the client is told.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::new(StatusCode::NOT_FOUND, "not found"),
            StoreError::Conflict(m) => Self::new(StatusCode::CONFLICT, format!("conflict: {m}")),
            StoreError::Stale(_) => Self::new(
                StatusCode::CONFLICT,
                "conflict: the record changed meanwhile; reload and try again",
            ),
            StoreError::Retryable(_) => {
                // Retries already ran out (`lanyard_core::repo::retry`): the database is busy,
                // not broken, and the request changed nothing.
                tracing::warn!(error = %e, "the database stayed busy");
                Self {
                    retry_after: Some(BUSY_RETRY_AFTER),
                    retryable: true,
                    ..Self::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the database is busy with concurrent changes; nothing was changed, try again",
                    )
                }
            }
            StoreError::ReadOnly(_) | StoreError::Backend(_) => Self::internal("using the database", e),
        }
    }
}

impl lanyard_core::repo::MaybeRetryable for ApiError {
    fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl From<lanyard_core::DomainError> for ApiError {
    fn from(e: lanyard_core::DomainError) -> Self {
        use lanyard_core::DomainError as D;
        let status = match &e {
            D::Store(s) => return s.clone().into(),
            D::Secrets(_) | D::AuditChain(_) => {
                return Self::internal("handling secrets or the audit log", e);
            }
            D::NotFound { .. } => StatusCode::NOT_FOUND,
            D::Forbidden(_) | D::PolicyDenied(_) => StatusCode::FORBIDDEN,
            D::Lifecycle(_) | D::Conflict(_) | D::Job(_) => StatusCode::CONFLICT,
            D::Validation(_) | D::InvalidPolicy(_) | D::Enrollment(_) => StatusCode::BAD_REQUEST,
        };
        Self::new(status, e.to_string())
    }
}

impl From<lanyard_issuance::EnrolError> for ApiError {
    fn from(e: lanyard_issuance::EnrolError) -> Self {
        use lanyard_issuance::IssuanceError as I;
        match e {
            lanyard_issuance::EnrolError::Domain(d) => d.into(),
            lanyard_issuance::EnrolError::Rules(r @ I::DeviceState { .. }) => {
                Self::new(StatusCode::CONFLICT, r.to_string())
            }
            lanyard_issuance::EnrolError::Rules(r @ (I::FascN(_) | I::Ca(_))) => {
                Self::internal("signing the certificate", r)
            }
            lanyard_issuance::EnrolError::Rules(r) => Self::bad_request(r.to_string()),
        }
    }
}

impl From<lanyard_core::Forbidden> for ApiError {
    fn from(e: lanyard_core::Forbidden) -> Self {
        Self::new(StatusCode::FORBIDDEN, e.to_string())
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        Self::bad_request(format!("invalid JSON body: {}", e.body_text()))
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> Self {
        Self::bad_request(format!("invalid query string: {}", e.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let operation_id = CURRENT_OPERATION.try_with(Clone::clone).ok();
        let body = serde_json::json!({"error": self.message, "operation_id": operation_id});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&seconds.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

async fn operation_id(mut req: Request, next: Next) -> Response {
    let id = uuid::Uuid::new_v4().to_string();
    req.extensions_mut().insert(OperationId(id.clone()));
    let span = tracing::info_span!("request", op = %id, method = %req.method(), path = %req.uri().path());
    let mut resp = {
        let _enter = span.enter();
        tracing::debug!("start");
        drop(_enter);
        CURRENT_OPERATION.scope(id.clone(), next.run(req)).await
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-operation-id", v);
    }
    if resp.status().is_server_error() {
        tracing::warn!(op = %id, status = %resp.status(), "request failed");
    }
    resp
}

/// The application's routes.
pub fn router<R: Repo + 'static>(state: AppState<R>) -> Router {
    Router::new()
        .merge(api::routes())
        .route("/api/v1/openapi.json", get(openapi_document))
        .route(lanyard_protocol::CONNECT_PATH, get(issuance::connect::<R>))
        .route(lanyard_protocol::link::LINK_PATH, get(link::connect::<R>))
        .merge(pki_routes())
        .merge(scep::routes())
        .merge(portal::routes())
        .layer(middleware::from_fn(operation_id))
        .merge(ocsp_routes())
        .with_state(state)
}

/// Only the PKI publication points (CA certificates, CRL, OCSP), for a plain-HTTP listener:
/// relying parties fetch these while validating certificates, often before they can do TLS.
pub fn pki_router<R: Repo + 'static>(state: AppState<R>) -> Router {
    Router::new()
        .merge(pki_routes())
        .layer(middleware::from_fn(operation_id))
        .merge(ocsp_routes())
        .with_state(state)
}

/// The OCSP responder, outside the operation-id middleware: relying parties ask it far more
/// often than anything else is asked, its answers are OCSP responses rather than API errors,
/// and a UUID, a tracing span and a task-local per answer were a measurable share of its cost
/// (`docs/revocation.md`). A server fault is still logged, with the request's path.
fn ocsp_routes<R: Repo + 'static>() -> Router<AppState<R>> {
    Router::new()
        .route(
            "/pki/ocsp",
            axum::routing::post(ocsp_post::<R>).layer(DefaultBodyLimit::max(MAX_OCSP_REQUEST)),
        )
        .route("/pki/ocsp/{*request}", get(ocsp_get::<R>))
}

fn pki_routes<R: Repo + 'static>() -> Router<AppState<R>> {
    Router::new()
        .route("/pki/root.crt", get(root_certificate::<R>))
        .route("/pki/ca.crt", get(issuing_certificate::<R>))
        .route("/pki/crl", get(crl::<R>))
        .route("/pki/crl/{shard}", get(crl_shard::<R>))
        .route("/pki/root.crl", get(root_crl::<R>))
}

/// The API's OpenAPI document; public, like the API's shape itself.
async fn openapi_document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi::document()).into_response()
}

fn der_response(content_type: &'static str, der: impl Into<axum::body::Body>) -> Response {
    let body: axum::body::Body = der.into();
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

async fn root_certificate<R: Repo>(State(s): State<AppState<R>>) -> Response {
    der_response("application/pkix-cert", s.pki.root.certificate_der().to_vec())
}

async fn issuing_certificate<R: Repo>(State(s): State<AppState<R>>) -> Response {
    der_response("application/pkix-cert", s.pki.issuing.certificate_der().to_vec())
}

async fn crl<R: Repo + 'static>(State(s): State<AppState<R>>) -> Result<Response, ApiError> {
    // The cached bytes themselves: a CRL of a million entries is about 45 MB.
    Ok(der_response("application/pkix-crl", current_crl(&s).await?))
}

/// One partition of the CRL (`/pki/crl/{n}`), for certificates whose cRLDistributionPoints name it.
async fn crl_shard<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    Path(shard): Path<String>,
) -> Result<Response, ApiError> {
    let n: u16 = shard.parse().map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "no such CRL partition"))?;
    let crl = crl_of(&s, revocation::CrlScope::Shard(n)).await?;
    Ok(der_response("application/pkix-crl", crl.der))
}

/// The issuing CA's current full CRL (rebuilt when the revocation epoch moved or half its
/// validity passed), for `/pki/crl` and SCEP GetCRL.
pub(crate) async fn current_crl<R: Repo + 'static>(s: &AppState<R>) -> Result<Bytes, ApiError> {
    Ok(crl_of(s, revocation::CrlScope::Full).await?.der)
}

async fn crl_of<R: Repo + 'static>(
    s: &AppState<R>,
    scope: revocation::CrlScope,
) -> Result<revocation::CachedCrl, ApiError> {
    let clock = Arc::clone(&s.clock);
    s.revocation.crl(&s.repo, &s.pki, scope, move || clock.now()).await.map_err(|e| match e {
        revocation::CrlError::NoSuchShard => ApiError::new(StatusCode::NOT_FOUND, "no such CRL partition"),
        revocation::CrlError::Store(e) => e.into(),
        revocation::CrlError::Sign(e) => ApiError::internal("signing the CRL", e),
    })
}

/// How long the root's CRL stays valid. The root only ever certifies the issuing CA, which
/// Lanyard does not revoke, so the list is empty; it is re-signed on request.
const ROOT_CRL_VALIDITY: time::Duration = time::Duration::days(7);

/// The CRL the issuing CA's certificate points to: signed by the root, numbered from the
/// database like the issuing CA's.
async fn root_crl<R: Repo>(State(s): State<AppState<R>>) -> Result<Response, ApiError> {
    let now = s.clock.now();
    let floor = u64::try_from(now.unix_timestamp_nanos() / 1000).unwrap_or(0);
    let number = lanyard_core::repo::retry(s.repo.as_ref(), || async {
        use lanyard_core::repo::prelude::*;
        let mut tx = s.repo.begin().await?;
        let n = tx.next_crl_number("root", floor).await?;
        tx.commit().await?;
        Ok::<_, StoreError>(n)
    })
    .await?;
    let der = s
        .pki
        .root
        .build_crl(&[], &CrlParams { number, this_update: now, next_update: now + ROOT_CRL_VALIDITY })
        .map_err(|e| ApiError::internal("signing the root CRL", e))?;
    Ok(der_response("application/pkix-crl", der))
}

/// An OCSP answer over HTTP. Pre-signed answers carry RFC 5019 §6 caching headers that make any
/// HTTP cache revalidate every time (`max-age=0, must-revalidate`, with an ETag and
/// Last-Modified): a revocation must show in the very next answer, so no cache may keep serving
/// "good" on its own; revalidation is a cheap 304 from the pre-signed cache.
async fn answer_ocsp<R: Repo + 'static>(
    s: &AppState<R>,
    request: Bytes,
    if_none_match: Option<&HeaderValue>,
) -> Result<Response, ApiError> {
    let parsed = match ParsedOcspRequest::parse(&request) {
        Ok(parsed) => parsed,
        Err(malformed) => return Ok(der_response("application/ocsp-response", malformed)),
    };
    let (responder, generation) = s.pki.ocsp.current();
    if !parsed.has_nonce() {
        let epoch = s.revocation.epoch.fresh(&s.repo).await?;
        if let Some(hit) = s.revocation.cached_ocsp(&request, epoch, generation, s.clock.now()) {
            return Ok(presigned_response(&hit, if_none_match));
        }
    }
    let (epoch, statuses, unknown) = revocation::lookup(s.repo.as_ref(), &parsed, &responder).await?;
    let now = s.clock.now();
    let der = responder.respond_to(
        &parsed,
        |id| statuses.get(&serial_hex(id.serial_number.as_bytes())).copied().unwrap_or(CertStatus::Unknown),
        now,
    );
    let signed = lanyard_ca::ocsp::response_status(&der) == Some(x509_ocsp::OcspResponseStatus::Successful);
    if parsed.has_nonce() || unknown || !signed {
        return Ok(der_response("application/ocsp-response", der));
    }
    let this_update = now.replace_nanosecond(0).unwrap_or(now);
    let etag = {
        use sha2::Digest;
        format!("\"{}\"", hex::encode(&sha2::Sha256::digest(&der)[..16]))
    };
    let entry = Arc::new(revocation::Presigned {
        der: Bytes::from(der),
        this_update,
        refresh_at: this_update + responder.next_update_in() / 2,
        headers: presigned_headers(&etag, this_update),
        etag,
    });
    s.revocation.store_ocsp(request, epoch, generation, Arc::clone(&entry));
    Ok(presigned_response(&entry, None))
}

/// The headers of a pre-signed answer (RFC 5019 §6): made once per answer, cloned per request.
fn presigned_headers(etag: &str, this_update: OffsetDateTime) -> axum::http::HeaderMap {
    let mut headers = axum::http::HeaderMap::with_capacity(4);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/ocsp-response"));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, no-transform, max-age=0, must-revalidate"),
    );
    if let Ok(v) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&http_date(this_update)) {
        headers.insert(header::LAST_MODIFIED, v);
    }
    headers
}

fn presigned_response(entry: &revocation::Presigned, if_none_match: Option<&HeaderValue>) -> Response {
    let mut headers = entry.headers.clone();
    if if_none_match
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim().trim_start_matches("W/") == entry.etag))
    {
        headers.remove(header::CONTENT_TYPE);
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    let mut resp = Response::new(axum::body::Body::from(entry.der.clone()));
    *resp.headers_mut() = headers;
    resp
}

/// An HTTP-date (RFC 9110 §5.6.7): `Fri, 04 Dec 2026 22:47:12 GMT`.
fn http_date(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let day =
        ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][usize::from(t.weekday().number_days_from_monday())];
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        [usize::from(u8::from(t.month()) - 1)];
    format!(
        "{day}, {:02} {month} {} {:02}:{:02}:{:02} GMT",
        t.day(),
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

async fn ocsp_post<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    answer_ocsp(&s, body, None).await
}

async fn ocsp_get<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    headers: axum::http::HeaderMap,
    Path(request): Path<String>,
) -> Result<Response, ApiError> {
    let engine = base64::engine::general_purpose::STANDARD;
    let der = engine
        .decode(request.trim_start_matches('/'))
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(request.trim_start_matches('/')))
        .map_err(|_| ApiError::bad_request("the OCSP request in the URL is not base64"))?;
    if der.len() > MAX_OCSP_REQUEST {
        return Err(ApiError::bad_request("OCSP request too large"));
    }
    answer_ocsp(&s, Bytes::from(der), headers.get(header::IF_NONE_MATCH)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_core::repo::MaybeRetryable;

    #[test]
    fn a_database_busy_through_every_retry_is_503_with_retry_after() {
        let e = ApiError::from(StoreError::Retryable("could not serialize access".into()));
        assert!(e.is_retryable());
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("1"));
        let e = ApiError::from(lanyard_core::DomainError::Store(StoreError::Retryable("x".into())));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn uniqueness_stays_409_and_a_refused_write_is_a_server_fault() {
        let e = ApiError::from(StoreError::Conflict("users.username already exists".into()));
        assert_eq!(e.status(), StatusCode::CONFLICT);
        assert!(!e.is_retryable());
        let e = ApiError::from(StoreError::ReadOnly("INSERT INTO groups …".into()));
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.message.contains("INSERT"), "internals are not shown");
    }
}
