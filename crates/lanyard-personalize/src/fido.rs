//! The FIDO phase of issuance: a sans-IO state machine that sets a security key's FIDO PIN by
//! the group policy's mode, after the PIV steps, through CTAP 2.1 commands
//! ([`lanyard_ctap::client`]).
//!
//! The server runs it like the PIV [`crate::Engine`]: each [`FidoStep::Transmit`] is a batch of
//! CTAP requests (`command ‖ CBOR`) the agent sends to the key's FIDO application in order,
//! stopping at the first answer whose status byte is not zero; the answers (`status ‖ CBOR`) come
//! back as [`FidoInput::Responses`]. The engine never sees the network, the clock or the database,
//! and its [`FidoCheckpoint`] holds no secret.
//!
//! | step | requests | when |
//! |---|---|---|
//! | `fido_detect` | getInfo | always; a key without a FIDO2 application or without PIN support ends the phase with nothing done |
//! | `fido_reset` | Reset, getInfo | the key has a PIN Lanyard did not set: only with the holder's consent, else the phase stops ([`FidoError::PinAlreadySet`]) |
//! | `fido_min_length` | authenticatorConfig setMinPINLength, without auth (no PIN yet) | the policy's minimum is above the key's |
//! | (holder's PIN) | none: [`FidoStep::HolderPin`] | `independent` |
//! | `fido_set_pin` | getKeyAgreement, then setPIN | always |
//! | `fido_force_change` | getKeyAgreement, getPinUvAuthTokenUsingPinWithPermissions (`acfg`), then setMinPINLength with forceChangePin and getInfo to see it took | `temporary` |
//!
//! In `shared` mode the Change PIN step later turns the temporary PIN into the holder's device PIN
//! with [`FidoChangePin`]. Rollback of a key whose FIDO PIN this job set is authenticatorReset
//! ([`lanyard_ctap::client::reset`]).

use std::collections::BTreeSet;
use std::fmt;

use lanyard_ctap::client::{self, ClientError, ConfigAuth, Info, PinState, names};
use lanyard_ctap::pin_protocol::{KeyPair, PinProtocol, SharedSecret};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub const STEP_FIDO_DETECT: &str = "fido_detect";
pub const STEP_FIDO_RESET: &str = "fido_reset";
pub const STEP_FIDO_MIN_LENGTH: &str = "fido_min_length";
pub const STEP_FIDO_SET_PIN: &str = "fido_set_pin";
pub const STEP_FIDO_FORCE_CHANGE: &str = "fido_force_change";

const ALL_STEPS: &[&str] =
    &[STEP_FIDO_DETECT, STEP_FIDO_RESET, STEP_FIDO_MIN_LENGTH, STEP_FIDO_SET_PIN, STEP_FIDO_FORCE_CHANGE];

/// How the phase sets the FIDO PIN (the policy's `fido_pin_mode`, less `none`, which skips the
/// phase).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FidoMode {
    Independent,
    Shared,
    Temporary,
}

/// What the server decided for the key's FIDO application.
pub struct FidoPlan {
    pub mode: FidoMode,
    /// The policy's minimum FIDO PIN length, 4..=63.
    pub min_pin_length: u8,
    /// `shared` and `temporary`: the random PIN Lanyard sets (sealed with the card secrets).
    /// `independent`: `None`; the holder's PIN comes as [`FidoInput::HolderPin`].
    pub server_pin: Option<SecretString>,
    /// The holder agreed in the portal that a FIDO PIN already on the key, and every passkey
    /// with it, be erased.
    pub reset_consented: bool,
}

impl fmt::Debug for FidoPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FidoPlan")
            .field("mode", &self.mode)
            .field("min_pin_length", &self.min_pin_length)
            .field("server_pin", &self.server_pin.as_ref().map(|_| "[REDACTED]"))
            .field("reset_consented", &self.reset_consented)
            .finish()
    }
}

/// What the FIDO phase wants next.
pub enum FidoStep {
    /// Send these CTAP requests in order to the key's FIDO application, stop at the first answer
    /// with a non-zero status, answer with [`FidoInput::Responses`].
    Transmit(Vec<Vec<u8>>),
    /// `independent`: ask the holder (in the portal) for their FIDO PIN, at least `min_length`
    /// characters; answer with [`FidoInput::HolderPin`].
    HolderPin {
        min_length: u8,
    },
    Done(FidoOutcome),
    Failed(FidoError),
}

impl fmt::Debug for FidoStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The first byte names the command; the rest may carry an encrypted PIN.
            FidoStep::Transmit(r) => f
                .debug_tuple("Transmit")
                .field(
                    &r.iter()
                        .map(|r| format!("{:02X}+{}", r.first().copied().unwrap_or(0), r.len()))
                        .collect::<Vec<_>>(),
                )
                .finish(),
            FidoStep::HolderPin { min_length } => {
                f.debug_struct("HolderPin").field("min_length", min_length).finish()
            }
            FidoStep::Done(o) => f.debug_tuple("Done").field(o).finish(),
            FidoStep::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

/// What the caller feeds the phase.
pub enum FidoInput {
    Start,
    Responses(Vec<Vec<u8>>),
    HolderPin(SecretString),
}

impl FidoInput {
    fn name(&self) -> &'static str {
        match self {
            FidoInput::Start => "Start",
            FidoInput::Responses(_) => "Responses",
            FidoInput::HolderPin(_) => "HolderPin",
        }
    }
}

/// What the phase did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FidoOutcome {
    /// Why nothing was done (no FIDO2 application, no PIN support), or `None`.
    pub skipped: Option<String>,
    pub mode: FidoMode,
    /// The key's minimum PIN length afterwards.
    pub min_pin_length: u64,
    pub pin_set: bool,
    pub force_change: bool,
    /// The key was reset (a PIN Lanyard had not set was erased).
    pub reset: bool,
    pub aaguid: Option<[u8; 16]>,
    pub round_trips: u32,
}

/// Why the phase stopped. The step is a stable step name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FidoError {
    /// The key has a FIDO PIN this issuance did not set, and the holder has not agreed to erase
    /// it: the portal asks, and a resumed job resets the key.
    #[error(
        "the key already has a FIDO PIN; resetting its FIDO application erases that PIN and every passkey on it, which needs the holder's consent in the portal"
    )]
    PinAlreadySet,
    #[error("unsupported key at {step}: {reason}")]
    Unsupported { step: &'static str, reason: String },
    #[error("{step}: {error}")]
    Key { step: &'static str, error: String, status: Option<u8> },
    #[error("the relay returned {got} answer(s) to a batch of {sent}")]
    ResponseCount { sent: usize, got: usize },
    #[error("expected {expected}, got {got}")]
    UnexpectedInput { expected: &'static str, got: &'static str },
    #[error("invalid FIDO plan: {0}")]
    InvalidPlan(String),
}

impl FidoError {
    fn key(step: &'static str, e: ClientError) -> Self {
        FidoError::Key { step, status: e.status(), error: e.to_string() }
    }

    /// The CTAP status the key refused with, if that is why.
    pub fn status(&self) -> Option<u8> {
        match self {
            FidoError::Key { status, .. } => *status,
            _ => None,
        }
    }
}

/// Progress of the phase, safe to store: step names, whether the key was blank when the phase
/// first saw it, the mode the phase started with; no PIN, no token.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FidoCheckpoint {
    pub completed: Vec<String>,
    /// Whether the key had no FIDO PIN when this job first looked (so a PIN found there on
    /// resume can only be this job's).
    pub blank_at_start: Option<bool>,
    pub mode: Option<FidoMode>,
    pub round_trips: u32,
}

impl FidoCheckpoint {
    /// Whether this job changed the key's FIDO application (set a PIN or reset it), so that
    /// rolling back must reset it.
    pub fn touched_key(&self) -> bool {
        self.completed
            .iter()
            .any(|s| s == STEP_FIDO_SET_PIN || s == STEP_FIDO_RESET || s == STEP_FIDO_MIN_LENGTH)
    }

    pub fn is_done(&self, step: &str) -> bool {
        self.completed.iter().any(|s| s == step)
    }
}

enum State {
    Start,
    Detect,
    Reset,
    MinLength,
    AwaitHolderPin,
    KeyAgreement,
    SetPin,
    TokenKeyAgreement,
    Token(SharedSecret),
    ForceChange,
    Done(FidoOutcome),
    Failed(FidoError),
}

/// The FIDO phase; see the module documentation.
pub struct FidoEngine {
    plan: FidoPlan,
    state: State,
    done: BTreeSet<&'static str>,
    resumed: bool,
    blank_at_start: Option<bool>,
    info: Option<Info>,
    protocol: PinProtocol,
    holder_pin: Option<SecretString>,
    pending: usize,
    round_trips: u32,
    prior_round_trips: u32,
    reset: bool,
}

impl fmt::Debug for FidoEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FidoEngine")
            .field("plan", &self.plan)
            .field("completed", &self.done)
            .field("round_trips", &self.round_trips)
            .finish_non_exhaustive()
    }
}

impl FidoEngine {
    pub fn new(plan: FidoPlan) -> Self {
        Self {
            plan,
            state: State::Start,
            done: BTreeSet::new(),
            resumed: false,
            blank_at_start: None,
            info: None,
            protocol: PinProtocol::One,
            holder_pin: None,
            pending: 0,
            round_trips: 0,
            prior_round_trips: 0,
            reset: false,
        }
    }

    /// Continues after a crash or a pulled key: what the checkpoint records is not done again. A
    /// PIN found on the key that the checkpoint does not record is this job's own only when the
    /// key was blank at the start; then it is reset without asking (nothing of the holder's was
    /// on it), otherwise the holder's consent is needed as on a first run.
    pub fn resume(plan: FidoPlan, checkpoint: &FidoCheckpoint) -> Self {
        let mut engine = Self::new(plan);
        engine.resumed = true;
        engine.blank_at_start = checkpoint.blank_at_start;
        engine.prior_round_trips = checkpoint.round_trips;
        for name in &checkpoint.completed {
            if let Some(s) = ALL_STEPS.iter().copied().find(|s| s == name)
                && s != STEP_FIDO_DETECT
            {
                engine.done.insert(s);
            }
        }
        engine
    }

    pub fn checkpoint(&self) -> FidoCheckpoint {
        FidoCheckpoint {
            completed: ALL_STEPS.iter().filter(|s| self.done.contains(*s)).map(|s| (*s).to_owned()).collect(),
            blank_at_start: self.blank_at_start,
            mode: Some(self.plan.mode),
            round_trips: self.prior_round_trips + self.round_trips,
        }
    }

    /// The steps of this plan, done or not, and the first one not done.
    pub fn progress(&self) -> (usize, usize, &'static str) {
        let mut names = vec![STEP_FIDO_DETECT, STEP_FIDO_MIN_LENGTH, STEP_FIDO_SET_PIN];
        if self.plan.mode == FidoMode::Temporary {
            names.push(STEP_FIDO_FORCE_CHANGE);
        }
        let done = names.iter().filter(|n| self.done.contains(*n)).count();
        let current = names.iter().copied().find(|n| !self.done.contains(n)).unwrap_or(crate::STEP_DONE);
        (done, names.len(), current)
    }

    /// Advances the machine. A failure is final: later calls return it again.
    pub fn next(&mut self, input: FidoInput) -> FidoStep {
        match &self.state {
            State::Failed(e) => return FidoStep::Failed(e.clone()),
            State::Done(o) => return FidoStep::Done(o.clone()),
            _ => {}
        }
        match self.advance(input) {
            Ok(step) => {
                match &step {
                    FidoStep::Transmit(r) => {
                        self.round_trips += 1;
                        self.pending = r.len();
                    }
                    FidoStep::Done(o) => self.state = State::Done(o.clone()),
                    _ => {}
                }
                step
            }
            Err(e) => {
                self.state = State::Failed(e.clone());
                FidoStep::Failed(e)
            }
        }
    }

    /// The answers of a batch: as many as requests, or fewer when the last one is a refusal.
    fn answers(&self, responses: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, FidoError> {
        let (sent, got) = (self.pending, responses.len());
        let refused = |r: &Vec<u8>| r.first().is_none_or(|s| *s != 0);
        let stopped_early = responses.last().is_some_and(refused);
        if got > sent || got == 0 && sent > 0 || got < sent && !stopped_early {
            return Err(FidoError::ResponseCount { sent, got });
        }
        if responses.iter().rev().skip(1).any(refused) {
            return Err(FidoError::ResponseCount { sent, got });
        }
        Ok(responses)
    }

    fn outcome(&self, skipped: Option<String>) -> FidoOutcome {
        FidoOutcome {
            skipped,
            mode: self.plan.mode,
            min_pin_length: self.info.as_ref().map_or(4, |i| i.min_pin_length),
            pin_set: self.done.contains(STEP_FIDO_SET_PIN),
            force_change: self.done.contains(STEP_FIDO_FORCE_CHANGE),
            reset: self.reset,
            aaguid: self.info.as_ref().map(|i| i.aaguid),
            round_trips: self.round_trips,
        }
    }

    fn validate(&self) -> Result<(), FidoError> {
        let bad = |m: &str| Err(FidoError::InvalidPlan(m.to_owned()));
        if !(4..=63).contains(&self.plan.min_pin_length) {
            return bad("the minimum PIN length must be 4 to 63");
        }
        match (self.plan.mode, &self.plan.server_pin) {
            (FidoMode::Independent, Some(_)) => {
                bad("independent mode takes the holder's PIN, not one of Lanyard's")
            }
            (FidoMode::Shared | FidoMode::Temporary, None) => {
                bad("shared and temporary modes need Lanyard's random PIN")
            }
            (_, Some(pin)) if pin.expose_secret().chars().count() < usize::from(self.plan.min_pin_length) => {
                bad("Lanyard's random PIN is shorter than the minimum")
            }
            _ => Ok(()),
        }
    }

    fn advance(&mut self, input: FidoInput) -> Result<FidoStep, FidoError> {
        let state = std::mem::replace(&mut self.state, State::Start);
        match (state, input) {
            (State::Start, FidoInput::Start) => {
                self.validate()?;
                self.state = State::Detect;
                Ok(FidoStep::Transmit(vec![client::get_info()]))
            }
            (State::Detect, FidoInput::Responses(r)) => {
                let r = self.answers(r)?;
                let Some(answer) = r.first() else {
                    return Err(FidoError::ResponseCount { sent: 1, got: 0 });
                };
                let info = match client::parse_get_info(answer) {
                    Ok(info) => info,
                    Err(e) => {
                        return Ok(FidoStep::Done(
                            self.outcome(Some(format!("the key has no usable FIDO2 application ({e})"))),
                        ));
                    }
                };
                self.on_info(info)
            }
            (State::Reset, FidoInput::Responses(r)) => {
                let r = self.answers(r)?;
                client::parse_empty(names::RESET, r.first().map_or(&[][..], Vec::as_slice))
                    .map_err(|e| FidoError::key(STEP_FIDO_RESET, e))?;
                self.done.insert(STEP_FIDO_RESET);
                self.reset = true;
                let info = client::parse_get_info(r.get(1).map_or(&[][..], Vec::as_slice))
                    .map_err(|e| FidoError::key(STEP_FIDO_RESET, e))?;
                if info.pin_state() != PinState::NotSet {
                    return Err(FidoError::Key {
                        step: STEP_FIDO_RESET,
                        error: "the key still reports a PIN after authenticatorReset".into(),
                        status: None,
                    });
                }
                // Set PIN and minimum length are undone by the reset.
                self.done.remove(STEP_FIDO_SET_PIN);
                self.done.remove(STEP_FIDO_MIN_LENGTH);
                self.done.remove(STEP_FIDO_FORCE_CHANGE);
                self.info = Some(info);
                self.min_length()
            }
            (State::MinLength, FidoInput::Responses(r)) => {
                let r = self.answers(r)?;
                client::parse_empty(names::SET_MIN_PIN_LENGTH, r.first().map_or(&[][..], Vec::as_slice))
                    .map_err(|e| FidoError::key(STEP_FIDO_MIN_LENGTH, e))?;
                self.done.insert(STEP_FIDO_MIN_LENGTH);
                if let Some(info) = &mut self.info {
                    info.min_pin_length = u64::from(self.plan.min_pin_length);
                }
                self.before_set_pin()
            }
            (State::AwaitHolderPin, FidoInput::HolderPin(pin)) => {
                let p = pin.expose_secret();
                let min = self.effective_min();
                if (p.chars().count() as u64) < min || p.len() > 63 || p.contains('\0') {
                    return Err(FidoError::InvalidPlan(format!(
                        "the holder's FIDO PIN must have {min} to 63 characters"
                    )));
                }
                self.holder_pin = Some(pin);
                self.state = State::KeyAgreement;
                Ok(FidoStep::Transmit(vec![client::get_key_agreement(self.protocol)]))
            }
            (State::KeyAgreement, FidoInput::Responses(r)) => {
                let r = self.answers(r)?;
                let (platform, shared) = self.agree(STEP_FIDO_SET_PIN, r.first())?;
                let pin = self.pin_to_set()?;
                let set = client::set_pin(&platform, &shared, pin.expose_secret()).map_err(|e| {
                    FidoError::Key { step: STEP_FIDO_SET_PIN, error: e.to_string(), status: None }
                })?;
                let mut batch = vec![set];
                if self.plan.mode == FidoMode::Temporary {
                    batch.push(client::get_key_agreement(self.protocol));
                }
                self.state = State::SetPin;
                Ok(FidoStep::Transmit(batch))
            }
            (State::SetPin, FidoInput::Responses(r)) => {
                let r = self.answers(r)?;
                client::parse_empty(names::SET_PIN, r.first().map_or(&[][..], Vec::as_slice))
                    .map_err(|e| FidoError::key(STEP_FIDO_SET_PIN, e))?;
                self.done.insert(STEP_FIDO_SET_PIN);
                // The holder's PIN is no longer needed.
                self.holder_pin = None;
                if self.plan.mode != FidoMode::Temporary {
                    return Ok(FidoStep::Done(self.outcome(None)));
                }
                self.token(r.get(1))
            }
            (State::TokenKeyAgreement, FidoInput::Responses(r)) => {
                let r = self.answers(r)?;
                self.token(r.first())
            }
            (State::Token(shared), FidoInput::Responses(r)) => {
                let r = self.answers(r)?;
                let token = client::parse_pin_token(
                    names::GET_TOKEN_WITH_PERMISSIONS,
                    &shared,
                    r.first().map_or(&[][..], Vec::as_slice),
                )
                .map_err(|e| FidoError::key(STEP_FIDO_FORCE_CHANGE, e))?;
                let config = client::set_min_pin_length(
                    None,
                    true,
                    Some(ConfigAuth { protocol: shared.protocol(), token: &token }),
                );
                self.state = State::ForceChange;
                Ok(FidoStep::Transmit(vec![config, client::get_info()]))
            }
            (State::ForceChange, FidoInput::Responses(r)) => {
                let r = self.answers(r)?;
                client::parse_empty(names::SET_MIN_PIN_LENGTH, r.first().map_or(&[][..], Vec::as_slice))
                    .map_err(|e| FidoError::key(STEP_FIDO_FORCE_CHANGE, e))?;
                let info = client::parse_get_info(r.get(1).map_or(&[][..], Vec::as_slice))
                    .map_err(|e| FidoError::key(STEP_FIDO_FORCE_CHANGE, e))?;
                if !info.force_pin_change {
                    return Err(FidoError::Key {
                        step: STEP_FIDO_FORCE_CHANGE,
                        error: "the key accepted forceChangePin but does not report forcePINChange".into(),
                        status: None,
                    });
                }
                self.info = Some(info);
                self.done.insert(STEP_FIDO_FORCE_CHANGE);
                Ok(FidoStep::Done(self.outcome(None)))
            }
            (state, input) => {
                let expected = match state {
                    State::Start => "Start",
                    State::AwaitHolderPin => "HolderPin",
                    _ => "Responses",
                };
                let got = input.name();
                self.state = state;
                Err(FidoError::UnexpectedInput { expected, got })
            }
        }
    }

    fn effective_min(&self) -> u64 {
        let key = self.info.as_ref().map_or(4, |i| i.min_pin_length);
        key.max(u64::from(self.plan.min_pin_length))
    }

    fn pin_to_set(&self) -> Result<&SecretString, FidoError> {
        self.plan
            .server_pin
            .as_ref()
            .or(self.holder_pin.as_ref())
            .ok_or_else(|| FidoError::InvalidPlan("no PIN to set".into()))
    }

    fn agree(
        &self,
        step: &'static str,
        answer: Option<&Vec<u8>>,
    ) -> Result<(KeyPair, SharedSecret), FidoError> {
        let cose = client::parse_key_agreement(answer.map_or(&[][..], Vec::as_slice))
            .map_err(|e| FidoError::key(step, e))?;
        let platform = KeyPair::generate();
        let shared = platform.agree(self.protocol, &cose).map_err(|e| FidoError::Key {
            step,
            error: e.to_string(),
            status: None,
        })?;
        Ok((platform, shared))
    }

    fn on_info(&mut self, info: Info) -> Result<FidoStep, FidoError> {
        let step = STEP_FIDO_DETECT;
        match info.pin_state() {
            PinState::Unsupported => {
                self.info = Some(info);
                return Ok(FidoStep::Done(
                    self.outcome(Some("the key's FIDO2 application has no PIN".into())),
                ));
            }
            PinState::NotSet | PinState::Set => {}
        }
        self.protocol = info.pin_protocol().ok_or_else(|| FidoError::Unsupported {
            step,
            reason: format!(
                "the key offers PIN/UV auth protocols {:?}, none of them 1 or 2",
                info.pin_uv_auth_protocols
            ),
        })?;
        let needs_config = self.plan.mode == FidoMode::Temporary
            || u64::from(self.plan.min_pin_length) > info.min_pin_length;
        if needs_config && !info.can_set_min_pin_length() {
            return Err(FidoError::Unsupported {
                step,
                reason: "the key cannot set a minimum PIN length or force a PIN change (no setMinPINLength option; CTAP 2.1 is needed)".into(),
            });
        }
        let set = info.pin_state() == PinState::Set;
        if self.blank_at_start.is_none() {
            self.blank_at_start = Some(!set);
        }
        self.done.insert(STEP_FIDO_DETECT);
        self.info = Some(info);
        if set {
            if self.done.contains(STEP_FIDO_SET_PIN) {
                // This job's own PIN (resumed).
                return self.after_set_pin();
            }
            let ours = self.resumed && self.blank_at_start == Some(true);
            if !ours && !self.plan.reset_consented {
                return Err(FidoError::PinAlreadySet);
            }
            self.state = State::Reset;
            return Ok(FidoStep::Transmit(vec![client::reset(), client::get_info()]));
        }
        // No PIN: whatever the checkpoint says, the PIN must be set (again).
        self.done.remove(STEP_FIDO_SET_PIN);
        self.done.remove(STEP_FIDO_FORCE_CHANGE);
        self.min_length()
    }

    fn min_length(&mut self) -> Result<FidoStep, FidoError> {
        let key_min = self.info.as_ref().map_or(4, |i| i.min_pin_length);
        if u64::from(self.plan.min_pin_length) > key_min {
            self.state = State::MinLength;
            return Ok(FidoStep::Transmit(vec![client::set_min_pin_length(
                Some(self.plan.min_pin_length),
                false,
                None,
            )]));
        }
        self.done.insert(STEP_FIDO_MIN_LENGTH);
        self.before_set_pin()
    }

    fn before_set_pin(&mut self) -> Result<FidoStep, FidoError> {
        if let Some(pin) = &self.plan.server_pin
            && (pin.expose_secret().chars().count() as u64) < self.effective_min()
        {
            return Err(FidoError::Unsupported {
                step: STEP_FIDO_SET_PIN,
                reason: format!("the key asks for PINs of at least {} characters", self.effective_min()),
            });
        }
        if self.plan.server_pin.is_none() && self.holder_pin.is_none() {
            self.state = State::AwaitHolderPin;
            let min_length = u8::try_from(self.effective_min()).unwrap_or(63);
            return Ok(FidoStep::HolderPin { min_length });
        }
        self.state = State::KeyAgreement;
        Ok(FidoStep::Transmit(vec![client::get_key_agreement(self.protocol)]))
    }

    /// The PIN is on the key (set now or found set on resume): `temporary` goes on to force its
    /// change; the others are done.
    fn after_set_pin(&mut self) -> Result<FidoStep, FidoError> {
        if self.plan.mode != FidoMode::Temporary {
            return Ok(FidoStep::Done(self.outcome(None)));
        }
        if self.info.as_ref().is_some_and(|i| i.force_pin_change) {
            self.done.insert(STEP_FIDO_FORCE_CHANGE);
            return Ok(FidoStep::Done(self.outcome(None)));
        }
        self.state = State::TokenKeyAgreement;
        Ok(FidoStep::Transmit(vec![client::get_key_agreement(self.protocol)]))
    }

    /// getPinUvAuthTokenUsingPinWithPermissions (`acfg`) with the temporary PIN, over the key
    /// agreement key in `answer`.
    fn token(&mut self, answer: Option<&Vec<u8>>) -> Result<FidoStep, FidoError> {
        let (platform, shared) = self.agree(STEP_FIDO_FORCE_CHANGE, answer)?;
        let pin = self.pin_to_set()?;
        let request = client::get_pin_token_with_permissions(
            &platform,
            &shared,
            pin.expose_secret(),
            client::PERMISSION_CONFIG,
            None,
        )
        .map_err(|e| FidoError::Key {
            step: STEP_FIDO_FORCE_CHANGE,
            error: e.to_string(),
            status: None,
        })?;
        self.state = State::Token(shared);
        Ok(FidoStep::Transmit(vec![request]))
    }
}

// ---------------------------------------------------------------------------------------------
// Shared mode: the temporary PIN becomes the holder's device PIN
// ---------------------------------------------------------------------------------------------

enum ChangeState {
    Start,
    Info,
    KeyAgreement,
    Change,
    Done,
    Failed(FidoError),
}

pub const STEP_FIDO_CHANGE_PIN: &str = "fido_change_pin";

/// changePIN from Lanyard's temporary FIDO PIN to the device PIN the holder chose at Change PIN
/// (`shared` mode): getInfo (for the PIN protocol), getKeyAgreement, then changePIN. Both PINs
/// are wiped when it is dropped.
pub struct FidoChangePin {
    current: SecretString,
    new: SecretString,
    protocol: PinProtocol,
    state: ChangeState,
    pending: usize,
}

impl fmt::Debug for FidoChangePin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FidoChangePin").field("protocol", &self.protocol).finish_non_exhaustive()
    }
}

/// What [`FidoChangePin`] wants next.
#[derive(Debug)]
pub enum ChangeStep {
    Transmit(Vec<Vec<u8>>),
    Done,
    Failed(FidoError),
}

impl FidoChangePin {
    pub fn new(current: SecretString, new: SecretString) -> Self {
        Self { current, new, protocol: PinProtocol::One, state: ChangeState::Start, pending: 0 }
    }

    pub fn next(&mut self, input: FidoInput) -> ChangeStep {
        let step = STEP_FIDO_CHANGE_PIN;
        let state = std::mem::replace(&mut self.state, ChangeState::Start);
        let result = match (state, input) {
            (ChangeState::Failed(e), _) => Err(e),
            (ChangeState::Done, _) => Ok((ChangeState::Done, Vec::new())),
            (ChangeState::Start, FidoInput::Start) => Ok((ChangeState::Info, vec![client::get_info()])),
            (ChangeState::Info, FidoInput::Responses(r)) => self.count(&r).and_then(|()| {
                let info = client::parse_get_info(first(&r)).map_err(|e| FidoError::key(step, e))?;
                if info.pin_state() != PinState::Set {
                    return Err(FidoError::Key {
                        step,
                        error: "the key has no FIDO PIN to change".into(),
                        status: None,
                    });
                }
                self.protocol = info.pin_protocol().ok_or_else(|| FidoError::Unsupported {
                    step,
                    reason: "no PIN/UV auth protocol 1 or 2".into(),
                })?;
                Ok((ChangeState::KeyAgreement, vec![client::get_key_agreement(self.protocol)]))
            }),
            (ChangeState::KeyAgreement, FidoInput::Responses(r)) => self.count(&r).and_then(|()| {
                let cose = client::parse_key_agreement(first(&r)).map_err(|e| FidoError::key(step, e))?;
                let platform = KeyPair::generate();
                let shared = platform.agree(self.protocol, &cose).map_err(|e| FidoError::Key {
                    step,
                    error: e.to_string(),
                    status: None,
                })?;
                let request = client::change_pin(
                    &platform,
                    &shared,
                    self.current.expose_secret(),
                    self.new.expose_secret(),
                )
                .map_err(|e| FidoError::Key { step, error: e.to_string(), status: None })?;
                Ok((ChangeState::Change, vec![request]))
            }),
            (ChangeState::Change, FidoInput::Responses(r)) => self.count(&r).and_then(|()| {
                client::parse_empty(names::CHANGE_PIN, first(&r)).map_err(|e| FidoError::key(step, e))?;
                Ok((ChangeState::Done, Vec::new()))
            }),
            (_, input) => Err(FidoError::UnexpectedInput { expected: "Responses", got: input.name() }),
        };
        match result {
            Ok((state, batch)) if batch.is_empty() => {
                self.state = state;
                ChangeStep::Done
            }
            Ok((state, batch)) => {
                self.state = state;
                self.pending = batch.len();
                ChangeStep::Transmit(batch)
            }
            Err(e) => {
                self.state = ChangeState::Failed(e.clone());
                ChangeStep::Failed(e)
            }
        }
    }

    /// One answer per request of a one-request batch.
    fn count(&self, r: &[Vec<u8>]) -> Result<(), FidoError> {
        if r.len() != self.pending {
            return Err(FidoError::ResponseCount { sent: self.pending, got: r.len() });
        }
        Ok(())
    }
}

fn first(r: &[Vec<u8>]) -> &[u8] {
    r.first().map_or(&[][..], Vec::as_slice)
}

#[cfg(test)]
mod tests;
