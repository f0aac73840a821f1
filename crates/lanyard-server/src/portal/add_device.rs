//! *Add Device* through the agent link: the user's online agents report their readers, the
//! user picks a compatible card, the portal begins issuance (the domain call behind
//! `POST /api/v1/issuance`) and starts the card session on that agent and reader with the new
//! PIN to come from the browser ([`crate::link::start_session`], as
//! `POST /api/v1/agents/{id}/sessions` with `new_pin_from: portal`). The job's page follows the
//! session, live through server-sent events, asks for the new PIN, and offers resume or rollback
//! after a failure.
//!
//! Every step has its own URL and reads the world afresh, so reload and back show the present:
//! `/portal/devices/new` (agents, then cards), `/portal/jobs/{id}` (progress, PIN, result).

use std::convert::Infallible;
use std::time::Duration;

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use lanyard_core::authz::{CardInfo, SelfService, TicketPurpose};
use lanyard_core::ids::{AgentId, JobId};
use lanyard_core::lifecycle::DeviceState;
use lanyard_core::model::{Agent, CertSlot, DeviceKind, Job, JobState, PinRules};
use lanyard_core::repo::Repo;
use lanyard_protocol::Secret;
use lanyard_protocol::link::{ReaderReport, ServerLinkFrame, Verdict};
use serde::{Deserialize, Serialize};

use super::devices::add_device_refusal;
use super::session::CsrfForm;
use super::{Nav, PortalError, SignedIn, Viewer, render};
use crate::link::LinkSnapshot;
use crate::{ApiError, AppState};

/// How long *Refresh* waits for the agents' new reports before showing what is known.
const REFRESH_WAIT: Duration = Duration::from_secs(3);
/// How long the PIN form waits for the card to confirm the new PIN before showing the result.
const PIN_CONFIRM_WAIT: Duration = Duration::from_secs(30);
/// How often the event stream looks at the job.
const EVENT_TICK: Duration = Duration::from_millis(400);
/// An event stream ends after this long; the browser reconnects, and the reconnection checks
/// the session again (an ended session is then a 401 the page explains).
const EVENT_STREAM_LIFETIME: Duration = Duration::from_secs(60);

/// A card the user can issue now: in a reader of one of their online agents, compatible and
/// not issued yet, with its model known, and no session running on it.
pub(crate) struct Candidate {
    pub agent: String,
    pub host: String,
    pub reader: String,
    pub model: String,
    pub serial: String,
}

/// A reader with a card that cannot be issued, and why.
pub(crate) struct Unusable {
    pub host: String,
    pub reader: String,
    pub why: String,
}

/// The user's agents as their links report them now.
struct Seen {
    paired: usize,
    online: Vec<(Agent, LinkSnapshot)>,
}

async fn seen<R: Repo>(s: &AppState<R>, me: &SelfService<'_>) -> Result<Seen, PortalError> {
    let agents = me.agents(s.repo.as_ref()).await?;
    let agents: Vec<Agent> = agents.into_iter().filter(|a| a.revoked_at.is_none()).collect();
    let paired = agents.len();
    let online = agents
        .into_iter()
        .filter_map(|a| match s.links.status(a.id) {
            Some((user, snapshot)) if user == a.user => Some((a, snapshot)),
            _ => None,
        })
        .collect();
    Ok(Seen { paired, online })
}

fn why_unusable(r: &ReaderReport) -> Option<String> {
    let card = r.card.as_ref()?;
    if card.busy {
        return Some("a card session is running on this card".into());
    }
    let reason = card.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
    match card.verdict {
        Verdict::Compatible if card.model.is_none() => Some("the card's model could not be read".into()),
        Verdict::Compatible => None,
        Verdict::AlreadyIssued => Some("this card has been issued already".into()),
        Verdict::Unsupported => Some(format!("Lanyard cannot issue this card{reason}")),
        Verdict::Unreadable => Some(format!("the card could not be read{reason}")),
    }
}

fn cards(online: &[(Agent, LinkSnapshot)]) -> (Vec<Candidate>, Vec<Unusable>) {
    let mut candidates = Vec::new();
    let mut unusable = Vec::new();
    for (agent, snapshot) in online {
        for r in snapshot.readers.iter().flatten().filter(|r| r.card_present) {
            match (why_unusable(r), r.card.as_ref()) {
                (None, Some(card)) => candidates.push(Candidate {
                    agent: agent.id.to_string(),
                    host: agent.host_name.clone(),
                    reader: r.name.clone(),
                    model: card.model.clone().unwrap_or_default(),
                    serial: card.serial.clone().unwrap_or_else(|| "—".into()),
                }),
                (why, _) => unusable.push(Unusable {
                    host: agent.host_name.clone(),
                    reader: r.name.clone(),
                    why: why.unwrap_or_else(|| "the agent has not identified the card yet".into()),
                }),
            }
        }
    }
    (candidates, unusable)
}

/// Where the user is in *Add Device*, decided by what their agents report now.
pub(crate) enum Stage {
    /// The policy does not allow another device.
    Refused(String),
    /// No paired agent.
    Pair,
    /// Paired agents, none connected.
    Offline,
    /// Agents online, no card to issue.
    Insert,
    /// One or more cards to choose from.
    Choose,
}

#[derive(Template)]
#[template(path = "portal/add_device.html")]
struct AddDevicePage {
    nav: Option<Nav>,
    section: &'static str,
    stage: Stage,
    accepted_models: Vec<String>,
    candidates: Vec<Candidate>,
    unusable: Vec<Unusable>,
    online_hosts: Vec<String>,
    csrf_token: String,
}

/// `GET /portal/devices/new`: the step the user is at.
pub(crate) async fn add<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
) -> Result<Response, PortalError> {
    let nav = signed.nav();
    let inner = async {
        let me = signed.principal().self_service()?;
        let repo = s.repo.as_ref();
        let accepted_models = me.policy(repo).await?.accepted_card_models;
        let seen = seen(&s, &me).await?;
        let (candidates, unusable) = cards(&seen.online);
        let stage = match add_device_refusal(&me, repo).await? {
            Some(why) => Stage::Refused(why),
            None if seen.paired == 0 => Stage::Pair,
            None if seen.online.is_empty() => Stage::Offline,
            None if candidates.is_empty() => Stage::Insert,
            None => Stage::Choose,
        };
        Ok::<_, PortalError>(AddDevicePage {
            nav: signed.nav(),
            section: "devices",
            stage,
            accepted_models,
            candidates,
            unusable,
            // The names the user knows them by (My Workstations), not what the machines call
            // themselves now.
            online_hosts: seen.online.iter().map(|(a, _)| a.host_name.clone()).collect(),
            csrf_token: signed.session.csrf_token.clone(),
        })
    };
    let page = inner.await.map_err(|e| e.with_nav(nav))?;
    Ok(render(StatusCode::OK, &page))
}

/// `POST /portal/devices/new/refresh`: asks every online agent of the user to report its readers
/// again, waits a moment for the reports, and shows the step again.
pub(crate) async fn refresh<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let nav = signed.nav();
    let me = signed.principal().self_service().map_err(|e| PortalError::from(e).with_nav(nav))?;
    let seen = seen(&s, &me).await.map_err(|e| e.with_nav(signed.nav()))?;
    let mut asked = Vec::new();
    for (agent, snapshot) in &seen.online {
        // An agent that went away since is simply not waited for.
        if s.links.send(agent.id, ServerLinkFrame::Refresh).is_ok() {
            asked.push((agent.id, snapshot.reported_at));
        }
    }
    let deadline = tokio::time::Instant::now() + REFRESH_WAIT;
    while tokio::time::Instant::now() < deadline {
        let answered = asked.iter().all(|(id, before)| match s.links.status(*id) {
            Some((_, now)) => now.reported_at.is_some() && now.reported_at != *before,
            None => true,
        });
        if answered {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Redirect::to("/portal/devices/new").into_response())
}

#[derive(Deserialize)]
pub(crate) struct StartForm {
    #[serde(default)]
    csrf_token: Option<String>,
    #[serde(default)]
    card: Option<String>,
}

/// The card is named `<agent id>|<reader>` in the form (one radio button per card).
fn parse_card(raw: &str) -> Option<(AgentId, &str)> {
    let (agent, reader) = raw.split_once('|')?;
    let agent = agent.parse().ok()?;
    (!reader.is_empty()).then_some((agent, reader))
}

/// The device kind a card model is recorded as. The engine personalises YubiKeys (and the
/// software card, which answers as one), and every one of them is a USB key.
fn kind_of(_model: &str) -> DeviceKind {
    DeviceKind::UsbKey
}

/// `POST /portal/devices/new/start`: begins issuance for the chosen card, as its agent reported
/// it, and starts the session on that agent and reader; then the job's page.
pub(crate) async fn start<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Form(form): Form<StartForm>,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let nav = signed.nav();
    let inner = async {
        let Some((agent_id, reader)) = form.card.as_deref().and_then(parse_card) else {
            return Err(PortalError::from(ApiError::bad_request(
                "choose one of the cards listed on the Add Device page",
            )));
        };
        let me = signed.principal().self_service()?;
        let repo = s.repo.as_ref();
        // Another user's agent is the same 404 as a missing one.
        let agent = me.agent(repo, agent_id).await?;
        let gone = || {
            PortalError::from(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "the card in reader {reader:?} of {} is no longer there, or no longer available; \
                     go back to Add Device to see the cards now",
                    agent.host_name
                ),
            ))
        };
        let Some((owner, snapshot)) = s.links.status(agent.id) else { return Err(gone()) };
        let report = snapshot.readers.iter().flatten().find(|r| r.name == reader && r.card_present);
        let Some(card) =
            report.filter(|r| owner == agent.user && why_unusable(r).is_none()).and_then(|r| r.card.clone())
        else {
            return Err(gone());
        };
        let model = card.model.unwrap_or_default();
        let info = CardInfo { kind: kind_of(&model), model, serial: card.serial };
        crate::issuance::config(&s)?;
        let (_device, job) = me.begin_issuance(repo, info).await?;
        match crate::link::start_session(
            &s,
            signed.principal(),
            agent.id,
            job.id,
            reader,
            TicketPurpose::Run,
            true,
        )
        .await
        {
            Ok(_) => Ok(Redirect::to(&format!("/portal/jobs/{}", job.id)).into_response()),
            // The device and job exist: the job's page says what went wrong and offers to try again.
            Err(e) => job_page(&s, &signed, job.id, Some(e.message().to_owned()), StatusCode::CONFLICT).await,
        }
    };
    inner.await.map_err(|e| e.with_nav(nav))
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
    /// Any other finished session (unlock, wipe).
    Finished,
    Failed,
    RolledBack,
}

impl Phase {
    fn ends(self) -> bool {
        matches!(self, Phase::Active | Phase::Pending | Phase::Finished | Phase::Failed | Phase::RolledBack)
    }
}

fn phase(
    job: &Job,
    device: DeviceState,
    pin_wanted: bool,
    pin_expected: bool,
    now: time::OffsetDateTime,
) -> Phase {
    match job.state {
        JobState::Created => Phase::Starting,
        JobState::Running => Phase::Running,
        // Resume or Start over sent a new ticket after the failure and its session has not begun:
        // the page waits for it as for a first session. Shown as Failed, the page would end its
        // event stream and never move on when the session starts.
        JobState::Failed if job.agent_ticket.is_some() && job.ticket_expires_at.is_some_and(|t| t > now) => {
            Phase::Starting
        }
        JobState::Failed => Phase::Failed,
        JobState::RolledBack => Phase::RolledBack,
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
    device_state: DeviceState,
    device_id: String,
    rules: Option<(PinRules, u64)>,
    phase: Phase,
    steps: Vec<StepRow>,
    progress: Progress,
    failure: Option<String>,
}

async fn snapshot<R: Repo>(
    s: &AppState<R>,
    me: &SelfService<'_>,
    id: JobId,
) -> Result<Snapshot, PortalError> {
    let repo = s.repo.as_ref();
    let job = me.job(repo, id).await?;
    let device = me.device(repo, job.device).await?;
    let rules = s.pins.wanted(id);
    let phase = phase(&job, device.state, rules.is_some(), s.pins.expects(id), s.clock.now());
    let names = planned_steps(me.policy(repo).await?.certificates.keys().copied());
    let completed: Vec<String> = job
        .checkpoint
        .as_ref()
        .and_then(|c| c.get("completed"))
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
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
    let failure = job
        .steps
        .iter()
        .rev()
        .find(|s| s.outcome == lanyard_core::model::StepOutcome::Failed)
        .and_then(|s| s.detail.clone());
    let (percent, status) = match phase {
        Phase::Starting => (0, "Waiting for the workstation to start the session".to_owned()),
        Phase::Running => (running, format!("{}…", current.map_or("Finishing", step_label))),
        Phase::PinWanted => (92, "The card is ready: choose your new PIN".to_owned()),
        Phase::Finishing => (95, "Setting your PIN on the card".to_owned()),
        Phase::Active => (100, "Done: your device is active".to_owned()),
        Phase::Pending => (100, "Issued; the initial PIN was kept, so the device is pending".to_owned()),
        Phase::Finished => (100, "The session has finished".to_owned()),
        Phase::Failed => (running, "The session stopped before the card was finished".to_owned()),
        Phase::RolledBack => (0, "Undone: the card was reset and nothing was issued".to_owned()),
    };
    Ok(Snapshot {
        device_id: device.id.to_string(),
        device_state: device.state,
        job,
        rules,
        phase,
        steps,
        progress: Progress { phase, percent, status },
        failure,
    })
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
    progress: Progress,
    steps: Vec<StepRow>,
    rules: Option<PinRules>,
    seconds_left: u64,
    failure: Option<String>,
    notice: Option<String>,
    pin_error: Option<String>,
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
    }
}

async fn job_page<R: Repo + 'static>(
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
    let me = signed.principal().self_service()?;
    let snap = snapshot(s, &me, id).await?;
    let page = JobPage {
        nav: signed.nav(),
        section: "devices",
        csrf_token: signed.session.csrf_token.clone(),
        job_id: snap.job.id.to_string(),
        device_id: snap.device_id,
        device_state: super::devices::device_badge(snap.device_state).label,
        phase: phase_name(snap.phase),
        progress: snap.progress,
        steps: snap.steps,
        rules: snap.rules.map(|(r, _)| r),
        seconds_left: snap.rules.map_or(0, |(_, left)| left),
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
    let first = match principal.self_service() {
        Ok(me) => snapshot(&s, &me, id).await,
        Err(e) => Err(e.into()),
    };
    let first = match first {
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
                    let me = principal.self_service().ok()?;
                    // The job may have become unreadable (a database hiccup): end the stream and
                    // let the browser reconnect.
                    next = Some(snapshot(&s, &me, id).await.ok()?.progress);
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
    /// `set` or `skip`.
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    new_pin: Option<Secret>,
    #[serde(default)]
    confirm_pin: Option<Secret>,
}

/// `POST /portal/jobs/{id}/pin`: the new PIN (typed twice) or *Skip*, handed to the waiting
/// session ([`crate::portal_pin`]): checked here against the group's rules, never stored, logged
/// or shown again.
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
        let me = signed.principal().self_service()?;
        let job = me.job(s.repo.as_ref(), id).await?;
        let bad = |m: &str| Some(m.to_owned());
        let answer = match form.action.as_deref() {
            Some("skip") => Ok(None),
            Some("set") => match (form.new_pin, form.confirm_pin) {
                (None, _) => Err(bad("Type your new PIN.")),
                (Some(p), _) if p.expose().is_empty() => Err(bad("Type your new PIN.")),
                (Some(p), c) if c.as_ref().map(Secret::expose) != Some(p.expose()) => {
                    Err(bad("The two PINs differ: type the same new PIN in both fields."))
                }
                (Some(p), _) => Ok(Some(p)),
            },
            _ => Err(bad("Choose Set PIN or Skip.")),
        };
        let pin = match answer {
            Ok(pin) => pin,
            Err(message) => {
                return job_page_with(&s, &signed, id, None, message, StatusCode::BAD_REQUEST).await;
            }
        };
        let setting = pin.is_some();
        match s.pins.give(id, pin) {
            Ok(()) => {}
            Err(crate::portal_pin::GiveError::Rules(e)) => {
                let message = format!("{e}. Choose another PIN.");
                return job_page_with(&s, &signed, id, None, Some(message), StatusCode::BAD_REQUEST).await;
            }
            Err(crate::portal_pin::GiveError::NotWaiting) => {
                let message = "The card session is no longer waiting for a PIN: the time for it ran out, \
                               or it was already answered. The page shows where the device is now."
                    .to_owned();
                return job_page(&s, &signed, id, Some(message), StatusCode::CONFLICT).await;
            }
        }
        if setting {
            // The agent writes the PIN and the server activates the device; wait for that so the
            // page shows the result rather than the moment in between.
            let deadline = tokio::time::Instant::now() + PIN_CONFIRM_WAIT;
            while tokio::time::Instant::now() < deadline {
                if me.device(s.repo.as_ref(), job.device).await?.state != DeviceState::Pending {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(Redirect::to(&format!("/portal/jobs/{id}")).into_response())
    };
    inner.await.map_err(|e: PortalError| e.with_nav(nav))
}

/// The reader of one of the user's online agents that holds the job's card: matched by the
/// card's serial (recorded when issuance began), or, for a card without one, the only card in
/// the user's readers.
fn find_card(online: &[(Agent, LinkSnapshot)], serial: Option<&str>) -> Result<(AgentId, String), String> {
    let mut found = Vec::new();
    for (agent, snapshot) in online {
        for r in snapshot.readers.iter().flatten().filter(|r| r.card_present) {
            let card_serial = r.card.as_ref().and_then(|c| c.serial.as_deref());
            let busy = r.card.as_ref().is_some_and(|c| c.busy);
            if !busy && (serial.is_none() || card_serial == serial) {
                found.push((agent.id, r.name.clone()));
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
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
    let me = signed.principal().self_service()?;
    let repo = s.repo.as_ref();
    let job = me.job(repo, id).await?;
    let device = me.device(repo, job.device).await?;
    let seen = seen(s, &me).await?;
    let (agent, reader) = match find_card(&seen.online, device.serial.as_deref()) {
        Ok(found) => found,
        Err(message) => return job_page(s, signed, id, Some(message), StatusCode::CONFLICT).await,
    };
    // A resumed issuance asks for the PIN here again; a rollback sets none.
    let from_portal = purpose == TicketPurpose::Run;
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
    use proptest::prelude::*;

    #[test]
    fn a_card_field_names_an_agent_and_a_reader() {
        let id = AgentId::new();
        let raw = format!("{id}|Yubico YubiKey OTP+FIDO+CCID 00 00");
        assert_eq!(parse_card(&raw), Some((id, "Yubico YubiKey OTP+FIDO+CCID 00 00")));
        assert_eq!(parse_card(&format!("{id}|a|b")), Some((id, "a|b")), "only the first bar splits");
        for bad in ["", "|", "not-an-id|reader", &format!("{id}|"), &format!("{id}")] {
            assert_eq!(parse_card(bad), None, "{bad:?}");
        }
    }

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
    fn the_plan_lists_a_generation_per_card_slot_once() {
        let steps = planned_steps([CertSlot::DigitalSignature, CertSlot::PivAuthentication].into_iter());
        assert_eq!(steps.len(), 16);
        assert_eq!(&steps[6..8], &["generate_9a", "generate_9c"]);
        assert!(steps.iter().all(|s| step_label(s) != "Working"), "every planned step has a label");
    }

    proptest! {
        #[test]
        fn any_card_field_is_judged_without_panicking(s in "\\PC{0,80}") {
            if let Some((_, reader)) = parse_card(&s) {
                prop_assert!(!reader.is_empty());
                prop_assert!(s.ends_with(reader));
            }
        }
    }
}
