//! The agent against the software card in process, with a small WebSocket peer in each test that
//! plays the server's side of the wire protocol and drives real APDUs at the card. The PC/SC
//! path (through pcscd and vpcd) is covered in `crates/lanyard/tests/interop.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use lanyard_agent::AgentError;
use lanyard_agent::cards::{Compatibility, identify};
use lanyard_agent::relay::{
    DeviceState, FixedPin, Next, Outcome, PinOutcome, PinSource, Progress, Relay, SessionCard,
    SessionOptions, SkipPinChange, parse_server, run_session_with,
};
use lanyard_core::model::{PinRuleError, PinRules};
use lanyard_piv::apdu::Command;
use lanyard_piv::mgmkey::{DEFAULT_MANAGEMENT_KEY, ManagementKey, MgmAlgorithm};
use lanyard_piv::objects::{Chuid, FascN};
use lanyard_piv::{ApduHandler, CardTransport, InProcess, Piv, TransportError, commands, tag};
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
}

impl<S: Read + Write> Peer<S> {
    fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).unwrap();
    }

    fn recv(&mut self) -> Value {
        loop {
            match self.ws.read().unwrap() {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected message {other:?}"),
            }
        }
    }

    /// Sends one batch; returns the raw answers.
    fn transmit(&mut self, seq: u64, step: &str, apdus: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let apdus: Vec<String> = apdus.iter().map(|a| hexs(a)).collect();
        self.send(
            json!({"type": "transmit", "seq": seq, "step": step, "done": seq, "total": 9, "apdus": apdus}),
        );
        let answer = self.recv();
        assert_eq!(answer["type"], "responses", "{answer}");
        assert_eq!(answer["seq"], seq);
        answer["responses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| hex::decode(r.as_str().unwrap()).unwrap())
            .collect()
    }

    /// Waits for the agent to close.
    fn finish(mut self) {
        while self.ws.read().is_ok() {}
    }
}

fn sw(resp: &[u8]) -> u16 {
    u16::from_be_bytes([resp[resp.len() - 2], resp[resp.len() - 1]])
}

#[allow(clippy::result_large_err)] // tungstenite's callback signature
fn accept<S: Read + Write>(stream: S) -> Peer<S> {
    let mut ticket = None;
    let mut path = String::new();
    let ws = tungstenite::accept_hdr(stream, |req: &tungstenite::handshake::server::Request, resp| {
        ticket = req.headers().get("x-lanyard-ticket").map(|v| v.to_str().unwrap().to_owned());
        path = req.uri().path().to_owned();
        Ok(resp)
    })
    .unwrap();
    Peer { ws, ticket, path }
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
    let hello = peer.recv();
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["agent"], lanyard_agent::AGENT_NAME);
    assert_eq!(hello["reader"], READER);
    assert_eq!(hello["atr"], hexs(&lanyard_vcard::atr()));
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

fn done(peer: &mut Peer<TcpStream>, state: &str) {
    peer.send(json!({"type": "done", "device": "7d1c6d39-1b0e-4f57-9c1e-0d4b1f8e2a11", "state": state}));
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
        done(peer, "pending");
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
        done(peer, "active");
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
        peer.send(json!({"type": "change_pin", "seq": 2, "old_pin": "123456",
                         "rules": {"min_len": 6, "max_len": 8, "forbid_trivial": true}}));
        let answer = peer.recv();
        done(peer, "active");
        answer
    });
    let mut card = fresh_card();
    let mut pins = FixedPin(Zeroizing::new("27182818".into()));
    let (r, events) = run(&url, &mut card, &mut pins);
    let answer = server.join().unwrap();
    assert_eq!(answer, json!({"type": "pin_changed", "seq": 2, "sw": "9000"}));
    // The new PIN went nowhere but the card.
    assert!(!answer.to_string().contains("27182818"));
    let outcome = r.unwrap();
    assert_eq!(outcome.pin, PinOutcome::Changed);
    assert!(events.contains(&Progress::PinRequested) && events.contains(&Progress::PinChanged));
    assert_eq!(verify_sw(&mut card, "123456"), 0x63C2);
    assert_eq!(verify_sw(&mut card, "27182818"), 0x9000);
}

/// Offers a trivial PIN first, then a good one; records what it was told.
struct Stubborn {
    offers: Vec<&'static str>,
    told: Vec<Option<PinRuleError>>,
}

impl PinSource for Stubborn {
    fn new_pin(
        &mut self,
        _rules: &PinRules,
        rejected: Option<&PinRuleError>,
    ) -> Result<Option<Zeroizing<String>>, AgentError> {
        self.told.push(rejected.cloned());
        Ok(Some(Zeroizing::new(self.offers.remove(0).to_owned())))
    }
}

#[test]
fn a_rule_breaking_pin_is_refused_locally_and_asked_again() {
    let (url, server) = serve(|peer| {
        peer.send(json!({"type": "change_pin", "seq": 1, "old_pin": "123456",
                         "rules": {"min_len": 6, "max_len": 8, "forbid_trivial": true}}));
        let answer = peer.recv();
        done(peer, "active");
        answer
    });
    let mut card = fresh_card();
    let mut pins = Stubborn { offers: vec!["654321", "1111111", "97531864"], told: Vec::new() };
    let (r, _) = run(&url, &mut card, &mut pins);
    assert_eq!(server.join().unwrap()["type"], "pin_changed");
    assert_eq!(pins.told, vec![None, Some(PinRuleError::Sequential), Some(PinRuleError::AllSame)]);
    assert_eq!(r.unwrap().pin, PinOutcome::Changed);
    assert_eq!(verify_sw(&mut card, "97531864"), 0x9000);
}

#[test]
fn a_fixed_pin_that_breaks_the_rules_sends_nothing_to_the_card() {
    let (url, server) = serve(|peer| {
        peer.send(json!({"type": "change_pin", "seq": 4, "old_pin": "123456",
                         "rules": {"min_len": 6, "max_len": 8, "forbid_trivial": true}}));
        let answer = peer.recv();
        done(peer, "pending");
        answer
    });
    let mut card = fresh_card();
    let mut pins = FixedPin(Zeroizing::new("123456".into()));
    let (r, _) = run(&url, &mut card, &mut pins);
    let answer = server.join().unwrap();
    assert_eq!(answer["type"], "error");
    assert_eq!(answer["seq"], 4);
    assert!(answer["message"].as_str().unwrap().contains("consecutive"), "{answer}");
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
        peer.send(json!({"type": "change_pin", "seq": 1, "old_pin": "000000",
                         "rules": {"min_len": 6, "max_len": 8, "forbid_trivial": true}}));
        let answer = peer.recv();
        done(peer, "pending");
        answer
    });
    let mut card = fresh_card();
    let (r, _) = run(&url, &mut card, &mut FixedPin(Zeroizing::new("27182818".into())));
    let answer = server.join().unwrap();
    assert_eq!(answer["type"], "error");
    assert!(answer["message"].as_str().unwrap().contains("CHANGE REFERENCE"), "{answer}");
    assert!(matches!(r.unwrap().pin, PinOutcome::Failed(_)));
}

#[test]
fn a_declined_pin_change_is_skipped() {
    let (url, server) = serve(|peer| {
        peer.send(json!({"type": "change_pin", "seq": 7, "old_pin": "123456",
                         "rules": {"min_len": 6, "max_len": 8, "forbid_trivial": true}}));
        let answer = peer.recv();
        done(peer, "pending");
        answer
    });
    let mut card = fresh_card();
    let (r, events) = run(&url, &mut card, &mut SkipPinChange);
    assert_eq!(server.join().unwrap(), json!({"type": "pin_change_skipped", "seq": 7}));
    let outcome = r.unwrap();
    assert_eq!((outcome.state, outcome.pin), (DeviceState::Pending, PinOutcome::Skipped));
    assert!(events.contains(&Progress::PinChangeSkipped));
    assert_eq!(verify_sw(&mut card, "123456"), 0x9000);
}

#[test]
fn a_server_error_frame_ends_the_session() {
    let (url, server) = serve(|peer| {
        peer.send(json!({"type": "error", "message": "job cancelled by an operator"}));
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
        peer.send(
            json!({"type": "transmit", "seq": 3, "step": "detect", "done": 0, "total": 5, "apdus": apdus}),
        );
        peer.recv()
    });
    let mut card = Pulled { card: fresh_card(), left: 2, after: 0 };
    let r = run_session_with(&opts(&url), &mut card, &lanyard_vcard::atr(), &mut SkipPinChange, &mut |_| {});
    let answer = server.join().unwrap();
    assert_eq!(answer, json!({"type": "error", "seq": 3, "message": "card removed"}));
    assert!(matches!(r, Err(AgentError::CardRemoved)));
    assert_eq!(card.after, 1, "one APDU found the card gone; nothing followed");
}

#[test]
fn a_card_already_gone_gets_no_apdu_at_all() {
    let mut relay = Relay::new(Pulled { card: fresh_card(), left: 0, after: 0 });
    let frame = json!({"type": "transmit", "seq": 1, "step": "s", "done": 0, "total": 1,
                       "apdus": [hexs(&bytes(&commands::select()))]});
    let next = relay.on_text(&frame.to_string(), &mut SkipPinChange, &mut |_| {});
    assert!(matches!(next, Next::Fail(Some(f), AgentError::CardRemoved) if f.contains("card removed")));
    assert_eq!(relay.into_card().after, 0);
}

#[test]
fn plain_websocket_only_to_loopback() {
    for bad in [
        "http://example.com",
        "ws://10.0.0.1:8443",
        "http://[2001:db8::1]/x",
        "ftp://localhost",
        "example.com",
    ] {
        assert!(matches!(parse_server(bad), Err(AgentError::BadUrl { .. })), "{bad}");
        let mut card = fresh_card();
        let r = run_session_with(&opts(bad), &mut card, &[], &mut SkipPinChange, &mut |_| {});
        assert!(matches!(r, Err(AgentError::BadUrl { .. })), "{bad}");
    }
    for (good, url) in [
        ("http://127.0.0.1:8080", "ws://127.0.0.1:8080/api/v1/agent/connect"),
        ("http://localhost/", "ws://localhost/api/v1/agent/connect"),
        ("ws://[::1]:9/base", "ws://[::1]:9/base/api/v1/agent/connect"),
        ("https://lanyard.example", "wss://lanyard.example/api/v1/agent/connect"),
        ("wss://lanyard.example:8443/l/", "wss://lanyard.example:8443/l/api/v1/agent/connect"),
    ] {
        assert_eq!(parse_server(good).unwrap().url, url, "{good}");
    }
    assert_eq!(parse_server("https://[::1]:444").unwrap().host, "::1");
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
        peer.send(json!({"type": "done", "device": "d", "state": "active"}));
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
        json!({"type": "transmit", "seq": 1, "step": "s", "done": 0, "total": 1, "apdus": [select]})
            .to_string(),
        json!({"type": "change_pin", "seq": 2, "old_pin": "123456",
               "rules": {"min_len": 6, "max_len": 8, "forbid_trivial": true}})
        .to_string(),
        json!({"type": "done", "device": "x", "state": "active"}).to_string(),
        json!({"type": "error", "message": "m"}).to_string(),
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
        match relay.on_text(&text, &mut pins, &mut |_| {}) {
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
        }
    }

    /// Arbitrary hex in a transmit frame is either refused as not an APDU or sent to the card.
    #[test]
    fn arbitrary_apdus_are_parsed_or_refused(apdus in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..4)) {
        let hexes: Vec<String> = apdus.iter().map(|a| hexs(a)).collect();
        let frame = json!({"type": "transmit", "seq": 9, "step": "s", "done": 0, "total": 1, "apdus": hexes});
        let mut relay = Relay::new(fresh_card());
        match relay.on_text(&frame.to_string(), &mut SkipPinChange, &mut |_| {}) {
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
            Next::Finish(_) => prop_assert!(false, "a transmit frame cannot finish"),
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

    /// Lists one reader; a session asks for the PIN and reports what it got.
    #[derive(Default)]
    struct Fake {
        got: Mutex<Vec<Option<String>>>,
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
            let mut pin = pins.new_pin(&rules, None)?;
            if let Some(p) = &pin
                && let Err(e) = rules.check(p)
            {
                pin = pins.new_pin(&rules, Some(&e))?;
            }
            self.got.lock().unwrap().push(pin.as_ref().map(|p| p.to_string()));
            let state = if pin.is_some() { DeviceState::Active } else { DeviceState::Pending };
            Ok(Outcome { device: "d".into(), state, pin: PinOutcome::NotAsked })
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
        let fake = Arc::new(Fake::default());
        (router(PortalState::new(ORIGIN, fake.clone())), fake)
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
