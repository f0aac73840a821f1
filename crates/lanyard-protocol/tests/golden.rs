//! The wire format, pinned: every frame's exact JSON is a file in `tests/golden/`, and each is
//! checked both ways (the value serialises to the file, the file parses to the value). A change
//! to a frame that breaks one of these breaks deployed agents: raise `PROTOCOL_VERSION` or make
//! the change additive (see the crate docs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use lanyard_core::ids::DeviceId;
use lanyard_core::lifecycle::DeviceState;
use lanyard_core::model::PinRules;
use lanyard_protocol::link::{AgentLinkFrame, CardReport, ReaderReport, ServerLinkFrame, Verdict};
use lanyard_protocol::{AgentFrame, Secret, ServerFrame};

fn device() -> DeviceId {
    "7d1c6d39-1b0e-4f57-9c1e-0d4b1f8e2a11".parse().unwrap()
}

fn server_frames() -> Vec<(&'static str, ServerFrame)> {
    let rules = PinRules { min_len: 6, max_len: 8, forbid_trivial: true };
    vec![
        (
            "server_transmit",
            ServerFrame::Transmit {
                seq: 3,
                step: "generate_keys".into(),
                done: 2,
                total: 9,
                apdus: vec!["00A4040009A0000003080000100000".into(), "00470096055C03AC010700".into()],
                answer_within_secs: 120,
            },
        ),
        (
            "server_ctap",
            ServerFrame::Ctap {
                seq: 5,
                step: "fido_pin".into(),
                done: 1,
                total: 9,
                requests: vec!["04".into(), "06A201010201".into()],
                answer_within_secs: 120,
            },
        ),
        (
            "server_change_pin",
            ServerFrame::ChangePin {
                seq: 7,
                old_pin: Secret::new("123456"),
                rules,
                answer_within_secs: 300,
                new_pin: None,
            },
        ),
        (
            "server_change_pin_with_new_pin",
            ServerFrame::ChangePin {
                seq: 7,
                old_pin: Secret::new("123456"),
                rules,
                answer_within_secs: 300,
                new_pin: Some(Secret::new("975319")),
            },
        ),
        (
            "server_unblock_pin",
            ServerFrame::UnblockPin {
                seq: 4,
                puk: Secret::new("12345678"),
                rules,
                answer_within_secs: 300,
                new_pin: None,
            },
        ),
        ("server_done", ServerFrame::Done { device: device(), state: DeviceState::Pending }),
        (
            "server_error",
            ServerFrame::Error {
                message:
                    "this is not card 7d1c6d39-1b0e-4f57-9c1e-0d4b1f8e2a11 (its CHUID names another card)"
                        .into(),
            },
        ),
    ]
}

fn agent_frames() -> Vec<(&'static str, AgentFrame)> {
    vec![
        (
            "agent_hello",
            AgentFrame::Hello {
                protocol: 1,
                agent: "lanyard-agent/0.1.0".into(),
                reader: "Yubico YubiKey OTP+FIDO+CCID 00 00".into(),
                atr: "3BFD1300008131FE158073C021C057597562694B657940".into(),
                features: vec![],
            },
        ),
        (
            "agent_hello_with_features",
            AgentFrame::Hello {
                protocol: 1,
                agent: "lanyard-agent/0.2.0".into(),
                reader: "Virtual PCD 00 00".into(),
                atr: "3B".into(),
                features: vec!["readers".into(), "multi_job".into()],
            },
        ),
        (
            "agent_responses",
            AgentFrame::Responses {
                seq: 3,
                responses: vec!["61114F0600001000010079074F05A000000308".into(), "6A82".into()],
            },
        ),
        (
            "agent_ctap_responses",
            AgentFrame::CtapResponses {
                seq: 5,
                responses: vec!["00A10181684649444F5F325F30".into(), "31".into()],
            },
        ),
        ("agent_pin_changed", AgentFrame::PinChanged { seq: 7, sw: "9000".into() }),
        ("agent_pin_change_skipped", AgentFrame::PinChangeSkipped { seq: 7 }),
        (
            "agent_error",
            AgentFrame::Error {
                seq: Some(7),
                message: "the new PIN came 12 s after the deadline of 300 s; the card keeps its initial PIN"
                    .into(),
            },
        ),
        (
            "agent_error_without_seq",
            AgentFrame::Error {
                seq: None,
                message: "unintelligible frame: expected value at line 1 column 1".into(),
            },
        ),
    ]
}

fn golden(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{name}.json"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim_end().to_owned()
}

/// Exhaustive, so a new frame cannot be added without deciding its golden file.
fn server_kind(f: &ServerFrame) -> &'static str {
    match f {
        ServerFrame::Transmit { .. } => "transmit",
        ServerFrame::Ctap { .. } => "ctap",
        ServerFrame::ChangePin { .. } => "change_pin",
        ServerFrame::UnblockPin { .. } => "unblock_pin",
        ServerFrame::Done { .. } => "done",
        ServerFrame::Error { .. } => "error",
    }
}

fn agent_kind(f: &AgentFrame) -> &'static str {
    match f {
        AgentFrame::Hello { .. } => "hello",
        AgentFrame::Responses { .. } => "responses",
        AgentFrame::CtapResponses { .. } => "ctap_responses",
        AgentFrame::PinChanged { .. } => "pin_changed",
        AgentFrame::PinChangeSkipped { .. } => "pin_change_skipped",
        AgentFrame::Error { .. } => "error",
    }
}

#[test]
fn server_frames_match_their_golden_json_both_ways() {
    let frames = server_frames();
    for (name, frame) in &frames {
        let json = golden(name);
        assert_eq!(frame.to_text(), json, "{name}: serialising");
        assert_eq!(&ServerFrame::parse(&json).unwrap(), frame, "{name}: parsing");
        let tag: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(tag["type"], server_kind(frame), "{name}");
    }
    let kinds: std::collections::BTreeSet<_> = frames.iter().map(|(_, f)| server_kind(f)).collect();
    assert_eq!(kinds.len(), 6, "every server frame has a golden file");
    assert!(frames.len() > kinds.len(), "change_pin with and without new_pin");
}

#[test]
fn agent_frames_match_their_golden_json_both_ways() {
    let frames = agent_frames();
    for (name, frame) in &frames {
        let json = golden(name);
        assert_eq!(frame.to_text(), json, "{name}: serialising");
        assert_eq!(&AgentFrame::parse(&json).unwrap(), frame, "{name}: parsing");
        let tag: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(tag["type"], agent_kind(frame), "{name}");
    }
    let kinds: std::collections::BTreeSet<_> = frames.iter().map(|(_, f)| agent_kind(f)).collect();
    assert_eq!(kinds.len(), 6, "every agent frame has a golden file");
}

/// Fields a later feature adds are ignored by this version; frames it does not know are not.
#[test]
fn unknown_fields_are_ignored_and_unknown_frames_refused() {
    let with_job = r#"{"type":"pin_change_skipped","seq":7,"job":"b1"}"#;
    assert_eq!(AgentFrame::parse(with_job).unwrap(), AgentFrame::PinChangeSkipped { seq: 7 });
    assert!(AgentFrame::parse(r#"{"type":"readers","readers":[]}"#).is_err());
    assert!(ServerFrame::parse(r#"{"type":"pair","code":"x"}"#).is_err());
    // A deadline is not optional: an agent without one would not know when to stop.
    let no_deadline = r#"{"type":"change_pin","seq":7,"old_pin":"123456","rules":{"min_len":6,"max_len":8,"forbid_trivial":true}}"#;
    assert!(ServerFrame::parse(no_deadline).unwrap_err().to_string().contains("answer_within_secs"));
}

/// `ctap` is additive (feature `ctap`): an agent of this version that lacks the feature cannot
/// read it and says so with `error`, which is why the server sends it only to agents that listed
/// the feature. Its requests and the answers are hex and nothing else.
#[test]
fn ctap_frames_are_a_feature_not_a_new_version() {
    use lanyard_protocol::link::FEATURE_CTAP;
    assert_eq!(FEATURE_CTAP, "ctap");
    let json = golden("server_ctap");
    let frame = ServerFrame::parse(&json).unwrap();
    assert_eq!(frame.seq(), Some(5));
    assert_eq!(frame.answer_within(), Some(std::time::Duration::from_secs(120)));
    let no_requests = r#"{"type":"ctap","seq":5,"step":"s","done":0,"total":1,"answer_within_secs":1}"#;
    assert!(ServerFrame::parse(no_requests).unwrap_err().to_string().contains("requests"));
    let no_deadline = r#"{"type":"ctap","seq":5,"step":"s","done":0,"total":1,"requests":["04"]}"#;
    assert!(ServerFrame::parse(no_deadline).unwrap_err().to_string().contains("answer_within_secs"));
    // The two answer kinds stay apart: PIV responses are not CTAP responses.
    assert!(matches!(
        AgentFrame::parse(&golden("agent_ctap_responses")).unwrap(),
        AgentFrame::CtapResponses { .. }
    ));
    assert!(matches!(AgentFrame::parse(&golden("agent_responses")).unwrap(), AgentFrame::Responses { .. }));
}

fn job() -> lanyard_core::ids::JobId {
    "0c8b5e57-3f6e-4d2a-9a51-6f1d2e7c4b90".parse().unwrap()
}

fn agent_link_frames() -> Vec<(&'static str, AgentLinkFrame)> {
    vec![
        (
            "link_agent_hello",
            AgentLinkFrame::Hello {
                protocol: 1,
                agent: "lanyard-agent/0.1.0".into(),
                host: "ws-0042.example.org".into(),
                features: vec!["sessions".into(), "server_pin".into()],
            },
        ),
        (
            "link_agent_readers",
            AgentLinkFrame::Readers {
                readers: vec![
                    ReaderReport {
                        name: "Yubico YubiKey OTP+FIDO+CCID 00 00".into(),
                        card_present: true,
                        atr: "3BFD1300008131FE158073C021C057597562694B657940".into(),
                        card: Some(CardReport {
                            model: Some("YubiKey 5.7.2".into()),
                            serial: Some("31415926".into()),
                            verdict: Verdict::Compatible,
                            reason: None,
                            busy: false,
                        }),
                    },
                    ReaderReport {
                        name: "Virtual PCD 00 01".into(),
                        card_present: true,
                        atr: "3B80800101".into(),
                        card: Some(CardReport {
                            model: None,
                            serial: None,
                            verdict: Verdict::Unsupported,
                            reason: Some("not a YubiKey: management key rotation on other PIV cards is not implemented".into()),
                            busy: false,
                        }),
                    },
                    ReaderReport { name: "Empty reader 00 00".into(), card_present: false, atr: String::new(), card: None },
                ],
            },
        ),
        ("link_agent_session_ended", AgentLinkFrame::SessionEnded { job: job(), error: None }),
        (
            "link_agent_session_failed",
            AgentLinkFrame::SessionEnded { job: job(), error: Some("reader \"Virtual PCD 00 00\": no card".into()) },
        ),
        ("link_agent_error", AgentLinkFrame::Error { message: "unintelligible frame: expected value at line 1 column 1".into() }),
    ]
}

fn server_link_frames() -> Vec<(&'static str, ServerLinkFrame)> {
    vec![
        (
            "link_server_start_session",
            ServerLinkFrame::StartSession {
                job: job(),
                ticket: Secret::new("0c8b5e57-3f6e-4d2a-9a51-6f1d2e7c4b90.q8S0aH1c5n1rXbq9m6zK2w"),
                reader: "Yubico YubiKey OTP+FIDO+CCID 00 00".into(),
                purpose: "issuance".into(),
            },
        ),
        ("link_server_refresh", ServerLinkFrame::Refresh),
        ("link_server_error", ServerLinkFrame::Error { message: "this agent has been revoked".into() }),
    ]
}

fn agent_link_kind(f: &AgentLinkFrame) -> &'static str {
    match f {
        AgentLinkFrame::Hello { .. } => "hello",
        AgentLinkFrame::Readers { .. } => "readers",
        AgentLinkFrame::SessionEnded { .. } => "session_ended",
        AgentLinkFrame::Error { .. } => "error",
    }
}

fn server_link_kind(f: &ServerLinkFrame) -> &'static str {
    match f {
        ServerLinkFrame::StartSession { .. } => "start_session",
        ServerLinkFrame::Refresh => "refresh",
        ServerLinkFrame::Error { .. } => "error",
    }
}

#[test]
fn link_frames_match_their_golden_json_both_ways() {
    let agent = agent_link_frames();
    for (name, frame) in &agent {
        let json = golden(name);
        assert_eq!(frame.to_text(), json, "{name}: serialising");
        assert_eq!(&AgentLinkFrame::parse(&json).unwrap(), frame, "{name}: parsing");
        let tag: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(tag["type"], agent_link_kind(frame), "{name}");
    }
    let kinds: std::collections::BTreeSet<_> = agent.iter().map(|(_, f)| agent_link_kind(f)).collect();
    assert_eq!(kinds.len(), 4, "every agent link frame has a golden file");
    let server = server_link_frames();
    for (name, frame) in &server {
        let json = golden(name);
        assert_eq!(frame.to_text(), json, "{name}: serialising");
        assert_eq!(&ServerLinkFrame::parse(&json).unwrap(), frame, "{name}: parsing");
        let tag: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(tag["type"], server_link_kind(frame), "{name}");
    }
    let kinds: std::collections::BTreeSet<_> = server.iter().map(|(_, f)| server_link_kind(f)).collect();
    assert_eq!(kinds.len(), 3, "every server link frame has a golden file");
}

/// A reader report from a later agent may carry more; a session's frames never parse as link
/// frames, nor the other way round.
#[test]
fn link_frames_ignore_unknown_fields_and_stay_apart_from_session_frames() {
    let later =
        r#"{"type":"readers","readers":[{"name":"r","card_present":false,"atr":"","slot":3}],"battery":80}"#;
    assert_eq!(
        AgentLinkFrame::parse(later).unwrap(),
        AgentLinkFrame::Readers {
            readers: vec![ReaderReport {
                name: "r".into(),
                card_present: false,
                atr: String::new(),
                card: None
            }]
        }
    );
    assert!(AgentLinkFrame::parse(&golden("agent_responses")).is_err());
    assert!(ServerLinkFrame::parse(&golden("server_transmit")).is_err());
    assert!(ServerFrame::parse(&golden("link_server_start_session")).is_err());
    let bad_job = r#"{"type":"session_ended","job":"not-a-job"}"#;
    assert!(AgentLinkFrame::parse(bad_job).is_err());
    let bad_verdict =
        r#"{"type":"readers","readers":[{"name":"r","card_present":true,"card":{"verdict":"maybe"}}]}"#;
    assert!(AgentLinkFrame::parse(bad_verdict).unwrap_err().to_string().contains("maybe"));
}
