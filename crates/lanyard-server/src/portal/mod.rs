//! The web portal: server-rendered HTML pages (askama templates in `templates/portal/`) for
//! cardholders, under `/portal`. Every page works as plain links and forms; htmx (vendored,
//! served from the binary) only replaces a fragment where that saves a page load.
//!
//! What every portal response gets, from [`security_headers`]: a strict Content-Security-Policy
//! (no inline script or style, nothing from another origin), `nosniff`, `Referrer-Policy: same-origin` (`no-referrer` would make browsers send
//! `Origin: null` on the portal's own form posts), and
//! `no-store` for every page (assets alone are cacheable, under a versioned or hashed name).
//!
//! Sign-in uses the API's sessions ([`crate::auth::session_auth`]): the same cookie, the same
//! throttle, the same audit events. Every state-changing request is checked twice: its
//! `Origin`/`Sec-Fetch-Site` must name this site ([`same_site_request`], for sign-in too), and
//! it must carry the session's CSRF token, in the form field `csrf_token` or (htmx) the
//! `x-csrf-token` header.
//!
//! One module per group of pages: [`session`] (sign-in, sign-out), [`devices`] (My Devices, a
//! device), [`add_device`] (Add Device through the agent link, a card session's page), [`mobile`] (Add Mobile, the one-time profile link, Delete Mobile), [`workstations`] (paired agents, pairing), [`help`] (troubleshooting).

mod add_device;
mod admin;
mod admin_pki;
pub(crate) mod admin_sign_in;
mod admin_tokens;
mod admin_users;
mod assets;
mod audit;
mod derived;
mod devices;
mod help;
mod job;
mod mobile;
mod mobile_link;
mod operator;
mod operator_cards;
mod passkeys;
mod pin;
mod qr;
mod session;
mod workstations;

use askama::Template;
use axum::Router;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use lanyard_core::repo::Repo;

use crate::auth::{CSRF_HEADER, SessionAuth, session_auth};
use crate::{ApiError, AppState, CURRENT_OPERATION};

/// The one-time profile link, which `POST /api/v1/me/mobile-enrollments` answers too.
pub(crate) use mobile::profile_link;

/// The Content-Security-Policy of every portal response: scripts, styles and images from this
/// origin only, no inline code, no framing, forms posting only here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub(crate) fn routes<R: Repo + 'static>() -> Router<AppState<R>> {
    Router::new()
        .route("/", get(home))
        .route("/portal", get(home))
        .route("/portal/login", get(session::login_page::<R>).post(session::login::<R>))
        .route("/portal/passkeys/{id}/remove", post(passkeys::remove::<R>))
        .route("/portal/logout", post(session::logout::<R>))
        .route("/portal/devices", get(devices::list::<R>))
        .route("/portal/identities/derived", get(derived::add::<R>))
        .route("/portal/identities/derived/start", post(derived::start::<R>))
        .route("/portal/identities/derived/{id}", get(derived::session::<R>))
        .route("/portal/identities/derived/{id}/pin", post(derived::pin::<R>))
        .route("/portal/identities/derived/{id}/code", post(derived::code::<R>))
        .route("/portal/devices/new", get(add_device::add::<R>))
        .route("/portal/devices/new/refresh", post(add_device::refresh::<R>))
        .route("/portal/devices/new/start", post(add_device::start::<R>))
        .route("/portal/devices/mobile", get(mobile::add::<R>).post(mobile::start::<R>))
        .route("/portal/devices/mobile/status", get(mobile::status::<R>))
        .route("/portal/devices/{id}/delete", get(mobile::confirm_delete::<R>).post(mobile::delete::<R>))
        .route(&format!("{}/{{code}}", mobile::PROFILE_PATH), get(mobile::profile::<R>))
        .route("/portal/jobs/{id}", get(job::job::<R>))
        .route("/portal/jobs/{id}/events", get(job::events::<R>))
        .route("/portal/jobs/{id}/pin", post(job::pin::<R>))
        .route("/portal/jobs/{id}/resume", post(job::resume::<R>))
        .route("/portal/jobs/{id}/rollback", post(job::rollback::<R>))
        .route("/portal/jobs/{id}/erase-fido", post(job::erase_fido::<R>))
        .route("/portal/devices/{id}", get(devices::detail::<R>))
        .route("/portal/devices/{id}/change-pin", get(pin::change::<R>))
        .route("/portal/devices/{id}/change-pin/refresh", post(pin::change_refresh::<R>))
        .route("/portal/devices/{id}/change-pin/start", post(pin::change_start::<R>))
        .route("/portal/devices/{id}/unlock-pin", get(pin::unlock::<R>))
        .route("/portal/devices/{id}/unlock-pin/refresh", post(pin::unlock_refresh::<R>))
        .route("/portal/devices/{id}/unlock-pin/start", post(pin::unlock_start::<R>))
        .route("/portal/workstations", get(workstations::list::<R>))
        .route("/portal/workstations/pairing", post(workstations::start_pairing::<R>))
        .route(
            "/portal/workstations/{id}/revoke",
            get(workstations::confirm_revoke::<R>).post(workstations::revoke::<R>),
        )
        .merge(operator::routes::<R>())
        .merge(operator_cards::routes::<R>())
        .merge(audit::routes::<R>())
        .merge(admin::routes::<R>())
        .merge(admin_users::routes::<R>())
        .merge(admin_tokens::routes::<R>())
        .merge(admin_pki::routes::<R>())
        .route("/portal/help", get(help::troubleshooting))
        .route("/m/{code}", get(mobile_link::page::<R>))
        .route(assets::HTMX_PATH, get(assets::htmx))
        .route("/portal/assets/{name}", get(assets::by_name))
        .route("/portal/{*rest}", get(not_found).post(not_found))
        .layer(middleware::from_fn(security_headers))
}

/// `/`: the devices when signed in, else the sign-in page.
async fn home(viewer: Viewer) -> Redirect {
    match viewer.nav() {
        Some(n) if !n.cardholder && n.operator => Redirect::to("/portal/operator"),
        Some(n) if !n.cardholder && n.auditor => Redirect::to("/portal/audit"),
        Some(n) if !n.cardholder && n.admin => Redirect::to("/portal/admin"),
        Some(_) => Redirect::to("/portal/devices"),
        None => Redirect::to("/portal/login"),
    }
}

async fn not_found(viewer: Viewer) -> PortalError {
    PortalError::not_found().with_nav(viewer.nav())
}

/// Adds the portal's security headers, and refuses state-changing requests from other sites.
///
/// For htmx requests it also adapts what htmx would otherwise mishandle: a redirect (the session
/// ended, or a form's Post/Redirect/Get) becomes `HX-Redirect`, a full navigation, rather than a
/// page swapped into a fragment; an error page replaces the page's `<main>` (`HX-Retarget`,
/// `HX-Reselect`), so the user reads what happened and what to do.
async fn security_headers(req: Request, next: Next) -> Response {
    let cacheable = req.uri().path().starts_with("/portal/assets/");
    let htmx = is_htmx(req.headers());
    let mut resp = if is_safe(req.method()) || same_site_request(req.headers()) {
        unreadable_request_as_page(next.run(req).await).await
    } else {
        PortalError::cross_site().into_response()
    };
    if htmx {
        resp = for_htmx(resp);
    }
    let no_store = !cacheable || !resp.status().is_success();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // A page may ask for less (the enrolment link page, whose URL holds a one-time code).
    if !h.contains_key(header::REFERRER_POLICY) {
        h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    if no_store {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// The longest extractor message kept for the error page (axum's are a line or two).
const REJECTION_TEXT_LIMIT: usize = 4096;

/// A request the portal's handlers could not even read — a form body with a missing, repeated or
/// malformed field, the wrong content type, a path id that is not one — is refused by axum's
/// extractors with a short plain-text answer. The portal shows it as its own error page instead,
/// with the extractor's reason and what to do, keeping the status. Handlers' own answers are HTML
/// and pass through untouched.
async fn unreadable_request_as_page(resp: Response) -> Response {
    let status = resp.status();
    let plain_text = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !status.is_client_error() || !plain_text {
        return resp;
    }
    let body = axum::body::to_bytes(resp.into_body(), REJECTION_TEXT_LIMIT).await.unwrap_or_default();
    let reason = String::from_utf8_lossy(&body).trim().to_owned();
    PortalError::unreadable(status, reason).into_response()
}

fn for_htmx(resp: Response) -> Response {
    let status = resp.status();
    if status.is_redirection() {
        let location = resp.headers().get(header::LOCATION).cloned();
        let mut out = StatusCode::OK.into_response();
        if let Some(l) = location {
            out.headers_mut().insert("hx-redirect", l);
        }
        for cookie in resp.headers().get_all(header::SET_COOKIE) {
            out.headers_mut().append(header::SET_COOKIE, cookie.clone());
        }
        return out;
    }
    let mut resp = resp;
    if status.is_client_error() || status.is_server_error() {
        let h = resp.headers_mut();
        h.insert("hx-retarget", HeaderValue::from_static("main"));
        h.insert("hx-reselect", HeaderValue::from_static("main"));
        h.insert("hx-reswap", HeaderValue::from_static("outerHTML"));
    }
    resp
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether a state-changing request comes from a page of this site: `Sec-Fetch-Site` (sent by
/// every current browser) must be `same-origin`, and `Origin`, when present, must name the host
/// the request was sent to. A request with neither (an old browser, a script) passes this check
/// and still needs the session's CSRF token.
pub fn same_site_request(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site")
        && site.as_bytes() != b"same-origin"
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    origin.to_str().ok().and_then(origin_authority).is_some_and(|a| a.eq_ignore_ascii_case(host))
}

/// The `host[:port]` of a serialized origin (`scheme://host[:port]`, RFC 6454), without the
/// scheme's default port, as a `Host` header would name it. `None` for `null`, a missing scheme,
/// a path, user info, or an empty or malformed host or port.
pub fn origin_authority(origin: &str) -> Option<&str> {
    let (scheme, rest) = origin.split_once("://")?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" => "443",
        "http" => "80",
        _ => return None,
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    // The port follows the last colon outside an IPv6 literal's brackets.
    let (host, port) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains(']') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if host.is_empty() || (host.starts_with('[') != host.ends_with(']')) {
        return None;
    }
    if !host.starts_with('[') && host.contains(':') {
        return None;
    }
    match port {
        None => Some(rest),
        Some(p) if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 5 => None,
        Some(p) if p == default_port => Some(host),
        Some(_) => Some(rest),
    }
}

/// The signed-in user as the header shows them, the token for the sign-out form, and the
/// sections their roles open.
#[derive(Clone, Debug)]
pub(crate) struct Nav {
    pub username: String,
    pub csrf_token: String,
    pub cardholder: bool,
    /// My Workstations: cardholders, operators and administrators pair agents.
    pub workstations: bool,
    pub operator: bool,
    pub auditor: bool,
    pub admin: bool,
}

/// Whoever is asking: signed in or not. For pages anyone may see (sign-in, help, errors).
pub(crate) struct Viewer(Option<SessionAuth>);

impl Viewer {
    fn nav(&self) -> Option<Nav> {
        self.0.as_ref().map(nav_of)
    }
}

fn nav_of(s: &SessionAuth) -> Nav {
    use lanyard_core::model::Role;
    let user = s.auth.principal.user();
    Nav {
        username: user.username.to_string(),
        csrf_token: s.csrf_token.clone(),
        cardholder: user.has_role(Role::User),
        workstations: s.auth.principal.workstations().is_ok(),
        operator: user.has_role(Role::Operator),
        auditor: user.has_role(Role::Auditor),
        admin: user.has_role(Role::Administrator),
    }
}

impl<R: Repo + 'static> FromRequestParts<AppState<R>> for Viewer {
    type Rejection = PortalError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState<R>) -> Result<Self, PortalError> {
        match session_auth(parts, state).await {
            Ok(s) => Ok(Viewer(s)),
            // An ended or unknown session, or one whose account was disabled since, is simply
            // nobody signed in: the sign-in and help pages must stay reachable.
            Err(e) if matches!(e.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                Ok(Viewer(None))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A signed-in user; anyone else is sent to the sign-in page. On a state-changing request the
/// CSRF token must also be checked, with [`SignedIn::check_csrf`], once the form is read.
pub(crate) struct SignedIn {
    pub session: SessionAuth,
    htmx_token: Option<String>,
    /// The request's `Host`, to tell whether the page was reached at the passkeys' relying party.
    host: Option<String>,
}

impl SignedIn {
    pub fn nav(&self) -> Option<Nav> {
        Some(nav_of(&self.session))
    }

    /// Whether this request reached the portal at the relying party's origin, where the browser
    /// can create and use Lanyard's passkeys (not, say, at an IP address).
    pub fn at_relying_party<R>(&self, s: &AppState<R>) -> bool {
        crate::api::passkeys::host_is_relying_party(s, self.host.as_deref().unwrap_or_default())
    }

    /// Checks the CSRF token of a state-changing request: the form's field, or the htmx header.
    pub fn check_csrf(&self, form_token: Option<&str>) -> Result<(), PortalError> {
        let presented = form_token.or(self.htmx_token.as_deref()).unwrap_or("");
        if self.session.csrf_matches(presented) {
            Ok(())
        } else {
            Err(PortalError::csrf().with_nav(self.nav()))
        }
    }

    pub fn principal(&self) -> &lanyard_core::authz::Principal {
        &self.session.auth.principal
    }
}

impl<R: Repo + 'static> FromRequestParts<AppState<R>> for SignedIn {
    type Rejection = PortalError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState<R>) -> Result<Self, PortalError> {
        match session_auth(parts, state).await? {
            Some(session) => {
                let htmx_token =
                    parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let host = parts.headers.get(header::HOST).and_then(|v| v.to_str().ok()).map(str::to_owned);
                Ok(SignedIn { session, htmx_token, host })
            }
            None => Err(PortalError::sign_in()),
        }
    }
}

/// Whether the request was made by htmx (which wants a fragment, not a page).
pub(crate) fn is_htmx(headers: &HeaderMap) -> bool {
    headers.get("hx-request").is_some_and(|v| v.as_bytes() == b"true")
}

/// Renders a template as an HTML response with `status`.
pub(crate) fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering a portal page");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "The page could not be shown; try again, or tell your administrator the time it happened.",
            )
                .into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "portal/error.html")]
struct ErrorPage<'a> {
    nav: Option<Nav>,
    section: &'static str,
    title: &'a str,
    message: &'a str,
    next: &'a str,
    operation_id: Option<String>,
}

/// A page that went wrong: what happened and what to do next, with the status. An expired
/// session is not an error page but a redirect to sign in.
#[derive(Debug)]
pub(crate) struct PortalError {
    status: StatusCode,
    title: &'static str,
    message: String,
    next: &'static str,
    nav: Option<Nav>,
}

impl PortalError {
    fn new(status: StatusCode, title: &'static str, message: impl Into<String>, next: &'static str) -> Self {
        Self { status, title, message: message.into(), next, nav: None }
    }

    /// Keeps the header's user menu on the error page.
    pub fn with_nav(mut self, nav: Option<Nav>) -> Self {
        self.nav = nav;
        self
    }

    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "Page not found",
            "There is no such page, or it is not yours to see.",
            "Check the address, or go back to My Devices.",
        )
    }

    fn sign_in() -> Self {
        Self::new(StatusCode::SEE_OTHER, "Sign in", "Sign in to continue.", "")
    }

    fn csrf() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "This form could not be accepted",
            "The form did not carry this session's security token. This happens when a page was \
             open from before you last signed in, or when the form came from another site.",
            "Go back, reload the page, and submit it again.",
        )
    }

    /// A request the handlers could not read (see [`unreadable_request_as_page`]).
    fn unreadable(status: StatusCode, reason: String) -> Self {
        let reason = if reason.is_empty() { "The request could not be read.".to_owned() } else { reason };
        Self::new(
            status,
            "That request could not be read",
            reason,
            "Nothing was changed. Go back, reload the page, and fill in the form again.",
        )
    }

    fn cross_site() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "Request from another site refused",
            "Lanyard accepts changes only from its own pages, and this request came from elsewhere.",
            "Open Lanyard's own page and try again from there.",
        )
    }
}

impl From<ApiError> for PortalError {
    fn from(e: ApiError) -> Self {
        let (title, next) = match e.status {
            StatusCode::UNAUTHORIZED => return Self::sign_in(),
            StatusCode::NOT_FOUND => return Self::not_found(),
            StatusCode::FORBIDDEN => ("Not allowed", "If you need this, ask your Lanyard administrator."),
            StatusCode::CONFLICT => ("That cannot be done now", "Reload the page to see the current state."),
            StatusCode::TOO_MANY_REQUESTS => {
                ("Too many attempts", "Wait for the time given, then try again.")
            }
            StatusCode::SERVICE_UNAVAILABLE => ("Busy", "Nothing was changed; try again in a moment."),
            s if s.is_client_error() => {
                ("That request was not understood", "Go back and check what you entered.")
            }
            _ => (
                "Something went wrong on the server",
                "Try again later. If it keeps happening, give your administrator the operation id below.",
            ),
        };
        Self::new(e.status, title, e.message, next)
    }
}

impl From<lanyard_core::DomainError> for PortalError {
    fn from(e: lanyard_core::DomainError) -> Self {
        ApiError::from(e).into()
    }
}

impl From<lanyard_core::Forbidden> for PortalError {
    fn from(e: lanyard_core::Forbidden) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for PortalError {
    fn into_response(self) -> Response {
        if self.status == StatusCode::SEE_OTHER {
            return Redirect::to("/portal/login").into_response();
        }
        let page = ErrorPage {
            nav: self.nav,
            section: "",
            title: self.title,
            message: &self.message,
            next: self.next,
            operation_id: CURRENT_OPERATION.try_with(Clone::clone).ok(),
        };
        render(self.status, &page)
    }
}

/// The server's base URL as clients should use it: the configured public URL, or else the
/// address this request reached.
pub(crate) fn server_url<R>(s: &AppState<R>, headers: &HeaderMap) -> String {
    match s.public_url.as_deref() {
        Some(url) => url.to_owned(),
        None => {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("<server>");
            format!("https://{host}")
        }
    }
}

/// A human-readable time, UTC, to the minute.
pub(crate) fn when(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_policy_is_exactly_this() {
        assert_eq!(
            CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        );
    }

    #[test]
    fn origins_reduce_to_what_a_host_header_says() {
        assert_eq!(origin_authority("https://lanyard.example.org"), Some("lanyard.example.org"));
        assert_eq!(origin_authority("https://lanyard.example.org:443"), Some("lanyard.example.org"));
        assert_eq!(origin_authority("https://127.0.0.1:8443"), Some("127.0.0.1:8443"));
        assert_eq!(origin_authority("http://127.0.0.1:80"), Some("127.0.0.1"));
        assert_eq!(origin_authority("http://[::1]:8080"), Some("[::1]:8080"));
        assert_eq!(origin_authority("https://[::1]"), Some("[::1]"));
        for bad in [
            "null",
            "",
            "https://",
            "ftp://example.org",
            "https://example.org/",
            "https://u@example.org",
            "https://example.org:",
            "https://example.org:8x",
            "https://:443",
            "https://[::1",
            "https://::1",
            "https://example.org:1234567",
        ] {
            assert_eq!(origin_authority(bad), None, "{bad:?}");
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_this_site_may_change_things() {
        assert!(same_site_request(&headers(&[("host", "l.example"), ("origin", "https://l.example")])));
        assert!(same_site_request(&headers(&[
            ("host", "l.example:8443"),
            ("origin", "https://L.example:8443"),
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(same_site_request(&headers(&[("host", "l.example")])), "no browser headers: token decides");
        assert!(!same_site_request(&headers(&[("host", "l.example"), ("origin", "https://evil.example")])));
        assert!(!same_site_request(&headers(&[("host", "l.example"), ("origin", "null")])));
        assert!(!same_site_request(&headers(&[("host", "l.example"), ("sec-fetch-site", "cross-site")])));
        assert!(!same_site_request(&headers(&[("host", "l.example"), ("sec-fetch-site", "same-site")])));
        assert!(!same_site_request(&headers(&[("origin", "https://l.example")])), "origin without host");
    }

    proptest! {
        #[test]
        fn any_origin_text_is_judged_without_panicking(s in "\\PC{0,40}") {
            if let Some(a) = origin_authority(&s) {
                prop_assert!(!a.is_empty());
                prop_assert!(s.ends_with(a) || s.contains(a));
            }
        }

        #[test]
        fn built_origins_give_their_host_and_port(
            host in "[a-z][a-z0-9-]{0,20}(\\.[a-z]{2,6}){0,2}",
            port in proptest::option::of(1u16..),
            https in any::<bool>(),
        ) {
            let scheme = if https { "https" } else { "http" };
            let origin = match port {
                Some(p) => format!("{scheme}://{host}:{p}"),
                None => format!("{scheme}://{host}"),
            };
            let expected = match port {
                Some(p) if (https && p == 443) || (!https && p == 80) => host.clone(),
                Some(p) => format!("{host}:{p}"),
                None => host.clone(),
            };
            prop_assert_eq!(origin_authority(&origin), Some(expected.as_str()));
        }
    }
}
