//! What the in-process portal tests share: a signed-in browser (session cookie, CSRF token)
//! and pages fetched and forms posted as a browser sends them.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use lanyard_core::ids::JobId;
use lanyard_core::model::Session;
use lanyard_core::repo::prelude::*;
use lanyard_testkit::link::HANG_GUARD;
use lanyard_testkit::{Caller, TestServer};
use secrecy::ExposeSecret;
use tower::ServiceExt;

pub struct Page {
    pub status: StatusCode,
    pub location: Option<String>,
    pub content_type: String,
    pub text: String,
}

/// A signed-in browser: the session cookie and the CSRF token its pages carry.
pub struct Browser {
    pub cookie: String,
    pub csrf: String,
}

pub async fn sign_in(server: &TestServer, who: &Caller) -> Browser {
    let now = server.state.clock.now();
    let (session, secret) = Session::start(who.id, time::Duration::minutes(30), now).unwrap();
    let mut tx = server.db.db.begin().await.unwrap();
    tx.insert_session(&session).await.unwrap();
    tx.commit().await.unwrap();
    let secret = secret.expose_secret().to_owned();
    Browser {
        cookie: format!("{}={secret}", lanyard_server::auth::SESSION_COOKIE),
        csrf: Session::csrf_token(&secret),
    }
}

/// `method path` with the browser's cookie (when given) and a form body; the body is read only
/// for non-streaming answers.
pub async fn page(
    server: &TestServer,
    method: &str,
    path: &str,
    browser: Option<&Browser>,
    form: Option<&str>,
) -> Page {
    let mut req = Request::builder().method(method).uri(path).header(header::HOST, "lanyard.test");
    if let Some(b) = browser {
        req = req.header(header::COOKIE, &b.cookie);
    }
    let req = match form {
        Some(f) => req
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ORIGIN, "https://lanyard.test")
            .body(Body::from(f.to_owned())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let resp = lanyard_server::router(server.state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let location = resp.headers().get(header::LOCATION).map(|l| l.to_str().unwrap().to_owned());
    let content_type =
        resp.headers().get(header::CONTENT_TYPE).map(|c| c.to_str().unwrap().to_owned()).unwrap_or_default();
    let text = if content_type.starts_with("text/event-stream") {
        // The first event, then the stream is dropped.
        let mut body = resp.into_body();
        let mut text = String::new();
        while !text.contains("\n\n") {
            use futures_util_shim::next;
            let chunk = tokio::time::timeout(HANG_GUARD, next(&mut body)).await.unwrap().unwrap().unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        text
    } else {
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    };
    Page { status, location, content_type, text }
}

/// The one stream call the test needs, without another dependency.
mod futures_util_shim {
    use std::future::poll_fn;
    use std::pin::Pin;

    pub async fn next<S: axum::body::HttpBody + Unpin>(body: &mut S) -> Option<Result<S::Data, S::Error>>
    where
        S::Data: Sized,
    {
        poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx))
            .await
            .map(|r| r.map(|f| f.into_data().ok().unwrap()))
    }
}

pub fn form(browser: &Browser, rest: &[(&str, &str)]) -> String {
    let mut pairs = vec![("csrf_token".to_owned(), browser.csrf.clone())];
    pairs.extend(rest.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}

pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `card` value of the page's form (`<agent>|<reader>`) for `reader`.
pub fn card_value(text: &str, reader: &str) -> String {
    let end = format!("|{reader}\"");
    let at = text.find(&end).unwrap_or_else(|| panic!("no card in {reader} on the page: {text}"));
    let start = text[..at].rfind("value=\"").unwrap() + "value=\"".len();
    format!("{}|{reader}", &text[start..at])
}

pub fn job_of(location: &str) -> JobId {
    location.strip_prefix("/portal/jobs/").unwrap().parse().unwrap()
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
