//! *My Devices* and one device (*Add Device* is [`super::add_device`]). Every read goes through the signed-in user's
//! [`SelfService`](lanyard_core::authz::SelfService) view, so another user's device is the same
//! 404 as a device that does not exist.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use lanyard_core::DomainError;
use lanyard_core::authz::SelfService;
use lanyard_core::ids::DeviceId;
use lanyard_core::lifecycle::{CredentialState, DeviceState};
use lanyard_core::model::{CertSlot, Credential, CredentialKind, Device, DeviceKind, JobKind, JobState};
use lanyard_core::repo::Repo;

use super::{Nav, PortalError, SignedIn, render, when};
use crate::AppState;

/// A state as the page shows it: the word, and the badge style that repeats it.
pub(crate) struct Badge {
    pub label: &'static str,
    pub tone: &'static str,
}

pub(crate) fn device_badge(state: DeviceState) -> Badge {
    let (label, tone) = match state {
        DeviceState::Active => ("Active", "ok"),
        DeviceState::Pending => ("Pending", "wait"),
        DeviceState::Issuing => ("Issuing", "wait"),
        DeviceState::Enrolling => ("Enrolling", "wait"),
        DeviceState::Suspended => ("Suspended", "stop"),
        DeviceState::Revoked => ("Revoked", "stop"),
        DeviceState::Failed => ("Failed", "stop"),
        DeviceState::Terminated => ("Terminated", "idle"),
        DeviceState::Available => ("Available", "idle"),
        DeviceState::Deleted => ("Deleted", "idle"),
    };
    Badge { label, tone }
}

fn credential_badge(state: CredentialState) -> Badge {
    let (label, tone) = match state {
        CredentialState::Active => ("Valid", "ok"),
        CredentialState::Pending => ("Not yet active", "wait"),
        CredentialState::OnHold => ("On hold", "stop"),
        CredentialState::Revoked => ("Revoked", "stop"),
        CredentialState::Expired => ("Expired", "idle"),
        CredentialState::Superseded => ("Replaced", "idle"),
    };
    Badge { label, tone }
}

/// What a device's state means for its holder, in a sentence.
fn state_explained(state: DeviceState) -> &'static str {
    match state {
        DeviceState::Active => "Ready to use.",
        DeviceState::Pending => {
            "Issued, but the initial PIN has not been changed yet; an operator can activate it."
        }
        DeviceState::Issuing => {
            "Being personalised. If the session stopped, it can be resumed or rolled back."
        }
        DeviceState::Enrolling => "The phone is enrolling itself.",
        DeviceState::Suspended => "Temporarily blocked by an operator; its certificates are on hold.",
        DeviceState::Revoked => "Permanently blocked; its certificates are revoked.",
        DeviceState::Failed => "Issuance failed and was rolled back. An operator can wipe or recycle it.",
        DeviceState::Terminated => "Retired.",
        DeviceState::Available => "In stock.",
        DeviceState::Deleted => "Removed.",
    }
}

fn kind_label(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::SmartCard => "Smart card",
        DeviceKind::UsbKey => "USB key",
        DeviceKind::Mobile => "Mobile",
    }
}

fn slot_label(slot: CertSlot) -> &'static str {
    match slot {
        CertSlot::PivAuthentication => "9A PIV Authentication",
        CertSlot::DigitalSignature => "9C Digital Signature",
        CertSlot::KeyManagement => "9D Key Management",
        CertSlot::CardAuthentication => "9E Card Authentication",
        CertSlot::DerivedPivAuthentication => "Derived PIV Authentication",
        CertSlot::MobileDevice => "Mobile device",
    }
}

/// One certificate row.
pub(crate) struct CertRow {
    pub slot: &'static str,
    pub profile: String,
    pub expires: String,
    pub serial: String,
    pub badge: Badge,
}

/// One device as the pages show it.
pub(crate) struct DeviceView {
    pub id: String,
    pub kind: &'static str,
    pub model: String,
    pub serial: String,
    pub badge: Badge,
    pub explained: &'static str,
    pub added: String,
    pub card_expires: Option<String>,
    pub certificates: Vec<CertRow>,
    /// While the device is being issued: its issuance session's page, to follow, resume or undo.
    pub session: Option<String>,
    /// For a derived PIV credential: the card that sponsored it (linked `derived_from`).
    pub parent: Option<ParentView>,
    /// For a smart card or USB key on My Devices: its passkeys in a few words.
    pub passkeys: Option<String>,
}

/// The sponsor card of a derived credential, as the holder's pages name it.
pub(crate) struct ParentView {
    pub id: String,
    pub label: String,
}

impl DeviceView {
    /// Names the card `d` was derived from, among `mine` (the holder's devices).
    pub(crate) fn with_parent(mut self, d: &Device, mine: &[Device]) -> Self {
        self.parent = d.linked(lanyard_core::model::LinkKind::DerivedFrom).next().map(|card| ParentView {
            id: card.to_string(),
            label: match mine.iter().find(|m| m.id == card) {
                Some(m) => format!("{}, serial {}", m.model, m.serial.as_deref().unwrap_or("—")),
                None => format!("card {card}"),
            },
        });
        self
    }
}

impl DeviceView {
    pub(crate) fn new(d: &Device, credentials: &[Credential]) -> Self {
        let certificates = credentials
            .iter()
            .map(|c| {
                let CredentialKind::Certificate { slot, profile, serial_hex, not_after, .. } = &c.kind;
                CertRow {
                    slot: slot_label(*slot),
                    profile: profile.clone(),
                    expires: when(*not_after),
                    serial: serial_hex.clone(),
                    badge: credential_badge(c.state),
                }
            })
            .collect();
        Self {
            id: d.id.to_string(),
            kind: kind_label(d.kind),
            model: d.model.clone(),
            serial: d.serial.clone().unwrap_or_else(|| "—".into()),
            badge: device_badge(d.state),
            explained: state_explained(d.state),
            added: when(d.created_at),
            card_expires: d.card_expires_at.map(when),
            certificates,
            session: None,
            parent: None,
            passkeys: None,
        }
    }
}

/// The page of the issuance session a device in *Issuing* is in (the latest unfinished one).
async fn issuing_session<R: Repo>(
    me: &SelfService<'_>,
    repo: &R,
    d: &Device,
) -> Result<Option<String>, PortalError> {
    if d.state != DeviceState::Issuing {
        return Ok(None);
    }
    let jobs = me.device_jobs(repo, d.id).await?;
    Ok(jobs
        .iter()
        .filter(|j| j.kind == JobKind::Issuance && !j.state.is_finished())
        .max_by_key(|j| j.created_at)
        .map(|j| format!("/portal/jobs/{}", j.id)))
}

/// The page of the device's latest PIN session that has not ended: running, or created with a
/// ticket that can still start it. (A failed PIN session has ended: it is not resumed.)
pub(crate) async fn open_pin_session<R: Repo>(
    me: &SelfService<'_>,
    repo: &R,
    d: &Device,
    now: time::OffsetDateTime,
) -> Result<Option<String>, PortalError> {
    let jobs = me.device_jobs(repo, d.id).await?;
    Ok(jobs
        .iter()
        .filter(|j| matches!(j.kind, JobKind::ChangePin | JobKind::Unlock))
        .filter(|j| match j.state {
            JobState::Running => true,
            JobState::Created => j.ticket_expires_at.is_some_and(|t| t > now),
            _ => false,
        })
        .max_by_key(|j| j.created_at)
        .map(|j| format!("/portal/jobs/{}", j.id)))
}

/// Whether *Add Device* is open to the user, and why not: the policy check the issuance route
/// makes ([`SelfService::may_add_device`]), asked ahead.
pub(crate) async fn add_device_refusal<R: Repo>(
    me: &SelfService<'_>,
    repo: &R,
) -> Result<Option<String>, PortalError> {
    match me.may_add_device(repo).await {
        Ok(()) => Ok(None),
        Err(DomainError::PolicyDenied(why)) => Ok(Some(why.to_string())),
        Err(e) => Err(e.into()),
    }
}

#[derive(Template)]
#[template(path = "portal/devices.html")]
struct DevicesPage {
    nav: Option<Nav>,
    section: &'static str,
    devices: Vec<DeviceView>,
    add_refused: Option<String>,
    mobile_refused: Option<String>,
    /// Why *Add Identity Device* (a derived PIV credential) is closed by the policy or the
    /// mobile limit; its own page says what else it needs (a sponsor card).
    derived_refused: Option<String>,
}

pub(crate) async fn list<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
) -> Result<Response, PortalError> {
    let nav = signed.nav();
    let inner = async {
        let me = signed.principal().self_service()?;
        let repo = s.repo.as_ref();
        let mut devices = Vec::new();
        let mine = me.devices(repo).await?;
        let passkeys = me.passkeys(repo).await?;
        for d in &mine {
            let credentials = me.credentials(repo, d.id).await?;
            let mut view = DeviceView::new(d, &credentials).with_parent(d, &mine);
            view.session = issuing_session(&me, repo, d).await?;
            view.passkeys = super::passkeys::summary(d, &passkeys);
            devices.push(view);
        }
        let add_refused = add_device_refusal(&me, repo).await?;
        let mobile_refused = super::mobile::add_mobile_refusal(&me, repo).await?;
        let derived_refused =
            super::mobile::mobile_refusal(&me, repo, lanyard_core::model::EnrollmentKind::DerivedPiv).await?;
        Ok::<_, PortalError>(DevicesPage {
            nav: signed.nav(),
            section: "devices",
            devices,
            add_refused,
            mobile_refused,
            derived_refused,
        })
    };
    let page = inner.await.map_err(|e| e.with_nav(nav))?;
    Ok(render(StatusCode::OK, &page))
}

/// A PIN action on a device's page: its link, or why it is not open now.
pub(crate) struct PinActionView {
    pub title: &'static str,
    pub href: String,
    pub refused: Option<String>,
}

#[derive(Template)]
#[template(path = "portal/device.html")]
struct DevicePage {
    nav: Option<Nav>,
    section: &'static str,
    device: DeviceView,
    /// *Change PIN* and *Unlock PIN*; none for a mobile.
    pin_actions: Vec<PinActionView>,
    /// A PIN session on this device that has not ended (its page, to finish or cancel it).
    pin_session: Option<String>,
    /// A mobile the holder may delete (its page asks first).
    deletable: bool,
    /// The key's passkeys and the Register a passkey piece (tokens only).
    passkeys: Option<super::passkeys::PasskeySection>,
}

pub(crate) async fn detail<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, PortalError> {
    let nav = signed.nav();
    let inner = async {
        // A malformed id names no device of anyone's: the same 404.
        let id = id.parse::<DeviceId>().map_err(|_| PortalError::not_found())?;
        let me = signed.principal().self_service()?;
        let repo = s.repo.as_ref();
        let device = me.device(repo, id).await?;
        let credentials = me.credentials(repo, id).await?;
        let mine = me.devices(repo).await?;
        let mut view = DeviceView::new(&device, &credentials).with_parent(&device, &mine);
        view.session = issuing_session(&me, repo, &device).await?;
        let pin_actions = if device.class() == lanyard_core::model::DeviceClass::Token {
            [super::pin::PinAction::Change, super::pin::PinAction::Unlock]
                .into_iter()
                .map(|a| PinActionView {
                    title: a.title(),
                    href: format!("/portal/devices/{}/{}", device.id, a.slug()),
                    refused: super::pin::refusal(&device, a),
                })
                .collect()
        } else {
            Vec::new()
        };
        let pin_session = open_pin_session(&me, repo, &device, s.clock.now()).await?;
        let deletable = device.class() == lanyard_core::model::DeviceClass::Mobile;
        let passkeys = if device.class() == lanyard_core::model::DeviceClass::Token {
            let list = me.passkeys(repo).await?;
            let allowed = me.policy(repo).await?.sign_in.passkeys_allowed();
            let at_rp = crate::api::passkeys::at_relying_party(&s, &headers);
            super::passkeys::for_holder(&device, &list, &signed.session.csrf_token, allowed, at_rp)
        } else {
            None
        };
        Ok::<_, PortalError>(DevicePage {
            passkeys,
            deletable,
            nav: signed.nav(),
            section: "devices",
            device: view,
            pin_actions,
            pin_session,
        })
    };
    let page = inner.await.map_err(|e| e.with_nav(nav))?;
    Ok(render(StatusCode::OK, &page))
}
