//! Server-driven card sessions (DESIGN §4), the HTTP side: the agent connects a WebSocket with a
//! one-time job ticket, the server redeems it, keeps the job's lease while the session runs, and
//! hands the socket — as an [`AgentLink`] — to the card-session drivers of `lanyard-issuance`,
//! which personalize, roll back, wipe or unlock the card and record every step.
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
use lanyard_core::authz::System;
use lanyard_core::ids::{DeviceId, JobId};
use lanyard_core::lifecycle::DeviceState;
use lanyard_core::model::{FidoPinRules, Job, JobState, PinRules, StepOutcome};
use lanyard_core::repo::Repo;
use lanyard_core::repo::prelude::*;
use lanyard_core::secrets::Kek;
use lanyard_issuance::sponsor::{FetchResult, RevocationFetch, SponsorTrust};
use lanyard_issuance::{AgentLink, Authority, CardSession, PinAnswer, SessionError};
use lanyard_piv::apdu::{Command, Response as CardResponse};
use lanyard_protocol::link::{FEATURE_CTAP, FEATURE_SERVER_PIN};
use lanyard_protocol::{
    AgentFrame, MAX_BATCH, MAX_CTAP_BATCH, MAX_FRAME, PROTOCOL_VERSION, Secret, ServerFrame, Side,
    VERSION_HEADER, check_version, server_wait,
};
use secrecy::{ExposeSecret, SecretString};
use time::Duration;

use crate::portal_pin::{PinDesk, PortalChange, PortalPin};
use crate::{ApiError, AppState};

pub use lanyard_issuance::sponsor::UserMatch;
pub use lanyard_protocol::TICKET_HEADER;
/// How long an agent ticket may wait to be used.
pub const TICKET_TTL: Duration = Duration::minutes(10);
/// How often a running session renews its job's lease (`JOB_LEASE`, 2 minutes): four chances
/// before it runs out, so a slow database round does not cost a live session.
const LEASE_RENEWAL: std::time::Duration = std::time::Duration::from_secs(30);
/// How often the sweeper looks for running jobs whose lease ran out.
pub const LEASE_SWEEP: std::time::Duration = std::time::Duration::from_secs(60);

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
    /// PEM bundles of imported PIV trust anchors (and their intermediates) that sponsor cards of
    /// a derived PIV enrolment may chain to, besides Lanyard's own CA (`piv_trust_anchors`).
    pub piv_trust_anchors: Vec<Vec<u8>>,
    /// How a sponsor card of an imported root is matched to the signed-in holder
    /// (`piv_user_match`).
    pub piv_user_match: lanyard_issuance::sponsor::UserMatch,
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
            piv_trust_anchors: Vec::new(),
            piv_user_match: lanyard_issuance::sponsor::UserMatch::default(),
        }
    }

    /// What sponsor cards are checked against: Lanyard's root and issuing CA, then the
    /// imported bundles. A bundle that is not PEM certificates is an error naming its position.
    pub fn sponsor_trust(&self, pki: &crate::pki::Pki) -> Result<SponsorTrust, String> {
        let mut store = lanyard_ca::card_check::TrustStore::new(
            &[pki.root.certificate_der().to_vec()],
            &[pki.issuing.certificate_der().to_vec()],
        )
        .map_err(|e| format!("Lanyard's own CA certificates: {e}"))?;
        for (i, bundle) in self.piv_trust_anchors.iter().enumerate() {
            store.add_pem_bundle(bundle).map_err(|e| format!("piv_trust_anchors[{i}]: {e}"))?;
        }
        Ok(SponsorTrust {
            store,
            lanyard_issuer: pki.issuing.certificate().clone(),
            user_match: self.piv_user_match,
            fetch: Box::new(HttpRevocation),
        })
    }
}

/// OCSP and CRLs over HTTP for sponsor cards of imported roots: 5 s per request, answers of at
/// most 1 MiB (OCSP) or 16 MiB (CRL).
struct HttpRevocation;

const REVOCATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn http_fetch(url: String, body: Option<Vec<u8>>, limit: u64) -> Result<Vec<u8>, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(REVOCATION_TIMEOUT))
        .http_status_as_error(true)
        .build()
        .into();
    let response = match body {
        Some(body) => agent.post(&url).header("content-type", "application/ocsp-request").send(&body[..]),
        None => agent.get(&url).call(),
    };
    response
        .map_err(|e| e.to_string())?
        .body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| e.to_string())
}

impl RevocationFetch for HttpRevocation {
    fn ocsp<'a>(&'a self, url: &'a str, request: Vec<u8>) -> FetchResult<'a> {
        let url = url.to_owned();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || http_fetch(url, Some(request), 1 << 20))
                .await
                .map_err(|e| e.to_string())?
        })
    }

    fn crl<'a>(&'a self, url: &'a str) -> FetchResult<'a> {
        let url = url.to_owned();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || http_fetch(url, None, 16 << 20))
                .await
                .map_err(|e| e.to_string())?
        })
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
    naming_our_version(accept(s, op, request).await)
}

/// An answer to an agent (upgrade or refusal) with the server's protocol version in
/// [`VERSION_HEADER`], so an agent can tell a refusal for its version from any other.
pub(crate) fn naming_our_version(answer: Result<Response, ApiError>) -> Response {
    let mut response = answer.unwrap_or_else(IntoResponse::into_response);
    response.headers_mut().insert(VERSION_HEADER, axum::http::HeaderValue::from(PROTOCOL_VERSION));
    response
}

/// The agent's [`VERSION_HEADER`] must name our protocol version: a 400 naming both otherwise.
pub(crate) fn check_agent_version(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    check_version(Side::Server, headers.get(VERSION_HEADER).and_then(|v| v.to_str().ok()))
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))
}

async fn accept<R: Repo + 'static>(
    s: AppState<R>,
    op: Option<axum::Extension<crate::OperationId>>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let (mut parts, _body) = request.into_parts();
    let cfg = config(&s)?;
    // Before the ticket: an agent of another version must not use up its ticket.
    check_agent_version(&parts.headers)?;
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
    check_binding(&s, &parts.headers, &ticket, &op).await?;
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
            let session = Session {
                socket,
                seq: 0,
                answer_within_secs: frame_secs(cfg.answer_timeout),
                pin_within_secs: frame_secs(cfg.pin_timeout),
                job: job.id,
                pins: std::sync::Arc::clone(&s.pins),
                server_pin: false,
                ctap: false,
            };
            session.run(s, cfg, job, op).await;
        })
        .into_response())
}

/// What a ticket alone is told when its job was sent to a paired agent.
pub const AGENT_BOUND: &str =
    "this job was sent to a paired agent: its ticket works only together with that agent's credential";

/// A job whose ticket was sent to a paired agent over its link ([`lanyard_core::model::Job::agent`])
/// is run only by that agent: the request must carry its credential too. Checked before the
/// ticket is used up, so a refusal costs nothing. Reading the binding before the redemption is
/// safe: the binding only changes together with the ticket, and the redemption is conditional
/// on the ticket.
async fn check_binding<R: Repo>(
    s: &AppState<R>,
    headers: &axum::http::HeaderMap,
    ticket: &str,
    op: &OperationId,
) -> Result<(), ApiError> {
    let Some(job_id) = ticket.split_once('.').and_then(|(id, _)| id.parse::<JobId>().ok()) else {
        // Not a ticket at all; the redemption refuses it with the usual answer.
        return Ok(());
    };
    let bound = {
        let mut tx = s.repo.read().await?;
        tx.get_job(job_id).await?.and_then(|j| j.agent)
    };
    let Some(bound) = bound else { return Ok(()) };
    let refuse = || ApiError::new(StatusCode::UNAUTHORIZED, AGENT_BOUND);
    let credential = crate::auth::bearer(headers).ok_or_else(refuse)?;
    let system = System::new(op.clone(), s.clock.now());
    match system.authenticate_agent(s.repo.as_ref(), credential).await? {
        Some((agent, _)) if agent.id == bound => Ok(()),
        _ => Err(refuse()),
    }
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
/// are left alone. Deletes mobiles whose enrolment was abandoned. Runs until the task is dropped.
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
        crate::cluster::sweep(&s).await;
        // Phones that redeemed a code and never finished stop counting against max_mobiles.
        match system.abandon_stale_enrolments(s.repo.as_ref()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "mobiles that never finished enrolling were deleted"),
            Err(e) => tracing::warn!(error = %e, "could not sweep abandoned mobile enrolments"),
        }
    }
}

struct Session {
    socket: WebSocket,
    seq: u64,
    /// The deadlines sent to the agent, from [`IssuanceConfig`].
    answer_within_secs: u32,
    pin_within_secs: u32,
    job: JobId,
    /// Where a PIN typed in the portal waits ([`crate::portal_pin`]).
    pins: Arc<PinDesk>,
    /// The agent takes a new PIN from the server (feature `server_pin` in its hello).
    server_pin: bool,
    /// The agent relays `ctap` frames (feature `ctap` in its hello).
    ctap: bool,
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

    /// Sends one batch of CTAP requests (`ctap`) and returns the authenticator's answers, checked
    /// against the rules of the frame: no more answers than requests, each at least a status
    /// byte, an error status only on the last, and fewer answers only after an error status.
    async fn ctap_batch(
        &mut self,
        step: &str,
        (done, total): (usize, usize),
        requests: &[Vec<u8>],
    ) -> Result<Vec<Vec<u8>>, SessionError> {
        if !self.ctap {
            return Err(SessionError::AgentError(format!(
                "this agent cannot reach FIDO authenticators (feature {FEATURE_CTAP}); update it"
            )));
        }
        if requests.is_empty() || requests.len() > MAX_CTAP_BATCH {
            return Err(SessionError::Server(format!(
                "a CTAP batch holds 1 to {MAX_CTAP_BATCH} requests, not {}",
                requests.len()
            )));
        }
        if let Some(i) = requests.iter().position(Vec::is_empty) {
            return Err(SessionError::Server(format!("CTAP request {i} has no command byte")));
        }
        self.seq += 1;
        let seq = self.seq;
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let answer_within_secs = self.answer_within_secs;
        let frame = ServerFrame::Ctap {
            seq,
            step: step.to_owned(),
            done: count(done),
            total: count(total),
            requests: requests.iter().map(hex::encode_upper).collect(),
            answer_within_secs,
        };
        self.send(&frame).await?;
        match self.receive(answer_within_secs).await? {
            AgentFrame::CtapResponses { seq: got, responses } if got == seq => {
                check_ctap_responses(requests.len(), &responses)
            }
            other => Err(SessionError::Protocol(format!(
                "expected CTAP responses to message {seq}, got {}",
                frame_kind(&other)
            ))),
        }
    }

    /// The new PIN for a `change_pin`/`unblock_pin` frame and the agent's deadline for it. For a
    /// session whose PIN comes from the portal (and an agent that takes it), waits for the
    /// holder's answer there: `None` when they kept the initial PIN or gave none in time, so no
    /// frame is sent at all; with a PIN, the agent only has to write it. Otherwise no PIN, and
    /// the agent's holder has the PIN deadline.
    fn portal_pin(
        &self,
        rules: &PinRules,
    ) -> impl Future<Output = Option<(Option<Secret>, u32)>> + Send + use<> {
        // Owned copies: the socket in `self` is not `Sync`, so `self` cannot be held across the wait.
        let (pins, job, rules) = (Arc::clone(&self.pins), self.job, *rules);
        let (server_pin, pin_secs, answer_secs) =
            (self.server_pin, self.pin_within_secs, self.answer_within_secs);
        async move {
            if !server_pin {
                return Some((None, pin_secs));
            }
            let within = std::time::Duration::from_secs(u64::from(pin_secs));
            match pins.wait(job, rules, within).await {
                PortalPin::NotUsed => Some((None, pin_secs)),
                PortalPin::Given(pin) => Some((Some(pin), answer_secs)),
                PortalPin::Declined => None,
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

    /// Waits for the agent's hello and notes the features it lists.
    async fn hello(&mut self) -> Result<(), SessionError> {
        match self.receive(self.answer_within_secs).await? {
            AgentFrame::Hello { protocol, .. } if protocol != PROTOCOL_VERSION => {
                Err(SessionError::Protocol(format!(
                    "the agent's hello names protocol version {protocol}, not {PROTOCOL_VERSION}"
                )))
            }
            AgentFrame::Hello { agent, reader, atr, features, .. } => {
                tracing::info!(job = %self.job, %agent, %reader, %atr, "agent connected");
                self.server_pin = features.iter().any(|f| f == FEATURE_SERVER_PIN);
                self.ctap = features.iter().any(|f| f == FEATURE_CTAP);
                Ok(())
            }
            other => Err(SessionError::Protocol(format!("expected hello, got {other:?}"))),
        }
    }

    /// Waits for the agent's hello, then runs the job through the card-session drivers while
    /// keeping its lease; a lost lease ends the session at once.
    async fn run<R: Repo>(mut self, s: AppState<R>, cfg: Arc<IssuanceConfig>, mut job: Job, op: OperationId) {
        let hello = self.hello().await;
        let job_id = job.id;
        let sponsor = match cfg.sponsor_trust(&s.pki) {
            Ok(trust) => Some(trust),
            Err(e) => {
                tracing::error!(error = %e, "sponsor cards cannot be checked");
                None
            }
        };
        let mut session = CardSession {
            repo: s.repo.as_ref(),
            clock: s.clock.as_ref(),
            authority: Authority {
                issuing: &s.pki.issuing,
                content_signer: &s.pki.content_signer,
                kek: &cfg.kek,
                attestation_roots: &cfg.attestation_roots,
                sponsor: sponsor.as_ref(),
            },
            op: op.clone(),
            link: &mut self,
        };
        let result = match hello {
            // Dropping the session on a lost lease sends the card nothing more.
            Ok(()) => tokio::select! {
                result = session.run(&mut job) => result,
                lost = keep_lease(&s, job_id, &op) => Err(lost),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(job = %job.id, error = %e, "card session stopped");
            session.record_failure(&mut job, &e).await;
            self.fail(&e.to_string()).await;
        }
    }
}

impl AgentLink for Session {
    async fn transmit(
        &mut self,
        step: &str,
        progress: (usize, usize),
        commands: &[Command],
    ) -> Result<Vec<CardResponse>, SessionError> {
        Session::transmit(self, step, progress, commands).await
    }

    fn ctap_supported(&self) -> bool {
        self.ctap
    }

    async fn ctap_batch(
        &mut self,
        step: &str,
        progress: (usize, usize),
        requests: &[Vec<u8>],
    ) -> Result<Vec<Vec<u8>>, SessionError> {
        Session::ctap_batch(self, step, progress, requests).await
    }

    async fn change_pin(
        &mut self,
        old_pin: &SecretString,
        rules: &PinRules,
    ) -> Result<PinAnswer, SessionError> {
        let Some((new_pin, answer_within_secs)) = self.portal_pin(rules).await else {
            return Ok(PinAnswer::Skipped);
        };
        self.seq += 1;
        let seq = self.seq;
        let old_pin = Secret::new(old_pin.expose_secret());
        self.send(&ServerFrame::ChangePin { seq, old_pin, rules: *rules, answer_within_secs, new_pin })
            .await?;
        pin_answer(self.receive(answer_within_secs).await?, seq, "the PIN change result")
    }

    async fn holder_fido_pin(&mut self, rules: &FidoPinRules) -> Result<Option<SecretString>, SessionError> {
        let (pins, job, rules) = (Arc::clone(&self.pins), self.job, *rules);
        let within = std::time::Duration::from_secs(u64::from(self.pin_within_secs));
        match pins.wait_fido(job, rules, within).await {
            PortalPin::Given(pin) => Ok(Some(SecretString::from(pin.expose().to_owned()))),
            PortalPin::Declined => Ok(None),
            PortalPin::NotUsed => Err(SessionError::Server(
                "the FIDO PIN is chosen in the portal; start the issuance from Add Device there".into(),
            )),
        }
    }

    async fn change_pin_keeping(
        &mut self,
        old_pin: &SecretString,
        rules: &PinRules,
    ) -> Result<(PinAnswer, Option<SecretString>), SessionError> {
        let Some((new_pin, answer_within_secs)) = self.portal_pin(rules).await else {
            return Ok((PinAnswer::Skipped, None));
        };
        // A copy for the FIDO PIN, wiped when the caller drops it.
        let kept = new_pin.as_ref().map(|p| SecretString::from(p.expose().to_owned()));
        self.seq += 1;
        let seq = self.seq;
        let old_pin = Secret::new(old_pin.expose_secret());
        self.send(&ServerFrame::ChangePin { seq, old_pin, rules: *rules, answer_within_secs, new_pin })
            .await?;
        let answer = pin_answer(self.receive(answer_within_secs).await?, seq, "the PIN change result")?;
        Ok((answer, kept))
    }

    async fn change_holder_pin(&mut self, rules: &PinRules) -> Result<PinAnswer, SessionError> {
        if !self.server_pin {
            return Err(SessionError::AgentError(format!(
                "this agent cannot take PINs typed in the portal (feature {FEATURE_SERVER_PIN}); update it"
            )));
        }
        let (pins, job, rules_copy, pin_secs) =
            (Arc::clone(&self.pins), self.job, *rules, self.pin_within_secs);
        let within = std::time::Duration::from_secs(u64::from(pin_secs));
        let (current, new) = match pins.wait_change(job, rules_copy, within).await {
            PortalChange::Given { current, new } => (current, new),
            PortalChange::Declined => return Ok(PinAnswer::Skipped),
            PortalChange::NotUsed => {
                return Err(SessionError::Server(
                    "a PIN change takes both PINs from the portal; start it from the device's page there"
                        .into(),
                ));
            }
        };
        self.seq += 1;
        let seq = self.seq;
        let answer_within_secs = self.answer_within_secs;
        let frame = ServerFrame::ChangePin {
            seq,
            old_pin: current,
            rules: *rules,
            answer_within_secs,
            new_pin: Some(new),
        };
        self.send(&frame).await?;
        // The frame and both PINs are wiped here, before the answer is awaited.
        drop(frame);
        pin_answer(self.receive(answer_within_secs).await?, seq, "the PIN change result")
    }

    async fn unblock_pin(&mut self, puk: &SecretString, rules: &PinRules) -> Result<PinAnswer, SessionError> {
        let Some((new_pin, answer_within_secs)) = self.portal_pin(rules).await else {
            return Ok(PinAnswer::Skipped);
        };
        self.seq += 1;
        let seq = self.seq;
        let puk = Secret::new(puk.expose_secret());
        self.send(&ServerFrame::UnblockPin { seq, puk, rules: *rules, answer_within_secs, new_pin }).await?;
        pin_answer(self.receive(answer_within_secs).await?, seq, "the unblock result")
    }

    async fn holder_pin(&mut self) -> Result<Option<SecretString>, SessionError> {
        let (pins, job) = (Arc::clone(&self.pins), self.job);
        let within = std::time::Duration::from_secs(u64::from(self.pin_within_secs));
        match pins.wait_verify(job, within).await {
            PortalPin::Given(pin) => Ok(Some(SecretString::from(pin.expose().to_owned()))),
            PortalPin::Declined => Ok(None),
            PortalPin::NotUsed => Err(SessionError::Server(
                "a sponsor proof takes the card's PIN from the portal; start it there".into(),
            )),
        }
    }

    async fn done(&mut self, device: DeviceId, state: DeviceState) -> Result<(), SessionError> {
        Session::done(self, device, state).await
    }
}

/// A frame's kind and sequence number, for an error: never its content (CTAP answers carry
/// encrypted PINs and tokens).
fn frame_kind(frame: &AgentFrame) -> String {
    let text = frame.to_text();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let kind = value.get("type").and_then(serde_json::Value::as_str).unwrap_or("?");
    match value.get("seq").and_then(serde_json::Value::as_u64) {
        Some(seq) => format!("`{kind}` for message {seq}"),
        None => format!("`{kind}`"),
    }
}

/// Decodes the agent's answers to `sent` CTAP requests and checks them against the rules of
/// `ctap`: at most one answer per request, each at least a status byte, only the last with an
/// error status, and fewer answers than requests only when the last has one.
pub(crate) fn check_ctap_responses(sent: usize, responses: &[String]) -> Result<Vec<Vec<u8>>, SessionError> {
    let bad = |m: String| Err(SessionError::Protocol(m));
    if responses.len() > sent {
        return bad(format!("{} CTAP responses to {sent} requests", responses.len()));
    }
    let mut out = Vec::with_capacity(responses.len());
    for (i, r) in responses.iter().enumerate() {
        let bytes = match hex::decode(r) {
            Ok(b) => b,
            Err(e) => return bad(format!("CTAP response {i} is not hex: {e}")),
        };
        let Some(&status) = bytes.first() else {
            return bad(format!("CTAP response {i} has no status byte"));
        };
        if status != lanyard_ctap::consts::status::OK && i + 1 != responses.len() {
            return bad(format!(
                "CTAP response {i} has status {status:#04x} ({}) but more responses follow it",
                lanyard_ctap::consts::status::name(status)
            ));
        }
        out.push(bytes);
    }
    let stopped = out.last().is_some_and(|r| r.first() != Some(&lanyard_ctap::consts::status::OK));
    if out.len() < sent && !stopped {
        return bad(format!(
            "{} CTAP responses to {sent} requests, and the last one is not an error",
            out.len()
        ));
    }
    Ok(out)
}

/// The agent's answer to PIN request `seq`.
fn pin_answer(frame: AgentFrame, seq: u64, expected: &str) -> Result<PinAnswer, SessionError> {
    match frame {
        AgentFrame::PinChanged { seq: got, sw } if got == seq => Ok(PinAnswer::Sent { sw }),
        AgentFrame::PinChangeSkipped { seq: got } if got == seq => Ok(PinAnswer::Skipped),
        other => Err(SessionError::Protocol(format!("expected {expected}, got {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use lanyard_ctap::cbor::{MapRef, decode};
    use lanyard_protocol::CONNECT_PATH;
    use tokio_tungstenite::tungstenite;

    /// Runs `script` on a [`Session`] with whatever agent connects to the returned URL (a
    /// stand-in for `/api/v1/agent/connect` without the ticket and the job driver).
    async fn session_server<F, Fut, T>(script: F) -> (String, tokio::task::JoinHandle<T>)
    where
        F: FnOnce(Session) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let script = Arc::new(std::sync::Mutex::new(Some((script, tx))));
        let app = axum::Router::new().route(
            CONNECT_PATH,
            axum::routing::get(move |ws: WebSocketUpgrade| {
                let taken = script.lock().unwrap().take();
                async move {
                    let (script, tx) = taken.expect("one connection");
                    naming_our_version(Ok(ws
                        .on_upgrade(move |socket| async move {
                            let mut session = Session {
                                socket,
                                seq: 0,
                                answer_within_secs: 30,
                                pin_within_secs: 30,
                                job: JobId::new(),
                                pins: Arc::new(PinDesk::default()),
                                server_pin: false,
                                ctap: false,
                            };
                            session.hello().await.unwrap();
                            let _ = tx.send(script(session).await);
                        })
                        .into_response()))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, tokio::spawn(async move { rx.await.unwrap() }))
    }

    /// The server's `ctap_batch` against the real agent relay and the software card's own
    /// authenticator: getInfo and getRetries, a PIV batch between, a batch that stops at the
    /// authenticator's refusal.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ctap_batches_reach_the_cards_authenticator_through_the_agent() {
        use lanyard_agent::relay::{SessionOptions, SkipPinChange, run_session_with};
        let device = DeviceId::new();
        let (url, script) = session_server(move |mut session| async move {
            assert!(session.ctap_supported(), "the agent lists feature ctap");
            let answers = session
                .ctap_batch("fido", (0, 3), &[vec![0x04], vec![0x06, 0xA2, 0x01, 0x02, 0x02, 0x01]])
                .await
                .unwrap();
            let serial =
                session.transmit("detect", (1, 3), &[lanyard_piv::commands::get_serial()]).await.unwrap();
            // ClientPIN without its required members, then getInfo, which is never sent.
            let refused = session.ctap_batch("fido", (2, 3), &[vec![0x06, 0xA0], vec![0x04]]).await.unwrap();
            session.done(device, DeviceState::Pending).await.unwrap();
            (answers, serial, refused)
        })
        .await;
        let agent = tokio::task::spawn_blocking(move || {
            use lanyard_vcard::{AttestationRoot, NewCard, VirtualCard};
            let now = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_780_000_000);
            let dir = tempfile::tempdir().unwrap();
            let root = AttestationRoot::open_or_create(dir.path(), now).unwrap();
            let image = VirtualCard::new_image(&root, &NewCard::default(), now).unwrap();
            let card = lanyard_piv::InProcess(VirtualCard::from_image(image).unwrap());
            let opts = SessionOptions::new(url, "ticket", "in-process");
            run_session_with(&opts, card, &lanyard_vcard::atr(), &mut SkipPinChange, &mut |_| {})
        });
        let (answers, serial, refused) = script.await.unwrap();
        let outcome = agent.await.unwrap().unwrap();
        assert_eq!((outcome.device, outcome.state), (device, DeviceState::Pending));
        assert_eq!(answers.len(), 2);
        assert_eq!(answers[0][0], 0x00);
        let info = decode(&answers[0][1..]).unwrap();
        let versions = MapRef::new(&info).unwrap().get(1).unwrap().as_array().unwrap().clone();
        assert!(versions.iter().any(|v| v.as_text() == Some("FIDO_2_1")), "{versions:?}");
        assert_eq!(answers[1][0], 0x00);
        assert_eq!(MapRef::new(&decode(&answers[1][1..]).unwrap()).unwrap().uint(3).unwrap(), Some(8));
        assert!(serial[0].sw.is_success(), "PIV after CTAP: {:?}", serial[0].sw);
        assert_eq!(refused.len(), 1, "the batch stopped at the refusal");
        assert_ne!(refused[0][0], 0x00);
    }

    /// An agent without feature `ctap` is told to update and gets no frame; an answer to the
    /// wrong request is a protocol error that names the frame, not its content.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ctap_needs_the_feature_and_the_right_answer() {
        for features in [vec![], vec![FEATURE_CTAP.to_owned()]] {
            let (url, script) = session_server(|mut session| async move {
                let r = session.ctap_batch("fido", (0, 1), &[vec![0x04]]).await;
                session.fail("over").await;
                r
            })
            .await;
            let ws_url = format!("{}{CONNECT_PATH}", url.replacen("http", "ws", 1));
            let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
            let hello = AgentFrame::Hello {
                protocol: PROTOCOL_VERSION,
                agent: "test".into(),
                reader: "r".into(),
                atr: "3B".into(),
                features: features.clone(),
            };
            ws.send(tungstenite::Message::text(hello.to_text())).await.unwrap();
            let mut seen = Vec::new();
            while let Some(Ok(m)) = ws.next().await {
                let tungstenite::Message::Text(t) = m else { continue };
                let frame = ServerFrame::parse(t.as_str()).unwrap();
                if let ServerFrame::Ctap { seq, .. } = &frame {
                    let wrong = AgentFrame::CtapResponses { seq: seq + 98, responses: vec!["00A0".into()] };
                    ws.send(tungstenite::Message::text(wrong.to_text())).await.unwrap();
                }
                seen.push(frame);
            }
            let e = script.await.unwrap().unwrap_err().to_string();
            if features.is_empty() {
                assert!(e.contains("cannot reach FIDO authenticators (feature ctap); update it"), "{e}");
                assert!(matches!(seen.as_slice(), [ServerFrame::Error { .. }]), "no ctap frame: {seen:?}");
            } else {
                assert!(
                    e.contains("expected CTAP responses to message 1, got `ctap_responses` for message 99"),
                    "{e}"
                );
                assert!(!e.contains("00A0"), "{e}");
            }
        }
    }

    fn texts(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn ctap_answers_follow_the_frame_rules() {
        // All answered, all OK; or stopped at the failing one.
        let ok = check_ctap_responses(2, &texts(&["00A10102", "00"])).unwrap();
        assert_eq!(ok, vec![vec![0x00, 0xA1, 0x01, 0x02], vec![0x00]]);
        let stopped = check_ctap_responses(3, &texts(&["00", "31"])).unwrap();
        assert_eq!(stopped, vec![vec![0x00], vec![0x31]]);
        assert_eq!(check_ctap_responses(1, &texts(&["31"])).unwrap(), vec![vec![0x31]]);
        // An error status that is not the last answer.
        let e = check_ctap_responses(2, &texts(&["31", "00"])).unwrap_err().to_string();
        assert!(e.contains("CTAP2_ERR_PIN_INVALID") && e.contains("more responses follow"), "{e}");
        // Fewer answers without an error to explain it.
        let e = check_ctap_responses(2, &texts(&["00"])).unwrap_err().to_string();
        assert!(e.contains("1 CTAP responses to 2 requests"), "{e}");
        let e = check_ctap_responses(1, &[]).unwrap_err().to_string();
        assert!(e.contains("0 CTAP responses to 1 requests"), "{e}");
        // More answers than requests, no status byte, not hex.
        assert!(check_ctap_responses(1, &texts(&["00", "00"])).unwrap_err().to_string().contains("2 CTAP"));
        assert!(check_ctap_responses(1, &texts(&[""])).unwrap_err().to_string().contains("no status byte"));
        assert!(check_ctap_responses(1, &texts(&["0G"])).unwrap_err().to_string().contains("not hex"));
    }

    #[test]
    fn an_unexpected_frame_is_named_without_its_content() {
        let frame = AgentFrame::Responses { seq: 4, responses: vec!["DEADBEEF9000".into()] };
        let named = frame_kind(&frame);
        assert_eq!(named, "`responses` for message 4");
        assert!(!named.contains("DEADBEEF"));
        assert_eq!(
            frame_kind(&AgentFrame::PinChangeSkipped { seq: 1 }),
            "`pin_change_skipped` for message 1"
        );
    }
}
