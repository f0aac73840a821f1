//! CTAPHID, the USB HID binding (CTAP 2.1 §11.2), as pure functions over 64-byte reports, and a
//! client over any [`ReportIo`] (the Linux device file is [`super::hidraw`]).
//!
//! A message is split into one initialisation packet — channel id (4 bytes), command with bit 7
//! set, payload length (2 bytes, big-endian), the first 57 payload bytes — and continuation
//! packets — channel id, sequence number 0..=127, the next 59 bytes. So a message carries at
//! most 57 + 128 × 59 = [`MAX_PAYLOAD`] bytes.

use std::time::{Duration, Instant};

use super::{CtapTransport, CtapTransportError};

/// A HID report of the FIDO usage page: 64 bytes each way.
pub const REPORT_LEN: usize = 64;
const INIT_DATA: usize = REPORT_LEN - 7;
const CONT_DATA: usize = REPORT_LEN - 5;
/// The most payload bytes one message carries.
pub const MAX_PAYLOAD: usize = INIT_DATA + 128 * CONT_DATA;
/// The channel every device listens on for CTAPHID_INIT.
pub const BROADCAST_CID: u32 = 0xFFFF_FFFF;

/// CTAPHID command codes (without the initialisation bit).
pub mod command {
    pub const PING: u8 = 0x01;
    pub const MSG: u8 = 0x03;
    pub const INIT: u8 = 0x06;
    pub const WINK: u8 = 0x08;
    pub const CBOR: u8 = 0x10;
    pub const CANCEL: u8 = 0x11;
    pub const KEEPALIVE: u8 = 0x3B;
    pub const ERROR: u8 = 0x3F;
}

/// CTAPHID_KEEPALIVE status bytes.
pub mod keepalive {
    pub const PROCESSING: u8 = 0x01;
    pub const UP_NEEDED: u8 = 0x02;
}

/// INIT capability flags.
pub mod capability {
    pub const WINK: u8 = 0x01;
    pub const CBOR: u8 = 0x04;
    pub const NMSG: u8 = 0x08;
}

/// The name of a CTAPHID_ERROR code.
pub fn error_name(code: u8) -> &'static str {
    match code {
        0x01 => "ERR_INVALID_CMD",
        0x02 => "ERR_INVALID_PAR",
        0x03 => "ERR_INVALID_LEN",
        0x04 => "ERR_INVALID_SEQ",
        0x05 => "ERR_MSG_TIMEOUT",
        0x06 => "ERR_CHANNEL_BUSY",
        0x0A => "ERR_LOCK_REQUIRED",
        0x0B => "ERR_INVALID_CHANNEL",
        _ => "ERR_OTHER",
    }
}

/// Why a report or a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a HID report of {0} bytes, not {REPORT_LEN}")]
    ReportLength(usize),
    #[error("a message of {0} bytes is more than the {MAX_PAYLOAD} CTAPHID carries")]
    TooLong(usize),
    #[error("an initialisation packet announces {0} bytes, more than the {MAX_PAYLOAD} CTAPHID carries")]
    AnnouncedTooLong(usize),
    #[error("a continuation packet (sequence {0}) without an initialisation packet before it")]
    UnexpectedContinuation(u8),
    #[error("continuation packet {got} where {expected} was due")]
    OutOfSequence { expected: u8, got: u8 },
    #[error("a new message (command {0:#04x}) began before the last one was complete")]
    Interrupted(u8),
}

/// One report, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Init { cid: u32, cmd: u8, len: usize, data: &'a [u8] },
    Cont { cid: u32, seq: u8, data: &'a [u8] },
}

impl<'a> Packet<'a> {
    /// Parses a 64-byte report (without a report-id byte).
    pub fn parse(report: &'a [u8]) -> Result<Self, FrameError> {
        if report.len() != REPORT_LEN {
            return Err(FrameError::ReportLength(report.len()));
        }
        let cid = u32::from_be_bytes([report[0], report[1], report[2], report[3]]);
        let head = report[4];
        if head & 0x80 != 0 {
            let len = usize::from(u16::from_be_bytes([report[5], report[6]]));
            Ok(Packet::Init { cid, cmd: head & 0x7F, len, data: &report[7..] })
        } else {
            Ok(Packet::Cont { cid, seq: head, data: &report[5..] })
        }
    }

    pub fn cid(&self) -> u32 {
        match self {
            Packet::Init { cid, .. } | Packet::Cont { cid, .. } => *cid,
        }
    }
}

/// Splits a message into reports (zero-padded).
pub fn fragment(cid: u32, cmd: u8, payload: &[u8]) -> Result<Vec<[u8; REPORT_LEN]>, FrameError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(FrameError::TooLong(payload.len()));
    }
    let mut reports = Vec::new();
    let mut first = [0u8; REPORT_LEN];
    first[..4].copy_from_slice(&cid.to_be_bytes());
    first[4] = 0x80 | cmd;
    // Cannot truncate: the length is at most MAX_PAYLOAD (7609).
    first[5..7].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    let head = payload.len().min(INIT_DATA);
    first[7..7 + head].copy_from_slice(&payload[..head]);
    reports.push(first);
    for (seq, chunk) in payload[head..].chunks(CONT_DATA).enumerate() {
        let mut report = [0u8; REPORT_LEN];
        report[..4].copy_from_slice(&cid.to_be_bytes());
        // At most 128 chunks follow (the length check above), so seq ≤ 127.
        report[4] = seq as u8;
        report[5..5 + chunk.len()].copy_from_slice(chunk);
        reports.push(report);
    }
    Ok(reports)
}

/// A complete message from the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub cmd: u8,
    pub payload: Vec<u8>,
}

/// Collects the packets of one channel into messages. Packets of other channels are not its
/// business: [`Reassembler::push`] skips them.
#[derive(Debug)]
pub struct Reassembler {
    cid: u32,
    partial: Option<(u8, usize, Vec<u8>, u8)>,
}

impl Reassembler {
    pub fn new(cid: u32) -> Self {
        Self { cid, partial: None }
    }

    /// Takes one report; returns a message once its last packet is in.
    pub fn push(&mut self, report: &[u8]) -> Result<Option<Message>, FrameError> {
        let packet = Packet::parse(report)?;
        if packet.cid() != self.cid {
            return Ok(None);
        }
        match packet {
            Packet::Init { cmd, len, data, .. } => {
                if self.partial.is_some() {
                    self.partial = None;
                    return Err(FrameError::Interrupted(cmd));
                }
                if len > MAX_PAYLOAD {
                    return Err(FrameError::AnnouncedTooLong(len));
                }
                let mut payload = Vec::with_capacity(len);
                payload.extend_from_slice(&data[..len.min(data.len())]);
                if payload.len() == len {
                    return Ok(Some(Message { cmd, payload }));
                }
                self.partial = Some((cmd, len, payload, 0));
                Ok(None)
            }
            Packet::Cont { seq, data, .. } => {
                let Some((cmd, len, mut payload, expected)) = self.partial.take() else {
                    return Err(FrameError::UnexpectedContinuation(seq));
                };
                if seq != expected {
                    return Err(FrameError::OutOfSequence { expected, got: seq });
                }
                let take = (len - payload.len()).min(data.len());
                payload.extend_from_slice(&data[..take]);
                if payload.len() == len {
                    return Ok(Some(Message { cmd, payload }));
                }
                self.partial = Some((cmd, len, payload, expected + 1));
                Ok(None)
            }
        }
    }
}

/// What CTAPHID_INIT answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitInfo {
    pub cid: u32,
    pub protocol: u8,
    pub version: (u8, u8, u8),
    pub capabilities: u8,
}

/// Checks an INIT answer against the nonce that was sent. `None` when the answer is to another
/// host's INIT (another nonce), which the host must ignore.
pub fn parse_init(nonce: &[u8; 8], payload: &[u8]) -> Result<Option<InitInfo>, CtapTransportError> {
    if payload.len() < 17 {
        return Err(CtapTransportError::Protocol(format!(
            "CTAPHID_INIT answered {} bytes, not 17",
            payload.len()
        )));
    }
    if payload[..8] != nonce[..] {
        return Ok(None);
    }
    let cid = u32::from_be_bytes([payload[8], payload[9], payload[10], payload[11]]);
    if cid == BROADCAST_CID || cid == 0 {
        return Err(CtapTransportError::Protocol(format!(
            "CTAPHID_INIT allocated the reserved channel {cid:#010x}"
        )));
    }
    Ok(Some(InitInfo {
        cid,
        protocol: payload[12],
        version: (payload[13], payload[14], payload[15]),
        capabilities: payload[16],
    }))
}

/// Reports to and from a HID device.
pub trait ReportIo {
    /// Writes one 64-byte report.
    fn write_report(&mut self, report: &[u8; REPORT_LEN]) -> Result<(), CtapTransportError>;
    /// Reads one report, waiting at most `wait`; `None` when none came.
    fn read_report(&mut self, wait: Duration) -> Result<Option<Vec<u8>>, CtapTransportError>;
}

/// How long a device may take to answer CTAPHID_INIT.
const INIT_WAIT: Duration = Duration::from_secs(3);

/// A CTAP2 authenticator on a HID device, on a channel of its own.
pub struct HidCtap<D> {
    io: D,
    cid: u32,
    info: InitInfo,
    name: String,
}

impl<D: ReportIo> HidCtap<D> {
    /// Allocates a channel with CTAPHID_INIT (a random nonce on the broadcast channel) and
    /// checks that the device speaks CTAP2 (capability CBOR). `name` says what it is.
    pub fn open(mut io: D, name: impl Into<String>) -> Result<Self, CtapTransportError> {
        let name = name.into();
        let nonce: [u8; 8] = rand::random();
        let deadline = Instant::now() + INIT_WAIT;
        send(&mut io, BROADCAST_CID, command::INIT, &nonce)?;
        let mut inbox = Reassembler::new(BROADCAST_CID);
        let info = loop {
            let message = receive(&mut io, &mut inbox, deadline)?
                .ok_or_else(|| CtapTransportError::Io(format!("{name}: no answer to CTAPHID_INIT")))?;
            match message.cmd {
                command::INIT => {
                    if let Some(info) = parse_init(&nonce, &message.payload)? {
                        break info;
                    }
                }
                command::ERROR => {
                    return Err(CtapTransportError::HidError {
                        code: message.payload.first().copied().unwrap_or(0x7F),
                    });
                }
                // Anything else on the broadcast channel belongs to someone else.
                _ => {}
            }
        };
        if info.capabilities & capability::CBOR == 0 {
            return Err(CtapTransportError::Protocol(format!(
                "{name} is a U2F-only device (no CTAPHID_CBOR capability)"
            )));
        }
        Ok(Self { io, cid: info.cid, info, name })
    }

    pub fn info(&self) -> InitInfo {
        self.info
    }
}

/// Writes a message as reports.
fn send<D: ReportIo>(io: &mut D, cid: u32, cmd: u8, payload: &[u8]) -> Result<(), CtapTransportError> {
    let reports = fragment(cid, cmd, payload).map_err(|e| CtapTransportError::Protocol(e.to_string()))?;
    for report in &reports {
        io.write_report(report)?;
    }
    Ok(())
}

/// The next whole message on `inbox`'s channel, or `None` at the deadline.
fn receive<D: ReportIo>(
    io: &mut D,
    inbox: &mut Reassembler,
    deadline: Instant,
) -> Result<Option<Message>, CtapTransportError> {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        let Some(report) = io.read_report(deadline - now)? else { continue };
        if let Some(message) = inbox.push(&report).map_err(|e| CtapTransportError::Protocol(e.to_string()))? {
            return Ok(Some(message));
        }
    }
}

/// How long a cancelled command may take to answer (with CTAP2_ERR_KEEPALIVE_CANCEL) before the
/// client stops waiting.
const CANCEL_WAIT: Duration = Duration::from_millis(500);

impl<D: ReportIo> CtapTransport for HidCtap<D> {
    fn ctap(&mut self, request: &[u8], deadline: Instant) -> Result<Vec<u8>, CtapTransportError> {
        let Some(&cmd) = request.first() else { return Err(CtapTransportError::Empty) };
        if request.len() > MAX_PAYLOAD {
            return Err(CtapTransportError::TooLong { len: request.len(), max: MAX_PAYLOAD });
        }
        if Instant::now() >= deadline {
            return Err(CtapTransportError::Timeout { command: cmd, up_needed: false });
        }
        send(&mut self.io, self.cid, command::CBOR, request)?;
        let mut inbox = Reassembler::new(self.cid);
        let mut up_needed = false;
        loop {
            let Some(message) = receive(&mut self.io, &mut inbox, deadline)? else {
                // The device keeps the command running until told: cancel, and let it answer.
                send(&mut self.io, self.cid, command::CANCEL, &[])?;
                let _ = receive(&mut self.io, &mut Reassembler::new(self.cid), Instant::now() + CANCEL_WAIT);
                return Err(CtapTransportError::Timeout { command: cmd, up_needed });
            };
            match message.cmd {
                command::CBOR if message.payload.is_empty() => {
                    return Err(CtapTransportError::Protocol(
                        "CTAPHID_CBOR answered without a status byte".into(),
                    ));
                }
                command::CBOR => return Ok(message.payload),
                command::KEEPALIVE => {
                    up_needed |= message.payload.first() == Some(&keepalive::UP_NEEDED);
                }
                command::ERROR => {
                    return Err(CtapTransportError::HidError {
                        code: message.payload.first().copied().unwrap_or(0x7F),
                    });
                }
                other => {
                    return Err(CtapTransportError::Protocol(format!(
                        "CTAPHID command {other:#04x} in answer to CTAPHID_CBOR"
                    )));
                }
            }
        }
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[test]
    fn the_largest_message_fills_128_continuations() {
        let payload: Vec<u8> = (0..MAX_PAYLOAD).map(|i| i as u8).collect();
        let reports = fragment(0x0102_0304, command::CBOR, &payload).unwrap();
        assert_eq!(reports.len(), 129);
        assert_eq!(&reports[0][..7], &[1, 2, 3, 4, 0x90, 0x1D, 0xB9]);
        assert_eq!(reports[128][4], 127);
        assert_eq!(
            fragment(1, command::CBOR, &vec![0; MAX_PAYLOAD + 1]).unwrap_err(),
            FrameError::TooLong(7610)
        );
        let mut inbox = Reassembler::new(0x0102_0304);
        let mut got = None;
        for r in &reports {
            got = inbox.push(r).unwrap();
        }
        assert_eq!(got, Some(Message { cmd: command::CBOR, payload }));
        // An empty message is one packet.
        let empty = fragment(7, command::CANCEL, &[]).unwrap();
        assert_eq!(empty.len(), 1);
        assert_eq!(
            Reassembler::new(7).push(&empty[0]).unwrap(),
            Some(Message { cmd: command::CANCEL, payload: vec![] })
        );
    }

    #[test]
    fn malformed_reports_get_precise_errors() {
        let mut inbox = Reassembler::new(9);
        assert_eq!(inbox.push(&[0; 10]).unwrap_err(), FrameError::ReportLength(10));
        let mut cont = [0u8; 64];
        cont[..4].copy_from_slice(&9u32.to_be_bytes());
        cont[4] = 3;
        assert_eq!(inbox.push(&cont).unwrap_err(), FrameError::UnexpectedContinuation(3));
        let reports = fragment(9, command::CBOR, &[0xAA; 200]).unwrap();
        inbox.push(&reports[0]).unwrap();
        assert_eq!(inbox.push(&reports[2]).unwrap_err(), FrameError::OutOfSequence { expected: 0, got: 1 });
        inbox.push(&reports[0]).unwrap();
        assert_eq!(inbox.push(&reports[0]).unwrap_err(), FrameError::Interrupted(command::CBOR));
        let mut long = [0u8; 64];
        long[..4].copy_from_slice(&9u32.to_be_bytes());
        long[4] = 0x90;
        long[5..7].copy_from_slice(&8000u16.to_be_bytes());
        assert_eq!(inbox.push(&long).unwrap_err(), FrameError::AnnouncedTooLong(8000));
        // Another channel's packets are skipped, whatever they hold.
        let other = fragment(10, command::CBOR, &[1, 2, 3]).unwrap();
        assert_eq!(inbox.push(&other[0]).unwrap(), None);
    }

    #[test]
    fn init_answers_are_matched_by_nonce() {
        let nonce = [1, 2, 3, 4, 5, 6, 7, 8];
        let mut answer = nonce.to_vec();
        answer.extend_from_slice(&[0, 0, 0, 0x2A, 2, 5, 7, 2, 0x0D]);
        let info = parse_init(&nonce, &answer).unwrap().unwrap();
        assert_eq!(info, InitInfo { cid: 0x2A, protocol: 2, version: (5, 7, 2), capabilities: 0x0D });
        assert_eq!(parse_init(&[9; 8], &answer).unwrap(), None, "another host's INIT");
        assert!(parse_init(&nonce, &answer[..16]).unwrap_err().to_string().contains("16 bytes"));
        answer[8..12].copy_from_slice(&[0xFF; 4]);
        assert!(parse_init(&nonce, &answer).unwrap_err().to_string().contains("reserved channel"));
    }

    /// A scripted device: answers each written message from a script of (command, payload)
    /// replies, on the channel the host used, with other channels' traffic mixed in. It frames
    /// like a device and computes nothing.
    struct Scripted {
        cid: u32,
        replies: VecDeque<Vec<(u8, Vec<u8>)>>,
        inbox: Option<Reassembler>,
        outbox: VecDeque<Vec<u8>>,
        written: Vec<Message>,
        noise: bool,
    }

    impl Scripted {
        fn new(cid: u32, replies: Vec<Vec<(u8, Vec<u8>)>>) -> Self {
            Self {
                cid,
                replies: replies.into(),
                inbox: None,
                outbox: VecDeque::new(),
                written: Vec::new(),
                noise: true,
            }
        }
    }

    impl ReportIo for Scripted {
        fn write_report(&mut self, report: &[u8; REPORT_LEN]) -> Result<(), CtapTransportError> {
            let cid = u32::from_be_bytes([report[0], report[1], report[2], report[3]]);
            let inbox = self.inbox.get_or_insert_with(|| Reassembler::new(cid));
            let Some(message) = inbox.push(report).unwrap() else { return Ok(()) };
            self.inbox = None;
            let reply_cid = cid;
            if message.cmd == command::INIT {
                let mut payload = message.payload.clone();
                payload.extend_from_slice(&self.cid.to_be_bytes());
                payload.extend_from_slice(&[2, 5, 4, 3, capability::CBOR | capability::WINK]);
                // Another host's INIT answer first: a different nonce.
                let mut other = vec![0xEE; 8];
                other.extend_from_slice(&[0, 0, 0, 0x77, 2, 5, 4, 3, 5]);
                for r in fragment(BROADCAST_CID, command::INIT, &other).unwrap() {
                    self.outbox.push_back(r.to_vec());
                }
                for r in fragment(reply_cid, command::INIT, &payload).unwrap() {
                    self.outbox.push_back(r.to_vec());
                }
            } else if let Some(replies) = self.replies.pop_front() {
                for (cmd, payload) in replies {
                    if self.noise {
                        for r in fragment(reply_cid ^ 0x5555, command::CBOR, &[0x00; 100]).unwrap() {
                            self.outbox.push_back(r.to_vec());
                        }
                    }
                    for r in fragment(reply_cid, cmd, &payload).unwrap() {
                        self.outbox.push_back(r.to_vec());
                    }
                }
            }
            self.written.push(message);
            Ok(())
        }

        fn read_report(&mut self, _wait: Duration) -> Result<Option<Vec<u8>>, CtapTransportError> {
            Ok(self.outbox.pop_front())
        }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[test]
    fn a_request_goes_out_on_the_allocated_channel_with_keepalives_in_between() {
        let answer: Vec<u8> = std::iter::once(0x00).chain((0..300).map(|i| i as u8)).collect();
        let device = Scripted::new(
            0x0A0B_0C0D,
            vec![vec![
                (command::KEEPALIVE, vec![keepalive::PROCESSING]),
                (command::KEEPALIVE, vec![keepalive::UP_NEEDED]),
                (command::CBOR, answer.clone()),
            ]],
        );
        let mut hid = HidCtap::open(device, "test device").unwrap();
        assert_eq!(hid.info().cid, 0x0A0B_0C0D);
        assert_eq!(hid.info().version, (5, 4, 3));
        let request = vec![0x06; 200];
        assert_eq!(hid.ctap(&request, far()).unwrap(), answer);
        let written = &hid.io.written;
        assert_eq!(written[0].cmd, command::INIT);
        assert_eq!(written[0].payload.len(), 8, "an 8-byte nonce");
        assert_eq!(written[1], Message { cmd: command::CBOR, payload: request });
    }

    #[test]
    fn device_errors_and_odd_answers_are_precise() {
        let device = Scripted::new(
            5,
            vec![
                vec![(command::ERROR, vec![0x06])],
                vec![(command::MSG, vec![1])],
                vec![(command::CBOR, vec![])],
            ],
        );
        let mut hid = HidCtap::open(device, "d").unwrap();
        assert_eq!(
            hid.ctap(&[0x04], far()).unwrap_err().to_string(),
            "the device reported CTAPHID error 0x06 (ERR_CHANNEL_BUSY)"
        );
        assert!(hid.ctap(&[0x04], far()).unwrap_err().to_string().contains("command 0x03"));
        assert!(hid.ctap(&[0x04], far()).unwrap_err().to_string().contains("without a status byte"));
        assert_eq!(hid.ctap(&[], far()).unwrap_err(), CtapTransportError::Empty);
        assert_eq!(
            hid.ctap(&vec![0; MAX_PAYLOAD + 1], far()).unwrap_err(),
            CtapTransportError::TooLong { len: MAX_PAYLOAD + 1, max: MAX_PAYLOAD }
        );
    }

    #[test]
    fn a_command_still_running_at_the_deadline_is_cancelled() {
        let device = Scripted::new(5, vec![vec![(command::KEEPALIVE, vec![keepalive::UP_NEEDED])], vec![]]);
        let mut hid = HidCtap::open(device, "d").unwrap();
        let e = hid.ctap(&[0x01, 0xA0], Instant::now() + Duration::from_millis(20)).unwrap_err();
        assert_eq!(e, CtapTransportError::Timeout { command: 0x01, up_needed: true });
        assert_eq!(hid.io.written.last().unwrap(), &Message { cmd: command::CANCEL, payload: vec![] });
    }

    #[test]
    fn a_u2f_only_device_is_refused() {
        struct U2fOnly(VecDeque<Vec<u8>>);
        impl ReportIo for U2fOnly {
            fn write_report(&mut self, report: &[u8; REPORT_LEN]) -> Result<(), CtapTransportError> {
                let mut payload = report[7..15].to_vec();
                payload.extend_from_slice(&[0, 0, 0, 1, 2, 1, 0, 0, capability::WINK]);
                self.0.extend(
                    fragment(BROADCAST_CID, command::INIT, &payload).unwrap().into_iter().map(|r| r.to_vec()),
                );
                Ok(())
            }
            fn read_report(&mut self, _: Duration) -> Result<Option<Vec<u8>>, CtapTransportError> {
                Ok(self.0.pop_front())
            }
        }
        let e = HidCtap::open(U2fOnly(VecDeque::new()), "old key").err().unwrap();
        assert_eq!(e.to_string(), "old key is a U2F-only device (no CTAPHID_CBOR capability)");
    }

    proptest! {
        #[test]
        fn fragment_and_reassemble_round_trip(
            cid in any::<u32>(),
            cmd in 0u8..0x80,
            payload in proptest::collection::vec(any::<u8>(), 0..1500),
        ) {
            let reports = fragment(cid, cmd, &payload).unwrap();
            prop_assert_eq!(reports.len(), 1 + payload.len().saturating_sub(INIT_DATA).div_ceil(CONT_DATA));
            let mut inbox = Reassembler::new(cid);
            let (last, rest) = reports.split_last().unwrap();
            for r in rest {
                prop_assert_eq!(inbox.push(r).unwrap(), None);
            }
            prop_assert_eq!(inbox.push(last).unwrap(), Some(Message { cmd, payload }));
        }

        #[test]
        fn arbitrary_reports_are_errors_or_progress_never_panics(
            reports in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..70), 0..40),
            cid in prop_oneof![Just(0u32), any::<u32>()],
        ) {
            let mut inbox = Reassembler::new(cid);
            for r in &reports {
                if let Ok(Some(m)) = inbox.push(r) {
                    prop_assert!(m.payload.len() <= MAX_PAYLOAD);
                }
            }
        }

        #[test]
        fn reordered_continuations_are_refused(payload in proptest::collection::vec(any::<u8>(), 200..1000), swap in 1usize..3) {
            let mut reports = fragment(1, command::CBOR, &payload).unwrap();
            reports.swap(swap, swap + 1);
            let mut inbox = Reassembler::new(1);
            let mut outcome = Ok(None);
            for r in &reports {
                outcome = inbox.push(r);
                if outcome.is_err() {
                    break;
                }
            }
            prop_assert!(matches!(outcome, Err(FrameError::OutOfSequence { .. })), "{:?}", outcome);
        }
    }
}
