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
