//! Server-driven card sessions (DESIGN §4): the agent connects a WebSocket with a one-time job
//! ticket, and the server runs the personalization engine of `lanyard-core` over it, issuing the
//! certificates with the CA, signing the CHUID with the content signer, verifying key
//! attestations, and recording every step so a broken session resumes or rolls back.
//!
//! The frames, the protocol version and the deadlines are `lanyard-protocol`'s (`docs/agent.md`
//! describes them): the agent says `hello`, the server sends `transmit` batches and
//! `change_pin`/`unblock_pin`, each with the time the agent has to act on it, and waits that long
//! plus [`lanyard_protocol::ANSWER_GRACE_SECS`]; `done` or `error` ends the session.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lanyard_core::audit::OperationId;
use lanyard_core::authz::{Principal, System};
use lanyard_core::ids::{DeviceId, JobId};
use lanyard_core::lifecycle::{DeviceAction, DeviceState};
use lanyard_core::model::{
    CertSlot, Credential, Device, Job, JobState, KeyAlgorithm, Policy, StepOutcome, User,
};
use lanyard_core::repo::Repo;
use lanyard_core::repo::prelude::*;
use lanyard_core::secrets::{CardSecrets, Kek};
use lanyard_issuance::{Channel, Enrolment, IssuanceError};
use lanyard_personalize::{
    Checkpoint, Engine, GeneratedKey, Input, IssuancePlan, Rollback, RollbackStep, SlotPlan, Step,
};
use lanyard_piv::apdu::{Command, Response as CardResponse};
use lanyard_piv::mgmkey::{ManagementKey, MgmAlgorithm};
use lanyard_piv::objects::ChuidIssuance;
use lanyard_piv::types::{KeyAlgorithm as PivAlgorithm, Slot};
use lanyard_protocol::{
    AgentFrame, MAX_BATCH, MAX_FRAME, PROTOCOL_VERSION, Secret, ServerFrame, Side, VERSION_HEADER,
    check_version, server_wait,
};
use secrecy::{ExposeSecret, SecretString};
use time::{Duration, OffsetDateTime};

use crate::{ApiError, AppState};

pub use lanyard_protocol::TICKET_HEADER;
/// How long an agent ticket may wait to be used.
pub const TICKET_TTL: Duration = Duration::minutes(10);
/// How often a running session renews its job's lease (`JOB_LEASE`, 2 minutes): four chances
/// before it runs out, so a slow database round does not cost a live session.
const LEASE_RENEWAL: std::time::Duration = std::time::Duration::from_secs(30);
/// How often the sweeper looks for running jobs whose lease ran out.
pub const LEASE_SWEEP: std::time::Duration = std::time::Duration::from_secs(60);
use lanyard_core::authz::STEP_ROLLBACK_REQUESTED;
/// YubiKey AES-192 management key algorithm id.
const AES192: u8 = 0x0A;

/// What issuance needs beyond the CA: the key-encryption key for card secrets, the roots that
/// vouch for key attestations, and the agent's deadlines.
pub struct IssuanceConfig {
    pub kek: Kek,
    /// DER certificates; YubiKey attestations (slot F9 chains) must end at one of them. Empty:
    /// attestations are recorded but not verified.
    pub attestation_roots: Vec<Vec<u8>>,
    /// How long the agent has to answer a batch of APDUs (`answer_within_secs` of `transmit`).
    pub answer_timeout: std::time::Duration,
    /// How long the holder has to set the new PIN at the agent (`answer_within_secs` of
    /// `change_pin` and `unblock_pin`). After it the agent writes no PIN, and the card keeps
    /// its initial PIN.
    pub pin_timeout: std::time::Duration,
}

impl IssuanceConfig {
    /// Two minutes for a batch (RSA key generation on a card takes tens of seconds), five for
    /// the holder to choose and type a PIN.
    pub const DEFAULT_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
    pub const DEFAULT_PIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

    pub fn new(kek: Kek, attestation_roots: Vec<Vec<u8>>) -> Self {
        Self {
            kek,
            attestation_roots,
            answer_timeout: Self::DEFAULT_ANSWER_TIMEOUT,
            pin_timeout: Self::DEFAULT_PIN_TIMEOUT,
        }
    }
}

/// A deadline in whole seconds for a frame: at least one, so an agent is never asked for the
/// impossible.
fn frame_secs(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX).max(1)
}

/// A ticket as the portal and agent see it: `<job id>.<secret>`.
pub fn ticket_string(job: JobId, secret: &SecretString) -> String {
    format!("{job}.{}", secret.expose_secret())
}

/// Why a session stopped.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("the agent went away: {0}")]
    AgentGone(String),
    #[error("the agent reported: {0}")]
    AgentError(String),
    #[error("the agent broke the protocol: {0}")]
    Protocol(String),
    #[error("the card session failed: {0}")]
    Engine(String),
    #[error("{0}")]
    Server(String),
    /// Someone else changed the job (its lease ran out and another server failed it, an
    /// operator asked for a rollback): this session's copy is out of date and it stops without
    /// writing anything more.
    #[error("the job was changed elsewhere, so this session stops: {0}")]
    Superseded(String),
}

impl From<lanyard_core::repo::StoreError> for SessionError {
    fn from(e: lanyard_core::repo::StoreError) -> Self {
        match e {
            lanyard_core::repo::StoreError::Stale(m) => SessionError::Superseded(m),
            e => SessionError::Server(e.to_string()),
        }
    }
}

impl From<lanyard_core::DomainError> for SessionError {
    fn from(e: lanyard_core::DomainError) -> Self {
        match e {
            lanyard_core::DomainError::Store(e) => e.into(),
            e => SessionError::Server(e.to_string()),
        }
    }
}

/// The issuance configuration; 503 when the server runs without one.
pub(crate) fn config<R>(s: &AppState<R>) -> Result<Arc<IssuanceConfig>, ApiError> {
    s.issuance
        .clone()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "card issuance is not configured"))
}

/// `GET /api/v1/agent/connect`: the agent's WebSocket. The agent's protocol version and then the
/// ticket are checked, and the ticket used up, before the upgrade, so a bad one is a plain 4xx.
/// Every answer names the server's protocol version, so an agent can tell a refusal for its
/// version from any other.
pub async fn connect<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    op: Option<axum::Extension<crate::OperationId>>,
    request: axum::extract::Request,
) -> Response {
    let mut response = accept(s, op, request).await.unwrap_or_else(IntoResponse::into_response);
    response.headers_mut().insert(VERSION_HEADER, axum::http::HeaderValue::from(PROTOCOL_VERSION));
    response
}

async fn accept<R: Repo + 'static>(
    s: AppState<R>,
    op: Option<axum::Extension<crate::OperationId>>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let (mut parts, _body) = request.into_parts();
    let cfg = config(&s)?;
    // Before the ticket: an agent of another version must not use up its ticket.
    check_version(Side::Server, parts.headers.get(VERSION_HEADER).and_then(|v| v.to_str().ok()))
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let ticket = parts
        .headers
        .get(TICKET_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, format!("missing {TICKET_HEADER}")))?
        .to_owned();
    // A request that cannot become a WebSocket is refused before the ticket is used up.
    let ws = WebSocketUpgrade::from_request_parts(&mut parts, &s)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("not a WebSocket request: {e}")))?;
    let op = crate::api::operation(op.as_ref());
    let job = redeem(&s, &ticket, &op).await?;
    // If the client never completes the upgrade, the job must not stay Running.
    let (failed_state, failed_job, failed_op) = (s.clone(), job.clone(), op.clone());
    Ok(ws
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_failed_upgrade(move |e| {
            tokio::spawn(async move {
                let mut job = failed_job;
                let now = failed_state.clock.now();
                let _ = job.record(
                    "session",
                    StepOutcome::Failed,
                    Some(format!("WebSocket upgrade failed: {e}")),
                    now,
                );
                let _ = job.transition(JobState::Failed, now);
                if let Err(e) =
                    System::new(failed_op, now).save_job(failed_state.repo.as_ref(), &mut job).await
                {
                    tracing::error!(job = %job.id, error = %e, "could not record the failed upgrade");
                }
            });
        })
        .on_upgrade(move |socket| async move {
            let mut session = Session {
                socket,
                seq: 0,
                answer_within_secs: frame_secs(cfg.answer_timeout),
                pin_within_secs: frame_secs(cfg.pin_timeout),
            };
            session.run(s, cfg, job, op).await;
        })
        .into_response())
}

/// Checks and uses up the ticket in one conditional update: the job goes Running under this
/// server's lease, and of two connections racing with one ticket only one gets here.
async fn redeem<R: Repo>(s: &AppState<R>, ticket: &str, op: &OperationId) -> Result<Job, ApiError> {
    let refuse = || ApiError::new(StatusCode::UNAUTHORIZED, "invalid or expired agent ticket");
    let (job_id, secret) = ticket.split_once('.').ok_or_else(refuse)?;
    let job_id: JobId = job_id.parse().map_err(|_| refuse())?;
    let system = System::new(op.clone(), s.clock.now());
    system.redeem_ticket(s.repo.as_ref(), job_id, secret, s.instance).await?.ok_or_else(refuse)
}

/// Renews the lease of the job this session runs every [`LEASE_RENEWAL`], so a holder may take
/// minutes over a PIN without another server taking the job for abandoned. Returns only when
/// the job is no longer this server's to run; a failed renewal is retried at the next tick.
async fn keep_lease<R: Repo>(s: &AppState<R>, job: JobId, op: &OperationId) -> SessionError {
    let mut ticker = tokio::time::interval(LEASE_RENEWAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; redemption has just taken the lease.
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let system = System::new(op.clone(), s.clock.now());
        match system.renew_lease(s.repo.as_ref(), job, s.instance).await {
            Ok(true) => {}
            Ok(false) => {
                // The session's own last write (Succeeded, RolledBack) releases the lease while it
                // may still wait for the holder's PIN change; only a job taken away stops it.
                let finished = match s.repo.read().await {
                    Ok(mut tx) => tx.get_job(job).await.ok().flatten().is_some_and(|j| j.state.is_finished()),
                    Err(_) => false,
                };
                if finished {
                    return std::future::pending().await;
                }
                return SessionError::Superseded(
                    "the job is no longer running under this server's lease".into(),
                );
            }
            Err(e) => tracing::warn!(job = %job, error = %e, "could not renew the card session's lease"),
        }
    }
}

/// Fails, every [`LEASE_SWEEP`], the running jobs whose lease ran out: sessions of a server that
/// stopped or lost the database. Live sessions of this and other servers renew their leases and
/// are left alone. Runs until the task is dropped.
pub async fn sweep_abandoned_jobs<R: Repo>(s: AppState<R>) {
    let mut ticker = tokio::time::interval(LEASE_SWEEP);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let system = System::new(OperationId::random(), s.clock.now());
        match system.fail_interrupted_jobs(s.repo.as_ref()).await {
            Ok(0) => {}
            Ok(failed) => tracing::warn!(failed, "card sessions whose server stopped were recorded failed"),
            Err(e) => tracing::warn!(error = %e, "could not sweep abandoned card sessions"),
        }
    }
}

struct Session {
    socket: WebSocket,
    seq: u64,
    /// The deadlines sent to the agent, from [`IssuanceConfig`].
    answer_within_secs: u32,
    pin_within_secs: u32,
}

impl Session {
    async fn send(&mut self, msg: &ServerFrame) -> Result<(), SessionError> {
        let text = msg.to_text();
        self.socket.send(Message::Text(text.into())).await.map_err(|e| SessionError::AgentGone(e.to_string()))
    }

    /// The agent's next frame, waiting what a frame allowing `within_secs` deserves.
    async fn receive(&mut self, within_secs: u32) -> Result<AgentFrame, SessionError> {
        let wait = server_wait(within_secs);
        loop {
            let next = tokio::time::timeout(wait, self.socket.recv())
                .await
                .map_err(|_| SessionError::AgentGone(format!("no answer within {} s", wait.as_secs())))?;
            match next {
                None => return Err(SessionError::AgentGone("connection closed".into())),
                Some(Err(e)) => return Err(SessionError::AgentGone(e.to_string())),
                Some(Ok(Message::Text(text))) => {
                    let msg = AgentFrame::parse(text.as_str())
                        .map_err(|e| SessionError::Protocol(format!("unreadable message: {e}")))?;
                    if let AgentFrame::Error { message, seq } = msg {
                        let at = seq.map(|s| format!(" (message {s})")).unwrap_or_default();
                        return Err(SessionError::AgentError(format!("{message}{at}")));
                    }
                    return Ok(msg);
                }
                Some(Ok(Message::Close(_))) => {
                    return Err(SessionError::AgentGone("connection closed".into()));
                }
                Some(Ok(Message::Binary(_))) => {
                    return Err(SessionError::Protocol("binary frames are not part of the protocol".into()));
                }
                Some(Ok(_)) => {} // ping/pong
            }
        }
    }

    /// Sends one batch and returns the card's answers.
    async fn transmit(
        &mut self,
        step: &str,
        (done, total): (usize, usize),
        commands: &[Command],
    ) -> Result<Vec<CardResponse>, SessionError> {
        if commands.len() > MAX_BATCH {
            return Err(SessionError::Server(format!(
                "a batch of {} commands is more than the {MAX_BATCH} the protocol allows",
                commands.len()
            )));
        }
        self.seq += 1;
        let seq = self.seq;
        let apdus = commands
            .iter()
            .map(|c| c.to_bytes().map(hex::encode_upper))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SessionError::Server(format!("encoding an APDU: {e}")))?;
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let answer_within_secs = self.answer_within_secs;
        let frame = ServerFrame::Transmit {
            seq,
            step: step.to_owned(),
            done: count(done),
            total: count(total),
            apdus,
            answer_within_secs,
        };
        self.send(&frame).await?;
        match self.receive(answer_within_secs).await? {
            AgentFrame::Responses { seq: got, responses } if got == seq => {
                if responses.len() > commands.len() {
                    return Err(SessionError::Protocol(format!(
                        "{} responses to {} commands",
                        responses.len(),
                        commands.len()
                    )));
                }
                responses
                    .iter()
                    .map(|r| {
                        let bytes = hex::decode(r)
                            .map_err(|e| SessionError::Protocol(format!("response hex: {e}")))?;
                        CardResponse::parse(&bytes)
                            .map_err(|e| SessionError::Protocol(format!("response: {e}")))
                    })
                    .collect()
            }
            other => {
                Err(SessionError::Protocol(format!("expected responses to message {seq}, got {other:?}")))
            }
        }
    }

    /// Tells the agent the session is over and closes.
    async fn done(&mut self, device: DeviceId, state: DeviceState) -> Result<(), SessionError> {
        self.send(&ServerFrame::Done { device, state }).await?;
        let _ = self.socket.send(Message::Close(None)).await;
        Ok(())
    }

    async fn fail(&mut self, message: &str) {
        let _ = self.send(&ServerFrame::Error { message: message.to_owned() }).await;
        let _ = self.socket.send(Message::Close(None)).await;
    }

    async fn run<R: Repo>(
        &mut self,
        s: AppState<R>,
        cfg: Arc<IssuanceConfig>,
        mut job: Job,
        op: OperationId,
    ) {
        let job_id = job.id;
        let session = async {
            match self.receive(self.answer_within_secs).await {
                Ok(AgentFrame::Hello { protocol, .. }) if protocol != PROTOCOL_VERSION => {
                    Err(SessionError::Protocol(format!(
                        "the agent's hello names protocol version {protocol}, not {PROTOCOL_VERSION}"
                    )))
                }
                Ok(AgentFrame::Hello { agent, reader, atr, .. }) => {
                    tracing::info!(job = %job.id, %agent, %reader, %atr, "agent connected");
                    let rollback = job.steps.last().is_some_and(|s| s.name == STEP_ROLLBACK_REQUESTED);
                    if job.kind == lanyard_core::model::JobKind::Unlock {
                        self.unlock(&s, &cfg, &mut job, &op).await
                    } else if job.kind == lanyard_core::model::JobKind::Wipe {
                        self.wipe(&s, &mut job, &op).await
                    } else if rollback {
                        self.rollback(&s, &mut job, &op).await
                    } else {
                        self.issue(&s, &cfg, &mut job, &op).await
                    }
                }
                Ok(other) => Err(SessionError::Protocol(format!("expected hello, got {other:?}"))),
                Err(e) => Err(e),
            }
        };
        // A lost lease ends the session at once (dropping it sends the card nothing more).
        let result = tokio::select! {
            result = session => result,
            lost = keep_lease(&s, job_id, &op) => Err(lost),
        };
        if let Err(e) = result {
            tracing::warn!(job = %job.id, error = %e, "card session stopped");
            let now = s.clock.now();
            let system = System::new(op.clone(), now);
            // A superseded session's copy is out of date: writing it would be refused anyway.
            if job.state == JobState::Running && !matches!(e, SessionError::Superseded(_)) {
                let _ = job.record("session", StepOutcome::Failed, Some(e.to_string()), now);
                let _ = job.transition(JobState::Failed, now);
                if let Err(e) = system.save_job(s.repo.as_ref(), &mut job).await {
                    tracing::error!(job = %job.id, error = %e, "could not record the failed job");
                }
            }
            self.fail(&e.to_string()).await;
        }
    }

    async fn issue<R: Repo>(
        &mut self,
        s: &AppState<R>,
        cfg: &IssuanceConfig,
        job: &mut Job,
        op: &OperationId,
    ) -> Result<(), SessionError> {
        let repo = s.repo.as_ref();
        let now = s.clock.now();
        let system = System::new(op.clone(), now);
        let device = job_device(s, job).await?;
        let (owner, policy) = holder(s, &device).await?;
        let sealed = repo.read().await?.get_card_secrets(device.id).await?;
        if device.state != DeviceState::Issuing {
            return Err(SessionError::Server(format!(
                "device {} is {}, not issuing",
                device.id, device.state
            )));
        }
        // Secrets, the card UUID and the card's expiry exist before the first command, and are
        // reused on resume.
        let (secrets, guid, expires) = match (&sealed, device.card_guid, &job.checkpoint) {
            (Some(sealed), Some(guid), _) => (
                CardSecrets::open(sealed, &cfg.kek, device.id)
                    .map_err(|e| SessionError::Server(e.to_string()))?,
                guid,
                // Devices prepared before the expiry was recorded.
                device.card_expires_at.unwrap_or_else(|| lanyard_issuance::card_expiry(now)),
            ),
            (_, _, Some(_)) => {
                return Err(SessionError::Server(
                    "the job has a checkpoint but the card secrets are missing".into(),
                ));
            }
            _ => {
                let secrets = CardSecrets::generate(AES192, &policy)
                    .map_err(|e| SessionError::Server(e.to_string()))?;
                let guid = lanyard_piv::objects::random_uuid_v4();
                let sealed =
                    secrets.seal(&cfg.kek, device.id).map_err(|e| SessionError::Server(e.to_string()))?;
                let expires = lanyard_issuance::card_expiry(now);
                system.prepare_card(repo, device.id, &sealed, guid, expires).await?;
                (secrets, guid, expires)
            }
        };
        let plan = plan(&device, &policy, &secrets, guid, expires)?;
        let mut engine = match job.checkpoint.as_ref() {
            Some(c) => {
                let checkpoint: Checkpoint = serde_json::from_value(c.clone())
                    .map_err(|e| SessionError::Server(format!("unreadable checkpoint: {e}")))?;
                Engine::resume(plan, factory_keys(), &checkpoint)
            }
            None => Engine::new(plan, factory_keys()),
        };
        let mut input = Input::Start;
        let outcome = loop {
            let step = engine.next(input);
            let progress = engine.progress();
            input = match step {
                Step::Transmit(commands) => {
                    let responses = self.transmit(progress.2, (progress.0, progress.1), &commands).await?;
                    Input::Responses(responses)
                }
                Step::IssueCertificates(keys) => {
                    // The device as recorded now (with its card UUID and expiry).
                    let device = job_device(s, job).await?;
                    let (certs, mut credentials) =
                        issue_certificates(s, cfg, &device, &owner, &policy, &keys)?;
                    // The engine takes the certificates; the checkpoint that says so is stored
                    // with the credentials, so a resumed session never issues twice.
                    let next = engine.next(Input::Certificates(certs));
                    save_checkpoint(job, &engine, s.clock.now())?;
                    system.record_issued(repo, job, &mut credentials).await?;
                    match next {
                        Step::SignChuid(content) => Input::ChuidSignature(sign_chuid(s, &content)?),
                        Step::Failed(e) => return Err(SessionError::Engine(e.to_string())),
                        other => {
                            return Err(SessionError::Server(format!(
                                "the engine asked for {other:?} after the certificates"
                            )));
                        }
                    }
                }
                Step::SignChuid(content) => Input::ChuidSignature(sign_chuid(s, &content)?),
                Step::Done(outcome) => break outcome,
                Step::Failed(e) => return Err(SessionError::Engine(e.to_string())),
            };
            save_checkpoint(job, &engine, s.clock.now())?;
            system.save_job(repo, job).await?;
        };
        // Everything is on the card: the device is Pending until the PIN is changed.
        let now = s.clock.now();
        let system = System::new(op.clone(), now);
        if let Some(serial) = outcome.serial {
            // Worth recording, not worth failing a finished card over (another device record
            // may already claim the serial, e.g. an old one of the same card).
            if let Err(e) = system.set_device_serial(repo, device.id, &serial.to_string()).await {
                tracing::warn!(device = %device.id, serial, error = %e, "could not record the card's serial");
            }
        }
        system.device_action(repo, device.id, DeviceAction::Personalized).await?;
        let note = format!(
            "{} round trips (minimum {}), management key {}",
            outcome.round_trips, outcome.total_round_trips, outcome.management_key_algorithm
        );
        job.record("personalized", StepOutcome::Done, Some(note), now)
            .map_err(|e| SessionError::Server(e.to_string()))?;
        job.transition(JobState::Succeeded, now).map_err(|e| SessionError::Server(e.to_string()))?;
        system.save_job(repo, job).await?;

        // Change PIN: the agent sets the holder's PIN locally, before the deadline or not at all.
        self.seq += 1;
        let seq = self.seq;
        let old_pin = Secret::new(secrets.initial_pin().expose_secret());
        let answer_within_secs = self.pin_within_secs;
        self.send(&ServerFrame::ChangePin { seq, old_pin, rules: policy.pin, answer_within_secs }).await?;
        let state = match self.receive(answer_within_secs).await {
            Ok(AgentFrame::PinChanged { seq: got, sw }) if got == seq && sw.eq_ignore_ascii_case("9000") => {
                let principal = Principal::new(owner.clone(), op.clone(), s.clock.now())
                    .map_err(|e| SessionError::Server(e.to_string()))?;
                let view = principal.self_service().map_err(|e| SessionError::Server(e.to_string()))?;
                view.confirm_pin_changed(repo, device.id).await?.state
            }
            Ok(AgentFrame::PinChanged { sw, .. }) => {
                tracing::info!(device = %device.id, %sw, "the card refused the PIN change; the device stays pending");
                DeviceState::Pending
            }
            Ok(AgentFrame::PinChangeSkipped { seq: got }) if got == seq => DeviceState::Pending,
            Ok(other) => {
                return Err(SessionError::Protocol(format!("expected the PIN change result, got {other:?}")));
            }
            // The agent could not set the PIN (rules, the card refused, the deadline passed):
            // the card stays Pending and the agent hears so.
            Err(SessionError::AgentError(message)) => {
                tracing::info!(device = %device.id, %message, "no PIN change; the device stays pending");
                DeviceState::Pending
            }
            // Personalization is complete and recorded; a lost or late agent only means no PIN
            // change. Past the deadline the agent writes no PIN, so the card keeps the initial
            // PIN the record holds; an agent still listening hears that the device is Pending.
            Err(e) => {
                tracing::info!(device = %device.id, error = %e, "no PIN change; the device stays pending");
                let _ = self.done(device.id, DeviceState::Pending).await;
                return Ok(());
            }
        };
        self.done(device.id, state).await
    }

    /// Resets the card to factory state and fails the device (its certificates are revoked by
    /// the lifecycle cascade).
    async fn rollback<R: Repo>(
        &mut self,
        s: &AppState<R>,
        job: &mut Job,
        op: &OperationId,
    ) -> Result<(), SessionError> {
        let device = job_device(s, job).await?;
        // Only the card this job was writing may be reset: its CHUID must carry the job's card
        // UUID, or be absent or the factory template (a run cut short before the CHUID).
        let Some(guid) = device.card_guid else {
            // Nothing reached a card in this job: only the records need undoing.
            return self.finish_rollback(s, job, op, "no card was written; nothing to reset".into()).await;
        };
        match self.read_chuid().await? {
            ChuidIssuance::Absent | ChuidIssuance::Template(_) => {}
            ChuidIssuance::Issued(c) if c.guid == guid => {}
            _ => {
                return Err(SessionError::Engine(format!(
                    "this is not the card job {} was issuing (its CHUID names another card); it was not touched",
                    job.id
                )));
            }
        }
        let round_trips = self.reset_card().await?;
        let note = format!("card reset to factory state in {round_trips} round trips");
        self.finish_rollback(s, job, op, note).await
    }
}

impl Session {
    /// Checks that the card in the reader is the device's own: its CHUID carries the recorded
    /// card UUID.
    async fn check_card(&mut self, device: &Device) -> Result<(), SessionError> {
        match (self.read_chuid().await?.chuid(), device.card_guid) {
            (Some(c), Some(guid)) if c.guid == guid => Ok(()),
            _ => Err(SessionError::Engine(format!(
                "this is not card {} (its CHUID names another card)",
                device.id
            ))),
        }
    }

    /// Selects the PIV application and reads the card's CHUID, classified by the one rule for
    /// "already issued".
    async fn read_chuid(&mut self) -> Result<ChuidIssuance, SessionError> {
        let check =
            [lanyard_piv::commands::select(), lanyard_piv::commands::get_data(lanyard_piv::tag::CHUID)];
        let answers = self.transmit("check_card", (0, 1), &check).await?;
        if !answers.first().is_some_and(|r| r.sw.is_success()) {
            return Err(SessionError::Engine("the card has no PIV application".into()));
        }
        let chuid = answers.get(1).filter(|r| r.sw.is_success()).map(|r| r.data.as_slice());
        Ok(ChuidIssuance::classify(chuid))
    }

    /// Unblocks the PIN: the agent sends RESET RETRY COUNTER with the stored PUK and the new PIN
    /// the holder types there.
    async fn unlock<R: Repo>(
        &mut self,
        s: &AppState<R>,
        cfg: &IssuanceConfig,
        job: &mut Job,
        op: &OperationId,
    ) -> Result<(), SessionError> {
        let repo = s.repo.as_ref();
        let device = job_device(s, job).await?;
        let (_, policy) = holder(s, &device).await?;
        let sealed = repo
            .read()
            .await?
            .get_card_secrets(device.id)
            .await?
            .ok_or_else(|| SessionError::Server("the card has no stored secrets".into()))?;
        self.check_card(&device).await?;
        let secrets = CardSecrets::open(&sealed, &cfg.kek, device.id)
            .map_err(|e| SessionError::Server(e.to_string()))?;
        self.seq += 1;
        let seq = self.seq;
        let puk = Secret::new(secrets.puk().expose_secret());
        let answer_within_secs = self.pin_within_secs;
        self.send(&ServerFrame::UnblockPin { seq, puk, rules: policy.pin, answer_within_secs }).await?;
        let sw = match self.receive(answer_within_secs).await? {
            AgentFrame::PinChanged { seq: got, sw } if got == seq => sw,
            AgentFrame::PinChangeSkipped { seq: got } if got == seq => {
                return Err(SessionError::AgentError("the holder did not set a new PIN".into()));
            }
            other => {
                return Err(SessionError::Protocol(format!("expected the unblock result, got {other:?}")));
            }
        };
        if !sw.eq_ignore_ascii_case("9000") {
            return Err(SessionError::Engine(format!("the card refused RESET RETRY COUNTER (status {sw})")));
        }
        let now = s.clock.now();
        job.record("unblock_pin", StepOutcome::Done, None, now)
            .map_err(|e| SessionError::Server(e.to_string()))?;
        job.transition(JobState::Succeeded, now).map_err(|e| SessionError::Server(e.to_string()))?;
        System::new(op.clone(), now).save_job(repo, job).await?;
        self.done(device.id, device.state).await
    }

    /// Resets a retired card (after checking it is the device's own) and returns the device to
    /// stock.
    async fn wipe<R: Repo>(
        &mut self,
        s: &AppState<R>,
        job: &mut Job,
        op: &OperationId,
    ) -> Result<(), SessionError> {
        let device = job_device(s, job).await?;
        self.check_card(&device).await?;
        let round_trips = self.reset_card().await?;
        let now = s.clock.now();
        let system = System::new(op.clone(), now);
        let device = system.recycle_wiped(s.repo.as_ref(), device.id).await?;
        let note = Some(format!("card reset to factory state in {round_trips} round trips"));
        job.record("wipe", StepOutcome::Done, note, now).map_err(|e| SessionError::Server(e.to_string()))?;
        job.transition(JobState::Succeeded, now).map_err(|e| SessionError::Server(e.to_string()))?;
        system.save_job(s.repo.as_ref(), job).await?;
        self.done(device.id, device.state).await
    }

    /// Runs the rollback engine (block PIN and PUK, RESET) to the end; the round trips it took.
    async fn reset_card(&mut self) -> Result<u32, SessionError> {
        let mut rollback = Rollback::new(factory_keys());
        let mut input = Input::Start;
        loop {
            match rollback.next(input) {
                RollbackStep::Transmit(commands) => {
                    input = Input::Responses(self.transmit("reset", (0, 1), &commands).await?);
                }
                RollbackStep::Done { round_trips } => return Ok(round_trips),
                RollbackStep::Failed(e) => return Err(SessionError::Engine(e.to_string())),
            }
        }
    }

    /// The device fails (its certificates are revoked by the lifecycle cascade) and the job ends
    /// RolledBack.
    async fn finish_rollback<R: Repo>(
        &mut self,
        s: &AppState<R>,
        job: &mut Job,
        op: &OperationId,
        note: String,
    ) -> Result<(), SessionError> {
        let now = s.clock.now();
        let system = System::new(op.clone(), now);
        let device = system.device_action(s.repo.as_ref(), job.device, DeviceAction::IssuanceFailed).await?;
        job.record("rollback", StepOutcome::Done, Some(note), now)
            .map_err(|e| SessionError::Server(e.to_string()))?;
        job.transition(JobState::Failed, now).map_err(|e| SessionError::Server(e.to_string()))?;
        job.transition(JobState::RolledBack, now).map_err(|e| SessionError::Server(e.to_string()))?;
        system.save_job(s.repo.as_ref(), job).await?;
        self.done(device.id, device.state).await
    }
}

/// The device's holder and the policy of the holder's group.
async fn holder<R: Repo>(s: &AppState<R>, device: &Device) -> Result<(User, Policy), SessionError> {
    let owner = device.owner.ok_or_else(|| SessionError::Server("the device has no holder".into()))?;
    let mut tx = s.repo.read().await?;
    let user = tx
        .get_user(owner)
        .await?
        .ok_or_else(|| SessionError::Server("the device's holder is gone".into()))?;
    let group = tx
        .get_group(user.group)
        .await?
        .ok_or_else(|| SessionError::Server("the holder's group is gone".into()))?;
    Ok((user, group.policy))
}

/// The device a job works on.
async fn job_device<R: Repo>(s: &AppState<R>, job: &Job) -> Result<Device, SessionError> {
    let mut tx = s.repo.read().await?;
    tx.get_device(job.device).await?.ok_or_else(|| SessionError::Server("the job's device is gone".into()))
}

fn save_checkpoint(job: &mut Job, engine: &Engine, now: OffsetDateTime) -> Result<(), SessionError> {
    job.checkpoint =
        Some(serde_json::to_value(engine.checkpoint()).map_err(|e| SessionError::Server(e.to_string()))?);
    job.updated_at = now;
    Ok(())
}

/// The factory management keys the engine may find on a fresh card (3DES before YubiKey 5.7,
/// AES-192 after).
fn factory_keys() -> Vec<ManagementKey> {
    vec![ManagementKey::factory(MgmAlgorithm::TripleDes), ManagementKey::factory(MgmAlgorithm::Aes192)]
}

/// The card slots the policy asks for, their algorithms and the card's identifiers.
fn plan(
    device: &Device,
    policy: &Policy,
    secrets: &CardSecrets,
    guid: [u8; 16],
    expires: OffsetDateTime,
) -> Result<IssuancePlan, SessionError> {
    let mut slots = Vec::new();
    for (slot, profile) in &policy.certificates {
        let Some(reference) = slot.piv_key_reference() else { continue };
        let slot = Slot(reference);
        let algorithm = match profile.algorithm {
            KeyAlgorithm::P256 => PivAlgorithm::EccP256,
            KeyAlgorithm::P384 => PivAlgorithm::EccP384,
            KeyAlgorithm::Rsa2048 => PivAlgorithm::Rsa2048,
            KeyAlgorithm::Rsa3072 => PivAlgorithm::Rsa3072,
        };
        slots.push(SlotPlan { slot, algorithm, profile: profile.profile.clone() });
    }
    let key = secrets.management_key();
    let alg = MgmAlgorithm::from_id(key.algorithm()).map_err(|e| SessionError::Server(e.to_string()))?;
    let new_management_key =
        ManagementKey::new(alg, key.key()).map_err(|e| SessionError::Server(e.to_string()))?;
    Ok(IssuancePlan {
        slots,
        new_management_key,
        puk: secrets.puk().clone(),
        initial_pin: secrets.initial_pin().clone(),
        pin_retries: 3,
        puk_retries: 3,
        fasc_n: lanyard_issuance::fasc_n(device.id).map_err(|e| SessionError::Server(e.to_string()))?,
        guid,
        expiration: lanyard_issuance::chuid_expiration(expires),
    })
}

fn cert_slot(slot: Slot) -> Option<CertSlot> {
    match slot.0 {
        0x9A => Some(CertSlot::PivAuthentication),
        0x9C => Some(CertSlot::DigitalSignature),
        0x9D => Some(CertSlot::KeyManagement),
        0x9E => Some(CertSlot::CardAuthentication),
        _ => None,
    }
}

type Issued = (Vec<(Slot, Vec<u8>)>, Vec<Credential>);

/// Signs the certificates for the keys the card generated, through the issuance rules (the card
/// session is one [`Channel`] among the enrolment paths). CPU work only: nothing is recorded here.
fn issue_certificates<R>(
    s: &AppState<R>,
    cfg: &IssuanceConfig,
    device: &Device,
    holder: &User,
    policy: &Policy,
    keys: &[GeneratedKey],
) -> Result<Issued, SessionError> {
    let now = s.clock.now();
    let mut certs = Vec::new();
    let mut credentials = Vec::new();
    for key in keys {
        let slot = cert_slot(key.slot)
            .ok_or_else(|| SessionError::Server(format!("unexpected slot {:?}", key.slot)))?;
        let enrolment = Enrolment {
            device,
            holder,
            policy,
            slot,
            public_key_der: &key.public_key_spki_der,
            channel: Channel::CardSession {
                attestation: key.attestation.as_ref(),
                attestation_roots: &cfg.attestation_roots,
            },
            now,
        };
        let signed = lanyard_issuance::plan(&enrolment)
            .and_then(|plan| lanyard_issuance::sign(&s.pki.issuing, &plan))
            .map_err(|e| match e {
                IssuanceError::Attestation { .. } | IssuanceError::PublicKey(_) => {
                    SessionError::Engine(e.to_string())
                }
                other => SessionError::Server(format!("slot {slot}: {other}")),
            })?;
        credentials.push(Credential::new(device.id, signed.kind, now));
        certs.push((key.slot, signed.der));
    }
    Ok((certs, credentials))
}

fn sign_chuid<R>(s: &AppState<R>, content: &[u8]) -> Result<Vec<u8>, SessionError> {
    lanyard_ca::cms::sign_chuid(&s.pki.content_signer, content)
        .map_err(|e| SessionError::Server(format!("signing the CHUID: {e}")))
}
