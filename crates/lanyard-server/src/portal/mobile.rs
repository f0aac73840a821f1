//! *Add Mobile* (DESIGN flow D) and *Delete Mobile* for the holder.
//!
//! Add Mobile: a page saying what is needed → **Continue** (POST, CSRF) → a one-time code from
//! [`SelfService::start_mobile_enrollment`], valid for the policy's `enrollment_code_minutes`,
//! shown once as a QR code (SVG drawn by the server, embedded as a `data:` image: the page's CSP
//! allows those, and the code never reaches a URL the server logs) and as the link to type. The
//! page then asks every few seconds (htmx, no inline script) which of the user's mobiles were
//! added since, so the new phone appears as it downloads the profile and enrols.
//!
//! `GET /enroll/profile/{code}` needs no sign-in: the code is the credential. It redeems the code
//! ([`System::redeem_enrollment`]: the phone becomes the user's mobile, Enrolling) and answers the
//! signed profile. An unknown code is 404, an expired or used one 410, and neither changes anything.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use base64::Engine;
use lanyard_core::DomainError;
use lanyard_core::authz::{Redeemed, SelfService, System};
use lanyard_core::ids::DeviceId;
use lanyard_core::model::EnrollmentKind;
use lanyard_core::model::{CertSlot, DeviceClass, DeviceKind, EnrollmentError, EnrollmentPurpose};
use lanyard_core::repo::Repo;
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::devices::{Badge, device_badge};
use super::{Nav, PortalError, SignedIn, is_htmx, render, server_url, when};
use crate::auth::Via;
use crate::{AppState, OperationId};

/// Where the one-time profile link points: `<public base>/enroll/profile/<code>`.
pub const PROFILE_PATH: &str = "/enroll/profile";

/// The model a phone enrolled by a profile is recorded as (the profile download does not say
/// which device it is).
pub const PROFILE_DEVICE_MODEL: &str = "Apple device (configuration profile)";

/// The profile link for `code` under `base`.
pub fn profile_link(base: &str, code: &str) -> String {
    format!("{}{PROFILE_PATH}/{code}", base.trim_end_matches('/'))
}

/// Why an enrolment of `kind` is closed to the user now, in a sentence; `None` when it is open.
/// The same rule [`SelfService::start_mobile_enrollment`] applies (and `POST
/// /api/v1/me/mobile-enrollments` answers with as a 403): the group's flag for the kind, then
/// `max_mobiles`, counting the user's Enrolling, Active and Suspended mobiles of both kinds.
pub(crate) async fn mobile_refusal<R: Repo>(
    me: &SelfService<'_>,
    repo: &R,
    kind: EnrollmentKind,
) -> Result<Option<String>, PortalError> {
    match me.may_add_mobile(repo, kind).await {
        Ok(()) => Ok(None),
        Err(DomainError::PolicyDenied(why)) => Ok(Some(why.to_string())),
        Err(other) => Err(other.into()),
    }
}

/// Why *Add Mobile* (a configuration profile) is closed to the user now; `None` when it is open.
pub(crate) async fn add_mobile_refusal<R: Repo>(
    me: &SelfService<'_>,
    repo: &R,
) -> Result<Option<String>, PortalError> {
    mobile_refusal(me, repo, EnrollmentKind::MobileProfile).await
}

#[derive(Template)]
#[template(path = "portal/add_mobile.html")]
struct AddMobilePage {
    nav: Option<Nav>,
    section: &'static str,
    csrf_token: String,
    refused: Option<String>,
    minutes: u8,
}

/// The pre-enrolment page: what is needed, and **Continue**.
pub(crate) async fn add<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
) -> Result<Response, PortalError> {
    let nav = signed.nav();
    let inner = async {
        let me = signed.principal().self_service()?;
        let repo = s.repo.as_ref();
        let refused = add_mobile_refusal(&me, repo).await?;
        let minutes = me.policy(repo).await?.enrollment_code_minutes;
        Ok::<_, PortalError>(AddMobilePage {
            nav: signed.nav(),
            section: "devices",
            csrf_token: signed.session.csrf_token.clone(),
            refused,
            minutes,
        })
    };
    let page = inner.await.map_err(|e| e.with_nav(nav))?;
    Ok(render(StatusCode::OK, &page))
}

#[derive(Deserialize)]
pub(crate) struct CsrfOnly {
    #[serde(default)]
    csrf_token: Option<String>,
}

#[derive(Template)]
#[template(path = "portal/add_mobile_code.html")]
struct CodePage {
    nav: Option<Nav>,
    section: &'static str,
    link: String,
    qr_data_uri: String,
    expires: String,
    minutes: u8,
    status: StatusFragment,
}

/// The QR code of `text` ([`super::qr::qr_svg`]) as an SVG `data:` URI for an `<img>`.
pub fn qr_svg_data_uri(text: &str) -> Result<String, PortalError> {
    let svg = super::qr::qr_svg(text).ok_or_else(|| {
        tracing::error!(len = text.len(), "a link too long for a QR code");
        PortalError::from(crate::ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the QR code could not be drawn",
        ))
    })?;
    Ok(format!("data:image/svg+xml;base64,{}", base64::engine::general_purpose::STANDARD.encode(svg)))
}

/// **Continue**: a fresh one-time code, shown once.
pub(crate) async fn start<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    headers: HeaderMap,
    Form(form): Form<CsrfOnly>,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let nav = signed.nav();
    let inner = async {
        let me = signed.principal().self_service()?;
        let repo = s.repo.as_ref();
        let policy = me.policy(repo).await?;
        let session = match &signed.session.auth.via {
            Via::Session(hash) => Some(*hash),
            Via::ApiToken => None,
        };
        let (code, secret) = me
            .start_mobile_enrollment(
                repo,
                EnrollmentPurpose::MobileProfile,
                policy.enrollment_code_ttl(),
                session,
            )
            .await?;
        let link = profile_link(&server_url(&s, &headers), secret.expose_secret());
        let since = code.created_at.unix_timestamp();
        Ok::<_, PortalError>(CodePage {
            nav: signed.nav(),
            section: "devices",
            qr_data_uri: qr_svg_data_uri(&link)?,
            link,
            expires: when(code.expires_at),
            minutes: policy.enrollment_code_minutes,
            status: status_fragment(&me, repo, since).await?,
        })
    };
    let page = inner.await.map_err(|e| e.with_nav(nav))?;
    Ok(render(StatusCode::OK, &page))
}

struct MobileRow {
    id: String,
    model: String,
    badge: Badge,
}

#[derive(Template)]
#[template(path = "portal/mobile_status.html")]
struct StatusFragment {
    since: i64,
    mobiles: Vec<MobileRow>,
    /// Whether one of them finished enrolling (then polling stops).
    done: bool,
}

async fn status_fragment<R: Repo>(
    me: &SelfService<'_>,
    repo: &R,
    since: i64,
) -> Result<StatusFragment, PortalError> {
    let mobiles: Vec<MobileRow> = me
        .devices(repo)
        .await?
        .into_iter()
        .filter(|d| d.kind == DeviceKind::Mobile && d.created_at.unix_timestamp() >= since)
        .map(|d| MobileRow { id: d.id.to_string(), model: d.model.clone(), badge: device_badge(d.state) })
        .collect();
    let done = mobiles.iter().any(|m| m.badge.label == "Active");
    Ok(StatusFragment { since, mobiles, done })
}

#[derive(Deserialize)]
pub(crate) struct SinceQuery {
    since: i64,
}

#[derive(Template)]
#[template(path = "portal/mobile_status_page.html")]
struct StatusPage {
    nav: Option<Nav>,
    section: &'static str,
    status: StatusFragment,
}

/// The mobiles added since `since` (unix seconds): the fragment for htmx, or a page.
pub(crate) async fn status<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    headers: HeaderMap,
    Query(q): Query<SinceQuery>,
) -> Result<Response, PortalError> {
    let nav = signed.nav();
    let inner = async {
        let me = signed.principal().self_service()?;
        status_fragment(&me, s.repo.as_ref(), q.since).await
    };
    let status = inner.await.map_err(|e| e.with_nav(nav))?;
    if is_htmx(&headers) {
        return Ok(render(StatusCode::OK, &status));
    }
    Ok(render(StatusCode::OK, &StatusPage { nav: signed.nav(), section: "devices", status }))
}

/// Why a profile link cannot be used: 404 for a code that names nothing, 410 for one that is
/// spent; with what to do.
fn link_refused(e: DomainError) -> PortalError {
    let gone = |message: String| {
        PortalError::new(
            StatusCode::GONE,
            "This enrolment link cannot be used again",
            message,
            "Nothing was installed. On the computer, open My Devices → Add Mobile and scan the new QR code.",
        )
    };
    match e {
        DomainError::Enrollment(EnrollmentError::Expired(at)) => {
            gone(format!("The link expired at {}: links are valid for a few minutes only.", when(at)))
        }
        DomainError::Enrollment(EnrollmentError::AlreadyUsed(at)) => {
            gone(format!("The link was already used at {}; each link downloads one profile, once.", when(at)))
        }
        DomainError::Enrollment(EnrollmentError::SessionEnded) => gone(
            "The link ended with the portal session that made it: you signed out, or the session expired."
                .to_owned(),
        ),
        DomainError::NotFound { .. } | DomainError::Enrollment(EnrollmentError::WrongCode) => {
            PortalError::new(
                StatusCode::NOT_FOUND,
                "Unknown enrolment link",
                "No enrolment is waiting under this link. Check that it was typed exactly as shown.",
                "If it was, start again: My Devices → Add Mobile shows a new QR code and link.",
            )
        }
        other => other.into(),
    }
}

/// The signed configuration profile for a code.
pub(crate) async fn profile<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    Extension(op): Extension<OperationId>,
    headers: HeaderMap,
    Path(code): Path<String>,
) -> Result<Response, PortalError> {
    // Codes are 20 random bytes as hex; only URL-safe characters are looked up, anything else names
    // no code.
    if code.is_empty()
        || code.len() > 64
        || !code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(link_refused(DomainError::Enrollment(EnrollmentError::WrongCode)));
    }
    let now = s.clock.now();
    let op = lanyard_core::audit::OperationId::parse(&op.0)
        .unwrap_or_else(|_| lanyard_core::audit::OperationId::random());
    let system = System::new(op, now);
    let redeemed = system
        .redeem_enrollment(s.repo.as_ref(), &code, EnrollmentKind::MobileProfile, PROFILE_DEVICE_MODEL)
        .await
        .map_err(link_refused)?;
    let body = signed_profile(&s, &headers, &redeemed, &code)?;
    let filename = format!("lanyard-{}.mobileconfig", redeemed.holder.username);
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-apple-aspen-config"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// Builds and signs the profile for a redeemed code.
fn signed_profile<R>(
    s: &AppState<R>,
    headers: &HeaderMap,
    r: &Redeemed,
    code: &str,
) -> Result<Vec<u8>, PortalError> {
    let base = server_url(s, headers);
    let host = base.split_once("://").map_or(base.as_str(), |(_, rest)| rest);
    let host = host.split('/').next().unwrap_or(host);
    let days = r.policy.certificates.get(&CertSlot::MobileDevice).map_or(365, |p| p.validity_days);
    let org = s.pki.organization.as_str();
    let username = r.holder.username.to_string();
    let spec = lanyard_ca::mobileconfig::ScepProfileSpec {
        host,
        organization: org,
        username: &username,
        scep_url: &format!("{}/scep", base.trim_end_matches('/')),
        ca_ident: "lanyard",
        challenge: code,
        subject: vec![("CN".into(), format!("{username} mobile")), ("O".into(), org.to_owned())],
        root_der: s.pki.root.certificate_der(),
        scep_ca_der: s.pki.issuing.certificate_der(),
        removal_date: s.clock.now() + time::Duration::days(i64::from(days)),
    };
    let fail = |e: lanyard_ca::CaError| {
        PortalError::from(crate::ApiError::internal("building the configuration profile", e))
    };
    let xml = lanyard_ca::mobileconfig::build_scep_profile(&spec).map_err(fail)?;
    lanyard_ca::mobileconfig::sign_profile(&s.pki.profile_signer, &[s.pki.issuing.certificate_der()], &xml)
        .map_err(fail)
}

#[derive(Template)]
#[template(path = "portal/confirm_delete_mobile.html")]
struct ConfirmDeletePage {
    nav: Option<Nav>,
    section: &'static str,
    csrf_token: String,
    id: String,
    model: String,
    badge: Badge,
}

/// One of my mobiles; a card, another user's device or a malformed id is the same 404.
async fn my_mobile<R: Repo>(
    s: &AppState<R>,
    signed: &SignedIn,
    id: &str,
) -> Result<lanyard_core::model::Device, PortalError> {
    let id = id.parse::<DeviceId>().map_err(|_| PortalError::not_found())?;
    let me = signed.principal().self_service()?;
    let d = me.device(s.repo.as_ref(), id).await?;
    if d.class() != DeviceClass::Mobile {
        return Err(PortalError::not_found());
    }
    Ok(d)
}

/// Asks before deleting a mobile.
pub(crate) async fn confirm_delete<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
) -> Result<Response, PortalError> {
    let d = my_mobile(&s, &signed, &id).await.map_err(|e| e.with_nav(signed.nav()))?;
    let page = ConfirmDeletePage {
        nav: signed.nav(),
        section: "devices",
        csrf_token: signed.session.csrf_token.clone(),
        id: d.id.to_string(),
        model: d.model.clone(),
        badge: device_badge(d.state),
    };
    Ok(render(StatusCode::OK, &page))
}

#[derive(Template)]
#[template(path = "portal/mobile_deleted.html")]
struct DeletedPage {
    nav: Option<Nav>,
    section: &'static str,
    model: String,
    revoked: usize,
    add_refused: Option<String>,
}

/// Deletes the mobile (its certificates revoked) and says how to remove the profile.
pub(crate) async fn delete<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let nav = signed.nav();
    let inner = async {
        let d = my_mobile(&s, &signed, &id).await?;
        let me = signed.principal().self_service()?;
        let repo = s.repo.as_ref();
        // A deleted mobile is no longer the holder's to read: count what deleting revokes first.
        use lanyard_core::lifecycle::CredentialState as C;
        let revoked = me
            .credentials(repo, d.id)
            .await?
            .iter()
            .filter(|c| matches!(c.state, C::Active | C::Pending | C::OnHold))
            .count();
        let d = me.delete_mobile(repo, d.id).await?;
        Ok::<_, PortalError>(DeletedPage {
            nav: signed.nav(),
            section: "devices",
            model: d.model.clone(),
            revoked,
            add_refused: add_mobile_refusal(&me, repo).await?,
        })
    };
    let page = inner.await.map_err(|e| e.with_nav(nav))?;
    Ok(render(StatusCode::OK, &page))
}
