//! *Change PIN* and *Unlock PIN* for a card the user holds, through the agent link: the page
//! finds **that** card (the device's recorded serial among the cards the user's own online agents
//! report), and **Start** begins the job (`change_pin`, or `unlock` with the sealed PUK) and its
//! card session on that agent and reader with the PINs to come from the job's page
//! ([`super::job`]), as *Add Device* does.
//!
//! `/portal/devices/{id}/change-pin` and `/portal/devices/{id}/unlock-pin`, each with
//! `…/refresh` (ask the agents to report again) and `…/start`.

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use lanyard_core::authz::TicketPurpose;
use lanyard_core::ids::{AgentId, DeviceId};
use lanyard_core::lifecycle::DeviceState;
use lanyard_core::model::{Agent, Device, DeviceClass};
use lanyard_core::repo::Repo;
use lanyard_protocol::link::FEATURE_SERVER_PIN;

use super::add_device::{Seen, ask_to_report, seen};
use super::session::CsrfForm;
use super::{Nav, PortalError, SignedIn, render};
use crate::AppState;
use crate::link::LinkSnapshot;

/// The two PIN actions of a device's page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PinAction {
    Change,
    Unlock,
}

impl PinAction {
    /// The action's path segment below the device.
    pub(crate) fn slug(self) -> &'static str {
        match self {
            PinAction::Change => "change-pin",
            PinAction::Unlock => "unlock-pin",
        }
    }

    pub(crate) fn title(self) -> &'static str {
        match self {
            PinAction::Change => "Change PIN",
            PinAction::Unlock => "Unlock PIN",
        }
    }
}

/// Why `action` is not open for `device` now (`None`: it is). The device page shows the
/// reason beside the disabled action, and **Start** refuses with it.
pub(crate) fn refusal(device: &Device, action: PinAction) -> Option<String> {
    if device.class() != DeviceClass::Token {
        return Some("a mobile device has no card PIN that Lanyard manages".into());
    }
    if device.card_guid.is_none() {
        return Some(
            "this card was not issued by Lanyard, so the portal cannot recognise it; ask an operator".into(),
        );
    }
    match device.state {
        DeviceState::Active => None,
        DeviceState::Pending => Some(
            "the device is pending: an operator activates it after checking who you are and hands you \
             the initial PIN; after that you can change it here"
                .into(),
        ),
        DeviceState::Suspended => {
            Some("the device is suspended; an operator must resume it before its PIN is touched".into())
        }
        DeviceState::Issuing => Some("the device is still being issued".into()),
        other => Some(format!(
            "the device is {}; its PIN can no longer be {}",
            super::devices::device_badge(other).label.to_lowercase(),
            if action == PinAction::Change { "changed" } else { "unlocked" }
        )),
    }
}

/// The device's card as the user's online agents report it.
pub(crate) struct Found {
    pub agent: AgentId,
    pub host: String,
    pub reader: String,
    pub serial: String,
    /// Why the card cannot be used there now (a session runs on it; the agent cannot take PINs
    /// typed in the portal).
    pub blocked: Option<String>,
}

/// Where the user is, decided by what their agents report now.
pub(crate) enum Stage {
    Refused(String),
    /// No paired agent.
    Pair,
    /// Paired agents, none connected.
    Offline,
    /// Agents online; the card is not in any of their readers.
    Insert,
    Found(Found),
}

/// The reader of one of `online` (the user's own agents) that holds the card with `serial`.
fn find(online: &[(Agent, LinkSnapshot)], serial: &str) -> Option<Found> {
    online.iter().find_map(|(agent, snapshot)| {
        let reader =
            snapshot.readers.iter().flatten().find(|r| {
                r.card_present && r.card.as_ref().and_then(|c| c.serial.as_deref()) == Some(serial)
            })?;
        let blocked = if reader.card.as_ref().is_some_and(|c| c.busy) {
            Some("a card session is running on this card; wait until it ends, then choose Refresh".to_owned())
        } else if !snapshot.features.iter().any(|f| f == FEATURE_SERVER_PIN) {
            Some(format!(
                "the agent on {} ({}) cannot take PINs typed in the portal; update it and start it again",
                agent.host_name, snapshot.agent
            ))
        } else {
            None
        };
        Some(Found {
            agent: agent.id,
            host: agent.host_name.clone(),
            reader: reader.name.clone(),
            serial: serial.to_owned(),
            blocked,
        })
    })
}

fn stage(device: &Device, action: PinAction, seen: &Seen) -> Stage {
    if let Some(why) = refusal(device, action) {
        return Stage::Refused(why);
    }
    let Some(serial) = device.serial.as_deref() else {
        return Stage::Refused(
            "the device has no recorded serial, so the portal cannot find its card; ask an operator".into(),
        );
    };
    if seen.paired == 0 {
        return Stage::Pair;
    }
    if seen.online.is_empty() {
        return Stage::Offline;
    }
    find(&seen.online, serial).map_or(Stage::Insert, Stage::Found)
}

#[derive(Template)]
#[template(path = "portal/pin_card.html")]
struct PinCardPage {
    nav: Option<Nav>,
    section: &'static str,
    title: &'static str,
    slug: &'static str,
    change: bool,
    device_id: String,
    model: String,
    serial: String,
    stage: Stage,
    online_hosts: Vec<String>,
    csrf_token: String,
    notice: Option<String>,
    /// A PIN session on this device that has not ended, which keeps the card busy.
    open_session: Option<String>,
}

fn device_id(raw: &str) -> Result<DeviceId, PortalError> {
    // A malformed id names no device of anyone's: the same 404.
    raw.parse().map_err(|_| PortalError::not_found())
}

async fn card_page<R: Repo + 'static>(
    s: &AppState<R>,
    signed: &SignedIn,
    id: &str,
    action: PinAction,
    notice: Option<String>,
    status: StatusCode,
) -> Result<Response, PortalError> {
    let me = signed.principal().self_service()?;
    // Another user's device is the same 404 as a missing one.
    let device = me.device(s.repo.as_ref(), device_id(id)?).await?;
    let seen = seen(s, signed.principal()).await?;
    let page = PinCardPage {
        nav: signed.nav(),
        section: "devices",
        title: action.title(),
        slug: action.slug(),
        change: action == PinAction::Change,
        device_id: device.id.to_string(),
        model: device.model.clone(),
        serial: device.serial.clone().unwrap_or_else(|| "—".into()),
        stage: stage(&device, action, &seen),
        online_hosts: seen.online.iter().map(|(a, _)| a.host_name.clone()).collect(),
        csrf_token: signed.session.csrf_token.clone(),
        notice,
        open_session: super::devices::open_pin_session(&me, s.repo.as_ref(), &device, s.clock.now()).await?,
    };
    Ok(render(status, &page))
}

async fn show<R: Repo + 'static>(
    s: AppState<R>,
    signed: SignedIn,
    id: String,
    action: PinAction,
) -> Result<Response, PortalError> {
    let nav = signed.nav();
    card_page(&s, &signed, &id, action, None, StatusCode::OK).await.map_err(|e| e.with_nav(nav))
}

async fn refresh<R: Repo + 'static>(
    s: AppState<R>,
    signed: SignedIn,
    id: String,
    form: CsrfForm,
    action: PinAction,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let nav = signed.nav();
    let inner = async {
        let me = signed.principal().self_service()?;
        let device = me.device(s.repo.as_ref(), device_id(&id)?).await?;
        ask_to_report(&s, &seen(&s, signed.principal()).await?.online).await;
        Ok::<_, PortalError>(
            Redirect::to(&format!("/portal/devices/{}/{}", device.id, action.slug())).into_response(),
        )
    };
    inner.await.map_err(|e| e.with_nav(nav))
}

/// **Start**: the device's card must still be where the page found it. The job is created
/// (audited `job.create`), its ticket goes to that agent for that reader, and the job's page
/// takes over; a session that cannot start is explained there.
async fn start<R: Repo + 'static>(
    s: AppState<R>,
    signed: SignedIn,
    id: String,
    form: CsrfForm,
    action: PinAction,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let nav = signed.nav();
    let inner = async {
        let me = signed.principal().self_service()?;
        let repo = s.repo.as_ref();
        let device = me.device(repo, device_id(&id)?).await?;
        let seen = seen(&s, signed.principal()).await?;
        let found = match stage(&device, action, &seen) {
            Stage::Found(found) if found.blocked.is_none() => found,
            Stage::Found(Found { blocked: Some(why), .. }) | Stage::Refused(why) => {
                let message = format!("{} cannot start: {why}.", action.title());
                return card_page(&s, &signed, &id, action, Some(message), StatusCode::CONFLICT).await;
            }
            _ => {
                let message = format!(
                    "The card (serial {}) is not in a reader of a workstation whose agent is running; \
                     insert it and choose Refresh.",
                    device.serial.as_deref().unwrap_or("—")
                );
                return card_page(&s, &signed, &id, action, Some(message), StatusCode::CONFLICT).await;
            }
        };
        crate::issuance::config(&s)?;
        let ttl = crate::issuance::TICKET_TTL;
        let (job, _ticket) = match action {
            PinAction::Change => me.start_change_pin(repo, device.id, ttl).await?,
            PinAction::Unlock => me.start_unlock(repo, device.id, ttl).await?,
        };
        let started = crate::link::start_session(
            &s,
            signed.principal(),
            found.agent,
            job.id,
            &found.reader,
            TicketPurpose::Run,
            true,
        )
        .await;
        match started {
            Ok(_) => Ok(Redirect::to(&format!("/portal/jobs/{}", job.id)).into_response()),
            Err(e) => {
                let message = e.message().to_owned();
                super::job::job_page(&s, &signed, job.id, Some(message), StatusCode::CONFLICT).await
            }
        }
    };
    inner.await.map_err(|e: PortalError| e.with_nav(nav))
}

/// `GET /portal/devices/{id}/change-pin`.
pub(crate) async fn change<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
) -> Result<Response, PortalError> {
    show(s, signed, id, PinAction::Change).await
}

/// `POST /portal/devices/{id}/change-pin/refresh`.
pub(crate) async fn change_refresh<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PortalError> {
    refresh(s, signed, id, form, PinAction::Change).await
}

/// `POST /portal/devices/{id}/change-pin/start`.
pub(crate) async fn change_start<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PortalError> {
    start(s, signed, id, form, PinAction::Change).await
}

/// `GET /portal/devices/{id}/unlock-pin`.
pub(crate) async fn unlock<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
) -> Result<Response, PortalError> {
    show(s, signed, id, PinAction::Unlock).await
}

/// `POST /portal/devices/{id}/unlock-pin/refresh`.
pub(crate) async fn unlock_refresh<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PortalError> {
    refresh(s, signed, id, form, PinAction::Unlock).await
}

/// `POST /portal/devices/{id}/unlock-pin/start`.
pub(crate) async fn unlock_start<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PortalError> {
    start(s, signed, id, form, PinAction::Unlock).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_core::model::DeviceKind;
    use lanyard_protocol::link::{CardReport, ReaderReport, Verdict};
    use time::OffsetDateTime;

    fn issued(state: DeviceState) -> Device {
        let mut d = Device::new(DeviceKind::UsbKey, "YubiKey 5", OffsetDateTime::UNIX_EPOCH).unwrap();
        d.state = state;
        d.card_guid = Some([1; 16]);
        d.serial = Some("12345678".into());
        d
    }

    #[test]
    fn only_an_active_lanyard_card_offers_its_pin_actions() {
        for action in [PinAction::Change, PinAction::Unlock] {
            assert_eq!(refusal(&issued(DeviceState::Active), action), None);
            for (state, why) in [
                (DeviceState::Pending, "pending"),
                (DeviceState::Suspended, "suspended"),
                (DeviceState::Issuing, "still being issued"),
                (DeviceState::Revoked, "no longer"),
            ] {
                let said = refusal(&issued(state), action).unwrap();
                assert!(said.contains(why), "{state}: {said}");
            }
            let mut foreign = issued(DeviceState::Active);
            foreign.card_guid = None;
            assert!(refusal(&foreign, action).unwrap().contains("not issued by Lanyard"));
        }
    }

    fn snapshot(features: &[&str], readers: Vec<ReaderReport>) -> LinkSnapshot {
        LinkSnapshot {
            agent: "lanyard 0.1".into(),
            host: "ws".into(),
            features: features.iter().map(|f| (*f).to_owned()).collect(),
            connected_at: OffsetDateTime::UNIX_EPOCH,
            readers: Some(readers),
            reported_at: Some(OffsetDateTime::UNIX_EPOCH),
        }
    }

    fn reader(name: &str, serial: &str, busy: bool) -> ReaderReport {
        ReaderReport {
            name: name.into(),
            card_present: true,
            atr: String::new(),
            card: Some(CardReport {
                model: Some("YubiKey 5".into()),
                serial: Some(serial.into()),
                verdict: Verdict::AlreadyIssued,
                reason: None,
                busy,
            }),
        }
    }

    #[test]
    fn the_card_is_found_by_its_serial_and_a_busy_card_or_old_agent_is_named() {
        let agent = |host: &str| {
            Agent::pair(lanyard_core::ids::UserId::new(), host, OffsetDateTime::UNIX_EPOCH).unwrap().0
        };
        let online = vec![
            (agent("a"), snapshot(&[FEATURE_SERVER_PIN], vec![reader("r0", "111", false)])),
            (agent("b"), snapshot(&[FEATURE_SERVER_PIN], vec![reader("r1", "222", false)])),
        ];
        let found = find(&online, "222").unwrap();
        assert_eq!((found.host.as_str(), found.reader.as_str(), found.blocked), ("b", "r1", None));
        assert!(find(&online, "333").is_none());
        let busy = vec![(agent("a"), snapshot(&[FEATURE_SERVER_PIN], vec![reader("r0", "111", true)]))];
        assert!(find(&busy, "111").unwrap().blocked.unwrap().contains("session is running"));
        let old = vec![(agent("a"), snapshot(&[], vec![reader("r0", "111", false)]))];
        assert!(find(&old, "111").unwrap().blocked.unwrap().contains("cannot take PINs typed in the portal"));
    }
}
