//! A card session's page, `/portal/jobs/{id}`: follows the session live through server-sent
//! events, asks for the new PIN when the session waits for it ([`crate::portal_pin`]), shows the
//! result, and offers resume or rollback after a failure. *Add Device* leads here.

use std::convert::Infallible;
use std::time::Duration;

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use lanyard_core::authz::STEP_FIDO_PIN_PRESENT;
use lanyard_core::authz::{Principal, TicketPurpose};
use lanyard_core::ids::{AgentId, JobId};
use lanyard_core::lifecycle::DeviceState;
use lanyard_core::model::{
    Agent, CertSlot, Device, FidoPinMode, FidoPinRules, Job, JobKind, JobState, PinRules, Policy,
};
use lanyard_core::repo::Repo;
use lanyard_issuance::{STEP_PIN_BLOCKED, STEP_PIN_WRONG};
use lanyard_protocol::Secret;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::add_device::seen;
use super::passkeys::PasskeyRegisterView;
use super::session::CsrfForm;
use super::{Nav, PortalError, SignedIn, Viewer, render};
use crate::AppState;
use crate::link::LinkSnapshot;
use crate::portal_pin::{Asking, GiveError};

/// How long the PIN form waits for the card to confirm the new PIN before showing the result.
const PIN_CONFIRM_WAIT: Duration = Duration::from_secs(30);
/// How often the event stream looks at the job.
const EVENT_TICK: Duration = Duration::from_millis(400);
/// An event stream ends after this long; the browser reconnects, and the reconnection checks
/// the session again (an ended session is then a 401 the page explains).
const EVENT_STREAM_LIFETIME: Duration = Duration::from_secs(60);

/// A job as the signed-in person may see it on this page.
pub(crate) struct Visible {
    pub job: Job,
    pub device: Device,
    /// The device holder's group policy: the card's planned steps and PIN rules.
    pub policy: Policy,
    /// Whether the viewer holds the device (their own card, self-service).
    pub holder_views: bool,
    /// Whether the viewer may act on the session (PIN, resume, start over), not only follow it.
    pub may_act: bool,
    /// The holder's name, for an operator's page.
    pub holder: Option<String>,
}

/// Who may see job `id` on this page, and act on it. Every handler here reads the job through
/// this one function.
///
/// - The device's holder (role `user`) sees their own jobs and acts on them, as in *Add Device*.
///   Anyone else without the operator role gets the same 404 as for a job that does not exist.
/// - Operators see every job, as the API (`GET /api/v1/jobs/{id}`) and a device's help-desk
///   page already show them, so a help desk can follow a session a colleague started. Only the
///   operator who started the job acts on it: the session runs on the agent at that operator's
///   desk, where the holder types the PIN. Another operator's page shows progress only, and a
///   PIN, resume or start-over from them is refused (403), so nobody sets a PIN from a desk that
///   is not where the card is.
pub(crate) async fn visible_job<R: Repo>(
    s: &AppState<R>,
    who: &Principal,
    id: JobId,
) -> Result<Visible, PortalError> {
    let repo = s.repo.as_ref();
    if let Ok(me) = who.self_service()
        && let Ok(job) = me.job(repo, id).await
    {
        let device = me.device(repo, job.device).await?;
        let policy = me.policy(repo).await?;
        return Ok(Visible { job, device, policy, holder_views: true, may_act: true, holder: None });
    }
    // Not the holder's: only an operator sees it, and anyone else learns nothing.
    let op = who.operator().map_err(|_| PortalError::not_found())?;
    let job = op.job(repo, id).await?;
    let (device, holder, policy) = op.issuance_context(repo, job.device).await?;
    let may_act = job.created_by == Some(who.user().id);
    let holder = Some(format!("{} ({})", holder.display_name, holder.username));
    Ok(Visible { job, device, policy, holder_views: false, may_act, holder })
}

/// [`visible_job`], for a request that acts on the session.
async fn actionable_job<R: Repo>(
    s: &AppState<R>,
    who: &Principal,
    id: JobId,
) -> Result<Visible, PortalError> {
    let v = visible_job(s, who, id).await?;
    if !v.may_act {
        return Err(PortalError::from(crate::ApiError::new(
            StatusCode::FORBIDDEN,
            "only the operator who started this card session acts on it: the card is at their workstation",
        )));
    }
    Ok(v)
}

/// What the job's page shows, decided by the job, its device and the PIN desk.
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    /// The ticket went to the agent; the session has not begun.
    Starting,
    Running,
    /// The card is personalised and the session waits for the new PIN from this page.
    PinWanted,
    /// Personalised; the new PIN is being written or is about to be asked for.
    Finishing,
    /// Issued, the PIN changed.
    Active,
    /// Issued with the initial PIN kept.
    Pending,
    /// Any other finished session (a wipe).
    Finished,
    Failed,
    RolledBack,
    /// *Change PIN* done: the card takes the new PIN.
    PinChanged,
    /// *Unlock PIN* done: the PIN is unblocked and set to the new one.
    Unlocked,
    /// *Change PIN*: the card refused the current PIN; nothing changed but its retry counter.
    PinWrong,
    /// *Change PIN*: the card's PIN is blocked.
    PinBlocked,
    /// Issuance (`independent` FIDO PIN mode): the session waits for the key's FIDO PIN from this
    /// page.
    FidoPinWanted,
    /// Issuance stopped: the key already has a FIDO PIN, and erasing it needs the holder's word.
    FidoConsent,
}

impl Phase {
    fn ends(self) -> bool {
        matches!(
            self,
            Phase::Active
                | Phase::Pending
                | Phase::Finished
                | Phase::Failed
                | Phase::RolledBack
                | Phase::PinChanged
                | Phase::Unlocked
                | Phase::PinWrong
                | Phase::PinBlocked
                | Phase::FidoConsent
        )
    }
}

/// Whether `kind` is a PIN job (*Change PIN*, *Unlock PIN*): its page asks for PINs and has
/// a short progress of its own.
fn is_pin_job(kind: JobKind) -> bool {
    matches!(kind, JobKind::ChangePin | JobKind::Unlock)
}

#[cfg(test)]
fn phase(
    job: &Job,
    device: DeviceState,
    pin_wanted: bool,
    pin_expected: bool,
    now: time::OffsetDateTime,
) -> Phase {
    phase_of(job, device, pin_wanted, false, pin_expected, now)
}

/// [`phase`], knowing whether the PIN asked for is the key's FIDO PIN.
fn phase_of(
    job: &Job,
    device: DeviceState,
    pin_wanted: bool,
    fido_wanted: bool,
    pin_expected: bool,
    now: time::OffsetDateTime,
) -> Phase {
    let refused = |step: &str| {
        job.steps.iter().any(|s| s.name == step && s.outcome == lanyard_core::model::StepOutcome::Failed)
    };
    // The last failure the session recorded, not the generic `session` step that follows it.
    let stopped_at = job
        .steps
        .iter()
        .rev()
        .find(|s| s.outcome == lanyard_core::model::StepOutcome::Failed && s.name != "session")
        .map(|s| s.name.as_str());
    match job.state {
        JobState::Created => Phase::Starting,
        JobState::Running if fido_wanted => Phase::FidoPinWanted,
        JobState::Running if pin_wanted && is_pin_job(job.kind) => Phase::PinWanted,
        JobState::Running if is_pin_job(job.kind) && !pin_expected => Phase::Finishing,
        JobState::Running => Phase::Running,
        JobState::Failed if job.kind == JobKind::ChangePin && refused(STEP_PIN_BLOCKED) => Phase::PinBlocked,
        JobState::Failed if job.kind == JobKind::ChangePin && refused(STEP_PIN_WRONG) => Phase::PinWrong,
        // Resume or Start over sent a new ticket after the failure and its session has not begun:
        // the page waits for it as for a first session. Shown as Failed, the page would end its
        // event stream and never move on when the session starts.
        JobState::Failed if job.agent_ticket.is_some() && job.ticket_expires_at.is_some_and(|t| t > now) => {
            Phase::Starting
        }
        JobState::Failed if job.kind == JobKind::Issuance && stopped_at == Some(STEP_FIDO_PIN_PRESENT) => {
            Phase::FidoConsent
        }
        JobState::Failed => Phase::Failed,
        JobState::RolledBack => Phase::RolledBack,
        JobState::Succeeded if job.kind == JobKind::ChangePin => Phase::PinChanged,
        JobState::Succeeded if job.kind == JobKind::Unlock => Phase::Unlocked,
        JobState::Succeeded if pin_wanted => Phase::PinWanted,
        JobState::Succeeded => match device {
            DeviceState::Active => Phase::Active,
            DeviceState::Pending if pin_expected => Phase::Finishing,
            DeviceState::Pending => Phase::Pending,
            DeviceState::Issuing => Phase::Finishing,
            _ => Phase::Finished,
        },
    }
}

/// The engine's step names in order (`lanyard_personalize`'s stable names) and what the page
/// calls them. The key generation steps are those of the slots the policy plans.
fn step_label(name: &str) -> &'static str {
    match name {
        "detect" => "Identifying the card",
        "authenticate" => "Authenticating to the card",
        "rotate_management_key" => "Setting a new management key",
        "set_retries" => "Setting the PIN and PUK retry counters",
        "set_puk" => "Setting the PUK",
        "set_pin" => "Setting the initial PIN",
        "generate_9a" => "Generating the authentication key (slot 9A)",
        "generate_9c" => "Generating the signature key (slot 9C)",
        "generate_9d" => "Generating the key management key (slot 9D)",
        "generate_9e" => "Generating the card authentication key (slot 9E)",
        "attest" => "Checking the keys' attestation",
        "issue_certificates" => "Issuing the certificates",
        "sign_chuid" => "Signing the card holder identifier",
        "write_certificates" => "Writing the certificates",
        "write_chuid" => "Writing the card holder identifier",
        "write_ccc" => "Writing the card capability container",
        "write_discovery" => "Writing the discovery object",
        "write_key_history" => "Writing the key history",
        "fido_detect" => "Looking at the key's FIDO2 application",
        "fido_reset" => "Resetting the key's FIDO2 application",
        "fido_min_length" => "Setting the shortest FIDO PIN the key accepts",
        "fido_set_pin" => "Setting the key's FIDO PIN",
        "fido_force_change" => "Making the key ask for a new FIDO PIN at first use",
        _ => "Working",
    }
}

fn planned_steps(slots: impl Iterator<Item = CertSlot>) -> Vec<&'static str> {
    let mut generate: Vec<&'static str> = slots
        .filter_map(|s| match s {
            CertSlot::PivAuthentication => Some("generate_9a"),
            CertSlot::DigitalSignature => Some("generate_9c"),
            CertSlot::KeyManagement => Some("generate_9d"),
            CertSlot::CardAuthentication => Some("generate_9e"),
            _ => None,
        })
        .collect();
    generate.sort_unstable();
    generate.dedup();
    let mut v = vec!["detect", "authenticate", "rotate_management_key", "set_retries", "set_puk", "set_pin"];
    v.extend(generate);
    v.extend([
        "attest",
        "issue_certificates",
        "sign_chuid",
        "write_certificates",
        "write_chuid",
        "write_ccc",
        "write_discovery",
        "write_key_history",
    ]);
    v
}

/// One step as the page lists it.
pub(crate) struct StepRow {
    pub label: &'static str,
    pub done: bool,
    pub current: bool,
}

/// The job's progress: what the event stream sends and the page shows.
#[derive(Clone, PartialEq, Serialize)]
pub(crate) struct Progress {
    pub phase: Phase,
    /// 0–100.
    pub percent: u8,
    /// The step under way, or the result, in words; the live region announces it.
    pub status: String,
}

struct Snapshot {
    job: Job,
    holder_views: bool,
    may_act: bool,
    holder: Option<String>,
    device_state: DeviceState,
    device_id: String,
    rules: Option<Asking>,
    phase: Phase,
    steps: Vec<StepRow>,
    progress: Progress,
    failure: Option<String>,
    fido_mode: FidoPinMode,
    /// The holder's group lets them register and use passkeys.
    passkeys_allowed: bool,
}

async fn snapshot<R: Repo>(s: &AppState<R>, who: &Principal, id: JobId) -> Result<Snapshot, PortalError> {
    let Visible { job, device, policy, holder_views, may_act, holder } = visible_job(s, who, id).await?;
    let rules = crate::cluster::pin_wanted(s, id).await;
    let fido_wanted = rules.is_some_and(|a| a.fido.is_some());
    let expects = crate::cluster::pin_expects(s, id).await;
    let phase = phase_of(&job, device.state, rules.is_some(), fido_wanted, expects, s.clock.now());
    let failure = job
        .steps
        .iter()
        .rev()
        .find(|s| s.outcome == lanyard_core::model::StepOutcome::Failed)
        .and_then(|s| s.detail.clone());
    let (steps, percent, status) = if is_pin_job(job.kind) {
        // The card's refusal in its own words (the session's failure wraps it).
        let refused_step = match phase {
            Phase::PinWrong => Some(STEP_PIN_WRONG),
            Phase::PinBlocked => Some(STEP_PIN_BLOCKED),
            _ => None,
        };
        let refusal = refused_step
            .and_then(|name| job.steps.iter().rev().find(|s| s.name == name))
            .and_then(|s| s.detail.clone());
        let (percent, status) = pin_progress(job.kind, phase, refusal.as_deref().or(failure.as_deref()));
        (Vec::new(), percent, status)
    } else {
        issuance_progress(&policy, &job, phase)
    };
    // A PIN job's own refusals are its result, not a failure to explain again.
    let failure = if matches!(phase, Phase::PinWrong | Phase::PinBlocked) { None } else { failure };
    Ok(Snapshot {
        holder_views,
        may_act,
        holder,
        device_id: device.id.to_string(),
        device_state: device.state,
        job,
        rules,
        phase,
        steps,
        progress: Progress { phase, percent, status },
        failure,
        fido_mode: policy.fido_pin_mode,
        passkeys_allowed: policy.sign_in.passkeys_allowed(),
    })
}

/// An issuance's steps on the card (from its checkpoint), its percentage and status line.
fn issuance_progress(policy: &Policy, job: &Job, phase: Phase) -> (Vec<StepRow>, u8, String) {
    let mut names = planned_steps(policy.certificates.keys().copied());
    let read = |c: Option<&serde_json::Value>| -> Vec<String> {
        c.and_then(|c| serde_json::from_value(c.clone()).ok()).unwrap_or_default()
    };
    let checkpoint = job.checkpoint.as_ref();
    let mut completed = read(checkpoint.and_then(|c| c.get("completed")));
    // The FIDO phase's steps follow the card's, when the policy sets a FIDO PIN.
    if policy.fido_pin_mode.sets_pin() {
        names.extend(["fido_detect", "fido_min_length", "fido_set_pin"]);
        if policy.fido_pin_mode == FidoPinMode::Temporary {
            names.push("fido_force_change");
        }
        completed.extend(read(checkpoint.and_then(|c| c.get("fido")).and_then(|f| f.get("completed"))));
    }
    let is_done = |n: &str| completed.iter().any(|c| c == n);
    let current = names.iter().copied().find(|n| !is_done(n));
    let steps: Vec<StepRow> = names
        .iter()
        .map(|n| StepRow {
            label: step_label(n),
            done: is_done(n),
            current: phase == Phase::Running && Some(*n) == current,
        })
        .collect();
    let done = steps.iter().filter(|s| s.done).count();
    // The card's own steps are 90 %; the PIN and the activation the rest.
    let running = u8::try_from(done * 90 / names.len().max(1)).unwrap_or(90);
    let (percent, status) = match phase {
        Phase::Starting => (0, "Waiting for the workstation to start the session".to_owned()),
        Phase::Running => (running, format!("{}…", current.map_or("Finishing", step_label))),
        Phase::PinWanted => (92, "The card is ready: choose your new PIN".to_owned()),
        Phase::FidoPinWanted => (90, "The card is ready: choose your key's FIDO PIN".to_owned()),
        Phase::FidoConsent => {
            (running, "Stopped: the key already has a FIDO PIN; erasing it needs your word".to_owned())
        }
        Phase::Finishing => (95, "Setting your PIN on the card".to_owned()),
        Phase::Active => (100, "Done: your device is active".to_owned()),
        Phase::Pending => (100, "Issued; the initial PIN was kept, so the device is pending".to_owned()),
        Phase::Finished => (100, "The session has finished".to_owned()),
        Phase::RolledBack => (0, "Undone: the card was reset and nothing was issued".to_owned()),
        _ => (running, "The session stopped before the card was finished".to_owned()),
    };
    (steps, percent, status)
}

/// A PIN job's percentage and status line: it checks the card, waits for the PINs from this
/// page, and has the agent send them to the card.
fn pin_progress(kind: JobKind, phase: Phase, failure: Option<&str>) -> (u8, String) {
    let change = kind == JobKind::ChangePin;
    match phase {
        Phase::Starting => (0, "Waiting for the workstation to start the session".to_owned()),
        Phase::Running => (30, "Checking that the card in the reader is this device…".to_owned()),
        Phase::PinWanted if change => {
            (50, "The card is ready: type your current PIN and a new one".to_owned())
        }
        Phase::PinWanted => (50, "The card is ready: choose your new PIN".to_owned()),
        Phase::Finishing if change => (80, "Changing the PIN on the card…".to_owned()),
        Phase::Finishing => (80, "Unlocking the PIN on the card…".to_owned()),
        Phase::PinChanged => (100, "Done: your PIN is changed".to_owned()),
        Phase::Unlocked => (100, "Done: your PIN is unlocked and set to the new one".to_owned()),
        Phase::PinWrong => (100, format!("Not changed: {}", failure.unwrap_or("the current PIN is wrong"))),
        Phase::PinBlocked => (100, "Not changed: the PIN is blocked".to_owned()),
        _ if change => (100, "The session stopped; the PIN was not changed".to_owned()),
        _ => (100, "The session stopped; the PIN was not unlocked".to_owned()),
    }
}

#[derive(Template)]
#[template(path = "portal/job.html")]
struct JobPage {
    nav: Option<Nav>,
    section: &'static str,
    csrf_token: String,
    job_id: String,
    device_id: String,
    device_state: &'static str,
    phase: &'static str,
    /// `issuance`, `change_pin`, `unlock` or `wipe`.
    kind: &'static str,
    progress: Progress,
    steps: Vec<StepRow>,
    rules: Option<PinRules>,
    seconds_left: u64,
    /// The form asks for the card's current PIN too.
    ask_current: bool,
    failure: Option<String>,
    notice: Option<String>,
    pin_error: Option<String>,
    /// The viewer holds the device (links go to My Devices) rather than being an operator.
    holder_views: bool,
    /// The PIN form and Resume / Start over are shown.
    may_act: bool,
    /// For an operator: whose card this is.
    holder: Option<String>,
    /// The rules of the FIDO PIN the page asks for (`independent` mode).
    fido_rules: Option<FidoPinRules>,
    /// The group's FIDO PIN mode (`none`, `independent`, `shared`, `temporary`).
    fido_mode: &'static str,
    /// Lanyard's random FIDO PIN, when the holder is to see it now: `shared` while the
    /// device PIN is asked for (for the passkey registration), `temporary` once at the end.
    fido_pin: Option<String>,
    /// The *Register a passkey* piece, when the page offers it before the device PIN form.
    passkey: Option<PasskeyRegisterView>,
    /// Lanyard set a FIDO PIN on the key in this job (`shared` mode: the device PIN the holder
    /// chose became the FIDO PIN too).
    fido_pin_set: bool,
    /// The page would offer it, but was reached at another address than the relying party's.
    passkey_elsewhere: bool,
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Starting => "starting",
        Phase::Running => "running",
        Phase::PinWanted => "pin_wanted",
        Phase::Finishing => "finishing",
        Phase::Active => "active",
        Phase::Pending => "pending",
        Phase::Finished => "finished",
        Phase::Failed => "failed",
        Phase::RolledBack => "rolled_back",
        Phase::PinChanged => "pin_changed",
        Phase::Unlocked => "unlocked",
        Phase::PinWrong => "pin_wrong",
        Phase::PinBlocked => "pin_blocked",
        Phase::FidoPinWanted => "fido_pin_wanted",
        Phase::FidoConsent => "fido_consent",
    }
}

pub(crate) async fn job_page<R: Repo + 'static>(
    s: &AppState<R>,
    signed: &SignedIn,
    id: JobId,
    notice: Option<String>,
    status: StatusCode,
) -> Result<Response, PortalError> {
    job_page_with(s, signed, id, notice, None, status).await
}

async fn job_page_with<R: Repo + 'static>(
    s: &AppState<R>,
    signed: &SignedIn,
    id: JobId,
    notice: Option<String>,
    pin_error: Option<String>,
    status: StatusCode,
) -> Result<Response, PortalError> {
    let snap = snapshot(s, signed.principal(), id).await?;
    let fido_pin = if snap.holder_views { fido_pin_to_show(s, &snap).await } else { None };
    let offered = offers_passkey(&snap, signed.principal());
    let at_rp = signed.at_relying_party(s);
    let passkey = (offered && at_rp).then(|| PasskeyRegisterView {
        device: snap.device_id.clone(),
        csrf: signed.session.csrf_token.clone(),
        reload: false,
    });
    let page = JobPage {
        passkey,
        fido_pin_set: fido_pin_set(&snap.job),
        passkey_elsewhere: offered && !at_rp,
        fido_rules: snap.rules.and_then(|a| a.fido),
        fido_mode: snap.fido_mode.as_str(),
        fido_pin,
        nav: signed.nav(),
        section: if snap.holder_views { "devices" } else { "operator" },
        holder_views: snap.holder_views,
        may_act: snap.may_act,
        holder: snap.holder,
        csrf_token: signed.session.csrf_token.clone(),
        job_id: snap.job.id.to_string(),
        device_id: snap.device_id,
        device_state: super::devices::device_badge(snap.device_state).label,
        phase: phase_name(snap.phase),
        kind: snap.job.kind.as_str(),
        progress: snap.progress,
        steps: snap.steps,
        rules: snap.rules.filter(|a| a.fido.is_none()).map(|a| a.rules),
        seconds_left: snap.rules.map_or(0, |a| a.seconds_left),
        ask_current: snap.rules.is_some_and(|a| a.current && a.fido.is_none()),
        failure: snap.failure,
        notice,
        pin_error,
    };
    Ok(render(status, &page))
}

fn job_id(raw: &str) -> Result<JobId, PortalError> {
    // A malformed id names no job of anyone's: the same 404.
    raw.parse().map_err(|_| PortalError::not_found())
}

/// `GET /portal/jobs/{id}`: the session's progress, the PIN form, or the result.
pub(crate) async fn job<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
) -> Result<Response, PortalError> {
    let nav = signed.nav();
    let inner = async { job_page(&s, &signed, job_id(&id)?, None, StatusCode::OK).await };
    inner.await.map_err(|e| e.with_nav(nav))
}

/// `GET /portal/jobs/{id}/events`: the job's progress as server-sent events (`progress`, JSON
/// [`Progress`]), one whenever it changes. Without a session it is a 401, which the page
/// explains (the card session itself goes on: it is not tied to the portal's session).
pub(crate) async fn events<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    let Some(session) = viewer.0 else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "Your portal session has ended; sign in again to follow the card session.",
        )
            .into_response();
    };
    let principal = session.auth.principal.clone();
    let Ok(id) = id.parse::<JobId>() else { return PortalError::not_found().into_response() };
    let first = match snapshot(&s, &principal, id).await {
        Ok(snap) => snap.progress,
        Err(e) => return e.into_response(),
    };
    let until = tokio::time::Instant::now() + EVENT_STREAM_LIFETIME;
    let stream =
        futures_util::stream::unfold((Some(first), None::<Progress>, false), move |(next, last, ended)| {
            let s = s.clone();
            let principal = principal.clone();
            async move {
                if ended {
                    return None;
                }
                let mut next = next;
                loop {
                    if let Some(p) = next.take()
                        && last.as_ref() != Some(&p)
                    {
                        let ends = p.phase.ends() || tokio::time::Instant::now() >= until;
                        let event = Event::default()
                            .event("progress")
                            .json_data(&p)
                            .unwrap_or_else(|_| Event::default().comment("unserialisable"));
                        return Some((Ok::<_, Infallible>(event), (None, Some(p), ends)));
                    }
                    if tokio::time::Instant::now() >= until {
                        return None;
                    }
                    tokio::time::sleep(EVENT_TICK).await;
                    // The job may have become unreadable (a database hiccup): end the stream and
                    // let the browser reconnect.
                    next = Some(snapshot(&s, &principal, id).await.ok()?.progress);
                }
            }
        });
    let mut resp = Sse::new(stream).keep_alive(KeepAlive::default()).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    resp
}

#[derive(Deserialize)]
pub(crate) struct PinForm {
    #[serde(default)]
    csrf_token: Option<String>,
    /// `set`; or `skip` (issuance: keep the initial PIN); or `cancel` (a PIN job: change
    /// nothing).
    #[serde(default)]
    action: Option<String>,
    /// The card's current PIN (*Change PIN* only).
    #[serde(default)]
    current_pin: Option<Secret>,
    #[serde(default)]
    new_pin: Option<Secret>,
    #[serde(default)]
    confirm_pin: Option<Secret>,
}

/// What the holder answered on the PIN form, checked for what the page itself can tell.
fn read_pin_form(form: PinForm, kind: JobKind) -> Result<(Option<Secret>, Option<Secret>), String> {
    let pin_job = is_pin_job(kind);
    match form.action.as_deref() {
        Some("skip") if !pin_job => Ok((None, None)),
        Some("cancel") if pin_job => Ok((None, None)),
        Some("set") => {
            let current = if kind == JobKind::ChangePin {
                match form.current_pin {
                    Some(c) if !c.expose().is_empty() => Some(c),
                    _ => return Err("Type your current PIN.".into()),
                }
            } else {
                None
            };
            match (form.new_pin, form.confirm_pin) {
                (None, _) => Err("Type your new PIN.".into()),
                (Some(p), _) if p.expose().is_empty() => Err("Type your new PIN.".into()),
                (Some(p), c) if c.as_ref().map(Secret::expose) != Some(p.expose()) => {
                    Err("The two PINs differ: type the same new PIN in both fields.".into())
                }
                (Some(p), _) => Ok((current, Some(p))),
            }
        }
        _ if pin_job => Err("Choose Change PIN or Cancel.".into()),
        _ => Err("Choose Set PIN or Skip.".into()),
    }
}

/// `POST /portal/jobs/{id}/pin`: the new PIN (typed twice, with the card's current PIN for
/// *Change PIN*), *Skip* or *Cancel*, handed to the waiting session ([`crate::portal_pin`]):
/// checked here against the group's rules, never stored, logged or shown again.
pub(crate) async fn pin<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<PinForm>,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let nav = signed.nav();
    let inner = async {
        let id = job_id(&id)?;
        let Visible { job, .. } = actionable_job(&s, signed.principal(), id).await?;
        let (current, new) = match read_pin_form(form, job.kind) {
            Ok(answer) => answer,
            Err(message) => {
                return job_page_with(&s, &signed, id, None, Some(message), StatusCode::BAD_REQUEST).await;
            }
        };
        let setting = new.is_some();
        if let Err(e) = crate::cluster::pin_give(&s, id, current, new).await {
            let message = match e {
                GiveError::Unavailable => e.to_string(),
                GiveError::NotWaiting => {
                    let message =
                        "The card session is no longer waiting for a PIN: the time for it ran out, \
                                   or it was already answered. The page shows where the device is now."
                            .to_owned();
                    return job_page(&s, &signed, id, Some(message), StatusCode::CONFLICT).await;
                }
                GiveError::Rules(e) => format!("{e}. Choose another PIN."),
                GiveError::CurrentMissing => "Type your current PIN.".to_owned(),
                GiveError::CurrentTooLong => format!(
                    "The current PIN you typed is longer than a card's PIN can be ({} characters at most); \
                     nothing was sent to the card.",
                    crate::portal_pin::MAX_CARD_PIN
                ),
                GiveError::CurrentNotAsked => "This session asks only for a new PIN.".to_owned(),
                GiveError::Unchanged => {
                    "The new PIN is the same as the current one: choose another.".to_owned()
                }
                GiveError::PinMissing => "Type your card's PIN.".to_owned(),
                GiveError::FidoRules(e) => format!("{e}. Choose another FIDO PIN."),
                GiveError::PinTooLong => format!(
                    "A card's PIN has at most {} characters; nothing was sent to the card.",
                    crate::portal_pin::MAX_CARD_PIN
                ),
            };
            return job_page_with(&s, &signed, id, None, Some(message), StatusCode::BAD_REQUEST).await;
        }
        // Wait for the card's answer, so the page shows the result rather than the moment in
        // between: the device activated (issuance), or the PIN job ended.
        let deadline = tokio::time::Instant::now() + PIN_CONFIRM_WAIT;
        while setting && tokio::time::Instant::now() < deadline {
            let Visible { job, device, .. } = visible_job(&s, signed.principal(), id).await?;
            let settled = if is_pin_job(job.kind) {
                job.state != JobState::Running
            } else {
                device.state != DeviceState::Pending
            };
            if settled {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Redirect::to(&format!("/portal/jobs/{id}")).into_response())
    };
    inner.await.map_err(|e: PortalError| e.with_nav(nav))
}

/// The reader of one of the user's online agents that holds the job's card: matched by the
/// card's serial (recorded when issuance began), or, for a card without one, the only card in
/// the user's readers.
/// How long Resume and Start over look for the device's card to be free in a reader.
const CARD_WAIT: Duration = Duration::from_secs(5);

fn find_card(online: &[(Agent, LinkSnapshot)], serial: Option<&str>) -> Result<(AgentId, String), String> {
    let mut found = Vec::new();
    let mut busy_match = false;
    for (agent, snapshot) in online {
        for r in snapshot.readers.iter().flatten().filter(|r| r.card_present) {
            let card_serial = r.card.as_ref().and_then(|c| c.serial.as_deref());
            let busy = r.card.as_ref().is_some_and(|c| c.busy);
            let matches = serial.is_none() || card_serial == serial;
            busy_match |= busy && matches;
            if !busy && matches {
                found.push((agent.id, r.name.clone()));
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 if busy_match => Err("A card session is still running on this card (its workstation has not \
                                reported it finished). Wait a moment and try again."
            .to_owned()),
        0 => Err(match serial {
            Some(sn) => format!(
                "The card (serial {sn}) is not in a reader of a workstation whose agent is running. \
                 Insert it, wait a moment, and try again."
            ),
            None => "No card is in a reader of a workstation whose agent is running. Insert it, \
                     wait a moment, and try again."
                .to_owned(),
        }),
        _ => Err("Several cards are inserted; leave only this device in a reader and try again.".to_owned()),
    }
}

async fn continue_job<R: Repo + 'static>(
    s: &AppState<R>,
    signed: &SignedIn,
    id: &str,
    purpose: TicketPurpose,
) -> Result<Response, PortalError> {
    let id = job_id(id)?;
    let Visible { job, device, .. } = actionable_job(s, signed.principal(), id).await?;
    if job.kind != JobKind::Issuance {
        let message = format!(
            "Only an issuance is resumed or undone here. To try again, start a new session from \
             the device's page: /portal/devices/{}.",
            device.id
        );
        return job_page(s, signed, id, Some(message), StatusCode::CONFLICT).await;
    }
    // The agents' reports may predate the end of the session that just failed (the card still
    // marked busy until the agent says the session ended) or the card's reinsertion: ask for
    // fresh reports, and look again for a little while before refusing.
    let deadline = tokio::time::Instant::now() + CARD_WAIT;
    let mut asked = false;
    let found = loop {
        let online = seen(s, signed.principal()).await?.online;
        let found = find_card(&online, device.serial.as_deref());
        if found.is_ok() || tokio::time::Instant::now() >= deadline {
            break found;
        }
        if !asked {
            super::add_device::ask_to_report(s, &online).await;
            asked = true;
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (agent, reader) = match found {
        Ok(found) => found,
        Err(message) => return job_page(s, signed, id, Some(message), StatusCode::CONFLICT).await,
    };
    // A resumed issuance asks for the PIN here again; a rollback sets none.
    let from_portal = purpose != TicketPurpose::Rollback;
    match crate::link::start_session(s, signed.principal(), agent, id, &reader, purpose, from_portal).await {
        Ok(_) => Ok(Redirect::to(&format!("/portal/jobs/{id}")).into_response()),
        Err(e) => job_page(s, signed, id, Some(e.message().to_owned()), StatusCode::CONFLICT).await,
    }
}

/// `POST /portal/jobs/{id}/resume`: a new session on the same job, from its checkpoint.
pub(crate) async fn resume<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let nav = signed.nav();
    continue_job(&s, &signed, &id, TicketPurpose::Run).await.map_err(|e| e.with_nav(nav))
}

/// `POST /portal/jobs/{id}/erase-fido`: the holder agrees that the key's FIDO PIN, and every
/// passkey on the key, be erased, and the issuance resumes: the consent is recorded on the job
/// (and audited with the new ticket), and the resumed session resets the key's FIDO application
/// before setting the PIN the policy asks for.
pub(crate) async fn erase_fido<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let nav = signed.nav();
    continue_job(&s, &signed, &id, TicketPurpose::RunErasingFido).await.map_err(|e| e.with_nav(nav))
}

/// Whether the key's FIDO phase set a FIDO PIN (so the key has a FIDO2 application, with a PIN).
fn fido_pin_set(job: &Job) -> bool {
    let completed = job.checkpoint.as_ref().and_then(|c| c.get("fido")).and_then(|f| f.get("completed"));
    completed.and_then(|c| c.as_array()).is_some_and(|c| c.iter().any(|n| n == "fido_set_pin"))
}

/// Whether the issuance page offers registering the key as a passkey now (flow B: the step
/// before the device PIN). Only to the holder, in the issuance job they started themselves,
/// while its card session waits for the device PIN (the device is Pending by then, the job's
/// card work Succeeded); only when their group allows passkeys, the key's FIDO
/// phase set a FIDO PIN the holder can type (`shared`: the temporary one shown beside it;
/// `independent`: the one they just chose; `temporary` keys refuse PIN tokens until the PIN is
/// changed, so not there), and the domain would accept it
/// ([`lanyard_core::authz::SelfService::start_passkey_registration`]).
fn offers_passkey(snap: &Snapshot, viewer: &Principal) -> bool {
    snap.holder_views
        && snap.job.kind == JobKind::Issuance
        && snap.job.created_by == Some(viewer.user().id)
        && snap.phase == Phase::PinWanted
        && matches!(snap.fido_mode, FidoPinMode::Shared | FidoPinMode::Independent)
        && snap.passkeys_allowed
        && fido_pin_set(&snap.job)
}

/// Lanyard's random FIDO PIN for the holder's page, if it is to be shown now: in `shared` mode
/// while the device PIN is asked for (the passkey registration made during issuance needs it),
/// in `temporary` mode once the issuance is over — once: the first page that shows it records
/// so on the job (`fido_pin_shown` in its checkpoint) and the reveal is audited. Read only for
/// the device's holder (the caller checked [`visible_job`]); never logged.
async fn fido_pin_to_show<R: Repo>(s: &AppState<R>, snap: &Snapshot) -> Option<String> {
    let when = match (snap.fido_mode, snap.phase) {
        (FidoPinMode::Shared, Phase::PinWanted) => "shared",
        (FidoPinMode::Temporary, Phase::Active | Phase::Pending) => "temporary",
        _ => return None,
    };
    if !fido_pin_set(&snap.job) {
        return None;
    }
    let job_id = snap.job.id;
    let device = snap.job.device;
    let cfg = crate::issuance::config(s).ok()?;
    let sealed = {
        use lanyard_core::repo::prelude::*;
        s.repo.read().await.ok()?.get_card_secrets(device).await.ok()??
    };
    let secrets = lanyard_core::secrets::CardSecrets::open(&sealed, &cfg.kek, device).ok()?;
    let pin = secrets.fido_pin()?.expose_secret().to_owned();
    let system = lanyard_core::authz::System::new(lanyard_core::audit::OperationId::random(), s.clock.now());
    if when == "temporary" {
        if snap.job.checkpoint.as_ref().and_then(|c| c.get("fido_pin_shown")).is_some() {
            return None;
        }
        let mut job = snap.job.clone();
        if let Some(map) = job.checkpoint.as_mut().and_then(|c| c.as_object_mut()) {
            map.insert("fido_pin_shown".into(), serde_json::Value::Bool(true));
        }
        // Another page that showed it first wins: a stale write shows nothing.
        system.save_job(s.repo.as_ref(), &mut job).await.ok()?;
    }
    let after = serde_json::json!({"mode": when, "shown_to": "holder", "job": job_id});
    system.audit_fido(s.repo.as_ref(), device, "fido_pin_shown", after).await.ok()?;
    Some(pin)
}

/// `POST /portal/jobs/{id}/rollback`: *Start over*: the card is reset and the job undone.
pub(crate) async fn rollback<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let nav = signed.nav();
    continue_job(&s, &signed, &id, TicketPurpose::Rollback).await.map_err(|e| e.with_nav(nav))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_job_with_a_fresh_ticket_waits_for_its_new_session() {
        let now = time::macros::datetime!(2026-01-05 10:00 UTC);
        let mut job =
            Job::new(lanyard_core::model::JobKind::Issuance, lanyard_core::ids::DeviceId::new(), None, now);
        job.transition(JobState::Failed, now).unwrap();
        assert!(
            phase(&job, DeviceState::Issuing, false, false, now) == Phase::Failed,
            "no ticket: the failure"
        );
        job.issue_ticket(time::Duration::minutes(10), now).unwrap();
        assert!(
            phase(&job, DeviceState::Issuing, false, true, now) == Phase::Starting,
            "Resume sent a ticket"
        );
        job.issue_ticket(time::Duration::minutes(10), now - time::Duration::minutes(11)).unwrap();
        assert!(
            phase(&job, DeviceState::Issuing, false, true, now) == Phase::Failed,
            "the ticket lapsed unused"
        );
    }

    #[test]
    fn fido_phases_and_steps_show_on_the_page() {
        use lanyard_core::model::StepOutcome;
        let now = time::macros::datetime!(2026-01-05 10:00 UTC);
        let mut job = Job::new(JobKind::Issuance, lanyard_core::ids::DeviceId::new(), None, now);
        job.transition(JobState::Running, now).unwrap();
        assert!(phase_of(&job, DeviceState::Issuing, true, true, true, now) == Phase::FidoPinWanted);
        assert!(phase_of(&job, DeviceState::Issuing, true, false, true, now) == Phase::Running);
        job.record(STEP_FIDO_PIN_PRESENT, StepOutcome::Failed, Some("a PIN".into()), now).unwrap();
        job.record("session", StepOutcome::Failed, Some("stopped".into()), now).unwrap();
        job.transition(JobState::Failed, now).unwrap();
        assert!(phase_of(&job, DeviceState::Issuing, false, false, false, now) == Phase::FidoConsent);
        assert!(Phase::FidoConsent.ends());

        let policy = Policy { fido_pin_mode: FidoPinMode::Temporary, ..Policy::default() };
        job.checkpoint =
            Some(serde_json::json!({"completed": ["detect"], "fido": {"completed": ["fido_detect"]}}));
        let (steps, _, _) = issuance_progress(&policy, &job, Phase::Running);
        let planned = planned_steps(policy.certificates.keys().copied()).len();
        assert_eq!(steps.len(), planned + 4, "detect, minimum length, set PIN, forced change");
        assert_eq!(steps.iter().filter(|s| s.done).count(), 2);
        assert!(steps.iter().all(|s| s.label != "Working"), "every FIDO step has a label");
        let none = Policy::default();
        assert_eq!(issuance_progress(&none, &job, Phase::Running).0.len(), planned);
    }

    #[test]
    fn the_plan_lists_a_generation_per_card_slot_once() {
        let steps = planned_steps([CertSlot::DigitalSignature, CertSlot::PivAuthentication].into_iter());
        assert_eq!(steps.len(), 16);
        assert_eq!(&steps[6..8], &["generate_9a", "generate_9c"]);
        assert!(steps.iter().all(|s| step_label(s) != "Working"), "every planned step has a label");
    }
}
