//! What the self-service portal tests share, on top of `lanyard_testkit::portal` (the signed-in
//! browser, pages and forms): waiting for a job's PIN form and starting an issuance.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::http::StatusCode;
use lanyard_core::ids::JobId;
use lanyard_testkit::link::HANG_GUARD;
use lanyard_testkit::{Caller, TestServer};

pub use lanyard_testkit::portal::{Browser, Page, card_value, encode, form, job_of};

pub async fn sign_in(server: &TestServer, who: &Caller) -> Browser {
    server.sign_in(who).await
}

/// `method path` with the browser's cookie (when given) and a form body (when given).
pub async fn page(
    server: &TestServer,
    method: &str,
    path: &str,
    browser: Option<&Browser>,
    form: Option<&str>,
) -> Page {
    server.page(method, path, browser, form).await
}

/// Waits, as the page's script would, until the job's page asks for the PIN.
pub async fn wait_for_pin_form(server: &TestServer, browser: &Browser, job: JobId) -> Page {
    let path = format!("/portal/jobs/{job}");
    tokio::time::timeout(HANG_GUARD, async {
        loop {
            let p = page(server, "GET", &path, Some(browser), None).await;
            assert_eq!(p.status, StatusCode::OK, "{}", p.text);
            if p.text.contains("id=\"pin-form\"") {
                return p;
            }
            assert!(!p.text.contains("The session stopped"), "the session failed: {}", p.text);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the page asks for the PIN")
}

pub async fn start_issuing(server: &TestServer, browser: &Browser, reader: &str) -> JobId {
    let add = page(server, "GET", "/portal/devices/new", Some(browser), None).await;
    let card = card_value(&add.text, reader);
    let started = page(
        server,
        "POST",
        "/portal/devices/new/start",
        Some(browser),
        Some(&form(browser, &[("card", &card)])),
    )
    .await;
    assert_eq!(started.status, StatusCode::SEE_OTHER, "{}", started.text);
    job_of(started.location.as_deref().unwrap())
}
