//! The agent protocol: what the Lanyard server and the workstation agent say to each other over
//! the agent WebSocket (DESIGN §4, `docs/agent.md`).
//!
//! Both sides build and parse the frames with these types, so the server's engine and the agent's
//! relay cannot drift apart; `tests/golden/*.json` pins the exact JSON of every frame.
//!
//! # A session
//!
//! The agent opens [`CONNECT_PATH`] below the server's base URL ([`url::parse_server`]) as a
//! WebSocket, sending the one-time job ticket in [`TICKET_HEADER`] and its protocol version in
//! [`VERSION_HEADER`]. The server checks the version before it looks at the ticket, so an agent
//! of another version is refused without using the ticket up ([`check_version`]); the server
//! names its own version in the same header of every answer, upgrade or refusal, and the agent
//! checks it too. Then the agent says [`AgentFrame::Hello`] and answers each [`ServerFrame`]
//! until `done` or `error`.
//!
//! # Deadlines
//!
//! Every frame that asks for an answer carries `answer_within_secs`: a duration, not a time of
//! day, because the two clocks need not agree. The agent starts counting when the frame arrives
//! and touches the card for that request only while the time has not run out; in particular it
//! never writes a new PIN after the deadline of `change_pin` or `unblock_pin`. The server waits
//! the same duration plus [`ANSWER_GRACE_SECS`] for the transit, then gives up. So an answer the
//! server no longer waits for never corresponds to a card the agent changed.
//!
//! # Growing the protocol
//!
//! The portal issue adds pairing, reader reports and several jobs on one connection. The envelope
//! is built for that:
//! - every frame is a JSON object tagged by `type`; new kinds of frame are new variants, and a
//!   peer answers a `type` it does not know with `error`, so the new frames are only sent to a
//!   peer known to understand them;
//! - what a peer understands beyond its version's base is announced, not guessed: the agent lists
//!   its optional `features` in `hello` (none in version 1), and the server sends the frames of a
//!   feature only to an agent that listed it. Pairing, reader reports (`readers`) and several
//!   jobs (`multi_job`) are such features;
//! - receivers ignore fields they do not know, so a feature may add fields to existing frames.
//!   Several jobs on one connection add an optional `job` to the session frames (absent: the job
//!   of the connection's ticket, the only one in version 1), and `seq` stays unique per
//!   connection;
//! - the agent link ([`link`], [`link::LINK_PATH`]) is such a growth: a paired agent's one
//!   long-lived connection, authenticated by its pairing credential, over which it reports
//!   readers and is asked to run sessions; each session still runs on its own [`CONNECT_PATH`]
//!   socket with the relay of version 1, the agent's credential beside the ticket;
//! - feature `server_pin` ([`link::FEATURE_SERVER_PIN`]): an agent that lists it in a session's
//!   `hello` takes the new PIN from `change_pin`/`unblock_pin`'s optional `new_pin` when the
//!   server sends one (a PIN the holder typed in the portal), and asks locally otherwise;
//! - feature `ctap` ([`link::FEATURE_CTAP`]): an agent that lists it in a session's `hello` relays
//!   [`ServerFrame::Ctap`] batches to the card's FIDO authenticator (over PC/SC, or USB HID for
//!   a YubiKey whose FIDO application is not on CCID) and answers [`AgentFrame::CtapResponses`].
//!   The agent lists it in the link's `hello` too, so the portal can tell before a job starts.
//!   The server sends `ctap` to no other agent: an agent without the feature would answer the
//!   unknown frame with `error` and end the session, so a server that needs the FIDO half of a
//!   key tells the holder to update the agent before it touches the card. A newer agent with an
//!   older server loses nothing: the older server ignores the feature;
//! - a change that an older peer would misread (a field whose absence changes the meaning, a
//!   removed frame) raises [`PROTOCOL_VERSION`], and both sides refuse a peer of another version
//!   with an error naming both.

pub mod link;
pub mod mobile;
pub mod pairing;
pub mod url;

use std::time::Duration;

use lanyard_core::ids::DeviceId;
use lanyard_core::lifecycle::DeviceState;
use lanyard_core::model::PinRules;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The protocol version both sides must share. Raise it for any change an older peer would
/// misread; additive changes go through `hello`'s `features` instead.
pub const PROTOCOL_VERSION: u32 = 1;
/// Path of the agent channel below the server's base URL.
pub const CONNECT_PATH: &str = "/api/v1/agent/connect";
/// Request header that carries the one-time job ticket.
pub const TICKET_HEADER: &str = "x-lanyard-ticket";
/// Header carrying the sender's [`PROTOCOL_VERSION`]: the agent's on the upgrade request, the
/// server's on its answer.
pub const VERSION_HEADER: &str = "x-lanyard-agent-protocol";
/// Largest WebSocket message either side accepts. A batch of PUT DATA for four certificates is
/// far below this.
pub const MAX_FRAME: usize = 1 << 20;
/// Most commands one `transmit` frame may carry; the personalization engine's largest batch has
/// about 30.
pub const MAX_BATCH: usize = 256;
/// Most requests one `ctap` frame may carry. The FIDO steps of an issuance need a handful
/// (getInfo, getKeyAgreement, setPIN, a token, authenticatorConfig).
pub const MAX_CTAP_BATCH: usize = 16;
/// What the server waits beyond a frame's `answer_within_secs` before it gives up on the answer:
/// the time the request and the answer spend in transit, and the card's own work after the
/// agent's last check of the deadline.
pub const ANSWER_GRACE_SECS: u32 = 5;

/// How long the server waits for the answer to a frame that allows `answer_within_secs`.
pub fn server_wait(answer_within_secs: u32) -> Duration {
    Duration::from_secs(u64::from(answer_within_secs) + u64::from(ANSWER_GRACE_SECS))
}

/// Which side is checking the other's version, for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Server,
    Agent,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Server => "server",
            Side::Agent => "agent",
        }
    }

    fn other(self) -> Side {
        match self {
            Side::Server => Side::Agent,
            Side::Agent => Side::Server,
        }
    }
}

/// The peer speaks another protocol version (or names none, as agents and servers from before
/// versioning do).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct VersionMismatch {
    /// The side that found the mismatch.
    pub checked_by: Side,
    /// Its own version, [`PROTOCOL_VERSION`].
    pub ours: u32,
    /// What the peer's [`VERSION_HEADER`] said, if anything.
    pub theirs: Option<String>,
}

impl VersionMismatch {
    fn describe(&self) -> String {
        let (us, them) = (self.checked_by.name(), self.checked_by.other().name());
        let theirs = match &self.theirs {
            Some(v) => format!("the {them} speaks agent protocol version {v}"),
            None => format!("the {them} names no agent protocol version (it predates version 1)"),
        };
        format!("{theirs} and the {us} version {}: use the agent release that matches the server", self.ours)
    }
}

/// Checks the peer's [`VERSION_HEADER`] value against [`PROTOCOL_VERSION`].
pub fn check_version(checked_by: Side, header: Option<&str>) -> Result<(), VersionMismatch> {
    let header = header.map(str::trim);
    if header.and_then(|v| v.parse::<u32>().ok()) == Some(PROTOCOL_VERSION) {
        return Ok(());
    }
    // Bounded, so a hostile peer cannot fill a log line.
    let theirs = header.map(|v| v.chars().take(32).collect());
    Err(VersionMismatch { checked_by, ours: PROTOCOL_VERSION, theirs })
}

/// A secret in a frame (the initial PIN, the PUK): wiped from memory when dropped, never shown
/// by `Debug`.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl PartialEq for Secret {
    /// Without an early exit on the first differing byte, so a comparison leaks only the length.
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl Eq for Secret {}

/// Frames from the server to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// One round trip: send `apdus` (hex, short or extended form) in order, stop at the first
    /// status word other than `9000`, answer `responses`. `done` of `total` steps are complete.
    Transmit { seq: u64, step: String, done: u32, total: u32, apdus: Vec<String>, answer_within_secs: u32 },
    /// One round trip with the card's FIDO authenticator (feature `ctap` only): send each of
    /// `requests` (hex of the CTAP command byte followed by its CBOR parameters) in order, stop
    /// after the first response whose status byte is not `00`, answer `ctap_responses`. The
    /// agent picks the transport (PC/SC on the session's reader, else USB HID for a YubiKey);
    /// one it cannot reach, or that fails, is answered with `error` and the session goes on.
    /// `done` of `total` steps are complete, as for `transmit`.
    Ctap { seq: u64, step: String, done: u32, total: u32, requests: Vec<String>, answer_within_secs: u32 },
    /// Set the holder's PIN with CHANGE REFERENCE DATA from `old_pin`, within the deadline;
    /// answer `pin_changed`, `pin_change_skipped` or `error`.
    /// `new_pin` (feature `server_pin` only) is the new PIN the holder typed in the portal; the
    /// agent then asks nobody.
    ChangePin {
        seq: u64,
        old_pin: Secret,
        rules: PinRules,
        answer_within_secs: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        new_pin: Option<Secret>,
    },
    /// Unblock the PIN with RESET RETRY COUNTER from `puk` and a new PIN, within the deadline;
    /// answer like `change_pin`.
    UnblockPin {
        seq: u64,
        puk: Secret,
        rules: PinRules,
        answer_within_secs: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        new_pin: Option<Secret>,
    },
    /// The session is over; the device is now in `state`.
    Done { device: DeviceId, state: DeviceState },
    /// The session is over, failed.
    Error { message: String },
}

impl ServerFrame {
    /// How long the agent has to act on this frame, if it asks for an answer.
    pub fn answer_within(&self) -> Option<Duration> {
        match self {
            ServerFrame::Transmit { answer_within_secs, .. }
            | ServerFrame::Ctap { answer_within_secs, .. }
            | ServerFrame::ChangePin { answer_within_secs, .. }
            | ServerFrame::UnblockPin { answer_within_secs, .. } => {
                Some(Duration::from_secs(u64::from(*answer_within_secs)))
            }
            ServerFrame::Done { .. } | ServerFrame::Error { .. } => None,
        }
    }

    /// The request number an answer must carry, if this frame asks for one.
    pub fn seq(&self) -> Option<u64> {
        match self {
            ServerFrame::Transmit { seq, .. }
            | ServerFrame::Ctap { seq, .. }
            | ServerFrame::ChangePin { seq, .. }
            | ServerFrame::UnblockPin { seq, .. } => Some(*seq),
            ServerFrame::Done { .. } | ServerFrame::Error { .. } => None,
        }
    }

    pub fn to_text(&self) -> String {
        to_text(self)
    }

    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// Frames from the agent to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentFrame {
    /// The first frame: who is speaking and which card is in the reader.
    Hello {
        protocol: u32,
        /// `lanyard-agent/<version>`.
        agent: String,
        reader: String,
        /// The card's ATR, hex.
        atr: String,
        /// Optional abilities beyond the version's base: `server_pin`, `ctap`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        features: Vec<String>,
    },
    /// The card's answers to `transmit` `seq` (data and status word, hex), possibly fewer than
    /// the commands.
    Responses { seq: u64, responses: Vec<String> },
    /// The authenticator's answers to `ctap` `seq` (hex of the status byte followed by its CBOR
    /// response), in order; fewer than the requests when one failed (its status byte is not
    /// `00`, and it is the last).
    CtapResponses { seq: u64, responses: Vec<String> },
    /// The card took the new PIN; `sw` is its status word (`9000`).
    PinChanged { seq: u64, sw: String },
    /// The holder kept the initial PIN.
    PinChangeSkipped { seq: u64 },
    /// Request `seq` failed (absent when the agent could not read one).
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        message: String,
    },
}

impl AgentFrame {
    pub fn to_text(&self) -> String {
        to_text(self)
    }

    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

pub(crate) fn to_text<T: Serialize>(frame: &T) -> String {
    // Cannot fail: the frames are strings, integers, booleans and lists of them; no map has a
    // key that is not a string.
    serde_json::to_string(frame).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_must_match_exactly() {
        assert_eq!(check_version(Side::Server, Some("1")), Ok(()));
        assert_eq!(check_version(Side::Agent, Some(" 1 ")), Ok(()));
        let e = check_version(Side::Server, Some("2")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the agent speaks agent protocol version 2 and the server version 1: \
             use the agent release that matches the server"
        );
        let e = check_version(Side::Agent, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the server names no agent protocol version (it predates version 1) and the agent \
             version 1: use the agent release that matches the server"
        );
        let long = "9".repeat(100);
        let e = check_version(Side::Server, Some(&long)).unwrap_err();
        assert_eq!(e.theirs.as_deref().map(str::len), Some(32));
        assert!(check_version(Side::Server, Some("01x")).is_err());
    }

    #[test]
    fn secrets_are_redacted_and_compared_whole() {
        let frame = ServerFrame::ChangePin {
            seq: 1,
            old_pin: Secret::new("123456"),
            rules: PinRules::default(),
            answer_within_secs: 300,
            new_pin: Some(Secret::new("975319")),
        };
        assert!(!format!("{frame:?}").contains("123456"));
        assert!(!format!("{frame:?}").contains("975319"));
        assert_eq!(Secret::new("123456"), Secret::new("123456"));
        assert_ne!(Secret::new("123456"), Secret::new("123457"));
        assert_ne!(Secret::new("123456"), Secret::new("1234567"));
    }

    #[test]
    fn the_server_waits_the_deadline_and_the_grace() {
        assert_eq!(server_wait(300), Duration::from_secs(305));
        let frame = ServerFrame::Done { device: DeviceId::new(), state: DeviceState::Active };
        assert_eq!((frame.answer_within(), frame.seq()), (None, None));
    }
}
