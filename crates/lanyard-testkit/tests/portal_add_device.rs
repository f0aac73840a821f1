//! The portal's *Add Device* through the agent link, in process: the real server, the real
//! linked agent with software cards in its readers, and the portal's pages and forms as a
//! browser would send them (session cookie, CSRF token in the form).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use lanyard_core::ids::JobId;
use lanyard_core::lifecycle::DeviceState;
use lanyard_testkit::link::HANG_GUARD;
use lanyard_testkit::{SoftWorkstation, TestServer, power_cycle};
use support::{Browser, Page, card_value, encode, form, page, sign_in, start_issuing, wait_for_pin_form};

const NEW_PIN: &str = "975319";
const READER: &str = "Soft reader 00 00";
const SECOND: &str = "Soft reader 01 00";

/// Add Device, from no workstation to an active card whose PIN was typed in the page: each
/// stage of the page, the card the agent reports, the session on that agent and reader, the
/// progress stream, the PIN rules checked with precise messages, and the card opening with the
/// PIN. Bob sees none of it, and no form works without the session's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_device_issues_the_reported_card_and_sets_the_pin_typed_in_the_page() {
    let server = TestServer::sqlite().await;
    let alice = sign_in(&server, &server.alice).await;
    let bob = sign_in(&server, &server.bob).await;

    let add = page(&server, "GET", "/portal/devices/new", Some(&alice), None).await;
    assert!(add.text.contains("pair your workstation"), "no agent yet: {}", add.text);
    let (id, credential) = server.pair_agent(&server.alice, "alice-ws").await;
    let add = page(&server, "GET", "/portal/devices/new", Some(&alice), None).await;
    assert!(add.text.contains("start the agent"), "paired, offline: {}", add.text);

    let ws = SoftWorkstation::new();
    ws.add_reader(READER);
    let _agent = server.run_linked_agent(id, &credential, ws.clone(), None);
    server.wait_for_agent(&server.alice, id, |a| a["readers"].is_array()).await;
    let add = page(&server, "GET", "/portal/devices/new", Some(&alice), None).await;
    assert!(add.text.contains("insert your device"), "online, no card: {}", add.text);
    assert!(add.text.contains("alice-ws") || add.text.contains("testkit-workstation"), "{}", add.text);

    // Refresh asks the agent to report again; without the token nothing is asked.
    ws.insert(READER, server.plug_card());
    let refused =
        page(&server, "POST", "/portal/devices/new/refresh", Some(&alice), Some("csrf_token=wrong")).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let refreshed =
        page(&server, "POST", "/portal/devices/new/refresh", Some(&alice), Some(&form(&alice, &[]))).await;
    assert_eq!(
        (refreshed.status, refreshed.location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/portal/devices/new"))
    );
    server.wait_for_agent(&server.alice, id, |a| a["readers"][0]["card"]["verdict"] == "compatible").await;
    let add = page(&server, "GET", "/portal/devices/new", Some(&alice), None).await;
    assert!(add.text.contains("Issue this device") && add.text.contains(READER), "{}", add.text);
    let card = card_value(&add.text, READER);

    // Bob sees no card of alice's, and cannot start one on her agent.
    let bobs = page(&server, "GET", "/portal/devices/new", Some(&bob), None).await;
    assert!(bobs.text.contains("pair your workstation") && !bobs.text.contains(READER), "{}", bobs.text);
    let theirs =
        page(&server, "POST", "/portal/devices/new/start", Some(&bob), Some(&form(&bob, &[("card", &card)])))
            .await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND, "{}", theirs.text);
    let no_token = page(
        &server,
        "POST",
        "/portal/devices/new/start",
        Some(&alice),
        Some(&format!("card={}", encode(&card))),
    )
    .await;
    assert_eq!(no_token.status, StatusCode::FORBIDDEN);
    let bad = page(
        &server,
        "POST",
        "/portal/devices/new/start",
        Some(&alice),
        Some(&form(&alice, &[("card", "nonsense")])),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
    let mine = page(&server, "GET", "/portal/devices", Some(&alice), None).await;
    assert!(mine.text.contains("You hold no devices yet."), "nothing was created: {}", mine.text);

    let job = start_issuing(&server, &alice, READER).await;
    let job_path = format!("/portal/jobs/{job}");
    let events = format!("{job_path}/events");
    for path in [&job_path, &events] {
        let p = page(&server, "GET", path, Some(&bob), None).await;
        assert_eq!(p.status, StatusCode::NOT_FOUND, "bob, {path}");
    }
    let signed_out = page(&server, "GET", &events, None, None).await;
    assert_eq!(signed_out.status, StatusCode::UNAUTHORIZED, "the page's script explains this");
    let stream = page(&server, "GET", &events, Some(&alice), None).await;
    assert_eq!((stream.status, stream.content_type.as_str()), (StatusCode::OK, "text/event-stream"));
    assert!(stream.text.starts_with("event: progress\ndata: {\"phase\":"), "{}", stream.text);

    let asking = wait_for_pin_form(&server, &alice, job).await;
    assert!(
        asking.text.contains("Choose your new PIN") && asking.text.contains("6 to 8 digits"),
        "{}",
        asking.text
    );
    let pin_path = format!("{job_path}/pin");
    let tries = [
        (
            vec![("action", "set"), ("new_pin", "24680"), ("confirm_pin", "24680")],
            "PIN must have at least 6 digits, got 5",
        ),
        (
            vec![("action", "set"), ("new_pin", "777777"), ("confirm_pin", "777777")],
            "PIN must not repeat one digit",
        ),
        (vec![("action", "set"), ("new_pin", "975319"), ("confirm_pin", "975318")], "The two PINs differ"),
        (vec![("action", "set"), ("new_pin", "")], "Type your new PIN."),
    ];
    for (fields, message) in tries {
        let p = page(&server, "POST", &pin_path, Some(&alice), Some(&form(&alice, &fields))).await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST, "{fields:?}");
        assert!(p.text.contains(message), "{message}: {}", p.text);
        assert!(!p.text.contains("24680") && !p.text.contains("975318"), "no PIN is echoed back");
        assert!(p.text.contains("id=\"pin-form\""), "the session still waits");
    }
    let fields = [("action", "set"), ("new_pin", NEW_PIN), ("confirm_pin", NEW_PIN)];
    let p = page(&server, "POST", &pin_path, Some(&bob), Some(&form(&bob, &fields))).await;
    assert_eq!(p.status, StatusCode::NOT_FOUND, "bob cannot set alice's PIN");
    let p = page(
        &server,
        "POST",
        &pin_path,
        Some(&alice),
        Some(&format!("action=set&new_pin={NEW_PIN}&confirm_pin={NEW_PIN}")),
    )
    .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN, "no token");
    let p = page(&server, "POST", &pin_path, Some(&alice), Some(&form(&alice, &fields))).await;
    assert_eq!(
        (p.status, p.location.as_deref()),
        (StatusCode::SEE_OTHER, Some(job_path.as_str())),
        "{}",
        p.text
    );

    let done = page(&server, "GET", &job_path, Some(&alice), None).await;
    assert!(done.text.contains("Your device is ready"), "{}", done.text);
    assert!(!done.text.contains(NEW_PIN), "the PIN is never shown");
    let device = server.job(job).await.device;
    assert_eq!(server.device(device).await.state, DeviceState::Active);
    let again = page(&server, "POST", &pin_path, Some(&alice), Some(&form(&alice, &fields))).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "the session no longer waits: {}", again.text);
    let mut card = tokio::time::timeout(HANG_GUARD, async {
        loop {
            if let Some(card) = ws.remove(READER) {
                return card;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the card is free again");
    power_cycle(&mut card);
    card.verify_pin(NEW_PIN.as_bytes()).expect("the PIN typed in the page opens the card");
}

/// *Skip* keeps the initial PIN: the device stays Pending and the page says what happens next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipping_the_pin_leaves_the_device_pending_and_says_why() {
    let server = TestServer::sqlite().await;
    let alice = sign_in(&server, &server.alice).await;
    let (id, credential) = server.pair_agent(&server.alice, "alice-ws").await;
    let ws = SoftWorkstation::new();
    ws.insert(READER, server.plug_card());
    ws.insert(SECOND, server.plug_card());
    let _agent = server.run_linked_agent(id, &credential, ws.clone(), Some(NEW_PIN));
    server
        .wait_for_agent(&server.alice, id, |a| {
            a["readers"]
                .as_array()
                .is_some_and(|r| r.iter().filter(|r| r["card"]["verdict"] == "compatible").count() == 2)
        })
        .await;
    let add = page(&server, "GET", "/portal/devices/new", Some(&alice), None).await;
    assert!(add.text.contains("choose the device to issue") && add.text.contains("Next"), "{}", add.text);
    let job = start_issuing(&server, &alice, SECOND).await;
    wait_for_pin_form(&server, &alice, job).await;
    let skip = page(
        &server,
        "POST",
        &format!("/portal/jobs/{job}/pin"),
        Some(&alice),
        Some(&form(&alice, &[("action", "skip")])),
    )
    .await;
    assert_eq!(skip.status, StatusCode::SEE_OTHER, "{}", skip.text);
    let device = server.job(job).await.device;
    let shown = tokio::time::timeout(HANG_GUARD, async {
        loop {
            let p = page(&server, "GET", &format!("/portal/jobs/{job}"), Some(&alice), None).await;
            if p.text.contains("Issued, with the initial PIN") {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the page shows the pending device");
    assert!(shown.text.contains("An operator activates it"), "{}", shown.text);
    assert_eq!(server.device(device).await.state, DeviceState::Pending);
    // The other card was not touched: it is still offered.
    let add = page(&server, "GET", "/portal/devices/new", Some(&alice), None).await;
    assert!(add.text.contains(READER), "{}", add.text);
}

/// Waits until the job has failed `attempt` times and its page shows it stopped.
async fn stopped(server: &TestServer, browser: &Browser, job: JobId, attempt: usize) -> Page {
    let path = format!("/portal/jobs/{job}");
    tokio::time::timeout(HANG_GUARD, async {
        loop {
            let steps = server.job(job).await.steps;
            let failures =
                steps.iter().filter(|s| s.outcome == lanyard_core::model::StepOutcome::Failed).count();
            let p = page(server, "GET", &path, Some(browser), None).await;
            if failures >= attempt && p.text.contains("The session stopped") {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the page shows the stopped session")
}

/// A session that fails (the card's attestation is not one the server trusts) is shown as
/// stopped, with what happened, **Resume** and **Start over**; resuming runs a new session on
/// the same job (which stops again at the same step), starting over resets the card and undoes
/// the job. Bob can do neither, and neither works without the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_session_is_explained_and_can_be_resumed_or_rolled_back_from_its_page() {
    let server = TestServer::sqlite().await;
    let alice = sign_in(&server, &server.alice).await;
    let bob = sign_in(&server, &server.bob).await;
    let (id, credential) = server.pair_agent(&server.alice, "alice-ws").await;
    let elsewhere = tempfile::tempdir().unwrap();
    let foreign =
        lanyard_vcard::AttestationRoot::open_or_create(elsewhere.path(), server.state.clock.now().into())
            .unwrap();
    let ws = SoftWorkstation::new();
    ws.insert(READER, lanyard_testkit::card::factory_card(&foreign));
    let _agent = server.run_linked_agent(id, &credential, ws.clone(), None);
    server.wait_for_agent(&server.alice, id, |a| a["readers"][0]["card"]["verdict"] == "compatible").await;
    let job = start_issuing(&server, &alice, READER).await;
    let path = format!("/portal/jobs/{job}");
    let failed = stopped(&server, &alice, job, 1).await;
    assert!(failed.text.contains("What happened: ") && failed.text.contains("attest"), "{}", failed.text);
    assert!(
        failed.text.contains(">Resume</button>") && failed.text.contains(">Start over</button>"),
        "{}",
        failed.text
    );
    let device = server.job(job).await.device;
    assert_ne!(server.device(device).await.state, DeviceState::Active, "a stopped card never looks finished");
    // My Devices shows it as Issuing, with the way back to this page.
    let mine = page(&server, "GET", "/portal/devices", Some(&alice), None).await;
    assert!(
        mine.text.contains("Issuing")
            && mine.text.contains(&format!("<a href=\"{path}\">Open its issuance</a>")),
        "{}",
        mine.text
    );
    let one = page(&server, "GET", &format!("/portal/devices/{device}"), Some(&alice), None).await;
    assert!(one.text.contains(&format!("<a href=\"{path}\">")), "{}", one.text);

    for action in ["resume", "rollback"] {
        let to = format!("{path}/{action}");
        let p = page(&server, "POST", &to, Some(&alice), Some("csrf_token=nope")).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN, "{action} without the token");
        let p = page(&server, "POST", &to, Some(&bob), Some(&form(&bob, &[]))).await;
        assert_eq!(p.status, StatusCode::NOT_FOUND, "bob, {action}");
    }
    let resumed =
        page(&server, "POST", &format!("{path}/resume"), Some(&alice), Some(&form(&alice, &[]))).await;
    assert_eq!(
        (resumed.status, resumed.location.as_deref()),
        (StatusCode::SEE_OTHER, Some(path.as_str())),
        "{}",
        resumed.text
    );
    stopped(&server, &alice, job, 2).await;

    let undo =
        page(&server, "POST", &format!("{path}/rollback"), Some(&alice), Some(&form(&alice, &[]))).await;
    assert_eq!(undo.status, StatusCode::SEE_OTHER, "{}", undo.text);
    let undone = tokio::time::timeout(HANG_GUARD, async {
        loop {
            let p = page(&server, "GET", &path, Some(&alice), None).await;
            if p.text.contains("Undone") {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the page shows the rollback");
    assert!(undone.text.contains("nothing was issued"), "{}", undone.text);
    assert_eq!(server.job(job).await.state, lanyard_core::model::JobState::RolledBack);
}
