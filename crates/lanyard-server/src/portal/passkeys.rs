//! Passkeys in the portal: the section of a device page that lists a key's passkeys (the holder's
//! *My Devices* page and the operator's device page), the *Register a passkey* piece, and removing
//! a passkey. The WebAuthn calls run in the browser (`assets/lanyard-passkeys.js`, a static
//! module under the strict CSP) against the API's passkey routes (`crate::api::passkeys`).
//!
//! # The reusable registration piece
//!
//! A page that offers registering a passkey for a device (My Devices; the issuance page before
//! the device PIN, `portal/job.rs`) needs three things:
//!
//! 1. a field of type [`PasskeyRegisterView`] on its template struct, built with
//!    [`PasskeyRegisterView::new`] (the device id, the session's CSRF token, and what to do when
//!    done), and `{% include "portal/passkey_register.html" %}` with that field in scope as
//!    `register`;
//! 2. the module in its `{% block scripts %}`:
//!    `<script type="module" src="{{ crate::portal::assets::passkeys_script_path() }}"></script>`;
//! 3. nothing else: the module finds `[data-passkey-register]` buttons, calls
//!    `POST /api/v1/me/passkeys/registration-options` and `POST /api/v1/me/passkeys` with the
//!    session's CSRF token, reports progress in the piece's live region, and when done either
//!    reloads the page or fires a `lanyard:passkey-registered` event (detail: the passkey JSON) on
//!    the piece, as the view says.

use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use lanyard_core::authz::PasskeyStatus;
use lanyard_core::ids::PasskeyId;
use lanyard_core::lifecycle::DeviceState;
use lanyard_core::model::{Device, DeviceClass, PasskeyState};
use lanyard_core::repo::Repo;
use serde::Deserialize;

use super::devices::Badge;
use super::{PortalError, SignedIn, when};
use crate::AppState;

/// The *Register a passkey* piece for one device.
#[derive(Clone, Debug)]
pub(crate) struct PasskeyRegisterView {
    pub device: String,
    pub csrf: String,
    /// `true`: reload the page when registered (My Devices). `false`: fire
    /// `lanyard:passkey-registered` and let the page go on (issuance).
    pub reload: bool,
}

impl PasskeyRegisterView {
    pub fn new(device: &Device, csrf: &str, reload: bool) -> Self {
        Self { device: device.id.to_string(), csrf: csrf.to_owned(), reload }
    }
}

/// One passkey as a device page lists it.
pub(crate) struct PasskeyRow {
    pub id: String,
    pub created: String,
    pub last_used: String,
    pub badge: Badge,
    pub explained: String,
    pub removable: bool,
    pub attestation: String,
}

/// The passkeys section of a device page.
pub(crate) struct PasskeySection {
    pub rows: Vec<PasskeyRow>,
    /// The registration piece, when a passkey may be registered here now.
    pub register: Option<PasskeyRegisterView>,
    /// Why not, when it may not (shown instead of the button).
    pub refused: Option<String>,
    pub csrf: String,
    /// Where a removal returns to.
    pub back: String,
}

fn row(s: &PasskeyStatus) -> PasskeyRow {
    let p = &s.passkey;
    let (label, tone, explained) = match (p.state, s.usable) {
        (PasskeyState::Removed, _) => ("Removed", "idle", "It no longer signs in.".to_owned()),
        (PasskeyState::Active, true) => ("Works", "ok", "Signs in to Lanyard.".to_owned()),
        (PasskeyState::Active, false) => (
            "Disabled",
            "stop",
            format!(
                "Its security key is {}; it signs in again only if the key becomes Active.",
                s.device_state
            ),
        ),
    };
    PasskeyRow {
        id: p.id.to_string(),
        created: when(p.created_at),
        last_used: p.last_used_at.map(when).unwrap_or_else(|| "never".into()),
        badge: Badge { label, tone },
        explained,
        removable: p.state == PasskeyState::Active,
        attestation: match p.attestation.as_str() {
            "packed-x5c" => "certificate from the key's maker (not checked against a vendor list)".into(),
            "packed-self" => "self-signed by the passkey".into(),
            _ => "none".into(),
        },
    }
}

/// The section for `device` as its holder sees it; `at_rp`: the page was reached at the relying
/// party's origin (elsewhere the browser could not use the passkey).
pub(crate) fn for_holder(
    device: &Device,
    passkeys: &[PasskeyStatus],
    csrf: &str,
    passkeys_allowed: bool,
    at_rp: bool,
) -> Option<PasskeySection> {
    if device.class() != DeviceClass::Token {
        return None;
    }
    let rows: Vec<PasskeyRow> = passkeys.iter().filter(|p| p.passkey.device == device.id).map(row).collect();
    let refused = if !passkeys_allowed {
        Some("your group's policy does not allow passkeys".to_owned())
    } else if device.state != DeviceState::Active {
        Some(format!("this key is {}; passkeys are registered on Active keys only", device.state))
    } else if !at_rp {
        Some(
            "open Lanyard at its public address to use passkeys (browsers bind a passkey to the site's name)"
                .into(),
        )
    } else {
        None
    };
    let register = refused.is_none().then(|| PasskeyRegisterView::new(device, csrf, true));
    Some(PasskeySection {
        rows,
        register,
        refused,
        csrf: csrf.to_owned(),
        back: format!("/portal/devices/{}", device.id),
    })
}

/// The section for `device` as an operator sees it (no registration: the holder does that).
pub(crate) fn for_operator(
    device: &Device,
    passkeys: &[PasskeyStatus],
    csrf: &str,
) -> Option<PasskeySection> {
    if device.class() != DeviceClass::Token {
        return None;
    }
    Some(PasskeySection {
        rows: passkeys.iter().map(row).collect(),
        register: None,
        refused: None,
        csrf: csrf.to_owned(),
        back: format!("/portal/operator/devices/{}", device.id),
    })
}

/// A token's passkeys in a few words, for My Devices (none for mobiles).
pub(crate) fn summary(device: &Device, passkeys: &[PasskeyStatus]) -> Option<String> {
    if device.class() != DeviceClass::Token {
        return None;
    }
    let on: Vec<&PasskeyStatus> = passkeys
        .iter()
        .filter(|p| p.passkey.device == device.id && p.passkey.state == PasskeyState::Active)
        .collect();
    let working = on.iter().filter(|p| p.usable).count();
    Some(match (on.len(), working) {
        (0, _) if device.state == DeviceState::Active => {
            "None yet: register one to sign in with this key.".into()
        }
        (0, _) => "None.".into(),
        (n, w) if w == n => format!("{n} registered, signing in."),
        (n, _) => format!("{n} registered, disabled while the key is {}.", device.state),
    })
}

/// One passkey on the help desk's page of a user.
pub(crate) struct UserPasskeyRow {
    pub id: String,
    pub device: String,
    pub badge: Badge,
    pub last_used: String,
}

pub(crate) fn user_rows(passkeys: &[PasskeyStatus]) -> Vec<UserPasskeyRow> {
    passkeys
        .iter()
        .map(|s| {
            let r = row(s);
            UserPasskeyRow {
                id: r.id,
                device: s.passkey.device.to_string(),
                badge: r.badge,
                last_used: r.last_used,
            }
        })
        .collect()
}

#[derive(Deserialize)]
pub(crate) struct RemoveForm {
    #[serde(default)]
    csrf_token: Option<String>,
    #[serde(default)]
    back: String,
}

/// Removes a passkey: its holder, or an operator. Back to the page the form came from (a device
/// page of the portal, nothing else).
pub(crate) async fn remove<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<RemoveForm>,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let nav = signed.nav();
    let id = id.parse::<PasskeyId>().map_err(|_| PortalError::not_found().with_nav(nav.clone()))?;
    crate::api::passkeys::remove(&s, signed.principal(), id)
        .await
        .map_err(|e| PortalError::from(e).with_nav(nav))?;
    let back = if (form.back.starts_with("/portal/devices/")
        || form.back.starts_with("/portal/operator/devices/"))
        && form.back.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-".contains(&b))
    {
        form.back
    } else {
        "/portal/devices".to_owned()
    };
    Ok(Redirect::to(&back).into_response())
}
