//! The loopback API the portal's pages call (`lanyard agent serve`): list cards, start a
//! session, follow it, hand it the new PIN.
//!
//! Any web page can make a browser send requests to 127.0.0.1, so every request must carry an
//! `Origin` equal to the configured portal origin (otherwise 403), CORS answers name only that
//! origin, and a `Host` header that is not a loopback name is refused, which defeats DNS
//! rebinding (a hostile name resolving to 127.0.0.1 would otherwise be same-origin).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lanyard_core::model::PinRules;
use serde::{Deserialize, Serialize};
use serde_json::json;
use zeroize::Zeroizing;

use crate::AgentError;
use crate::cards::ReaderInfo;
use crate::relay::{Outcome, PinPrompt, PinSource, Progress, SessionOptions};

/// What the portal API drives: the real PC/SC agent, or a stand-in in tests.
pub trait Backend: Send + Sync + 'static {
    fn list_cards(&self) -> Result<Vec<ReaderInfo>, AgentError>;
    fn run_session(
        &self,
        opts: &SessionOptions,
        pins: &mut dyn PinSource,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Outcome, AgentError>;
}

/// The PC/SC agent.
pub struct Pcsc;

impl Backend for Pcsc {
    fn list_cards(&self) -> Result<Vec<ReaderInfo>, AgentError> {
        crate::cards::list_cards()
    }
    fn run_session(
        &self,
        opts: &SessionOptions,
        pins: &mut dyn PinSource,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Outcome, AgentError> {
        crate::relay::run_session(opts, pins, progress)
    }
}

/// A session as the page sees it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionView {
    /// `running`, `pin_needed`, `done` or `failed`.
    pub status: &'static str,
    pub events: Vec<Progress>,
    /// While `pin_needed`: the rules, why the last PIN was refused, and how many seconds are
    /// left before the server's deadline (after it the card keeps its initial PIN).
    pub pin_rules: Option<PinRules>,
    pub pin_rejected: Option<String>,
    pub pin_seconds_left: Option<u64>,
    /// When the server's deadline for the PIN passes; `pin_seconds_left` is computed from it.
    #[serde(skip)]
    pin_deadline: Option<Instant>,
    pub outcome: Option<Outcome>,
    pub error: Option<String>,
}

#[derive(Default)]
struct Slot {
    view: Mutex<SessionView>,
    /// The page's answer to a PIN request: `Some(None)` declines.
    pin: Mutex<Option<Option<Zeroizing<String>>>>,
    pin_ready: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Hands the relay the PIN the page posts.
struct PagePin(Arc<Slot>);

impl PinSource for PagePin {
    /// Waits for the page until the server's deadline; past it the relay keeps the initial PIN.
    fn new_pin(&mut self, prompt: &PinPrompt<'_>) -> Result<Option<Zeroizing<String>>, AgentError> {
        // A PIN posted after an earlier request timed out must not answer this one.
        *lock(&self.0.pin) = None;
        {
            let mut v = lock(&self.0.view);
            v.status = "pin_needed";
            v.pin_rules = Some(*prompt.rules);
            v.pin_rejected = prompt.rejected.map(ToString::to_string);
            v.pin_deadline = Some(prompt.deadline);
        }
        let guard = lock(&self.0.pin);
        let (mut answer, timeout) = self
            .0
            .pin_ready
            .wait_timeout_while(guard, prompt.time_left(), |a| a.is_none())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut v = lock(&self.0.view);
        v.status = "running";
        v.pin_rules = None;
        v.pin_deadline = None;
        if timeout.timed_out() {
            return Ok(None);
        }
        Ok(answer.take().flatten())
    }
}

/// Sessions the agent keeps at once (running, or finished and not yet forgotten).
const MAX_SESSIONS: usize = 16;

struct Inner {
    origin: String,
    backend: Arc<dyn Backend>,
    sessions: Mutex<HashMap<String, Arc<Slot>>>,
}

#[derive(Clone)]
pub struct PortalState(Arc<Inner>);

impl PortalState {
    /// `origin` is the portal's origin exactly as browsers send it, e.g. `https://portal.example`.
    pub fn new(origin: impl Into<String>, backend: Arc<dyn Backend>) -> Self {
        Self(Arc::new(Inner {
            origin: origin.into().trim_end_matches('/').to_owned(),
            backend,
            sessions: Mutex::new(HashMap::new()),
        }))
    }
}

/// Whether a `Host` header names this machine's loopback interface.
pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn forbidden(why: &str) -> Response {
    (StatusCode::FORBIDDEN, Json(json!({"error": why}))).into_response()
}

async fn guard(State(state): State<PortalState>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if !is_loopback_host(host) {
        return forbidden("the agent answers only to a loopback Host");
    }
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if origin != Some(state.0.origin.as_str()) {
        return forbidden("the request's Origin is not the configured portal");
    }
    let allow = HeaderValue::from_str(&state.0.origin).ok();
    let mut response = if request.method() == Method::OPTIONS {
        let private = headers.contains_key("access-control-request-private-network");
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST"));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("content-type"));
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        if private {
            h.insert("access-control-allow-private-network", HeaderValue::from_static("true"));
        }
        r
    } else {
        next.run(request).await
    };
    let h: &mut HeaderMap = response.headers_mut();
    if let Some(allow) = allow {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    }
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The loopback API, every route behind the Host and Origin checks.
pub fn router(state: PortalState) -> Router {
    Router::new()
        .route("/v1/readers", get(readers))
        .route("/v1/sessions", post(start))
        .route("/v1/sessions/{id}", get(view))
        .route("/v1/sessions/{id}/pin", post(pin))
        .fallback(|| async { (StatusCode::NOT_FOUND, Json(json!({"error": "no such endpoint"}))) })
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

async fn readers(State(state): State<PortalState>) -> Response {
    let backend = state.0.backend.clone();
    match tokio::task::spawn_blocking(move || backend.list_cards()).await {
        Ok(Ok(list)) => Json(list).into_response(),
        Ok(Err(e)) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": e.to_string()}))).into_response()
        }
        Err(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": "listing failed"}))).into_response()
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    server: String,
    ticket: Zeroizing<String>,
    reader: String,
    /// PEM trust anchors for the server; the system's roots when absent.
    ca_pem: Option<String>,
}

fn session_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

async fn start(State(state): State<PortalState>, Json(req): Json<StartRequest>) -> Response {
    let mut opts = SessionOptions::new(req.server, String::new(), req.reader);
    opts.ticket = req.ticket;
    opts.ca_pem = req.ca_pem.map(String::into_bytes);
    if let Err(e) = lanyard_protocol::url::parse_server(&opts.server) {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": e.to_string()}))).into_response();
    }
    let id = session_id();
    let slot = Arc::new(Slot::default());
    lock(&slot.view).status = "running";
    {
        let mut sessions = lock(&state.0.sessions);
        if sessions.len() >= MAX_SESSIONS {
            // Forget finished sessions first; the page has had its chance to read them.
            sessions.retain(|_, s| matches!(lock(&s.view).status, "running" | "pin_needed"));
        }
        if sessions.len() >= MAX_SESSIONS {
            let error = format!("{MAX_SESSIONS} card sessions are already in progress");
            return (StatusCode::TOO_MANY_REQUESTS, Json(json!({"error": error}))).into_response();
        }
        sessions.insert(id.clone(), slot.clone());
    }
    let backend = state.0.backend.clone();
    std::thread::spawn(move || {
        let mut pins = PagePin(slot.clone());
        let events = slot.clone();
        let result =
            backend.run_session(&opts, &mut pins, &mut |p| lock(&events.view).events.push(p.clone()));
        let mut v = lock(&slot.view);
        match result {
            Ok(o) => {
                v.status = "done";
                v.outcome = Some(o);
            }
            Err(e) => {
                v.status = "failed";
                v.error = Some(e.to_string());
            }
        }
    });
    (StatusCode::CREATED, Json(json!({"id": id}))).into_response()
}

fn find(state: &PortalState, id: &str) -> Option<Arc<Slot>> {
    lock(&state.0.sessions).get(id).cloned()
}

async fn view(State(state): State<PortalState>, Path(id): Path<String>) -> Response {
    match find(&state, &id) {
        Some(slot) => {
            let mut view = lock(&slot.view).clone();
            view.pin_seconds_left =
                view.pin_deadline.map(|d| d.saturating_duration_since(Instant::now()).as_secs());
            Json(view).into_response()
        }
        None => (StatusCode::NOT_FOUND, Json(json!({"error": "no such session"}))).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PinRequest {
    /// `null` keeps the initial PIN.
    new_pin: Option<Zeroizing<String>>,
}

async fn pin(
    State(state): State<PortalState>,
    Path(id): Path<String>,
    Json(req): Json<PinRequest>,
) -> Response {
    let Some(slot) = find(&state, &id) else {
        return (StatusCode::NOT_FOUND, Json(json!({"error": "no such session"}))).into_response();
    };
    {
        // Checked and flipped in one step, so a page polling right after sees `running` and
        // never the stale `pin_needed` of the request it just answered.
        let mut v = lock(&slot.view);
        if v.status != "pin_needed" {
            return (StatusCode::CONFLICT, Json(json!({"error": "the session is not waiting for a PIN"})))
                .into_response();
        }
        v.status = "running";
        v.pin_rules = None;
        v.pin_rejected = None;
        v.pin_deadline = None;
    }
    *lock(&slot.pin) = Some(req.new_pin);
    slot.pin_ready.notify_all();
    StatusCode::ACCEPTED.into_response()
}
