//! The FIDO phase of a card session (DESIGN flow B): after the PIV steps, the key's FIDO PIN
//! is set by the group policy's mode ([`lanyard_personalize::fido`]), through the agent's CTAP
//! relay ([`AgentLink::ctap_batch`]). Its checkpoint lives beside the PIV engine's in the job's
//! checkpoint (member `fido`); every step is audited (`device.fido_pin`) without a PIN.

use lanyard_core::authz::System;
use lanyard_core::model::{FidoPinMode, FidoPinRules, Job, Policy, StepOutcome};
use lanyard_core::repo::Repo;
use lanyard_core::secrets::CardSecrets;
use lanyard_ctap::client;
use lanyard_personalize::fido::{
    ChangeStep, FidoChangePin, FidoCheckpoint, FidoEngine, FidoError, FidoInput, FidoMode, FidoOutcome,
    FidoPlan, FidoStep, STEP_FIDO_CHANGE_PIN, STEP_FIDO_DETECT,
};
use secrecy::SecretString;
use serde_json::json;

use crate::session::{AgentLink, CardSession, SessionError};

pub use lanyard_core::authz::{STEP_FIDO_PIN_PRESENT, STEP_FIDO_RESET_CONSENTED};
/// The job step that records the FIDO phase's result.
pub const STEP_FIDO: &str = "fido";

/// The FIDO checkpoint stored in `job.checkpoint["fido"]`.
pub fn fido_checkpoint(job: &Job) -> Option<FidoCheckpoint> {
    job.checkpoint.as_ref()?.get("fido").and_then(|v| serde_json::from_value(v.clone()).ok())
}

fn store_checkpoint(job: &mut Job, c: &FidoCheckpoint) -> Result<(), SessionError> {
    let value = serde_json::to_value(c).map_err(|e| SessionError::Server(e.to_string()))?;
    match job.checkpoint.as_mut().and_then(|v| v.as_object_mut()) {
        Some(map) => {
            map.insert("fido".into(), value);
        }
        None => job.checkpoint = Some(json!({ "fido": value })),
    }
    Ok(())
}

fn mode_of(mode: FidoPinMode) -> Option<FidoMode> {
    match mode {
        FidoPinMode::None => None,
        FidoPinMode::Independent => Some(FidoMode::Independent),
        FidoPinMode::Shared => Some(FidoMode::Shared),
        FidoPinMode::Temporary => Some(FidoMode::Temporary),
    }
}

/// The mode a job works in: the one its checkpoint recorded when the phase began (a policy
/// changed meanwhile does not switch modes halfway), else the policy's.
pub fn job_mode(job: &Job, policy: &Policy) -> Option<FidoMode> {
    fido_checkpoint(job).and_then(|c| c.mode).or_else(|| mode_of(policy.fido_pin_mode))
}

fn outcome_json(o: &FidoOutcome) -> serde_json::Value {
    json!({
        "mode": o.mode,
        "min_pin_length": o.min_pin_length,
        "pin_set": o.pin_set,
        "force_change": o.force_change,
        "reset": o.reset,
        "aaguid": o.aaguid.map(hex::encode),
        "skipped": o.skipped,
    })
}

impl<R: Repo, L: AgentLink> CardSession<'_, R, L> {
    /// Runs the FIDO phase for `job` to its end. `Ok(None)`: the policy sets no FIDO PIN.
    /// A key without a FIDO2 application, or an agent that relays no CTAP, is recorded and
    /// skipped. A key with a PIN Lanyard did not set stops the session (step
    /// [`STEP_FIDO_PIN_PRESENT`]) unless the holder agreed to erase it.
    pub(crate) async fn fido_phase(
        &mut self,
        job: &mut Job,
        policy: &Policy,
        secrets: &CardSecrets,
    ) -> Result<Option<FidoOutcome>, SessionError> {
        let Some(mode) = job_mode(job, policy) else { return Ok(None) };
        let now = self.clock.now();
        let system = System::new(self.op.clone(), now);
        let device = job.device;
        if !self.link.ctap_supported() {
            let note = "the agent does not relay CTAP (feature ctap), so the key's FIDO PIN was not set";
            return self.fido_skipped(job, mode, note.to_owned()).await;
        }
        let server_pin = match mode {
            FidoMode::Independent => None,
            FidoMode::Shared | FidoMode::Temporary => Some(secrets.fido_pin().cloned().ok_or_else(|| {
                SessionError::Server(
                    "the card secrets hold no FIDO PIN (the policy's FIDO mode changed during issuance); roll back and issue again"
                        .into(),
                )
            })?),
        };
        let plan = FidoPlan {
            mode,
            min_pin_length: policy.fido_min_pin_length,
            server_pin,
            reset_consented: job.steps.iter().any(|s| s.name == STEP_FIDO_RESET_CONSENTED),
        };
        let mut engine = match fido_checkpoint(job) {
            Some(c) => FidoEngine::resume(plan, &c),
            None => FidoEngine::new(plan),
        };
        let mut input = FidoInput::Start;
        let outcome = loop {
            let step = engine.next(input);
            let (done, total, name) = engine.progress();
            input = match step {
                FidoStep::Transmit(batch) => match self.link.ctap_batch(name, (done, total), &batch).await {
                    Ok(answers) => FidoInput::Responses(answers),
                    // No FIDO authenticator reachable before anything was changed: skipped.
                    Err(SessionError::AgentError(message)) if name == STEP_FIDO_DETECT => {
                        return self
                            .fido_skipped(job, mode, format!("no FIDO2 application answered: {message}"))
                            .await;
                    }
                    Err(e) => return Err(e),
                },
                FidoStep::HolderPin { min_length } => {
                    let rules =
                        FidoPinRules { min_len: min_length, forbid_trivial: policy.pin.forbid_trivial };
                    match self.link.holder_fido_pin(&rules).await? {
                        Some(pin) => FidoInput::HolderPin(pin),
                        None => {
                            return Err(SessionError::AgentError(
                                "no FIDO PIN was chosen in the portal (cancelled, or the time ran out); resume the issuance to choose one"
                                    .into(),
                            ));
                        }
                    }
                }
                FidoStep::Done(outcome) => break outcome,
                FidoStep::Failed(FidoError::PinAlreadySet) => {
                    store_checkpoint(job, &engine.checkpoint())?;
                    let why = FidoError::PinAlreadySet.to_string();
                    job.record(
                        STEP_FIDO_PIN_PRESENT,
                        StepOutcome::Failed,
                        Some(why.clone()),
                        self.clock.now(),
                    )
                    .map_err(|e| SessionError::Server(e.to_string()))?;
                    system.save_job(self.repo, job).await?;
                    system
                        .audit_fido(
                            self.repo,
                            device,
                            STEP_FIDO_PIN_PRESENT,
                            json!({"mode": mode, "reset": false}),
                        )
                        .await?;
                    return Err(SessionError::Engine(why));
                }
                FidoStep::Failed(e) => {
                    store_checkpoint(job, &engine.checkpoint())?;
                    return Err(SessionError::Engine(format!("FIDO: {e}")));
                }
            };
            store_checkpoint(job, &engine.checkpoint())?;
            job.updated_at = self.clock.now();
            system.save_job(self.repo, job).await?;
        };
        store_checkpoint(job, &engine.checkpoint())?;
        let note = match &outcome.skipped {
            Some(why) => format!("FIDO PIN not set: {why}"),
            None => format!(
                "FIDO PIN set ({}), minimum length {}{}{}",
                match mode {
                    FidoMode::Independent => "chosen by the holder",
                    FidoMode::Shared => "temporary until Change PIN",
                    FidoMode::Temporary => "random",
                },
                outcome.min_pin_length,
                if outcome.force_change { ", change forced" } else { "" },
                if outcome.reset { ", after a reset the holder agreed to" } else { "" },
            ),
        };
        let now = self.clock.now();
        job.record(STEP_FIDO, StepOutcome::Done, Some(note), now)
            .map_err(|e| SessionError::Server(e.to_string()))?;
        system.save_job(self.repo, job).await?;
        system.audit_fido(self.repo, device, STEP_FIDO, outcome_json(&outcome)).await?;
        Ok(Some(outcome))
    }

    async fn fido_skipped(
        &mut self,
        job: &mut Job,
        mode: FidoMode,
        note: String,
    ) -> Result<Option<FidoOutcome>, SessionError> {
        let now = self.clock.now();
        let system = System::new(self.op.clone(), now);
        job.record(STEP_FIDO, StepOutcome::Done, Some(note.clone()), now)
            .map_err(|e| SessionError::Server(e.to_string()))?;
        system.save_job(self.repo, job).await?;
        system.audit_fido(self.repo, job.device, STEP_FIDO, json!({"mode": mode, "skipped": note})).await?;
        Ok(Some(FidoOutcome {
            skipped: Some(note),
            mode,
            min_pin_length: 4,
            pin_set: false,
            force_change: false,
            reset: false,
            aaguid: None,
            round_trips: 0,
        }))
    }

    /// `shared` mode's Change PIN: the temporary FIDO PIN becomes `new_pin`, the device PIN the
    /// holder just set on the PIV application. Audited as `fido_change_pin` without either PIN.
    pub(crate) async fn fido_shared_change(
        &mut self,
        job: &Job,
        temporary: &SecretString,
        new_pin: SecretString,
    ) -> Result<(), SessionError> {
        let mut change = FidoChangePin::new(temporary.clone(), new_pin);
        let mut input = FidoInput::Start;
        let result = loop {
            input = match change.next(input) {
                ChangeStep::Transmit(batch) => {
                    FidoInput::Responses(self.link.ctap_batch(STEP_FIDO_CHANGE_PIN, (0, 1), &batch).await?)
                }
                ChangeStep::Done => break Ok(()),
                ChangeStep::Failed(e) => break Err(SessionError::Engine(format!("FIDO: {e}"))),
            };
        };
        drop(change);
        let system = System::new(self.op.clone(), self.clock.now());
        let after = json!({"mode": FidoMode::Shared, "pin_changed": result.is_ok()});
        system.audit_fido(self.repo, job.device, STEP_FIDO_CHANGE_PIN, after).await?;
        result
    }

    /// Rollback: resets the key's FIDO application when this job changed it. The note for the
    /// job's rollback step, or `None` when there was nothing to undo.
    pub(crate) async fn fido_rollback(&mut self, job: &Job) -> Result<Option<String>, SessionError> {
        let Some(c) = fido_checkpoint(job) else { return Ok(None) };
        if !c.touched_key() {
            return Ok(None);
        }
        if !self.link.ctap_supported() {
            return Err(SessionError::AgentError(
                "this job set the key's FIDO PIN, and the agent does not relay CTAP to reset it; update the agent"
                    .into(),
            ));
        }
        let answers =
            self.link.ctap_batch("fido_reset", (0, 1), &[client::reset(), client::get_info()]).await?;
        let first = answers.first().map_or(&[][..], Vec::as_slice);
        client::parse_empty(client::names::RESET, first)
            .map_err(|e| SessionError::Engine(format!("FIDO rollback: {e}")))?;
        let info = client::parse_get_info(answers.get(1).map_or(&[][..], Vec::as_slice))
            .map_err(|e| SessionError::Engine(format!("FIDO rollback: {e}")))?;
        if info.pin_state() == client::PinState::Set {
            return Err(SessionError::Engine(
                "FIDO rollback: the key still has a PIN after authenticatorReset".into(),
            ));
        }
        let system = System::new(self.op.clone(), self.clock.now());
        system.audit_fido(self.repo, job.device, "fido_rollback", json!({"reset": true})).await?;
        Ok(Some("the key's FIDO application was reset".into()))
    }
}
