//! `lanyard-piv`: the host side of the PIV card edge (NIST SP 800-73-4/-5) with the YubiKey
//! extensions, written sans-IO over a [`CardTransport`].
//!
//! - [`tlv`], [`apdu`]: BER-TLV and ISO 7816-4 APDUs with typed status words.
//! - [`objects`]: CHUID (FASC-N), CCC, discovery, certificate containers, key history, printed
//!   information.
//! - [`client::Piv`]: every PIV and YubiKey command, with command and response chaining.
//! - [`transport`]: PC/SC and in-process transports.

pub mod apdu;
pub mod client;
pub mod commands;
pub mod mgmkey;
pub mod objects;
pub mod tlv;
pub mod transport;
pub mod types;

pub use apdu::{ApduError, Command, Response, StatusWord};
pub use client::Piv;
pub use mgmkey::{DEFAULT_MANAGEMENT_KEY, ManagementKey, MgmAlgorithm, MgmKeyError};
pub use tlv::TlvError;
pub use transport::{ApduHandler, CardTransport, InProcess, TransportError};
pub use types::{KeyAlgorithm, PIV_AID, PinPolicy, PublicKey, Slot, TouchPolicy, tag};

use thiserror::Error;

/// Everything that can go wrong talking to a PIV card from the host.
#[derive(Debug, Error)]
pub enum PivError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("malformed APDU: {0}")]
    Apdu(#[from] ApduError),
    #[error("card answered {0}")]
    Status(StatusWord),
    #[error("wrong {what}: {retries} tries left")]
    WrongPin { what: &'static str, retries: u8 },
    #[error("{0} is blocked")]
    Blocked(&'static str),
    #[error("malformed TLV from card or caller: {0}")]
    Tlv(#[from] TlvError),
    #[error("malformed data: {0}")]
    Malformed(&'static str),
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    #[error("management key: {0}")]
    MgmKey(#[from] MgmKeyError),
    #[error("management key authentication failed: the card did not prove knowledge of the key")]
    CardAuthenticationFailed,
    #[error("object: {0}")]
    Object(#[from] objects::ObjectError),
}

impl PivError {
    /// The card's status word, when the error is one.
    pub fn status(&self) -> Option<StatusWord> {
        match self {
            PivError::Status(sw) => Some(*sw),
            PivError::WrongPin { retries, .. } => Some(StatusWord::WrongPin { retries: *retries }),
            PivError::Blocked(_) => Some(StatusWord::AuthenticationBlocked),
            _ => None,
        }
    }
}
