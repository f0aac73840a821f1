//! A server-driven card session (DESIGN §4, `docs/agent.md`).
//!
//! The agent opens a WebSocket to the server with a one-time ticket, introduces the card, then
//! does what each frame says: send a batch of APDUs and return the answers, send a batch of CTAP
//! requests to the card's FIDO authenticator ([`crate::fido`]) and return its answers, or change
//! the PIN with a new PIN it obtains locally. Every frame that talks to PIV finds PIV selected,
//! whatever a CTAP batch before it selected. [`Relay`] handles one frame at a time and owns the card;
//! [`run_session_with`] is the socket loop around it.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use lanyard_core::ids::DeviceId;
pub use lanyard_core::lifecycle::DeviceState;
use lanyard_core::model::{PinRuleError, PinRules};
use lanyard_ctap::consts::status;
use lanyard_ctap::transport::nfc::NfcCtap;
use lanyard_ctap::transport::{CtapTransport, CtapTransportError, command_name};
use lanyard_piv::apdu::Command;
use lanyard_piv::transport::{PcscTransport, reader_states};
use lanyard_piv::{ApduHandler, CardTransport, InProcess, Piv, PivError, TransportError, commands};
use lanyard_protocol::link::{FEATURE_CTAP, FEATURE_SERVER_PIN};
use lanyard_protocol::url::parse_server;
use lanyard_protocol::{
    AgentFrame, MAX_BATCH, MAX_CTAP_BATCH, MAX_FRAME, PROTOCOL_VERSION, ServerFrame, Side, TICKET_HEADER,
    VERSION_HEADER, check_version,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};
use zeroize::{Zeroize, Zeroizing};

use crate::fido::{BoxedTransport, FidoHid, SysfsHid, is_yubikey_reader};
use crate::{AGENT_NAME, AgentError};

/// How many times a [`PinSource`] may offer a PIN that breaks the rules before the agent gives up.
pub const PIN_ATTEMPTS: usize = 3;

/// Where and how to connect.
#[derive(Clone)]
pub struct SessionOptions {
    /// The server's base URL: `https://host[:port][/prefix]` (`wss://` also accepted). `http://`
    /// and `ws://` only to a loopback host.
    pub server: String,
    /// The one-time agent ticket the server gave with the job.
    pub ticket: Zeroizing<String>,
    /// The PC/SC reader name, exactly as [`crate::cards::list_cards`] reports it.
    pub reader: String,
    /// PEM trust anchors for the server's certificate (Lanyard's own root); `None` trusts the
    /// system's roots.
    pub ca_pem: Option<Vec<u8>>,
    pub connect_timeout: Duration,
    /// How long to wait for the server's next frame.
    pub read_timeout: Duration,
    /// The paired agent's credential, sent beside the ticket (`Authorization: Bearer`): a job the
    /// server sent over the agent link runs only with it. `None` for a ticket typed by hand.
    pub credential: Option<Zeroizing<String>>,
}

impl SessionOptions {
    pub fn new(server: impl Into<String>, ticket: impl Into<String>, reader: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            ticket: Zeroizing::new(ticket.into()),
            reader: reader.into(),
            ca_pem: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(300),
            credential: None,
        }
    }
}

impl std::fmt::Debug for SessionOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionOptions")
            .field("server", &self.server)
            .field("ticket", &"<redacted>")
            .field("reader", &self.reader)
            .field("ca_pem", &self.ca_pem.as_ref().map(|p| p.len()))
            .field("credential", &self.credential.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// What the session has got to, for a progress display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Progress {
    /// The WebSocket is open and the card introduced.
    Connected,
    /// A batch of APDUs for `step` is going to the card; `done` of `total` steps are complete.
    Step {
        step: String,
        done: u32,
        total: u32,
    },
    /// The agent reaches the card's FIDO authenticator through `via` (`PC/SC reader "…"`, or
    /// `USB HID /dev/hidrawN (…)`) for this session's `ctap` frames.
    FidoReached {
        via: String,
    },
    /// The authenticator answered one CTAP request: the command's and the status's names only
    /// (requests and answers carry encrypted PINs and tokens).
    Ctap {
        command: String,
        status: String,
    },
    /// The server asks for the definitive PIN.
    PinRequested,
    PinChanged,
    PinChangeSkipped,
    /// The new PIN came after the server's deadline and was not written; the card keeps its
    /// initial PIN.
    PinTooLate,
}

/// What happened to the PIN during the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "pin", content = "reason", rename_all = "snake_case")]
pub enum PinOutcome {
    /// The server did not ask.
    NotAsked,
    Changed,
    Skipped,
    /// The change failed; the reason went to the server too.
    Failed(String),
    /// The new PIN was ready only after the server's deadline (or after the server ended the
    /// session), so it was not written: the card keeps its initial PIN.
    TooLate(String),
}

/// A session that ended with the server's `done`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub device: DeviceId,
    pub state: DeviceState,
    pub pin: PinOutcome,
}

/// What a [`PinSource`] is asked.
#[derive(Debug, Clone, Copy)]
pub struct PinPrompt<'a> {
    pub rules: &'a PinRules,
    /// Why the previous answer broke `rules`.
    pub rejected: Option<&'a PinRuleError>,
    /// The server's deadline for the new PIN (from the frame's `answer_within_secs`, counted
    /// from its arrival). A PIN given later is not written to the card.
    pub deadline: Instant,
}

impl PinPrompt<'_> {
    /// How long the holder still has.
    pub fn time_left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// Where the definitive PIN comes from: a prompt, a file or variable for scripts, the portal
/// over loopback.
pub trait PinSource {
    /// The new PIN, or `None` to keep the initial PIN (the device stays Pending). A source that
    /// cannot ask again after `prompt.rejected` returns an error; one that waits for a person
    /// should give up at `prompt.deadline`.
    fn new_pin(&mut self, prompt: &PinPrompt<'_>) -> Result<Option<Zeroizing<String>>, AgentError>;
}

/// A PIN fixed in advance (from `LANYARD_NEW_PIN` or a file).
pub struct FixedPin(pub Zeroizing<String>);

impl PinSource for FixedPin {
    fn new_pin(&mut self, prompt: &PinPrompt<'_>) -> Result<Option<Zeroizing<String>>, AgentError> {
        match prompt.rejected {
            Some(e) => Err(AgentError::Pin(e.to_string())),
            None => Ok(Some(self.0.clone())),
        }
    }
}

/// Declines every PIN change.
pub struct SkipPinChange;

impl PinSource for SkipPinChange {
    fn new_pin(&mut self, _prompt: &PinPrompt<'_>) -> Result<Option<Zeroizing<String>>, AgentError> {
        Ok(None)
    }
}

/// A card transport that can tell whether its card is still there. The relay asks before every
/// batch: an APDU sent to a card that is being pulled makes pcscd's reset of it fail.
pub trait SessionCard: CardTransport {
    fn still_present(&mut self) -> bool;

    /// Drops the connection and makes a new one to the card in the same reader, waiting a
    /// little for the reader to show a card. Whether that worked; cards that cannot do it say
    /// no.
    fn reopen(&mut self) -> bool {
        false
    }

    /// The PC/SC reader's name, for a card in one: the relay looks for a YubiKey's FIDO HID
    /// interface only when the reader is the key's own.
    fn reader_name(&self) -> Option<&str> {
        None
    }
}

impl<T: SessionCard + ?Sized> SessionCard for &mut T {
    fn still_present(&mut self) -> bool {
        (**self).still_present()
    }

    fn reader_name(&self) -> Option<&str> {
        (**self).reader_name()
    }

    fn reopen(&mut self) -> bool {
        (**self).reopen()
    }
}

impl<H: ApduHandler> SessionCard for InProcess<H> {
    fn still_present(&mut self) -> bool {
        true
    }
}

/// A card in a PC/SC reader whose presence is read from pcscd's reader state.
#[derive(Debug)]
pub struct PcscCard {
    transport: PcscTransport,
}

impl PcscCard {
    /// Connects to the card in the reader named exactly `reader`, if pcscd sees one there.
    pub fn connect(reader: &str) -> Result<Self, AgentError> {
        let fail = |source| AgentError::Reader { reader: reader.to_owned(), source };
        let present = reader_states()
            .map_err(AgentError::Pcsc)?
            .into_iter()
            .find(|s| s.name == reader)
            .ok_or_else(|| fail(TransportError::NoReader(reader.to_owned())))?
            .card_present;
        if !present {
            return Err(fail(TransportError::CardGone));
        }
        Ok(Self { transport: PcscTransport::connect_exact(reader).map_err(fail)? })
    }

    pub fn atr(&mut self) -> Result<Vec<u8>, AgentError> {
        self.transport
            .atr()
            .map_err(|source| AgentError::Reader { reader: self.transport.reader().to_owned(), source })
    }
}

impl CardTransport for PcscCard {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.transport.transmit(apdu)
    }
}

impl SessionCard for PcscCard {
    fn reader_name(&self) -> Option<&str> {
        Some(self.transport.reader())
    }

    fn still_present(&mut self) -> bool {
        let name = self.transport.reader();
        reader_states().is_ok_and(|states| states.iter().any(|s| s.name == name && s.card_present))
    }

    fn reopen(&mut self) -> bool {
        // A card that was pulled and put back can take a few of pcscd's polls to show again (and
        // to stop showing as the card that left).
        for _ in 0..REOPEN_POLLS {
            std::thread::sleep(REOPEN_POLL);
            if self.still_present()
                && let Ok(transport) = PcscTransport::connect_exact(self.transport.reader())
            {
                self.transport = transport;
                return true;
            }
        }
        false
    }
}

/// How long [`PcscCard::reopen`] waits for the card: 50 polls of 100 ms.
const REOPEN_POLLS: usize = 50;
const REOPEN_POLL: Duration = Duration::from_millis(100);

/// SELECT's instruction byte.
const SELECT_INS: u8 = 0xA4;
/// How many new connections the session's first SELECT may take.
const FIRST_SELECT_TRIES: usize = 10;

/// What the relay may ask of the connection while it works on a frame.
pub trait ServerLink {
    /// Whether the server has already ended the session (closed, or sent its last frame while
    /// the agent was busy). Must not block.
    fn server_ended(&mut self) -> bool;
}

/// A relay without a live connection (tests that feed frames by hand): the server never ends.
pub struct Unlinked;

impl ServerLink for Unlinked {
    fn server_ended(&mut self) -> bool {
        false
    }
}

// ---------------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------------

fn error_frame(seq: Option<u64>, message: &str) -> String {
    AgentFrame::Error { seq, message: message.to_owned() }.to_text()
}

/// The first frame of a session.
pub fn hello_frame(reader: &str, atr: &[u8]) -> String {
    AgentFrame::Hello {
        protocol: PROTOCOL_VERSION,
        agent: AGENT_NAME.to_owned(),
        reader: reader.to_owned(),
        atr: hex::encode_upper(atr),
        features: vec![FEATURE_SERVER_PIN.to_owned(), FEATURE_CTAP.to_owned()],
    }
    .to_text()
}

/// What the socket loop does after a frame.
#[derive(Debug)]
pub enum Next {
    /// Send this frame and wait for the next one.
    Send(String),
    /// Send nothing and read on: the server has already ended the session, and its last frame
    /// says how.
    Read,
    /// Send this frame (if any), close the connection and end the session with the error.
    Fail(Option<String>, AgentError),
    /// The server said `done`: close and return this.
    Finish(Outcome),
}

/// The two PIN-setting requests: CHANGE REFERENCE DATA from the initial PIN, RESET RETRY COUNTER
/// from the PUK.
#[derive(Clone, Copy)]
enum PinCommand<'a> {
    Change { old_pin: &'a str },
    Unblock { puk: &'a str },
}

impl PinCommand<'_> {
    fn name(self) -> &'static str {
        match self {
            PinCommand::Change { .. } => "CHANGE REFERENCE DATA",
            PinCommand::Unblock { .. } => "RESET RETRY COUNTER",
        }
    }

    fn build(self, new_pin: &[u8]) -> Result<Command, PivError> {
        match self {
            PinCommand::Change { old_pin } => commands::change_reference(false, old_pin.as_bytes(), new_pin),
            PinCommand::Unblock { puk } => commands::unblock_pin(puk.as_bytes(), new_pin),
        }
    }
}

/// Why PIV could not be selected again after FIDO ([`Relay::piv_selected`]).
enum Reselect {
    /// The card answered SELECT PIV with an error status; this says which.
    Refused(String),
    /// The card or the reader failed.
    Card(PivError),
}

/// Where this session's `ctap` frames go.
enum FidoRoute {
    /// Not looked for yet.
    Unknown,
    /// The FIDO application on the session's PC/SC connection.
    Pcsc,
    /// The key's USB HID interface.
    Hid(BoxedTransport),
    /// Nowhere: this says why.
    Unavailable(String),
}

/// The card side of a session: answers the server's frames one at a time.
pub struct Relay<C: SessionCard> {
    piv: Piv<C>,
    removed: bool,
    /// The card has answered a command of this session.
    answered: bool,
    pin: PinOutcome,
    fido: FidoRoute,
    /// The FIDO application was selected on the PC/SC connection (or a SELECT of it was tried)
    /// since PIV last was, so the next frame that talks to PIV selects it again first
    /// ([`Relay::piv_selected`]).
    fido_selected: bool,
    hid: Box<dyn FidoHid>,
}

impl<C: SessionCard> Relay<C> {
    pub fn new(card: C) -> Self {
        Self::with_hid(card, Box::new(SysfsHid::default()))
    }

    /// A relay that looks for a YubiKey's FIDO HID interface through `hid`.
    pub fn with_hid(card: C, hid: Box<dyn FidoHid>) -> Self {
        Self {
            piv: Piv::new(card),
            removed: false,
            answered: false,
            pin: PinOutcome::NotAsked,
            fido: FidoRoute::Unknown,
            fido_selected: false,
            hid,
        }
    }

    /// The card, for inspection after the session.
    pub fn into_card(self) -> C {
        self.piv.into_transport()
    }

    /// What happened to the PIN so far.
    pub fn pin_outcome(&self) -> &PinOutcome {
        &self.pin
    }

    /// Handles one text frame from the server. The frame's deadline counts from now.
    pub fn on_text(
        &mut self,
        text: &str,
        pins: &mut dyn PinSource,
        link: &mut dyn ServerLink,
        progress: &mut dyn FnMut(&Progress),
    ) -> Next {
        let arrived = Instant::now();
        let frame = match ServerFrame::parse(text) {
            Ok(f) => f,
            Err(e) => {
                let seq = serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64));
                let message = format!("unintelligible frame: {e}");
                return Next::Fail(Some(error_frame(seq, &message)), AgentError::Protocol(message));
            }
        };
        let within = frame.answer_within().unwrap_or_default();
        // A deadline too far away to represent is no deadline at all.
        let deadline = arrived.checked_add(within).unwrap_or(arrived + Duration::from_secs(u32::MAX.into()));
        match frame {
            ServerFrame::Transmit { seq, step, done, total, apdus, .. } => {
                progress(&Progress::Step { step, done, total });
                self.transmit(seq, &apdus, deadline)
            }
            ServerFrame::ChangePin { seq, old_pin, rules, answer_within_secs, new_pin } => {
                progress(&Progress::PinRequested);
                let command = PinCommand::Change { old_pin: old_pin.expose() };
                // A PIN the holder typed in the portal (feature `server_pin`) answers for them.
                let mut typed = new_pin.map(|p| FixedPin(Zeroizing::new(p.expose().to_owned())));
                let pins: &mut dyn PinSource = match typed.as_mut() {
                    Some(t) => t,
                    None => pins,
                };
                self.set_pin(seq, command, &rules, (deadline, answer_within_secs), pins, link, progress)
            }
            ServerFrame::UnblockPin { seq, puk, rules, answer_within_secs, new_pin } => {
                progress(&Progress::PinRequested);
                let command = PinCommand::Unblock { puk: puk.expose() };
                let mut typed = new_pin.map(|p| FixedPin(Zeroizing::new(p.expose().to_owned())));
                let pins: &mut dyn PinSource = match typed.as_mut() {
                    Some(t) => t,
                    None => pins,
                };
                self.set_pin(seq, command, &rules, (deadline, answer_within_secs), pins, link, progress)
            }
            ServerFrame::Ctap { seq, step, done, total, requests, .. } => {
                progress(&Progress::Step { step, done, total });
                self.ctap(seq, &requests, deadline, progress)
            }
            ServerFrame::Done { device, state } => {
                Next::Finish(Outcome { device, state, pin: self.pin.clone() })
            }
            ServerFrame::Error { message } => Next::Fail(None, AgentError::Server(message)),
        }
    }

    fn removed(&mut self, seq: u64) -> Next {
        self.removed = true;
        Next::Fail(Some(error_frame(Some(seq), "card removed")), AgentError::CardRemoved)
    }

    /// The card went away or the reader failed: nothing more goes to this card.
    fn card_failed(&mut self, seq: u64, e: PivError) -> Next {
        // A card pulled in the middle of a command shows as whatever the reader made of it (no
        // answer, a cut answer, a failed transaction); the reader state says what happened.
        if !matches!(e, PivError::Transport(TransportError::CardReset))
            && !self.piv.transport_mut().still_present()
        {
            return self.removed(seq);
        }
        match e {
            PivError::Transport(TransportError::CardGone) => self.removed(seq),
            // Still in the reader, but what this session had set up on it is lost; the job can
            // be resumed, and the resumed session authenticates again.
            PivError::Transport(TransportError::CardReset) => {
                self.removed = true;
                let message = TransportError::CardReset.to_string();
                Next::Fail(Some(error_frame(Some(seq), &message)), AgentError::Card(message))
            }
            PivError::Transport(t) => {
                self.removed = true;
                let message = format!("reader error: {t}");
                Next::Fail(Some(error_frame(Some(seq), &message)), AgentError::Card(message))
            }
            other => {
                let message = format!("card: {other}");
                Next::Fail(Some(error_frame(Some(seq), &message)), AgentError::Card(message))
            }
        }
    }

    fn ready(&mut self) -> bool {
        !self.removed && self.piv.transport_mut().still_present()
    }

    fn transmit(&mut self, seq: u64, apdus: &[String], deadline: Instant) -> Next {
        if apdus.len() > MAX_BATCH {
            let message = format!("a batch of {} commands is more than the {MAX_BATCH} allowed", apdus.len());
            return Next::Fail(Some(error_frame(Some(seq), &message)), AgentError::Protocol(message));
        }
        let mut commands = Vec::with_capacity(apdus.len());
        for (i, text) in apdus.iter().enumerate() {
            let parsed = hex::decode(text)
                .map_err(|e| e.to_string())
                .and_then(|raw| Command::parse(&raw).map_err(|e| e.to_string()));
            match parsed {
                Ok(c) => commands.push(c),
                Err(e) => {
                    let message = format!("command {i} of batch {seq} is not an APDU: {e}");
                    return Next::Fail(Some(error_frame(Some(seq), &message)), AgentError::Protocol(message));
                }
            }
        }
        if !self.ready() {
            return self.removed(seq);
        }
        // The server's PIV batches other than the first of a session do not SELECT PIV
        // themselves; one that does needs no SELECT from the relay.
        let selects_itself = commands.first().is_some_and(|c| c.ins == SELECT_INS);
        match self.piv_selected(selects_itself) {
            Ok(()) => {}
            Err(Reselect::Refused(message)) => {
                return Next::Fail(Some(error_frame(Some(seq), &message)), AgentError::Card(message));
            }
            Err(Reselect::Card(e)) => return self.card_failed(seq, e),
        }
        let mut responses = Vec::with_capacity(commands.len());
        for (i, mut command) in commands.into_iter().enumerate() {
            // The server no longer waits for this batch; the rest of it would change a card
            // whose record the server has stopped following.
            if Instant::now() >= deadline {
                command.data.zeroize();
                let message = format!("batch {seq} ran past its deadline after {i} commands");
                return Next::Fail(Some(error_frame(Some(seq), &message)), AgentError::Protocol(message));
            }
            let mut result = self.piv.exchange(&command);
            // The connection can be stale before the session's first answer: the card was reset,
            // or pulled and put back, since it was opened (a vpcd reader shows a card that came
            // back as never gone until a command fails). Nothing of this session is on the card
            // yet, and a SELECT changes nothing on it, so a new connection may send it again.
            // After the first answer a failed command ends the session; the job can be resumed.
            // pcscd may need a few polls to notice, so a few tries.
            let mut tries = 0;
            while !self.answered
                && command.ins == SELECT_INS
                && matches!(result, Err(PivError::Transport(_)))
                && tries < FIRST_SELECT_TRIES
                && self.piv.transport_mut().reopen()
            {
                tries += 1;
                result = self.piv.exchange(&command);
            }
            // Commands carry PINs, PUKs and keys.
            command.data.zeroize();
            if result.is_ok() {
                self.answered = true;
            }
            match result {
                Ok(resp) => {
                    let stop = !resp.sw.is_success();
                    responses.push(hex::encode_upper(resp.to_bytes()));
                    if stop {
                        break;
                    }
                }
                Err(e) => return self.card_failed(seq, e),
            }
        }
        Next::Send(AgentFrame::Responses { seq, responses }.to_text())
    }

    /// Makes sure PIV is the selected application before a frame that talks to it: every PIV
    /// path (`transmit`, `change_pin`, `unblock_pin`) comes through here first. When the FIDO
    /// application was selected on the connection since PIV last was (a CTAP batch, or a SELECT
    /// FIDO that was tried), PIV is selected again, unless the frame's own first command is a
    /// SELECT (`selects_itself`).
    fn piv_selected(&mut self, selects_itself: bool) -> Result<(), Reselect> {
        if !self.fido_selected {
            return Ok(());
        }
        if !selects_itself {
            match self.piv.exchange(&lanyard_piv::commands::select()) {
                Ok(resp) if resp.sw.is_success() => self.answered = true,
                Ok(resp) => {
                    return Err(Reselect::Refused(format!(
                        "the PIV application could not be selected again after the FIDO commands: {}",
                        resp.sw
                    )));
                }
                Err(e) => return Err(Reselect::Card(e)),
            }
        }
        self.fido_selected = false;
        Ok(())
    }

    /// Runs a `ctap` batch: each request in order through the route found for this session,
    /// stopping after the first answer whose status is not CTAP2_OK. No FIDO authenticator to
    /// reach, a refused or timed-out request, or a failing HID device is an `error` for this
    /// `seq` and the session goes on (the server decides); a PC/SC connection that fails ends it
    /// like a failing `transmit`.
    fn ctap(
        &mut self,
        seq: u64,
        requests: &[String],
        deadline: Instant,
        progress: &mut dyn FnMut(&Progress),
    ) -> Next {
        if requests.is_empty() || requests.len() > MAX_CTAP_BATCH {
            let message =
                format!("a CTAP batch holds 1 to {MAX_CTAP_BATCH} requests, not {}", requests.len());
            return Next::Fail(Some(error_frame(Some(seq), &message)), AgentError::Protocol(message));
        }
        let mut decoded = Vec::with_capacity(requests.len());
        for (i, text) in requests.iter().enumerate() {
            match hex::decode(text) {
                Ok(bytes) if !bytes.is_empty() => decoded.push(Zeroizing::new(bytes)),
                Ok(_) => {
                    let message = format!("CTAP request {i} of batch {seq} has no command byte");
                    return Next::Fail(Some(error_frame(Some(seq), &message)), AgentError::Protocol(message));
                }
                Err(e) => {
                    let message = format!("CTAP request {i} of batch {seq} is not hex: {e}");
                    return Next::Fail(Some(error_frame(Some(seq), &message)), AgentError::Protocol(message));
                }
            }
        }
        if !self.ready() {
            return self.removed(seq);
        }
        let mut responses = Vec::with_capacity(decoded.len());
        for (i, request) in decoded.iter().enumerate() {
            // Checked before the authenticator is looked for too: a batch whose time is up
            // touches nothing.
            if Instant::now() >= deadline {
                let message = format!("CTAP batch {seq} ran past its deadline after {i} requests");
                return Next::Fail(Some(error_frame(Some(seq), &message)), AgentError::Protocol(message));
            }
            if i == 0
                && let Some(next) = self.find_fido(seq, progress)
            {
                return next;
            }
            let result = match &mut self.fido {
                FidoRoute::Pcsc => {
                    let card = self.piv.transport_mut();
                    let mut nfc = NfcCtap::new(|apdu: &[u8]| card.transmit(apdu), "");
                    if self.fido_selected { Ok(()) } else { nfc.select().map(|_| ()) }
                        .and_then(|()| nfc.ctap(request, deadline))
                }
                FidoRoute::Hid(transport) => transport.ctap(request, deadline),
                // `find_fido` answered the frame itself for these.
                FidoRoute::Unknown | FidoRoute::Unavailable(_) => Err(CtapTransportError::Protocol(
                    "no FIDO authenticator was found for this session".into(),
                )),
            };
            if matches!(self.fido, FidoRoute::Pcsc) {
                self.fido_selected = true;
            }
            let command = command_name(request[0]);
            match result {
                Ok(answer) => {
                    self.answered = true;
                    let Some(&code) = answer.first() else {
                        return Next::Send(error_frame(
                            Some(seq),
                            &format!("{command}: an answer without a status byte"),
                        ));
                    };
                    progress(&Progress::Ctap {
                        command: command.to_owned(),
                        status: status::name(code).to_owned(),
                    });
                    responses.push(hex::encode_upper(&answer));
                    if code != status::OK {
                        break;
                    }
                }
                Err(CtapTransportError::Io(reason)) if matches!(self.fido, FidoRoute::Pcsc) => {
                    return self.card_failed(seq, PivError::Transport(TransportError::Other(reason)));
                }
                Err(e) => {
                    if let (FidoRoute::Hid(t), CtapTransportError::Io(_)) = (&self.fido, &e) {
                        // A device that failed is looked for again on the next batch.
                        let via = t.describe();
                        self.fido = FidoRoute::Unknown;
                        return Next::Send(error_frame(Some(seq), &format!("{command} through {via}: {e}")));
                    }
                    return Next::Send(error_frame(Some(seq), &format!("{command}: {e}")));
                }
            }
        }
        Next::Send(AgentFrame::CtapResponses { seq, responses }.to_text())
    }

    /// Finds the card's FIDO authenticator for this session, the first time it is needed: the
    /// FIDO application on the PC/SC connection, else a YubiKey's HID interface. `Some` is the
    /// answer to the frame when there is none to use (or the card failed).
    fn find_fido(&mut self, seq: u64, progress: &mut dyn FnMut(&Progress)) -> Option<Next> {
        if let FidoRoute::Unavailable(reason) = &self.fido {
            return Some(Next::Send(error_frame(Some(seq), reason)));
        }
        if !matches!(self.fido, FidoRoute::Unknown) {
            return None;
        }
        let reader = self.piv.transport_mut().reader_name().map(str::to_owned);
        let card = self.piv.transport_mut();
        let selected = NfcCtap::new(|apdu: &[u8]| card.transmit(apdu), "").select();
        // Whatever SELECT answered, PIV may no longer be the selected application.
        self.fido_selected = true;
        let refused = match selected {
            Ok(_) => {
                self.answered = true;
                self.fido = FidoRoute::Pcsc;
                let via = match &reader {
                    Some(r) => format!("PC/SC reader {r:?}"),
                    None => "the session's card connection".to_owned(),
                };
                progress(&Progress::FidoReached { via });
                return None;
            }
            Err(CtapTransportError::Io(reason)) => {
                return Some(self.card_failed(seq, PivError::Transport(TransportError::Other(reason))));
            }
            Err(e) => e,
        };
        self.answered = true;
        self.fido = match reader.as_deref() {
            Some(r) if is_yubikey_reader(r) => match self.hid.open_for(r) {
                Ok(transport) => {
                    progress(&Progress::FidoReached { via: transport.describe() });
                    FidoRoute::Hid(transport)
                }
                Err(reason) => FidoRoute::Unavailable(reason),
            },
            Some(r) => FidoRoute::Unavailable(format!(
                "reader {r:?}: {refused}; the reader is not a YubiKey's, so there is no USB HID \
                 interface to try"
            )),
            None => FidoRoute::Unavailable(refused.to_string()),
        };
        match &self.fido {
            FidoRoute::Unavailable(reason) => Some(Next::Send(error_frame(Some(seq), reason))),
            _ => None,
        }
    }

    /// Asks the PIN source for the new PIN, checks it against the rules, and sends the command
    /// `command` makes of it to the card itself, unless the server's deadline has passed or the
    /// server has ended the session meanwhile.
    #[allow(clippy::too_many_arguments)]
    fn set_pin(
        &mut self,
        seq: u64,
        command: PinCommand<'_>,
        rules: &PinRules,
        (deadline, within_secs): (Instant, u32),
        pins: &mut dyn PinSource,
        link: &mut dyn ServerLink,
        progress: &mut dyn FnMut(&Progress),
    ) -> Next {
        let what = command.name();
        let mut rejected = None;
        let mut new_pin = None;
        for _ in 0..PIN_ATTEMPTS {
            if Instant::now() >= deadline {
                break;
            }
            match pins.new_pin(&PinPrompt { rules, rejected: rejected.as_ref(), deadline }) {
                // A source that gave up at the deadline (the portal's page) is not a decision
                // to keep the initial PIN.
                Ok(None) if Instant::now() >= deadline => break,
                Ok(None) => {
                    self.pin = PinOutcome::Skipped;
                    progress(&Progress::PinChangeSkipped);
                    return Next::Send(AgentFrame::PinChangeSkipped { seq }.to_text());
                }
                Ok(Some(pin)) => match rules.check(&pin) {
                    Ok(()) => {
                        new_pin = Some(pin);
                        break;
                    }
                    Err(e) => rejected = Some(e),
                },
                Err(e) => return self.pin_failed(seq, e.to_string()),
            }
        }
        // Checked right before the card is touched: past the deadline the server may already
        // have recorded the device with its initial PIN, and a PIN written now would make the
        // card and the record disagree.
        let late = |now: Instant| {
            let late = now.duration_since(deadline).as_secs();
            format!(
                "the new PIN came {late} s after the server's deadline of {within_secs} s; \
                 the card keeps its initial PIN"
            )
        };
        if Instant::now() >= deadline {
            return self.too_late(seq, late(Instant::now()), link, progress);
        }
        let Some(new_pin) = new_pin else {
            let reason = rejected.map(|e| e.to_string()).unwrap_or_default();
            return self.pin_failed(seq, format!("new PIN refused: {reason}"));
        };
        if link.server_ended() {
            let reason = "the server ended the session before the new PIN was ready; \
                          the card keeps its initial PIN"
                .to_owned();
            return self.too_late(seq, reason, link, progress);
        }
        let mut command = match command.build(new_pin.as_bytes()) {
            Ok(c) => c,
            Err(e) => return self.pin_failed(seq, format!("cannot build {what}: {e}")),
        };
        if !self.ready() {
            command.data.zeroize();
            return self.removed(seq);
        }
        // CHANGE REFERENCE DATA and RESET RETRY COUNTER go to PIV, which a CTAP batch of this
        // session may have deselected.
        match self.piv_selected(false) {
            Ok(()) => {}
            Err(Reselect::Refused(message)) => {
                command.data.zeroize();
                return self.pin_failed(seq, message);
            }
            Err(Reselect::Card(e)) => {
                command.data.zeroize();
                return self.card_failed(seq, e);
            }
        }
        // Once more, as the presence, connection and SELECT take time of their own.
        if Instant::now() >= deadline {
            command.data.zeroize();
            return self.too_late(seq, late(Instant::now()), link, progress);
        }
        let result = self.piv.exchange(&command);
        command.data.zeroize();
        match result {
            Ok(resp) if resp.sw.is_success() => {
                self.pin = PinOutcome::Changed;
                progress(&Progress::PinChanged);
                Next::Send(AgentFrame::PinChanged { seq, sw: format!("{:04X}", resp.sw.to_u16()) }.to_text())
            }
            Ok(resp) => self.pin_failed(seq, format!("the card refused {what}: {}", resp.sw)),
            Err(e) => self.card_failed(seq, e),
        }
    }

    /// The PIN was not written because it came too late. A server still listening hears why
    /// (and records the device Pending); one that has ended the session has said so in a frame
    /// the socket loop reads next.
    fn too_late(
        &mut self,
        seq: u64,
        reason: String,
        link: &mut dyn ServerLink,
        progress: &mut dyn FnMut(&Progress),
    ) -> Next {
        progress(&Progress::PinTooLate);
        let frame = error_frame(Some(seq), &reason);
        self.pin = PinOutcome::TooLate(reason);
        if link.server_ended() { Next::Read } else { Next::Send(frame) }
    }

    /// A PIN change that did not happen; the session goes on and the server decides.
    fn pin_failed(&mut self, seq: u64, message: String) -> Next {
        let frame = error_frame(Some(seq), &message);
        self.pin = PinOutcome::Failed(message);
        Next::Send(frame)
    }

    /// The error that ends a session whose connection broke: a PIN that came too late explains
    /// more than the lost connection does.
    fn lost(&self, error: AgentError) -> AgentError {
        match &self.pin {
            PinOutcome::TooLate(reason) => AgentError::PinTooLate(reason.clone()),
            _ => error,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Connection
// ---------------------------------------------------------------------------------------------

/// A TCP connection, with TLS or (loopback only) without.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

impl Stream {
    /// How long a read may block; `None` blocks until data comes.
    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.set_read_timeout(timeout),
            Stream::Tls(s) => s.sock.set_read_timeout(timeout),
        }
    }

    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.set_nonblocking(on),
            Stream::Tls(s) => s.sock.set_nonblocking(on),
        }
    }
}

/// TLS client settings: the given PEM anchors, or the system's roots; aws-lc-rs, like the rest
/// of Lanyard.
pub fn tls_config(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, AgentError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| AgentError::CaCert(format!("not PEM certificates: {e}")))?;
                roots.add(cert).map_err(|e| AgentError::CaCert(e.to_string()))?;
            }
            // Not PEM: one DER certificate, as the server keeps its own (`<data_dir>/ca/root.crt`).
            if roots.is_empty() && pem.first() == Some(&0x30) {
                roots
                    .add(CertificateDer::from(pem.to_vec()))
                    .map_err(|e| AgentError::CaCert(format!("not a PEM or DER certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(AgentError::CaCert("no certificate in the PEM".into()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(AgentError::CaCert(
                    "no system trust anchors found; pass the server's CA certificate".into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::Tls { host: String::new(), reason: e.to_string() })?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Opens the agent channel: TCP, TLS (handshake completed here, so a certificate problem is
/// reported as such), then the WebSocket upgrade with the ticket.
pub fn connect(opts: &SessionOptions) -> Result<WebSocket<Stream>, AgentError> {
    let mut ticket = tungstenite::http::HeaderValue::from_str(&opts.ticket)
        .map_err(|_| AgentError::Protocol("the ticket contains characters a header cannot carry".into()))?;
    ticket.set_sensitive(true);
    let mut headers = vec![(TICKET_HEADER, ticket)];
    if let Some(credential) = &opts.credential {
        headers.push(("authorization", bearer(credential)?));
    }
    let dial = Dial {
        server: &opts.server,
        ca_pem: opts.ca_pem.as_deref(),
        connect_timeout: opts.connect_timeout,
        read_timeout: opts.read_timeout,
    };
    let url = parse_server(&opts.server)?.url;
    match dial.open(&url, headers) {
        Ok(mut opened) => match dial.check_version(&opened) {
            Ok(()) => Ok(opened.ws),
            Err(e) => {
                // The server has used the ticket up by now; tell it why the job goes no further.
                let _ = opened.ws.send(Message::text(error_frame(None, &e.to_string())));
                close(&mut opened.ws);
                Err(e)
            }
        },
        Err(e) => Err(e),
    }
}

/// `Bearer <credential>` as a header value marked sensitive.
pub(crate) fn bearer(credential: &str) -> Result<tungstenite::http::HeaderValue, AgentError> {
    let mut value =
        tungstenite::http::HeaderValue::from_str(&format!("Bearer {credential}")).map_err(|_| {
            AgentError::Protocol("the agent credential contains characters a header cannot carry".into())
        })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Where and how to open a WebSocket to the server: the session channel or the agent link.
pub(crate) struct Dial<'a> {
    pub server: &'a str,
    pub ca_pem: Option<&'a [u8]>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

/// An open WebSocket and the server's protocol version from its upgrade answer.
pub(crate) struct Opened {
    pub ws: WebSocket<Stream>,
    pub version: Option<String>,
}

impl Dial<'_> {
    fn check_version(&self, opened: &Opened) -> Result<(), AgentError> {
        check_version(Side::Agent, opened.version.as_deref()).map_err(AgentError::ProtocolVersion)
    }

    /// TCP, TLS (handshake completed here, so a certificate problem is reported as such), then
    /// the WebSocket upgrade to `url` with `headers` and the agent's protocol version. A refusal
    /// is [`AgentError::Server`] with the server's message, or [`AgentError::ProtocolVersion`]
    /// when the server names another version.
    pub fn open(
        &self,
        url: &str,
        headers: Vec<(&'static str, tungstenite::http::HeaderValue)>,
    ) -> Result<Opened, AgentError> {
        let opts = self;
        let target = parse_server(opts.server)?;
        let tls_config = if target.tls { Some(tls_config(opts.ca_pem)?) } else { None };
        let addr = format!("{}:{}", target.host, target.port);
        let connect_err = |source| AgentError::Connect { addr: addr.clone(), source };
        let mut last = None;
        let mut tcp = None;
        for sa in (target.host.as_str(), target.port).to_socket_addrs().map_err(connect_err)? {
            match TcpStream::connect_timeout(&sa, opts.connect_timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let tcp = tcp.ok_or_else(|| {
            connect_err(last.unwrap_or_else(|| std::io::Error::other("the host name resolves to no address")))
        })?;
        tcp.set_read_timeout(Some(opts.read_timeout)).map_err(connect_err)?;
        tcp.set_write_timeout(Some(opts.read_timeout)).map_err(connect_err)?;
        let _ = tcp.set_nodelay(true);
        let stream = if let Some(config) = tls_config {
            let tls_err = |reason: String| AgentError::Tls { host: target.host.clone(), reason };
            let name = ServerName::try_from(target.host.clone()).map_err(|e| tls_err(e.to_string()))?;
            let conn =
                rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| tls_err(e.to_string()))?;
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            while tls.conn.is_handshaking() {
                tls.conn.complete_io(&mut tls.sock).map_err(|e| tls_err(e.to_string()))?;
            }
            Stream::Tls(Box::new(tls))
        } else {
            Stream::Plain(tcp)
        };
        let mut request = url
            .into_client_request()
            .map_err(|e| AgentError::BadUrl { url: opts.server.to_owned(), reason: e.to_string() })?;
        for (name, value) in headers {
            request.headers_mut().insert(name, value);
        }
        request.headers_mut().insert(VERSION_HEADER, tungstenite::http::HeaderValue::from(PROTOCOL_VERSION));
        let config =
            WebSocketConfig::default().max_message_size(Some(MAX_FRAME)).max_frame_size(Some(MAX_FRAME));
        let version = |headers: &tungstenite::http::HeaderMap| {
            check_version(Side::Agent, headers.get(VERSION_HEADER).and_then(|v| v.to_str().ok()))
        };
        match tungstenite::client::client_with_config(request, stream, Some(config)) {
            Ok((ws, resp)) => Ok(Opened {
                ws,
                version: resp.headers().get(VERSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned),
            }),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                // A server of another version refuses this agent, and names its own version.
                if resp.headers().contains_key(VERSION_HEADER)
                    && let Err(e) = version(resp.headers())
                {
                    return Err(AgentError::ProtocolVersion(e));
                }
                let body = resp
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned())
                    .unwrap_or_default();
                Err(AgentError::Refused { status: resp.status().as_u16(), body })
            }
            Err(e) => Err(AgentError::WebSocket(e.to_string())),
        }
    }
}

fn ws_error(e: tungstenite::Error) -> AgentError {
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            AgentError::Protocol("the server closed the connection before `done`".into())
        }
        tungstenite::Error::Io(io)
            if matches!(io.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
        {
            AgentError::Protocol("no frame from the server in time".into())
        }
        other => AgentError::WebSocket(other.to_string()),
    }
}

/// Closes politely, reading until the server acknowledges (bounded: a server that never answers
/// costs at most the read timeout).
pub(crate) fn close<S: Read + Write>(ws: &mut WebSocket<S>) {
    let _ = ws.close(None);
    for _ in 0..16 {
        if ws.read().is_err() {
            break;
        }
    }
}

/// Runs a session for the card in `opts.reader` through PC/SC.
pub fn run_session(
    opts: &SessionOptions,
    pins: &mut dyn PinSource,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Outcome, AgentError> {
    // A bad URL or CA file is reported before the card is touched.
    if parse_server(&opts.server)?.tls {
        tls_config(opts.ca_pem.as_deref())?;
    }
    let mut card = PcscCard::connect(&opts.reader)?;
    let atr = card.atr()?;
    run_session_with(opts, card, &atr, pins, progress)
}

/// Runs a session with any card: opens the channel, says hello, and relays until the server says
/// `done` or `error`, or something goes wrong.
pub fn run_session_with<C: SessionCard>(
    opts: &SessionOptions,
    card: C,
    atr: &[u8],
    pins: &mut dyn PinSource,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Outcome, AgentError> {
    let mut ws = connect(opts)?;
    let mut relay = Relay::new(card);
    ws.send(Message::text(hello_frame(&opts.reader, atr))).map_err(ws_error)?;
    progress(&Progress::Connected);
    // Frames the server sent while the relay waited for a PIN, read by `Peek`.
    let mut queued = VecDeque::new();
    loop {
        let message = match queued.pop_front() {
            Some(m) => Ok(m),
            None => ws.read(),
        };
        let next = match message {
            Ok(Message::Text(text)) => {
                let mut link = Peek { ws: &mut ws, queued: &mut queued, ended: false };
                relay.on_text(text.as_str(), pins, &mut link, progress)
            }
            Ok(Message::Binary(_)) => {
                let message = "binary frames are not part of the protocol".to_owned();
                Next::Fail(Some(error_frame(None, &message)), AgentError::Protocol(message))
            }
            Ok(Message::Close(_)) => {
                close(&mut ws);
                return Err(
                    relay.lost(AgentError::Protocol("the server closed the connection before `done`".into()))
                );
            }
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
            Err(e) => return Err(relay.lost(ws_error(e))),
        };
        match next {
            Next::Send(frame) => ws.send(Message::text(frame)).map_err(|e| relay.lost(ws_error(e)))?,
            Next::Read => {}
            Next::Fail(frame, error) => {
                if let Some(frame) = frame {
                    let _ = ws.send(Message::text(frame));
                }
                close(&mut ws);
                return Err(error);
            }
            Next::Finish(outcome) => {
                close(&mut ws);
                return Ok(outcome);
            }
        }
    }
}

/// The connection as the relay sees it while it works on a frame: a look at the socket that
/// does not block, keeping whatever the server sent for the loop to read next.
struct Peek<'a> {
    ws: &'a mut WebSocket<Stream>,
    queued: &'a mut VecDeque<Message>,
    ended: bool,
}

impl ServerLink for Peek<'_> {
    fn server_ended(&mut self) -> bool {
        // The server sends nothing while it waits for an answer, so any frame means it is done.
        if self.ended || !self.queued.is_empty() {
            return true;
        }
        if self.ws.get_ref().set_nonblocking(true).is_err() {
            return false;
        }
        // Bounded, so a server that floods pings cannot hold the relay here.
        for _ in 0..64 {
            match self.ws.read() {
                Ok(m @ (Message::Text(_) | Message::Binary(_) | Message::Close(_))) => {
                    self.queued.push_back(m);
                    self.ended = true;
                }
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.ended = true;
                    break;
                }
            }
        }
        // Without blocking mode the loop's next read would fail at once; a socket that cannot
        // go back is as good as gone.
        if self.ws.get_ref().set_nonblocking(false).is_err() {
            self.ended = true;
        }
        self.ended
    }
}
