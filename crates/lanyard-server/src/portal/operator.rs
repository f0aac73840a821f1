//! The help desk: finding users and devices, a user's page, a device's page (certificates, jobs
//! with their step logs, audit trail), and the device actions, each behind a confirmation page
//! with a note for the audit log.
//!
//! Everything goes through the signed-in user's [`Operator`] view, the one the API's routes use.
//! Someone without the operator role gets the portal's 404 for every page and form here, as for
//! a page that does not exist: the section's existence is not theirs to learn.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Router};
use base64::Engine as _;
use lanyard_core::audit::AuditEvent;
use lanyard_core::authz::Operator;
use lanyard_core::ids::{CredentialId, DeviceId};
use lanyard_core::lifecycle::{DeviceActionKind, RevocationReason, allowed_device_actions};
use lanyard_core::model::{CredentialKind, Device, Job, User};
use lanyard_core::repo::{DeviceQuery, Repo, UserQuery};
use lanyard_core::serial::SerialSearch;
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::audit::EventRow;
use super::devices::{DeviceView, device_badge};
use super::operator_cards::{self, CardAction, CardActionRow, card_actions_for};
use super::{Nav, PortalError, SignedIn, render, when};
use crate::AppState;

pub(crate) fn routes<R: Repo + 'static>() -> Router<AppState<R>> {
    Router::new()
        .route("/portal/operator", get(search::<R>))
        .route("/portal/operator/users/{id}", get(user::<R>))
        .route("/portal/operator/devices/{id}", get(device::<R>))
        .route("/portal/operator/devices/{id}/certificates/{cid}", get(certificate_pem::<R>))
        .route("/portal/operator/devices/{id}/{action}", get(confirm::<R>).post(act::<R>))
}

/// Most users or devices one search shows.
const SEARCH_LIMIT: u32 = 50;
/// Most audit events a device page shows (the newest).
const TRAIL_LIMIT: usize = 100;

/// The operator view, or the portal's 404 for anyone without the role.
pub(super) fn operator_of(signed: &SignedIn) -> Result<Operator<'_>, PortalError> {
    signed.principal().operator().map_err(|_| PortalError::not_found())
}

/// A device id from the address; a malformed one is the same 404 as a missing device.
pub(super) fn parse_device(id: &str) -> Result<DeviceId, PortalError> {
    id.parse::<DeviceId>().map_err(|_| PortalError::not_found())
}

pub(super) struct UserRow {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub email: String,
    pub disabled: bool,
}

impl From<&User> for UserRow {
    fn from(u: &User) -> Self {
        Self {
            id: u.id.to_string(),
            username: u.username.to_string(),
            display_name: u.display_name.clone(),
            email: u.email.as_ref().map(|e| e.as_str().to_owned()).unwrap_or_else(|| "—".into()),
            disabled: u.disabled,
        }
    }
}

/// One device in a list: what it is, its state, and whose it is.
struct DeviceRow {
    id: String,
    model: String,
    serial: String,
    badge: super::devices::Badge,
    holder: Option<(String, String)>,
}

async fn device_rows<R: Repo>(
    op: &Operator<'_>,
    repo: &R,
    devices: &[Device],
) -> Result<Vec<DeviceRow>, PortalError> {
    let mut rows = Vec::with_capacity(devices.len());
    for d in devices {
        let holder = match d.owner {
            Some(owner) => {
                let u = op.user(repo, &owner.to_string()).await?;
                Some((u.id.to_string(), u.username.to_string()))
            }
            None => None,
        };
        rows.push(DeviceRow {
            id: d.id.to_string(),
            model: d.model.clone(),
            serial: d.serial.clone().unwrap_or_else(|| "—".into()),
            badge: device_badge(d.state),
            holder,
        });
    }
    Ok(rows)
}

#[derive(Template)]
#[template(path = "portal/operator_search.html")]
struct SearchPage {
    nav: Option<Nav>,
    section: &'static str,
    q: String,
    searched: bool,
    error: Option<String>,
    users: Vec<UserRow>,
    devices: Vec<DeviceRow>,
}

#[derive(Deserialize)]
pub(crate) struct SearchQuery {
    #[serde(default)]
    q: Option<String>,
}

/// Longest search text, in characters (the API's `q` limit).
const MAX_QUERY_CHARS: usize = 128;

/// Finds users by username, display name or e-mail, and devices by device or certificate serial.
pub(crate) async fn search<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Query(params): Query<SearchQuery>,
) -> Result<Response, PortalError> {
    let nav = signed.nav();
    let inner = async {
        let op = operator_of(&signed)?;
        let repo = s.repo.as_ref();
        let q = params.q.unwrap_or_default().trim().to_owned();
        let mut page = SearchPage {
            nav: signed.nav(),
            section: "operator",
            searched: !q.is_empty(),
            q: q.clone(),
            error: None,
            users: Vec::new(),
            devices: Vec::new(),
        };
        if q.is_empty() {
            return Ok::<_, PortalError>((StatusCode::OK, page));
        }
        if q.chars().count() > MAX_QUERY_CHARS {
            page.error = Some(format!("Search: at most {MAX_QUERY_CHARS} characters."));
            return Ok((StatusCode::BAD_REQUEST, page));
        }
        let users = op
            .find_users(
                repo,
                &UserQuery { text: Some(q.clone()), limit: SEARCH_LIMIT, ..UserQuery::default() },
            )
            .await?;
        page.users = users.iter().map(UserRow::from).collect();
        if let Some(serial) = SerialSearch::parse(&q) {
            let devices = op.find_by_serial(repo, &serial, SEARCH_LIMIT).await?;
            page.devices = device_rows(&op, repo, &devices).await?;
        }
        Ok((StatusCode::OK, page))
    };
    let (status, page) = inner.await.map_err(|e| e.with_nav(nav))?;
    Ok(render(status, &page))
}

#[derive(Template)]
#[template(path = "portal/operator_user.html")]
struct UserPage {
    nav: Option<Nav>,
    section: &'static str,
    user: UserRow,
    group: String,
    roles: String,
    devices: Vec<DeviceRow>,
    /// Why a card cannot be issued to this user in person now, if it cannot.
    issue_refused: Option<String>,
    /// The user's passkeys, on whichever key each lives.
    passkeys: Vec<super::passkeys::UserPasskeyRow>,
}

/// One user: who they are, their group and roles, and their devices.
pub(crate) async fn user<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
) -> Result<Response, PortalError> {
    let nav = signed.nav();
    let inner = async {
        let op = operator_of(&signed)?;
        let repo = s.repo.as_ref();
        // Only ids here: a username would be a second address for the same page.
        let id = id.parse::<lanyard_core::ids::UserId>().map_err(|_| PortalError::not_found())?;
        let user = op.user(repo, &id.to_string()).await?;
        let group = op
            .groups(repo)
            .await?
            .into_iter()
            .find(|g| g.id == user.group)
            .map_or_else(|| user.group.to_string(), |g| g.name);
        let devices = op
            .find_devices(repo, &DeviceQuery { owner: Some(user.id), limit: 500, ..DeviceQuery::default() })
            .await?;
        let issue_refused = match op.may_issue_to(repo, user.id).await {
            Ok(_) => None,
            Err(lanyard_core::DomainError::PolicyDenied(why)) => Some(why.to_string()),
            Err(lanyard_core::DomainError::Validation(why)) => Some(why.reason),
            Err(e) => return Err(e.into()),
        };
        let passkeys = super::passkeys::user_rows(&op.passkeys_of_user(repo, user.id).await?);
        Ok::<_, PortalError>(UserPage {
            passkeys,
            nav: signed.nav(),
            section: "operator",
            issue_refused,
            roles: user.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", "),
            group,
            devices: device_rows(&op, repo, &devices).await?,
            user: UserRow::from(&user),
        })
    };
    let page = inner.await.map_err(|e| e.with_nav(nav))?;
    Ok(render(StatusCode::OK, &page))
}

/// The device actions the help desk offers here, in the order the page lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PortalAction {
    Activate,
    Suspend,
    Resume,
    Revoke,
    Lost,
    Stolen,
    Damaged,
    Terminate,
    Recycle,
    /// *Delete Mobile* (mobiles only).
    Delete,
}

const ACTIONS: [PortalAction; 10] = [
    PortalAction::Activate,
    PortalAction::Suspend,
    PortalAction::Resume,
    PortalAction::Revoke,
    PortalAction::Lost,
    PortalAction::Stolen,
    PortalAction::Damaged,
    PortalAction::Terminate,
    PortalAction::Recycle,
    PortalAction::Delete,
];

impl PortalAction {
    fn slug(self) -> &'static str {
        match self {
            Self::Activate => "activate",
            Self::Suspend => "suspend",
            Self::Resume => "resume",
            Self::Revoke => "revoke",
            Self::Lost => "lost",
            Self::Stolen => "stolen",
            Self::Damaged => "damaged",
            Self::Terminate => "terminate",
            Self::Recycle => "recycle",
            Self::Delete => "delete",
        }
    }

    fn parse(slug: &str) -> Option<Self> {
        ACTIONS.into_iter().find(|a| a.slug() == slug)
    }

    fn label(self) -> &'static str {
        match self {
            Self::Activate => "Activate",
            Self::Suspend => "Suspend",
            Self::Resume => "Resume",
            Self::Revoke => "Revoke",
            Self::Lost => "Mark lost",
            Self::Stolen => "Mark stolen",
            Self::Damaged => "Mark damaged",
            Self::Terminate => "Terminate",
            Self::Recycle => "Recycle",
            Self::Delete => "Delete mobile",
        }
    }

    fn kind(self) -> DeviceActionKind {
        match self {
            Self::Activate => DeviceActionKind::Activate,
            Self::Suspend => DeviceActionKind::Suspend,
            Self::Resume => DeviceActionKind::Resume,
            Self::Revoke => DeviceActionKind::Revoke,
            Self::Lost => DeviceActionKind::MarkLost,
            Self::Stolen => DeviceActionKind::MarkStolen,
            Self::Damaged => DeviceActionKind::MarkDamaged,
            Self::Terminate => DeviceActionKind::Terminate,
            Self::Recycle => DeviceActionKind::Recycle,
            Self::Delete => DeviceActionKind::Delete,
        }
    }

    /// What the action does, for the confirmation page.
    fn consequence(self) -> &'static str {
        match self {
            Self::Activate => {
                "The card becomes usable with its initial PIN, which is shown to you once on the next page so \
                 you can hand it to the holder. Revealing it is recorded in the audit log."
            }
            Self::Suspend => {
                "The device stops working until it is resumed: its certificates are put on hold, and OCSP and \
                 the revocation list report them so."
            }
            Self::Resume => {
                "The device returns to the state it was suspended from; its held certificates are valid again."
            }
            Self::Revoke => {
                "The device and every certificate on it are revoked for good, with the reason chosen below; \
                 devices derived from it are revoked too. This cannot be undone."
            }
            Self::Lost => {
                "The device is revoked for good as lost; its certificates are revoked as possibly compromised. \
                 This cannot be undone."
            }
            Self::Stolen => {
                "The device is revoked for good as stolen; its certificates are revoked as compromised. This \
                 cannot be undone."
            }
            Self::Damaged => {
                "The device is revoked for good as damaged; its certificates are revoked. This cannot be undone."
            }
            Self::Terminate => {
                "The device is retired: its certificates and derived devices are revoked. A terminated card \
                 can then be wiped and recycled."
            }
            Self::Recycle => {
                "The device goes back to stock without a holder, and its stored card secrets are discarded; \
                 issuing it again generates new ones."
            }
            Self::Delete => {
                "The mobile's certificates are revoked at once (OCSP and the revocation list report them) and \
                 the mobile is removed from the holder's devices. Lanyard cannot reach into the phone: tell the \
                 holder to remove the profile in Settings → General → VPN & Device Management. The holder \
                 may enrol the phone again afterwards."
            }
        }
    }

    fn danger(self) -> bool {
        !matches!(self, Self::Activate | Self::Resume)
    }
}

/// The reasons an operator may give for a plain revocation (lost, stolen and damaged have their
/// own actions; superseded and parent-revoked are Lanyard's own).
const REVOKE_REASONS: [(RevocationReason, &str); 5] = [
    (RevocationReason::Unspecified, "No particular reason"),
    (RevocationReason::KeyCompromise, "The keys may be known to someone else"),
    (RevocationReason::AffiliationChanged, "The holder left or changed roles"),
    (RevocationReason::PrivilegeWithdrawn, "The holder may no longer use it"),
    (RevocationReason::CessationOfOperation, "No longer needed"),
];

struct ActionLink {
    slug: &'static str,
    label: &'static str,
    danger: bool,
}

fn actions_for(d: &Device) -> Vec<ActionLink> {
    let allowed: Vec<DeviceActionKind> = allowed_device_actions(d.class(), d.state).collect();
    ACTIONS
        .into_iter()
        .filter(|a| allowed.contains(&a.kind()))
        .map(|a| ActionLink { slug: a.slug(), label: a.label(), danger: a.danger() })
        .collect()
}

struct StepRow {
    at: String,
    name: String,
    outcome: String,
    detail: String,
}

struct JobRow {
    id: String,
    kind: String,
    state: String,
    created: String,
    updated: String,
    steps: Vec<StepRow>,
}

impl From<&Job> for JobRow {
    fn from(j: &Job) -> Self {
        Self {
            id: j.id.to_string(),
            kind: j.kind.as_str().replace('_', " "),
            state: j.state.as_str().replace('_', " "),
            created: when(j.created_at),
            updated: when(j.updated_at),
            steps: j
                .steps
                .iter()
                .map(|s| StepRow {
                    at: when(s.at),
                    name: s.name.replace('_', " "),
                    outcome: s.outcome.as_str().replace('_', " "),
                    detail: s.detail.clone().unwrap_or_default(),
                })
                .collect(),
        }
    }
}

struct CertLink {
    id: String,
    serial: String,
}

#[derive(Template)]
#[template(path = "portal/operator_device.html")]
struct DevicePage {
    nav: Option<Nav>,
    section: &'static str,
    device: DeviceView,
    holder: Option<UserRow>,
    actions: Vec<ActionLink>,
    pem_links: Vec<CertLink>,
    jobs: Vec<JobRow>,
    trail: Vec<EventRow>,
    trail_truncated: bool,
    done: Option<String>,
    card_actions: Vec<CardActionRow>,
    /// The key's passkeys (tokens only), removable here.
    passkeys: Option<super::passkeys::PasskeySection>,
}

#[derive(Deserialize)]
pub(crate) struct DoneQuery {
    #[serde(default)]
    done: Option<String>,
}

/// Reads what a device page and its confirmation pages show about the holder.
pub(super) async fn holder_of<R: Repo>(
    op: &Operator<'_>,
    repo: &R,
    d: &Device,
) -> Result<Option<User>, PortalError> {
    match d.owner {
        Some(owner) => Ok(Some(op.user(repo, &owner.to_string()).await?)),
        None => Ok(None),
    }
}

/// One device: its state and holder, certificates (PEM downloads), jobs with their step logs,
/// its audit trail, and the actions its state allows.
pub(crate) async fn device<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
    Query(q): Query<DoneQuery>,
) -> Result<Response, PortalError> {
    let nav = signed.nav();
    let inner = async {
        let op = operator_of(&signed)?;
        let repo = s.repo.as_ref();
        let id = parse_device(&id)?;
        let d = op.device(repo, id).await?;
        let credentials = op.credentials(repo, id).await?;
        let holder = holder_of(&op, repo, &d).await?;
        let jobs = op.device_jobs(repo, id).await?;
        let mut events: Vec<AuditEvent> = Vec::new();
        let mut after = 0;
        loop {
            let page = op.device_history(repo, id, after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            events.extend(page);
        }
        let trail_truncated = events.len() > TRAIL_LIMIT;
        let trail = events.iter().rev().take(TRAIL_LIMIT).map(|e| EventRow::new(e, true)).collect();
        let done = q
            .done
            .as_deref()
            .and_then(PortalAction::parse)
            .map(|a| format!("Done: {} — the device is now {}.", a.label(), device_badge(d.state).label));
        let passkeys = op.passkeys_of_device(repo, id).await?;
        let passkeys = super::passkeys::for_operator(&d, &passkeys, &signed.session.csrf_token);
        Ok::<_, PortalError>(DevicePage {
            passkeys,
            nav: signed.nav(),
            section: "operator",
            actions: actions_for(&d),
            card_actions: card_actions_for(&d),
            pem_links: credentials
                .iter()
                .map(|c| CertLink { id: c.id.to_string(), serial: c.serial_hex().to_owned() })
                .collect(),
            device: DeviceView::new(&d, &credentials),
            holder: holder.as_ref().map(UserRow::from),
            jobs: jobs.iter().rev().map(JobRow::from).collect(),
            trail,
            trail_truncated,
            done,
        })
    };
    let page = inner.await.map_err(|e| e.with_nav(nav))?;
    Ok(render(StatusCode::OK, &page))
}

/// A certificate of the device as a PEM file.
pub(crate) async fn certificate_pem<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path((id, cid)): Path<(String, String)>,
) -> Result<Response, PortalError> {
    let nav = signed.nav();
    let inner = async {
        let op = operator_of(&signed)?;
        let id = parse_device(&id)?;
        let cid = cid.strip_suffix(".pem").unwrap_or(&cid);
        let cid = cid.parse::<CredentialId>().map_err(|_| PortalError::not_found())?;
        let credentials = op.credentials(s.repo.as_ref(), id).await?;
        let c = credentials.iter().find(|c| c.id == cid).ok_or_else(PortalError::not_found)?;
        let CredentialKind::Certificate { certificate_der, serial_hex, .. } = &c.kind;
        Ok::<_, PortalError>((pem("CERTIFICATE", certificate_der), serial_hex.clone()))
    };
    let (pem, serial) = inner.await.map_err(|e| e.with_nav(nav))?;
    // The serial is lowercase hex (the stores' form), safe in a header.
    let disposition = format!("attachment; filename=\"certificate-{serial}.pem\"");
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/x-pem-file".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        pem,
    )
        .into_response())
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

struct ReasonOption {
    value: &'static str,
    label: &'static str,
    selected: bool,
}

#[derive(Template)]
#[template(path = "portal/operator_confirm.html")]
struct ConfirmPage {
    nav: Option<Nav>,
    section: &'static str,
    csrf_token: String,
    device_id: String,
    device_name: String,
    serial: String,
    state: super::devices::Badge,
    holder: Option<UserRow>,
    slug: &'static str,
    label: &'static str,
    consequence: &'static str,
    danger: bool,
    reasons: Vec<ReasonOption>,
    note: String,
    error: Option<(String, String)>,
}

fn reason_options(selected: Option<&str>) -> Vec<ReasonOption> {
    REVOKE_REASONS
        .iter()
        .map(|(r, label)| ReasonOption { value: r.as_str(), label, selected: selected == Some(r.as_str()) })
        .collect()
}

async fn confirm_page<R: Repo>(
    s: &AppState<R>,
    signed: &SignedIn,
    id: &str,
    slug: &str,
) -> Result<ConfirmPage, PortalError> {
    let op = operator_of(signed)?;
    let action = PortalAction::parse(slug).ok_or_else(PortalError::not_found)?;
    let repo = s.repo.as_ref();
    let d = op.device(repo, parse_device(id)?).await?;
    let holder = holder_of(&op, repo, &d).await?;
    Ok(ConfirmPage {
        nav: signed.nav(),
        section: "operator",
        csrf_token: signed.session.csrf_token.clone(),
        device_id: d.id.to_string(),
        device_name: d.model.clone(),
        serial: d.serial.clone().unwrap_or_else(|| "—".into()),
        state: device_badge(d.state),
        holder: holder.as_ref().map(UserRow::from),
        slug: action.slug(),
        label: action.label(),
        consequence: action.consequence(),
        danger: action.danger(),
        reasons: if action == PortalAction::Revoke { reason_options(None) } else { Vec::new() },
        note: String::new(),
        error: None,
    })
}

/// Asks before acting: names the device and its holder, says what will happen, and takes a note.
pub(crate) async fn confirm<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path((id, slug)): Path<(String, String)>,
) -> Result<Response, PortalError> {
    if let Some(action) = CardAction::parse(&slug) {
        return operator_cards::confirm(&s, &signed, &id, action).await.map_err(|e| e.with_nav(signed.nav()));
    }
    let page = confirm_page(&s, &signed, &id, &slug).await.map_err(|e| e.with_nav(signed.nav()))?;
    Ok(render(StatusCode::OK, &page))
}

#[derive(Deserialize)]
pub(crate) struct ActionForm {
    #[serde(default)]
    csrf_token: Option<String>,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    /// Replace: the blank card that takes the device's place.
    #[serde(default)]
    card: Option<String>,
}

#[derive(Template)]
#[template(path = "portal/operator_activated.html")]
struct ActivatedPage {
    nav: Option<Nav>,
    section: &'static str,
    device_id: String,
    device_name: String,
    holder: Option<String>,
    initial_pin: String,
    /// The random FIDO PIN Lanyard set on the key (`shared`, `temporary` FIDO PIN modes).
    fido_pin: Option<String>,
}

/// Does the action, with the note in its audit event; then back to the device page (Post/
/// Redirect/Get), except activation, whose page shows the initial PIN this once.
pub(crate) async fn act<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path((id, slug)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let nav = signed.nav();
    operator_of(&signed).map_err(|e| e.with_nav(nav.clone()))?;
    if let Some(card_action) = CardAction::parse(&slug) {
        let form = operator_cards::CardActionForm { note: form.note, reason: form.reason, card: form.card };
        return operator_cards::act(&s, &signed, &id, card_action, form).await.map_err(|e| e.with_nav(nav));
    }
    let action = PortalAction::parse(&slug).ok_or_else(|| PortalError::not_found().with_nav(nav.clone()))?;
    let device = parse_device(&id).map_err(|e| e.with_nav(nav.clone()))?;
    let checked = (|| {
        let reason = match action {
            PortalAction::Revoke => {
                match form
                    .reason
                    .as_deref()
                    .and_then(|r| REVOKE_REASONS.iter().find(|(x, _)| x.as_str() == r))
                {
                    Some((r, _)) => Some(*r),
                    None => return Err(("reason", "Reason: choose one of the listed reasons.".to_owned())),
                }
            }
            _ => None,
        };
        let principal = signed
            .principal()
            .clone()
            .with_note(form.note.as_deref())
            .map_err(|e| ("note", format!("Note: {}.", e.reason)))?;
        Ok((reason, principal))
    })();
    let (reason, principal) = match checked {
        Ok(ok) => ok,
        // A form that cannot be accepted is shown again, filled in, with the field named.
        Err((field, message)) => {
            let mut page =
                confirm_page(&s, &signed, &id, &slug).await.map_err(|e| e.with_nav(nav.clone()))?;
            page.note = form.note.clone().unwrap_or_default();
            if !page.reasons.is_empty() {
                page.reasons = reason_options(form.reason.as_deref());
            }
            page.error = Some((field.to_owned(), message));
            return Ok(render(StatusCode::BAD_REQUEST, &page));
        }
    };
    let inner = async {
        let op = principal.operator().map_err(|_| PortalError::not_found())?;
        let repo = s.repo.as_ref();
        match action {
            PortalAction::Activate => {
                let cfg = crate::issuance::config(&s)?;
                let (d, pin, fido_pin) = op.activate_and_reveal_pins(repo, device, &cfg.kek).await?;
                let holder = holder_of(&op, repo, &d).await?.map(|u| u.username.to_string());
                let page = ActivatedPage {
                    nav: signed.nav(),
                    section: "operator",
                    device_id: d.id.to_string(),
                    device_name: d.model.clone(),
                    holder,
                    initial_pin: pin.expose_secret().to_owned(),
                    fido_pin: fido_pin.map(|p| p.expose_secret().to_owned()),
                };
                return Ok::<_, PortalError>(render(StatusCode::OK, &page));
            }
            PortalAction::Suspend => op.suspend_device(repo, device).await?,
            PortalAction::Resume => op.resume_device(repo, device).await?,
            PortalAction::Revoke => {
                // `reason` is Some for Revoke (checked above).
                op.revoke_device(repo, device, reason.unwrap_or(RevocationReason::Unspecified)).await?
            }
            PortalAction::Lost => op.mark_device_lost(repo, device).await?,
            PortalAction::Stolen => op.mark_device_stolen(repo, device).await?,
            PortalAction::Damaged => op.mark_device_damaged(repo, device).await?,
            PortalAction::Terminate => op.terminate_device(repo, device).await?,
            PortalAction::Recycle => op.recycle_device(repo, device).await?,
            PortalAction::Delete => op.delete_mobile(repo, device).await?,
        };
        Ok(Redirect::to(&format!("/portal/operator/devices/{device}?done={}", action.slug())).into_response())
    };
    inner.await.map_err(|e| e.with_nav(nav))
}
