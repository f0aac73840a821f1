//! The agent against the software card in process, with a small WebSocket peer in each test that
//! plays the server's side of the wire protocol and drives real APDUs at the card. The PC/SC
//! path (through pcscd and vpcd) is covered in `crates/lanyard/tests/interop.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use lanyard_agent::AgentError;
use lanyard_agent::cards::{Compatibility, identify};
use lanyard_agent::relay::{
    DeviceId, DeviceState, FixedPin, Next, Outcome, PinOutcome, PinPrompt, PinSource, Progress, Relay,
    SessionCard, SessionOptions, SkipPinChange, Unlinked, run_session_with,
};
use lanyard_core::model::{PinRuleError, PinRules};
use lanyard_piv::apdu::Command;
use lanyard_piv::mgmkey::{DEFAULT_MANAGEMENT_KEY, ManagementKey, MgmAlgorithm};
use lanyard_piv::objects::{Chuid, FascN};
use lanyard_piv::{ApduHandler, CardTransport, InProcess, Piv, TransportError, commands, tag};
use lanyard_protocol::{AgentFrame, PROTOCOL_VERSION, Secret, ServerFrame, VERSION_HEADER};
use lanyard_vcard::{AttestationRoot, CardImage, NewCard, VirtualCard};
use proptest::prelude::*;
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};
use zeroize::Zeroizing;

type Card = InProcess<VirtualCard>;
const TICKET: &str = "tkt-0123456789";
const READER: &str = "Test Reader 00";

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000)
}

fn image(opts: &NewCard) -> CardImage {
    static ROOT: OnceLock<(tempfile::TempDir, AttestationRoot)> = OnceLock::new();
    let (_, root) = ROOT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = AttestationRoot::open_or_create(dir.path(), t0()).unwrap();
        (dir, root)
    });
    VirtualCard::new_image(root, opts, t0()).unwrap()
}

fn fresh_card() -> Card {
    static IMAGE: OnceLock<CardImage> = OnceLock::new();
    let img = IMAGE.get_or_init(|| image(&NewCard::default())).clone();
    InProcess(VirtualCard::from_image(img).unwrap())
}

/// A factory-fresh card without the FIDO2 application (an image from before it existed; like a
/// YubiKey before 5.8 over CCID).
fn card_without_fido() -> Card {
    let mut img = image(&NewCard::default());
    img.fido = None;
    InProcess(VirtualCard::from_image(img).unwrap())
}

fn hexs(b: &[u8]) -> String {
    hex::encode_upper(b)
}

fn bytes(c: &Command) -> Vec<u8> {
    c.to_bytes().unwrap()
}

/// The server's side of one connection.
struct Peer<S: Read + Write> {
    ws: WebSocket<S>,
    ticket: Option<String>,
    path: String,
    /// The agent's protocol version header.
    version: Option<String>,
}

impl<S: Read + Write> Peer<S> {
    fn send(&mut self, frame: ServerFrame) {
        self.ws.send(Message::text(frame.to_text())).unwrap();
    }

    fn recv(&mut self) -> AgentFrame {
        loop {
            match self.ws.read().unwrap() {
                Message::Text(t) => return AgentFrame::parse(t.as_str()).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected message {other:?}"),
            }
        }
    }

    /// Sends one batch; returns the raw answers.
    fn transmit(&mut self, seq: u64, step: &str, apdus: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let apdus: Vec<String> = apdus.iter().map(|a| hexs(a)).collect();
        self.send(transmit_frame(seq, step, apdus));
        match self.recv() {
            AgentFrame::Responses { seq: got, responses } => {
                assert_eq!(got, seq);
                responses.iter().map(|r| hex::decode(r).unwrap()).collect()
            }
            other => panic!("expected responses, got {other:?}"),
        }
    }

    /// Waits for the agent to close.
    fn finish(mut self) {
        while self.ws.read().is_ok() {}
    }
}

fn transmit_frame(seq: u64, step: &str, apdus: Vec<String>) -> ServerFrame {
    let done = u32::try_from(seq).unwrap();
    ServerFrame::Transmit { seq, step: step.into(), done, total: 9, apdus, answer_within_secs: 60 }
}

/// `change_pin` from `old`, with a minute to answer.
fn change_pin(seq: u64, old: &str) -> ServerFrame {
    ServerFrame::ChangePin {
        seq,
        old_pin: Secret::new(old),
        rules: PinRules::default(),
        answer_within_secs: 60,
        new_pin: None,
    }
}

fn device_id() -> DeviceId {
    "7d1c6d39-1b0e-4f57-9c1e-0d4b1f8e2a11".parse().unwrap()
}

fn sw(resp: &[u8]) -> u16 {
    u16::from_be_bytes([resp[resp.len() - 2], resp[resp.len() - 1]])
}

#[allow(clippy::result_large_err)] // tungstenite's callback signature
fn accept<S: Read + Write>(stream: S) -> Peer<S> {
    accept_as(stream, Some(&PROTOCOL_VERSION.to_string()))
}

/// Accepts the upgrade naming `version` (none: a server from before versioning).
#[allow(clippy::result_large_err)] // tungstenite's callback signature
fn accept_as<S: Read + Write>(stream: S, version: Option<&str>) -> Peer<S> {
    let mut ticket = None;
    let mut path = String::new();
    let mut agent_version = None;
    let ws = tungstenite::accept_hdr(
        stream,
        |req: &tungstenite::handshake::server::Request,
         mut resp: tungstenite::handshake::server::Response| {
            let header = |name: &str| req.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
            ticket = header("x-lanyard-ticket");
            agent_version = header(VERSION_HEADER);
            path = req.uri().path().to_owned();
            if let Some(v) = version {
                resp.headers_mut().insert(VERSION_HEADER, v.parse().unwrap());
            }
            Ok(resp)
        },
    )
    .unwrap();
    Peer { ws, ticket, path, version: agent_version }
}

/// A plain-WebSocket server on 127.0.0.1 for one connection; checks the handshake and the hello.
fn serve<R: Send + 'static>(
    script: impl FnOnce(&mut Peer<TcpStream>) -> R + Send + 'static,
) -> (String, JoinHandle<R>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/lanyard/", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let mut peer = accept(tcp);
        check_hello(&mut peer);
        let r = script(&mut peer);
        peer.finish();
        r
    });
    (url, handle)
}

fn check_hello<S: Read + Write>(peer: &mut Peer<S>) {
    assert_eq!(peer.ticket.as_deref(), Some(TICKET));
    assert_eq!(peer.path, "/lanyard/api/v1/agent/connect");
    assert_eq!(peer.version, Some(PROTOCOL_VERSION.to_string()));
    let hello = peer.recv();
    let want = AgentFrame::Hello {
        protocol: PROTOCOL_VERSION,
        agent: lanyard_agent::AGENT_NAME.into(),
        reader: READER.into(),
        atr: hexs(&lanyard_vcard::atr()),
        features: vec![
            lanyard_protocol::link::FEATURE_SERVER_PIN.into(),
            lanyard_protocol::link::FEATURE_CTAP.into(),
        ],
    };
    assert_eq!(hello, want);
}

fn opts(url: &str) -> SessionOptions {
    let mut o = SessionOptions::new(url, TICKET, READER);
    o.read_timeout = Duration::from_secs(20);
    o
}

fn run(url: &str, card: &mut Card, pins: &mut dyn PinSource) -> (Result<Outcome, AgentError>, Vec<Progress>) {
    let mut events = Vec::new();
    let r = run_session_with(&opts(url), card, &lanyard_vcard::atr(), pins, &mut |p| events.push(p.clone()));
    (r, events)
}

fn done<S: Read + Write>(peer: &mut Peer<S>, state: DeviceState) {
    peer.send(ServerFrame::Done { device: device_id(), state });
}

/// Authenticates with the factory management key through the relay, as the engine would.
fn authenticate(peer: &mut Peer<TcpStream>, seq: &mut u64) {
    let key = ManagementKey::new(MgmAlgorithm::TripleDes, &DEFAULT_MANAGEMENT_KEY).unwrap();
    *seq += 1;
    let r = peer.transmit(
        *seq,
        "authenticate",
        &[bytes(&commands::select()), bytes(&commands::mutual_auth_witness(MgmAlgorithm::TripleDes))],
    );
    assert_eq!(sw(&r[1]), 0x9000);
    let challenge = [7u8; 8];
    let second = commands::mutual_auth_response(&key, &r[1][..r[1].len() - 2], &challenge).unwrap();
    *seq += 1;
    let r = peer.transmit(*seq, "authenticate", &[bytes(&second)]);
    assert_eq!(sw(&r[0]), 0x9000);
    commands::check_mutual_auth(&key, &challenge, &r[0][..r[0].len() - 2]).unwrap();
}

fn verify_sw(card: &mut Card, pin: &str) -> u16 {
    card.0.reset_session();
    let mut piv = Piv::new(&mut *card);
    piv.exchange(&commands::verify_pin(pin.as_bytes()).unwrap()).unwrap().sw.to_u16()
}

fn pin_tries(card: &mut Card) -> u16 {
    let mut piv = Piv::new(&mut *card);
    piv.exchange(&commands::select()).unwrap();
    piv.exchange(&commands::pin_status()).unwrap().sw.to_u16()
}

#[test]
fn batches_run_in_order_and_stop_at_the_first_failure() {
    let (url, server) = serve(|peer| {
        let r = peer.transmit(
            1,
            "detect",
            &[bytes(&commands::select()), bytes(&commands::get_version()), bytes(&commands::get_serial())],
        );
        assert_eq!(r.len(), 3);
        assert!(r.iter().all(|r| sw(r) == 0x9000));
        assert_eq!(&r[1][..3], &[5, 7, 2]);
        // The CHUID is absent (6A82): the batch stops there, GET VERSION is not sent.
        let r = peer.transmit(
            2,
            "detect",
            &[bytes(&commands::get_data(tag::CHUID)), bytes(&commands::get_version())],
        );
        assert_eq!(r.len(), 1);
        assert_eq!(sw(&r[0]), 0x6A82);
        // An empty batch answers an empty list.
        assert!(peer.transmit(3, "noop", &[]).is_empty());
        done(peer, DeviceState::Pending);
    });
    let mut card = fresh_card();
    let (r, events) = run(&url, &mut card, &mut SkipPinChange);
    server.join().unwrap();
    let outcome = r.unwrap();
    assert_eq!(outcome.state, DeviceState::Pending);
    assert_eq!(outcome.pin, PinOutcome::NotAsked);
    assert_eq!(events[0], Progress::Connected);
    assert_eq!(events[1], Progress::Step { step: "detect".into(), done: 1, total: 9 });
    assert_eq!(events.len(), 4);
}

#[test]
fn long_put_data_is_chained_and_long_answers_are_collected() {
    let object: Vec<u8> = {
        let inner: Vec<u8> = (0..700u32).map(|i| (i % 251) as u8).collect();
        let mut o = vec![0x53, 0x82, (inner.len() >> 8) as u8, inner.len() as u8];
        o.extend_from_slice(&inner);
        o
    };
    let expected = object.clone();
    let (url, server) = serve(move |peer| {
        let mut seq = 0;
        authenticate(peer, &mut seq);
        let put = commands::put_data(tag::PRINTED_INFORMATION, &expected);
        assert!(put.data.len() > 255);
        let r = peer.transmit(seq + 1, "write", &[bytes(&put)]);
        assert_eq!(r, vec![vec![0x90, 0x00]]);
        done(peer, DeviceState::Active);
    });
    let mut card = fresh_card();
    let (r, _) = run(&url, &mut card, &mut SkipPinChange);
    server.join().unwrap();
    assert_eq!(r.unwrap().state, DeviceState::Active);
    // Reading it back needs the PIN (printed information) and comes in 61xx pieces.
    let mut piv = Piv::new(&mut card);
    piv.select().unwrap();
    piv.verify_pin(b"123456").unwrap();
    assert_eq!(piv.get_data(tag::PRINTED_INFORMATION).unwrap(), object);
}

#[test]
fn change_pin_sets_the_new_pin_on_the_card() {
    let (url, server) = serve(|peer| {
        peer.transmit(1, "select", &[bytes(&commands::select())]);
        peer.send(change_pin(2, "123456"));
        let answer = peer.recv();
        done(peer, DeviceState::Active);
        answer
    });
    let mut card = fresh_card();
    let mut pins = FixedPin(Zeroizing::new("27182818".into()));
    let (r, events) = run(&url, &mut card, &mut pins);
    let answer = server.join().unwrap();
    assert_eq!(answer, AgentFrame::PinChanged { seq: 2, sw: "9000".into() });
    // The new PIN went nowhere but the card.
    assert!(!answer.to_text().contains("27182818"));
    let outcome = r.unwrap();
    assert_eq!(outcome.pin, PinOutcome::Changed);
    assert!(events.contains(&Progress::PinRequested) && events.contains(&Progress::PinChanged));
    assert_eq!(verify_sw(&mut card, "123456"), 0x63C2);
    assert_eq!(verify_sw(&mut card, "27182818"), 0x9000);
}

/// A PIN the holder typed in the portal comes with `change_pin` (feature `server_pin`): the agent
/// writes it without asking its own PIN source, and a rule-breaking one is refused locally.
#[test]
fn a_pin_sent_by_the_server_is_used_instead_of_asking() {
    let (url, server) = serve(|peer| {
        peer.transmit(1, "select", &[bytes(&commands::select())]);
        let mut frame = change_pin(2, "123456");
        if let ServerFrame::ChangePin { new_pin, .. } = &mut frame {
            *new_pin = Some(Secret::new("1111111"));
        }
        peer.send(frame);
        let refused = peer.recv();
        let mut frame = change_pin(3, "123456");
        if let ServerFrame::ChangePin { new_pin, .. } = &mut frame {
            *new_pin = Some(Secret::new("27182818"));
        }
        peer.send(frame);
        let answer = peer.recv();
        done(peer, DeviceState::Active);
        (refused, answer)
    });
    let mut card = fresh_card();
    // A source that would fail the test if the agent asked it.
    struct NeverAsked;
    impl PinSource for NeverAsked {
        fn new_pin(&mut self, _: &PinPrompt<'_>) -> Result<Option<Zeroizing<String>>, AgentError> {
            panic!("the agent asked locally although the server sent the PIN")
        }
    }
    let (r, _) = run(&url, &mut card, &mut NeverAsked);
    let (refused, answer) = server.join().unwrap();
    match refused {
        AgentFrame::Error { seq: Some(2), message } => {
            assert!(message.contains("must not repeat one digit"), "{message}")
        }
        other => panic!("expected the trivial PIN to be refused, got {other:?}"),
    }
    assert_eq!(answer, AgentFrame::PinChanged { seq: 3, sw: "9000".into() });
    assert_eq!(r.unwrap().pin, PinOutcome::Changed);
    assert_eq!(verify_sw(&mut card, "27182818"), 0x9000);
}

/// Offers a trivial PIN first, then a good one; records what it was told.
struct Stubborn {
    offers: Vec<&'static str>,
    told: Vec<Option<PinRuleError>>,
}

impl PinSource for Stubborn {
    fn new_pin(&mut self, prompt: &PinPrompt<'_>) -> Result<Option<Zeroizing<String>>, AgentError> {
        self.told.push(prompt.rejected.cloned());
        Ok(Some(Zeroizing::new(self.offers.remove(0).to_owned())))
    }
}

#[test]
fn a_rule_breaking_pin_is_refused_locally_and_asked_again() {
    let (url, server) = serve(|peer| {
        peer.send(change_pin(1, "123456"));
        let answer = peer.recv();
        done(peer, DeviceState::Active);
        answer
    });
    let mut card = fresh_card();
    let mut pins = Stubborn { offers: vec!["654321", "1111111", "97531864"], told: Vec::new() };
    let (r, _) = run(&url, &mut card, &mut pins);
    assert!(matches!(server.join().unwrap(), AgentFrame::PinChanged { seq: 1, .. }));
    assert_eq!(pins.told, vec![None, Some(PinRuleError::Sequential), Some(PinRuleError::AllSame)]);
    assert_eq!(r.unwrap().pin, PinOutcome::Changed);
    assert_eq!(verify_sw(&mut card, "97531864"), 0x9000);
}

#[test]
fn a_fixed_pin_that_breaks_the_rules_sends_nothing_to_the_card() {
    let (url, server) = serve(|peer| {
        peer.send(change_pin(4, "123456"));
        let answer = peer.recv();
        done(peer, DeviceState::Pending);
        answer
    });
    let mut card = fresh_card();
    let mut pins = FixedPin(Zeroizing::new("123456".into()));
    let (r, _) = run(&url, &mut card, &mut pins);
    let answer = server.join().unwrap();
    assert!(
        matches!(&answer, AgentFrame::Error { seq: Some(4), message } if message.contains("consecutive")),
        "{answer:?}"
    );
    let outcome = r.unwrap();
    assert_eq!(outcome.state, DeviceState::Pending);
    assert!(matches!(outcome.pin, PinOutcome::Failed(m) if m.contains("consecutive")));
    // No CHANGE REFERENCE and no VERIFY reached the card: all three tries are left.
    assert_eq!(pin_tries(&mut card), 0x63C3);
    assert_eq!(verify_sw(&mut card, "123456"), 0x9000);
}

#[test]
fn a_wrong_old_pin_is_reported_not_fatal() {
    let (url, server) = serve(|peer| {
        peer.send(change_pin(1, "000000"));
        let answer = peer.recv();
        done(peer, DeviceState::Pending);
        answer
    });
    let mut card = fresh_card();
    let (r, _) = run(&url, &mut card, &mut FixedPin(Zeroizing::new("27182818".into())));
    let answer = server.join().unwrap();
    assert!(
        matches!(&answer, AgentFrame::Error { seq: Some(1), message } if message.contains("CHANGE REFERENCE")),
        "{answer:?}"
    );
    assert!(matches!(r.unwrap().pin, PinOutcome::Failed(_)));
}

#[test]
fn a_declined_pin_change_is_skipped() {
    let (url, server) = serve(|peer| {
        peer.send(change_pin(7, "123456"));
        let answer = peer.recv();
        done(peer, DeviceState::Pending);
        answer
    });
    let mut card = fresh_card();
    let (r, events) = run(&url, &mut card, &mut SkipPinChange);
    assert_eq!(server.join().unwrap(), AgentFrame::PinChangeSkipped { seq: 7 });
    let outcome = r.unwrap();
    assert_eq!((outcome.state, outcome.pin), (DeviceState::Pending, PinOutcome::Skipped));
    assert!(events.contains(&Progress::PinChangeSkipped));
    assert_eq!(verify_sw(&mut card, "123456"), 0x9000);
}

/// A holder who answers after `delay`.
struct Slow {
    delay: Duration,
    pin: &'static str,
}

impl PinSource for Slow {
    fn new_pin(&mut self, _prompt: &PinPrompt<'_>) -> Result<Option<Zeroizing<String>>, AgentError> {
        std::thread::sleep(self.delay);
        Ok(Some(Zeroizing::new(self.pin.into())))
    }
}

/// The issue-8 bug, agent side: a PIN typed after the server's deadline is not written, and the
/// server, still listening within its grace, hears why.
#[test]
fn a_pin_given_after_the_deadline_is_not_written() {
    let (url, server) = serve(|peer| {
        peer.send(ServerFrame::ChangePin {
            seq: 5,
            old_pin: Secret::new("123456"),
            rules: PinRules::default(),
            answer_within_secs: 1,
            new_pin: None,
        });
        let answer = peer.recv();
        done(peer, DeviceState::Pending);
        answer
    });
    let mut card = fresh_card();
    let mut events = Vec::new();
    let mut pins = Slow { delay: Duration::from_millis(1300), pin: "27182818" };
    let r = run_session_with(&opts(&url), &mut card, &lanyard_vcard::atr(), &mut pins, &mut |p| {
        events.push(p.clone());
    });
    let answer = server.join().unwrap();
    assert!(
        matches!(&answer, AgentFrame::Error { seq: Some(5), message } if message.contains("deadline of 1 s")),
        "{answer:?}"
    );
    let outcome = r.unwrap();
    assert_eq!(outcome.state, DeviceState::Pending);
    assert!(matches!(&outcome.pin, PinOutcome::TooLate(m) if m.contains("initial PIN")), "{outcome:?}");
    assert!(events.contains(&Progress::PinTooLate));
    // Nothing reached the card: the initial PIN works, with all three tries.
    assert_eq!(pin_tries(&mut card), 0x63C3);
    assert_eq!(verify_sw(&mut card, "123456"), 0x9000);
    assert_eq!(verify_sw(&mut card, "27182818"), 0x63C2);
}

/// The server ended the session (here: recorded the device Pending and closed) while the holder
/// was still typing, before the deadline the agent knows of: the PIN is not written either, and
/// nothing more is sent to a server that is gone.
#[test]
fn a_pin_is_not_written_once_the_server_has_ended_the_session() {
    let (url, server) = serve(|peer| {
        peer.send(change_pin(2, "123456"));
        std::thread::sleep(Duration::from_millis(100));
        done(peer, DeviceState::Pending);
        peer.ws.close(None).unwrap();
        let mut after = Vec::new();
        while let Ok(m) = peer.ws.read() {
            if let Message::Text(t) = m {
                after.push(t.to_string());
            }
        }
        after
    });
    let mut card = fresh_card();
    let mut pins = Slow { delay: Duration::from_millis(600), pin: "27182818" };
    let (r, _) = run(&url, &mut card, &mut pins);
    assert_eq!(server.join().unwrap(), Vec::<String>::new(), "no frame after the server's `done`");
    let outcome = r.unwrap();
    assert_eq!(outcome.state, DeviceState::Pending);
    assert!(matches!(&outcome.pin, PinOutcome::TooLate(m) if m.contains("ended the session")), "{outcome:?}");
    assert_eq!(pin_tries(&mut card), 0x63C3);
    assert_eq!(verify_sw(&mut card, "123456"), 0x9000);
}

/// Without even a `done`, the session's error says why the PIN was not set.
#[test]
fn a_late_pin_and_a_vanished_server_report_the_late_pin() {
    let (url, server) = serve(|peer| {
        peer.send(change_pin(2, "123456"));
        peer.ws.close(None).unwrap();
    });
    let mut card = fresh_card();
    let mut pins = Slow { delay: Duration::from_millis(300), pin: "27182818" };
    let (r, _) = run(&url, &mut card, &mut pins);
    server.join().unwrap();
    assert!(matches!(&r, Err(AgentError::PinTooLate(m)) if m.contains("initial PIN")), "{r:?}");
    assert_eq!(verify_sw(&mut card, "123456"), 0x9000);
}

/// A card that takes `delay` for every command.
struct Sluggish {
    card: Card,
    delay: Duration,
    sent: usize,
}

impl CardTransport for Sluggish {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        std::thread::sleep(self.delay);
        self.sent += 1;
        self.card.transmit(apdu)
    }
}

impl SessionCard for Sluggish {
    fn still_present(&mut self) -> bool {
        true
    }
}

/// A batch stops once its deadline has passed: the server has stopped waiting for it.
#[test]
fn a_batch_stops_at_its_deadline() {
    let mut relay = Relay::new(Sluggish { card: fresh_card(), delay: Duration::from_millis(600), sent: 0 });
    let select = hexs(&bytes(&commands::select()));
    let frame = ServerFrame::Transmit {
        seq: 4,
        step: "s".into(),
        done: 0,
        total: 1,
        apdus: vec![select; 4],
        answer_within_secs: 1,
    };
    let next = relay.on_text(&frame.to_text(), &mut SkipPinChange, &mut Unlinked, &mut |_| {});
    match next {
        Next::Fail(Some(f), AgentError::Protocol(m)) => {
            assert!(m.contains("deadline after 2 commands"), "{m}");
            assert!(matches!(AgentFrame::parse(&f).unwrap(), AgentFrame::Error { seq: Some(4), .. }));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(relay.into_card().sent, 2);
}

/// One connection from an agent to a server that answers the upgrade naming `version`.
fn versioned_server(version: Option<&'static str>) -> (String, JoinHandle<Vec<AgentFrame>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/lanyard", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let mut peer = accept_as(tcp, version);
        let mut frames = Vec::new();
        while let Ok(m) = peer.ws.read() {
            if let Message::Text(t) = m {
                frames.push(AgentFrame::parse(t.as_str()).unwrap());
            }
        }
        frames
    });
    (url, handle)
}

#[test]
fn a_server_of_another_protocol_version_is_refused_by_name() {
    for (version, words) in
        [(Some("2"), "the server speaks agent protocol version 2"), (None, "names no agent protocol version")]
    {
        let (url, server) = versioned_server(version);
        let mut card = fresh_card();
        let (r, _) = run(&url, &mut card, &mut SkipPinChange);
        let frames = server.join().unwrap();
        let Err(AgentError::ProtocolVersion(e)) = &r else { panic!("{r:?}") };
        let message = e.to_string();
        assert!(message.contains(words) && message.contains("agent version 1"), "{message}");
        // No hello and no card work: only the reason, for the server's job record.
        assert!(
            matches!(frames.as_slice(), [AgentFrame::Error { seq: None, message: m }] if *m == message),
            "{frames:?}"
        );
    }
}

/// A server that refuses the upgrade because of the agent's version says so in its header.
#[test]
fn a_refusal_for_the_version_names_both_versions() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (mut tcp, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.ends_with(b"\r\n\r\n") {
            let n = tcp.read(&mut buf).unwrap();
            assert!(n > 0);
            request.extend_from_slice(&buf[..n]);
        }
        let body = r#"{"error":"the agent speaks agent protocol version 1 and the server version 3"}"#;
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\n{VERSION_HEADER}: 3\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(answer.as_bytes()).unwrap();
        String::from_utf8(request).unwrap()
    });
    let (r, _) = run(&url, &mut fresh_card(), &mut SkipPinChange);
    let request = server.join().unwrap().to_ascii_lowercase();
    assert!(request.contains(&format!("{VERSION_HEADER}: {PROTOCOL_VERSION}\r\n")), "{request}");
    let Err(AgentError::ProtocolVersion(e)) = &r else { panic!("{r:?}") };
    assert_eq!(e.theirs.as_deref(), Some("3"));
    assert!(e.to_string().contains("version 3") && e.to_string().contains("version 1"), "{e}");
}

#[test]
fn a_server_error_frame_ends_the_session() {
    let (url, server) = serve(|peer| {
        peer.send(ServerFrame::Error { message: "job cancelled by an operator".into() });
    });
    let mut card = fresh_card();
    let (r, _) = run(&url, &mut card, &mut SkipPinChange);
    server.join().unwrap();
    assert!(matches!(r, Err(AgentError::Server(m)) if m == "job cancelled by an operator"));
}

#[test]
fn a_closed_connection_before_done_is_an_error() {
    let (url, server) = serve(|peer| {
        peer.ws.close(None).unwrap();
    });
    let mut card = fresh_card();
    let (r, _) = run(&url, &mut card, &mut SkipPinChange);
    server.join().unwrap();
    assert!(matches!(r, Err(AgentError::Protocol(m)) if m.contains("before `done`")));
}

/// A card that is pulled after `left` APDUs, and counts what was sent after that.
struct Pulled {
    card: Card,
    left: usize,
    after: usize,
}

impl CardTransport for Pulled {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        if self.left == 0 {
            self.after += 1;
            return Err(TransportError::CardGone);
        }
        self.left -= 1;
        self.card.transmit(apdu)
    }
}

impl SessionCard for Pulled {
    fn still_present(&mut self) -> bool {
        self.left > 0
    }
}

#[test]
fn a_card_pulled_mid_batch_ends_the_session_and_gets_no_more_apdus() {
    let (url, server) = serve(|peer| {
        let apdus: Vec<String> = [commands::select(), commands::get_version(), commands::get_serial()]
            .iter()
            .map(|c| hexs(&bytes(c)))
            .collect();
        peer.send(transmit_frame(3, "detect", apdus));
        peer.recv()
    });
    let mut card = Pulled { card: fresh_card(), left: 2, after: 0 };
    let r = run_session_with(&opts(&url), &mut card, &lanyard_vcard::atr(), &mut SkipPinChange, &mut |_| {});
    let answer = server.join().unwrap();
    assert_eq!(answer, AgentFrame::Error { seq: Some(3), message: "card removed".into() });
    assert!(matches!(r, Err(AgentError::CardRemoved)));
    assert_eq!(card.after, 1, "one APDU found the card gone; nothing followed");
}

#[test]
fn a_card_already_gone_gets_no_apdu_at_all() {
    let mut relay = Relay::new(Pulled { card: fresh_card(), left: 0, after: 0 });
    let frame = transmit_frame(1, "s", vec![hexs(&bytes(&commands::select()))]);
    let next = relay.on_text(&frame.to_text(), &mut SkipPinChange, &mut Unlinked, &mut |_| {});
    assert!(matches!(next, Next::Fail(Some(f), AgentError::CardRemoved) if f.contains("card removed")));
    assert_eq!(relay.into_card().after, 0);
}

/// The URL rules themselves are tested in `lanyard-protocol`; here, that a session refuses a bad
/// URL before it connects anywhere.
#[test]
fn plain_websocket_only_to_loopback() {
    for bad in [
        "http://example.com",
        "ws://10.0.0.1:8443",
        "http://[2001:db8::1]/x",
        "ftp://localhost",
        "example.com",
        "https://user@lanyard.example",
    ] {
        let mut card = fresh_card();
        let r = run_session_with(&opts(bad), &mut card, &[], &mut SkipPinChange, &mut |_| {});
        assert!(matches!(&r, Err(AgentError::BadUrl { url, .. }) if url == bad), "{bad}: {r:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

struct TestCa {
    root_pem: String,
    chain: Vec<Vec<u8>>,
    key: Vec<u8>,
}

fn test_ca(org: &str) -> TestCa {
    use lanyard_ca::{
        CaUrls, CertificateProfile, Hierarchy, HierarchySpec, IssueRequest, KeyAlgorithm, SanInput,
    };
    // rustls checks validity against the real clock, so this certificate must be valid now.
    #[allow(clippy::disallowed_methods)]
    let now = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    let spec =
        HierarchySpec::new(org, KeyAlgorithm::EcP256, CaUrls::new("https://ca.test").unwrap()).unwrap();
    let h = Hierarchy::generate(&spec, now).unwrap();
    let key = lanyard_ca::SoftwareKey::generate(KeyAlgorithm::EcP256).unwrap();
    let issued = h
        .issuing
        .issue(&IssueRequest {
            profile: &CertificateProfile::tls_server(),
            subject: lanyard_ca::Name::default(),
            public_key: lanyard_ca::CaSigner::public_key(&key),
            san: SanInput {
                dns: vec!["localhost".into()],
                ip: vec!["127.0.0.1".parse().unwrap()],
                ..Default::default()
            },
            not_before: now,
            requested_not_after: now + time::Duration::days(30),
            cap_not_after: None,
        })
        .unwrap();
    TestCa {
        root_pem: lanyard_ca::pem("CERTIFICATE", h.root.certificate_der()),
        chain: vec![issued.der, h.issuing.certificate_der().to_vec()],
        key: key.to_pkcs8_der().unwrap().to_vec(),
    }
}

/// A WebSocket server over TLS with `ca`'s server certificate, for one connection.
fn serve_tls<R: Send + 'static>(
    ca: &TestCa,
    script: impl FnOnce(&mut Peer<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>) -> R + Send + 'static,
) -> (String, JoinHandle<Option<R>>) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain: Vec<CertificateDer<'static>> =
        ca.chain.iter().map(|c| CertificateDer::from(c.clone())).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ca.key.clone()));
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://localhost:{}/lanyard", listener.local_addr().unwrap().port());
    let handle = std::thread::spawn(move || {
        let (mut tcp, _) = listener.accept().unwrap();
        let mut conn = rustls::ServerConnection::new(config).unwrap();
        while conn.is_handshaking() {
            if conn.complete_io(&mut tcp).is_err() {
                // The client refused our certificate.
                return None;
            }
        }
        let mut peer = accept(rustls::StreamOwned::new(conn, tcp));
        check_hello(&mut peer);
        let r = script(&mut peer);
        peer.finish();
        Some(r)
    });
    (url, handle)
}

#[test]
fn tls_with_lanyards_own_root() {
    let ca = test_ca("Agent Test");
    let (url, server) = serve_tls(&ca, |peer| {
        let r = peer.transmit(1, "detect", &[bytes(&commands::select())]);
        assert_eq!(sw(&r[0]), 0x9000);
        done(peer, DeviceState::Active);
    });
    let mut o = opts(&url);
    o.ca_pem = Some(ca.root_pem.clone().into_bytes());
    let mut card = fresh_card();
    let r = run_session_with(&o, &mut card, &lanyard_vcard::atr(), &mut SkipPinChange, &mut |_| {});
    assert!(server.join().unwrap().is_some());
    assert_eq!(r.unwrap().state, DeviceState::Active);
}

#[test]
fn tls_refuses_a_server_certificate_from_another_ca() {
    let ca = test_ca("Agent Test");
    let other = test_ca("Someone Else");
    let (url, server) = serve_tls(&ca, |_peer| ());
    let mut o = opts(&url);
    o.ca_pem = Some(other.root_pem.into_bytes());
    let mut card = fresh_card();
    let r = run_session_with(&o, &mut card, &[], &mut SkipPinChange, &mut |_| {});
    assert!(server.join().unwrap().is_none(), "the handshake must not complete");
    match r {
        Err(AgentError::Tls { host, reason }) => {
            assert_eq!(host, "localhost");
            assert!(reason.contains("certificate"), "{reason}");
        }
        other => panic!("expected a TLS error, got {other:?}"),
    }
    // And garbage as a CA file is a precise error, before any connection.
    o.ca_pem = Some(b"not a pem".to_vec());
    let r = run_session_with(&o, &mut fresh_card(), &[], &mut SkipPinChange, &mut |_| {});
    assert!(matches!(r, Err(AgentError::CaCert(_))), "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// Card identification
// ---------------------------------------------------------------------------------------------

#[test]
fn a_factory_yubikey_is_compatible() {
    let mut card = fresh_card();
    let serial = card.0.serial();
    let info = identify(&mut card);
    assert!(info.piv);
    assert_eq!(info.yubikey_version.as_deref(), Some("5.7.2"));
    assert_eq!(info.serial, Some(serial));
    assert_eq!((info.issued, info.chuid_guid), (false, None));
    assert_eq!(info.compatibility, Compatibility::Compatible);
    let json = serde_json::to_value(identify(&mut card)).unwrap();
    assert_eq!(json["compatibility"], json!({"verdict": "compatible"}));
}

fn write_chuid(card: &mut Card, chuid: &Chuid) {
    let mut piv = Piv::new(&mut *card);
    piv.select().unwrap();
    piv.authenticate_mutual(&ManagementKey::new(MgmAlgorithm::TripleDes, &DEFAULT_MANAGEMENT_KEY).unwrap())
        .unwrap();
    piv.put_data(tag::CHUID, &chuid.encode()).unwrap();
    card.0.reset_session();
}

#[test]
fn a_card_with_a_chuid_is_already_issued_but_the_template_is_not() {
    let mut card = fresh_card();
    let template = FascN::from_bytes(&lanyard_piv::objects::YUBICO_TEMPLATE_FASC_N).unwrap();
    write_chuid(&mut card, &Chuid::new(&template, [0x42; 16], "20300101").unwrap());
    let info = identify(&mut card);
    assert_eq!((info.issued, info.compatibility), (false, Compatibility::Compatible));
    assert_eq!(info.chuid_guid.as_deref(), Some(&*"42".repeat(16)));

    let fasc_n = FascN::with_identifier("1234", "5678", "123456").unwrap();
    write_chuid(&mut card, &Chuid::new(&fasc_n, [0x5A; 16], "20300101").unwrap());
    let info = identify(&mut card);
    assert!(info.issued);
    assert_eq!(info.compatibility, Compatibility::AlreadyIssued);
    assert_eq!(info.chuid_guid.as_deref(), Some(&*"5a".repeat(16)));
}

#[test]
fn old_yubikeys_and_other_cards_are_unsupported() {
    let mut neo = InProcess(
        VirtualCard::from_image(image(&NewCard { version: [3, 5, 0], ..NewCard::default() })).unwrap(),
    );
    let info = identify(&mut neo);
    assert!(matches!(&info.compatibility, Compatibility::Unsupported { reason } if reason.contains("3.5.0")));

    /// A PIV card without the YubiKey extensions.
    struct PlainPiv(VirtualCard);
    impl ApduHandler for PlainPiv {
        fn handle(&mut self, apdu: &[u8]) -> Vec<u8> {
            if apdu.get(1).is_some_and(|ins| *ins >= 0xF0) { vec![0x6D, 0x00] } else { self.0.handle(apdu) }
        }
    }
    let mut plain = InProcess(PlainPiv(fresh_card().0));
    let info = identify(&mut plain);
    assert!(info.piv && info.yubikey_version.is_none() && info.serial.is_none());
    assert!(
        matches!(&info.compatibility, Compatibility::Unsupported { reason } if reason.contains("not a YubiKey"))
    );

    struct NoPiv;
    impl ApduHandler for NoPiv {
        fn handle(&mut self, _apdu: &[u8]) -> Vec<u8> {
            vec![0x6A, 0x82]
        }
    }
    let info = identify(InProcess(NoPiv));
    assert!(!info.piv);
    assert!(
        matches!(&info.compatibility, Compatibility::Unsupported { reason } if reason.contains("no PIV"))
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile servers
// ---------------------------------------------------------------------------------------------

fn valid_frames() -> Vec<String> {
    let select = hexs(&bytes(&commands::select()));
    vec![
        transmit_frame(1, "s", vec![select]).to_text(),
        change_pin(2, "123456").to_text(),
        ServerFrame::Done { device: device_id(), state: DeviceState::Active }.to_text(),
        ServerFrame::Error { message: "m".into() }.to_text(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the server sends, the agent answers or ends with a precise error; it never
    /// panics, and an error frame it sends is well-formed JSON.
    #[test]
    fn garbage_frames_never_panic(
        pick in 0usize..4,
        cut in 0usize..200,
        splice in "(?s).{0,12}",
        garbage in ".{0,300}",
        raw in prop::bool::ANY,
    ) {
        let text = if raw {
            garbage
        } else {
            let mut f = valid_frames().swap_remove(pick);
            let at = f.char_indices().map(|(i, _)| i).nth(cut % f.chars().count().max(1)).unwrap_or(0);
            f.insert_str(at, &splice);
            f
        };
        let mut relay = Relay::new(fresh_card());
        let mut pins = FixedPin(Zeroizing::new("97531864".into()));
        match relay.on_text(&text, &mut pins, &mut Unlinked, &mut |_| {}) {
            Next::Send(frame) => {
                let v: Value = serde_json::from_str(&frame).unwrap();
                prop_assert!(["responses", "pin_changed", "pin_change_skipped", "error"].contains(&v["type"].as_str().unwrap()));
            }
            Next::Fail(frame, e) => {
                prop_assert!(matches!(e, AgentError::Protocol(_) | AgentError::Server(_)), "{e}");
                if let Some(frame) = frame {
                    let v: Value = serde_json::from_str(&frame).unwrap();
                    prop_assert_eq!(&v["type"], "error");
                    prop_assert!(!v["message"].as_str().unwrap().is_empty());
                }
            }
            Next::Finish(_) => {}
            Next::Read => prop_assert!(false, "without a connection the server never ends early"),
        }
    }

    /// Arbitrary hex in a transmit frame is either refused as not an APDU or sent to the card.
    #[test]
    fn arbitrary_apdus_are_parsed_or_refused(apdus in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..4)) {
        let hexes: Vec<String> = apdus.iter().map(|a| hexs(a)).collect();
        let frame = transmit_frame(9, "s", hexes);
        let mut relay = Relay::new(fresh_card());
        match relay.on_text(&frame.to_text(), &mut SkipPinChange, &mut Unlinked, &mut |_| {}) {
            Next::Send(f) => {
                let v: Value = serde_json::from_str(&f).unwrap();
                prop_assert_eq!(&v["seq"], 9);
                prop_assert!(v["responses"].as_array().unwrap().len() <= apdus.len());
            }
            Next::Fail(Some(f), AgentError::Protocol(m)) => {
                prop_assert!(m.contains("is not an APDU"), "{}", m);
                prop_assert!(f.contains("\"seq\":9"));
            }
            Next::Fail(f, e) => prop_assert!(matches!(e, AgentError::Card(_)), "{:?} {}", f, e),
            Next::Finish(_) | Next::Read => prop_assert!(false, "a transmit frame is answered"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loopback portal API
// ---------------------------------------------------------------------------------------------

mod portal_api {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use lanyard_agent::cards::ReaderInfo;
    use lanyard_agent::portal::{Backend, PortalState, is_loopback_host, router};
    use std::sync::Mutex;
    use tower::ServiceExt;

    const ORIGIN: &str = "https://portal.example";

    /// Lists one reader; a session asks for the PIN (with `deadline` to answer, as a server's
    /// `change_pin` would give) and reports what it got.
    struct Fake {
        got: Mutex<Vec<Option<String>>>,
        deadline: Duration,
    }

    impl Default for Fake {
        fn default() -> Self {
            Self { got: Mutex::default(), deadline: Duration::from_secs(60) }
        }
    }

    impl Backend for Fake {
        fn list_cards(&self) -> Result<Vec<ReaderInfo>, AgentError> {
            Ok(vec![ReaderInfo {
                reader: READER.into(),
                card_present: false,
                atr: String::new(),
                card: None,
            }])
        }
        fn run_session(
            &self,
            opts: &SessionOptions,
            pins: &mut dyn PinSource,
            progress: &mut dyn FnMut(&Progress),
        ) -> Result<Outcome, AgentError> {
            assert_eq!(opts.ticket.as_str(), TICKET);
            progress(&Progress::Step { step: "detect".into(), done: 0, total: 1 });
            let rules = PinRules::default();
            let deadline = Instant::now() + self.deadline;
            let mut pin = pins.new_pin(&PinPrompt { rules: &rules, rejected: None, deadline })?;
            if let Some(p) = &pin
                && let Err(e) = rules.check(p)
            {
                pin = pins.new_pin(&PinPrompt { rules: &rules, rejected: Some(&e), deadline })?;
            }
            self.got.lock().unwrap().push(pin.as_ref().map(|p| p.to_string()));
            let state = if pin.is_some() { DeviceState::Active } else { DeviceState::Pending };
            Ok(Outcome { device: device_id(), state, pin: PinOutcome::NotAsked })
        }
    }

    fn request(
        method: &str,
        uri: &str,
        origin: Option<&str>,
        host: &str,
        body: Option<Value>,
    ) -> Request<Body> {
        let mut b = Request::builder().method(method).uri(uri).header("host", host);
        if let Some(o) = origin {
            b = b.header("origin", o);
        }
        match body {
            Some(v) => b.header("content-type", "application/json").body(Body::from(v.to_string())).unwrap(),
            None => b.body(Body::empty()).unwrap(),
        }
    }

    async fn call(app: &axum::Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        (parts.status, parts.headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn app() -> (axum::Router, Arc<Fake>) {
        app_with(Fake::default())
    }

    fn app_with(fake: Fake) -> (axum::Router, Arc<Fake>) {
        let fake = Arc::new(fake);
        (router(PortalState::new(ORIGIN, fake.clone())), fake)
    }

    /// The page has until the server's deadline, not a deadline of the agent's own: it sees the
    /// time left, and once it is over the session goes on without a PIN.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_page_has_until_the_servers_deadline() {
        let (app, fake) = app_with(Fake { deadline: Duration::from_millis(1500), ..Fake::default() });
        let host = "localhost:7180";
        let start = json!({"server": "http://127.0.0.1:1", "ticket": TICKET, "reader": READER});
        let (status, _, body) =
            call(&app, request("POST", "/v1/sessions", Some(ORIGIN), host, Some(start))).await;
        assert_eq!(status, StatusCode::CREATED);
        let uri = format!("/v1/sessions/{}", body["id"].as_str().unwrap());
        let mut seen_waiting = false;
        let started = Instant::now();
        let v = loop {
            let (_, _, v) = call(&app, request("GET", &uri, Some(ORIGIN), host, None)).await;
            if v["status"] == "pin_needed" {
                seen_waiting = true;
                assert!(v["pin_seconds_left"].as_u64().unwrap() <= 1, "{v}");
            } else if v["status"] != "running" {
                break v;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "the session outlived its deadline: {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(seen_waiting);
        assert_eq!(v["status"], "done", "{v}");
        assert!(v["pin_seconds_left"].is_null(), "{v}");
        assert_eq!(*fake.got.lock().unwrap(), vec![None]);
        assert!(started.elapsed() >= Duration::from_millis(1400));
    }

    #[tokio::test]
    async fn only_the_configured_origin_on_a_loopback_host_gets_an_answer() {
        let (app, _) = app();
        let host = "127.0.0.1:7180";
        let (status, headers, body) =
            call(&app, request("GET", "/v1/readers", Some(ORIGIN), host, None)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["access-control-allow-origin"], ORIGIN);
        assert_eq!(body[0]["reader"], READER);
        for origin in [None, Some("https://evil.example"), Some("https://portal.example.evil"), Some("null")]
        {
            let (status, headers, _) = call(&app, request("GET", "/v1/readers", origin, host, None)).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{origin:?}");
            assert!(!headers.contains_key("access-control-allow-origin"));
        }
        // DNS rebinding: the right Origin header cannot come with a foreign Host from a browser,
        // but a rebinding page's requests carry its own name as Host.
        for host in ["evil.example:7180", "portal.example", ""] {
            let (status, _, _) = call(&app, request("GET", "/v1/readers", Some(ORIGIN), host, None)).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{host}");
        }
        for host in ["localhost:1", "[::1]:7180", "127.0.0.1"] {
            assert!(is_loopback_host(host), "{host}");
        }
        // Preflight, including Chrome's private network access.
        let mut pre = request("OPTIONS", "/v1/sessions", Some(ORIGIN), host, None);
        pre.headers_mut().insert("access-control-request-private-network", "true".parse().unwrap());
        let (status, headers, _) = call(&app, pre).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(headers["access-control-allow-origin"], ORIGIN);
        assert_eq!(headers["access-control-allow-private-network"], "true");
        let (status, _, _) =
            call(&app, request("OPTIONS", "/v1/sessions", Some("https://evil.example"), host, None)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        // A session cannot be started from elsewhere either.
        let start = json!({"server": "http://127.0.0.1:1", "ticket": TICKET, "reader": READER});
        let (status, _, _) =
            call(&app, request("POST", "/v1/sessions", Some("https://evil.example"), host, Some(start)))
                .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn at_most_sixteen_sessions_run_at_once() {
        let (app, _fake) = app();
        let host = "localhost:7180";
        let start = json!({"server": "http://127.0.0.1:1", "ticket": TICKET, "reader": READER});
        for _ in 0..16 {
            let (status, _, _) =
                call(&app, request("POST", "/v1/sessions", Some(ORIGIN), host, Some(start.clone()))).await;
            assert_eq!(status, StatusCode::CREATED);
        }
        // All sixteen wait for a PIN from the page; a seventeenth is refused.
        let (status, _, body) =
            call(&app, request("POST", "/v1/sessions", Some(ORIGIN), host, Some(start))).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_session_takes_its_pin_from_the_page() {
        let (app, fake) = app();
        let host = "localhost:7180";
        let bad = json!({"server": "http://example.com", "ticket": TICKET, "reader": READER});
        let (status, _, _) = call(&app, request("POST", "/v1/sessions", Some(ORIGIN), host, Some(bad))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let start = json!({"server": "http://127.0.0.1:1", "ticket": TICKET, "reader": READER});
        let (status, _, body) =
            call(&app, request("POST", "/v1/sessions", Some(ORIGIN), host, Some(start))).await;
        assert_eq!(status, StatusCode::CREATED);
        let id = body["id"].as_str().unwrap().to_owned();
        assert_eq!(id.len(), 32);
        let poll = |app: axum::Router, id: String| async move {
            for _ in 0..200 {
                let (_, _, v) =
                    call(&app, request("GET", &format!("/v1/sessions/{id}"), Some(ORIGIN), host, None)).await;
                if v["status"] != "running" {
                    return v;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("session stuck");
        };
        let v = poll(app.clone(), id.clone()).await;
        assert_eq!(v["status"], "pin_needed");
        assert_eq!(v["pin_rules"]["min_len"], 6);
        assert_eq!(v["events"][0]["step"], "detect");
        let pin_uri = format!("/v1/sessions/{id}/pin");
        let (status, _, _) =
            call(&app, request("POST", &pin_uri, Some(ORIGIN), host, Some(json!({"new_pin": "123456"}))))
                .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let v = poll(app.clone(), id.clone()).await;
        assert_eq!(v["status"], "pin_needed");
        assert!(v["pin_rejected"].as_str().unwrap().contains("consecutive"), "{v}");
        let (status, _, _) =
            call(&app, request("POST", &pin_uri, Some(ORIGIN), host, Some(json!({"new_pin": "97531864"}))))
                .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let v = poll(app.clone(), id.clone()).await;
        assert_eq!(v["status"], "done", "{v}");
        assert_eq!(v["outcome"]["state"], "active");
        assert_eq!(*fake.got.lock().unwrap(), vec![Some("97531864".to_owned())]);
        // No PIN is wanted any more; unknown sessions are 404.
        let (status, _, _) =
            call(&app, request("POST", &pin_uri, Some(ORIGIN), host, Some(json!({"new_pin": "97531864"}))))
                .await;
        assert_eq!(status, StatusCode::CONFLICT);
        let (status, _, _) = call(&app, request("GET", "/v1/sessions/nope", Some(ORIGIN), host, None)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}

// ---------------------------------------------------------------------------------------------
// The agent link, against a scripted server
// ---------------------------------------------------------------------------------------------

mod link {
    use std::collections::BTreeSet;
    use std::net::TcpListener;
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex, mpsc};
    use std::time::Duration;

    use lanyard_agent::AgentError;
    use lanyard_agent::link::{Agent, LinkEvent, LinkOptions, PinSources, Workstation};
    use lanyard_agent::relay::{Outcome, PinSource, Progress, SessionOptions, SkipPinChange};
    use lanyard_core::ids::JobId;
    use lanyard_protocol::link::{AgentLinkFrame, ReaderReport, ServerLinkFrame};
    use lanyard_protocol::{Secret, VERSION_HEADER};
    use tungstenite::Message;

    /// One reader with no card; a session on it waits until the test lets it fail.
    struct OneReader {
        release: Mutex<mpsc::Receiver<()>>,
        sessions: Mutex<Vec<(String, Option<String>)>>,
    }

    impl Workstation for OneReader {
        fn readers(&self, _busy: &BTreeSet<String>) -> Result<Vec<ReaderReport>, AgentError> {
            Ok(vec![ReaderReport { name: "R".into(), card_present: false, atr: String::new(), card: None }])
        }

        fn wait_for_change(&self, timeout: Duration) -> Result<bool, AgentError> {
            std::thread::sleep(timeout);
            Ok(false)
        }

        fn run_session(
            &self,
            opts: &SessionOptions,
            _pins: &mut dyn PinSource,
            _progress: &mut dyn FnMut(&Progress),
        ) -> Result<Outcome, AgentError> {
            let credential = opts.credential.as_ref().map(|c| c.to_string());
            self.sessions.lock().unwrap().push((opts.ticket.to_string(), credential));
            let _ = self.release.lock().unwrap().recv();
            Err(AgentError::Card("the test ends the session".into()))
        }
    }

    fn next(ws: &mut tungstenite::WebSocket<std::net::TcpStream>) -> AgentLinkFrame {
        loop {
            match ws.read().unwrap() {
                Message::Text(t) => return AgentLinkFrame::parse(t.as_str()).unwrap(),
                Message::Close(_) => panic!("the agent closed"),
                _ => {}
            }
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // tungstenite's callback signature
    fn the_agent_says_hello_reports_readers_and_answers_the_server_precisely() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (release_tx, release_rx) = mpsc::channel();
        let ws = Arc::new(OneReader { release: Mutex::new(release_rx), sessions: Mutex::new(Vec::new()) });
        let pins: PinSources = Arc::new(|| -> Box<dyn PinSource + Send> { Box::new(SkipPinChange) });
        let (events_tx, events) = mpsc::channel();
        let events_tx = Mutex::new(events_tx);
        let agent = Agent::new(
            LinkOptions::new(url, "the-credential", "ws-test"),
            Arc::clone(&ws),
            pins,
            Arc::new(move |e| drop(events_tx.lock().unwrap().send(e))),
        );
        let stop = agent.stop_flag();
        let running = std::thread::spawn(move || agent.run());

        let (tcp, _) = listener.accept().unwrap();
        let mut seen = (String::new(), String::new(), String::new());
        let mut peer = tungstenite::accept_hdr(
            tcp,
            |req: &tungstenite::handshake::server::Request,
             mut resp: tungstenite::handshake::server::Response| {
                let header = |name: &str| req.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
                seen = (
                    req.uri().path().to_owned(),
                    header("authorization").unwrap_or_default(),
                    header(VERSION_HEADER).unwrap_or_default(),
                );
                resp.headers_mut().insert(VERSION_HEADER, "1".parse().unwrap());
                Ok(resp)
            },
        )
        .unwrap();
        assert_eq!(seen, ("/api/v1/agent/link".into(), "Bearer the-credential".into(), "1".into()));
        match next(&mut peer) {
            AgentLinkFrame::Hello { protocol: 1, host, features, .. } => {
                assert_eq!(host, "ws-test");
                assert_eq!(features, vec!["sessions".to_owned(), "server_pin".to_owned(), "ctap".to_owned()]);
            }
            other => panic!("expected hello, got {other:?}"),
        }
        let report = AgentLinkFrame::Readers {
            readers: vec![ReaderReport {
                name: "R".into(),
                card_present: false,
                atr: String::new(),
                card: None,
            }],
        };
        assert_eq!(next(&mut peer), report);

        // Garbage and unknown frames get a precise error; the link goes on.
        peer.send(Message::text("{\"type\":\"start_session\",\"job\":\"x\"")).unwrap();
        match next(&mut peer) {
            AgentLinkFrame::Error { message } => {
                assert!(message.starts_with("unintelligible frame: "), "{message}")
            }
            other => panic!("{other:?}"),
        }
        peer.send(Message::text(r#"{"type":"self_destruct"}"#)).unwrap();
        match next(&mut peer) {
            AgentLinkFrame::Error { message } => {
                assert!(message.contains("unknown variant `self_destruct`"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        // A refresh is answered with the readers, though nothing changed.
        peer.send(Message::text(ServerLinkFrame::Refresh.to_text())).unwrap();
        assert_eq!(next(&mut peer), report);

        // A session runs with the ticket and the agent's credential; a second one on the same
        // reader meanwhile is refused with the reason.
        let (first, second) = (JobId::new(), JobId::new());
        let start = |job: JobId| ServerLinkFrame::StartSession {
            job,
            ticket: Secret::new(format!("{job}.secret")),
            reader: "R".into(),
            purpose: "issuance".into(),
        };
        peer.send(Message::text(start(first).to_text())).unwrap();
        // The busy reader is reported (its card, had it one, marked busy).
        assert_eq!(next(&mut peer), report);
        peer.send(Message::text(start(second).to_text())).unwrap();
        match next(&mut peer) {
            AgentLinkFrame::SessionEnded { job, error: Some(e) } => {
                assert_eq!(job, second);
                assert!(e.contains(&format!("reader \"R\" is already running job {first}")), "{e}");
            }
            other => panic!("{other:?}"),
        }
        release_tx.send(()).unwrap();
        loop {
            match next(&mut peer) {
                AgentLinkFrame::SessionEnded { job, error } => {
                    assert_eq!((job, error.as_deref()), (first, Some("card: the test ends the session")));
                    break;
                }
                AgentLinkFrame::Readers { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            ws.sessions.lock().unwrap().clone(),
            vec![(format!("{first}.secret"), Some("the-credential".to_owned()))]
        );

        // The server ends the link: the agent says so and reconnects.
        peer.send(Message::text(ServerLinkFrame::Error { message: "bye".into() }.to_text())).unwrap();
        peer.close(None).unwrap();
        let mut got = Vec::new();
        while !got.iter().any(|e| matches!(e, LinkEvent::Disconnected { .. })) {
            got.push(events.recv_timeout(Duration::from_secs(60)).expect("the agent reports the loss"));
        }
        assert!(got.contains(&LinkEvent::ServerError("bye".into())), "{got:?}");
        let (again, _) = listener.accept().unwrap();
        drop(again);
        stop.store(true, Ordering::Relaxed);
        running.join().unwrap().unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// CTAP relay
// ---------------------------------------------------------------------------------------------

use lanyard_agent::fido::{BoxedTransport, FidoHid};
use lanyard_ctap::consts::FIDO_AID;
use lanyard_ctap::transport::{CtapTransport, CtapTransportError};

/// The software card with a FIDO application that frames but does not compute: a test double
/// for application selection and the ISO 7816 binding (SELECT FIDO, chaining, `61xx`, one
/// `9100` poll), not an authenticator. Its "answer" to a CTAP request is the request without its
/// command byte, so a test chooses each answer's status byte. While FIDO is selected it refuses
/// everything else with `6D00`, as a card whose PIV application is not selected does; any other
/// SELECT goes to the PIV card.
struct FidoFraming {
    card: Card,
    reader: Option<&'static str>,
    fido: bool,
    chain: Vec<u8>,
    pending: Vec<u8>,
    busy: Option<Vec<u8>>,
    log: Vec<Vec<u8>>,
}

impl FidoFraming {
    fn new(reader: Option<&'static str>) -> Self {
        Self {
            card: fresh_card(),
            reader,
            fido: false,
            chain: vec![],
            pending: vec![],
            busy: None,
            log: vec![],
        }
    }

    fn out(&mut self, mut data: Vec<u8>) -> Vec<u8> {
        if data.len() > 200 {
            self.pending = data.split_off(200);
            data.extend_from_slice(&[0x61, self.pending.len().min(255) as u8]);
        } else {
            data.extend_from_slice(&[0x90, 0x00]);
        }
        data
    }
}

impl CardTransport for FidoFraming {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.log.push(apdu.to_vec());
        if apdu[1] == 0xA4 && apdu[2] == 0x04 {
            self.fido = apdu.get(5..13) == Some(&FIDO_AID[..]);
            if self.fido {
                return Ok(self.out(b"FIDO_2_0".to_vec()));
            }
            return self.card.transmit(apdu);
        }
        if !self.fido {
            return self.card.transmit(apdu);
        }
        Ok(match (apdu[0], apdu[1], apdu[2]) {
            (0x80 | 0x90, 0x10, _) => {
                self.chain.extend_from_slice(&apdu[5..5 + usize::from(apdu[4])]);
                if apdu[0] == 0x90 {
                    return Ok(vec![0x90, 0x00]);
                }
                let request = std::mem::take(&mut self.chain);
                let answer = if request.len() > 1 { request[1..].to_vec() } else { vec![0x00] };
                // Every answer is "still working" once.
                self.busy = Some(answer);
                vec![0x01, 0x91, 0x00]
            }
            (0x80, 0x11, 0x00) => match self.busy.take() {
                Some(answer) => self.out(answer),
                None => vec![0x69, 0x85],
            },
            (0x00, 0xC0, _) => {
                let rest = std::mem::take(&mut self.pending);
                self.out(rest)
            }
            _ => vec![0x6D, 0x00],
        })
    }
}

impl SessionCard for FidoFraming {
    fn still_present(&mut self) -> bool {
        true
    }

    fn reader_name(&self) -> Option<&str> {
        self.reader
    }
}

/// A card in a named reader.
struct InReader(Card, &'static str);

impl CardTransport for InReader {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.0.transmit(apdu)
    }
}

impl SessionCard for InReader {
    fn still_present(&mut self) -> bool {
        true
    }

    fn reader_name(&self) -> Option<&str> {
        Some(self.1)
    }
}

/// A HID side that must not be asked.
struct NoHid;

impl FidoHid for NoHid {
    fn open_for(&mut self, reader: &str) -> Result<BoxedTransport, String> {
        panic!("HID looked for, for reader {reader:?}")
    }
}

/// A HID side that gives a transport double answering like `FidoFraming` (request without its
/// command byte), or the error it was given; counts the calls.
struct ScriptedHid {
    error: Option<String>,
    calls: Arc<std::sync::Mutex<Vec<String>>>,
}

struct EchoTransport;

impl CtapTransport for EchoTransport {
    fn ctap(&mut self, request: &[u8], _deadline: Instant) -> Result<Vec<u8>, CtapTransportError> {
        Ok(if request.len() > 1 { request[1..].to_vec() } else { vec![0x00] })
    }

    fn describe(&self) -> String {
        "USB HID test device".into()
    }
}

impl FidoHid for ScriptedHid {
    fn open_for(&mut self, reader: &str) -> Result<BoxedTransport, String> {
        self.calls.lock().unwrap().push(reader.to_owned());
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(Box::new(EchoTransport)),
        }
    }
}

fn ctap_frame(seq: u64, requests: &[&str], within: u32) -> String {
    ServerFrame::Ctap {
        seq,
        step: "fido".into(),
        done: 0,
        total: 1,
        requests: requests.iter().map(|r| (*r).to_owned()).collect(),
        answer_within_secs: within,
    }
    .to_text()
}

fn answer<C: SessionCard>(relay: &mut Relay<C>, frame: &str, events: &mut Vec<Progress>) -> AgentFrame {
    match relay.on_text(frame, &mut SkipPinChange, &mut Unlinked, &mut |p| events.push(p.clone())) {
        Next::Send(f) => AgentFrame::parse(&f).unwrap(),
        other => panic!("{other:?}"),
    }
}

fn is_select(apdu: &[u8], aid: &[u8]) -> bool {
    apdu[1] == 0xA4 && apdu.get(5..5 + aid.len()) == Some(aid)
}

const PIV_AID: [u8; 9] = [0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00];

/// A CTAP batch goes to the FIDO application on the session's connection, stops after the
/// first error status, and the next PIV batch — which does not SELECT PIV itself — finds PIV
/// selected again; the next CTAP batch selects FIDO again.
#[test]
fn ctap_batches_reach_the_fido_application_and_piv_is_selected_again() {
    let mut relay = Relay::with_hid(FidoFraming::new(Some("Virtual PCD 00 00")), Box::new(NoHid));
    let mut events = Vec::new();
    // PIV first, as a session starts.
    let select = hexs(&bytes(&commands::select()));
    let version = hexs(&bytes(&commands::get_version()));
    let frame = transmit_frame(1, "detect", vec![select, version.clone()]);
    assert!(matches!(answer(&mut relay, &frame.to_text(), &mut events), AgentFrame::Responses { .. }));
    // A long request (chained) with a long answer (61xx), then an error status, then one never sent.
    let long = format!("0600{}", "AB".repeat(599));
    let frame = ctap_frame(2, &["0400A101", &long, "0631", "0400"], 60);
    let AgentFrame::CtapResponses { seq: 2, responses } = answer(&mut relay, &frame, &mut events) else {
        panic!("expected ctap_responses")
    };
    assert_eq!(responses.len(), 3);
    assert_eq!(responses[0], "00A101");
    assert_eq!(responses[1], format!("00{}", "AB".repeat(599)));
    assert_eq!(responses[2], "31");
    assert!(events.contains(&Progress::FidoReached { via: "PC/SC reader \"Virtual PCD 00 00\"".into() }));
    let ctap: Vec<_> = events.iter().filter(|e| matches!(e, Progress::Ctap { .. })).collect();
    assert_eq!(
        ctap,
        vec![
            &Progress::Ctap { command: "authenticatorGetInfo".into(), status: "CTAP2_OK".into() },
            &Progress::Ctap { command: "authenticatorClientPIN".into(), status: "CTAP2_OK".into() },
            &Progress::Ctap {
                command: "authenticatorClientPIN".into(),
                status: "CTAP2_ERR_PIN_INVALID".into()
            },
        ]
    );
    // No progress event carries a request's or an answer's bytes.
    assert!(!format!("{events:?}").contains("ABAB"));
    // A PIV batch without SELECT: the relay selects PIV first.
    let frame = transmit_frame(3, "personalize", vec![version.clone()]);
    let AgentFrame::Responses { seq: 3, responses } = answer(&mut relay, &frame.to_text(), &mut events)
    else {
        panic!("expected responses")
    };
    assert_eq!(responses.len(), 1);
    assert!(responses[0].ends_with("9000"), "{responses:?}");
    // And FIDO again for the next CTAP batch.
    let frame = ctap_frame(4, &["0400"], 60);
    assert_eq!(
        answer(&mut relay, &frame, &mut events),
        AgentFrame::CtapResponses { seq: 4, responses: vec!["00".into()] }
    );
    let card = relay.into_card();
    let selects: Vec<&str> = card
        .log
        .iter()
        .filter_map(|a| {
            if is_select(a, &FIDO_AID) {
                Some("fido")
            } else if is_select(a, &PIV_AID) {
                Some("piv")
            } else {
                None
            }
        })
        .collect();
    assert_eq!(selects, vec!["piv", "fido", "piv", "fido"]);
    // The long request went out in chained blocks: CLA 90 on all but the last.
    let msgs: Vec<u8> = card.log.iter().filter(|a| a[1] == 0x10).map(|a| a[0]).collect();
    assert_eq!(msgs, vec![0x80, 0x90, 0x90, 0x80, 0x80, 0x80]);
}

/// A PIV batch that selects PIV itself is sent as it is after a CTAP batch.
#[test]
fn a_piv_batch_that_selects_piv_itself_gets_no_extra_select() {
    let mut relay = Relay::with_hid(FidoFraming::new(None), Box::new(NoHid));
    let mut events = Vec::new();
    assert!(matches!(
        answer(&mut relay, &ctap_frame(1, &["04"], 60), &mut events),
        AgentFrame::CtapResponses { .. }
    ));
    let frame = transmit_frame(2, "detect", vec![hexs(&bytes(&commands::select()))]);
    assert!(matches!(answer(&mut relay, &frame.to_text(), &mut events), AgentFrame::Responses { .. }));
    let card = relay.into_card();
    assert_eq!(card.log.iter().filter(|a| is_select(a, &PIV_AID)).count(), 1);
}

/// The relay reaches the virtual card's own FIDO2 application (not a test double): getInfo
/// answers CTAP2_OK with canonical CBOR naming FIDO_2_1, and PIV still answers afterwards.
#[test]
fn the_relay_reaches_the_virtual_cards_fido_application() {
    let mut relay = Relay::with_hid(InReader(fresh_card(), "Virtual PCD 00 00"), Box::new(NoHid));
    let mut events = Vec::new();
    let AgentFrame::CtapResponses { seq: 1, responses } =
        answer(&mut relay, &ctap_frame(1, &["04"], 60), &mut events)
    else {
        panic!("expected CTAP responses")
    };
    let info = hex::decode(&responses[0]).unwrap();
    assert_eq!(info[0], 0x00, "getInfo status");
    let v = lanyard_ctap::cbor::decode(&info[1..]).unwrap();
    assert_eq!(lanyard_ctap::cbor::encode(&v), info[1..].to_vec(), "canonical CBOR");
    assert!(format!("{v:?}").contains("FIDO_2_1"), "{v:?}");
    let frame = transmit_frame(2, "detect", vec![hexs(&bytes(&commands::get_version()))]);
    let AgentFrame::Responses { responses, .. } = answer(&mut relay, &frame.to_text(), &mut events) else {
        panic!("expected responses")
    };
    assert!(responses[0].ends_with("9000"), "{responses:?}");
}

/// A card without a FIDO application outside a YubiKey reader: an error that says so, the
/// session goes on, and PIV works as before.
#[test]
fn a_card_without_fido_gets_an_error_and_the_session_goes_on() {
    let mut relay = Relay::with_hid(InReader(card_without_fido(), "Virtual PCD 00 00"), Box::new(NoHid));
    let mut events = Vec::new();
    let AgentFrame::Error { seq: Some(1), message } =
        answer(&mut relay, &ctap_frame(1, &["04"], 60), &mut events)
    else {
        panic!("expected an error")
    };
    assert!(message.contains("has no FIDO application (SELECT answered 6A82"), "{message}");
    assert!(message.contains("not a YubiKey's, so there is no USB HID interface to try"), "{message}");
    // Asked again, the same answer, without another SELECT.
    let again = answer(&mut relay, &ctap_frame(2, &["04"], 60), &mut events);
    assert_eq!(again, AgentFrame::Error { seq: Some(2), message });
    let frame = transmit_frame(3, "detect", vec![hexs(&bytes(&commands::get_version()))]);
    let AgentFrame::Responses { responses, .. } = answer(&mut relay, &frame.to_text(), &mut events) else {
        panic!("expected responses")
    };
    assert!(responses[0].ends_with("9000"), "{responses:?}");
}

/// A YubiKey reader whose card has no FIDO over CCID: the key's HID interface is used; when
/// there is none to use, the HID side's reason is the error.
#[test]
fn a_yubikey_without_fido_over_ccid_falls_back_to_hid() {
    const YK: &str = "Yubico YubiKey OTP+FIDO+CCID 00 00";
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let hid = ScriptedHid { error: None, calls: Arc::clone(&calls) };
    let mut relay = Relay::with_hid(InReader(card_without_fido(), YK), Box::new(hid));
    let mut events = Vec::new();
    let got = answer(&mut relay, &ctap_frame(1, &["0400A1", "0100"], 60), &mut events);
    assert_eq!(got, AgentFrame::CtapResponses { seq: 1, responses: vec!["00A1".into(), "00".into()] });
    assert!(events.contains(&Progress::FidoReached { via: "USB HID test device".into() }));
    assert_eq!(*calls.lock().unwrap(), vec![YK.to_owned()]);
    // The device is kept for the session.
    answer(&mut relay, &ctap_frame(2, &["04"], 60), &mut events);
    assert_eq!(calls.lock().unwrap().len(), 1);

    let reason = "2 Yubico FIDO HID devices are plugged in (…): unplug the other keys for this session";
    let hid = ScriptedHid { error: Some(reason.into()), calls: Arc::clone(&calls) };
    let mut relay = Relay::with_hid(InReader(card_without_fido(), YK), Box::new(hid));
    assert_eq!(
        answer(&mut relay, &ctap_frame(1, &["04"], 60), &mut events),
        AgentFrame::Error { seq: Some(1), message: reason.into() }
    );
}

/// Frames that break the rules end the session like a bad `transmit`.
#[test]
fn bad_ctap_frames_are_refused_precisely() {
    for (requests, words) in [
        (vec![], "1 to 16 requests, not 0"),
        (vec!["04"; 17], "1 to 16 requests, not 17"),
        (vec!["04", "0G"], "CTAP request 1 of batch 7 is not hex"),
        (vec![""], "CTAP request 0 of batch 7 has no command byte"),
    ] {
        let mut relay = Relay::with_hid(FidoFraming::new(None), Box::new(NoHid));
        match relay.on_text(&ctap_frame(7, &requests, 60), &mut SkipPinChange, &mut Unlinked, &mut |_| {}) {
            Next::Fail(Some(f), AgentError::Protocol(m)) => {
                assert!(m.contains(words), "{m}");
                assert!(matches!(AgentFrame::parse(&f).unwrap(), AgentFrame::Error { seq: Some(7), .. }));
            }
            other => panic!("{other:?}"),
        }
        assert!(relay.into_card().log.is_empty(), "nothing went to the card");
    }
    // No time at all: nothing is sent.
    let mut relay = Relay::with_hid(FidoFraming::new(None), Box::new(NoHid));
    match relay.on_text(&ctap_frame(8, &["04"], 0), &mut SkipPinChange, &mut Unlinked, &mut |_| {}) {
        Next::Fail(_, AgentError::Protocol(m)) => assert!(m.contains("deadline after 0 requests"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(relay.into_card().log.is_empty(), "not even SELECT FIDO went to the card");
}

/// The whole way over the WebSocket: `ctap` out, `ctap_responses` back, in between PIV batches.
#[test]
fn ctap_frames_over_the_session_channel() {
    let (url, server) = serve(|peer| {
        peer.send(ServerFrame::Ctap {
            seq: 1,
            step: "fido_info".into(),
            done: 0,
            total: 2,
            requests: vec!["0400A1".into()],
            answer_within_secs: 60,
        });
        assert_eq!(peer.recv(), AgentFrame::CtapResponses { seq: 1, responses: vec!["00A1".into()] });
        let r = peer.transmit(2, "detect", &[bytes(&commands::get_version())]);
        assert_eq!(sw(&r[0]), 0x9000);
        done(peer, DeviceState::Pending);
    });
    let mut events = Vec::new();
    let r = run_session_with(
        &opts(&url),
        FidoFraming::new(None),
        &lanyard_vcard::atr(),
        &mut SkipPinChange,
        &mut |p| events.push(p.clone()),
    );
    server.join().unwrap();
    assert_eq!(r.unwrap().state, DeviceState::Pending);
    assert!(
        events
            .contains(&Progress::Ctap { command: "authenticatorGetInfo".into(), status: "CTAP2_OK".into() })
    );
}

/// The software card's own authenticator, in process: getInfo and ClientPIN getRetries through
/// the relay, with PIV batches before and after on the same card.
#[test]
fn ctap_reaches_the_software_cards_authenticator() {
    use lanyard_ctap::cbor::{MapRef, decode};
    let mut relay = Relay::with_hid(InReader(fresh_card(), "Virtual PCD 00 00"), Box::new(NoHid));
    let mut events = Vec::new();
    let select = hexs(&bytes(&commands::select()));
    let serial = hexs(&bytes(&commands::get_serial()));
    let frame = transmit_frame(1, "detect", vec![select, serial.clone()]);
    let AgentFrame::Responses { responses: before, .. } = answer(&mut relay, &frame.to_text(), &mut events)
    else {
        panic!("expected responses")
    };
    // getInfo, then getRetries (pinUvAuthProtocol 2, subCommand 1).
    let frame = ctap_frame(2, &["04", "06A201020201"], 60);
    let AgentFrame::CtapResponses { seq: 2, responses } = answer(&mut relay, &frame, &mut events) else {
        panic!("expected ctap_responses")
    };
    assert_eq!(responses.len(), 2);
    let info = hex::decode(&responses[0]).unwrap();
    assert_eq!(info[0], 0x00, "CTAP2_OK");
    let info = decode(&info[1..]).unwrap();
    let info = MapRef::new(&info).unwrap();
    let versions: Vec<&str> =
        info.get(1).unwrap().as_array().unwrap().iter().map(|v| v.as_text().unwrap()).collect();
    assert!(versions.contains(&"FIDO_2_1"), "{versions:?}");
    let retries = hex::decode(&responses[1]).unwrap();
    assert_eq!(retries[0], 0x00);
    let retries = decode(&retries[1..]).unwrap();
    assert_eq!(MapRef::new(&retries).unwrap().uint(3).unwrap(), Some(8), "a fresh card has 8 PIN tries");
    // PIV again, without SELECT: the same serial number.
    let frame = transmit_frame(3, "personalize", vec![serial]);
    let AgentFrame::Responses { responses: after, .. } = answer(&mut relay, &frame.to_text(), &mut events)
    else {
        panic!("expected responses")
    };
    assert_eq!(after[0], before[1]);
}

/// `change_pin` and `unblock_pin` after a CTAP batch on the software card: the FIDO application
/// is the selected one, and the relay selects PIV again before CHANGE REFERENCE DATA and RESET
/// RETRY COUNTER, as it does before a PIV batch. Both PINs then verify on the card.
#[test]
fn pin_frames_after_a_ctap_batch_select_piv_again() {
    let mut relay = Relay::with_hid(InReader(fresh_card(), "Virtual PCD 00 00"), Box::new(NoHid));
    let mut events = Vec::new();
    let getinfo = |relay: &mut Relay<InReader>, seq, events: &mut Vec<Progress>| {
        let AgentFrame::CtapResponses { responses, .. } =
            answer(relay, &ctap_frame(seq, &["04"], 60), events)
        else {
            panic!("expected ctap_responses")
        };
        assert!(responses[0].starts_with("00"), "getInfo: {responses:?}");
    };
    let verify = |relay: &mut Relay<InReader>, seq, pin: &str, events: &mut Vec<Progress>| {
        let frame =
            transmit_frame(seq, "verify", vec![hexs(&bytes(&commands::verify_pin(pin.as_bytes()).unwrap()))]);
        let AgentFrame::Responses { responses, .. } = answer(relay, &frame.to_text(), events) else {
            panic!("expected responses")
        };
        responses[0].clone()
    };

    getinfo(&mut relay, 1, &mut events);
    let mut pins = FixedPin(Zeroizing::new("27182818".into()));
    let next = relay.on_text(&change_pin(2, "123456").to_text(), &mut pins, &mut Unlinked, &mut |_| {});
    let Next::Send(frame) = next else { panic!("{next:?}") };
    assert_eq!(AgentFrame::parse(&frame).unwrap(), AgentFrame::PinChanged { seq: 2, sw: "9000".into() });
    assert_eq!(relay.pin_outcome(), &PinOutcome::Changed);
    assert_eq!(verify(&mut relay, 3, "27182818", &mut events), "9000");

    getinfo(&mut relay, 4, &mut events);
    let unblock = ServerFrame::UnblockPin {
        seq: 5,
        puk: Secret::new("12345678"),
        rules: PinRules::default(),
        answer_within_secs: 60,
        new_pin: None,
    };
    let mut pins = FixedPin(Zeroizing::new("31415926".into()));
    let next = relay.on_text(&unblock.to_text(), &mut pins, &mut Unlinked, &mut |_| {});
    let Next::Send(frame) = next else { panic!("{next:?}") };
    assert_eq!(AgentFrame::parse(&frame).unwrap(), AgentFrame::PinChanged { seq: 5, sw: "9000".into() });
    assert_eq!(verify(&mut relay, 6, "31415926", &mut events), "9000");
    assert_eq!(verify(&mut relay, 7, "27182818", &mut events).get(..3), Some("63C"), "the old PIN is gone");
}
