//! Property tests for everything the protocol crate parses from a peer: frames in both
//! directions, the version header and server URLs. Hostile input gets an error, never a panic,
//! and what one side writes the other side reads back unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lanyard_protocol::link::{AgentLinkFrame, CardReport, ReaderReport, ServerLinkFrame, Verdict, link_url};
use lanyard_protocol::url::parse_server;
use lanyard_protocol::{AgentFrame, PROTOCOL_VERSION, Secret, ServerFrame, Side, check_version};
use proptest::prelude::*;

fn hex() -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| b.iter().map(|x| format!("{x:02X}")).collect())
}

fn agent_frame() -> impl Strategy<Value = AgentFrame> {
    prop_oneof![
        (any::<u32>(), ".{0,40}", ".{0,40}", hex(), proptest::collection::vec("[a-z_]{1,12}", 0..3))
            .prop_map(|(protocol, agent, reader, atr, features)| AgentFrame::Hello {
                protocol,
                agent,
                reader,
                atr,
                features
            }),
        (any::<u64>(), proptest::collection::vec(hex(), 0..8))
            .prop_map(|(seq, responses)| AgentFrame::Responses { seq, responses }),
        (any::<u64>(), proptest::collection::vec(hex(), 0..8))
            .prop_map(|(seq, responses)| AgentFrame::CtapResponses { seq, responses }),
        (any::<u64>(), "[0-9A-F]{4}").prop_map(|(seq, sw)| AgentFrame::PinChanged { seq, sw }),
        any::<u64>().prop_map(|seq| AgentFrame::PinChangeSkipped { seq }),
        (proptest::option::of(any::<u64>()), ".{0,80}")
            .prop_map(|(seq, message)| AgentFrame::Error { seq, message }),
    ]
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        (
            any::<u64>(),
            "[a-z_]{1,24}",
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(hex(), 0..8),
            any::<u32>()
        )
            .prop_map(|(seq, step, done, total, apdus, answer_within_secs)| ServerFrame::Transmit {
                seq,
                step,
                done,
                total,
                apdus,
                answer_within_secs,
            }),
        (
            any::<u64>(),
            "[a-z_]{1,24}",
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(hex(), 0..8),
            any::<u32>()
        )
            .prop_map(|(seq, step, done, total, requests, answer_within_secs)| ServerFrame::Ctap {
                seq,
                step,
                done,
                total,
                requests,
                answer_within_secs,
            }),
        ".{0,80}".prop_map(|message| ServerFrame::Error { message }),
    ]
}

fn verdict() -> impl Strategy<Value = Verdict> {
    prop_oneof![
        Just(Verdict::Compatible),
        Just(Verdict::AlreadyIssued),
        Just(Verdict::Unsupported),
        Just(Verdict::Unreadable)
    ]
}

fn reader() -> impl Strategy<Value = ReaderReport> {
    let card = (
        proptest::option::of(".{0,20}"),
        proptest::option::of("[0-9]{0,10}"),
        verdict(),
        proptest::option::of(".{0,40}"),
        any::<bool>(),
    )
        .prop_map(|(model, serial, verdict, reason, busy)| CardReport {
            model,
            serial,
            verdict,
            reason,
            busy,
        });
    (".{0,40}", any::<bool>(), hex(), proptest::option::of(card))
        .prop_map(|(name, card_present, atr, card)| ReaderReport { name, card_present, atr, card })
}

fn job_id() -> impl Strategy<Value = lanyard_core::ids::JobId> {
    any::<u128>().prop_map(|n| uuid_text(n).parse().unwrap())
}

/// A version-4-shaped UUID text from any 128 bits.
fn uuid_text(n: u128) -> String {
    let h = format!("{n:032x}");
    format!("{}-{}-4{}-8{}-{}", &h[..8], &h[8..12], &h[13..16], &h[17..20], &h[20..])
}

fn agent_link_frame() -> impl Strategy<Value = AgentLinkFrame> {
    prop_oneof![
        (any::<u32>(), ".{0,40}", ".{0,40}", proptest::collection::vec("[a-z_]{1,12}", 0..3)).prop_map(
            |(protocol, agent, host, features)| AgentLinkFrame::Hello { protocol, agent, host, features }
        ),
        proptest::collection::vec(reader(), 0..5).prop_map(|readers| AgentLinkFrame::Readers { readers }),
        (job_id(), proptest::option::of(".{0,40}"))
            .prop_map(|(job, error)| AgentLinkFrame::SessionEnded { job, error }),
        ".{0,80}".prop_map(|message| AgentLinkFrame::Error { message }),
    ]
}

fn server_link_frame() -> impl Strategy<Value = ServerLinkFrame> {
    prop_oneof![
        (job_id(), ".{0,60}", ".{0,40}", "[a-z]{1,10}").prop_map(|(job, ticket, reader, purpose)| {
            ServerLinkFrame::StartSession { job, ticket: Secret::new(ticket), reader, purpose }
        }),
        Just(ServerLinkFrame::Refresh),
        ".{0,80}".prop_map(|message| ServerLinkFrame::Error { message }),
    ]
}

proptest! {
    #[test]
    fn arbitrary_text_is_never_a_panic(text in ".{0,200}") {
        let _ = AgentFrame::parse(&text);
        let _ = ServerFrame::parse(&text);
        let _ = AgentLinkFrame::parse(&text);
        let _ = ServerLinkFrame::parse(&text);
    }

    #[test]
    fn link_frames_round_trip(agent in agent_link_frame(), server in server_link_frame()) {
        prop_assert_eq!(AgentLinkFrame::parse(&agent.to_text()).unwrap(), agent);
        prop_assert_eq!(ServerLinkFrame::parse(&server.to_text()).unwrap(), server);
    }

    #[test]
    fn json_shaped_link_garbage_is_an_error_or_a_frame(
        kind in prop_oneof![Just("hello"), Just("readers"), Just("session_ended"), Just("start_session"), Just("refresh"), Just("error"), Just("x")],
        value in prop_oneof![Just("1".to_owned()), Just("null".to_owned()), Just("[]".to_owned()), Just("{}".to_owned()), Just("\"j\"".to_owned()), ".{0,20}".prop_map(|s| format!("{s:?}"))],
        field in prop_oneof![Just("readers"), Just("job"), Just("message"), Just("ticket"), Just("card_present")],
    ) {
        let text = format!(r#"{{"type":"{kind}","{field}":{value}}}"#);
        if let Ok(frame) = AgentLinkFrame::parse(&text) {
            prop_assert_eq!(AgentLinkFrame::parse(&frame.to_text()).unwrap(), frame);
        }
        if let Ok(frame) = ServerLinkFrame::parse(&text) {
            prop_assert_eq!(ServerLinkFrame::parse(&frame.to_text()).unwrap(), frame);
        }
    }

    #[test]
    fn link_urls_follow_the_server_url_rules(text in ".{0,80}") {
        match (link_url(&text), parse_server(&text)) {
            (Ok(url), Ok(target)) => {
                prop_assert!(url.ends_with(lanyard_protocol::link::LINK_PATH));
                prop_assert_eq!(url.starts_with("wss://"), target.tls);
            }
            (Err(_), Err(_)) => {}
            (a, b) => prop_assert!(false, "{:?} vs {:?}", a, b),
        }
    }

    #[test]
    fn json_shaped_garbage_is_an_error_or_a_frame(
        kind in prop_oneof![Just("hello"), Just("responses"), Just("transmit"), Just("change_pin"), Just("ctap"), Just("ctap_responses"), Just("x")],
        seq in prop_oneof![Just("1".to_owned()), Just("-1".to_owned()), Just("1e99".to_owned()), Just("\"1\"".to_owned()), Just("null".to_owned())],
        extra in ".{0,40}",
    ) {
        let text = format!(r#"{{"type":"{kind}","seq":{seq},"note":{extra:?}}}"#);
        // Only frames whose every required field is present and typed parse.
        if let Ok(frame) = AgentFrame::parse(&text) {
            prop_assert_eq!(AgentFrame::parse(&frame.to_text()).unwrap(), frame);
        }
        if let Ok(frame) = ServerFrame::parse(&text) {
            prop_assert_eq!(ServerFrame::parse(&frame.to_text()).unwrap(), frame);
        }
    }

    #[test]
    fn agent_frames_round_trip(frame in agent_frame()) {
        prop_assert_eq!(AgentFrame::parse(&frame.to_text()).unwrap(), frame);
    }

    #[test]
    fn server_frames_round_trip(frame in server_frame()) {
        prop_assert_eq!(ServerFrame::parse(&frame.to_text()).unwrap(), frame);
    }

    #[test]
    fn only_this_exact_version_is_accepted(header in proptest::option::of(".{0,40}")) {
        let accepted = check_version(Side::Server, header.as_deref()).is_ok();
        let exact = header.as_deref().map(str::trim).and_then(|v| v.parse::<u32>().ok()) == Some(PROTOCOL_VERSION);
        prop_assert_eq!(accepted, exact);
        if let Err(e) = check_version(Side::Agent, header.as_deref()) {
            // The message is bounded whatever the peer sent.
            prop_assert!(e.to_string().len() < 300, "{}", e);
        }
    }

    #[test]
    fn arbitrary_server_urls_never_panic_and_plain_http_stays_on_loopback(text in ".{0,80}") {
        if let Ok(target) = parse_server(&text) {
            prop_assert!(target.url.starts_with("wss://") || target.url.starts_with("ws://"));
            prop_assert!(target.url.ends_with(lanyard_protocol::CONNECT_PATH));
            if !target.tls {
                let ip: Option<std::net::IpAddr> = target.host.parse().ok();
                prop_assert!(target.host == "localhost" || ip.is_some_and(|ip| ip.is_loopback()), "{:?}", target);
            }
        }
    }

    #[test]
    fn generated_urls_parse_as_expected(
        tls in any::<bool>(),
        host in prop_oneof![Just("127.0.0.1".to_owned()), Just("localhost".to_owned()), Just("[::1]".to_owned()), "[a-z]{1,10}\\.example"],
        port in proptest::option::of(1u16..),
        prefix in "(/[a-z]{1,6}){0,2}/?",
    ) {
        let scheme = if tls { "https" } else { "http" };
        let port_part = port.map(|p| format!(":{p}")).unwrap_or_default();
        let text = format!("{scheme}://{host}{port_part}{prefix}");
        let loopback = !host.ends_with(".example");
        match parse_server(&text) {
            Ok(t) => {
                prop_assert!(tls || loopback, "{}", text);
                prop_assert_eq!(t.tls, tls);
                prop_assert_eq!(t.port, port.unwrap_or(if tls { 443 } else { 80 }));
            }
            Err(e) => prop_assert!(!tls && !loopback, "{}: {}", text, e),
        }
    }
}
