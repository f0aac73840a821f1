//! `GET /m/{code}`: where a browser lands when someone opens an app enrolment link (or scans its
//! QR code with the camera). The page says to open the link with a Lanyard app or the reference
//! client; it redeems nothing and does not even look the code up, so it reveals nothing about it
//! and costs the link nothing.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lanyard_core::repo::Repo;
use lanyard_protocol::mobile::{LINK_PREFIX, check_code};

use super::{Nav, PortalError, render};
use crate::AppState;

#[derive(Template)]
#[template(path = "portal/mobile_link.html")]
struct MobileLinkPage {
    nav: Option<Nav>,
    section: &'static str,
    link: String,
}

pub(crate) async fn page<R: Repo>(State(s): State<AppState<R>>, Path(code): Path<String>) -> Response {
    let Ok(code) = check_code(&code) else {
        return PortalError::not_found().into_response();
    };
    let base = s.public_url.as_deref().unwrap_or("");
    let link = format!("{base}{LINK_PREFIX}{code}");
    let mut resp = render(StatusCode::OK, &MobileLinkPage { nav: None, section: "", link });
    // The URL holds a one-time code: keep it out of any Referer header.
    resp.headers_mut()
        .insert(axum::http::header::REFERRER_POLICY, axum::http::HeaderValue::from_static("no-referrer"));
    resp
}
