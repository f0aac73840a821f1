//! `lanyard-agent`: the workstation side of Lanyard (DESIGN §3, §4).
//!
//! - [`cards`]: which PC/SC readers hold which cards, and whether Lanyard can issue them.
//! - [`relay`]: a server-driven card session. The server's personalization engine sends APDU
//!   batches over a WebSocket (frames, version and deadlines in `lanyard-protocol`); the agent
//!   sends them to the card and returns the answers. The new PIN is the one secret the agent
//!   handles itself: it goes from a [`relay::PinSource`] to the card, never to the server, and
//!   only before the server's deadline.
//!
//! - [`fido`]: where a session's CTAP requests go: the card's FIDO application over PC/SC, or a
//!   YubiKey's USB HID interface.
//! - [`portal`]: the loopback API the portal's pages call, origin-checked.
//!
//! The agent keeps no card secret beyond one session.

pub mod cards;
pub mod fido;
pub mod link;
pub mod portal;
pub mod relay;

use lanyard_piv::TransportError;
use thiserror::Error;

/// The agent's `User-Agent`-like name, sent in the first frame of a session.
pub const AGENT_NAME: &str = concat!("lanyard-agent/", env!("CARGO_PKG_VERSION"));

/// How to get pcscd on a Debian-like system; printed when PC/SC is unreachable.
pub const PCSCD_INSTALL_HINT: &str =
    "install and start pcscd: apt-get install pcscd (then systemctl start pcscd)";

/// Everything that ends a listing or a session early.
#[derive(Debug, Error)]
pub enum AgentError {
    #[error("PC/SC: {0} ({PCSCD_INSTALL_HINT})")]
    Pcsc(TransportError),
    #[error("reader {reader:?}: {source}")]
    Reader { reader: String, source: TransportError },
    #[error("server URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("CA certificate: {0}")]
    CaCert(String),
    #[error("cannot reach {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("TLS with {host}: {reason}")]
    Tls { host: String, reason: String },
    /// The server answered the WebSocket upgrade with an HTTP error (a bad ticket or credential).
    #[error("the server refused the agent channel: HTTP {status} {body}")]
    Refused { status: u16, body: String },
    #[error("WebSocket: {0}")]
    WebSocket(String),
    /// The server sent something outside the wire protocol; the agent told it and closed.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server ended the session with an error frame.
    #[error("server: {0}")]
    Server(String),
    #[error("card removed during the session")]
    CardRemoved,
    #[error("card: {0}")]
    Card(String),
    #[error("new PIN: {0}")]
    Pin(String),
    /// The agent and the server speak different versions of the agent protocol.
    #[error("{0}")]
    ProtocolVersion(lanyard_protocol::VersionMismatch),
    /// The new PIN came after the server's deadline and was not written; the server ended the
    /// session without saying more. The card keeps its initial PIN; the device stays Pending.
    #[error("new PIN not written: {0}")]
    PinTooLate(String),
}

impl From<lanyard_protocol::url::UrlError> for AgentError {
    fn from(e: lanyard_protocol::url::UrlError) -> Self {
        AgentError::BadUrl { url: e.url, reason: e.reason }
    }
}
