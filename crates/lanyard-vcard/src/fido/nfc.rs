//! The ISO 7816 binding of CTAP as NFC readers carry it (CTAP 2.1 §11.3), above the card's own
//! APDU layer (which does command chaining with CLA `90` and `61xx` + GET RESPONSE):
//!
//! - NFCCTAP_MSG `80 10 P1 00 <request>`: P1 `00` or `80` (`80`: the client polls with
//!   NFCCTAP_GETRESPONSE);
//! - NFCCTAP_GETRESPONSE `80 11 00 00` polls, `80 11 11 00` cancels.
//!
//! Keep-alive: a makeCredential or getAssertion sent with P1 `80` is answered once with `9100`
//! and one status byte (`01`, processing); the command runs when the client polls, so a cancel
//! (`80 11 11 00`) before that leaves no trace (no credential, no counter step) and is answered
//! with CTAP2_ERR_KEEPALIVE_CANCEL. Everything else, and everything sent with P1 `00`, is
//! answered at once.

use super::Authenticator;
use lanyard_ctap::consts::{
    NFC_INS_GET_RESPONSE, NFC_INS_MSG, NFC_P1_CANCEL, NFC_P1_GETRESPONSE_SUPPORTED, cmd, status,
};

/// The keep-alive status byte for "processing" (CTAPHID_KEEPALIVE's STATUS_PROCESSING).
pub const KEEPALIVE_PROCESSING: u8 = 0x01;

/// What the card answers to one NFC CTAP APDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NfcReply {
    /// A CTAP response, sent with `9000` (or `61xx` when long).
    Response(Vec<u8>),
    /// `9100` with this status byte: poll again.
    KeepAlive(u8),
    /// An ISO status word without data.
    Error(u16),
}

/// The binding's state: a request waiting for the client's first poll.
#[derive(Debug, Default)]
pub struct NfcBinding {
    pending: Option<Vec<u8>>,
}

impl NfcBinding {
    /// Handles one complete (unchained) APDU of the FIDO application.
    pub fn command(
        &mut self,
        auth: &mut Authenticator,
        cla: u8,
        ins: u8,
        p1: u8,
        p2: u8,
        data: &[u8],
    ) -> NfcReply {
        if cla != 0x80 {
            return NfcReply::Error(0x6E00);
        }
        match ins {
            NFC_INS_MSG => {
                // A new message abandons one still waiting.
                self.pending = None;
                if p2 != 0 || !matches!(p1, 0x00 | NFC_P1_GETRESPONSE_SUPPORTED) {
                    return NfcReply::Error(0x6A86);
                }
                if data.is_empty() {
                    return NfcReply::Error(0x6700);
                }
                if p1 == NFC_P1_GETRESPONSE_SUPPORTED
                    && matches!(data[0], cmd::MAKE_CREDENTIAL | cmd::GET_ASSERTION)
                {
                    self.pending = Some(data.to_vec());
                    return NfcReply::KeepAlive(KEEPALIVE_PROCESSING);
                }
                NfcReply::Response(auth.process(data))
            }
            NFC_INS_GET_RESPONSE => {
                if p2 != 0 {
                    return NfcReply::Error(0x6A86);
                }
                match (p1, self.pending.take()) {
                    (0x00, Some(request)) => NfcReply::Response(auth.process(&request)),
                    (NFC_P1_CANCEL, Some(_)) => NfcReply::Response(vec![status::KEEPALIVE_CANCEL]),
                    (0x00 | NFC_P1_CANCEL, None) => NfcReply::Error(0x6985),
                    _ => NfcReply::Error(0x6A86),
                }
            }
            _ => NfcReply::Error(0x6D00),
        }
    }
}
