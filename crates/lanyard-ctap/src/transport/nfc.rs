//! CTAP over ISO 7816 APDUs, as NFC readers carry it (CTAP 2.1 §11.3), over any APDU exchange
//! function: the agent's PC/SC connection, or a card object in the same process.
//!
//! - SELECT `A0000006472F0001` must answer `FIDO_2_0` or `U2F_V2` with `9000`;
//! - a request goes out as NFCCTAP_MSG (`80 10 80 00`, P1 `80`: this client polls): one extended
//!   APDU, or short APDUs of at most 255 bytes chained with CLA `90` on every block but the last;
//! - `61xx` answers are collected with GET RESPONSE (`00 C0 00 00 xx`);
//! - `9100` means "still working": the client polls with NFCCTAP_GETRESPONSE (`80 11 00 00`)
//!   until the answer comes or the deadline passes, and then cancels (`80 11 11 00`);
//! - any other status word is an error that names it.

use std::fmt::Display;
use std::time::{Duration, Instant};

use super::{CtapTransport, CtapTransportError};
use crate::consts::{
    FIDO_AID, NFC_CLA, NFC_INS_GET_RESPONSE, NFC_INS_MSG, NFC_P1_CANCEL, NFC_P1_GETRESPONSE_SUPPORTED,
    SELECT_FIDO2, SELECT_U2F, SW_KEEPALIVE,
};

/// CLA of every block of a chained command but the last (ISO 7816-4 command chaining).
const CLA_CHAIN: u8 = 0x90;
const INS_SELECT: u8 = 0xA4;
const INS_ISO_GET_RESPONSE: u8 = 0xC0;
const SW_OK: u16 = 0x9000;
/// Largest command data a short APDU carries.
const SHORT_MAX: usize = 255;
/// Largest command data an extended APDU carries.
pub const EXTENDED_MAX: usize = 65_535;
/// The most response bytes this client collects for one message: far beyond what an
/// authenticator sends (its maxMsgSize is a few kilobytes), short of what could exhaust memory.
pub const MAX_RESPONSE: usize = 1 << 17;
/// The most GET RESPONSE rounds for one answer.
const MAX_GET_RESPONSE: usize = 1024;
/// Keep-alive payload: the authenticator waits for user presence (CTAP 2.1 §11.3.7 reuses the
/// HID keep-alive codes).
const KEEPALIVE_UP_NEEDED: u8 = 0x02;

/// Sends one raw command APDU and returns the raw answer (data ‖ SW1 SW2). Any
/// `FnMut(&[u8]) -> Result<Vec<u8>, E>` is one, so a PC/SC connection or a card object plugs in
/// as a closure.
pub trait ApduExchange {
    fn exchange(&mut self, apdu: &[u8]) -> Result<Vec<u8>, String>;
}

impl<F, E> ApduExchange for F
where
    F: FnMut(&[u8]) -> Result<Vec<u8>, E>,
    E: Display,
{
    fn exchange(&mut self, apdu: &[u8]) -> Result<Vec<u8>, String> {
        self(apdu).map_err(|e| e.to_string())
    }
}

/// How NFCCTAP_MSG carries the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApduForm {
    /// Short APDUs, chained when the request is longer than 255 bytes: every reader and card
    /// understands them.
    Short,
    /// One extended APDU (up to 65 535 bytes, `Le` 65 536).
    Extended,
}

/// What SELECT said the application is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FidoVersion {
    /// `FIDO_2_0`: CTAP2 only.
    Fido2,
    /// `U2F_V2`: U2F (CTAP1) as well; CTAP2 may be there too (getInfo tells).
    U2fV2,
}

/// The meaning of an ISO 7816 status word, for error messages.
pub fn sw_meaning(sw: u16) -> &'static str {
    match sw {
        0x9000 => "success",
        0x9100 => "still working (keep-alive)",
        0x6100..=0x61FF => "more data available",
        0x6281 | 0x6282 => "the returned data may be corrupted or short",
        0x6700 => "wrong length",
        0x6881 | 0x6882 => "logical channels or secure messaging not supported",
        0x6883 => "last command of the chain expected",
        0x6884 => "command chaining not supported",
        0x6982 => "security status not satisfied",
        0x6983 => "authentication method blocked",
        0x6985 => "conditions of use not satisfied",
        0x6986 => "command not allowed",
        0x6A80 => "incorrect data",
        0x6A81 => "function not supported",
        0x6A82 => "file or application not found",
        0x6A86 => "incorrect P1 or P2",
        0x6B00 => "wrong P1 or P2",
        0x6C00..=0x6CFF => "wrong Le",
        0x6D00 => "instruction not supported",
        0x6E00 => "class not supported",
        0x6F00 => "no precise diagnosis",
        _ => "unknown status word",
    }
}

/// A FIDO authenticator behind an APDU exchange.
pub struct NfcCtap<X> {
    exchange: X,
    form: ApduForm,
    poll: Duration,
    name: String,
}

impl<X: ApduExchange> NfcCtap<X> {
    /// A client that sends short APDUs and polls a busy authenticator every 100 ms; `name` says
    /// what it talks to (`PC/SC reader "…"`), for messages.
    pub fn new(exchange: X, name: impl Into<String>) -> Self {
        Self { exchange, form: ApduForm::Short, poll: Duration::from_millis(100), name: name.into() }
    }

    pub fn with_form(mut self, form: ApduForm) -> Self {
        self.form = form;
        self
    }

    /// How long to wait between two NFCCTAP_GETRESPONSE polls.
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    pub fn exchange_mut(&mut self) -> &mut X {
        &mut self.exchange
    }

    pub fn into_inner(self) -> X {
        self.exchange
    }

    /// SELECTs the FIDO application. A card without one is
    /// [`CtapTransportError::NoFidoApplication`].
    pub fn select(&mut self) -> Result<FidoVersion, CtapTransportError> {
        let mut apdu = vec![0x00, INS_SELECT, 0x04, 0x00, FIDO_AID.len() as u8];
        apdu.extend_from_slice(&FIDO_AID);
        apdu.push(0x00);
        let (data, sw) = self.send("SELECT", &apdu)?;
        match sw {
            SW_OK => {}
            0x6A82 | 0x6999 | 0x6A81 | 0x6D00 | 0x6E00 => {
                return Err(CtapTransportError::NoFidoApplication { sw });
            }
            sw => {
                return Err(CtapTransportError::Status { what: "SELECT of the FIDO application".into(), sw });
            }
        }
        if data == SELECT_FIDO2 {
            Ok(FidoVersion::Fido2)
        } else if data == SELECT_U2F {
            Ok(FidoVersion::U2fV2)
        } else {
            // Bounded and printable, so a hostile card cannot fill a message.
            let shown: String = String::from_utf8_lossy(&data[..data.len().min(32)])
                .chars()
                .filter(|c| !c.is_control())
                .collect();
            Err(CtapTransportError::NotFido(shown))
        }
    }

    /// One raw exchange, split into data and status word.
    fn raw(&mut self, what: &str, apdu: &[u8]) -> Result<(Vec<u8>, u16), CtapTransportError> {
        let mut answer = self.exchange.exchange(apdu).map_err(CtapTransportError::Io)?;
        if answer.len() < 2 {
            return Err(CtapTransportError::Protocol(format!(
                "{what}: an answer of {} byte(s) has no status word",
                answer.len()
            )));
        }
        let sw2 = answer.pop().unwrap_or_default();
        let sw1 = answer.pop().unwrap_or_default();
        Ok((answer, u16::from_be_bytes([sw1, sw2])))
    }

    /// One exchange with `61xx` collected through GET RESPONSE.
    fn send(&mut self, what: &str, apdu: &[u8]) -> Result<(Vec<u8>, u16), CtapTransportError> {
        let (mut data, mut sw) = self.raw(what, apdu)?;
        let mut rounds = 0;
        while sw >> 8 == 0x61 {
            rounds += 1;
            if rounds > MAX_GET_RESPONSE {
                return Err(CtapTransportError::Protocol(format!(
                    "{what}: more than {MAX_GET_RESPONSE} GET RESPONSE rounds"
                )));
            }
            let get = [0x00, INS_ISO_GET_RESPONSE, 0x00, 0x00, (sw & 0xFF) as u8];
            let (more, next) = self.raw("GET RESPONSE", &get)?;
            data.extend_from_slice(&more);
            sw = next;
            if data.len() > MAX_RESPONSE {
                return Err(CtapTransportError::Protocol(format!(
                    "{what}: an answer of more than {MAX_RESPONSE} bytes"
                )));
            }
        }
        Ok((data, sw))
    }

    /// Sends NFCCTAP_MSG, chained or extended; returns the first answer of the last block.
    fn send_msg(&mut self, request: &[u8]) -> Result<(Vec<u8>, u16), CtapTransportError> {
        let what = "NFCCTAP_MSG";
        let p1 = NFC_P1_GETRESPONSE_SUPPORTED;
        match self.form {
            ApduForm::Extended => {
                if request.len() > EXTENDED_MAX {
                    return Err(CtapTransportError::TooLong { len: request.len(), max: EXTENDED_MAX });
                }
                let len = (request.len() as u16).to_be_bytes();
                let mut apdu = vec![NFC_CLA, NFC_INS_MSG, p1, 0x00, 0x00, len[0], len[1]];
                apdu.extend_from_slice(request);
                apdu.extend_from_slice(&[0x00, 0x00]);
                self.send(what, &apdu)
            }
            ApduForm::Short => {
                let blocks = request.len().div_ceil(SHORT_MAX);
                for (i, block) in request.chunks(SHORT_MAX).enumerate() {
                    let last = i + 1 == blocks;
                    let cla = if last { NFC_CLA } else { CLA_CHAIN };
                    let mut apdu = vec![cla, NFC_INS_MSG, p1, 0x00, block.len() as u8];
                    apdu.extend_from_slice(block);
                    if last {
                        apdu.push(0x00);
                        return self.send(what, &apdu);
                    }
                    let (_, sw) = self.raw(what, &apdu)?;
                    if sw != SW_OK {
                        return Err(CtapTransportError::Status {
                            what: format!("block {} of {blocks} of a chained NFCCTAP_MSG", i + 1),
                            sw,
                        });
                    }
                }
                // `request` is not empty (checked by the caller), so the loop returned.
                Err(CtapTransportError::Empty)
            }
        }
    }
}

impl<X: ApduExchange> CtapTransport for NfcCtap<X> {
    fn ctap(&mut self, request: &[u8], deadline: Instant) -> Result<Vec<u8>, CtapTransportError> {
        let Some(&command) = request.first() else { return Err(CtapTransportError::Empty) };
        if Instant::now() >= deadline {
            return Err(CtapTransportError::Timeout { command, up_needed: false });
        }
        let (mut data, mut sw) = self.send_msg(request)?;
        let mut up_needed = false;
        while sw == SW_KEEPALIVE {
            up_needed |= data.first() == Some(&KEEPALIVE_UP_NEEDED);
            let now = Instant::now();
            if now >= deadline {
                let cancel = [NFC_CLA, NFC_INS_GET_RESPONSE, NFC_P1_CANCEL, 0x00];
                // The command is abandoned either way; a card that refuses the cancel has
                // nothing left to say about it.
                let _ = self.raw("NFCCTAP_GETRESPONSE (cancel)", &cancel);
                return Err(CtapTransportError::Timeout { command, up_needed });
            }
            std::thread::sleep(self.poll.min(deadline - now));
            let poll = [NFC_CLA, NFC_INS_GET_RESPONSE, 0x00, 0x00, 0x00];
            (data, sw) = self.send("NFCCTAP_GETRESPONSE", &poll)?;
        }
        if sw != SW_OK {
            return Err(CtapTransportError::Status { what: "NFCCTAP_MSG".into(), sw });
        }
        if data.is_empty() {
            return Err(CtapTransportError::Protocol("NFCCTAP_MSG: an answer without a status byte".into()));
        }
        Ok(data)
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
mod tests {
    //! Against a framing responder: a test double that implements the ISO 7816 side of the
    //! binding only (SELECT, chaining, `61xx`, `9100`, cancel) and answers a request with a
    //! status byte followed by the request echoed. It is not an authenticator; the virtual
    //! card's FIDO application is tested through pcscd elsewhere.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    struct Framing {
        /// Most data bytes per answer before `61xx`.
        chunk: usize,
        /// How many `9100` before the answer (`usize::MAX`: never done).
        busy: usize,
        /// Keep-alive payload.
        keepalive: Vec<u8>,
        select_answer: Vec<u8>,
        extended: bool,
        // State.
        chain: Vec<u8>,
        pending: Vec<u8>,
        polls_left: usize,
        ready: Option<Vec<u8>>,
        log: Vec<Vec<u8>>,
    }

    impl Framing {
        fn new(chunk: usize, busy: usize) -> Self {
            Self {
                chunk,
                busy,
                keepalive: vec![0x01],
                select_answer: b"FIDO_2_0".to_vec(),
                extended: true,
                chain: Vec::new(),
                pending: Vec::new(),
                polls_left: 0,
                ready: None,
                log: Vec::new(),
            }
        }

        fn out(&mut self, mut data: Vec<u8>) -> Vec<u8> {
            if data.len() > self.chunk {
                self.pending = data.split_off(self.chunk);
                let left = self.pending.len().min(256);
                data.extend_from_slice(&[0x61, if left == 256 { 0 } else { left as u8 }]);
            } else {
                data.extend_from_slice(&[0x90, 0x00]);
            }
            data
        }

        fn handle(&mut self, apdu: &[u8]) -> Vec<u8> {
            self.log.push(apdu.to_vec());
            let (cla, ins, p1) = (apdu[0], apdu[1], apdu[2]);
            match (cla, ins, p1) {
                (0x00, 0xA4, 0x04) => {
                    if apdu[5..13] != FIDO_AID {
                        return vec![0x6A, 0x82];
                    }
                    let answer = self.select_answer.clone();
                    self.out(answer)
                }
                (0x00, 0xC0, _) => {
                    let rest = std::mem::take(&mut self.pending);
                    self.out(rest)
                }
                (0x80 | 0x90, 0x10, 0x80) => {
                    let (data, extended) = if apdu[4] == 0 && apdu.len() > 7 {
                        let len = usize::from(u16::from_be_bytes([apdu[5], apdu[6]]));
                        (&apdu[7..7 + len], true)
                    } else {
                        (&apdu[5..5 + usize::from(apdu[4])], false)
                    };
                    if extended && !self.extended {
                        return vec![0x67, 0x00];
                    }
                    self.chain.extend_from_slice(data);
                    if cla == 0x90 {
                        return vec![0x90, 0x00];
                    }
                    let request = std::mem::take(&mut self.chain);
                    let mut answer = vec![0x00];
                    answer.extend_from_slice(&request);
                    if self.busy == 0 {
                        return self.out(answer);
                    }
                    self.polls_left = self.busy;
                    self.ready = Some(answer);
                    let mut k = self.keepalive.clone();
                    k.extend_from_slice(&[0x91, 0x00]);
                    k
                }
                (0x80, 0x11, 0x00) => {
                    if self.ready.is_none() {
                        return vec![0x69, 0x85];
                    }
                    self.polls_left = self.polls_left.saturating_sub(1);
                    if self.polls_left == 0 {
                        let answer = self.ready.take().unwrap();
                        return self.out(answer);
                    }
                    let mut k = self.keepalive.clone();
                    k.extend_from_slice(&[0x91, 0x00]);
                    k
                }
                (0x80, 0x11, 0x11) => {
                    self.ready = None;
                    vec![0x90, 0x00]
                }
                _ => vec![0x6D, 0x00],
            }
        }
    }

    fn client(
        card: &mut Framing,
        form: ApduForm,
    ) -> NfcCtap<impl FnMut(&[u8]) -> Result<Vec<u8>, String> + '_> {
        NfcCtap::new(move |a: &[u8]| Ok::<_, String>(card.handle(a)), "test reader")
            .with_form(form)
            .with_poll_interval(Duration::ZERO)
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    fn echoed(request: &[u8]) -> Vec<u8> {
        let mut e = vec![0x00];
        e.extend_from_slice(request);
        e
    }

    #[test]
    fn select_names_the_version_or_the_missing_application() {
        let mut card = Framing::new(256, 0);
        assert_eq!(client(&mut card, ApduForm::Short).select().unwrap(), FidoVersion::Fido2);
        card.select_answer = b"U2F_V2".to_vec();
        assert_eq!(client(&mut card, ApduForm::Short).select().unwrap(), FidoVersion::U2fV2);
        card.select_answer = b"PIV\x01".to_vec();
        assert_eq!(
            client(&mut card, ApduForm::Short).select().unwrap_err(),
            CtapTransportError::NotFido("PIV".into())
        );
        let mut none = |_: &[u8]| Ok::<_, String>(vec![0x6A, 0x82]);
        let e = NfcCtap::new(&mut none, "r").select().unwrap_err();
        assert_eq!(e, CtapTransportError::NoFidoApplication { sw: 0x6A82 });
        let mut odd = |_: &[u8]| Ok::<_, String>(vec![0x69, 0x85]);
        let e = NfcCtap::new(&mut odd, "r").select().unwrap_err();
        assert_eq!(
            e.to_string(),
            "SELECT of the FIDO application answered 6985 (conditions of use not satisfied)"
        );
    }

    #[test]
    fn a_long_request_is_chained_and_a_long_answer_collected() {
        let request: Vec<u8> = (0..700u32).map(|i| i as u8).collect();
        let mut card = Framing::new(100, 0);
        let answer = client(&mut card, ApduForm::Short).ctap(&request, far()).unwrap();
        assert_eq!(answer, echoed(&request));
        // Three blocks: 255 and 255 with CLA 90, then 190 with CLA 80 and Le.
        let msgs: Vec<_> = card.log.iter().filter(|a| a[1] == 0x10).collect();
        assert_eq!(
            msgs.iter().map(|a| (a[0], a[4])).collect::<Vec<_>>(),
            vec![(0x90, 255), (0x90, 255), (0x80, 190)]
        );
        assert_eq!(msgs[2].last(), Some(&0x00), "Le on the last block");
        assert!(msgs[..2].iter().all(|a| a.len() == 5 + 255), "no Le on chained blocks");
        // 701 answer bytes in chunks of 100: seven GET RESPONSE rounds.
        assert_eq!(card.log.iter().filter(|a| a[1] == 0xC0).count(), 7);
    }

    #[test]
    fn an_extended_request_goes_in_one_apdu() {
        let request = vec![0x06; 1000];
        let mut card = Framing::new(4096, 0);
        let answer = client(&mut card, ApduForm::Extended).ctap(&request, far()).unwrap();
        assert_eq!(answer, echoed(&request));
        assert_eq!(card.log.len(), 1);
        assert_eq!(&card.log[0][..7], &[0x80, 0x10, 0x80, 0x00, 0x00, 0x03, 0xE8]);
        assert_eq!(&card.log[0][card.log[0].len() - 2..], &[0x00, 0x00]);
        // A card without extended APDUs refuses with 6700.
        card.extended = false;
        let e = client(&mut card, ApduForm::Extended).ctap(&request, far()).unwrap_err();
        assert_eq!(e, CtapTransportError::Status { what: "NFCCTAP_MSG".into(), sw: 0x6700 });
        let e = client(&mut card, ApduForm::Extended).ctap(&vec![0; EXTENDED_MAX + 1], far()).unwrap_err();
        assert_eq!(e, CtapTransportError::TooLong { len: EXTENDED_MAX + 1, max: EXTENDED_MAX });
    }

    #[test]
    fn a_busy_authenticator_is_polled_until_it_answers() {
        let mut card = Framing::new(256, 3);
        let answer = client(&mut card, ApduForm::Short).ctap(&[0x04], far()).unwrap();
        assert_eq!(answer, vec![0x00, 0x04]);
        let polls = card.log.iter().filter(|a| a[..4] == [0x80, 0x11, 0x00, 0x00]).count();
        assert_eq!(polls, 3);
    }

    #[test]
    fn at_the_deadline_the_command_is_cancelled() {
        let mut card = Framing::new(256, usize::MAX);
        card.keepalive = vec![0x02];
        let deadline = Instant::now() + Duration::from_millis(30);
        let e = client(&mut card, ApduForm::Short).ctap(&[0x01, 0xA0], deadline).unwrap_err();
        assert_eq!(e, CtapTransportError::Timeout { command: 0x01, up_needed: true });
        assert_eq!(card.log.last().unwrap().as_slice(), &[0x80, 0x11, 0x11, 0x00]);
        assert!(card.ready.is_none(), "the responder saw the cancel");
        // A deadline already past sends nothing.
        let before = card.log.len();
        let e = client(&mut card, ApduForm::Short).ctap(&[0x04], Instant::now()).unwrap_err();
        assert_eq!(e, CtapTransportError::Timeout { command: 0x04, up_needed: false });
        assert_eq!(card.log.len(), before);
    }

    #[test]
    fn every_other_status_word_is_a_precise_error() {
        for (sw, meaning) in [
            (0x6700u16, "wrong length"),
            (0x6D00, "instruction not supported"),
            (0x6F00, "no precise diagnosis"),
        ] {
            let mut card = |_: &[u8]| Ok::<_, String>(sw.to_be_bytes().to_vec());
            let e = NfcCtap::new(&mut card, "r").ctap(&[0x04], far()).unwrap_err();
            assert_eq!(e.to_string(), format!("NFCCTAP_MSG answered {sw:04X} ({meaning})"));
        }
        // A chained block refused.
        let mut calls = 0;
        let mut card = |_: &[u8]| {
            calls += 1;
            Ok::<_, String>(vec![0x68, 0x84])
        };
        let e = NfcCtap::new(&mut card, "r").ctap(&[0x06; 300], far()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "block 1 of 2 of a chained NFCCTAP_MSG answered 6884 (command chaining not supported)"
        );
        // No status word, no status byte, an endless 61xx chain, a reader failure.
        let mut card = |_: &[u8]| Ok::<_, String>(vec![0x90]);
        assert!(
            NfcCtap::new(&mut card, "r")
                .ctap(&[0x04], far())
                .unwrap_err()
                .to_string()
                .contains("no status word")
        );
        let mut card = |_: &[u8]| Ok::<_, String>(vec![0x90, 0x00]);
        assert!(
            NfcCtap::new(&mut card, "r")
                .ctap(&[0x04], far())
                .unwrap_err()
                .to_string()
                .contains("without a status byte")
        );
        let mut card = |_: &[u8]| Ok::<_, String>(vec![0x61, 0x00]);
        assert!(
            NfcCtap::new(&mut card, "r")
                .ctap(&[0x04], far())
                .unwrap_err()
                .to_string()
                .contains("GET RESPONSE rounds")
        );
        let mut card = |_: &[u8]| Ok::<_, String>([vec![0xAB; 255], vec![0x61, 0x00]].concat());
        assert!(
            NfcCtap::new(&mut card, "r").ctap(&[0x04], far()).unwrap_err().to_string().contains("more than")
        );
        let mut card = |_: &[u8]| Err::<Vec<u8>, _>("reader gone");
        assert_eq!(
            NfcCtap::new(&mut card, "r").ctap(&[0x04], far()).unwrap_err(),
            CtapTransportError::Io("reader gone".into())
        );
        let mut card = |_: &[u8]| Ok::<_, String>(vec![0x90, 0x00]);
        assert_eq!(NfcCtap::new(&mut card, "r").ctap(&[], far()).unwrap_err(), CtapTransportError::Empty);
    }

    proptest! {
        #[test]
        fn any_request_and_answer_size_round_trips(
            len in 1usize..2000,
            chunk in 8usize..300,
            busy in 0usize..4,
            extended in any::<bool>(),
            seed in any::<u8>(),
        ) {
            let request: Vec<u8> = (0..len).map(|i| (i as u8) ^ seed).collect();
            let mut card = Framing::new(chunk, busy);
            let form = if extended { ApduForm::Extended } else { ApduForm::Short };
            let answer = client(&mut card, form).ctap(&request, far()).unwrap();
            prop_assert_eq!(answer, echoed(&request));
        }

        #[test]
        fn hostile_answers_are_errors_or_data_never_panics(
            answers in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..8),
            request in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut i = 0;
            let mut card = |_: &[u8]| {
                let a = answers[i % answers.len()].clone();
                i += 1;
                Ok::<_, String>(a)
            };
            let mut nfc = NfcCtap::new(&mut card, "r").with_poll_interval(Duration::ZERO);
            let _ = nfc.select();
            // Bounded: a card that keeps answering 9100 is cancelled at the deadline.
            match nfc.ctap(&request, Instant::now() + Duration::from_millis(20)) {
                Ok(data) => prop_assert!(!data.is_empty()),
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }
}
