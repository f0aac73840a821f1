//! *Add Device* through the agent link: the user's online agents report their readers, the
//! user picks a compatible card, the portal begins issuance (the domain call behind
//! `POST /api/v1/issuance`) and starts the card session on that agent and reader with the new
//! PIN to come from the browser ([`crate::link::start_session`], as
//! `POST /api/v1/agents/{id}/sessions` with `new_pin_from: portal`). The job's page
//! ([`super::job`]) follows the session, asks for the new PIN, and offers resume or rollback
//! after a failure.
//!
//! Every step has its own URL and reads the world afresh, so reload and back show the present:
//! `/portal/devices/new` (agents, then cards), `/portal/jobs/{id}` (progress, PIN, result).

use std::time::Duration;

use askama::Template;
use axum::Form;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use lanyard_core::authz::{CardInfo, Principal, TicketPurpose};
use lanyard_core::ids::AgentId;
use lanyard_core::model::{Agent, DeviceKind};
use lanyard_core::repo::Repo;
use lanyard_protocol::link::{ReaderReport, ServerLinkFrame, Verdict};
use serde::Deserialize;

use super::devices::add_device_refusal;
use super::session::CsrfForm;
use super::{Nav, PortalError, SignedIn, render};
use crate::link::LinkSnapshot;
use crate::{ApiError, AppState};

/// How long *Refresh* waits for the agents' new reports before showing what is known.
const REFRESH_WAIT: Duration = Duration::from_secs(3);

/// A card the user can issue now: in a reader of one of their online agents, compatible and
/// not issued yet, with its model known, and no session running on it.
pub(crate) struct Candidate {
    pub agent: String,
    pub host: String,
    pub reader: String,
    pub model: String,
    pub serial: String,
}

/// A reader with a card that cannot be issued, and why.
pub(crate) struct Unusable {
    pub host: String,
    pub reader: String,
    pub why: String,
}

/// The signed-in person's agents as their links report them now.
pub(crate) struct Seen {
    pub paired: usize,
    pub online: Vec<(Agent, LinkSnapshot)>,
}

/// `who`'s own agents (never anyone else's, whatever their roles) and which are online.
pub(crate) async fn seen<R: Repo>(s: &AppState<R>, who: &Principal) -> Result<Seen, PortalError> {
    let agents = who.workstations()?.agents(s.repo.as_ref()).await?;
    let agents: Vec<Agent> = agents.into_iter().filter(|a| a.revoked_at.is_none()).collect();
    let paired = agents.len();
    let mut online = Vec::new();
    for a in agents {
        if let Some((user, snapshot)) = crate::link::status_anywhere(s, a.id).await
            && user == a.user
        {
            online.push((a, snapshot));
        }
    }
    Ok(Seen { paired, online })
}

pub(crate) fn why_unusable(r: &ReaderReport) -> Option<String> {
    let card = r.card.as_ref()?;
    if card.busy {
        return Some("a card session is running on this card".into());
    }
    let reason = card.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
    match card.verdict {
        Verdict::Compatible if card.model.is_none() => Some("the card's model could not be read".into()),
        Verdict::Compatible => None,
        Verdict::AlreadyIssued => Some("this card has been issued already".into()),
        Verdict::Unsupported => Some(format!("Lanyard cannot issue this card{reason}")),
        Verdict::Unreadable => Some(format!("the card could not be read{reason}")),
    }
}

pub(crate) fn cards(online: &[(Agent, LinkSnapshot)]) -> (Vec<Candidate>, Vec<Unusable>) {
    let mut candidates = Vec::new();
    let mut unusable = Vec::new();
    for (agent, snapshot) in online {
        for r in snapshot.readers.iter().flatten().filter(|r| r.card_present) {
            match (why_unusable(r), r.card.as_ref()) {
                (None, Some(card)) => candidates.push(Candidate {
                    agent: agent.id.to_string(),
                    host: agent.host_name.clone(),
                    reader: r.name.clone(),
                    model: card.model.clone().unwrap_or_default(),
                    serial: card.serial.clone().unwrap_or_else(|| "—".into()),
                }),
                (why, _) => unusable.push(Unusable {
                    host: agent.host_name.clone(),
                    reader: r.name.clone(),
                    why: why.unwrap_or_else(|| "the agent has not identified the card yet".into()),
                }),
            }
        }
    }
    (candidates, unusable)
}

/// Where the user is in *Add Device*, decided by what their agents report now.
pub(crate) enum Stage {
    /// The policy does not allow another device.
    Refused(String),
    /// No paired agent.
    Pair,
    /// Paired agents, none connected.
    Offline,
    /// Agents online, no card to issue.
    Insert,
    /// One or more cards to choose from.
    Choose,
}

#[derive(Template)]
#[template(path = "portal/add_device.html")]
struct AddDevicePage {
    nav: Option<Nav>,
    section: &'static str,
    stage: Stage,
    accepted_models: Vec<String>,
    candidates: Vec<Candidate>,
    unusable: Vec<Unusable>,
    online_hosts: Vec<String>,
    csrf_token: String,
}

/// `GET /portal/devices/new`: the step the user is at.
pub(crate) async fn add<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
) -> Result<Response, PortalError> {
    let nav = signed.nav();
    let inner = async {
        let me = signed.principal().self_service()?;
        let repo = s.repo.as_ref();
        let accepted_models = me.policy(repo).await?.accepted_card_models;
        let seen = seen(&s, signed.principal()).await?;
        let (candidates, unusable) = cards(&seen.online);
        let stage = match add_device_refusal(&me, repo).await? {
            Some(why) => Stage::Refused(why),
            None if seen.paired == 0 => Stage::Pair,
            None if seen.online.is_empty() => Stage::Offline,
            None if candidates.is_empty() => Stage::Insert,
            None => Stage::Choose,
        };
        Ok::<_, PortalError>(AddDevicePage {
            nav: signed.nav(),
            section: "devices",
            stage,
            accepted_models,
            candidates,
            unusable,
            // The names the user knows them by (My Workstations), not what the machines call
            // themselves now.
            online_hosts: seen.online.iter().map(|(a, _)| a.host_name.clone()).collect(),
            csrf_token: signed.session.csrf_token.clone(),
        })
    };
    let page = inner.await.map_err(|e| e.with_nav(nav))?;
    Ok(render(StatusCode::OK, &page))
}

/// `POST /portal/devices/new/refresh`: asks every online agent of the user to report its readers
/// again, waits a moment for the reports, and shows the step again.
pub(crate) async fn refresh<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let nav = signed.nav();
    // Add Device is the cardholder's: the role is checked even though only agents are asked.
    signed.principal().self_service().map_err(|e| PortalError::from(e).with_nav(nav))?;
    let seen = seen(&s, signed.principal()).await.map_err(|e| e.with_nav(signed.nav()))?;
    ask_to_report(&s, &seen.online).await;
    Ok(Redirect::to("/portal/devices/new").into_response())
}

/// Asks each of `online` to report its readers again and waits (at most [`REFRESH_WAIT`]) until
/// every one that is still connected has.
pub(crate) async fn ask_to_report<R: Repo>(s: &AppState<R>, online: &[(Agent, LinkSnapshot)]) {
    let mut asked = Vec::new();
    for (agent, snapshot) in online {
        // An agent that went away since is simply not waited for.
        if crate::link::send_anywhere(s, agent.id, ServerLinkFrame::Refresh).await.is_ok() {
            asked.push((agent.id, snapshot.reported_at));
        }
    }
    let deadline = tokio::time::Instant::now() + REFRESH_WAIT;
    while tokio::time::Instant::now() < deadline {
        let mut answered = true;
        for (id, before) in &asked {
            if let Some((_, now)) = crate::link::status_anywhere(s, *id).await
                && (now.reported_at.is_none() || now.reported_at == *before)
            {
                answered = false;
                break;
            }
        }
        if answered {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Deserialize)]
pub(crate) struct StartForm {
    #[serde(default)]
    csrf_token: Option<String>,
    #[serde(default)]
    card: Option<String>,
}

/// The card is named `<agent id>|<reader>` in the form (one radio button per card).
pub(crate) fn parse_card(raw: &str) -> Option<(AgentId, &str)> {
    let (agent, reader) = raw.split_once('|')?;
    let agent = agent.parse().ok()?;
    (!reader.is_empty()).then_some((agent, reader))
}

/// The device kind a card model is recorded as. The engine personalises YubiKeys (and the
/// software card, which answers as one), and every one of them is a USB key.
pub(crate) fn kind_of(_model: &str) -> DeviceKind {
    DeviceKind::UsbKey
}

/// `POST /portal/devices/new/start`: begins issuance for the chosen card, as its agent reported
/// it, and starts the session on that agent and reader; then the job's page.
pub(crate) async fn start<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Form(form): Form<StartForm>,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let nav = signed.nav();
    let inner = async {
        let Some((agent_id, reader)) = form.card.as_deref().and_then(parse_card) else {
            return Err(PortalError::from(ApiError::bad_request(
                "choose one of the cards listed on the Add Device page",
            )));
        };
        let me = signed.principal().self_service()?;
        let repo = s.repo.as_ref();
        // Another user's agent is the same 404 as a missing one.
        let agent = signed.principal().workstations()?.agent(repo, agent_id).await?;
        let gone = || {
            PortalError::from(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "the card in reader {reader:?} of {} is no longer there, or no longer available; \
                     go back to Add Device to see the cards now",
                    agent.host_name
                ),
            ))
        };
        let Some((owner, snapshot)) = crate::link::status_anywhere(&s, agent.id).await else {
            return Err(gone());
        };
        let report = snapshot.readers.iter().flatten().find(|r| r.name == reader && r.card_present);
        let Some(card) =
            report.filter(|r| owner == agent.user && why_unusable(r).is_none()).and_then(|r| r.card.clone())
        else {
            return Err(gone());
        };
        let model = card.model.unwrap_or_default();
        let info = CardInfo { kind: kind_of(&model), model, serial: card.serial };
        crate::issuance::config(&s)?;
        let (_device, job) = me.begin_issuance(repo, info).await?;
        match crate::link::start_session(
            &s,
            signed.principal(),
            agent.id,
            job.id,
            reader,
            TicketPurpose::Run,
            true,
        )
        .await
        {
            Ok(_) => Ok(Redirect::to(&format!("/portal/jobs/{}", job.id)).into_response()),
            // The device and job exist: the job's page says what went wrong and offers to try again.
            Err(e) => {
                super::job::job_page(&s, &signed, job.id, Some(e.message().to_owned()), StatusCode::CONFLICT)
                    .await
            }
        }
    };
    inner.await.map_err(|e| e.with_nav(nav))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_card_field_names_an_agent_and_a_reader() {
        let id = AgentId::new();
        let raw = format!("{id}|Yubico YubiKey OTP+FIDO+CCID 00 00");
        assert_eq!(parse_card(&raw), Some((id, "Yubico YubiKey OTP+FIDO+CCID 00 00")));
        assert_eq!(parse_card(&format!("{id}|a|b")), Some((id, "a|b")), "only the first bar splits");
        for bad in ["", "|", "not-an-id|reader", &format!("{id}|"), &format!("{id}")] {
            assert_eq!(parse_card(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn any_card_field_is_judged_without_panicking(s in "\\PC{0,80}") {
            if let Some((_, reader)) = parse_card(&s) {
                prop_assert!(!reader.is_empty());
                prop_assert!(s.ends_with(reader));
            }
        }
    }
}
