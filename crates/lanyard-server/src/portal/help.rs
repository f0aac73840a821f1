//! *Troubleshooting*: open to everyone, signed in or not (someone who cannot sign in needs it
//! most).

use askama::Template;
use axum::http::StatusCode;
use axum::response::Response;

use super::{Nav, Viewer, render};

#[derive(Template)]
#[template(path = "portal/help.html")]
struct HelpPage {
    nav: Option<Nav>,
    section: &'static str,
}

pub(crate) async fn troubleshooting(viewer: Viewer) -> Response {
    render(StatusCode::OK, &HelpPage { nav: viewer.nav(), section: "help" })
}
