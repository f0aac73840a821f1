//! The help desk's actions that need the card itself, run on the agent at the operator's own
//! desk (DESIGN §4: the server relays a session only to an agent paired with the session's user;
//! an operator acting in person uses an agent paired to the operator):
//!
//! - *Issue a card in person* from a user's page: a compatible, not-yet-issued card in a reader
//!   of the operator's online agents is issued to that cardholder under their group's policy
//!   ([`Operator::begin_issuance_for`]); the holder types the new PIN in the operator's browser.
//! - *Unlock PIN*, *Wipe* and *Replace* from a device's page: the device's card (found by its
//!   serial in the operator's readers) is unblocked with the stored PUK and a new PIN the holder
//!   types, reset to stock, or revoked and replaced by a blank card issued to the same holder.
//!
//! Each asks first, naming the device and its holder, and takes a note for the audit log; then
//! the card session's page (`/portal/jobs/{id}`, [`super::job`]) follows it. The operator's
//! agents are read through the [`Workstations`](lanyard_core::authz::Workstations) view, so no
//! one else's agent is ever offered or used. Without the operator role every page and form here
//! is the portal's 404.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use lanyard_core::DomainError;
use lanyard_core::authz::{CardInfo, Principal, TicketPurpose};
use lanyard_core::ids::{AgentId, JobId, UserId};
use lanyard_core::lifecycle::{DeviceState, RevocationReason};
use lanyard_core::model::{Agent, Device, DeviceClass, User};
use lanyard_core::repo::Repo;
use serde::Deserialize;

use super::add_device::{
    Candidate, Stage, Unusable, ask_to_report, cards, kind_of, parse_card, seen, why_unusable,
};
use super::devices::{Badge, device_badge};
use super::operator::{UserRow, holder_of, operator_of, parse_device};
use super::session::CsrfForm;
use super::{Nav, PortalError, SignedIn, render};
use crate::link::LinkSnapshot;
use crate::{ApiError, AppState};

pub(crate) fn routes<R: Repo + 'static>() -> Router<AppState<R>> {
    Router::new()
        .route("/portal/operator/users/{id}/issue", get(issue::<R>).post(issue_start::<R>))
        .route("/portal/operator/users/{id}/issue/refresh", post(issue_refresh::<R>))
        .route("/portal/operator/devices/{id}/{action}/refresh", post(action_refresh::<R>))
}

/// The card actions of a device's page, in the order it lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CardAction {
    Unlock,
    Wipe,
    Replace,
}

pub(crate) const CARD_ACTIONS: [CardAction; 3] = [CardAction::Unlock, CardAction::Wipe, CardAction::Replace];

impl CardAction {
    pub(crate) fn slug(self) -> &'static str {
        match self {
            Self::Unlock => "unlock",
            Self::Wipe => "wipe",
            Self::Replace => "replace",
        }
    }

    pub(crate) fn parse(slug: &str) -> Option<Self> {
        CARD_ACTIONS.into_iter().find(|a| a.slug() == slug)
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Unlock => "Unlock PIN",
            Self::Wipe => "Wipe",
            Self::Replace => "Replace",
        }
    }

    fn consequence(self) -> &'static str {
        match self {
            Self::Unlock => {
                "The card's blocked PIN is reset with the PUK Lanyard keeps: the card must be in a reader at \
                 your workstation, and the holder types their new PIN on the next page. The card's keys and \
                 certificates stay as they are."
            }
            Self::Wipe => {
                "The card is reset to its factory state, if it is the card Lanyard personalised for this \
                 device, and the device returns to stock without a holder; its stored secrets are discarded. \
                 This cannot be undone."
            }
            Self::Replace => {
                "The card is revoked for good with the reason chosen below (unless it is revoked already), \
                 with every certificate on it, and the blank card chosen below is issued to the same holder; \
                 the holder types the new card's PIN on the next page."
            }
        }
    }

    fn danger(self) -> bool {
        !matches!(self, Self::Unlock)
    }

    /// Whether the action applies to `d` now; the reason in words when it does not.
    pub(crate) fn refusal(self, d: &Device) -> Option<String> {
        if d.class() != DeviceClass::Token {
            return Some("only smart cards and USB keys are handled at a card reader".into());
        }
        let state = device_badge(d.state).label.to_lowercase();
        match self {
            Self::Unlock if matches!(d.state, DeviceState::Active | DeviceState::Pending | DeviceState::Suspended) => {
                None
            }
            Self::Unlock => Some(format!("only a card in use (active, pending or suspended) is unlocked; this one is {state}")),
            Self::Wipe if !matches!(d.state, DeviceState::Terminated | DeviceState::Failed) => Some(format!(
                "only a terminated or failed card is wiped; this one is {state}, so terminate it first if it is to be \
                 reused"
            )),
            Self::Wipe if d.card_guid.is_none() => Some(
                "Lanyard never personalised this card, so it cannot prove the card is this device's; reset it with \
                 the vendor's tool"
                    .into(),
            ),
            Self::Wipe => None,
            Self::Replace if d.owner.is_none() => Some("a stock card has no holder to replace it for".into()),
            Self::Replace
                if matches!(
                    d.state,
                    DeviceState::Active | DeviceState::Pending | DeviceState::Suspended | DeviceState::Revoked
                ) =>
            {
                None
            }
            Self::Replace => Some(format!("only an issued card (in use or revoked) is replaced; this one is {state}")),
        }
    }
}

/// A card action on a device's page: a link, or why it does not apply.
pub(crate) struct CardActionRow {
    pub slug: &'static str,
    pub label: &'static str,
    pub refused: Option<String>,
}

pub(crate) fn card_actions_for(d: &Device) -> Vec<CardActionRow> {
    if d.class() != DeviceClass::Token {
        return Vec::new();
    }
    CARD_ACTIONS
        .into_iter()
        .map(|a| CardActionRow { slug: a.slug(), label: a.label(), refused: a.refusal(d) })
        .collect()
}

/// The reasons an operator may give when replacing a card.
const REPLACE_REASONS: [(RevocationReason, &str); 5] = [
    (RevocationReason::Superseded, "Routine replacement (worn out, expiring, or an upgrade)"),
    (RevocationReason::Damaged, "The card is damaged"),
    (RevocationReason::Lost, "The card is lost"),
    (RevocationReason::Stolen, "The card was stolen"),
    (RevocationReason::KeyCompromise, "The keys may be known to someone else"),
];

struct ReasonOption {
    value: &'static str,
    label: &'static str,
    selected: bool,
}

fn reason_options(selected: Option<&str>) -> Vec<ReasonOption> {
    REPLACE_REASONS
        .iter()
        .map(|(r, label)| ReasonOption { value: r.as_str(), label, selected: selected == Some(r.as_str()) })
        .collect()
}

/// The operator's note, checked as every help-desk action checks it.
fn with_note(signed: &SignedIn, note: Option<&str>) -> Result<Principal, (String, String)> {
    signed
        .principal()
        .clone()
        .with_note(note)
        .map_err(|e| ("note".to_owned(), format!("Note: {}.", e.reason)))
}

/// Where the device's card is: a reader of one of the operator's online agents reporting a card
/// with the device's serial (and model, when the agent read one), that no session is using.
fn find_device_card(
    online: &[(Agent, LinkSnapshot)],
    d: &Device,
) -> Result<(AgentId, String, String), String> {
    let Some(serial) = d.serial.as_deref() else {
        return Err(
            "Lanyard has no serial for this card, so it cannot tell it from another card in a reader.".into(),
        );
    };
    for (agent, snapshot) in online {
        for r in snapshot.readers.iter().flatten().filter(|r| r.card_present) {
            let Some(card) = r.card.as_ref() else { continue };
            let model_fits = card.model.as_deref().is_none_or(|m| m == d.model);
            if card.serial.as_deref() == Some(serial) && model_fits {
                if card.busy {
                    return Err(format!(
                        "The card is in {} on {}, but a card session is running on it.",
                        r.name, agent.host_name
                    ));
                }
                return Ok((agent.id, agent.host_name.clone(), r.name.clone()));
            }
        }
    }
    Err(format!(
        "The card (serial {serial}) is not in a reader of your workstations whose agent is running. Insert it at \
         your workstation, then choose Refresh."
    ))
}

/// The operator's workstations as the pages show them.
enum Desk {
    /// No paired agent: pair the one at the desk.
    Pair,
    /// Paired, none connected.
    Offline,
    /// Connected; the hosts by the names the operator paired them with.
    Online(Vec<String>),
}

fn desk_of(paired: usize, online: &[(Agent, LinkSnapshot)]) -> Desk {
    match (paired, online.is_empty()) {
        (0, _) => Desk::Pair,
        (_, true) => Desk::Offline,
        _ => Desk::Online(online.iter().map(|(a, _)| a.host_name.clone()).collect()),
    }
}

// ---- In-person issuance ----

#[derive(Template)]
#[template(path = "portal/operator_issue.html")]
struct IssuePage {
    nav: Option<Nav>,
    section: &'static str,
    csrf_token: String,
    holder: UserRow,
    group: String,
    stage: Stage,
    accepted_models: Vec<String>,
    candidates: Vec<Candidate>,
    unusable: Vec<Unusable>,
    online_hosts: Vec<String>,
    note: String,
    error: Option<(String, String)>,
}

fn parse_user(id: &str) -> Result<UserId, PortalError> {
    id.parse::<UserId>().map_err(|_| PortalError::not_found())
}

/// The page's facts: the holder, whether their policy lets them receive a card, and the cards at
/// the operator's desk.
async fn issue_page<R: Repo>(s: &AppState<R>, signed: &SignedIn, id: &str) -> Result<IssuePage, PortalError> {
    let op = operator_of(signed)?;
    let repo = s.repo.as_ref();
    let holder = op.user(repo, &parse_user(id)?.to_string()).await?;
    let group = op.groups(repo).await?.into_iter().find(|g| g.id == holder.group);
    let refusal = match op.may_issue_to(repo, holder.id).await {
        Ok(_) => None,
        Err(DomainError::PolicyDenied(why)) => Some(why.to_string()),
        Err(DomainError::Validation(why)) => Some(why.reason),
        Err(e) => return Err(e.into()),
    };
    let seen = seen(s, signed.principal()).await?;
    let (candidates, unusable) = cards(&seen.online);
    let stage = match (refusal, desk_of(seen.paired, &seen.online)) {
        (Some(why), _) => Stage::Refused(why),
        (None, Desk::Pair) => Stage::Pair,
        (None, Desk::Offline) => Stage::Offline,
        (None, Desk::Online(_)) if candidates.is_empty() => Stage::Insert,
        (None, Desk::Online(_)) => Stage::Choose,
    };
    Ok(IssuePage {
        nav: signed.nav(),
        section: "operator",
        csrf_token: signed.session.csrf_token.clone(),
        holder: UserRow::from(&holder),
        group: group.as_ref().map_or_else(|| holder.group.to_string(), |g| g.name.clone()),
        stage,
        accepted_models: group.map(|g| g.policy.accepted_card_models).unwrap_or_default(),
        candidates,
        unusable,
        online_hosts: seen.online.iter().map(|(a, _)| a.host_name.clone()).collect(),
        note: String::new(),
        error: None,
    })
}

/// `GET /portal/operator/users/{id}/issue`: *Issue a card in person* to this user.
pub(crate) async fn issue<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
) -> Result<Response, PortalError> {
    let page = issue_page(&s, &signed, &id).await.map_err(|e| e.with_nav(signed.nav()))?;
    Ok(render(StatusCode::OK, &page))
}

/// `POST /portal/operator/users/{id}/issue/refresh`: the operator's agents report again.
pub(crate) async fn issue_refresh<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let inner = async {
        operator_of(&signed)?;
        let user = parse_user(&id)?;
        let seen = seen(&s, signed.principal()).await?;
        ask_to_report(&s, &seen.online).await;
        Ok::<_, PortalError>(Redirect::to(&format!("/portal/operator/users/{user}/issue")).into_response())
    };
    inner.await.map_err(|e| e.with_nav(signed.nav()))
}

#[derive(Deserialize)]
pub(crate) struct IssueForm {
    #[serde(default)]
    csrf_token: Option<String>,
    #[serde(default)]
    card: Option<String>,
    #[serde(default)]
    note: Option<String>,
}

/// `POST /portal/operator/users/{id}/issue`: begins issuance of the chosen card to this holder,
/// as the operator's agent reported it, and starts the session there; then the session's page.
pub(crate) async fn issue_start<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<IssueForm>,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let nav = signed.nav();
    let inner = async {
        let op = operator_of(&signed)?;
        let repo = s.repo.as_ref();
        let holder = op.user(repo, &parse_user(&id)?.to_string()).await?;
        let refuse = async |field: &str, message: String, status: StatusCode| {
            let mut page = issue_page(&s, &signed, &id).await?;
            page.note = form.note.clone().unwrap_or_default();
            page.error = Some((field.to_owned(), message));
            Ok::<_, PortalError>(render(status, &page))
        };
        let principal = match with_note(&signed, form.note.as_deref()) {
            Ok(p) => p,
            Err((field, message)) => return refuse(&field, message, StatusCode::BAD_REQUEST).await,
        };
        let Some((agent_id, reader)) = form.card.as_deref().and_then(parse_card) else {
            let message = "Card: choose one of the cards listed.".to_owned();
            return refuse("card", message, StatusCode::BAD_REQUEST).await;
        };
        // Only the operator's own agent: another account's is the same 404 as a missing one.
        let agent = principal.workstations()?.agent(repo, agent_id).await?;
        let report = crate::link::status_anywhere(&s, agent.id).await.and_then(|(owner, snapshot)| {
            let r = snapshot.readers?.into_iter().find(|r| r.name == reader && r.card_present)?;
            (owner == agent.user && why_unusable(&r).is_none()).then_some(r.card).flatten()
        });
        let Some(card) = report else {
            let message = format!(
                "Card: the card in {reader} on {} is no longer there or no longer blank; the page shows the cards now.",
                agent.host_name
            );
            return refuse("card", message, StatusCode::CONFLICT).await;
        };
        crate::issuance::config(&s)?;
        let model = card.model.unwrap_or_default();
        let info = CardInfo { kind: kind_of(&model), model, serial: card.serial };
        let op = principal.operator().map_err(|_| PortalError::not_found())?;
        let (_device, job) = match op.begin_issuance_for(repo, holder.id, info).await {
            Ok(started) => started,
            Err(DomainError::PolicyDenied(why)) => {
                return refuse("card", why.to_string(), StatusCode::FORBIDDEN).await;
            }
            Err(e) => return Err(e.into()),
        };
        run_session(&s, &signed, &principal, agent.id, job.id, reader, true).await
    };
    inner.await.map_err(|e| e.with_nav(nav))
}

/// Starts `job`'s session on the operator's `agent` at `reader` and shows its page; when it
/// cannot start, the page says why and offers to try again.
async fn run_session<R: Repo + 'static>(
    s: &AppState<R>,
    signed: &SignedIn,
    principal: &Principal,
    agent: AgentId,
    job: JobId,
    reader: &str,
    pin_from_portal: bool,
) -> Result<Response, PortalError> {
    match crate::link::start_session(s, principal, agent, job, reader, TicketPurpose::Run, pin_from_portal)
        .await
    {
        Ok(_) => Ok(Redirect::to(&format!("/portal/jobs/{job}")).into_response()),
        Err(e) => {
            super::job::job_page(s, signed, job, Some(e.message().to_owned()), StatusCode::CONFLICT).await
        }
    }
}

// ---- Unlock, wipe, replace ----

#[derive(Template)]
#[template(path = "portal/operator_card.html")]
pub(crate) struct CardConfirmPage {
    nav: Option<Nav>,
    section: &'static str,
    csrf_token: String,
    device_id: String,
    device_name: String,
    serial: String,
    state: Badge,
    holder: Option<UserRow>,
    slug: &'static str,
    label: &'static str,
    consequence: &'static str,
    danger: bool,
    /// The device's state rules the action out: why.
    refused: Option<String>,
    desk: Desk,
    /// Unlock and wipe: where the card is, or what to do to make it found.
    found: Result<String, String>,
    /// Replace: the blank cards at the operator's desk.
    candidates: Vec<Candidate>,
    unusable: Vec<Unusable>,
    reasons: Vec<ReasonOption>,
    note: String,
    error: Option<(String, String)>,
}

impl CardConfirmPage {
    /// Whether the form can be sent: the action applies and the card (or a blank one) is there.
    fn ready(&self) -> bool {
        self.refused.is_none()
            && matches!(self.desk, Desk::Online(_))
            && if self.slug == "replace" { !self.candidates.is_empty() } else { self.found.is_ok() }
    }
}

/// The device and its holder, as an operator reads them; the portal's 404 for anyone else.
async fn device_and_holder<R: Repo>(
    s: &AppState<R>,
    signed: &SignedIn,
    id: &str,
) -> Result<(Device, Option<User>), PortalError> {
    let op = operator_of(signed)?;
    let repo = s.repo.as_ref();
    let device = op.device(repo, parse_device(id)?).await?;
    let holder = holder_of(&op, repo, &device).await?;
    Ok((device, holder))
}

pub(crate) async fn confirm_page<R: Repo>(
    s: &AppState<R>,
    signed: &SignedIn,
    id: &str,
    action: CardAction,
) -> Result<CardConfirmPage, PortalError> {
    let (d, holder) = device_and_holder(s, signed, id).await?;
    let seen = seen(s, signed.principal()).await?;
    let (candidates, unusable) =
        if action == CardAction::Replace { cards(&seen.online) } else { (Vec::new(), Vec::new()) };
    Ok(CardConfirmPage {
        nav: signed.nav(),
        section: "operator",
        csrf_token: signed.session.csrf_token.clone(),
        device_id: d.id.to_string(),
        device_name: d.model.clone(),
        serial: d.serial.clone().unwrap_or_else(|| "—".into()),
        state: device_badge(d.state),
        holder: holder.as_ref().map(UserRow::from),
        slug: action.slug(),
        label: action.label(),
        consequence: action.consequence(),
        danger: action.danger(),
        refused: action.refusal(&d),
        desk: desk_of(seen.paired, &seen.online),
        found: find_device_card(&seen.online, &d).map(|(_, host, reader)| format!("{reader} on {host}")),
        candidates,
        unusable,
        reasons: if action == CardAction::Replace { reason_options(None) } else { Vec::new() },
        note: String::new(),
        error: None,
    })
}

/// `GET /portal/operator/devices/{id}/{unlock|wipe|replace}`: asks first (from
/// [`super::operator::confirm`]). A device whose state rules the action out gets the page with
/// the reason, as a 409, and no form.
pub(crate) async fn confirm<R: Repo + 'static>(
    s: &AppState<R>,
    signed: &SignedIn,
    id: &str,
    action: CardAction,
) -> Result<Response, PortalError> {
    let page = confirm_page(s, signed, id, action).await?;
    let status = if page.refused.is_some() { StatusCode::CONFLICT } else { StatusCode::OK };
    Ok(render(status, &page))
}

/// `POST /portal/operator/devices/{id}/{action}/refresh`: the operator's agents report again.
pub(crate) async fn action_refresh<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path((id, slug)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let inner = async {
        operator_of(&signed)?;
        let action = CardAction::parse(&slug).ok_or_else(PortalError::not_found)?;
        let device = parse_device(&id)?;
        let seen = seen(&s, signed.principal()).await?;
        ask_to_report(&s, &seen.online).await;
        Ok::<_, PortalError>(
            Redirect::to(&format!("/portal/operator/devices/{device}/{}", action.slug())).into_response(),
        )
    };
    inner.await.map_err(|e| e.with_nav(signed.nav()))
}

/// What a card action's confirmation form sends (besides the CSRF token).
pub(crate) struct CardActionForm {
    pub note: Option<String>,
    pub reason: Option<String>,
    /// Replace: the blank card, `<agent id>|<reader>`.
    pub card: Option<String>,
}

/// `POST /portal/operator/devices/{id}/{unlock|wipe|replace}` (from [`super::operator::act`],
/// after the CSRF check): finds the card at the operator's desk, starts the job with the note in
/// its audit event, starts the session on that agent, and shows the session's page. Anything
/// refused first changes nothing and shows the form again with the reason.
pub(crate) async fn act<R: Repo + 'static>(
    s: &AppState<R>,
    signed: &SignedIn,
    id: &str,
    action: CardAction,
    form: CardActionForm,
) -> Result<Response, PortalError> {
    let (d, _) = device_and_holder(s, signed, id).await?;
    let repo = s.repo.as_ref();
    let refuse = async |field: &str, message: String, status: StatusCode| {
        let mut page = confirm_page(s, signed, id, action).await?;
        page.note = form.note.clone().unwrap_or_default();
        if action == CardAction::Replace {
            page.reasons = reason_options(form.reason.as_deref());
        }
        page.error = Some((field.to_owned(), message));
        Ok::<_, PortalError>(render(status, &page))
    };
    if let Some(why) = action.refusal(&d) {
        let message = format!("{}: {why}.", action.label());
        return refuse("device", message, StatusCode::CONFLICT).await;
    }
    let principal = match with_note(signed, form.note.as_deref()) {
        Ok(p) => p,
        Err((field, message)) => return refuse(&field, message, StatusCode::BAD_REQUEST).await,
    };
    let reason = match action {
        CardAction::Replace => {
            match form.reason.as_deref().and_then(|r| REPLACE_REASONS.iter().find(|(x, _)| x.as_str() == r)) {
                Some((r, _)) => Some(*r),
                None => {
                    let message = "Reason: choose one of the listed reasons.".to_owned();
                    return refuse("reason", message, StatusCode::BAD_REQUEST).await;
                }
            }
        }
        _ => None,
    };
    crate::issuance::config(s)?;
    let seen = seen(s, signed.principal()).await?;
    let op = principal.operator().map_err(|_| PortalError::not_found())?;
    let ttl = crate::issuance::TICKET_TTL;
    match (action, reason) {
        (CardAction::Replace, Some(reason)) => {
            let Some((agent_id, reader)) = form.card.as_deref().and_then(parse_card) else {
                return refuse(
                    "card",
                    "Card: choose one of the blank cards listed.".to_owned(),
                    StatusCode::BAD_REQUEST,
                )
                .await;
            };
            let (candidates, _) = cards(&seen.online);
            let agent = agent_id.to_string();
            let Some(c) = candidates.into_iter().find(|c| c.agent == agent && c.reader == reader) else {
                let message = format!(
                    "Card: the card in {reader} is no longer there or no longer blank; the page shows the cards now."
                );
                return refuse("card", message, StatusCode::CONFLICT).await;
            };
            let serial = (c.serial != "—").then_some(c.serial);
            let info = CardInfo { kind: kind_of(&c.model), model: c.model, serial };
            let (_device, job, _ticket) = match op.replace_device(repo, d.id, reason, info, ttl).await {
                Ok(started) => started,
                Err(DomainError::PolicyDenied(why)) => {
                    return refuse("card", why.to_string(), StatusCode::FORBIDDEN).await;
                }
                Err(e) => return Err(e.into()),
            };
            run_session(s, signed, &principal, agent_id, job.id, reader, true).await
        }
        (CardAction::Unlock | CardAction::Wipe, _) => {
            let (agent, _, reader) = match find_device_card(&seen.online, &d) {
                Ok(found) => found,
                Err(message) => return refuse("card", message, StatusCode::CONFLICT).await,
            };
            let (job, _ticket) = if action == CardAction::Unlock {
                op.start_unlock(repo, d.id, ttl).await?
            } else {
                op.start_wipe(repo, d.id, ttl).await?
            };
            // Unlock: the holder types the new PIN on the session's page. Wipe sets none.
            run_session(s, signed, &principal, agent, job.id, &reader, action == CardAction::Unlock).await
        }
        (CardAction::Replace, None) => Err(PortalError::from(ApiError::bad_request("Reason: choose one"))),
    }
}
