//! The card-session drivers: what the server does with a card while an agent relays its APDUs —
//! personalize it (issuance), reset it (rollback, wipe) or unblock its PIN — and how each step is
//! recorded, so a broken session resumes or rolls back. Below HTTP and below the transport: the
//! agent is reached through an [`AgentLink`] (the server's WebSocket, or a test's in-process
//! link), the database through a [`Repo`], and the certificates come from the issuance rules of
//! this crate, like on every other enrolment path.

use std::future::Future;

use lanyard_ca::{CertificateAuthority, SignerCredential, SoftwareKey};
use lanyard_core::audit::OperationId;
use lanyard_core::authz::{Principal, STEP_ROLLBACK_REQUESTED, System};
use lanyard_core::clock::Clock;
use lanyard_core::ids::DeviceId;
use lanyard_core::lifecycle::{DeviceAction, DeviceState};
use lanyard_core::model::{
    CertSlot, Credential, Device, FidoPinRules, Job, JobKind, JobState, KeyAlgorithm, PinRules, Policy,
    StepOutcome, User,
};
use lanyard_core::repo::Repo;
use lanyard_core::repo::prelude::*;
use lanyard_core::secrets::{CardSecrets, Kek};
use lanyard_personalize::{
    Checkpoint, Engine, GeneratedKey, Input, IssuancePlan, Rollback, RollbackStep, SlotPlan, Step,
};
use lanyard_piv::apdu::{Command, Response, StatusWord};
use lanyard_piv::mgmkey::{ManagementKey, MgmAlgorithm};
use lanyard_piv::objects::ChuidIssuance;
use lanyard_piv::types::{KeyAlgorithm as PivAlgorithm, Slot};
use secrecy::SecretString;
use time::OffsetDateTime;

use crate::{Channel, Enrolment, IssuanceError};

/// YubiKey AES-192 management key algorithm id.
const AES192: u8 = 0x0A;

/// Why a session stopped.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
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

/// What the holder did at the agent when asked for a new PIN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinAnswer {
    /// The agent sent the command; the card answered with status word `sw` (hex, `9000` is
    /// success).
    Sent { sw: String },
    /// The holder chose not to set a PIN now.
    Skipped,
}

/// The agent as a card session sees it, whatever carries the frames. The link owns the
/// deadlines: it tells the agent how long it has for each request and gives up (an error) when
/// the answer does not come in time.
pub trait AgentLink: Send {
    /// Sends one batch of commands to the card (`step` and `progress` — done, total — are for
    /// the holder's progress display) and returns the card's answers in order; the agent stops
    /// at the first failing command, so there may be fewer answers than commands.
    fn transmit(
        &mut self,
        step: &str,
        progress: (usize, usize),
        commands: &[Command],
    ) -> impl Future<Output = Result<Vec<Response>, SessionError>> + Send;

    /// Whether the agent relays CTAP to the card's FIDO authenticator (feature `ctap` in its
    /// `hello`). [`AgentLink::ctap_batch`] fails at once on an agent that does not.
    fn ctap_supported(&self) -> bool;

    /// Sends a batch of CTAP requests to the card's FIDO authenticator and returns its answers
    /// in order. Each request is the command byte followed by its CBOR parameters (canonical,
    /// `lanyard_ctap::cbor::encode`); each answer is the status byte followed by its CBOR. The
    /// agent stops after the first answer whose status is not `00` (CTAP2_OK), so there may be
    /// fewer answers than requests, and only the last may carry an error status; the link checks
    /// that. `step` and `progress` (done, total) are for the holder's display, as for
    /// [`AgentLink::transmit`], and the deadline is the same.
    ///
    /// An error from the agent ([`SessionError::AgentError`]: no FIDO authenticator reachable,
    /// or the transport failed) leaves the session running: the agent still relays PIV batches,
    /// so the caller may decide to go on without FIDO. Over PC/SC the agent SELECTs the FIDO
    /// application for the batch and the PIV application again before the next frame that talks
    /// to PIV (`transmit`, `change_pin`, `unblock_pin`), so
    /// PIV's security state (verified PIN, authenticated management key) does not survive a CTAP
    /// batch: authenticate again after one.
    fn ctap_batch(
        &mut self,
        step: &str,
        progress: (usize, usize),
        requests: &[Vec<u8>],
    ) -> impl Future<Output = Result<Vec<Vec<u8>>, SessionError>> + Send;

    /// Waits for the FIDO PIN the holder chooses in the portal (`independent` FIDO PIN mode),
    /// which must meet `rules`. The server sends it to the key itself, inside setPIN. `None` when
    /// the holder cancelled or let the time run out.
    fn holder_fido_pin(
        &mut self,
        rules: &FidoPinRules,
    ) -> impl Future<Output = Result<Option<SecretString>, SessionError>> + Send;

    /// As [`AgentLink::change_pin`], and hands the new PIN back when it came from the portal, so
    /// the session can make it the key's FIDO PIN too (`shared` FIDO PIN mode). `None` when the
    /// agent's holder typed it there.
    fn change_pin_keeping(
        &mut self,
        old_pin: &SecretString,
        rules: &PinRules,
    ) -> impl Future<Output = Result<(PinAnswer, Option<SecretString>), SessionError>> + Send;

    /// Asks the agent to change the PIN from `old_pin` to one the holder types under `rules`.
    fn change_pin(
        &mut self,
        old_pin: &SecretString,
        rules: &PinRules,
    ) -> impl Future<Output = Result<PinAnswer, SessionError>> + Send;

    /// Asks the agent to change the PIN from the holder's current PIN to a new one under
    /// `rules`, both typed by the holder where the session was started (the portal): a card
    /// session of kind `change_pin`. The server knows neither PIN beforehand.
    fn change_holder_pin(
        &mut self,
        rules: &PinRules,
    ) -> impl Future<Output = Result<PinAnswer, SessionError>> + Send;

    /// Asks the agent to unblock the PIN with `puk` and a new PIN the holder types under `rules`.
    fn unblock_pin(
        &mut self,
        puk: &SecretString,
        rules: &PinRules,
    ) -> impl Future<Output = Result<PinAnswer, SessionError>> + Send;

    /// Waits for the card's PIN the holder types in the portal, for a sponsor proof (job kind
    /// `sponsor_proof`): the server sends it to the card itself, inside a VERIFY command.
    /// `None` when the holder cancelled or let the time run out.
    fn holder_pin(&mut self) -> impl Future<Output = Result<Option<SecretString>, SessionError>> + Send;

    /// Tells the agent the session is over and the device is now in `state`.
    fn done(
        &mut self,
        device: DeviceId,
        state: DeviceState,
    ) -> impl Future<Output = Result<(), SessionError>> + Send;
}

/// What a card session signs with and opens secrets with.
pub struct Authority<'a> {
    /// Signs the card's certificates.
    pub issuing: &'a CertificateAuthority<SoftwareKey>,
    /// Signs the CHUID.
    pub content_signer: &'a SignerCredential<SoftwareKey>,
    /// Seals and opens the card secrets.
    pub kek: &'a Kek,
    /// DER certificates; YubiKey attestations (slot F9 chains) must end at one of them. Empty:
    /// attestations are recorded but not verified.
    pub attestation_roots: &'a [Vec<u8>],
    /// What sponsor cards are checked against (derived PIV); `None` where not configured.
    pub sponsor: Option<&'a crate::sponsor::SponsorTrust>,
}

/// One card session: a job run over one agent link, under one operation id.
pub struct CardSession<'a, R, L> {
    pub repo: &'a R,
    pub clock: &'a dyn Clock,
    pub authority: Authority<'a>,
    pub op: OperationId,
    pub link: &'a mut L,
}

impl<R: Repo, L: AgentLink> CardSession<'_, R, L> {
    /// Runs `job` to its end: an unlock, a wipe, a requested rollback, or an issuance (started
    /// or resumed from its checkpoint). Every step is recorded on `job` and stored; on an error
    /// the caller records the failure ([`CardSession::record_failure`]).
    pub async fn run(&mut self, job: &mut Job) -> Result<(), SessionError> {
        let rollback = job.steps.last().is_some_and(|s| s.name == STEP_ROLLBACK_REQUESTED);
        match job.kind {
            JobKind::Unlock => self.unlock(job).await,
            JobKind::Wipe => self.wipe(job).await,
            JobKind::ChangePin => self.change_pin(job).await,
            JobKind::SponsorProof => self.sponsor_proof(job).await,
            _ if rollback => self.rollback(job).await,
            _ => self.issue(job).await,
        }
    }

    /// Records that the session stopped on `error`: the job is Failed (it can be resumed or
    /// rolled back with a new ticket). A superseded session's copy is out of date and is not
    /// written.
    pub async fn record_failure(&mut self, job: &mut Job, error: &SessionError) {
        if job.state != JobState::Running || matches!(error, SessionError::Superseded(_)) {
            return;
        }
        let now = self.clock.now();
        let _ = job.record("session", StepOutcome::Failed, Some(error.to_string()), now);
        let _ = job.transition(JobState::Failed, now);
        if let Err(e) = System::new(self.op.clone(), now).save_job(self.repo, job).await {
            tracing::error!(job = %job.id, error = %e, "could not record the failed job");
        }
    }

    async fn issue(&mut self, job: &mut Job) -> Result<(), SessionError> {
        let repo = self.repo;
        let now = self.clock.now();
        let system = System::new(self.op.clone(), now);
        let device = job_device(self.repo, job).await?;
        let (owner, policy) = holder(self.repo, &device).await?;
        let sealed = repo.read().await?.get_card_secrets(device.id).await?;
        if device.state != DeviceState::Issuing {
            return Err(SessionError::Server(format!(
                "device {} is {}, not issuing",
                device.id, device.state
            )));
        }
        // Secrets, the card UUID and the card's expiry exist before the first command, and are
        // reused on resume.
        let kek = self.authority.kek;
        let (secrets, guid, expires) = match (&sealed, device.card_guid, &job.checkpoint) {
            (Some(sealed), Some(guid), _) => (
                CardSecrets::open(sealed, kek, device.id).map_err(|e| SessionError::Server(e.to_string()))?,
                guid,
                // Devices prepared before the expiry was recorded.
                device.card_expires_at.unwrap_or_else(|| crate::card_expiry(now)),
            ),
            (_, _, Some(_)) => {
                return Err(SessionError::Server(
                    "the job has a checkpoint but the card secrets are missing".into(),
                ));
            }
            _ => {
                let secrets = CardSecrets::generate(AES192, &policy)
                    .and_then(|s| match CardSecrets::generate_fido_pin(&policy)? {
                        Some(pin) => s.with_fido_pin(pin),
                        None => Ok(s),
                    })
                    .map_err(|e| SessionError::Server(e.to_string()))?;
                let guid = lanyard_piv::objects::random_uuid_v4();
                let sealed = secrets.seal(kek, device.id).map_err(|e| SessionError::Server(e.to_string()))?;
                let expires = crate::card_expiry(now);
                system.prepare_card(repo, device.id, &sealed, guid, expires).await?;
                (secrets, guid, expires)
            }
        };
        let plan = card_plan(&device, &policy, &secrets, guid, expires)?;
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
                    let responses =
                        self.link.transmit(progress.2, (progress.0, progress.1), &commands).await?;
                    Input::Responses(responses)
                }
                Step::IssueCertificates(keys) => {
                    // The device as recorded now (with its card UUID and expiry).
                    let device = job_device(self.repo, job).await?;
                    let (certs, mut credentials) =
                        self.issue_certificates(&device, &owner, &policy, &keys)?;
                    // The engine takes the certificates; the checkpoint that says so is stored
                    // with the credentials, so a resumed session never issues twice.
                    let next = engine.next(Input::Certificates(certs));
                    save_checkpoint(job, &engine, self.clock.now())?;
                    system.record_issued(repo, job, &mut credentials).await?;
                    match next {
                        Step::SignChuid(content) => Input::ChuidSignature(self.sign_chuid(&content)?),
                        Step::Failed(e) => return Err(SessionError::Engine(e.to_string())),
                        other => {
                            return Err(SessionError::Server(format!(
                                "the engine asked for {other:?} after the certificates"
                            )));
                        }
                    }
                }
                Step::SignChuid(content) => Input::ChuidSignature(self.sign_chuid(&content)?),
                Step::Done(outcome) => break outcome,
                Step::Failed(e) => return Err(SessionError::Engine(e.to_string())),
            };
            save_checkpoint(job, &engine, self.clock.now())?;
            system.save_job(repo, job).await?;
        };
        // The key's FIDO PIN, by the policy's mode, before the device leaves Issuing: a failure
        // here leaves a job that resumes or rolls back like a PIV step.
        let fido = self.fido_phase(job, &policy, &secrets).await?;
        let shared_fido =
            fido.as_ref().is_some_and(|o| o.mode == lanyard_personalize::fido::FidoMode::Shared && o.pin_set);
        // CTAP batches leave the FIDO application selected; the agent selects PIV again itself
        // before the next frame that talks to PIV (change_pin included), so nothing to do here.
        // Everything is on the card: the device is Pending until the PIN is changed.
        let now = self.clock.now();
        let system = System::new(self.op.clone(), now);
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
        // In the shared FIDO mode the new PIN comes back so it becomes the FIDO PIN too.
        let answer = if shared_fido {
            self.link.change_pin_keeping(secrets.initial_pin(), &policy.pin).await
        } else {
            self.link.change_pin(secrets.initial_pin(), &policy.pin).await.map(|a| (a, None))
        };
        let answer = match answer {
            Ok((PinAnswer::Sent { sw }, new_pin)) if shared_fido && sw.eq_ignore_ascii_case("9000") => {
                let changed = match (new_pin, secrets.fido_pin()) {
                    (Some(new_pin), Some(temporary)) => {
                        self.fido_shared_change(job, temporary, new_pin).await
                    }
                    _ => Err(SessionError::AgentError(
                        "the new PIN was typed at the agent, so the server cannot make it the FIDO PIN"
                            .into(),
                    )),
                };
                match changed {
                    Ok(()) => Ok(PinAnswer::Sent { sw }),
                    Err(e) => {
                        // The PIV PIN is the holder's, the FIDO PIN still the temporary one: the
                        // device stays Pending, and an operator who activates it sees that PIN.
                        tracing::info!(device = %device.id, error = %e, "the FIDO PIN was not changed; the device stays pending");
                        Ok(PinAnswer::Skipped)
                    }
                }
            }
            other => other.map(|(a, _)| a),
        };
        let state = match answer {
            Ok(PinAnswer::Sent { sw }) if sw.eq_ignore_ascii_case("9000") => {
                let principal = Principal::new(owner.clone(), self.op.clone(), self.clock.now())
                    .map_err(|e| SessionError::Server(e.to_string()))?;
                let view = principal.self_service().map_err(|e| SessionError::Server(e.to_string()))?;
                view.confirm_pin_changed(repo, device.id).await?.state
            }
            Ok(PinAnswer::Sent { sw }) => {
                tracing::info!(device = %device.id, %sw, "the card refused the PIN change; the device stays pending");
                DeviceState::Pending
            }
            Ok(PinAnswer::Skipped) => DeviceState::Pending,
            Err(e @ SessionError::Protocol(_)) => return Err(e),
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
                let _ = self.link.done(device.id, DeviceState::Pending).await;
                return Ok(());
            }
        };
        self.link.done(device.id, state).await
    }

    /// Resets the card to factory state and fails the device (its certificates are revoked by
    /// the lifecycle cascade).
    async fn rollback(&mut self, job: &mut Job) -> Result<(), SessionError> {
        let device = job_device(self.repo, job).await?;
        // Only the card this job was writing may be reset: its CHUID must carry the job's card
        // UUID, or be absent or the factory template (a run cut short before the CHUID).
        let Some(guid) = device.card_guid else {
            // Nothing reached a card in this job: only the records need undoing.
            return self.finish_rollback(job, "no card was written; nothing to reset".into()).await;
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
        let mut note = format!("card reset to factory state in {round_trips} round trips");
        if let Some(fido) = self.fido_rollback(job).await? {
            note.push_str("; ");
            note.push_str(&fido);
        }
        self.finish_rollback(job, note).await
    }

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
        let answers = self.link.transmit("check_card", (0, 1), &check).await?;
        if !answers.first().is_some_and(|r| r.sw.is_success()) {
            return Err(SessionError::Engine("the card has no PIV application".into()));
        }
        let chuid = answers.get(1).filter(|r| r.sw.is_success()).map(|r| r.data.as_slice());
        Ok(ChuidIssuance::classify(chuid))
    }

    /// Unblocks the PIN: the agent sends RESET RETRY COUNTER with the stored PUK and the new PIN
    /// the holder types there.
    async fn unlock(&mut self, job: &mut Job) -> Result<(), SessionError> {
        let repo = self.repo;
        let device = job_device(self.repo, job).await?;
        let (_, policy) = holder(self.repo, &device).await?;
        let sealed = repo
            .read()
            .await?
            .get_card_secrets(device.id)
            .await?
            .ok_or_else(|| SessionError::Server("the card has no stored secrets".into()))?;
        self.check_card(&device).await?;
        let secrets = CardSecrets::open(&sealed, self.authority.kek, device.id)
            .map_err(|e| SessionError::Server(e.to_string()))?;
        let sw = match self.link.unblock_pin(secrets.puk(), &policy.pin).await? {
            PinAnswer::Sent { sw } => sw,
            PinAnswer::Skipped => {
                return Err(SessionError::AgentError("the holder did not set a new PIN".into()));
            }
        };
        if !sw.eq_ignore_ascii_case("9000") {
            return Err(SessionError::Engine(format!("the card refused RESET RETRY COUNTER (status {sw})")));
        }
        let now = self.clock.now();
        job.record("unblock_pin", StepOutcome::Done, None, now)
            .map_err(|e| SessionError::Server(e.to_string()))?;
        job.transition(JobState::Succeeded, now).map_err(|e| SessionError::Server(e.to_string()))?;
        System::new(self.op.clone(), now).save_job(repo, job).await?;
        self.link.done(device.id, device.state).await
    }

    /// Changes the PIN of an issued card from the holder's current PIN to a new one, both typed
    /// by the holder: the card must be the device's own, and its PIN not blocked. The outcome
    /// is recorded as a step the job's page names: `change_pin` done; or, when the card refused
    /// the current PIN, `pin_wrong` (tries left) or `pin_blocked`, the job then Failed with
    /// nothing changed but the card's retry counter. Neither PIN is recorded anywhere.
    async fn change_pin(&mut self, job: &mut Job) -> Result<(), SessionError> {
        let device = job_device(self.repo, job).await?;
        let (_, policy) = holder(self.repo, &device).await?;
        if device.state != DeviceState::Active {
            return Err(SessionError::Server(format!(
                "device {} is {}; only an active card's PIN is changed",
                device.id, device.state
            )));
        }
        self.check_card(&device).await?;
        let before = self.pin_tries().await?;
        let now = self.clock.now();
        let system = System::new(self.op.clone(), now);
        let note = match before {
            PinTries::Left(n) => format!("{n} PIN tries left"),
            PinTries::Verified => "the PIN was verified already".to_owned(),
            PinTries::Blocked => {
                return self.pin_refused(job, STEP_PIN_BLOCKED, PIN_BLOCKED.to_owned()).await;
            }
        };
        job.record("check_card", StepOutcome::Done, Some(note), now)
            .map_err(|e| SessionError::Server(e.to_string()))?;
        system.save_job(self.repo, job).await?;
        let refused = match self.link.change_holder_pin(&policy.pin).await {
            Ok(PinAnswer::Sent { sw }) if sw.eq_ignore_ascii_case("9000") => None,
            Ok(PinAnswer::Sent { sw }) => {
                Some(SessionError::Engine(format!("the card refused CHANGE REFERENCE DATA (status {sw})")))
            }
            Ok(PinAnswer::Skipped) => {
                return Err(SessionError::AgentError(
                    "no PIN was given (cancelled, or the time ran out); nothing changed".into(),
                ));
            }
            // The agent reports a card's refusal as an error; the card's counter tells why.
            Err(SessionError::AgentError(message)) => Some(SessionError::AgentError(message)),
            Err(e) => return Err(e),
        };
        if let Some(error) = refused {
            return match (before, self.pin_tries().await?) {
                (_, PinTries::Blocked) => {
                    let why = format!("the current PIN is wrong, and that was the last try: {PIN_BLOCKED}");
                    self.pin_refused(job, STEP_PIN_BLOCKED, why).await
                }
                // A card that had the PIN verified (from an earlier session on the same power-up)
                // shows no counter before; a refused current PIN drops the verification, and
                // the counter then shows.
                (PinTries::Verified, PinTries::Left(n)) | (PinTries::Left(_), PinTries::Left(n))
                    if before.fewer_than(n) =>
                {
                    let why = format!(
                        "the current PIN is wrong: {n} {} left",
                        if n == 1 { "try" } else { "tries" }
                    );
                    self.pin_refused(job, STEP_PIN_WRONG, why).await
                }
                _ => Err(error),
            };
        }
        let now = self.clock.now();
        job.record("change_pin", StepOutcome::Done, None, now)
            .map_err(|e| SessionError::Server(e.to_string()))?;
        job.transition(JobState::Succeeded, now).map_err(|e| SessionError::Server(e.to_string()))?;
        System::new(self.op.clone(), now).save_job(self.repo, job).await?;
        self.link.done(device.id, device.state).await
    }

    /// Records that the card refused the PIN (`step` names why for the job's page) and stops
    /// the session with `why`.
    pub(crate) async fn pin_refused(
        &mut self,
        job: &mut Job,
        step: &str,
        why: String,
    ) -> Result<(), SessionError> {
        let now = self.clock.now();
        job.record(step, StepOutcome::Failed, Some(why.clone()), now)
            .map_err(|e| SessionError::Server(e.to_string()))?;
        System::new(self.op.clone(), now).save_job(self.repo, job).await?;
        Err(SessionError::Engine(why))
    }

    /// The card's PIN retry counter (VERIFY without data).
    pub(crate) async fn pin_tries(&mut self) -> Result<PinTries, SessionError> {
        let answers =
            self.link.transmit("pin_status", (0, 1), &[lanyard_piv::commands::pin_status()]).await?;
        let sw = answers
            .first()
            .map(|r| r.sw)
            .ok_or_else(|| SessionError::Protocol("no answer to the PIN status query".into()))?;
        match sw {
            StatusWord::WrongPin { retries: 0 } | StatusWord::AuthenticationBlocked => Ok(PinTries::Blocked),
            StatusWord::WrongPin { retries } => Ok(PinTries::Left(retries)),
            s if s.is_success() => Ok(PinTries::Verified),
            other => Err(SessionError::Engine(format!("the card did not tell its PIN status ({other})"))),
        }
    }

    /// Resets a retired card (after checking it is the device's own) and returns the device to
    /// stock.
    async fn wipe(&mut self, job: &mut Job) -> Result<(), SessionError> {
        let device = job_device(self.repo, job).await?;
        self.check_card(&device).await?;
        let round_trips = self.reset_card().await?;
        let now = self.clock.now();
        let system = System::new(self.op.clone(), now);
        let device = system.recycle_wiped(self.repo, device.id).await?;
        let note = Some(format!("card reset to factory state in {round_trips} round trips"));
        job.record("wipe", StepOutcome::Done, note, now).map_err(|e| SessionError::Server(e.to_string()))?;
        job.transition(JobState::Succeeded, now).map_err(|e| SessionError::Server(e.to_string()))?;
        system.save_job(self.repo, job).await?;
        self.link.done(device.id, device.state).await
    }

    /// Runs the rollback engine (block PIN and PUK, RESET) to the end; the round trips it took.
    async fn reset_card(&mut self) -> Result<u32, SessionError> {
        let mut rollback = Rollback::new(factory_keys());
        let mut input = Input::Start;
        loop {
            match rollback.next(input) {
                RollbackStep::Transmit(commands) => {
                    input = Input::Responses(self.link.transmit("reset", (0, 1), &commands).await?);
                }
                RollbackStep::Done { round_trips } => return Ok(round_trips),
                RollbackStep::Failed(e) => return Err(SessionError::Engine(e.to_string())),
            }
        }
    }

    /// The device fails (its certificates are revoked by the lifecycle cascade) and the job ends
    /// RolledBack.
    async fn finish_rollback(&mut self, job: &mut Job, note: String) -> Result<(), SessionError> {
        let now = self.clock.now();
        let system = System::new(self.op.clone(), now);
        let device = system.device_action(self.repo, job.device, DeviceAction::IssuanceFailed).await?;
        job.record("rollback", StepOutcome::Done, Some(note), now)
            .map_err(|e| SessionError::Server(e.to_string()))?;
        job.transition(JobState::Failed, now).map_err(|e| SessionError::Server(e.to_string()))?;
        job.transition(JobState::RolledBack, now).map_err(|e| SessionError::Server(e.to_string()))?;
        system.save_job(self.repo, job).await?;
        self.link.done(device.id, device.state).await
    }

    /// Signs the certificates for the keys the card generated, through the issuance rules (the
    /// card session is one [`Channel`] among the enrolment paths). CPU work only: nothing is
    /// recorded here.
    fn issue_certificates(
        &self,
        device: &Device,
        holder: &User,
        policy: &Policy,
        keys: &[GeneratedKey],
    ) -> Result<Issued, SessionError> {
        let now = self.clock.now();
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
                    attestation_roots: self.authority.attestation_roots,
                },
                now,
            };
            let signed = crate::plan(&enrolment)
                .and_then(|plan| crate::sign(self.authority.issuing, &plan))
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

    fn sign_chuid(&self, content: &[u8]) -> Result<Vec<u8>, SessionError> {
        lanyard_ca::cms::sign_chuid(self.authority.content_signer, content)
            .map_err(|e| SessionError::Server(format!("signing the CHUID: {e}")))
    }
}

/// The step a *Change PIN* job fails with when the current PIN was wrong (its detail says how
/// many tries are left).
pub const STEP_PIN_WRONG: &str = "pin_wrong";
/// The step a *Change PIN* job fails with when the card's PIN is blocked.
pub const STEP_PIN_BLOCKED: &str = "pin_blocked";
const PIN_BLOCKED: &str = "the PIN is blocked; unlock it with a new PIN (Unlock PIN)";

/// What the card says of its PIN retry counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PinTries {
    Left(u8),
    /// Verified already (no counter shown).
    Verified,
    Blocked,
}

impl PinTries {
    /// Whether `n` tries left afterwards means a try was used since `self` (a verified PIN
    /// shows no counter, so any counter afterwards does).
    fn fewer_than(self, n: u8) -> bool {
        match self {
            PinTries::Left(was) => n < was,
            PinTries::Verified => true,
            PinTries::Blocked => false,
        }
    }
}

/// The device's holder and the policy of the holder's group.
async fn holder<R: Repo>(repo: &R, device: &Device) -> Result<(User, Policy), SessionError> {
    let owner = device.owner.ok_or_else(|| SessionError::Server("the device has no holder".into()))?;
    let mut tx = repo.read().await?;
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
pub(crate) async fn job_device<R: Repo>(repo: &R, job: &Job) -> Result<Device, SessionError> {
    let mut tx = repo.read().await?;
    tx.get_device(job.device).await?.ok_or_else(|| SessionError::Server("the job's device is gone".into()))
}

fn save_checkpoint(job: &mut Job, engine: &Engine, now: OffsetDateTime) -> Result<(), SessionError> {
    let mut value =
        serde_json::to_value(engine.checkpoint()).map_err(|e| SessionError::Server(e.to_string()))?;
    // The FIDO phase's checkpoint rides along (member `fido`, [`crate::fido`]).
    if let (Some(fido), Some(map)) =
        (job.checkpoint.as_ref().and_then(|c| c.get("fido")).cloned(), value.as_object_mut())
    {
        map.insert("fido".into(), fido);
    }
    job.checkpoint = Some(value);
    job.updated_at = now;
    Ok(())
}

/// The factory management keys the engine may find on a fresh card (3DES before YubiKey 5.7,
/// AES-192 after).
fn factory_keys() -> Vec<ManagementKey> {
    vec![ManagementKey::factory(MgmAlgorithm::TripleDes), ManagementKey::factory(MgmAlgorithm::Aes192)]
}

/// The card slots the policy asks for, their algorithms and the card's identifiers.
fn card_plan(
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
        fasc_n: crate::fasc_n(device.id).map_err(|e| SessionError::Server(e.to_string()))?,
        guid,
        expiration: crate::chuid_expiration(expires),
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
