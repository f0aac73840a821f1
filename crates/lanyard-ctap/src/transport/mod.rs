//! How a CTAP client reaches an authenticator (CTAP 2.1 §11): one message out — the command
//! byte followed by its CBOR parameters — and one message back — the status byte followed by the
//! CBOR response.
//!
//! - [`nfc`]: the ISO 7816 binding NFC readers use, over any APDU exchange function (PC/SC, or
//!   a card object in the same process): SELECT of the FIDO application, NFCCTAP_MSG with
//!   command chaining, `61xx` with GET RESPONSE, and the `9100` keep-alive with
//!   NFCCTAP_GETRESPONSE polls.
//! - [`hid`]: the USB HID binding (CTAPHID) as pure functions: packet framing, reassembly, the
//!   channel's INIT, and a client over any [`hid::ReportIo`].
//! - [`hidraw`]: the thin Linux layer under it: FIDO devices found through sysfs (their report
//!   descriptor names usage page `0xF1D0`, usage `0x01`) and `/dev/hidrawN` read and written as
//!   a file.
//!
//! Nothing here logs or formats a message's content: requests carry encrypted PINs and answers
//! carry PIN tokens. Errors name the command byte, status words and sizes only.

pub mod hid;
#[cfg(target_os = "linux")]
pub mod hidraw;
pub mod nfc;

use std::time::Instant;

use thiserror::Error;

use crate::consts::cmd;

/// An authenticator reachable over some binding.
pub trait CtapTransport {
    /// Sends `request` (command byte ‖ CBOR) and returns the answer (status byte ‖ CBOR). Gives
    /// up at `deadline`: a command still running then is cancelled and the answer is
    /// [`CtapTransportError::Timeout`].
    fn ctap(&mut self, request: &[u8], deadline: Instant) -> Result<Vec<u8>, CtapTransportError>;

    /// What this transport talks to, for messages (`USB HID /dev/hidraw3 (Yubico YubiKey …)`).
    fn describe(&self) -> String;
}

impl<T: CtapTransport + ?Sized> CtapTransport for Box<T> {
    fn ctap(&mut self, request: &[u8], deadline: Instant) -> Result<Vec<u8>, CtapTransportError> {
        (**self).ctap(request, deadline)
    }

    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// Why a CTAP message got no answer.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CtapTransportError {
    /// The card has no FIDO application (SELECT was refused with this status word).
    #[error("the card has no FIDO application (SELECT answered {sw:04X}: {})", nfc::sw_meaning(*sw))]
    NoFidoApplication { sw: u16 },
    /// SELECT succeeded, but the answer is not a FIDO version string.
    #[error("SELECT of the FIDO application answered {0:?}, not \"FIDO_2_0\" or \"U2F_V2\"")]
    NotFido(String),
    /// The card or device answered outside the binding's rules.
    #[error("{0}")]
    Protocol(String),
    /// The card answered a command with an error status word.
    #[error("{what} answered {sw:04X} ({})", nfc::sw_meaning(*sw))]
    Status { what: String, sw: u16 },
    /// The HID device reported CTAPHID_ERROR.
    #[error("the device reported CTAPHID error {code:#04x} ({})", hid::error_name(*code))]
    HidError { code: u8 },
    /// The authenticator was still working at the deadline; the command was cancelled.
    #[error("no answer to {} before the deadline{}", command_name(*command), if *up_needed { " (the key waited for a touch)" } else { "" })]
    Timeout { command: u8, up_needed: bool },
    /// The request is larger than the binding carries.
    #[error("a CTAP request of {len} bytes is more than the {max} this transport carries")]
    TooLong { len: usize, max: usize },
    /// The request has no command byte.
    #[error("an empty CTAP request (no command byte)")]
    Empty,
    /// The reader, the card connection or the device file failed.
    #[error("{0}")]
    Io(String),
}

/// The name of an authenticator command byte, for progress and error messages.
pub fn command_name(command: u8) -> &'static str {
    match command {
        cmd::MAKE_CREDENTIAL => "authenticatorMakeCredential",
        cmd::GET_ASSERTION => "authenticatorGetAssertion",
        cmd::GET_INFO => "authenticatorGetInfo",
        cmd::CLIENT_PIN => "authenticatorClientPIN",
        cmd::RESET => "authenticatorReset",
        cmd::GET_NEXT_ASSERTION => "authenticatorGetNextAssertion",
        cmd::CREDENTIAL_MANAGEMENT => "authenticatorCredentialManagement",
        cmd::SELECTION => "authenticatorSelection",
        cmd::CONFIG => "authenticatorConfig",
        0x09 => "authenticatorBioEnrollment",
        0x0C => "authenticatorLargeBlobs",
        0x40..=0xBF => "vendor command",
        _ => "unknown command",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_commands_and_status_words_but_no_content() {
        assert_eq!(command_name(0x06), "authenticatorClientPIN");
        assert_eq!(command_name(0x41), "vendor command");
        let e = CtapTransportError::Timeout { command: 0x01, up_needed: true };
        assert_eq!(
            e.to_string(),
            "no answer to authenticatorMakeCredential before the deadline (the key waited for a touch)"
        );
        let e = CtapTransportError::Status { what: "NFCCTAP_MSG".into(), sw: 0x6700 };
        assert_eq!(e.to_string(), "NFCCTAP_MSG answered 6700 (wrong length)");
        let e = CtapTransportError::NoFidoApplication { sw: 0x6A82 };
        assert_eq!(
            e.to_string(),
            "the card has no FIDO application (SELECT answered 6A82: file or application not found)"
        );
    }
}
