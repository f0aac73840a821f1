//! The agent link: the one long-lived, authenticated WebSocket a paired agent keeps open to the
//! server (DESIGN §4), over which it reports its readers and receives requests to run card
//! sessions. The agent listens on no port; everything goes through this outbound connection.
//!
//! # Connecting
//!
//! The agent opens [`LINK_PATH`] below the server's base URL ([`link_url`]) as a WebSocket with
//! its pairing credential in `Authorization: Bearer <credential>` and its protocol version in
//! [`crate::VERSION_HEADER`]. The server checks the version first, then the credential (an
//! unknown or revoked credential, or a disabled user, is one `401`), and answers with its own
//! version like on [`crate::CONNECT_PATH`].
//!
//! # Frames
//!
//! JSON text messages tagged by `type`, like the session frames:
//! - agent → server ([`AgentLinkFrame`]): `hello` first (agent version, host name, features),
//!   then `readers` with the full list of readers whenever it changes (and right after `hello`),
//!   `session_ended` when a session it was asked to run is over, and `error` for a frame it could
//!   not read;
//! - server → agent ([`ServerLinkFrame`]): `start_session` (run one card session: open
//!   [`crate::CONNECT_PATH`] with this ticket, the agent's credential and the named reader, so the
//!   ordinary relay runs it), `refresh` (report the readers again now) and `error` (the server
//!   closes the link after it).
//!
//! Both sides ignore fields they do not know; a frame of an unknown `type` is answered with
//! `error` and otherwise ignored, so a newer peer's additions cost an older one nothing.
//!
//! # Liveness
//!
//! The agent sends a WebSocket ping every [`PING_INTERVAL_SECS`]; the server closes a link on
//! which it heard nothing (frame, ping or pong) for [`LINK_IDLE_SECS`], and the agent reconnects
//! with a growing pause after any loss.

use lanyard_core::ids::JobId;
use serde::{Deserialize, Serialize};

use crate::Secret;
use crate::url::{UrlError, parse_server};

/// Path of the agent link below the server's base URL.
pub const LINK_PATH: &str = "/api/v1/agent/link";
/// How often the agent pings the server over an idle link.
pub const PING_INTERVAL_SECS: u64 = 30;
/// After how long without hearing anything the server drops a link.
pub const LINK_IDLE_SECS: u64 = 90;
/// Most readers one `readers` frame may list; more than any workstation has.
pub const MAX_READERS: usize = 64;
/// The feature an agent announces (in a session's `hello`) when it takes the new PIN from
/// `change_pin`/`unblock_pin`'s `new_pin` instead of asking locally.
pub const FEATURE_SERVER_PIN: &str = "server_pin";
/// The feature an agent announces (in a session's `hello`, and in the link's) when it relays
/// `ctap` frames to the card's FIDO authenticator.
pub const FEATURE_CTAP: &str = "ctap";
/// The feature an agent announces (in the link's `hello`) when it runs `start_session`.
pub const FEATURE_SESSIONS: &str = "sessions";

/// The link's WebSocket URL for a server base URL (`https://host[:port][/prefix]`), with the
/// same rules as the session channel: TLS except to a loopback host.
pub fn link_url(server: &str) -> Result<String, UrlError> {
    let target = parse_server(server)?;
    // `parse_server` ends its URL with the session path; the link sits beside it.
    let base = target.url.strip_suffix(crate::CONNECT_PATH).unwrap_or(&target.url);
    Ok(format!("{base}{LINK_PATH}"))
}

/// Whether Lanyard can issue a card, as the agent judged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A card the engine can personalize, not issued yet.
    Compatible,
    /// A compatible card that has been issued already.
    AlreadyIssued,
    /// The engine refuses this card (`reason` says why).
    Unsupported,
    /// The card could not be read (`reason` says why).
    Unreadable,
}

/// What the agent found out about the card in a reader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardReport {
    /// The card model as issuance policies name it (e.g. `YubiKey 5.7.2`); absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The card's serial number, when it tells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    pub verdict: Verdict,
    /// Why the card is unsupported or unreadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A card session the server asked for is running on this card: it was not identified again,
    /// and the report is the one from before the session.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub busy: bool,
}

/// One PC/SC reader and its card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReaderReport {
    /// The reader's exact PC/SC name; `start_session` names it back.
    pub name: String,
    pub card_present: bool,
    /// The card's answer-to-reset, hex; empty without a card.
    #[serde(default)]
    pub atr: String,
    /// Absent without a card.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<CardReport>,
}

/// Frames from the agent to the server over the link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentLinkFrame {
    /// The first frame.
    Hello {
        protocol: u32,
        /// `lanyard-agent/<version>`.
        agent: String,
        /// The workstation's host name now (it may differ from the one at pairing).
        host: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        features: Vec<String>,
    },
    /// Every reader the agent sees, with its card: after `hello`, whenever a reader or card
    /// changes, and on `refresh`.
    Readers { readers: Vec<ReaderReport> },
    /// A session asked for with `start_session` is over: `error` is absent when the server ended
    /// it with `done`.
    SessionEnded {
        job: JobId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The agent could not read or act on a frame.
    Error { message: String },
}

impl AgentLinkFrame {
    pub fn to_text(&self) -> String {
        crate::to_text(self)
    }

    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// Frames from the server to the agent over the link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerLinkFrame {
    /// Run one card session on `reader`: open [`crate::CONNECT_PATH`] with `ticket` and the
    /// agent's credential, and relay it as any session. `purpose` says what it does, for the
    /// agent's log (`issuance`, `unlock`, `wipe` or `rollback`).
    StartSession { job: JobId, ticket: Secret, reader: String, purpose: String },
    /// Report the readers again now.
    Refresh,
    /// The server ends the link; `message` says why.
    Error { message: String },
}

impl ServerLinkFrame {
    pub fn to_text(&self) -> String {
        crate::to_text(self)
    }

    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_sits_beside_the_session_channel() {
        assert_eq!(
            link_url("https://lanyard.example/base/").unwrap(),
            "wss://lanyard.example/base/api/v1/agent/link"
        );
        assert_eq!(link_url("http://127.0.0.1:8080").unwrap(), "ws://127.0.0.1:8080/api/v1/agent/link");
        assert!(link_url("http://lanyard.example").is_err());
    }

    #[test]
    fn the_ticket_is_redacted() {
        let frame = ServerLinkFrame::StartSession {
            job: JobId::new(),
            ticket: Secret::new("job.secret-part"),
            reader: "r".into(),
            purpose: "issuance".into(),
        };
        assert!(!format!("{frame:?}").contains("secret-part"));
    }
}
