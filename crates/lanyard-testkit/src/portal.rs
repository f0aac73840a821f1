//! The portal as a browser uses it, in process: a signed-in session (cookie and CSRF token), pages
//! fetched and forms posted through the same router the socket serves, with this site's `Origin`.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use lanyard_core::ids::JobId;
use lanyard_core::model::Session;
use lanyard_core::repo::prelude::*;
use secrecy::ExposeSecret;
use tower::ServiceExt;

use crate::link::HANG_GUARD;
use crate::server::{Caller, TestServer};

/// One answer: status, redirect target, content type and body (for an event stream, its first
/// event).
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

impl TestServer {
    /// A portal session for `who`, as signing in makes one.
    pub async fn sign_in(&self, who: &Caller) -> Browser {
        let now = self.state.clock.now();
        let (session, secret) = Session::start(who.id, time::Duration::minutes(30), now).expect("a session");
        let mut tx = self.db.db.begin().await.expect("a transaction");
        tx.insert_session(&session).await.expect("insert the session");
        tx.commit().await.expect("commit the session");
        let secret = secret.expose_secret().to_owned();
        Browser {
            cookie: format!("{}={secret}", lanyard_server::auth::SESSION_COOKIE),
            csrf: Session::csrf_token(&secret),
        }
    }

    /// `method path` with `browser`'s cookie (when given) and a form body (when given).
    pub async fn page(
        &self,
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
        .expect("a well-formed request");
        let resp = lanyard_server::router(self.state.clone()).oneshot(req).await.expect("the router answers");
        let status = resp.status();
        let location = resp.headers().get(header::LOCATION).map(|l| l.to_str().expect("ASCII").to_owned());
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|c| c.to_str().expect("ASCII").to_owned())
            .unwrap_or_default();
        let text = if content_type.starts_with("text/event-stream") {
            // A stream is read up to its first event, then dropped.
            let mut body = resp.into_body();
            let mut text = String::new();
            while !text.contains("\n\n") {
                let frame = tokio::time::timeout(
                    HANG_GUARD,
                    std::future::poll_fn(|cx| {
                        axum::body::HttpBody::poll_frame(std::pin::Pin::new(&mut body), cx)
                    }),
                )
                .await
                .expect("an event within the hang guard")
                .expect("the stream goes on until its first event")
                .expect("a readable frame");
                if let Ok(data) = frame.into_data() {
                    text.push_str(std::str::from_utf8(&data).expect("UTF-8"));
                }
            }
            text
        } else {
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22).await.expect("the body");
            String::from_utf8(bytes.to_vec()).expect("UTF-8")
        };
        Page { status, location, content_type, text }
    }

    /// `GET path` as `browser`, which must answer 200.
    pub async fn view(&self, browser: &Browser, path: &str) -> Page {
        let p = self.page("GET", path, Some(browser), None).await;
        assert_eq!(p.status, StatusCode::OK, "GET {path}: {}", p.text);
        p
    }

    /// Asks for `path` as `browser` until its page satisfies `ready`.
    pub async fn view_until(&self, browser: &Browser, path: &str, ready: impl Fn(&str) -> bool) -> Page {
        let found = tokio::time::timeout(HANG_GUARD, async {
            loop {
                let p = self.page("GET", path, Some(browser), None).await;
                if ready(&p.text) {
                    return p;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("{path} did not show what was expected within {HANG_GUARD:?}"))
    }
}

/// A form body: the browser's CSRF token and `fields`, URL-encoded.
pub fn form(browser: &Browser, fields: &[(&str, &str)]) -> String {
    let mut pairs = vec![("csrf_token".to_owned(), browser.csrf.clone())];
    pairs.extend(fields.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}

/// Percent-encodes everything but unreserved characters.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `card` value (`<agent>|<reader>`) a page's form offers for `reader`.
pub fn card_value(text: &str, reader: &str) -> String {
    let end = format!("|{reader}\"");
    let at = text.find(&end).unwrap_or_else(|| panic!("no card in {reader} on the page: {text}"));
    let start = text[..at].rfind("value=\"").expect("a value attribute") + "value=\"".len();
    format!("{}|{reader}", &text[start..at])
}

/// The job a `/portal/jobs/{id}` redirect names.
pub fn job_of(location: &str) -> JobId {
    location.strip_prefix("/portal/jobs/").expect("a job page").parse().expect("a job id")
}
