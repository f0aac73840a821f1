//! Card sessions (jobs): starting issuance, following a job, agent tickets, and the sessions
//! started on an existing card (unlock, wipe, replace).

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lanyard_core::ids::DeviceId;
use lanyard_core::lifecycle::RevocationReason;
use lanyard_core::model::Device;
use lanyard_core::repo::Repo;
use serde::{Deserialize, Serialize};

use super::device_id;
use crate::auth::Auth;
use crate::{ApiError, AppState};

/// A card session as the API shows it (no ticket hash).
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct JobView {
    id: lanyard_core::ids::JobId,
    device: DeviceId,
    #[schema(value_type = String)]
    kind: lanyard_core::model::JobKind,
    #[schema(value_type = String)]
    state: lanyard_core::model::JobState,
    /// The step log, oldest first.
    #[schema(value_type = Vec<Object>)]
    steps: Vec<lanyard_core::model::JobStep>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: time::OffsetDateTime,
    /// Present while the session waits for the new PIN to be typed in the portal
    /// (`POST /api/v1/jobs/{id}/pin`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pin_wanted: Option<PinWanted>,
}

/// A session waiting for the holder's new PIN from the portal.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct PinWanted {
    rules: lanyard_core::model::PinRules,
    /// How long the holder still has; after it the card keeps its initial PIN (a PIN change
    /// or unlock ends with nothing changed).
    seconds_left: u64,
    /// The card's current PIN is wanted too (`current_pin`): a `change_pin` job.
    current_pin: bool,
    /// Present when the PIN wanted is the key's FIDO PIN (`independent` FIDO PIN mode): it
    /// follows these rules (any characters, at least `min_len` of them, at most 63 bytes) instead
    /// of `rules`.
    #[serde(skip_serializing_if = "Option::is_none")]
    fido: Option<lanyard_core::model::FidoPinRules>,
}

impl From<lanyard_core::model::Job> for JobView {
    fn from(j: lanyard_core::model::Job) -> Self {
        Self {
            id: j.id,
            device: j.device,
            kind: j.kind,
            state: j.state,
            steps: j.steps,
            created_at: j.created_at,
            updated_at: j.updated_at,
            pin_wanted: None,
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BeginIssuanceRequest {
    /// `smart_card` or `usb_key`.
    kind: String,
    /// The model the agent reported; the group policy lists the accepted ones.
    model: String,
    #[serde(default)]
    serial: Option<String>,
    /// Operators only: the cardholder (user id or username) the card is issued to in person;
    /// their group policy decides. Absent: the caller's own card.
    #[serde(default)]
    holder: Option<String>,
}

/// A started card session: the device, the job and the one-time ticket for the agent.
#[derive(Serialize, utoipa::ToSchema)]
struct StartedJob {
    device: Device,
    job: JobView,
    /// Hand this to the agent (`x-lanyard-ticket`); it works once, for 10 minutes.
    ticket: String,
}

fn job_id(raw: &str) -> Result<lanyard_core::ids::JobId, ApiError> {
    raw.parse().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{e}")))
}

fn issuance_enabled<R>(s: &AppState<R>) -> Result<(), ApiError> {
    crate::issuance::config(s).map(drop)
}

#[utoipa::path(post, path = "/api/v1/issuance", tag = "issuance", request_body = BeginIssuanceRequest,
    responses((status = 201, body = StartedJob), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
/// A cardholder starts issuing a card they hold in a reader: the policy is checked (may add a
/// device, how many, which models), the device and job are created, and a ticket is returned.
/// With `holder`, an operator starts issuing a card at their desk to that cardholder, under the
/// holder's policy.
pub(super) async fn begin_issuance<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    body: Result<Json<BeginIssuanceRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    // The role is checked before the body is read: an operator may name a holder, so either
    // role passes here, and the body decides which is needed.
    if let Err(not_a_cardholder) = auth.principal.self_service()
        && auth.principal.operator().is_err()
    {
        return Err(not_a_cardholder.into());
    }
    issuance_enabled(&s)?;
    let Json(req) = body?;
    let kind = req.kind.trim().parse().map_err(|e| ApiError::bad_request(format!("kind: {e}")))?;
    let card = lanyard_core::authz::CardInfo {
        kind,
        model: req.model.trim().to_owned(),
        serial: req.serial.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()),
    };
    let repo = s.repo.as_ref();
    let (run, ttl) = (lanyard_core::authz::TicketPurpose::Run, crate::issuance::TICKET_TTL);
    let (device, job, ticket) = match req.holder.as_deref().map(str::trim) {
        Some(holder) => {
            let op = auth.principal.operator()?;
            let holder = op.user(repo, holder).await.map_err(|e| match e {
                lanyard_core::DomainError::NotFound { .. } => {
                    ApiError::bad_request(format!("holder: no user {holder:?}"))
                }
                other => other.into(),
            })?;
            let (device, job) = op.begin_issuance_for(repo, holder.id, card).await?;
            let (job, ticket) = op.job_ticket(repo, job.id, run, ttl).await?;
            (device, job, ticket)
        }
        None => {
            let me = auth.principal.self_service()?;
            let (device, job) = me.begin_issuance(repo, card).await?;
            let (job, ticket) = me.job_ticket(repo, job.id, run, ttl).await?;
            (device, job, ticket)
        }
    };
    let ticket = crate::issuance::ticket_string(job.id, &ticket);
    Ok((StatusCode::CREATED, Json(StartedJob { device, job: job.into(), ticket })).into_response())
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "issuance", params(("id" = String, Path, description = "job id")),
    responses((status = 200, body = JobView), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody)))]
/// A card session: operators see any; a holder sees those of their own devices.
pub(super) async fn job<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = job_id(&id)?;
    let repo = s.repo.as_ref();
    let job = match auth.principal.operator() {
        Ok(op) => op.job(repo, id).await?,
        Err(_) => auth.principal.self_service()?.job(repo, id).await?,
    };
    let mut view = JobView::from(job);
    view.pin_wanted = crate::cluster::pin_wanted(&s, id).await.map(|a| PinWanted {
        rules: a.rules,
        seconds_left: a.seconds_left,
        current_pin: a.current,
        fido: a.fido,
    });
    Ok(Json(view))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PinRequest {
    /// The holder's new PIN, or null to keep the initial PIN (the device stays pending) or to
    /// cancel a PIN change.
    #[schema(value_type = Option<String>)]
    new_pin: Option<lanyard_protocol::Secret>,
    /// The card's current PIN, for a job that asks for it (`pin_wanted.current_pin`, a
    /// `change_pin` job) and only then.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    current_pin: Option<lanyard_protocol::Secret>,
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/pin", tag = "issuance", params(("id" = String, Path, description = "job id")),
    request_body = PinRequest,
    responses((status = 202), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody), (status = 503, body = crate::openapi::ErrorBody, description = "the session runs on another server and the database did not take the PIN; nothing was sent")))]
/// Hands the new PIN typed in the portal to a session waiting for it (`pin_wanted` on the job),
/// with the card's current PIN for a `change_pin` job: checked against the group's PIN rules
/// here (a PIN that breaks one, or a missing or impossible current PIN, is `400` and the session
/// waits on), then passed to the agent, which sends them to the card. Never stored, logged or
/// audited. The holder sees only their own jobs; operators (issuing in person) any.
pub(super) async fn submit_pin<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<PinRequest>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let id = job_id(&id)?;
    let repo = s.repo.as_ref();
    match auth.principal.operator() {
        Ok(op) => op.job(repo, id).await?,
        Err(_) => auth.principal.self_service()?.job(repo, id).await?,
    };
    let Json(req) = body?;
    crate::cluster::pin_give(&s, id, req.current_pin, req.new_pin).await.map_err(|e| match e {
        crate::portal_pin::GiveError::NotWaiting => {
            ApiError::new(StatusCode::CONFLICT, format!("job {id}: {e}"))
        }
        crate::portal_pin::GiveError::Unavailable => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("job {id}: {e}"))
        }
        _ => ApiError::bad_request(e.to_string()),
    })?;
    Ok(StatusCode::ACCEPTED)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TicketRequest {
    /// `run` (start or resume; the default), `rollback` (reset the card of a failed job) or
    /// `run_erasing_fido` (resume an issuance that stopped at a key with a FIDO PIN, the holder
    /// having agreed that the key's FIDO application be reset).
    #[serde(default)]
    purpose: Option<String>,
}

/// A new agent ticket for a job.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct JobTicket {
    job: JobView,
    ticket: String,
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/ticket", tag = "issuance", params(("id" = String, Path, description = "job id")),
    request_body = TicketRequest,
    responses((status = 200, body = JobTicket), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
/// A new one-time agent ticket to start, resume or roll back a job.
pub(super) async fn job_ticket<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<TicketRequest>, JsonRejection>,
) -> Result<Json<JobTicket>, ApiError> {
    use lanyard_core::authz::TicketPurpose;
    issuance_enabled(&s)?;
    let id = job_id(&id)?;
    let Json(req) = body?;
    let purpose = match req.purpose.as_deref().map(str::trim) {
        None | Some("run") => TicketPurpose::Run,
        Some("rollback") => TicketPurpose::Rollback,
        Some("run_erasing_fido") => TicketPurpose::RunErasingFido,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "purpose: {other:?} (expected run, rollback or run_erasing_fido)"
            )));
        }
    };
    let repo = s.repo.as_ref();
    let ttl = crate::issuance::TICKET_TTL;
    let (job, ticket) = match auth.principal.operator() {
        Ok(op) => op.job_ticket(repo, id, purpose, ttl).await?,
        Err(_) => auth.principal.self_service()?.job_ticket(repo, id, purpose, ttl).await?,
    };
    // A ticket handed out as text runs at an agent whose holder types the PIN there.
    crate::cluster::pin_forget(&s, job.id).await;
    let ticket = crate::issuance::ticket_string(job.id, &ticket);
    Ok(Json(JobTicket { job: job.into(), ticket }))
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/unlock", tag = "issuance", params(("id" = String, Path, description = "device id")),
    responses((status = 201, body = JobTicket), (status = 400, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
/// Starts unblocking a card's PIN (operators: any card; holders: their own). The agent at the
/// card redeems the ticket; the server sends RESET RETRY COUNTER's PUK, the holder types the new
/// PIN at the agent.
pub(super) async fn unlock_pin<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    issuance_enabled(&s)?;
    let id = device_id(&id)?;
    let repo = s.repo.as_ref();
    let ttl = crate::issuance::TICKET_TTL;
    let (job, ticket) = match auth.principal.operator() {
        Ok(op) => op.start_unlock(repo, id, ttl).await?,
        Err(_) => auth.principal.self_service()?.start_unlock(repo, id, ttl).await?,
    };
    let ticket = crate::issuance::ticket_string(job.id, &ticket);
    Ok((StatusCode::CREATED, Json(JobTicket { job: job.into(), ticket })).into_response())
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/wipe", tag = "issuance", params(("id" = String, Path, description = "device id")),
    responses((status = 201, body = JobTicket), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
/// Operators start wiping a terminated or failed card: the agent at the card resets it (after the
/// server checks its CHUID is this device's) and the device returns to stock.
pub(super) async fn wipe_device<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let op = auth.principal.operator()?;
    issuance_enabled(&s)?;
    let (job, ticket) = op.start_wipe(s.repo.as_ref(), device_id(&id)?, crate::issuance::TICKET_TTL).await?;
    let ticket = crate::issuance::ticket_string(job.id, &ticket);
    Ok((StatusCode::CREATED, Json(JobTicket { job: job.into(), ticket })).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplaceRequest {
    /// Why the old card goes (an RFC 5280 reason name, e.g. `superseded`, `key_compromise`).
    reason: String,
    /// The new card: `smart_card` or `usb_key`.
    kind: String,
    model: String,
    #[serde(default)]
    serial: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/replace", tag = "issuance", params(("id" = String, Path, description = "the card being replaced")),
    request_body = ReplaceRequest,
    responses((status = 201, body = StartedJob), (status = 400, body = crate::openapi::ErrorBody), (status = 403, body = crate::openapi::ErrorBody), (status = 404, body = crate::openapi::ErrorBody), (status = 409, body = crate::openapi::ErrorBody)))]
/// Operators replace a holder's card: the old one is revoked, a new one starts issuance with a
/// `replaces` link, and the ticket goes to the agent at the new card.
pub(super) async fn replace_device<R: Repo>(
    State(s): State<AppState<R>>,
    auth: Auth,
    Path(id): Path<String>,
    body: Result<Json<ReplaceRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let op = auth.principal.operator()?;
    issuance_enabled(&s)?;
    let old = device_id(&id)?;
    let Json(req) = body?;
    let reason =
        req.reason.parse::<RevocationReason>().map_err(|e| ApiError::bad_request(format!("reason: {e}")))?;
    let kind = req.kind.trim().parse().map_err(|e| ApiError::bad_request(format!("kind: {e}")))?;
    let card = lanyard_core::authz::CardInfo {
        kind,
        model: req.model.trim().to_owned(),
        serial: req.serial.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()),
    };
    let (device, job, ticket) =
        op.replace_device(s.repo.as_ref(), old, reason, card, crate::issuance::TICKET_TTL).await?;
    let ticket = crate::issuance::ticket_string(job.id, &ticket);
    Ok((StatusCode::CREATED, Json(StartedJob { device, job: job.into(), ticket })).into_response())
}
