//! *Add Identity Device* → *Derived PIV credential* (DESIGN §2 C): the pre-enrolment page lists
//! what is needed; **Continue** finds the sponsor card in a reader of the holder's own online
//! agents and starts the sponsor proof ([`lanyard_issuance::sponsor`]) there; the session's
//! page asks for the card's PIN and shows the card's answer; a verified card leads to the
//! one-time enrolment code, shown as a QR code of the app link and as text.
//!
//! `/portal/identities/derived` (GET), `…/start` (POST), `…/{job}` (GET), `…/{job}/pin` and
//! `…/{job}/code` (POST).

use std::time::Duration;

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use lanyard_core::authz::{System, TicketPurpose};
use lanyard_core::ids::{AgentId, DeviceId, JobId};
use lanyard_core::lifecycle::DeviceState;
use lanyard_core::model::{
    Device, DeviceClass, EnrollmentPurpose, ExternalSponsor, Job, JobKind, JobState, StepOutcome,
};
use lanyard_core::repo::Repo;
use lanyard_issuance::sponsor::{STEP_SPONSOR_REFUSED, SponsorProof};
use lanyard_issuance::{STEP_PIN_BLOCKED, STEP_PIN_WRONG};
use lanyard_protocol::Secret;
use serde::Deserialize;

use super::add_device::{ask_to_report, seen};
use super::{Nav, PortalError, SignedIn, render};
use crate::AppState;
use crate::auth::Via;
use crate::portal_pin::GiveError;

/// How long a page waits for the card session to reach its next stage before showing it.
const STAGE_WAIT: Duration = Duration::from_secs(20);
/// How long a verified card may wait for **Continue** to the QR code.
const PROOF_LIFETIME: time::Duration = time::Duration::minutes(10);

/// The holder's cards that may sponsor: Active, issued by Lanyard.
fn sponsors(devices: &[Device]) -> Vec<&Device> {
    devices
        .iter()
        .filter(|d| {
            d.class() == DeviceClass::Token && d.state == DeviceState::Active && d.card_guid.is_some()
        })
        .collect()
}

#[derive(Template)]
#[template(path = "portal/derived_start.html")]
struct StartPage {
    nav: Option<Nav>,
    section: &'static str,
    csrf_token: String,
    /// Why the derived credential cannot be added now.
    refused: Option<String>,
    needs_sponsor: bool,
    /// (device id, "model, serial")
    cards: Vec<(String, String)>,
    notice: Option<String>,
}

async fn start_page<R: Repo + 'static>(
    s: &AppState<R>,
    signed: &SignedIn,
    notice: Option<String>,
    status: StatusCode,
) -> Result<Response, PortalError> {
    let me = signed.principal().self_service()?;
    let policy = me.policy(s.repo.as_ref()).await?;
    let devices = me.devices(s.repo.as_ref()).await?;
    let cards: Vec<(String, String)> = sponsors(&devices)
        .into_iter()
        .map(|d| (d.id.to_string(), format!("{}, serial {}", d.model, d.serial.as_deref().unwrap_or("—"))))
        .collect();
    let mobiles = devices
        .iter()
        .filter(|d| {
            d.class() == DeviceClass::Mobile
                && matches!(d.state, DeviceState::Enrolling | DeviceState::Active | DeviceState::Suspended)
        })
        .count();
    let refused = if !policy.may_add_derived_piv {
        Some("your group's policy does not allow derived PIV credentials".to_owned())
    } else if mobiles >= usize::from(policy.max_mobiles) {
        Some(format!(
            "you have {mobiles} mobile devices, the most your group's policy allows ({}); delete one first",
            policy.max_mobiles
        ))
    } else if policy.derived_piv_requires_sponsor && cards.is_empty() {
        Some(
            "a derived credential is sponsored by one of your active Lanyard cards, and you have none"
                .to_owned(),
        )
    } else if !policy.derived_piv_requires_sponsor {
        Some(
            "your group's policy has no sponsor step: a derived credential without a card is enrolled in \
             person by an operator"
                .to_owned(),
        )
    } else {
        None
    };
    let page = StartPage {
        nav: signed.nav(),
        section: "devices",
        csrf_token: signed.session.csrf_token.clone(),
        refused,
        needs_sponsor: policy.derived_piv_requires_sponsor,
        cards,
        notice,
    };
    Ok(render(status, &page))
}

/// `GET /portal/identities/derived`: what is needed, and **Continue**.
pub(crate) async fn add<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
) -> Result<Response, PortalError> {
    let nav = signed.nav();
    start_page(&s, &signed, None, StatusCode::OK).await.map_err(|e| e.with_nav(nav))
}

#[derive(Deserialize)]
pub(crate) struct StartForm {
    #[serde(default)]
    csrf_token: Option<String>,
    #[serde(default)]
    card: Option<String>,
}

/// The reader for the sponsor proof among the holder's online agents: the one holding the
/// chosen card (by serial), or else the only card present (whatever it is: the proof decides).
fn find_reader(
    online: &[(lanyard_core::model::Agent, crate::link::LinkSnapshot)],
    serial: Option<&str>,
) -> Result<(AgentId, String), String> {
    let mut present = Vec::new();
    for (agent, snapshot) in online {
        for r in snapshot.readers.iter().flatten().filter(|r| r.card_present) {
            let card = r.card.as_ref();
            if card.is_some_and(|c| c.busy) {
                continue;
            }
            let matches = serial.is_some() && card.and_then(|c| c.serial.as_deref()) == serial;
            present.push((agent.id, r.name.clone(), matches));
        }
    }
    if let Some((a, r, _)) = present.iter().find(|p| p.2) {
        return Ok((*a, r.clone()));
    }
    match present.len() {
        1 => Ok((present[0].0, present[0].1.clone())),
        0 if online.is_empty() => Err("none of your workstations' agents is connected: start the agent \
                                      (lanyard agent run) on the workstation with the card reader"
            .to_owned()),
        0 => {
            Err("no card is in a reader of your workstations: insert your PIV card and choose Continue again"
                .to_owned())
        }
        _ => Err("several cards are inserted: leave only your PIV card in a reader and try again".to_owned()),
    }
}

/// `POST /portal/identities/derived/start`: **Continue**: the sponsor proof starts on the card.
pub(crate) async fn start<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Form(form): Form<StartForm>,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let nav = signed.nav();
    let inner = async {
        let me = signed.principal().self_service()?;
        let repo = s.repo.as_ref();
        let policy = me.policy(repo).await?;
        if !policy.may_add_derived_piv {
            return Err(crate::ApiError::new(
                StatusCode::FORBIDDEN,
                "your group's policy does not allow derived PIV credentials",
            )
            .into());
        }
        let devices = me.devices(repo).await?;
        let cards = sponsors(&devices);
        let chosen: Option<DeviceId> = form.card.as_deref().and_then(|c| c.parse().ok());
        let card = match (chosen, cards.as_slice()) {
            (Some(id), _) => cards.iter().find(|d| d.id == id).copied(),
            (None, [only]) => Some(*only),
            _ => None,
        };
        let Some(card) = card else {
            let message = "Choose which of your cards you will present.".to_owned();
            return start_page(&s, &signed, Some(message), StatusCode::BAD_REQUEST).await;
        };
        // Fresh reports first: the card may have been inserted a moment ago.
        let mut online = seen(&s, signed.principal()).await?.online;
        ask_to_report(&s, &online).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        let found = loop {
            let found = find_reader(&online, card.serial.as_deref());
            if found.is_ok() || tokio::time::Instant::now() >= deadline {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            online = seen(&s, signed.principal()).await?.online;
        };
        let (agent, reader) = match found {
            Ok(found) => found,
            Err(message) => return start_page(&s, &signed, Some(message), StatusCode::CONFLICT).await,
        };
        crate::issuance::config(&s)?;
        let (job, _ticket) = me.start_sponsor_proof(repo, card.id, crate::issuance::TICKET_TTL).await?;
        if let Err(e) = crate::link::start_session(
            &s,
            signed.principal(),
            agent,
            job.id,
            &reader,
            TicketPurpose::Run,
            true,
        )
        .await
        {
            return start_page(&s, &signed, Some(e.message().to_owned()), StatusCode::CONFLICT).await;
        }
        // Show the page once the card has been checked and the PIN is asked for (or the card
        // refused), rather than the moment in between.
        settle(&s, job.id, |job| {
            s.pins.wanted(job.id).is_some()
                || job.state != JobState::Running && job.state != JobState::Created
        })
        .await;
        Ok(Redirect::to(&format!("/portal/identities/derived/{}", job.id)).into_response())
    };
    inner.await.map_err(|e: PortalError| e.with_nav(nav))
}

/// Waits up to [`STAGE_WAIT`] for `done` to hold of the job.
async fn settle<R: Repo>(s: &AppState<R>, id: JobId, done: impl Fn(&Job) -> bool) {
    let deadline = tokio::time::Instant::now() + STAGE_WAIT;
    while tokio::time::Instant::now() < deadline {
        let job = match s.repo.read().await {
            Ok(mut tx) => lanyard_core::repo::prelude::JobRepo::get_job(&mut tx, id).await.ok().flatten(),
            Err(_) => None,
        };
        if job.as_ref().is_none_or(&done) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where the sponsor proof is, for its page.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Starting,
    PinWanted,
    Verified,
    Spent,
    Expired,
    PinWrong,
    PinBlocked,
    Refused,
    Failed,
}

#[derive(Template)]
#[template(path = "portal/derived_session.html")]
struct SessionPage {
    nav: Option<Nav>,
    section: &'static str,
    csrf_token: String,
    job_id: String,
    stage: Stage,
    /// The refusal, the tries left, or what stopped the session.
    detail: Option<String>,
    subject: Option<String>,
    seconds_left: u64,
    notice: Option<String>,
}

fn failed_step(job: &Job, name: &str) -> Option<String> {
    job.steps
        .iter()
        .rev()
        .find(|st| st.name == name && st.outcome == StepOutcome::Failed)
        .map(|st| st.detail.clone().unwrap_or_default())
}

async fn my_proof<R: Repo>(s: &AppState<R>, signed: &SignedIn, raw: &str) -> Result<Job, PortalError> {
    let id: JobId = raw.parse().map_err(|_| PortalError::not_found())?;
    let job = signed.principal().self_service()?.job(s.repo.as_ref(), id).await?;
    if job.kind != JobKind::SponsorProof {
        return Err(PortalError::not_found());
    }
    Ok(job)
}

async fn session_page<R: Repo + 'static>(
    s: &AppState<R>,
    signed: &SignedIn,
    job: Job,
    notice: Option<String>,
    status: StatusCode,
) -> Result<Response, PortalError> {
    let asking = crate::cluster::pin_wanted(s, job.id).await;
    let proof = SponsorProof::of(&job);
    let now = s.clock.now();
    let (stage, detail) = match job.state {
        JobState::Succeeded => match &proof {
            Some(p) if p.spent => (Stage::Spent, None),
            Some(p) if p.verified_at + PROOF_LIFETIME < now => (Stage::Expired, None),
            Some(_) => (Stage::Verified, None),
            None => (Stage::Failed, None),
        },
        JobState::Running if asking.is_some() => (Stage::PinWanted, None),
        JobState::Created | JobState::Running => (Stage::Starting, None),
        _ => {
            if let Some(d) = failed_step(&job, STEP_SPONSOR_REFUSED) {
                (Stage::Refused, Some(d))
            } else if let Some(d) = failed_step(&job, STEP_PIN_BLOCKED) {
                (Stage::PinBlocked, Some(d))
            } else if let Some(d) = failed_step(&job, STEP_PIN_WRONG) {
                (Stage::PinWrong, Some(d))
            } else {
                (Stage::Failed, failed_step(&job, "session"))
            }
        }
    };
    let page = SessionPage {
        nav: signed.nav(),
        section: "devices",
        csrf_token: signed.session.csrf_token.clone(),
        job_id: job.id.to_string(),
        stage,
        detail,
        subject: proof.map(|p| p.subject),
        seconds_left: asking.map_or(0, |a| a.seconds_left),
        notice,
    };
    Ok(render(status, &page))
}

/// `GET /portal/identities/derived/{job}`: the sponsor proof's stage.
pub(crate) async fn session<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
) -> Result<Response, PortalError> {
    let nav = signed.nav();
    let inner = async {
        let job = my_proof(&s, &signed, &id).await?;
        session_page(&s, &signed, job, None, StatusCode::OK).await
    };
    inner.await.map_err(|e| e.with_nav(nav))
}

#[derive(Deserialize)]
pub(crate) struct PinForm {
    #[serde(default)]
    csrf_token: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    pin: Option<Secret>,
}

/// `POST /portal/identities/derived/{job}/pin`: the card's PIN (or *Cancel*), handed to the
/// waiting session, which sends it to the card in a VERIFY command. Never stored or shown.
pub(crate) async fn pin<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<PinForm>,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let nav = signed.nav();
    let inner = async {
        let job = my_proof(&s, &signed, &id).await?;
        let pin = match form.action.as_deref() {
            Some("cancel") => None,
            _ => match form.pin {
                Some(p) if !p.expose().is_empty() => Some(p),
                _ => {
                    return session_page(
                        &s,
                        &signed,
                        job,
                        Some("Type your card's PIN.".into()),
                        StatusCode::BAD_REQUEST,
                    )
                    .await;
                }
            },
        };
        if let Err(e) = crate::cluster::pin_give(&s, job.id, None, pin).await {
            let message = match e {
                GiveError::PinTooLong => format!(
                    "A card's PIN has at most {} characters; nothing was sent to the card.",
                    crate::portal_pin::MAX_CARD_PIN
                ),
                GiveError::PinMissing => "Type your card's PIN.".to_owned(),
                _ => "The card session is no longer waiting for a PIN: its time ran out, or it was already \
                      answered."
                    .to_owned(),
            };
            let status =
                if e == GiveError::NotWaiting { StatusCode::CONFLICT } else { StatusCode::BAD_REQUEST };
            return session_page(&s, &signed, job, Some(message), status).await;
        }
        settle(&s, job.id, |job| job.state != JobState::Running).await;
        Ok(Redirect::to(&format!("/portal/identities/derived/{}", job.id)).into_response())
    };
    inner.await.map_err(|e: PortalError| e.with_nav(nav))
}

#[derive(Template)]
#[template(path = "portal/derived_code.html")]
struct CodePage {
    nav: Option<Nav>,
    section: &'static str,
    link: String,
    svg: String,
    /// For people: `2026-12-04 18:25 UTC`.
    expires: String,
    /// For the `<time>` element: RFC 3339.
    expires_iso: String,
}

#[derive(Deserialize)]
pub(crate) struct CsrfOnly {
    #[serde(default)]
    csrf_token: Option<String>,
}

/// `POST /portal/identities/derived/{job}/code`: spends the verified proof (once) on a one-time
/// enrolment code bound to this portal session, and shows it as a QR code of the app link and
/// as text. The code is shown this once; reloading does not show it again.
pub(crate) async fn code<R: Repo + 'static>(
    State(s): State<AppState<R>>,
    signed: SignedIn,
    Path(id): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> Result<Response, PortalError> {
    signed.check_csrf(form.csrf_token.as_deref())?;
    let nav = signed.nav();
    let inner = async {
        let mut job = my_proof(&s, &signed, &id).await?;
        let now = s.clock.now();
        let proof = match SponsorProof::of(&job) {
            Some(p)
                if job.state == JobState::Succeeded && !p.spent && p.verified_at + PROOF_LIFETIME >= now =>
            {
                p
            }
            _ => {
                let message =
                    "This card check cannot give an enrolment code (again): start over from Add Identity Device."
                        .to_owned();
                return session_page(&s, &signed, job, Some(message), StatusCode::CONFLICT).await;
            }
        };
        // A Lanyard card is linked to the mobile; a card of an imported root is named by its
        // certificate (issuer and serial) on the code and in the mobile's audit record.
        let purpose = match proof.device {
            Some(card) => EnrollmentPurpose::derived_from_card(card),
            None => match ExternalSponsor::new(&proof.issuer, &proof.serial_hex) {
                Ok(external) => EnrollmentPurpose::derived_from_external(external),
                Err(e) => {
                    let message = format!("This card check cannot give an enrolment code: {e}. Start over.");
                    return session_page(&s, &signed, job, Some(message), StatusCode::CONFLICT).await;
                }
            },
        };
        // Spent first: of two requests racing, the second finds the job changed (stale) and fails.
        let spent = SponsorProof { spent: true, ..proof };
        spent
            .store(&mut job)
            .map_err(|e| crate::ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        System::new(signed.principal().operation_id().clone(), now)
            .save_job(s.repo.as_ref(), &mut job)
            .await?;
        let session = match &signed.session.auth.via {
            Via::Session(hash) => Some(*hash),
            Via::ApiToken => None,
        };
        let me = signed.principal().self_service()?;
        let ttl = me.policy(s.repo.as_ref()).await?.enrollment_code_ttl();
        let (record, secret) = me.start_mobile_enrollment(s.repo.as_ref(), purpose, ttl, session).await?;
        let base = s.public_url.as_deref().unwrap_or("").trim_end_matches('/');
        let link = format!("{base}/m/{}", secrecy::ExposeSecret::expose_secret(&secret));
        let svg = super::qr::qr_svg(&link).unwrap_or_default();
        let expires = super::when(record.expires_at);
        let expires_iso = record
            .expires_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| record.expires_at.to_string());
        let page = CodePage { nav: signed.nav(), section: "devices", link, svg, expires, expires_iso };
        let mut resp = render(StatusCode::OK, &page);
        resp.headers_mut()
            .insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
        Ok(resp)
    };
    inner.await.map_err(|e: PortalError| e.with_nav(nav))
}
