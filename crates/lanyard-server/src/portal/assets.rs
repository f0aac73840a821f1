//! The portal's static files, built into the binary so an air-gapped server needs nothing else:
//! htmx (vendored from npm, its version in the path), Lanyard's stylesheet and icon (their
//! content hash in the path). Both are cached for a year and never change under the same name.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::PortalError;

/// Where htmx is served; the version is part of the name, so a new release is a new URL.
pub(crate) const HTMX_PATH: &str = "/portal/assets/htmx-2.0.11.min.js";
const HTMX: &[u8] = include_bytes!("../../assets/htmx-2.0.11.min.js");
const CSS: &[u8] = include_bytes!("../../assets/lanyard.css");
const ICON: &[u8] = include_bytes!("../../assets/lanyard-icon.svg");
const JOB_JS: &[u8] = include_bytes!("../../assets/lanyard-job.js");
const PASSKEYS_JS: &[u8] = include_bytes!("../../assets/lanyard-passkeys.js");
const FOREVER: &str = "public, max-age=31536000, immutable";

/// `<stem>-<first 16 hex digits of the content's SHA-256>.<extension>`.
fn hashed(stem: &str, content: &[u8], extension: &str) -> String {
    let digest = Sha256::digest(content);
    format!("{stem}-{}.{extension}", hex::encode(&digest[..8]))
}

static CSS_NAME: LazyLock<String> = LazyLock::new(|| hashed("lanyard", CSS, "css"));
static ICON_NAME: LazyLock<String> = LazyLock::new(|| hashed("lanyard-icon", ICON, "svg"));
static JOB_JS_NAME: LazyLock<String> = LazyLock::new(|| hashed("lanyard-job", JOB_JS, "js"));
static PASSKEYS_JS_NAME: LazyLock<String> = LazyLock::new(|| hashed("lanyard-passkeys", PASSKEYS_JS, "js"));

/// The stylesheet's current URL, for the pages' `<link>`.
pub(crate) fn stylesheet_path() -> String {
    format!("/portal/assets/{}", *CSS_NAME)
}

/// The icon's current URL (without one, browsers ask for `/favicon.ico` and log its 404).
pub(crate) fn icon_path() -> String {
    format!("/portal/assets/{}", *ICON_NAME)
}

/// The card session page's script (progress over server-sent events, the PIN rules).
pub(crate) fn job_script_path() -> String {
    format!("/portal/assets/{}", *JOB_JS_NAME)
}

/// The passkey module (sign-in and the Register a passkey piece), loaded as `type="module"`.
pub(crate) fn passkeys_script_path() -> String {
    format!("/portal/assets/{}", *PASSKEYS_JS_NAME)
}

fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    let mut resp = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(FOREVER));
    resp
}

pub(crate) async fn htmx() -> Response {
    asset("text/javascript; charset=utf-8", HTMX)
}

/// The stylesheet or the icon, under its current hashed name; any other name is a 404.
pub(crate) async fn by_name(Path(name): Path<String>) -> Response {
    if name == *CSS_NAME {
        asset("text/css; charset=utf-8", CSS)
    } else if name == *ICON_NAME {
        asset("image/svg+xml", ICON)
    } else if name == *JOB_JS_NAME {
        asset("text/javascript; charset=utf-8", JOB_JS)
    } else if name == *PASSKEYS_JS_NAME {
        asset("text/javascript; charset=utf-8", PASSKEYS_JS)
    } else {
        PortalError::not_found().into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stylesheet_name_follows_its_content() {
        assert!(stylesheet_path().starts_with("/portal/assets/lanyard-"));
        assert_eq!(CSS_NAME.len(), "lanyard-".len() + 16 + ".css".len());
        assert!(icon_path().starts_with("/portal/assets/lanyard-icon-") && icon_path().ends_with(".svg"));
    }

    #[test]
    fn htmx_is_vendored_with_its_licence() {
        let text = std::str::from_utf8(HTMX).unwrap_or("");
        assert!(text.starts_with("/*! htmx.org 2.0.11"), "the licence header leads the file");
        assert!(text.contains("Zero-Clause BSD"));
        assert!(text.contains("version:\"2.0.11\""), "the file is the release its name says");
    }
}
