//! The personalization engine: a sans-IO state machine that issues a PIV card (a YubiKey, for
//! now) by emitting batches of logical APDUs and consuming the card's responses.
//!
//! The server owns the engine; the agent is a relay that sends each [`Command`] of a
//! [`Step::Transmit`] batch with [`lanyard_piv::Piv::exchange`] (which does command and response
//! chaining), in order, stops at the first status word other than `9000`, and answers with the
//! responses it got. The engine never touches the card, the clock or the network, so a session
//! is testable against the software card and resumable after a crash.
//!
//! Issuance, in order (the names are the stable strings of [`Checkpoint::completed`]):
//!
//! | step | commands | batch |
//! |---|---|---|
//! | `detect` | SELECT, GET VERSION, GET SERIAL, GET METADATA 9B/80/81, GET DATA CHUID | 1 |
//! | `authenticate` | GENERAL AUTHENTICATE witness, then witness + challenge | 2, 3 |
//! | `rotate_management_key` | SET MANAGEMENT KEY (YubiKey) | 4 |
//! | `set_retries` | VERIFY default PIN, SET PIN RETRIES | 4 |
//! | `set_puk`, `set_pin` | CHANGE REFERENCE DATA from the factory values | 4 |
//! | `generate_9a` … | GENERATE per planned slot | 4 |
//! | `attest` | ATTEST per slot, GET DATA 5FFF01 (YubiKey 4.3+) | 4 |
//! | (discovery check) | GET DATA 7E | 4 |
//! | `issue_certificates` | none: [`Step::IssueCertificates`] | — |
//! | `sign_chuid` | none: [`Step::SignChuid`] | — |
//! | `write_certificates`, `write_chuid`, `write_ccc`, `write_discovery`, `write_key_history` | PUT DATA each | 5 |
//!
//! A YubiKey 5.3 or later with an unissued card takes five round trips; `docs/issuance.md`
//! explains the budget, resume and rollback.

pub mod fido;

use std::collections::BTreeSet;
use std::fmt;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use lanyard_piv::apdu::{Command, Response, StatusWord};
use lanyard_piv::commands::{self as cmd, Metadata, Version};
use lanyard_piv::mgmkey::{ManagementKey, MgmAlgorithm};
use lanyard_piv::objects::{
    Ccc, CertificateObject, Chuid, ChuidIssuance, Discovery, FascN, KeyHistory, YUBICO_CARD_ID_PREFIX,
};
use lanyard_piv::types::{KeyAlgorithm, Slot, tag};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The factory PIN and PUK of PIV applets that have them (YubiKey, the software card).
const FACTORY_PIN: &[u8] = b"123456";
const FACTORY_PUK: &[u8] = b"12345678";
/// A PIN/PUK value no card can hold (not digits), used to block them on purpose.
const WRONG_VALUE: &[u8] = &[0; 8];
/// How many wrong tries rollback sends before it gives up on a counter that never blocks.
const MAX_BLOCK_TRIES: u32 = 16;

pub const STEP_DETECT: &str = "detect";
pub const STEP_AUTHENTICATE: &str = "authenticate";
pub const STEP_ROTATE: &str = "rotate_management_key";
pub const STEP_SET_RETRIES: &str = "set_retries";
pub const STEP_SET_PUK: &str = "set_puk";
pub const STEP_SET_PIN: &str = "set_pin";
pub const STEP_ATTEST: &str = "attest";
pub const STEP_ISSUE_CERTIFICATES: &str = "issue_certificates";
pub const STEP_SIGN_CHUID: &str = "sign_chuid";
pub const STEP_WRITE_CERTIFICATES: &str = "write_certificates";
pub const STEP_WRITE_CHUID: &str = "write_chuid";
pub const STEP_WRITE_CCC: &str = "write_ccc";
pub const STEP_WRITE_DISCOVERY: &str = "write_discovery";
pub const STEP_WRITE_KEY_HISTORY: &str = "write_key_history";
pub const STEP_DONE: &str = "done";

/// Every step name the engine knows, for reading checkpoints back.
const ALL_STEPS: &[&str] = &[
    STEP_DETECT,
    STEP_AUTHENTICATE,
    STEP_ROTATE,
    STEP_SET_RETRIES,
    STEP_SET_PUK,
    STEP_SET_PIN,
    "generate_9a",
    "generate_9c",
    "generate_9d",
    "generate_9e",
    STEP_ATTEST,
    STEP_ISSUE_CERTIFICATES,
    STEP_SIGN_CHUID,
    STEP_WRITE_CERTIFICATES,
    STEP_WRITE_CHUID,
    STEP_WRITE_CCC,
    STEP_WRITE_DISCOVERY,
    STEP_WRITE_KEY_HISTORY,
];

/// The step name of key generation in `slot` (only the four PIV key slots are plannable).
pub fn generate_step(slot: Slot) -> &'static str {
    match slot {
        Slot::AUTHENTICATION => "generate_9a",
        Slot::SIGNATURE => "generate_9c",
        Slot::KEY_MANAGEMENT => "generate_9d",
        _ => "generate_9e",
    }
}

fn step_name(name: &str) -> Option<&'static str> {
    ALL_STEPS.iter().copied().find(|s| *s == name)
}

// ---------------------------------------------------------------------------------------------
// Plan
// ---------------------------------------------------------------------------------------------

/// One key the card gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPlan {
    /// 9A, 9C, 9D or 9E.
    pub slot: Slot,
    /// P-256, P-384, RSA-2048 or RSA-3072.
    pub algorithm: KeyAlgorithm,
    /// The certificate profile the server issues with; the engine only carries it.
    pub profile: String,
}

/// What the server decided for one card. The secrets are zeroised on drop and `Debug` prints
/// none of them.
pub struct IssuancePlan {
    pub slots: Vec<SlotPlan>,
    /// The card's new management key: random per card, AES-192. On a card without AES (YubiKey
    /// before 5.4) the same 24 bytes become a 3DES key; [`IssuanceOutcome`] says which.
    pub new_management_key: ManagementKey,
    /// Eight digits.
    pub puk: SecretString,
    /// Six to eight digits.
    pub initial_pin: SecretString,
    pub pin_retries: u8,
    pub puk_retries: u8,
    pub fasc_n: FascN,
    pub guid: [u8; 16],
    /// `YYYYMMDD`.
    pub expiration: String,
}

impl fmt::Debug for IssuancePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuancePlan")
            .field("slots", &self.slots)
            .field("new_management_key", &self.new_management_key)
            .field("puk", &"[REDACTED]")
            .field("initial_pin", &"[REDACTED]")
            .field("pin_retries", &self.pin_retries)
            .field("puk_retries", &self.puk_retries)
            .field("fasc_n", &self.fasc_n.to_string())
            .field("guid", &hex::encode(self.guid))
            .field("expiration", &self.expiration)
            .finish()
    }
}

fn all_digits(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

impl IssuancePlan {
    /// Checks what the card would refuse, so a bad plan fails before any command is sent.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::InvalidPlan(m));
        if self.slots.is_empty() {
            return bad("no slots planned".into());
        }
        let mut seen = BTreeSet::new();
        for s in &self.slots {
            if !matches!(s.slot.0, 0x9A | 0x9C | 0x9D | 0x9E) {
                return bad(format!("slot {} is not one of 9A, 9C, 9D, 9E", s.slot));
            }
            if !seen.insert(s.slot) {
                return bad(format!("slot {} planned twice", s.slot));
            }
            if !matches!(
                s.algorithm,
                KeyAlgorithm::EccP256 | KeyAlgorithm::EccP384 | KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072
            ) {
                return bad(format!("{} keys are not issued", s.algorithm));
            }
        }
        if !all_digits(self.puk.expose_secret(), 8, 8) {
            return bad("the PUK must be 8 digits".into());
        }
        if !all_digits(self.initial_pin.expose_secret(), 6, 8) {
            return bad("the initial PIN must be 6 to 8 digits".into());
        }
        if !(1..=15).contains(&self.pin_retries) || !(1..=15).contains(&self.puk_retries) {
            return bad("PIN and PUK retries must be 1 to 15".into());
        }
        if self.new_management_key.expose_bytes() == lanyard_piv::mgmkey::DEFAULT_MANAGEMENT_KEY.as_slice() {
            return bad("the new management key is the well-known factory key".into());
        }
        if self.new_management_key.algorithm() == MgmAlgorithm::TripleDes {
            return bad("the new management key must be AES (3DES is chosen per card when needed)".into());
        }
        Chuid::new(&self.fasc_n, self.guid, &self.expiration)
            .map_err(|e| EngineError::InvalidPlan(format!("CHUID: {e}")))?;
        Ok(())
    }

    fn chuid(&self) -> Result<Chuid, EngineError> {
        Chuid::new(&self.fasc_n, self.guid, &self.expiration)
            .map_err(|e| EngineError::InvalidPlan(format!("CHUID: {e}")))
    }

    /// The CCC card identifier: the Yubico prefix and 14 bytes of the (random) card GUID, so a
    /// resumed run writes the same CCC.
    fn ccc(&self) -> Ccc {
        let mut id = [0u8; 21];
        for (out, b) in id.iter_mut().zip(YUBICO_CARD_ID_PREFIX.iter().chain(self.guid.iter())) {
            *out = *b;
        }
        Ccc::new(id)
    }

    /// The management key for a card: the plan's key, or its bytes as 3DES when the card lacks
    /// AES.
    fn key_for(&self, aes: bool) -> Result<ManagementKey, EngineError> {
        if aes {
            return Ok(self.new_management_key.clone());
        }
        ManagementKey::new(MgmAlgorithm::TripleDes, self.new_management_key.expose_bytes()).map_err(|_| {
            EngineError::Unsupported {
                step: STEP_ROTATE,
                reason: format!(
                    "the card has no AES and a {} key cannot become a 3DES key",
                    self.new_management_key.algorithm()
                ),
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Steps, inputs, outcomes, errors
// ---------------------------------------------------------------------------------------------

/// What the engine wants next. `Debug` shows each command's header and length only: the
/// commands carry the PIN, PUK and management key.
#[derive(Clone, PartialEq, Eq)]
pub enum Step {
    /// Send these in order, stop at the first non-`9000` status word, answer with
    /// [`Input::Responses`] holding every response received.
    Transmit(Vec<Command>),
    /// Issue one certificate per key and answer with [`Input::Certificates`].
    IssueCertificates(Vec<GeneratedKey>),
    /// Sign this CHUID content (detached CMS) and answer with [`Input::ChuidSignature`].
    SignChuid(Vec<u8>),
    Done(IssuanceOutcome),
    Failed(EngineError),
}

/// `CLA INS P1 P2 +len` for each command, never the data.
fn commands_summary(commands: &[Command]) -> Vec<String> {
    commands
        .iter()
        .map(|c| format!("{:02X}{:02X}{:02X}{:02X}+{}", c.cla, c.ins, c.p1, c.p2, c.data.len()))
        .collect()
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Transmit(c) => f.debug_tuple("Transmit").field(&commands_summary(c)).finish(),
            Step::IssueCertificates(k) => f.debug_tuple("IssueCertificates").field(k).finish(),
            Step::SignChuid(c) => f.debug_tuple("SignChuid").field(&hex::encode(c)).finish(),
            Step::Done(o) => f.debug_tuple("Done").field(o).finish(),
            Step::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

/// What the caller feeds the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Start,
    Responses(Vec<Response>),
    /// One DER certificate per planned slot.
    Certificates(Vec<(Slot, Vec<u8>)>),
    /// The detached CMS signature over the content of [`Step::SignChuid`].
    ChuidSignature(Vec<u8>),
}

impl Input {
    fn name(&self) -> &'static str {
        match self {
            Input::Start => "Start",
            Input::Responses(_) => "Responses",
            Input::Certificates(_) => "Certificates",
            Input::ChuidSignature(_) => "ChuidSignature",
        }
    }
}

/// YubiKey attestation of a generated key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    /// The certificate ATTEST returned, signed by the card's F9 key.
    #[serde(with = "hex::serde")]
    pub attestation_cert_der: Vec<u8>,
    /// The F9 certificate (5FFF01), signed by the vendor's attestation CA.
    #[serde(with = "hex::serde")]
    pub f9_cert_der: Vec<u8>,
}

/// A key the card generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedKey {
    pub slot: Slot,
    pub algorithm: KeyAlgorithm,
    pub public_key_spki_der: Vec<u8>,
    pub attestation: Option<Attestation>,
}

/// One line of the per-step log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub step: &'static str,
    pub note: String,
}

/// What an issuance did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuanceOutcome {
    /// The algorithm of the management key now on the card (the key is the plan's bytes).
    pub management_key_algorithm: MgmAlgorithm,
    pub serial: Option<u32>,
    pub version: Option<Version>,
    pub keys: Vec<GeneratedKey>,
    /// Round trips (transmit batches) of this session.
    pub round_trips: u32,
    /// Round trips of every session of this issuance, resumed ones included.
    pub total_round_trips: u32,
    pub log: Vec<LogEntry>,
}

/// Why an issuance or rollback stopped. The step is a stable step name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EngineError {
    #[error("invalid issuance plan: {0}")]
    InvalidPlan(String),
    #[error("the card has no PIV application (SELECT answered {0})")]
    NotPiv(StatusWord),
    #[error("unsupported card at {step}: {reason}")]
    Unsupported { step: &'static str, reason: String },
    #[error("the card is already issued: {0}")]
    AlreadyIssued(String),
    #[error("no known management key authenticates ({tried} tried)")]
    WrongManagementKey { tried: usize },
    #[error("the card did not prove knowledge of the management key: not a genuine card, or tampered")]
    CardAuthenticationFailed,
    #[error("{step}: the card refused {command} with {sw}")]
    CardRefused { step: &'static str, command: &'static str, sw: StatusWord },
    #[error("{step}: malformed answer to {command}: {reason}")]
    BadResponse { step: &'static str, command: &'static str, reason: String },
    #[error("the relay returned {got} response(s) to a batch of {sent}")]
    ResponseCount { sent: usize, got: usize },
    #[error("expected {expected}, got {got}")]
    UnexpectedInput { expected: &'static str, got: &'static str },
    #[error("certificates: {0}")]
    BadCertificates(String),
    #[error("CHUID signature: {0}")]
    BadSignature(&'static str),
    #[error("the system random number generator failed")]
    Rng,
}

// ---------------------------------------------------------------------------------------------
// Checkpoint
// ---------------------------------------------------------------------------------------------

/// A generated key as the checkpoint keeps it (public data only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointKey {
    pub slot: u8,
    pub algorithm: u8,
    #[serde(with = "hex::serde")]
    pub spki_der: Vec<u8>,
    pub attestation: Option<Attestation>,
}

/// A certificate as the checkpoint keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointCertificate {
    pub slot: u8,
    #[serde(with = "hex::serde")]
    pub der: Vec<u8>,
}

/// Progress of an issuance, safe to store as is: no PIN, PUK or key, only step names and public
/// data (public keys, attestations, certificates, the CHUID signature) so a resumed run neither
/// regenerates keys nor reissues certificates it already has.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    pub completed: Vec<String>,
    /// The new management key's algorithm id, once rotation is done.
    pub management_key_algorithm: Option<u8>,
    pub keys: Vec<CheckpointKey>,
    pub certificates: Vec<CheckpointCertificate>,
    #[serde(default, with = "serde_hex_opt")]
    pub chuid_signature: Option<Vec<u8>>,
    pub round_trips: u32,
}

mod serde_hex_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&hex::encode(v)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| hex::decode(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

// ---------------------------------------------------------------------------------------------
// Batches
// ---------------------------------------------------------------------------------------------

/// One command in flight and what its answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Select,
    Version,
    Serial,
    Metadata(u8),
    GetChuid,
    GetDiscovery,
    Witness,
    Mutual,
    SetMgmKey,
    VerifyFactoryPin,
    SetRetries,
    ChangePuk,
    ChangePin,
    Generate(usize),
    Attest(usize),
    GetF9,
    WriteCert(usize),
    WriteChuid,
    WriteCcc,
    WriteDiscovery,
    WriteKeyHistory,
    BlockPin,
    BlockPuk,
    Reset,
}

impl Op {
    fn command_name(self) -> &'static str {
        match self {
            Op::Select => "SELECT",
            Op::Version => "GET VERSION",
            Op::Serial => "GET SERIAL",
            Op::Metadata(_) => "GET METADATA",
            Op::GetChuid => "GET DATA CHUID",
            Op::GetDiscovery => "GET DATA discovery",
            Op::Witness => "GENERAL AUTHENTICATE (witness)",
            Op::Mutual => "GENERAL AUTHENTICATE (mutual)",
            Op::SetMgmKey => "SET MANAGEMENT KEY",
            Op::VerifyFactoryPin => "VERIFY (factory PIN)",
            Op::SetRetries => "SET PIN RETRIES",
            Op::ChangePuk => "CHANGE REFERENCE DATA (PUK)",
            Op::ChangePin => "CHANGE REFERENCE DATA (PIN)",
            Op::Generate(_) => "GENERATE",
            Op::Attest(_) => "ATTEST",
            Op::GetF9 => "GET DATA attestation certificate",
            Op::WriteCert(_) => "PUT DATA certificate",
            Op::WriteChuid => "PUT DATA CHUID",
            Op::WriteCcc => "PUT DATA CCC",
            Op::WriteDiscovery => "PUT DATA discovery",
            Op::WriteKeyHistory => "PUT DATA key history",
            Op::BlockPin => "VERIFY (wrong, to block)",
            Op::BlockPuk => "RESET RETRY COUNTER (wrong, to block)",
            Op::Reset => "RESET",
        }
    }

    /// Status words that are an answer rather than a failure.
    fn tolerates(self, sw: StatusWord) -> bool {
        use StatusWord::*;
        match self {
            Op::Version | Op::Serial => matches!(sw, InsNotSupported | FunctionNotSupported),
            Op::Metadata(_) => matches!(
                sw,
                InsNotSupported | FunctionNotSupported | IncorrectP1P2 | WrongP1P2 | ReferenceNotFound
            ),
            Op::GetChuid | Op::GetDiscovery => sw == NotFound,
            Op::BlockPin | Op::BlockPuk => matches!(sw, WrongPin { .. } | AuthenticationBlocked),
            _ => false,
        }
    }
}

/// The responses of a batch paired with their commands, checked for count. The last pair may
/// carry the non-success status word that stopped the relay.
fn pair_responses(pending: &[Op], responses: Vec<Response>) -> Result<Vec<(Op, Response)>, EngineError> {
    let (sent, got) = (pending.len(), responses.len());
    let stopped_early = responses.last().is_some_and(|r| !r.sw.is_success());
    if got > sent || got == 0 && sent > 0 || got < sent && !stopped_early {
        return Err(EngineError::ResponseCount { sent, got });
    }
    if responses.iter().rev().skip(1).any(|r| !r.sw.is_success()) {
        // The relay must stop at the first failure; answers after one are not ours to trust.
        return Err(EngineError::ResponseCount { sent, got });
    }
    Ok(pending.iter().copied().zip(responses).collect())
}

fn random_block(n: usize) -> Result<Vec<u8>, EngineError> {
    let mut v = vec![0u8; n];
    SystemRandom::new().fill(&mut v).map_err(|_| EngineError::Rng)?;
    Ok(v)
}

/// Management-key authentication over two round trips, trying candidate keys in order.
struct Auth {
    candidates: Vec<ManagementKey>,
    index: usize,
    challenge: Option<Vec<u8>>,
}

enum AuthProgress {
    Send(Op, Command),
    Authenticated(ManagementKey),
}

impl Auth {
    fn new(candidates: Vec<ManagementKey>) -> Self {
        Self { candidates, index: 0, challenge: None }
    }

    fn current(&self) -> Result<&ManagementKey, EngineError> {
        self.candidates
            .get(self.index)
            .ok_or(EngineError::WrongManagementKey { tried: self.candidates.len() })
    }

    fn start(&mut self) -> Result<AuthProgress, EngineError> {
        self.challenge = None;
        let key = self.current()?;
        Ok(AuthProgress::Send(Op::Witness, cmd::mutual_auth_witness(key.algorithm())))
    }

    fn next_candidate(&mut self) -> Result<AuthProgress, EngineError> {
        self.index += 1;
        self.start()
    }

    fn on_response(
        &mut self,
        step: &'static str,
        op: Op,
        resp: &Response,
    ) -> Result<AuthProgress, EngineError> {
        let bad = |reason: String| EngineError::BadResponse { step, command: op.command_name(), reason };
        match op {
            Op::Witness => {
                if resp.sw == StatusWord::IncorrectP1P2 || resp.sw == StatusWord::WrongP1P2 {
                    // The card's key has another algorithm.
                    return self.next_candidate();
                }
                if !resp.sw.is_success() {
                    return Err(EngineError::CardRefused { step, command: op.command_name(), sw: resp.sw });
                }
                let key = self.current()?;
                let challenge = random_block(key.algorithm().block_len())?;
                let command =
                    cmd::mutual_auth_response(key, &resp.data, &challenge).map_err(|e| bad(e.to_string()))?;
                self.challenge = Some(challenge);
                Ok(AuthProgress::Send(Op::Mutual, command))
            }
            _ => {
                if !resp.sw.is_success() {
                    return self.next_candidate();
                }
                let key = self.current()?.clone();
                let challenge =
                    self.challenge.take().ok_or_else(|| bad("no challenge outstanding".into()))?;
                match cmd::check_mutual_auth(&key, &challenge, &resp.data) {
                    Ok(()) => Ok(AuthProgress::Authenticated(key)),
                    Err(lanyard_piv::PivError::CardAuthenticationFailed) => {
                        Err(EngineError::CardAuthenticationFailed)
                    }
                    Err(e) => Err(bad(e.to_string())),
                }
            }
        }
    }
}

/// Picks factory keys in the order to try them: those of the algorithm the card reports first.
fn order_factory_keys(
    factory: &[ManagementKey],
    reported: Option<MgmAlgorithm>,
    version: Option<Version>,
) -> Vec<ManagementKey> {
    let preferred = reported.unwrap_or(match version {
        Some(v) if v >= Version(5, 7, 0) => MgmAlgorithm::Aes192,
        _ => MgmAlgorithm::TripleDes,
    });
    let mut keys: Vec<ManagementKey> =
        factory.iter().filter(|k| k.algorithm() == preferred).cloned().collect();
    if reported.is_none() {
        keys.extend(factory.iter().filter(|k| k.algorithm() != preferred).cloned());
    }
    keys
}

// ---------------------------------------------------------------------------------------------
// The issuance engine
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    New,
    Resume,
}

#[derive(Debug, Default)]
struct CardInfo {
    version: Option<Version>,
    serial: Option<u32>,
    mgm: Option<Metadata>,
    pin: Option<Metadata>,
    puk: Option<Metadata>,
    chuid: Option<Vec<u8>>,
    discovery_present: Option<bool>,
}

impl CardInfo {
    fn is_yubikey(&self) -> bool {
        self.version.is_some()
    }

    fn has_aes(&self) -> bool {
        self.version.is_some_and(|v| v >= Version(5, 4, 0))
    }

    fn can_attest(&self) -> bool {
        self.version.is_some_and(|v| v >= Version(4, 3, 0))
    }

    fn has_metadata(&self) -> bool {
        self.version.is_some_and(|v| v >= Version(5, 3, 0))
    }
}

enum State {
    Start,
    Detect,
    Auth(Auth),
    Personalize,
    AwaitCertificates,
    AwaitSignature,
    Write,
    Done(IssuanceOutcome),
    Failed(EngineError),
}

/// The issuance state machine; see the module documentation.
pub struct Engine {
    plan: IssuancePlan,
    factory_keys: Vec<ManagementKey>,
    mode: Mode,
    state: State,
    done: BTreeSet<&'static str>,
    card: CardInfo,
    /// The key now on the card, once rotation is done or found done.
    new_key_alg: Option<MgmAlgorithm>,
    keys: Vec<Option<GeneratedKey>>,
    attestations: Vec<Option<Vec<u8>>>,
    f9_cert: Option<Vec<u8>>,
    certificates: Vec<Option<Vec<u8>>>,
    chuid_signature: Option<Vec<u8>>,
    pending: Vec<Op>,
    round_trips: u32,
    prior_round_trips: u32,
    log: Vec<LogEntry>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("mode", &self.mode)
            .field("completed", &self.done)
            .field("round_trips", &self.round_trips)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// A fresh issuance. `factory_keys` are the management keys a stock card may carry (3DES
    /// and, for YubiKey 5.7, AES-192 with the well-known bytes).
    pub fn new(plan: IssuancePlan, factory_keys: Vec<ManagementKey>) -> Self {
        let n = plan.slots.len();
        Self {
            plan,
            factory_keys,
            mode: Mode::New,
            state: State::Start,
            done: BTreeSet::new(),
            card: CardInfo::default(),
            new_key_alg: None,
            keys: vec![None; n],
            attestations: vec![None; n],
            f9_cert: None,
            certificates: vec![None; n],
            chuid_signature: None,
            pending: Vec::new(),
            round_trips: 0,
            prior_round_trips: 0,
            log: Vec::new(),
        }
    }

    /// Continues an issuance after a crash or a pulled card: detects and authenticates again
    /// (with the new key when rotation was recorded or the card reports a non-default key, else
    /// the new key and then the factory keys), then skips what the checkpoint and the card say
    /// is done. Keys, certificates and the CHUID signature recorded in the checkpoint are reused.
    pub fn resume(plan: IssuancePlan, factory_keys: Vec<ManagementKey>, checkpoint: &Checkpoint) -> Self {
        let mut engine = Self::new(plan, factory_keys);
        engine.mode = Mode::Resume;
        engine.prior_round_trips = checkpoint.round_trips;
        for name in &checkpoint.completed {
            if let Some(s) = step_name(name)
                && s != STEP_DETECT
                && s != STEP_AUTHENTICATE
            {
                engine.done.insert(s);
            }
        }
        engine.new_key_alg =
            checkpoint.management_key_algorithm.and_then(|id| MgmAlgorithm::from_id(id).ok());
        if engine.new_key_alg.is_none() {
            engine.done.remove(STEP_ROTATE);
        }
        for k in &checkpoint.keys {
            let Some(i) = engine.slot_index(Slot(k.slot)) else { continue };
            let Some(alg) = KeyAlgorithm::from_id(k.algorithm) else { continue };
            let planned = engine.plan.slots.get(i).map(|s| s.algorithm);
            if planned == Some(alg) && engine.done.contains(generate_step(Slot(k.slot))) {
                engine.keys[i] = Some(GeneratedKey {
                    slot: Slot(k.slot),
                    algorithm: alg,
                    public_key_spki_der: k.spki_der.clone(),
                    attestation: k.attestation.clone(),
                });
            }
        }
        for (i, s) in engine.plan.slots.iter().enumerate() {
            if engine.keys[i].is_none() {
                engine.done.remove(generate_step(s.slot));
                engine.done.remove(STEP_ATTEST);
                engine.done.remove(STEP_ISSUE_CERTIFICATES);
            }
        }
        if engine.done.contains(STEP_ISSUE_CERTIFICATES) {
            for c in &checkpoint.certificates {
                if let Some(i) = engine.slot_index(Slot(c.slot)) {
                    engine.certificates[i] = Some(c.der.clone());
                }
            }
            if engine.certificates.iter().any(Option::is_none) {
                engine.done.remove(STEP_ISSUE_CERTIFICATES);
            }
        }
        if engine.done.contains(STEP_SIGN_CHUID) {
            engine.chuid_signature = checkpoint.chuid_signature.clone();
            if engine.chuid_signature.is_none() {
                engine.done.remove(STEP_SIGN_CHUID);
            }
        }
        engine
    }

    fn slot_index(&self, slot: Slot) -> Option<usize> {
        self.plan.slots.iter().position(|s| s.slot == slot)
    }

    /// The step names of this plan, in order.
    fn step_names(&self) -> Vec<&'static str> {
        let mut v =
            vec![STEP_DETECT, STEP_AUTHENTICATE, STEP_ROTATE, STEP_SET_RETRIES, STEP_SET_PUK, STEP_SET_PIN];
        v.extend(self.plan.slots.iter().map(|s| generate_step(s.slot)));
        v.extend([
            STEP_ATTEST,
            STEP_ISSUE_CERTIFICATES,
            STEP_SIGN_CHUID,
            STEP_WRITE_CERTIFICATES,
            STEP_WRITE_CHUID,
            STEP_WRITE_CCC,
            STEP_WRITE_DISCOVERY,
            STEP_WRITE_KEY_HISTORY,
        ]);
        v
    }

    /// Steps done, steps in all, and the name of the first step not done (`"done"` at the end).
    pub fn progress(&self) -> (usize, usize, &'static str) {
        let names = self.step_names();
        let done = names.iter().filter(|n| self.done.contains(*n)).count();
        let current = names.iter().copied().find(|n| !self.done.contains(n)).unwrap_or(STEP_DONE);
        (done, names.len(), current)
    }

    /// What to store so [`Engine::resume`] can continue. Holds no secret.
    pub fn checkpoint(&self) -> Checkpoint {
        let completed =
            self.step_names().into_iter().filter(|n| self.done.contains(n)).map(String::from).collect();
        let keys = self
            .keys
            .iter()
            .flatten()
            .map(|k| CheckpointKey {
                slot: k.slot.0,
                algorithm: k.algorithm.id(),
                spki_der: k.public_key_spki_der.clone(),
                attestation: k.attestation.clone(),
            })
            .collect();
        let certificates = self
            .plan
            .slots
            .iter()
            .zip(&self.certificates)
            .filter_map(|(s, c)| {
                c.as_ref().map(|der| CheckpointCertificate { slot: s.slot.0, der: der.clone() })
            })
            .collect();
        Checkpoint {
            completed,
            management_key_algorithm: self
                .new_key_alg
                .filter(|_| self.done.contains(STEP_ROTATE))
                .map(|a| a.id()),
            keys,
            certificates,
            chuid_signature: self.chuid_signature.clone(),
            round_trips: self.prior_round_trips + self.round_trips,
        }
    }

    /// Advances the machine with the caller's input. A failure is final: every later call
    /// returns the same [`Step::Failed`].
    pub fn next(&mut self, input: Input) -> Step {
        if let State::Failed(e) = &self.state {
            return Step::Failed(e.clone());
        }
        if let State::Done(o) = &self.state {
            return Step::Done(o.clone());
        }
        match self.advance(input) {
            Ok(step) => {
                match &step {
                    Step::Transmit(_) => self.round_trips += 1,
                    Step::Done(o) => self.state = State::Done(o.clone()),
                    _ => {}
                }
                step
            }
            Err(e) => {
                self.log.push(LogEntry { step: self.progress().2, note: format!("failed: {e}") });
                self.state = State::Failed(e.clone());
                Step::Failed(e)
            }
        }
    }

    fn note(&mut self, step: &'static str, note: impl Into<String>) {
        self.log.push(LogEntry { step, note: note.into() });
    }

    fn transmit(&mut self, batch: Vec<(Op, Command)>) -> Step {
        let (ops, commands): (Vec<Op>, Vec<Command>) = batch.into_iter().unzip();
        self.pending = ops;
        Step::Transmit(commands)
    }

    fn advance(&mut self, input: Input) -> Result<Step, EngineError> {
        let state = std::mem::replace(&mut self.state, State::Start);
        match (state, input) {
            (State::Start, Input::Start) => {
                self.plan.validate()?;
                self.state = State::Detect;
                Ok(self.transmit(self.detect_batch()))
            }
            (State::Detect, Input::Responses(r)) => {
                self.state = State::Detect;
                self.on_detect(r)
            }
            (State::Auth(mut auth), Input::Responses(r)) => {
                let pairs = pair_responses(&self.pending, r)?;
                let [(op, resp)] = pairs.as_slice() else {
                    return Err(EngineError::ResponseCount { sent: self.pending.len(), got: pairs.len() });
                };
                match auth.on_response(STEP_AUTHENTICATE, *op, resp)? {
                    AuthProgress::Send(op, command) => {
                        self.state = State::Auth(auth);
                        Ok(self.transmit(vec![(op, command)]))
                    }
                    AuthProgress::Authenticated(key) => {
                        self.done.insert(STEP_AUTHENTICATE);
                        let with_new = key.expose_bytes() == self.plan.new_management_key.expose_bytes();
                        self.note(
                            STEP_AUTHENTICATE,
                            format!(
                                "authenticated with the {} key",
                                if with_new { "new" } else { "factory" }
                            ),
                        );
                        if with_new {
                            self.new_key_alg = Some(key.algorithm());
                            self.done.insert(STEP_ROTATE);
                        }
                        self.personalize()
                    }
                }
            }
            (State::Personalize, Input::Responses(r)) => self.on_personalize(r),
            (State::AwaitCertificates, Input::Certificates(certs)) => {
                self.on_certificates(certs)?;
                self.after_certificates()
            }
            (State::AwaitSignature, Input::ChuidSignature(sig)) => {
                if sig.is_empty() {
                    return Err(EngineError::BadSignature("empty"));
                }
                self.chuid_signature = Some(sig);
                self.done.insert(STEP_SIGN_CHUID);
                self.write()
            }
            (State::Write, Input::Responses(r)) => self.on_write(r),
            (state, input) => {
                let expected = match state {
                    State::Start => "Start",
                    State::AwaitCertificates => "Certificates",
                    State::AwaitSignature => "ChuidSignature",
                    _ => "Responses",
                };
                self.state = state;
                Err(EngineError::UnexpectedInput { expected, got: input.name() })
            }
        }
    }

    // ---- detect ----

    fn detect_batch(&self) -> Vec<(Op, Command)> {
        vec![
            (Op::Select, cmd::select()),
            (Op::Version, cmd::get_version()),
            (Op::Serial, cmd::get_serial()),
            (Op::Metadata(Slot::MANAGEMENT.0), cmd::get_metadata(Slot::MANAGEMENT.0)),
            (Op::Metadata(cmd::REF_PIV_PIN), cmd::get_metadata(cmd::REF_PIV_PIN)),
            (Op::Metadata(cmd::REF_PUK), cmd::get_metadata(cmd::REF_PUK)),
            (Op::GetChuid, cmd::get_data(tag::CHUID)),
        ]
    }

    fn bad(step: &'static str, op: Op, e: impl fmt::Display) -> EngineError {
        EngineError::BadResponse { step, command: op.command_name(), reason: e.to_string() }
    }

    fn on_detect(&mut self, responses: Vec<Response>) -> Result<Step, EngineError> {
        let step = STEP_DETECT;
        let pairs = pair_responses(&self.pending, responses)?;
        let answered = pairs.len();
        let mut stopped = false;
        for (op, resp) in &pairs {
            if !resp.sw.is_success() {
                if *op == Op::Select {
                    return Err(EngineError::NotPiv(resp.sw));
                }
                if *op == Op::Version && op.tolerates(resp.sw) {
                    return Err(EngineError::Unsupported {
                        step,
                        reason:
                            "not a YubiKey: management key rotation on other PIV cards is not implemented"
                                .into(),
                    });
                }
                if !op.tolerates(resp.sw) {
                    return Err(EngineError::CardRefused { step, command: op.command_name(), sw: resp.sw });
                }
                stopped = true;
                continue;
            }
            let d = &resp.data;
            match op {
                Op::Select => {
                    cmd::parse_select(d).map_err(|e| Self::bad(step, *op, e))?;
                }
                Op::Version => {
                    self.card.version = Some(cmd::parse_version(d).map_err(|e| Self::bad(step, *op, e))?)
                }
                Op::Serial => {
                    self.card.serial = Some(cmd::parse_serial(d).map_err(|e| Self::bad(step, *op, e))?)
                }
                Op::Metadata(which) => {
                    let m = cmd::parse_metadata(d).map_err(|e| Self::bad(step, *op, e))?;
                    match *which {
                        cmd::REF_PIV_PIN => self.card.pin = Some(m),
                        cmd::REF_PUK => self.card.puk = Some(m),
                        _ => self.card.mgm = Some(m),
                    }
                }
                Op::GetChuid => self.card.chuid = Some(d.clone()),
                _ => return Err(Self::bad(step, *op, "unexpected command in the detect batch")),
            }
        }
        // Commands after a tolerated stop go out in the next round trip.
        let rest: Vec<(Op, Command)> = if stopped {
            let sent: Vec<Op> = self.pending.clone();
            let full = self.detect_batch();
            let mut rest: Vec<(Op, Command)> = full
                .into_iter()
                .filter(|(o, _)| sent.get(answered..).is_some_and(|s| s.contains(o)))
                .collect();
            if pairs.last().is_some_and(|(o, _)| matches!(o, Op::Metadata(_))) {
                // No metadata on this card: drop the other GET METADATA commands too.
                rest.retain(|(o, _)| !matches!(o, Op::Metadata(_)));
            }
            rest
        } else {
            Vec::new()
        };
        if !rest.is_empty() {
            return Ok(self.transmit(rest));
        }
        self.finish_detect()
    }

    fn finish_detect(&mut self) -> Result<Step, EngineError> {
        let step = STEP_DETECT;
        if !self.card.is_yubikey() {
            return Err(EngineError::Unsupported {
                step,
                reason: "not a YubiKey: management key rotation on other PIV cards is not implemented".into(),
            });
        }
        let mut ours = false;
        match ChuidIssuance::classify(self.card.chuid.as_deref()) {
            ChuidIssuance::Template(c) | ChuidIssuance::Issued(c) if c.guid == self.plan.guid => ours = true,
            ChuidIssuance::Absent | ChuidIssuance::Template(_) => {}
            ChuidIssuance::Issued(c) => {
                return Err(EngineError::AlreadyIssued(format!(
                    "the card has a CHUID with GUID {}",
                    hex::encode(c.guid)
                )));
            }
            ChuidIssuance::Undecodable(e) => {
                return Err(EngineError::AlreadyIssued(format!(
                    "the card has a CHUID that does not decode: {e}"
                )));
            }
        }
        if ours && self.mode == Mode::New {
            return Err(EngineError::AlreadyIssued(
                "the card carries this plan's GUID from an interrupted run: resume from its checkpoint or roll back".into(),
            ));
        }
        self.done.insert(STEP_DETECT);
        let v = self.card.version.map(|v| v.to_string()).unwrap_or_default();
        self.note(step, format!("YubiKey {v}, serial {:?}", self.card.serial));
        if !self.card.can_attest() {
            self.done.insert(STEP_ATTEST);
        }
        if self.mode == Mode::Resume && self.card.has_metadata() {
            self.reconcile_pins();
        }
        let reported =
            self.card.mgm.as_ref().and_then(|m| m.algorithm).and_then(|a| MgmAlgorithm::from_id(a).ok());
        let is_default = self.card.mgm.as_ref().and_then(|m| m.is_default);
        let new_key = match self.new_key_alg {
            Some(alg) => self.plan.key_for(alg != MgmAlgorithm::TripleDes)?,
            None => self.plan.key_for(self.card.has_aes())?,
        };
        let candidates = if self.done.contains(STEP_ROTATE) || is_default == Some(false) {
            vec![new_key]
        } else if is_default == Some(true) || self.mode == Mode::New {
            order_factory_keys(&self.factory_keys, reported, self.card.version)
        } else {
            let mut c = vec![new_key];
            c.extend(order_factory_keys(&self.factory_keys, reported, self.card.version));
            c
        };
        let mut auth = Auth::new(candidates);
        let AuthProgress::Send(op, command) = auth.start()? else {
            return Err(EngineError::WrongManagementKey { tried: 0 });
        };
        self.state = State::Auth(auth);
        Ok(self.transmit(vec![(op, command)]))
    }

    /// After a pulled card the PIN/PUK batch may have run further than the checkpoint says;
    /// the metadata read at detect tells what the card really holds.
    fn reconcile_pins(&mut self) {
        let (Some(pin), Some(puk)) = (&self.card.pin, &self.card.puk) else { return };
        let totals = (pin.retries.map(|r| r.0), puk.retries.map(|r| r.0));
        if totals == (Some(self.plan.pin_retries), Some(self.plan.puk_retries)) {
            self.done.insert(STEP_SET_RETRIES);
        }
        if puk.is_default == Some(false) {
            self.done.insert(STEP_SET_PUK);
        }
        if pin.is_default == Some(false) {
            self.done.insert(STEP_SET_PIN);
        }
    }

    // ---- personalize: rotate, PIN/PUK, generate, attest ----

    fn personalize(&mut self) -> Result<Step, EngineError> {
        let mut batch = Vec::new();
        if !self.done.contains(STEP_ROTATE) {
            let key = self.plan.key_for(self.card.has_aes())?;
            self.new_key_alg = Some(key.algorithm());
            batch.push((Op::SetMgmKey, cmd::set_management_key(&key, false)));
        }
        if !self.done.contains(STEP_SET_RETRIES) {
            let verify = cmd::verify_pin(FACTORY_PIN).map_err(|e| EngineError::InvalidPlan(e.to_string()))?;
            batch.push((Op::VerifyFactoryPin, verify));
            batch.push((Op::SetRetries, cmd::set_pin_retries(self.plan.pin_retries, self.plan.puk_retries)));
        }
        if !self.done.contains(STEP_SET_PUK) {
            let c = cmd::change_reference(true, FACTORY_PUK, self.plan.puk.expose_secret().as_bytes())
                .map_err(|e| EngineError::InvalidPlan(e.to_string()))?;
            batch.push((Op::ChangePuk, c));
        }
        if !self.done.contains(STEP_SET_PIN) {
            let c =
                cmd::change_reference(false, FACTORY_PIN, self.plan.initial_pin.expose_secret().as_bytes())
                    .map_err(|e| EngineError::InvalidPlan(e.to_string()))?;
            batch.push((Op::ChangePin, c));
        }
        for (i, s) in self.plan.slots.iter().enumerate() {
            if !self.done.contains(generate_step(s.slot)) {
                batch.push((Op::Generate(i), cmd::generate(s.slot, s.algorithm, None, None)));
            }
        }
        if !self.done.contains(STEP_ATTEST) {
            for (i, s) in self.plan.slots.iter().enumerate() {
                batch.push((Op::Attest(i), cmd::attest(s.slot)));
            }
            batch.push((Op::GetF9, cmd::get_data(tag::YUBICO_ATTESTATION_CERT)));
        }
        if !self.done.contains(STEP_WRITE_DISCOVERY) {
            // Last, as its "not found" stops the relay.
            batch.push((Op::GetDiscovery, cmd::get_data(tag::DISCOVERY)));
        }
        if batch.is_empty() {
            return self.after_personalize();
        }
        self.state = State::Personalize;
        Ok(self.transmit(batch))
    }

    fn on_personalize(&mut self, responses: Vec<Response>) -> Result<Step, EngineError> {
        let pairs = pair_responses(&self.pending, responses)?;
        for (op, resp) in pairs {
            let step = self.op_step(op);
            if !resp.sw.is_success() {
                if op.tolerates(resp.sw) && op == Op::GetDiscovery {
                    self.card.discovery_present = Some(false);
                    continue;
                }
                return Err(EngineError::CardRefused { step, command: op.command_name(), sw: resp.sw });
            }
            match op {
                Op::SetMgmKey => {
                    self.done.insert(STEP_ROTATE);
                    let alg = self.new_key_alg.map(|a| a.name()).unwrap_or_default();
                    self.note(step, format!("management key rotated to a new {alg} key"));
                }
                Op::VerifyFactoryPin => {}
                Op::SetRetries => {
                    self.done.insert(STEP_SET_RETRIES);
                }
                Op::ChangePuk => {
                    self.done.insert(STEP_SET_PUK);
                }
                Op::ChangePin => {
                    self.done.insert(STEP_SET_PIN);
                }
                Op::Generate(i) => {
                    let s = self.plan.slots.get(i).ok_or_else(|| Self::bad(step, op, "no such slot"))?;
                    let pk =
                        cmd::parse_generate(s.algorithm, &resp.data).map_err(|e| Self::bad(step, op, e))?;
                    self.keys[i] = Some(GeneratedKey {
                        slot: s.slot,
                        algorithm: s.algorithm,
                        public_key_spki_der: pk.to_spki_der(),
                        attestation: None,
                    });
                    // A new key invalidates an earlier attestation and certificate.
                    self.certificates[i] = None;
                    self.done.remove(STEP_ISSUE_CERTIFICATES);
                    self.done.insert(step);
                    let note = format!("{} key generated in {}", s.algorithm, s.slot);
                    self.note(step, note);
                }
                Op::Attest(i) => {
                    if resp.data.first() != Some(&0x30) {
                        return Err(Self::bad(step, op, "not a DER certificate"));
                    }
                    self.attestations[i] = Some(resp.data);
                }
                Op::GetF9 => {
                    let f9 = CertificateObject::decode(&resp.data).map_err(|e| Self::bad(step, op, e))?;
                    self.f9_cert = Some(f9.der);
                    self.attach_attestations(step, op)?;
                    self.done.insert(STEP_ATTEST);
                }
                Op::GetDiscovery => {
                    self.card.discovery_present = Some(Discovery::decode(&resp.data).is_ok());
                }
                _ => return Err(Self::bad(step, op, "unexpected command in the personalization batch")),
            }
        }
        self.after_personalize()
    }

    fn attach_attestations(&mut self, step: &'static str, op: Op) -> Result<(), EngineError> {
        let f9 = self.f9_cert.clone().ok_or_else(|| Self::bad(step, op, "no attestation certificate"))?;
        for (key, att) in self.keys.iter_mut().zip(&self.attestations) {
            if let (Some(key), Some(att)) = (key.as_mut(), att) {
                if !contains(att, &key.public_key_spki_der) {
                    return Err(Self::bad(
                        step,
                        op,
                        format!("the attestation of {} certifies another key", key.slot),
                    ));
                }
                key.attestation =
                    Some(Attestation { attestation_cert_der: att.clone(), f9_cert_der: f9.clone() });
            }
        }
        Ok(())
    }

    fn op_step(&self, op: Op) -> &'static str {
        match op {
            Op::SetMgmKey => STEP_ROTATE,
            Op::VerifyFactoryPin | Op::SetRetries => STEP_SET_RETRIES,
            Op::ChangePuk => STEP_SET_PUK,
            Op::ChangePin => STEP_SET_PIN,
            Op::Generate(i) => self.plan.slots.get(i).map_or("generate", |s| generate_step(s.slot)),
            Op::Attest(_) | Op::GetF9 => STEP_ATTEST,
            Op::WriteCert(_) => STEP_WRITE_CERTIFICATES,
            Op::WriteChuid => STEP_WRITE_CHUID,
            Op::WriteCcc => STEP_WRITE_CCC,
            Op::WriteDiscovery | Op::GetDiscovery => STEP_WRITE_DISCOVERY,
            Op::WriteKeyHistory => STEP_WRITE_KEY_HISTORY,
            Op::Witness | Op::Mutual => STEP_AUTHENTICATE,
            _ => STEP_DETECT,
        }
    }

    fn after_personalize(&mut self) -> Result<Step, EngineError> {
        if self.card.discovery_present == Some(true) {
            self.done.insert(STEP_WRITE_DISCOVERY);
            self.note(STEP_WRITE_DISCOVERY, "the card has a discovery object: kept");
        }
        if self.done.contains(STEP_ISSUE_CERTIFICATES) {
            return self.after_certificates();
        }
        let keys: Vec<GeneratedKey> = self.keys.iter().flatten().cloned().collect();
        if keys.len() != self.plan.slots.len() {
            return Err(EngineError::BadResponse {
                step: STEP_ISSUE_CERTIFICATES,
                command: "GENERATE",
                reason: "not every planned key was generated".into(),
            });
        }
        self.state = State::AwaitCertificates;
        Ok(Step::IssueCertificates(keys))
    }

    // ---- certificates and CHUID signature ----

    fn on_certificates(&mut self, certs: Vec<(Slot, Vec<u8>)>) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::BadCertificates(m));
        if certs.len() != self.plan.slots.len() {
            return bad(format!("{} certificate(s) for {} key(s)", certs.len(), self.plan.slots.len()));
        }
        let mut out = vec![None; self.plan.slots.len()];
        for (slot, der) in certs {
            let Some(i) = self.slot_index(slot) else { return bad(format!("slot {slot} was not planned")) };
            if out[i].is_some() {
                return bad(format!("two certificates for {slot}"));
            }
            let Some(key) = &self.keys[i] else { return bad(format!("no key in {slot}")) };
            if der.first() != Some(&0x30) || !contains(&der, &key.public_key_spki_der) {
                return bad(format!("the certificate for {slot} does not certify the key generated there"));
            }
            out[i] = Some(der);
        }
        self.certificates = out;
        self.done.insert(STEP_ISSUE_CERTIFICATES);
        self.note(STEP_ISSUE_CERTIFICATES, format!("{} certificate(s) received", self.certificates.len()));
        Ok(())
    }

    fn after_certificates(&mut self) -> Result<Step, EngineError> {
        if self.done.contains(STEP_SIGN_CHUID) {
            return self.write();
        }
        self.state = State::AwaitSignature;
        Ok(Step::SignChuid(self.plan.chuid()?.signed_content()))
    }

    // ---- writes ----

    fn write(&mut self) -> Result<Step, EngineError> {
        let mut batch = Vec::new();
        if !self.done.contains(STEP_WRITE_CERTIFICATES) {
            for (i, (s, der)) in self.plan.slots.iter().zip(&self.certificates).enumerate() {
                let der = der
                    .clone()
                    .ok_or_else(|| EngineError::BadCertificates(format!("none for {}", s.slot)))?;
                let tag = s
                    .slot
                    .certificate_tag()
                    .ok_or_else(|| EngineError::InvalidPlan(format!("slot {}", s.slot)))?;
                batch
                    .push((Op::WriteCert(i), cmd::put_data(tag, &CertificateObject::new(der).encode(false))));
            }
        }
        if !self.done.contains(STEP_WRITE_CHUID) {
            let mut chuid = self.plan.chuid()?;
            chuid.signature = self.chuid_signature.clone().ok_or(EngineError::BadSignature("missing"))?;
            batch.push((Op::WriteChuid, cmd::put_data(tag::CHUID, &chuid.encode())));
        }
        if !self.done.contains(STEP_WRITE_CCC) {
            batch.push((
                Op::WriteCcc,
                cmd::put_data(tag::CARD_CAPABILITY_CONTAINER, &self.plan.ccc().encode()),
            ));
        }
        if !self.done.contains(STEP_WRITE_DISCOVERY) {
            batch.push((Op::WriteDiscovery, cmd::put_data(tag::DISCOVERY, &Discovery::default().encode())));
        }
        if !self.done.contains(STEP_WRITE_KEY_HISTORY) {
            let kh = KeyHistory::new(0, 0, None).map_err(|e| EngineError::InvalidPlan(e.to_string()))?;
            batch.push((Op::WriteKeyHistory, cmd::put_data(tag::KEY_HISTORY, &kh.encode())));
        }
        if batch.is_empty() {
            return Ok(Step::Done(self.outcome()));
        }
        self.state = State::Write;
        Ok(self.transmit(batch))
    }

    fn on_write(&mut self, responses: Vec<Response>) -> Result<Step, EngineError> {
        let pairs = pair_responses(&self.pending, responses)?;
        let certs = self.pending.iter().filter(|o| matches!(o, Op::WriteCert(_))).count();
        let mut certs_written = 0;
        for (op, resp) in pairs {
            let step = self.op_step(op);
            if !resp.sw.is_success() {
                return Err(EngineError::CardRefused { step, command: op.command_name(), sw: resp.sw });
            }
            if matches!(op, Op::WriteCert(_)) {
                certs_written += 1;
                if certs_written == certs {
                    self.done.insert(step);
                }
            } else {
                self.done.insert(step);
            }
        }
        self.note(STEP_WRITE_KEY_HISTORY, "certificates, CHUID, CCC and key history written");
        Ok(Step::Done(self.outcome()))
    }

    fn outcome(&self) -> IssuanceOutcome {
        IssuanceOutcome {
            management_key_algorithm: self.new_key_alg.unwrap_or(self.plan.new_management_key.algorithm()),
            serial: self.card.serial,
            version: self.card.version,
            keys: self.keys.iter().flatten().cloned().collect(),
            round_trips: self.round_trips,
            total_round_trips: self.prior_round_trips + self.round_trips,
            log: self.log.clone(),
        }
    }

    /// The fewest round trips an uninterrupted issuance takes on a YubiKey: detect, witness,
    /// mutual authentication, personalization, writes; one more on firmware before 5.3, where
    /// GET METADATA stops the detect batch.
    pub fn minimum_round_trips(version: Version) -> u32 {
        if version >= Version(5, 3, 0) { 5 } else { 6 }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Rollback
// ---------------------------------------------------------------------------------------------

/// What a rollback answers with.
#[derive(Clone, PartialEq, Eq)]
pub enum RollbackStep {
    Transmit(Vec<Command>),
    /// The card is in factory state: reset, the factory key authenticates, the default PIN
    /// verifies and no CHUID is left.
    Done {
        round_trips: u32,
    },
    Failed(EngineError),
}

impl fmt::Debug for RollbackStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RollbackStep::Transmit(c) => f.debug_tuple("Transmit").field(&commands_summary(c)).finish(),
            RollbackStep::Done { round_trips } => {
                f.debug_struct("Done").field("round_trips", round_trips).finish()
            }
            RollbackStep::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

enum RollbackState {
    Start,
    Detect,
    BlockPin(u32),
    BlockPuk(u32),
    Reset,
    Metadata,
    Auth(Auth),
    Verify,
    Done,
    Failed(EngineError),
}

/// Returns a YubiKey to factory state after a failed issuance: blocks the PIN and the PUK with
/// wrong values (one round trip per try, as every wrong try stops the relay), RESET, then proves
/// the result by authenticating with a factory key and verifying the default PIN. Needs no
/// secret, so it works whatever the issuance got to. The server revokes the certificates.
pub struct Rollback {
    factory_keys: Vec<ManagementKey>,
    state: RollbackState,
    version: Option<Version>,
    pending: Vec<Op>,
    round_trips: u32,
}

impl fmt::Debug for Rollback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rollback").field("round_trips", &self.round_trips).finish_non_exhaustive()
    }
}

impl Rollback {
    pub fn new(factory_keys: Vec<ManagementKey>) -> Self {
        Self { factory_keys, state: RollbackState::Start, version: None, pending: Vec::new(), round_trips: 0 }
    }

    pub fn next(&mut self, input: Input) -> RollbackStep {
        match &self.state {
            RollbackState::Failed(e) => return RollbackStep::Failed(e.clone()),
            RollbackState::Done => return RollbackStep::Done { round_trips: self.round_trips },
            _ => {}
        }
        match self.advance(input) {
            Ok(batch) if batch.is_empty() => {
                self.state = RollbackState::Done;
                RollbackStep::Done { round_trips: self.round_trips }
            }
            Ok(batch) => {
                self.round_trips += 1;
                let (ops, commands): (Vec<Op>, Vec<Command>) = batch.into_iter().unzip();
                self.pending = ops;
                RollbackStep::Transmit(commands)
            }
            Err(e) => {
                self.state = RollbackState::Failed(e.clone());
                RollbackStep::Failed(e)
            }
        }
    }

    fn block_pin() -> Result<(Op, Command), EngineError> {
        Ok((Op::BlockPin, cmd::verify_pin(WRONG_VALUE).map_err(|e| EngineError::InvalidPlan(e.to_string()))?))
    }

    fn block_puk() -> Result<(Op, Command), EngineError> {
        let c =
            cmd::unblock_pin(WRONG_VALUE, b"000000").map_err(|e| EngineError::InvalidPlan(e.to_string()))?;
        Ok((Op::BlockPuk, c))
    }

    /// Returns the next batch, or an empty one when finished.
    fn advance(&mut self, input: Input) -> Result<Vec<(Op, Command)>, EngineError> {
        const STEP: &str = "rollback";
        let state = std::mem::replace(&mut self.state, RollbackState::Start);
        let responses = match (&state, input) {
            (RollbackState::Start, Input::Start) => {
                self.state = RollbackState::Detect;
                return Ok(vec![(Op::Select, cmd::select()), (Op::Version, cmd::get_version())]);
            }
            (RollbackState::Start, other) => {
                return Err(EngineError::UnexpectedInput { expected: "Start", got: other.name() });
            }
            (_, Input::Responses(r)) => r,
            (_, other) => {
                return Err(EngineError::UnexpectedInput { expected: "Responses", got: other.name() });
            }
        };
        let pairs = pair_responses(&self.pending, responses)?;
        let refused = |op: Op, sw| EngineError::CardRefused { step: STEP, command: op.command_name(), sw };
        match state {
            RollbackState::Detect => {
                for (op, resp) in &pairs {
                    match op {
                        Op::Select if !resp.sw.is_success() => return Err(EngineError::NotPiv(resp.sw)),
                        Op::Version if resp.sw.is_success() => {
                            self.version =
                                Some(cmd::parse_version(&resp.data).map_err(|e| Engine::bad(STEP, *op, e))?);
                        }
                        _ => {}
                    }
                }
                if self.version.is_none() {
                    return Err(EngineError::Unsupported {
                        step: STEP,
                        reason: "not a YubiKey: no RESET command to return the card to factory state".into(),
                    });
                }
                self.state = RollbackState::BlockPin(1);
                Ok(vec![Self::block_pin()?])
            }
            RollbackState::BlockPin(n) | RollbackState::BlockPuk(n) => {
                let pin = matches!(state, RollbackState::BlockPin(_));
                let [(op, resp)] = pairs.as_slice() else {
                    return Err(EngineError::ResponseCount { sent: self.pending.len(), got: pairs.len() });
                };
                match resp.sw {
                    StatusWord::AuthenticationBlocked | StatusWord::WrongPin { retries: 0 } if pin => {
                        self.state = RollbackState::BlockPuk(1);
                        Ok(vec![Self::block_puk()?])
                    }
                    StatusWord::AuthenticationBlocked | StatusWord::WrongPin { retries: 0 } => {
                        self.state = RollbackState::Reset;
                        Ok(vec![(Op::Reset, cmd::reset())])
                    }
                    StatusWord::WrongPin { .. } if n < MAX_BLOCK_TRIES => {
                        let next = n + 1;
                        self.state =
                            if pin { RollbackState::BlockPin(next) } else { RollbackState::BlockPuk(next) };
                        Ok(vec![if pin { Self::block_pin()? } else { Self::block_puk()? }])
                    }
                    sw => Err(refused(*op, sw)),
                }
            }
            RollbackState::Reset => {
                let [(op, resp)] = pairs.as_slice() else {
                    return Err(EngineError::ResponseCount { sent: self.pending.len(), got: pairs.len() });
                };
                if !resp.sw.is_success() {
                    return Err(refused(*op, resp.sw));
                }
                self.state = RollbackState::Metadata;
                Ok(vec![
                    (Op::Select, cmd::select()),
                    (Op::Metadata(Slot::MANAGEMENT.0), cmd::get_metadata(Slot::MANAGEMENT.0)),
                ])
            }
            RollbackState::Metadata => {
                let mut reported = None;
                for (op, resp) in &pairs {
                    if !resp.sw.is_success() && !op.tolerates(resp.sw) {
                        return Err(refused(*op, resp.sw));
                    }
                    if let (Op::Metadata(_), true) = (op, resp.sw.is_success()) {
                        let m = cmd::parse_metadata(&resp.data).map_err(|e| Engine::bad(STEP, *op, e))?;
                        reported = m.algorithm.and_then(|a| MgmAlgorithm::from_id(a).ok());
                    }
                }
                let mut auth = Auth::new(order_factory_keys(&self.factory_keys, reported, self.version));
                let AuthProgress::Send(op, command) = auth.start()? else {
                    return Err(EngineError::WrongManagementKey { tried: 0 });
                };
                self.state = RollbackState::Auth(auth);
                Ok(vec![(op, command)])
            }
            RollbackState::Auth(mut auth) => {
                let [(op, resp)] = pairs.as_slice() else {
                    return Err(EngineError::ResponseCount { sent: self.pending.len(), got: pairs.len() });
                };
                match auth.on_response(STEP, *op, resp)? {
                    AuthProgress::Send(op, command) => {
                        self.state = RollbackState::Auth(auth);
                        Ok(vec![(op, command)])
                    }
                    AuthProgress::Authenticated(_) => {
                        self.state = RollbackState::Verify;
                        let verify = cmd::verify_pin(FACTORY_PIN)
                            .map_err(|e| EngineError::InvalidPlan(e.to_string()))?;
                        Ok(vec![(Op::VerifyFactoryPin, verify), (Op::GetChuid, cmd::get_data(tag::CHUID))])
                    }
                }
            }
            RollbackState::Verify => {
                let expected = self.pending.len();
                for (op, resp) in &pairs {
                    if !resp.sw.is_success() && !op.tolerates(resp.sw) {
                        return Err(refused(*op, resp.sw));
                    }
                    if *op == Op::GetChuid && resp.sw.is_success() {
                        return Err(Engine::bad(STEP, *op, "a CHUID is still on the card after RESET"));
                    }
                }
                if pairs.len() != expected {
                    return Err(EngineError::ResponseCount { sent: expected, got: pairs.len() });
                }
                Ok(Vec::new())
            }
            RollbackState::Start | RollbackState::Done | RollbackState::Failed(_) => {
                Err(EngineError::UnexpectedInput { expected: "nothing", got: "Responses" })
            }
        }
    }
}

#[cfg(test)]
mod tests;
