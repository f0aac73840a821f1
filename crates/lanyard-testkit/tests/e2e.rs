//! End to end in one process: the real agent relay (`lanyard-agent`) issues a software card
//! through the real server (`lanyard-server`) on a real socket, on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::http::StatusCode;
use lanyard_agent::relay::{DeviceState as AgentState, PinOutcome, Progress};
use lanyard_core::lifecycle::{CredentialState, DeviceState};
use lanyard_core::model::JobState;
use lanyard_testkit::tools::{openssl, pkilint, write_pem};
use lanyard_testkit::{TestServer, card_certificates, on_both_databases, power_cycle, recorded_certificates};

const NEW_PIN: &str = "975319";

on_both_databases!(
    async fn the_real_agent_issues_a_card_through_the_real_server(backend) {
        let server = TestServer::start(backend).await;
        let issuance = server.begin_issuance(&server.alice).await;
        let run = server.issue_with_agent(&issuance.ticket, server.plug_card(), Some(NEW_PIN)).await;

        let outcome = run.outcome.expect("the server ends the session with done");
        assert_eq!(outcome.device, issuance.device);
        assert_eq!((outcome.state, outcome.pin), (AgentState::Active, PinOutcome::Changed));
        assert!(run.progress.contains(&Progress::PinRequested), "{:?}", run.progress);
        assert_eq!(server.device(issuance.device).await.state, DeviceState::Active);
        assert_eq!(server.job(issuance.job).await.state, JobState::Succeeded);

        // The card holds exactly the four certificates the server recorded, all active.
        let mut card = run.card;
        power_cycle(&mut card);
        let credentials = server.credentials(issuance.device).await;
        assert!(credentials.iter().all(|c| c.state == CredentialState::Active));
        let on_card = card_certificates(&mut card);
        assert_eq!(on_card.len(), 4);
        assert_eq!(on_card, recorded_certificates(&credentials));
        // Only the holder's new PIN opens it.
        card.verify_pin(NEW_PIN.as_bytes()).expect("the new PIN verifies");
        assert!(card.verify_pin(b"123456").is_err(), "the factory PIN is gone");

        // openssl chains every certificate to the server's CA; pkilint finds nothing wrong.
        let dir = server.dir.path();
        let root = write_pem(&dir.join("root.pem"), "CERTIFICATE", server.state.pki.root.certificate_der());
        let issuing =
            write_pem(&dir.join("issuing.pem"), "CERTIFICATE", server.state.pki.issuing.certificate_der());
        for (slot, der) in &on_card {
            let leaf = dir.join(format!("{slot}.pem"));
            let leaf_path = write_pem(&leaf, "CERTIFICATE", der);
            let out = openssl(&["verify", "-CAfile", &root, "-untrusted", &issuing, &leaf_path]);
            assert!(out.contains(": OK"), "{slot}: {out}");
            pkilint::assert_cert(&leaf);
        }
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipping_change_pin_leaves_the_card_pending_until_an_operator_activates_it() {
    let server = TestServer::sqlite().await;
    let issuance = server.begin_issuance(&server.bob).await;
    let run = server.issue_with_agent(&issuance.ticket, server.plug_card(), None).await;
    let outcome = run.outcome.expect("the server ends the session with done");
    assert_eq!((outcome.state, outcome.pin), (AgentState::Pending, PinOutcome::Skipped));
    assert_eq!(server.device(issuance.device).await.state, DeviceState::Pending);

    // The holder may not activate the card; the operator does, and learns the initial PIN once.
    let activate = format!("/api/v1/devices/{}/activate", issuance.device);
    let (status, _) = server.call(&server.bob, "POST", &activate, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = server.call(&server.operator, "POST", &activate, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let initial_pin = body["initial_pin"].as_str().expect("the initial PIN").to_owned();

    assert_eq!(server.device(issuance.device).await.state, DeviceState::Active);
    let credentials = server.credentials(issuance.device).await;
    assert!(credentials.iter().all(|c| c.state == CredentialState::Active));
    let mut card = run.card;
    power_cycle(&mut card);
    assert_eq!(card_certificates(&mut card), recorded_certificates(&credentials));
    card.verify_pin(initial_pin.as_bytes()).expect("the revealed initial PIN opens the card");
}

// ---------------------------------------------------------------------------------------------
// The agent link: a paired agent reports its readers and runs sessions the API starts.
// ---------------------------------------------------------------------------------------------

mod link {
    use std::net::TcpStream;

    use axum::http::StatusCode;
    use lanyard_agent::AgentError;
    use lanyard_agent::link::LinkEvent;
    use lanyard_agent::relay::SessionOptions;
    use lanyard_core::audit::OperationId;
    use lanyard_core::authz::{AgentBinding, Principal, TicketPurpose};
    use lanyard_core::lifecycle::DeviceState;
    use lanyard_core::repo::prelude::*;
    use lanyard_protocol::link::{AgentLinkFrame, LINK_PATH, ServerLinkFrame};
    use lanyard_testkit::{SoftWorkstation, TestServer, on_both_databases};
    use secrecy::ExposeSecret;
    use serde_json::{Value, json};
    use tungstenite::Message;
    use tungstenite::client::IntoClientRequest;

    const NEW_PIN: &str = "975319";
    const READER: &str = "Soft reader 00 00";
    const EMPTY: &str = "Soft reader 01 00";

    fn reader<'a>(agent: &'a Value, name: &str) -> &'a Value {
        agent["readers"]
            .as_array()
            .and_then(|list| list.iter().find(|r| r["name"] == name))
            .unwrap_or_else(|| panic!("no reader {name} in {agent}"))
    }

    on_both_databases!(
        async fn a_linked_agent_reports_its_cards_and_runs_the_session_the_api_starts(backend) {
            let server = TestServer::start(backend).await;
            let (id, credential) = server.pair_agent(&server.alice, "alice-ws").await;
            let ws = SoftWorkstation::new();
            ws.insert(READER, server.plug_card());
            ws.add_reader(EMPTY);
            let mut agent = server.run_linked_agent(id, &credential, ws.clone(), Some(NEW_PIN));
            agent.wait_for("the connection", |e| *e == LinkEvent::Connected).await;

            // Online, with both readers and the card identified as the software YubiKey.
            let seen = server
                .wait_for_agent(&server.alice, id, |a| a["online"] == true && a["readers"].is_array())
                .await;
            assert_eq!(seen["host_name"], "alice-ws");
            assert!(seen["agent_version"].as_str().is_some_and(|v| v.starts_with("lanyard-agent/")), "{seen}");
            assert!(seen["last_seen_at"].is_string(), "authentication notes the use: {seen}");
            let card = &reader(&seen, READER)["card"];
            assert_eq!((card["verdict"].as_str(), card["model"].as_str()), (Some("compatible"), Some("YubiKey 5")));
            assert_eq!(reader(&seen, READER)["card_present"], true);
            assert_eq!(reader(&seen, EMPTY)["card_present"], false);

            // A refresh makes the agent report again although nothing changed.
            let first = seen["readers_reported_at"].as_str().expect("when the report came").to_owned();
            let refresh = format!("/api/v1/agents/{id}/refresh");
            let (status, _) = server.call(&server.alice, "POST", &refresh, None).await;
            assert_eq!(status, StatusCode::ACCEPTED);
            let again = server
                .wait_for_agent(&server.alice, id, |a| a["readers_reported_at"].as_str() != Some(first.as_str()))
                .await;
            assert_eq!(again["readers"], seen["readers"], "the same readers, reported again");
            let (status, _) = server.call(&server.bob, "POST", &refresh, None).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "bob cannot refresh alice's agent");

            // Bob sees nothing of it and can use nothing of it, not even for his own job.
            let bobs = server.get(&server.bob, "/api/v1/agents").await;
            assert_eq!(bobs, json!([]), "bob has no agents and sees none of alice's");
            let bob_job = server.begin_issuance(&server.bob).await;
            let sessions = format!("/api/v1/agents/{id}/sessions");
            let body = json!({"job": bob_job.job.to_string(), "reader": READER});
            let (status, answer) = server.call(&server.bob, "POST", &sessions, Some(body)).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
            let (status, _) = server.call(&server.bob, "DELETE", &format!("/api/v1/agents/{id}"), None).await;
            assert_eq!(status, StatusCode::NOT_FOUND);
            // Nor can Alice run Bob's job on her agent.
            let (status, answer) = server
                .call(&server.alice, "POST", &sessions, Some(json!({"job": bob_job.job.to_string(), "reader": READER})))
                .await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");

            // Alice's own job: a reader without a card, or one the agent never named, is refused.
            let issuance = server.begin_issuance(&server.alice).await;
            for (name, expected) in [(EMPTY, "holds no card"), ("Nowhere 00 00", "reports no reader")] {
                let body = json!({"job": issuance.job.to_string(), "reader": name});
                let (status, answer) = server.call(&server.alice, "POST", &sessions, Some(body)).await;
                assert_eq!(status, StatusCode::CONFLICT, "{answer}");
                assert!(answer["error"].as_str().is_some_and(|e| e.contains(expected)), "{answer}");
            }
            let body = json!({"job": issuance.job.to_string(), "reader": READER});
            let (status, answer) = server.call(&server.alice, "POST", &sessions, Some(body)).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
            assert_eq!(answer["reader"], READER);

            let ended = agent.wait_for("the end of the session", |e| matches!(e, LinkEvent::SessionEnded { .. })).await;
            assert_eq!(
                ended,
                LinkEvent::SessionEnded { job: issuance.job, reader: READER.into(), error: None }
            );
            let job = server.wait_for_job(&server.alice, issuance.job).await;
            assert_eq!(job["state"], "succeeded", "{job}");
            assert_eq!(server.device(issuance.device).await.state, DeviceState::Active);
            assert_eq!(server.job(issuance.job).await.agent, Some(id), "the job records the agent");
            // The card left in the reader opens with the holder's PIN only.
            let mut card = ws.remove(READER).expect("the card is back in its reader");
            lanyard_testkit::power_cycle(&mut card);
            card.verify_pin(NEW_PIN.as_bytes()).expect("the new PIN verifies");

            // The start is audited with the agent and the reader.
            let events = server.get(&server.admin, "/api/v1/audit?limit=1000").await;
            let started = events
                .as_array()
                .into_iter()
                .flatten()
                .rfind(|e| e["action"] == "job.ticket" && e["target"] == format!("job:{}", issuance.job))
                .unwrap_or_else(|| panic!("no job.ticket event for the job in {events}"));
            assert_eq!(started["after"]["agent"], id.to_string(), "{started}");
            assert_eq!(started["after"]["reader"], READER, "{started}");
        }
    );

    /// An operator issuing in person runs the holder's job on an agent paired to the operator;
    /// another operator cannot use that agent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_operator_runs_a_holders_job_on_the_operators_own_agent() {
        let server = TestServer::sqlite().await;
        let (id, credential) = server.pair_agent(&server.admin, "help-desk").await;
        let ws = SoftWorkstation::new();
        ws.insert(READER, server.plug_card());
        let mut agent = server.run_linked_agent(id, &credential, ws, Some(NEW_PIN));
        server.wait_for_agent(&server.admin, id, |a| a["readers"].is_array()).await;
        let issuance = server.begin_issuance(&server.alice).await;
        let sessions = format!("/api/v1/agents/{id}/sessions");
        let body = json!({"job": issuance.job.to_string(), "reader": READER});
        let (status, answer) = server.call(&server.operator, "POST", &sessions, Some(body.clone())).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "another operator's agent: {answer}");
        let (status, answer) = server.call(&server.alice, "POST", &sessions, Some(body.clone())).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "the holder cannot use the operator's agent: {answer}");
        let (status, answer) = server.call(&server.admin, "POST", &sessions, Some(body)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        let ended =
            agent.wait_for("the end of the session", |e| matches!(e, LinkEvent::SessionEnded { .. })).await;
        assert_eq!(ended, LinkEvent::SessionEnded { job: issuance.job, reader: READER.into(), error: None });
        let job = server.wait_for_job(&server.admin, issuance.job).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        let device = server.device(issuance.device).await;
        assert_eq!((device.state, device.owner), (DeviceState::Active, Some(server.alice.id)));
    }

    /// Asks `GET /api/v1/jobs/{id}` until the session waits for the portal's PIN.
    async fn pin_wanted(
        server: &TestServer,
        caller: &lanyard_testkit::Caller,
        job: lanyard_core::ids::JobId,
    ) -> Value {
        let path = format!("/api/v1/jobs/{job}");
        tokio::time::timeout(lanyard_testkit::link::HANG_GUARD, async {
            loop {
                let view = server.get(caller, &path).await;
                if view["pin_wanted"].is_object() {
                    return view["pin_wanted"].clone();
                }
                assert!(
                    matches!(view["state"].as_str(), Some("created" | "running")),
                    "the job ended without asking for a PIN: {view}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the session asks for the PIN")
    }

    on_both_databases!(
        /// The holder types the new PIN in the portal: the server checks it against the rules
        /// and passes it to the agent, which writes it without asking anyone at the workstation
        /// (whose own source here would keep the initial PIN).
        async fn a_pin_typed_in_the_portal_reaches_the_card_through_the_agent(backend) {
            let server = TestServer::start(backend).await;
            let (id, credential) = server.pair_agent(&server.alice, "alice-ws").await;
            let ws = SoftWorkstation::new();
            ws.insert(READER, server.plug_card());
            ws.insert(EMPTY, server.plug_card());
            let mut agent = server.run_linked_agent(id, &credential, ws.clone(), None);
            server.wait_for_agent(&server.alice, id, |a| a["readers"].is_array()).await;
            let sessions = format!("/api/v1/agents/{id}/sessions");
            // The session is over when the agent has heard `done` (the job succeeds before the
            // PIN step, which only decides between Active and Pending).
            let ended = |job| move |e: &LinkEvent| matches!(e, LinkEvent::SessionEnded { job: j, error: None, .. } if *j == job);

            let issuance = server.begin_issuance(&server.alice).await;
            let body = json!({"job": issuance.job.to_string(), "reader": READER, "new_pin_from": "portal"});
            let (status, answer) = server.call(&server.alice, "POST", &sessions, Some(body)).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
            let wanted = pin_wanted(&server, &server.alice, issuance.job).await;
            assert_eq!(wanted["rules"], json!({"min_len": 6, "max_len": 8, "forbid_trivial": true}));
            assert!(wanted["seconds_left"].as_u64().is_some_and(|s| s > 0), "{wanted}");
            let pin_path = format!("/api/v1/jobs/{}/pin", issuance.job);
            let (status, _) = server.call(&server.bob, "POST", &pin_path, Some(json!({"new_pin": NEW_PIN}))).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "bob cannot set alice's PIN");
            let (status, answer) = server.call(&server.alice, "POST", &pin_path, Some(json!({"new_pin": "123456"}))).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
            assert!(answer["error"].as_str().is_some_and(|e| e.starts_with("new_pin: ")), "{answer}");
            let (status, answer) = server.call(&server.alice, "POST", &pin_path, Some(json!({"new_pin": NEW_PIN}))).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
            agent.wait_for("the end of the session", ended(issuance.job)).await;
            let job = server.wait_for_job(&server.alice, issuance.job).await;
            assert_eq!(job["state"], "succeeded", "{job}");
            assert_eq!(server.device(issuance.device).await.state, DeviceState::Active);
            let (status, _) = server.call(&server.alice, "POST", &pin_path, Some(json!({"new_pin": NEW_PIN}))).await;
            assert_eq!(status, StatusCode::CONFLICT, "the session no longer waits");
            let mut card = ws.remove(READER).expect("the card is back");
            lanyard_testkit::power_cycle(&mut card);
            card.verify_pin(NEW_PIN.as_bytes()).expect("the PIN typed in the portal opens the card");

            // Declining in the portal keeps the initial PIN: the device stays pending.
            let second = server.begin_issuance(&server.alice).await;
            let body = json!({"job": second.job.to_string(), "reader": EMPTY, "new_pin_from": "portal"});
            let (status, answer) = server.call(&server.alice, "POST", &sessions, Some(body)).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
            pin_wanted(&server, &server.alice, second.job).await;
            let second_pin = format!("/api/v1/jobs/{}/pin", second.job);
            let (status, _) = server.call(&server.alice, "POST", &second_pin, Some(json!({"new_pin": null}))).await;
            assert_eq!(status, StatusCode::ACCEPTED);
            agent.wait_for("the end of the second session", ended(second.job)).await;
            let job = server.wait_for_job(&server.alice, second.job).await;
            assert_eq!(job["state"], "succeeded", "{job}");
            assert_eq!(server.device(second.device).await.state, DeviceState::Pending);
        }
    );

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_agent_bound_ticket_needs_that_agents_credential() {
        let server = TestServer::sqlite().await;
        let (id, credential) = server.pair_agent(&server.alice, "alice-ws").await;
        let (_, bobs_credential) = server.pair_agent(&server.bob, "bob-ws").await;
        let issuance = server.begin_issuance(&server.alice).await;
        // The ticket the link would carry, minted by the same domain call the route makes.
        let alice = {
            let mut tx = server.db.db.begin().await.unwrap();
            tx.get_user(server.alice.id).await.unwrap().unwrap()
        };
        let principal = Principal::new(alice, OperationId::random(), server.state.clock.now()).unwrap();
        let bound = AgentBinding { agent: id, reader: READER.into() };
        let (job, ticket) = principal
            .self_service()
            .unwrap()
            .agent_job_ticket(
                server.db.db.as_ref(),
                issuance.job,
                TicketPurpose::Run,
                time::Duration::minutes(10),
                &bound,
            )
            .await
            .unwrap();
        let ticket = format!("{}.{}", job.id, ticket.expose_secret());

        // The ticket alone, or with another agent's credential, is refused and stays unused.
        for other in [None, Some(bobs_credential.as_str()), Some("not-a-credential")] {
            let mut opts = SessionOptions::new(server.url.clone(), ticket.clone(), "r");
            opts.credential = other.map(|c| zeroize::Zeroizing::new(c.to_owned()));
            let card = server.plug_card();
            let refused = tokio::task::spawn_blocking(move || {
                let mut card = card;
                lanyard_agent::relay::run_session_with(
                    &opts,
                    card.transport_mut(),
                    &lanyard_vcard::atr(),
                    &mut lanyard_agent::relay::SkipPinChange,
                    &mut |_| {},
                )
            })
            .await
            .unwrap();
            match refused {
                Err(AgentError::Refused { status: 401, body }) => {
                    assert!(body.contains("only together with that agent's credential"), "{body}")
                }
                other => panic!("expected a refusal, got {other:?}"),
            }
            assert_eq!(server.job(issuance.job).await.state, lanyard_core::model::JobState::Created);
        }

        // With the agent's credential the same ticket runs the session.
        let mut opts = SessionOptions::new(server.url.clone(), ticket, "r");
        opts.credential = Some(zeroize::Zeroizing::new(credential));
        let card = server.plug_card();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut card = card;
            lanyard_agent::relay::run_session_with(
                &opts,
                card.transport_mut(),
                &lanyard_vcard::atr(),
                &mut lanyard_agent::relay::SkipPinChange,
                &mut |_| {},
            )
        })
        .await
        .unwrap()
        .expect("the bound agent runs the session");
        assert_eq!(outcome.device, issuance.device);
        assert_eq!(server.device(issuance.device).await.state, DeviceState::Pending);

        // A plain ticket for the job (the CLI's way) clears the binding: it works alone again.
        let other = server.begin_issuance(&server.alice).await;
        let run = server.issue_with_agent(&other.ticket, server.plug_card(), None).await;
        run.outcome.expect("a plain ticket still works without a credential");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revoked_agent_is_disconnected_and_refused() {
        let server = TestServer::sqlite().await;
        let (id, credential) = server.pair_agent(&server.alice, "alice-ws").await;
        let ws = SoftWorkstation::new();
        ws.insert(READER, server.plug_card());
        let mut agent = server.run_linked_agent(id, &credential, ws, None);
        server.wait_for_agent(&server.alice, id, |a| a["online"] == true && a["readers"].is_array()).await;

        let (status, answer) =
            server.call(&server.alice, "DELETE", &format!("/api/v1/agents/{id}"), None).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let told = agent.wait_for("the server's error", |e| matches!(e, LinkEvent::ServerError(_))).await;
        assert_eq!(told, LinkEvent::ServerError("this agent has been revoked".into()));
        // Reconnecting meets a 401, which ends the agent for good.
        match agent.finished().await {
            Err(AgentError::Refused { status: 401, body }) => {
                assert!(body.contains("unknown or revoked"), "{body}")
            }
            other => panic!("expected the credential to be refused, got {other:?}"),
        }
        let listed = server.wait_for_agent(&server.alice, id, |a| a["online"] == false).await;
        assert!(listed["revoked_at"].is_string(), "{listed}");
        // Nothing can be started on it any more.
        let issuance = server.begin_issuance(&server.alice).await;
        let body = json!({"job": issuance.job.to_string(), "reader": READER});
        let (status, _) =
            server.call(&server.alice, "POST", &format!("/api/v1/agents/{id}/sessions"), Some(body)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    /// A raw WebSocket client on the link, to send what a real agent never would.
    fn raw_link(
        server: &TestServer,
        credential: Option<&str>,
        version: &str,
    ) -> Result<tungstenite::WebSocket<TcpStream>, (u16, String)> {
        let mut request = format!("ws://{}{LINK_PATH}", server.addr).into_client_request().unwrap();
        if let Some(c) = credential {
            request.headers_mut().insert("authorization", format!("Bearer {c}").parse().unwrap());
        }
        request.headers_mut().insert(lanyard_protocol::VERSION_HEADER, version.parse().unwrap());
        let tcp = TcpStream::connect(server.addr).unwrap();
        tcp.set_read_timeout(Some(lanyard_testkit::link::HANG_GUARD)).unwrap();
        match tungstenite::client(request, tcp) {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => Err((
                resp.status().as_u16(),
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
            )),
            Err(e) => panic!("handshake: {e}"),
        }
    }

    fn next_error(ws: &mut tungstenite::WebSocket<TcpStream>) -> String {
        loop {
            match ws.read().expect("a frame from the server") {
                Message::Text(t) => match ServerLinkFrame::parse(t.as_str()) {
                    Ok(ServerLinkFrame::Error { message }) => return message,
                    other => panic!("expected an error frame, got {other:?}"),
                },
                Message::Close(_) => panic!("closed without an error frame"),
                _ => {}
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_link_refuses_bad_credentials_versions_and_frames_precisely() {
        let server = std::sync::Arc::new(TestServer::sqlite().await);
        let (id, credential) = server.pair_agent(&server.alice, "alice-ws").await;
        let s = std::sync::Arc::clone(&server);
        let _raw = tokio::task::spawn_blocking(move || {
            let refusal = |c: Option<&str>, v: &str| raw_link(&s, c, v).expect_err("a refusal");
            let (status, body) = refusal(None, "1");
            assert_eq!(status, 401);
            assert!(body.contains("missing Authorization: Bearer <agent credential>"), "{body}");
            let (status, body) = refusal(Some("wrong"), "1");
            assert_eq!(status, 401);
            assert!(body.contains("unknown or revoked"), "{body}");
            let (status, body) = refusal(Some(&credential), "7");
            assert_eq!(status, 400);
            assert!(body.contains("the agent speaks agent protocol version 7"), "{body}");

            // Anything but hello first ends the link, saying why.
            let mut ws = raw_link(&s, Some(&credential), "1").unwrap();
            ws.send(Message::text("{\"type\":\"readers\"")).unwrap();
            let why = next_error(&mut ws);
            assert!(why.starts_with("expected hello: unintelligible frame: EOF while parsing"), "{why}");

            // After hello, a bad frame is answered precisely and the link stays up.
            let mut ws = raw_link(&s, Some(&credential), "1").unwrap();
            let hello = AgentLinkFrame::Hello {
                protocol: 1,
                agent: "raw".into(),
                host: "raw-host".into(),
                features: vec![],
            };
            ws.send(Message::text(hello.to_text())).unwrap();
            ws.send(Message::text(r#"{"type":"readers","readers":"none"}"#)).unwrap();
            let why = next_error(&mut ws);
            assert!(why.contains("invalid type: string \"none\", expected a sequence"), "{why}");
            ws.send(Message::text(r#"{"type":"teleport"}"#)).unwrap();
            let why = next_error(&mut ws);
            assert!(why.contains("unknown variant `teleport`"), "{why}");
            ws.send(Message::text(hello.to_text())).unwrap();
            assert_eq!(next_error(&mut ws), "hello was already said on this link");
            let too_many = AgentLinkFrame::Readers {
                readers: (0..65)
                    .map(|i| lanyard_protocol::link::ReaderReport {
                        name: format!("r{i}"),
                        card_present: false,
                        atr: String::new(),
                        card: None,
                    })
                    .collect(),
            };
            ws.send(Message::text(too_many.to_text())).unwrap();
            assert_eq!(next_error(&mut ws), "a readers report lists 65 readers, more than the 64 allowed");
            let good = AgentLinkFrame::Readers {
                readers: vec![lanyard_protocol::link::ReaderReport {
                    name: "raw reader".into(),
                    card_present: false,
                    atr: String::new(),
                    card: None,
                }],
            };
            ws.send(Message::text(good.to_text())).unwrap();
            ws
        })
        .await
        .unwrap();
        // The link survived the bad frames: the good report after them is what the API shows.
        let seen = server.wait_for_agent(&server.alice, id, |a| a["readers"].is_array()).await;
        assert_eq!(reader(&seen, "raw reader")["card_present"], false);
        assert_eq!(seen["agent_version"], "raw");
    }
}
