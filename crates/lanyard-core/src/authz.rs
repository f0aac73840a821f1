//! Capability-typed access to the domain.
//!
//! After authentication the server builds a [`Principal`] and asks it for a view:
//! [`SelfService`] (role user), [`Operator`], [`Admin`] or [`Auditor`]. A view exists only if the
//! principal holds the role, and the views' methods are the only way to reach domain operations,
//! so a forgotten role check does not compile. Each method runs in one unit of work: the change,
//! its cascades and its audit event commit together or not at all. Methods that change something
//! run their write unit of work through [`crate::repo::retry`], so a serialization conflict runs
//! it again instead of failing the request; methods that only look run in a read unit of work
//! ([`Repo::read`]).
//!
//! Self-service methods treat another user's device exactly like a missing one (NotFound), so
//! nothing about other people's devices leaks. [`System`] is for Lanyard's own processes (the
//! issuance engine, enrolment endpoints, sweepers), never for a user's request.

use std::collections::{BTreeMap, BTreeSet};

use secrecy::SecretString;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::audit::{Actor, AuditEvent, ChainHead, ChainVerifier, NewAuditEvent, OperationId};
use crate::error::{DomainError, Forbidden};
use crate::ids::{ApiTokenId, CredentialId, DeviceId, GroupId, InstanceId, JobId, UserId};
use crate::lifecycle::{
    CredentialAction, CredentialState, DeviceAction, DeviceState, RevocationReason, apply_credential,
    apply_device, credential_action_allowed, device_target, new_certificate_state,
};
use crate::model::{
    ApiToken, Credential, CredentialKind, Device, DeviceClass, DeviceKind, EnrollmentCode, EnrollmentPurpose,
    Group, JOB_LEASE, Job, JobKind, JobLease, JobState, JobStep, LinkKind, Policy, PolicyDenied, Role,
    StepOutcome, User, Username, ValidationError,
};
use crate::password::UserPassword;
use crate::repo::prelude::*;
use crate::repo::{AuditQuery, CredentialQuery, DeviceQuery, UserQuery};
use crate::secrets::{SealedCardSecrets, TokenHash};

/// An authenticated, enabled user acting in one request.
#[derive(Clone, Debug)]
pub struct Principal {
    user: User,
    operation_id: OperationId,
    at: OffsetDateTime,
    via_token: Option<ApiTokenId>,
}

/// Who, when and under which operation id: what every change records.
#[derive(Clone, Debug)]
struct Acting {
    actor: Actor,
    operation_id: OperationId,
    at: OffsetDateTime,
}

impl Principal {
    /// `user` acting in the request `operation_id` that started at `at` (from the server's
    /// [`crate::clock::Clock`]). A disabled user gets no principal.
    pub fn new(user: User, operation_id: OperationId, at: OffsetDateTime) -> Result<Self, Forbidden> {
        if user.disabled {
            return Err(Forbidden::Disabled);
        }
        Ok(Self { user, operation_id, at, via_token: None })
    }

    /// Marks the request as made with an API token: audit events name the token.
    pub fn via_api_token(mut self, token: ApiTokenId) -> Self {
        self.via_token = Some(token);
        self
    }

    pub fn user(&self) -> &User {
        &self.user
    }

    pub fn operation_id(&self) -> &OperationId {
        &self.operation_id
    }

    /// What audit events record as the actor.
    pub fn actor(&self) -> Actor {
        match self.via_token {
            Some(id) => Actor::ApiToken { id },
            None => Actor::User { id: self.user.id, username: self.user.username.clone() },
        }
    }

    fn acting(&self) -> Acting {
        Acting { actor: self.actor(), operation_id: self.operation_id.clone(), at: self.at }
    }

    fn require(&self, role: Role) -> Result<(), Forbidden> {
        if self.user.has_role(role) { Ok(()) } else { Err(Forbidden::MissingRole(role)) }
    }

    /// The cardholder's view of their own devices.
    pub fn self_service(&self) -> Result<SelfService<'_>, Forbidden> {
        self.require(Role::User).map(|()| SelfService { p: self })
    }

    /// The help desk's view of every user's devices.
    pub fn operator(&self) -> Result<Operator<'_>, Forbidden> {
        self.require(Role::Operator).map(|()| Operator { p: self })
    }

    /// Groups, policies, users and roles.
    pub fn admin(&self) -> Result<Admin<'_>, Forbidden> {
        self.require(Role::Administrator).map(|()| Admin { p: self })
    }

    /// Read-only access to the audit log.
    pub fn auditor(&self) -> Result<Auditor<'_>, Forbidden> {
        self.require(Role::Auditor).map(|()| Auditor { p: self })
    }

    /// My API tokens (revoked and expired ones included), ordered by creation time.
    pub async fn api_tokens<R: Repo>(&self, repo: &R) -> Result<Vec<ApiToken>, DomainError> {
        let mut tx = repo.read().await?;
        Ok(tx.list_api_tokens(self.user.id).await?)
    }

    /// Creates an API token for me, valid for `expires_in_days` (1 to [`MAX_TOKEN_DAYS`]) or
    /// without expiry. Returns the secret to show once; only its hash is stored.
    pub async fn create_api_token<R: Repo>(
        &self,
        repo: &R,
        name: &str,
        expires_in_days: Option<u32>,
    ) -> Result<(ApiToken, secrecy::SecretString), DomainError> {
        let expires_at = match expires_in_days {
            None => None,
            Some(days @ 1..=MAX_TOKEN_DAYS) => Some(self.at + time::Duration::days(i64::from(days))),
            Some(days) => {
                return Err(ValidationError::new(
                    "expires_in_days",
                    format!("must be 1 to {MAX_TOKEN_DAYS}, got {days}"),
                )
                .into());
            }
        };
        let who = self.acting();
        let who = &who;
        retry(repo, || async move {
            // A new token for every run: nothing of a failed run is kept.
            let (token, secret) = ApiToken::issue(self.user.id, name, expires_at, who.at)?;
            let mut tx = repo.begin().await?;
            tx.insert_api_token(&token).await?;
            let after = json!({
                "user": token.user,
                "name": token.name,
                "expires_at": token.expires_at.map(OffsetDateTime::unix_timestamp),
            });
            let event = NewAuditEvent::new(who.at, who.actor.clone(), "api_token.create", &who.operation_id)
                .target(format!("api_token:{}", token.id))
                .after(after);
            tx.append_audit(event).await?;
            tx.commit().await?;
            Ok((token, secret))
        })
        .await
    }

    /// Revokes one of my API tokens. Someone else's token is NotFound, like a missing one; a
    /// token already revoked is a Conflict.
    pub async fn revoke_api_token<R: Repo>(&self, repo: &R, id: ApiTokenId) -> Result<ApiToken, DomainError> {
        let who = self.acting();
        let who = &who;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let mut token = match tx.get_api_token(id).await? {
                Some(t) if t.user == self.user.id => t,
                _ => return Err(DomainError::not_found("api token", id)),
            };
            if token.revoked_at.is_some() {
                return Err(DomainError::Conflict("this API token is already revoked".into()));
            }
            token.revoked_at = Some(who.at);
            tx.update_api_token(&token).await?;
            let event = NewAuditEvent::new(who.at, who.actor.clone(), "api_token.revoke", &who.operation_id)
                .target(format!("api_token:{id}"))
                .before(json!({"revoked_at": null}))
                .after(json!({"revoked_at": who.at.unix_timestamp()}));
            tx.append_audit(event).await?;
            tx.commit().await?;
            Ok(token)
        })
        .await
    }
}

/// The longest an API token may be valid, in days.
pub const MAX_TOKEN_DAYS: u32 = 365;

/// No page size limit (for lists bounded by nature, like one device's credentials).
const ALL: u32 = u32::MAX;

fn device_ref(id: DeviceId) -> String {
    format!("device:{id}")
}

fn credential_snapshot(c: &Credential) -> Value {
    json!({
        "device": c.device,
        "state": c.state,
        "held_from": c.held_from,
        "revocation_reason": c.revocation_reason,
        "revoked_at": c.revoked_at.map(OffsetDateTime::unix_timestamp),
    })
}

fn snapshot(device: &Device, credentials: &[Credential]) -> Value {
    let creds: BTreeMap<String, &str> =
        credentials.iter().map(|c| (c.id.to_string(), c.state.as_str())).collect();
    json!({
        "state": device.state,
        "suspended_from": device.suspended_from,
        "revocation_reason": device.revocation_reason,
        "owner": device.owner,
        "credentials": creds,
    })
}

async fn credentials_of<T: Tx>(tx: &mut T, device: DeviceId) -> Result<Vec<Credential>, DomainError> {
    Ok(tx
        .list_credentials(&CredentialQuery { device: Some(device), limit: ALL, ..Default::default() })
        .await?)
}

/// Applies `action` to `device`, cascades it to the device's credentials, and records one audit
/// event with the before and after states. Does not commit.
async fn transition<T: Tx>(
    tx: &mut T,
    mut device: Device,
    action: DeviceAction,
    who: &Acting,
) -> Result<Device, DomainError> {
    let mut credentials = credentials_of(tx, device.id).await?;
    let before = snapshot(&device, &credentials);
    apply_device(&mut device, action, who.at)?;
    tx.update_device(&device).await?;
    if let Some(effect) = action.credential_effect() {
        for credential in credentials.iter_mut().filter(|c| credential_action_allowed(c.state, effect)) {
            apply_credential(credential, effect, who.at)?;
            tx.update_credential(credential).await?;
        }
    }
    let after = snapshot(&device, &credentials);
    let event =
        NewAuditEvent::new(who.at, who.actor.clone(), format!("device.{}", action.kind()), &who.operation_id)
            .target(device_ref(device.id))
            .before(before)
            .after(after);
    tx.append_audit(event).await?;
    Ok(device)
}

/// [`transition`], then revokes the devices derived from this one when the action calls for it
/// (one audit event each, same operation id).
async fn transition_with_derived<T: Tx>(
    tx: &mut T,
    device: Device,
    action: DeviceAction,
    who: &Acting,
) -> Result<Device, DomainError> {
    let device = transition(tx, device, action, who).await?;
    if action.revokes_derived() {
        let query = DeviceQuery { linked_to: Some(device.id), limit: ALL, ..Default::default() };
        for derived in tx.list_devices(&query).await? {
            let is_derived = derived.linked(LinkKind::DerivedFrom).any(|t| t == device.id);
            let revoke = DeviceAction::Revoke(RevocationReason::ParentRevoked);
            if is_derived && device_target(derived.class(), derived.state, revoke.kind()).is_some() {
                transition(tx, derived, revoke, who).await?;
            }
        }
    }
    Ok(device)
}

/// Records certificates that were signed for `device` outside any unit of work (reserve → sign →
/// record). The device is read again here: each credential starts in the state the device calls
/// for now ([`new_certificate_state`]). A device that stopped taking certificates while the CA was
/// signing (revoked, suspended, failed) gets them recorded Revoked (cessationOfOperation), so OCSP
/// and the CRL know the serials; the caller commits that and reports [`CertificatesRefused`].
/// One `credential.issue` audit event each; `job` is named in them when given. Does not commit.
async fn record_certificates<T: Tx>(
    tx: &mut T,
    who: &Acting,
    device: DeviceId,
    credentials: &mut [Credential],
    job: Option<JobId>,
) -> Result<Option<CertificatesRefused>, DomainError> {
    let d = tx.get_device(device).await?.ok_or_else(|| DomainError::not_found("device", device))?;
    let state = new_certificate_state(d.state);
    for credential in credentials.iter_mut() {
        credential.device = device;
        credential.created_at = who.at;
        credential.updated_at = who.at;
        match state {
            Some(CredentialState::Active) => {
                apply_credential(credential, CredentialAction::Activate, who.at)?;
            }
            Some(_) => {}
            None => {
                apply_credential(
                    credential,
                    CredentialAction::Revoke(RevocationReason::CessationOfOperation),
                    who.at,
                )?;
            }
        }
        tx.insert_credential(credential).await?;
        let CredentialKind::Certificate { slot, profile, serial_hex, not_before, not_after, .. } =
            &credential.kind;
        let mut after = json!({
            "device": credential.device,
            "state": credential.state,
            "slot": slot,
            "profile": profile,
            "serial": serial_hex,
            "not_before": not_before.unix_timestamp(),
            "not_after": not_after.unix_timestamp(),
        });
        if let (Some(job), Some(map)) = (job, after.as_object_mut()) {
            map.insert("job".into(), json!(job));
        }
        let event = NewAuditEvent::new(who.at, who.actor.clone(), "credential.issue", &who.operation_id)
            .target(format!("credential:{}", credential.id))
            .after(after);
        tx.append_audit(event).await?;
    }
    Ok(state.is_none().then_some(CertificatesRefused { device, state: d.state }))
}

/// Certificates were signed for a device that meanwhile stopped taking them; they were recorded
/// revoked.
#[derive(Clone, Copy, Debug)]
pub struct CertificatesRefused {
    pub device: DeviceId,
    pub state: DeviceState,
}

impl From<CertificatesRefused> for DomainError {
    fn from(r: CertificatesRefused) -> Self {
        DomainError::Conflict(format!(
            "device {} became {} while its certificate was being signed; the certificate was recorded revoked",
            r.device, r.state
        ))
    }
}

async fn policy_of<T: Tx>(tx: &mut T, user: &User) -> Result<Policy, DomainError> {
    let group = tx.get_group(user.group).await?.ok_or_else(|| DomainError::not_found("group", user.group))?;
    Ok(group.policy)
}

/// What the agent reports about a card the user wants to issue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardInfo {
    pub kind: DeviceKind,
    pub model: String,
    pub serial: Option<String>,
}

/// What a job ticket is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TicketPurpose {
    /// Start the job, or resume it after a failure.
    Run,
    /// Reset the card of a failed job and fail the device.
    Rollback,
}

/// The log step that marks a failed job for rollback.
pub const STEP_ROLLBACK_REQUESTED: &str = "rollback_requested";

/// A fresh agent ticket for job `id`, if `owner` (when given) holds its device. Created and
/// Failed jobs take tickets; a Failed one is resumed, or rolled back with
/// [`TicketPurpose::Rollback`].
async fn job_ticket<R: Repo>(
    repo: &R,
    who: &Acting,
    id: JobId,
    owner: Option<UserId>,
    purpose: TicketPurpose,
    ttl: time::Duration,
) -> Result<(Job, SecretString), DomainError> {
    retry(repo, || job_ticket_once(repo, who, id, owner, purpose, ttl)).await
}

/// One run of [`job_ticket`]'s unit of work.
async fn job_ticket_once<R: Repo>(
    repo: &R,
    who: &Acting,
    id: JobId,
    owner: Option<UserId>,
    purpose: TicketPurpose,
    ttl: time::Duration,
) -> Result<(Job, SecretString), DomainError> {
    let mut tx = repo.begin().await?;
    let mut job = tx.get_job(id).await?.ok_or_else(|| DomainError::not_found("job", id))?;
    let device = tx.get_device(job.device).await?.ok_or_else(|| DomainError::not_found("job", id))?;
    if owner.is_some() && device.owner != owner {
        return Err(DomainError::not_found("job", id));
    }
    match (job.state, purpose) {
        (JobState::Created | JobState::Failed, TicketPurpose::Run) => {}
        (JobState::Failed, TicketPurpose::Rollback) => {
            if job.steps.last().is_none_or(|s| s.name != STEP_ROLLBACK_REQUESTED) {
                job.steps.push(JobStep {
                    at: who.at,
                    name: STEP_ROLLBACK_REQUESTED.to_owned(),
                    outcome: StepOutcome::Started,
                    detail: None,
                });
            }
        }
        (state, _) => {
            return Err(DomainError::Conflict(format!(
                "job {id} is {state}; only a created or failed job takes a ticket (and only a failed one is rolled back)"
            )));
        }
    }
    if purpose == TicketPurpose::Run && job.steps.last().is_some_and(|s| s.name == STEP_ROLLBACK_REQUESTED) {
        return Err(DomainError::Conflict(format!("job {id} is marked for rollback; finish the rollback")));
    }
    let ticket = job.issue_ticket(ttl, who.at)?;
    tx.update_job(&job).await?;
    let event = NewAuditEvent::new(who.at, who.actor.clone(), "job.ticket", &who.operation_id)
        .target(format!("job:{id}"))
        .after(json!({"purpose": format!("{purpose:?}").to_lowercase(), "expires_at": job.ticket_expires_at.map(|t| t.unix_timestamp())}));
    tx.append_audit(event).await?;
    tx.commit().await?;
    job.version += 1;
    Ok((job, ticket))
}

/// Job `id`, if `owner` (when given) holds its device.
async fn job_of<R: Repo>(repo: &R, id: JobId, owner: Option<UserId>) -> Result<Job, DomainError> {
    let mut tx = repo.read().await?;
    let job = tx.get_job(id).await?.ok_or_else(|| DomainError::not_found("job", id))?;
    let device = tx.get_device(job.device).await?.ok_or_else(|| DomainError::not_found("job", id))?;
    if owner.is_some() && device.owner != owner {
        return Err(DomainError::not_found("job", id));
    }
    Ok(job)
}

/// A PIN-unlock job for a card in use (Active, Pending or Suspended) that has stored secrets,
/// and its one-time agent ticket. `owner`, when given, must hold the card.
async fn start_unlock<R: Repo>(
    repo: &R,
    who: &Acting,
    by: UserId,
    device: DeviceId,
    owner: Option<UserId>,
    ttl: time::Duration,
) -> Result<(Job, SecretString), DomainError> {
    retry(repo, || async move {
        let mut tx = repo.begin().await?;
        let d = tx.get_device(device).await?.ok_or_else(|| DomainError::not_found("device", device))?;
        if owner.is_some() && d.owner != owner {
            return Err(DomainError::not_found("device", device));
        }
        if !matches!(d.state, DeviceState::Active | DeviceState::Pending | DeviceState::Suspended) {
            return Err(DomainError::Conflict(format!(
                "device {device} is {}; only a card in use is unlocked",
                d.state
            )));
        }
        if tx.get_card_secrets(device).await?.is_none() {
            return Err(DomainError::Conflict(format!(
                "device {device} has no stored PUK (it was not issued by Lanyard)"
            )));
        }
        let created = create_job(&mut tx, who, JobKind::Unlock, device, by, ttl).await?;
        tx.commit().await?;
        Ok(created)
    })
    .await
}

/// Inserts a new job of `kind` with a one-time agent ticket, audited as `job.create`.
async fn create_job<T: Tx>(
    tx: &mut T,
    who: &Acting,
    kind: JobKind,
    device: DeviceId,
    by: UserId,
    ttl: time::Duration,
) -> Result<(Job, SecretString), DomainError> {
    let mut job = Job::new(kind, device, Some(by), who.at);
    let ticket = job.issue_ticket(ttl, who.at)?;
    tx.insert_job(&job).await?;
    let event = NewAuditEvent::new(who.at, who.actor.clone(), "job.create", &who.operation_id)
        .target(format!("job:{}", job.id))
        .after(json!({"kind": job.kind, "device": device}));
    tx.append_audit(event).await?;
    Ok((job, ticket))
}

/// A cardholder acting on their own devices.
#[derive(Clone, Copy, Debug)]
pub struct SelfService<'a> {
    p: &'a Principal,
}

impl SelfService<'_> {
    fn me(&self) -> UserId {
        self.p.user.id
    }

    /// A ticket for the agent to run (or roll back) a job on one of my devices.
    pub async fn job_ticket<R: Repo>(
        &self,
        repo: &R,
        id: JobId,
        purpose: TicketPurpose,
        ttl: time::Duration,
    ) -> Result<(Job, SecretString), DomainError> {
        job_ticket(repo, &self.p.acting(), id, Some(self.me()), purpose, ttl).await
    }

    /// A job on one of my devices.
    pub async fn job<R: Repo>(&self, repo: &R, id: JobId) -> Result<Job, DomainError> {
        job_of(repo, id, Some(self.me())).await
    }

    /// Starts unblocking the PIN of one of my cards; the ticket goes to my agent.
    pub async fn start_unlock<R: Repo>(
        &self,
        repo: &R,
        device: DeviceId,
        ttl: time::Duration,
    ) -> Result<(Job, SecretString), DomainError> {
        start_unlock(repo, &self.p.acting(), self.me(), device, Some(self.me()), ttl).await
    }

    /// Loads one of my devices; another user's device, or a deleted mobile, is NotFound.
    async fn mine<T: Tx>(&self, tx: &mut T, id: DeviceId) -> Result<Device, DomainError> {
        match tx.get_device(id).await? {
            Some(d) if d.owner == Some(self.me()) && d.state != DeviceState::Deleted => Ok(d),
            _ => Err(DomainError::not_found("device", id)),
        }
    }

    /// My devices (deleted mobiles excluded), ordered by id.
    pub async fn devices<R: Repo>(&self, repo: &R) -> Result<Vec<Device>, DomainError> {
        let mut tx = repo.read().await?;
        let query = DeviceQuery { owner: Some(self.me()), limit: ALL, ..Default::default() };
        let devices = tx.list_devices(&query).await?;
        Ok(devices.into_iter().filter(|d| d.state != DeviceState::Deleted).collect())
    }

    /// One of my devices.
    pub async fn device<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Device, DomainError> {
        let mut tx = repo.read().await?;
        self.mine(&mut tx, id).await
    }

    /// The credentials on one of my devices.
    pub async fn credentials<R: Repo>(
        &self,
        repo: &R,
        device: DeviceId,
    ) -> Result<Vec<Credential>, DomainError> {
        let mut tx = repo.read().await?;
        self.mine(&mut tx, device).await?;
        credentials_of(&mut tx, device).await
    }

    async fn check_may_add_token<T: Tx>(&self, tx: &mut T, policy: &Policy) -> Result<(), DomainError> {
        if !policy.may_add_device {
            return Err(PolicyDenied::AddDeviceDisabled.into());
        }
        let query = DeviceQuery { owner: Some(self.me()), limit: ALL, ..Default::default() };
        let current = tx.list_devices(&query).await?.iter().filter(|d| d.counts_toward_limit()).count();
        if current >= usize::from(policy.max_devices) {
            return Err(PolicyDenied::DeviceLimitReached { max: policy.max_devices, current }.into());
        }
        Ok(())
    }

    /// Whether *Add Device* is available to me now (policy and device count); the error says why
    /// not.
    pub async fn may_add_device<R: Repo>(&self, repo: &R) -> Result<(), DomainError> {
        let mut tx = repo.read().await?;
        let policy = policy_of(&mut tx, &self.p.user).await?;
        self.check_may_add_token(&mut tx, &policy).await
    }

    /// Starts issuing a card or USB key to me: checks the policy, claims the stock device for this
    /// serial (or registers the card), moves it to Issuing and creates the issuance job.
    pub async fn begin_issuance<R: Repo>(
        &self,
        repo: &R,
        card: CardInfo,
    ) -> Result<(Device, Job), DomainError> {
        if card.kind.class() != DeviceClass::Token {
            return Err(ValidationError::new(
                "kind",
                "only smart cards and USB keys are issued through a reader",
            )
            .into());
        }
        let who = self.p.acting();
        let who = &who;
        let card = &card;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let policy = policy_of(&mut tx, &self.p.user).await?;
            self.check_may_add_token(&mut tx, &policy).await?;
            if !policy.accepts_card_model(&card.model) {
                return Err(PolicyDenied::CardModelNotAccepted(card.model.clone()).into());
            }
            let existing = match &card.serial {
                Some(serial) => tx.get_device_by_serial(&card.model, serial).await?,
                None => None,
            };
            let device = match existing {
                Some(d) if d.state == DeviceState::Available && d.owner.is_none() => d,
                Some(d) => {
                    return Err(DomainError::Conflict(format!(
                        "this card is already registered and is {}; an operator must recycle it first",
                        d.state
                    )));
                }
                None => {
                    let mut d = Device::new(card.kind, card.model.clone(), who.at)?;
                    d.serial = card.serial.clone();
                    d.validate()?;
                    tx.insert_device(&d).await?;
                    d
                }
            };
            let mut device = device;
            device.owner = Some(self.me());
            let device = transition(&mut tx, device, DeviceAction::BeginIssuance, who).await?;
            let job = Job::new(JobKind::Issuance, device.id, Some(self.me()), who.at);
            tx.insert_job(&job).await?;
            tx.commit().await?;
            Ok((device, job))
        })
        .await
    }

    /// The holder finished *Change PIN*: a Pending card of mine becomes Active.
    pub async fn confirm_pin_changed<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Device, DomainError> {
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let device = self.mine(&mut tx, id).await?;
            let device = transition(&mut tx, device, DeviceAction::Activate, &self.p.acting()).await?;
            tx.commit().await?;
            Ok(device)
        })
        .await
    }

    /// Issues a one-time enrollment code (QR code / URL) for adding a mobile, valid for `ttl`.
    /// Returns the code to show once.
    pub async fn start_mobile_enrollment<R: Repo>(
        &self,
        repo: &R,
        purpose: EnrollmentPurpose,
        ttl: time::Duration,
    ) -> Result<(EnrollmentCode, secrecy::SecretString), DomainError> {
        let who = self.p.acting();
        let who = &who;
        let purpose = &purpose;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let policy = policy_of(&mut tx, &self.p.user).await?;
            if !policy.may_add_mobile {
                return Err(PolicyDenied::AddMobileDisabled.into());
            }
            if let EnrollmentPurpose::DerivedPiv { sponsor } = &purpose {
                match sponsor {
                    Some(card) => {
                        let card = self.mine(&mut tx, *card).await?;
                        if card.state != DeviceState::Active || card.class() != DeviceClass::Token {
                            return Err(DomainError::Conflict(
                                "the sponsor card must be an active card of yours".into(),
                            ));
                        }
                    }
                    None if policy.derived_piv_requires_sponsor => {
                        return Err(ValidationError::new(
                            "sponsor",
                            "your group's policy requires a sponsor card",
                        )
                        .into());
                    }
                    None => {}
                }
            }
            let (code, secret) = EnrollmentCode::issue(self.me(), purpose.clone(), ttl, who.at)?;
            tx.insert_enrollment_code(&code).await?;
            let event =
                NewAuditEvent::new(who.at, who.actor.clone(), "enrollment_code.issue", &who.operation_id)
                    .target(format!("enrollment_code:{}", code.id))
                    .after(json!({"purpose": code.purpose, "expires_at": code.expires_at.unix_timestamp()}));
            tx.append_audit(event).await?;
            tx.commit().await?;
            Ok((code, secret))
        })
        .await
    }

    /// *Delete Mobile*: revokes the mobile's certificates and removes it.
    pub async fn delete_mobile<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Device, DomainError> {
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let device = self.mine(&mut tx, id).await?;
            if device.class() != DeviceClass::Mobile {
                return Err(ValidationError::new(
                    "device",
                    "only mobiles can be deleted; ask an operator about cards",
                )
                .into());
            }
            let device = transition(&mut tx, device, DeviceAction::Delete, &self.p.acting()).await?;
            tx.commit().await?;
            Ok(device)
        })
        .await
    }
}

/// The help desk: finds users and devices, and moves devices through their lifecycle.
#[derive(Clone, Copy, Debug)]
pub struct Operator<'a> {
    p: &'a Principal,
}

impl Operator<'_> {
    /// Users matching `query`.
    pub async fn find_users<R: Repo>(&self, repo: &R, query: &UserQuery) -> Result<Vec<User>, DomainError> {
        let mut tx = repo.read().await?;
        Ok(tx.list_users(query).await?)
    }

    /// A ticket for the agent to run (or roll back) any job.
    pub async fn job_ticket<R: Repo>(
        &self,
        repo: &R,
        id: JobId,
        purpose: TicketPurpose,
        ttl: time::Duration,
    ) -> Result<(Job, SecretString), DomainError> {
        job_ticket(repo, &self.p.acting(), id, None, purpose, ttl).await
    }

    /// Starts wiping a terminated or failed card that Lanyard personalized: the agent at the card
    /// resets it to factory state, then the device returns to stock.
    pub async fn start_wipe<R: Repo>(
        &self,
        repo: &R,
        device: DeviceId,
        ttl: time::Duration,
    ) -> Result<(Job, SecretString), DomainError> {
        let who = self.p.acting();
        let who = &who;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let d = tx.get_device(device).await?.ok_or_else(|| DomainError::not_found("device", device))?;
            if !matches!(d.state, DeviceState::Terminated | DeviceState::Failed) {
                return Err(DomainError::Conflict(format!(
                    "device {device} is {}; terminate it before wiping it",
                    d.state
                )));
            }
            if d.card_guid.is_none() {
                return Err(DomainError::Conflict(format!(
                    "device {device} was never personalized by Lanyard; reset it with the vendor's tool"
                )));
            }
            let created = create_job(&mut tx, who, JobKind::Wipe, device, self.p.user.id, ttl).await?;
            tx.commit().await?;
            Ok(created)
        })
        .await
    }

    /// Replaces a holder's card: the old one is revoked with `reason` (unless already revoked),
    /// and a new device for the same holder starts issuance with a `replaces` link to it. Returns
    /// the new device, its job and the agent ticket.
    pub async fn replace_device<R: Repo>(
        &self,
        repo: &R,
        old: DeviceId,
        reason: RevocationReason,
        card: CardInfo,
        ttl: time::Duration,
    ) -> Result<(Device, Job, SecretString), DomainError> {
        if card.kind.class() != DeviceClass::Token {
            return Err(ValidationError::new("kind", "only smart cards and USB keys replace a card").into());
        }
        let who = self.p.acting();
        let who = &who;
        let card = &card;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let previous = tx.get_device(old).await?.ok_or_else(|| DomainError::not_found("device", old))?;
            if previous.class() != DeviceClass::Token {
                return Err(DomainError::Conflict(format!("device {old} is not a card or USB key")));
            }
            let owner = previous.owner.ok_or_else(|| {
                DomainError::Conflict(format!("device {old} has no holder to replace it for"))
            })?;
            if previous.state != DeviceState::Revoked {
                transition_with_derived(&mut tx, previous, DeviceAction::Revoke(reason), who).await?;
            }
            let mut device = Device::new(card.kind, card.model.clone(), who.at)?;
            device.serial = card.serial.clone();
            device.links.push(crate::model::DeviceLink { kind: LinkKind::Replaces, target: old });
            device.validate()?;
            tx.insert_device(&device).await?;
            let event = NewAuditEvent::new(who.at, who.actor.clone(), "device.replace", &who.operation_id)
                .target(device_ref(device.id))
                .after(json!({"replaces": old, "reason": reason, "owner": owner}));
            tx.append_audit(event).await?;
            device.owner = Some(owner);
            let device = transition(&mut tx, device, DeviceAction::BeginIssuance, who).await?;
            let (job, ticket) =
                create_job(&mut tx, who, JobKind::Issuance, device.id, self.p.user.id, ttl).await?;
            tx.commit().await?;
            Ok((device, job, ticket))
        })
        .await
    }

    /// Any job.
    pub async fn job<R: Repo>(&self, repo: &R, id: JobId) -> Result<Job, DomainError> {
        job_of(repo, id, None).await
    }

    /// Starts unblocking the PIN of any card in use; the ticket goes to the agent at the card.
    pub async fn start_unlock<R: Repo>(
        &self,
        repo: &R,
        device: DeviceId,
        ttl: time::Duration,
    ) -> Result<(Job, SecretString), DomainError> {
        start_unlock(repo, &self.p.acting(), self.p.user.id, device, None, ttl).await
    }

    /// The user `reference` names: a user id, or else a username (case-insensitive).
    pub async fn user<R: Repo>(&self, repo: &R, reference: &str) -> Result<User, DomainError> {
        let reference = reference.trim();
        let mut tx = repo.read().await?;
        let found = match reference.parse::<UserId>() {
            Ok(id) => tx.get_user(id).await?,
            Err(_) => match Username::parse(&reference.to_ascii_lowercase()) {
                Ok(name) => tx.get_user_by_username(&name).await?,
                Err(_) => None,
            },
        };
        found.ok_or_else(|| DomainError::not_found("user", reference))
    }

    /// Every group and its policy, ordered by name (read-only: only an administrator changes
    /// policy).
    pub async fn groups<R: Repo>(&self, repo: &R) -> Result<Vec<Group>, DomainError> {
        let mut tx = repo.read().await?;
        Ok(tx.list_groups().await?)
    }

    /// Devices matching `query`.
    pub async fn find_devices<R: Repo>(
        &self,
        repo: &R,
        query: &DeviceQuery,
    ) -> Result<Vec<Device>, DomainError> {
        let mut tx = repo.read().await?;
        Ok(tx.list_devices(query).await?)
    }

    /// Any device.
    pub async fn device<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Device, DomainError> {
        let mut tx = repo.read().await?;
        tx.get_device(id).await?.ok_or_else(|| DomainError::not_found("device", id))
    }

    /// Any device's credentials.
    pub async fn credentials<R: Repo>(
        &self,
        repo: &R,
        device: DeviceId,
    ) -> Result<Vec<Credential>, DomainError> {
        let mut tx = repo.read().await?;
        credentials_of(&mut tx, device).await
    }

    /// The audit events about a device, oldest first.
    pub async fn device_history<R: Repo>(
        &self,
        repo: &R,
        device: DeviceId,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, DomainError> {
        let mut tx = repo.read().await?;
        let query = AuditQuery { after_seq, target: Some(device_ref(device)), limit };
        Ok(tx.list_audit(&query).await?)
    }

    async fn act<R: Repo>(
        &self,
        repo: &R,
        id: DeviceId,
        action: DeviceAction,
    ) -> Result<Device, DomainError> {
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let device = tx.get_device(id).await?.ok_or_else(|| DomainError::not_found("device", id))?;
            let device = transition_with_derived(&mut tx, device, action, &self.p.acting()).await?;
            tx.commit().await?;
            Ok(device)
        })
        .await
    }

    /// Activates a Pending device whose holder never completed *Change PIN*.
    pub async fn activate_device<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Device, DomainError> {
        self.act(repo, id, DeviceAction::Activate).await
    }

    /// Activates a Pending card and reveals its initial PIN so the operator can deliver it: the
    /// one time the API shows a card secret. Activation and the `card_secrets.reveal_initial_pin`
    /// audit event commit together; a card without stored secrets is refused unchanged.
    pub async fn activate_and_reveal_initial_pin<R: Repo>(
        &self,
        repo: &R,
        id: DeviceId,
        kek: &crate::secrets::Kek,
    ) -> Result<(Device, SecretString), DomainError> {
        let who = self.p.acting();
        let who = &who;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let device = tx.get_device(id).await?.ok_or_else(|| DomainError::not_found("device", id))?;
            let sealed = tx
                .get_card_secrets(id)
                .await?
                .ok_or_else(|| DomainError::Conflict(format!("device {id} has no stored card secrets")))?;
            let secrets = crate::secrets::CardSecrets::open(&sealed, kek, id)?;
            let device = transition_with_derived(&mut tx, device, DeviceAction::Activate, who).await?;
            let event = NewAuditEvent::new(
                who.at,
                who.actor.clone(),
                "card_secrets.reveal_initial_pin",
                &who.operation_id,
            )
            .target(format!("device:{id}"));
            tx.append_audit(event).await?;
            tx.commit().await?;
            Ok((device, secrets.initial_pin().clone()))
        })
        .await
    }

    /// Suspends an Active or Pending device; its certificates go on hold.
    pub async fn suspend_device<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Device, DomainError> {
        self.act(repo, id, DeviceAction::Suspend).await
    }

    /// Returns a Suspended device to where it was; its held certificates are released.
    pub async fn resume_device<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Device, DomainError> {
        self.act(repo, id, DeviceAction::Resume).await
    }

    /// Revokes a device and its certificates (and devices derived from it).
    pub async fn revoke_device<R: Repo>(
        &self,
        repo: &R,
        id: DeviceId,
        reason: RevocationReason,
    ) -> Result<Device, DomainError> {
        self.act(repo, id, DeviceAction::Revoke(reason)).await
    }

    pub async fn mark_device_lost<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Device, DomainError> {
        self.act(repo, id, DeviceAction::MarkLost).await
    }

    pub async fn mark_device_stolen<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Device, DomainError> {
        self.act(repo, id, DeviceAction::MarkStolen).await
    }

    pub async fn mark_device_damaged<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Device, DomainError> {
        self.act(repo, id, DeviceAction::MarkDamaged).await
    }

    /// Retires a device for good (its certificates and derived devices are revoked).
    pub async fn terminate_device<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Device, DomainError> {
        self.act(repo, id, DeviceAction::Terminate).await
    }

    /// Applies a credential action with one `credential.<action>` audit event.
    async fn credential_act<R: Repo>(
        &self,
        repo: &R,
        id: CredentialId,
        action: CredentialAction,
    ) -> Result<Credential, DomainError> {
        let who = self.p.acting();
        let who = &who;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let mut credential =
                tx.get_credential(id).await?.ok_or_else(|| DomainError::not_found("credential", id))?;
            let before = credential_snapshot(&credential);
            if action == CredentialAction::Release {
                // A suspended (or revoked) device keeps its certificates invalid: releasing one
                // here would make a card reported lost usable again behind the device's back.
                let device = tx
                    .get_device(credential.device)
                    .await?
                    .ok_or_else(|| DomainError::not_found("device", credential.device))?;
                if !matches!(device.state, DeviceState::Active | DeviceState::Pending) {
                    return Err(DomainError::Conflict(format!(
                        "the credential's device is {}; only credentials on an active or pending device \
                         can be released (resume the device instead)",
                        device.state
                    )));
                }
            }
            apply_credential(&mut credential, action, who.at)?;
            tx.update_credential(&credential).await?;
            let event = NewAuditEvent::new(
                who.at,
                who.actor.clone(),
                format!("credential.{}", action.kind()),
                &who.operation_id,
            )
            .target(format!("credential:{id}"))
            .before(before)
            .after(credential_snapshot(&credential));
            tx.append_audit(event).await?;
            tx.commit().await?;
            Ok(credential)
        })
        .await
    }

    /// Revokes one credential (the CRL and OCSP report it with `reason`).
    pub async fn revoke_credential<R: Repo>(
        &self,
        repo: &R,
        id: CredentialId,
        reason: RevocationReason,
    ) -> Result<Credential, DomainError> {
        self.credential_act(repo, id, CredentialAction::Revoke(reason)).await
    }

    /// Puts one credential on hold (certificateHold).
    pub async fn hold_credential<R: Repo>(
        &self,
        repo: &R,
        id: CredentialId,
    ) -> Result<Credential, DomainError> {
        self.credential_act(repo, id, CredentialAction::Hold).await
    }

    /// Releases a held credential back to the state it was held from.
    pub async fn release_credential<R: Repo>(
        &self,
        repo: &R,
        id: CredentialId,
    ) -> Result<Credential, DomainError> {
        self.credential_act(repo, id, CredentialAction::Release).await
    }

    /// Registers a card or USB key. Without an owner it is stock (Available); with one, issuance
    /// to that user begins at once (Issuing), as when the holder starts it through the agent. One
    /// `device.register` audit event (and `device.begin_issuance` with an owner), one unit of work.
    pub async fn register_device<R: Repo>(
        &self,
        repo: &R,
        card: CardInfo,
        owner: Option<UserId>,
    ) -> Result<Device, DomainError> {
        if card.kind.class() != DeviceClass::Token {
            return Err(ValidationError::new(
                "kind",
                "only smart cards and USB keys are registered by operators",
            )
            .into());
        }
        let who = self.p.acting();
        let who = &who;
        let card = &card;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            if let Some(serial) = &card.serial
                && tx.get_device_by_serial(&card.model, serial).await?.is_some()
            {
                return Err(DomainError::Conflict(format!(
                    "a {} with serial {serial} is already registered",
                    card.model
                )));
            }
            let mut device = Device::new(card.kind, card.model.clone(), who.at)?;
            device.serial = card.serial.clone();
            device.validate()?;
            tx.insert_device(&device).await?;
            let event = NewAuditEvent::new(who.at, who.actor.clone(), "device.register", &who.operation_id)
                .target(device_ref(device.id))
                .after(snapshot(&device, &[]));
            tx.append_audit(event).await?;
            if let Some(owner) = owner {
                let user = tx.get_user(owner).await?.ok_or_else(|| DomainError::not_found("user", owner))?;
                device.owner = Some(user.id);
                device = transition(&mut tx, device, DeviceAction::BeginIssuance, who).await?;
            }
            tx.commit().await?;
            Ok(device)
        })
        .await
    }

    /// What the issuance rules need to issue a certificate for device `id` (reserve): the device,
    /// its holder and the holder's policy, read in one unit of work that writes nothing.
    pub async fn issuance_context<R: Repo>(
        &self,
        repo: &R,
        id: DeviceId,
    ) -> Result<(Device, User, Policy), DomainError> {
        let mut tx = repo.read().await?;
        let device = tx.get_device(id).await?.ok_or_else(|| DomainError::not_found("device", id))?;
        let owner = device.owner.ok_or_else(|| {
            DomainError::Conflict(format!(
                "device {id} has no holder; certificates are issued to held devices"
            ))
        })?;
        let holder = tx.get_user(owner).await?.ok_or_else(|| DomainError::not_found("user", owner))?;
        let policy = policy_of(&mut tx, &holder).await?;
        Ok((device, holder, policy))
    }

    /// Records a certificate signed for device `id` (record): its state follows the device as
    /// it is now, one `credential.issue` audit event, one unit of work. See
    /// [`record_certificates`] for a device that changed while the CA was signing.
    pub async fn record_certificate<R: Repo>(
        &self,
        repo: &R,
        id: DeviceId,
        kind: CredentialKind,
    ) -> Result<Credential, DomainError> {
        let who = self.p.acting();
        let (credentials, refused) = retry(repo, || {
            let (who, kind) = (&who, kind.clone());
            async move {
                let mut tx = repo.begin().await?;
                let mut credentials = [Credential::new(id, kind, who.at)];
                let refused = record_certificates(&mut tx, who, id, &mut credentials, None).await?;
                tx.commit().await?;
                Ok::<_, DomainError>((credentials, refused))
            }
        })
        .await?;
        match refused {
            Some(r) => Err(r.into()),
            None => {
                let [credential] = credentials;
                Ok(credential)
            }
        }
    }

    /// Turns a Terminated or Failed token back into unowned stock; its stored card secrets are
    /// discarded (issuance generates new ones).
    pub async fn recycle_device<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Device, DomainError> {
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let device = tx.get_device(id).await?.ok_or_else(|| DomainError::not_found("device", id))?;
            let device = transition(&mut tx, device, DeviceAction::Recycle, &self.p.acting()).await?;
            if tx.get_card_secrets(id).await?.is_some() {
                tx.delete_card_secrets(id).await?;
            }
            tx.commit().await?;
            Ok(device)
        })
        .await
    }
}

/// Administration: groups, policies, users and roles.
#[derive(Clone, Copy, Debug)]
pub struct Admin<'a> {
    p: &'a Principal,
}

/// What an administrator supplies to create a user.
#[derive(Clone, Debug)]
pub struct NewUser {
    pub username: Username,
    pub display_name: String,
    pub email: Option<crate::model::Email>,
    pub group: GroupId,
    pub roles: BTreeSet<Role>,
}

impl Admin<'_> {
    fn audit(&self, action: &str, target: String) -> NewAuditEvent {
        let who = self.p.acting();
        NewAuditEvent::new(who.at, who.actor.clone(), action, &who.operation_id).target(target)
    }

    /// Every group, ordered by name.
    pub async fn groups<R: Repo>(&self, repo: &R) -> Result<Vec<Group>, DomainError> {
        let mut tx = repo.read().await?;
        Ok(tx.list_groups().await?)
    }

    /// Creates a group after validating its name and policy.
    pub async fn create_group<R: Repo>(
        &self,
        repo: &R,
        name: &str,
        policy: Policy,
    ) -> Result<Group, DomainError> {
        let group = Group { id: GroupId::new(), name: name.to_owned(), policy };
        group.validate()?;
        let group = &group;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            tx.insert_group(group).await?;
            let after = json!({"name": group.name, "policy": group.policy});
            tx.append_audit(self.audit("group.create", format!("group:{}", group.id)).after(after)).await?;
            tx.commit().await?;
            Ok(group.clone())
        })
        .await
    }

    /// Replaces a group's policy after validating it.
    pub async fn update_policy<R: Repo>(
        &self,
        repo: &R,
        id: GroupId,
        policy: Policy,
    ) -> Result<Group, DomainError> {
        policy.validate()?;
        let policy = &policy;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let mut group = tx.get_group(id).await?.ok_or_else(|| DomainError::not_found("group", id))?;
            let before = json!(group.policy);
            group.policy = policy.clone();
            tx.update_group(&group).await?;
            let event = self
                .audit("group.update_policy", format!("group:{id}"))
                .before(before)
                .after(json!(group.policy));
            tx.append_audit(event).await?;
            tx.commit().await?;
            Ok(group)
        })
        .await
    }

    /// Creates a user in an existing group.
    pub async fn create_user<R: Repo>(&self, repo: &R, new: NewUser) -> Result<User, DomainError> {
        self.create_user_with_password(repo, new, None).await
    }

    /// Creates a user in an existing group, with an initial password (12 to 1024 characters,
    /// stored as an argon2id hash) when one is given.
    pub async fn create_user_with_password<R: Repo>(
        &self,
        repo: &R,
        new: NewUser,
        password: Option<&secrecy::SecretString>,
    ) -> Result<User, DomainError> {
        let mut user = User::new(new.username, new.display_name, new.group, self.p.at)?;
        user.email = new.email;
        user.roles = new.roles;
        // Hash before the unit of work starts: argon2 takes a while and holds no lock.
        let password = password.map(|p| UserPassword::set(user.id, p, self.p.at)).transpose()?;
        let user = &user;
        let password = &password;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            if tx.get_group(user.group).await?.is_none() {
                return Err(DomainError::not_found("group", user.group));
            }
            if tx.get_user_by_username(&user.username).await?.is_some() {
                return Err(DomainError::Conflict(format!("username {} is taken", user.username)));
            }
            tx.insert_user(user).await?;
            if let Some(password) = &password {
                tx.put_password(password).await?;
            }
            let after = json!({
                "username": user.username,
                "group": user.group,
                "roles": user.roles,
                "password_set": password.is_some(),
            });
            tx.append_audit(self.audit("user.create", format!("user:{}", user.id)).after(after)).await?;
            tx.commit().await?;
            Ok(user.clone())
        })
        .await
    }

    /// Replaces a user's roles. An administrator cannot remove their own administrator role
    /// (someone else must), so the last administrator cannot lock everyone out by accident.
    pub async fn set_roles<R: Repo>(
        &self,
        repo: &R,
        id: UserId,
        roles: BTreeSet<Role>,
    ) -> Result<User, DomainError> {
        if id == self.p.user.id && !roles.contains(&Role::Administrator) {
            return Err(ValidationError::new("roles", "you cannot remove your own administrator role").into());
        }
        let roles = &roles;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let mut user = tx.get_user(id).await?.ok_or_else(|| DomainError::not_found("user", id))?;
            let before = json!({"roles": user.roles});
            user.roles = roles.clone();
            tx.update_user(&user).await?;
            tx.delete_sessions_of(id).await?;
            let event = self
                .audit("user.set_roles", format!("user:{id}"))
                .before(before)
                .after(json!({"roles": user.roles}));
            tx.append_audit(event).await?;
            tx.commit().await?;
            Ok(user)
        })
        .await
    }

    /// Disables or re-enables a user; disabling ends their sessions.
    pub async fn set_disabled<R: Repo>(
        &self,
        repo: &R,
        id: UserId,
        disabled: bool,
    ) -> Result<User, DomainError> {
        if id == self.p.user.id && disabled {
            return Err(ValidationError::new("disabled", "you cannot disable your own account").into());
        }
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let mut user = tx.get_user(id).await?.ok_or_else(|| DomainError::not_found("user", id))?;
            let before = json!({"disabled": user.disabled});
            user.disabled = disabled;
            tx.update_user(&user).await?;
            if disabled {
                tx.delete_sessions_of(id).await?;
            }
            let action = if disabled { "user.disable" } else { "user.enable" };
            let event =
                self.audit(action, format!("user:{id}")).before(before).after(json!({"disabled": disabled}));
            tx.append_audit(event).await?;
            tx.commit().await?;
            Ok(user)
        })
        .await
    }
}

/// Read-only access to the audit log.
#[derive(Clone, Copy, Debug)]
pub struct Auditor<'a> {
    #[allow(dead_code)]
    p: &'a Principal,
}

impl Auditor<'_> {
    /// Audit events matching `query`, by seq.
    pub async fn events<R: Repo>(
        &self,
        repo: &R,
        query: &AuditQuery,
    ) -> Result<Vec<AuditEvent>, DomainError> {
        let mut tx = repo.read().await?;
        Ok(tx.list_audit(query).await?)
    }

    /// Verifies the whole chain, page by page; returns the verified head (its `seq` is the number
    /// of events). Compare it with a head recorded elsewhere to detect a truncated tail.
    pub async fn verify<R: Repo>(&self, repo: &R) -> Result<ChainHead, DomainError> {
        const PAGE: u32 = 1000;
        let mut verifier = ChainVerifier::new();
        loop {
            let mut tx = repo.read().await?;
            let query = AuditQuery { after_seq: verifier.head().seq, target: None, limit: PAGE };
            let page = tx.list_audit(&query).await?;
            for event in &page {
                verifier.push(event)?;
            }
            if page.len() < PAGE as usize {
                return Ok(verifier.head());
            }
        }
    }
}

/// Lanyard acting on its own behalf (issuance engine, enrolment endpoints, sweepers). Audit
/// events name [`Actor::System`].
#[derive(Clone, Debug)]
pub struct System {
    acting: Acting,
}

impl System {
    pub fn new(operation_id: OperationId, at: OffsetDateTime) -> Self {
        Self { acting: Acting { actor: Actor::System, operation_id, at } }
    }

    /// `at` of this actor, for callers stamping records in the same operation.
    pub fn at(&self) -> OffsetDateTime {
        self.acting.at
    }

    fn audit(&self, action: &str, target: String) -> NewAuditEvent {
        NewAuditEvent::new(self.acting.at, self.acting.actor.clone(), action, &self.acting.operation_id)
            .target(target)
    }

    /// Stores a job whose state or checkpoint moved, over the version it was read at; a change
    /// of state is audited (`job.<state>`, before and after). A Running job's lease is extended
    /// to [`JOB_LEASE`] after this actor's time (never shortened) with the write. On success
    /// `job.version` follows the stored row. If anyone else wrote the job since (a rollback request, another server's sweeper), nothing is stored and the
    /// answer is `Store(Stale)`: the caller's copy is out of date and must not be written.
    pub async fn save_job<R: Repo>(&self, repo: &R, job: &mut Job) -> Result<(), DomainError> {
        if job.state == JobState::Running
            && let Some(lease) = job.lease.as_mut()
        {
            lease.expires_at = lease.expires_at.max(self.acting.at + JOB_LEASE);
        }
        let written: &Job = job;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let stored =
                tx.get_job(written.id).await?.ok_or_else(|| DomainError::not_found("job", written.id))?;
            tx.update_job(written).await?;
            if stored.state != written.state {
                tx.append_audit(self.job_event(&stored, written, json!({}))).await?;
            }
            tx.commit().await?;
            Ok::<_, DomainError>(())
        })
        .await?;
        job.version += 1;
        Ok(())
    }

    /// The audit event of a job's change of state from `stored` to `job`; `extra` joins `after`.
    fn job_event(&self, stored: &Job, job: &Job, extra: Value) -> NewAuditEvent {
        let last = job.steps.last().map(|s| json!({"step": s.name, "detail": s.detail}));
        let mut after = json!({"state": job.state, "device": job.device, "last_step": last});
        if let (Value::Object(after), Value::Object(extra)) = (&mut after, extra) {
            after.extend(extra);
        }
        self.audit(&format!("job.{}", job.state), format!("job:{}", job.id))
            .before(json!({"state": stored.state}))
            .after(after)
    }

    /// Redeems an agent ticket (`<secret>` of `<job id>.<secret>`): one conditional update in the
    /// store decides, so of two agents racing with the same ticket exactly one gets the job, now
    /// Running under a lease of server instance `instance`. Audited `job.running` like any
    /// change of state. `None`: the ticket is wrong, used or expired, or the job may not run.
    pub async fn redeem_ticket<R: Repo>(
        &self,
        repo: &R,
        id: JobId,
        presented: &str,
        instance: InstanceId,
    ) -> Result<Option<Job>, DomainError> {
        let at = self.acting.at;
        let hash = TokenHash::of(presented);
        let lease = JobLease::new(instance, at);
        let (hash, lease) = (&hash, &lease);
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let Some(stored) = tx.get_job(id).await? else { return Ok(None) };
            let Some(job) = tx.redeem_job_ticket(id, hash, lease, at).await? else { return Ok(None) };
            let extra =
                json!({"lease_owner": instance, "lease_expires_at": lease.expires_at.unix_timestamp()});
            tx.append_audit(self.job_event(&stored, &job, extra)).await?;
            tx.commit().await?;
            Ok::<_, DomainError>(Some(job))
        })
        .await
    }

    /// Extends the lease of a job this instance runs, to [`JOB_LEASE`] from now. `false`: the job
    /// is no longer Running under this instance's lease, so its session must stop.
    pub async fn renew_lease<R: Repo>(
        &self,
        repo: &R,
        id: JobId,
        instance: InstanceId,
    ) -> Result<bool, DomainError> {
        let until = self.acting.at + JOB_LEASE;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let renewed = tx.renew_job_lease(id, instance, until).await?;
            tx.commit().await?;
            Ok::<_, DomainError>(renewed)
        })
        .await
    }

    /// Seals nothing itself: stores the device's sealed card secrets, its card UUID (CHUID GUID)
    /// and expiry before the first command reaches the card, so a crash after the management key
    /// rotation still leaves the key the card now expects. Audited without any secret.
    pub async fn prepare_card<R: Repo>(
        &self,
        repo: &R,
        device: DeviceId,
        sealed: &SealedCardSecrets,
        card_guid: [u8; 16],
        card_expires_at: OffsetDateTime,
    ) -> Result<Device, DomainError> {
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let mut d =
                tx.get_device(device).await?.ok_or_else(|| DomainError::not_found("device", device))?;
            if d.state != DeviceState::Issuing {
                return Err(DomainError::Conflict(format!("device {device} is {}, not issuing", d.state)));
            }
            tx.put_card_secrets(device, sealed).await?;
            d.card_guid = Some(card_guid);
            d.card_expires_at = Some(card_expires_at);
            d.updated_at = self.acting.at;
            tx.update_device(&d).await?;
            let event = self.audit("device.prepare_card", format!("device:{device}")).after(json!({
                "card_guid": hex::encode(card_guid),
                "card_expires_at": card_expires_at.unix_timestamp(),
                "card_secrets": "sealed",
            }));
            tx.append_audit(event).await?;
            tx.commit().await?;
            Ok(d)
        })
        .await
    }

    /// Records certificates issued for a card in the middle of its personalization (Pending until
    /// the device is activated) together with the job's new checkpoint, in one transaction. The
    /// device is re-checked ([`record_certificates`]): if it stopped being issued meanwhile, the
    /// certificates are recorded revoked, the checkpoint is not stored, and the call fails.
    pub async fn record_issued<R: Repo>(
        &self,
        repo: &R,
        job: &mut Job,
        credentials: &mut [Credential],
    ) -> Result<(), DomainError> {
        if let Some(lease) = job.lease.as_mut() {
            lease.expires_at = lease.expires_at.max(self.acting.at + JOB_LEASE);
        }
        let written: &Job = job;
        // Each run starts from the caller's credentials: a failed run may have changed its copy.
        let (recorded, refused) = retry(repo, || {
            let mut attempt = credentials.to_vec();
            async move {
                let mut tx = repo.begin().await?;
                let refused = record_certificates(
                    &mut tx,
                    &self.acting,
                    written.device,
                    &mut attempt,
                    Some(written.id),
                )
                .await?;
                if refused.is_none() {
                    tx.update_job(written).await?;
                }
                tx.commit().await?;
                Ok::<_, DomainError>((attempt, refused))
            }
        })
        .await?;
        credentials.clone_from_slice(&recorded);
        match refused {
            Some(r) => Err(r.into()),
            None => {
                job.version += 1;
                Ok(())
            }
        }
    }

    /// Records Failed every Running job whose lease has expired: its server stopped (a restart
    /// gives the process a new instance id, so its old leases simply run out) or lost the
    /// database for longer than [`JOB_LEASE`]. Sessions of live servers, which keep renewing
    /// their leases, are left alone, also on a database shared by several servers. Each job is
    /// re-read and decided in its own unit of work, so a lease renewed meanwhile wins. Failed
    /// jobs can be resumed or rolled back with a new ticket. Returns how many were failed.
    pub async fn fail_interrupted_jobs<R: Repo>(&self, repo: &R) -> Result<usize, DomainError> {
        let at = self.acting.at;
        let candidates: Vec<JobId> = {
            let mut tx = repo.read().await?;
            tx.list_unfinished_jobs()
                .await?
                .into_iter()
                .filter(|j| j.lease_expired(at))
                .map(|j| j.id)
                .collect()
        };
        let mut failed = 0;
        for id in candidates {
            let done = retry(repo, || async move {
                let mut tx = repo.begin().await?;
                let Some(mut job) = tx.get_job(id).await? else { return Ok(false) };
                if !job.lease_expired(at) {
                    return Ok(false);
                }
                let stored = job.clone();
                let note = match stored.lease {
                    Some(l) => format!(
                        "the server running the card session stopped (its lease ran out at {})",
                        l.expires_at
                    ),
                    None => "the server stopped during the card session".to_owned(),
                };
                job.record("session", StepOutcome::Failed, Some(note), at)?;
                job.transition(JobState::Failed, at)?;
                tx.update_job(&job).await?;
                let extra = json!({
                    "lease_owner": stored.lease.map(|l| l.owner),
                    "lease_expired_at": stored.lease.map(|l| l.expires_at.unix_timestamp()),
                });
                tx.append_audit(self.job_event(&stored, &job, extra)).await?;
                tx.commit().await?;
                Ok::<_, DomainError>(true)
            })
            .await?;
            failed += usize::from(done);
        }
        Ok(failed)
    }

    /// A wiped card goes back to stock: recycled, its stored card secrets discarded.
    pub async fn recycle_wiped<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Device, DomainError> {
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let device = tx.get_device(id).await?.ok_or_else(|| DomainError::not_found("device", id))?;
            let device = transition(&mut tx, device, DeviceAction::Recycle, &self.acting).await?;
            if tx.get_card_secrets(id).await?.is_some() {
                tx.delete_card_secrets(id).await?;
            }
            tx.commit().await?;
            Ok(device)
        })
        .await
    }

    /// Records what personalization learnt about the card (its serial) on the device.
    pub async fn set_device_serial<R: Repo>(
        &self,
        repo: &R,
        device: DeviceId,
        serial: &str,
    ) -> Result<Device, DomainError> {
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let mut d =
                tx.get_device(device).await?.ok_or_else(|| DomainError::not_found("device", device))?;
            if d.serial.as_deref() != Some(serial) {
                let before = json!({"serial": d.serial});
                d.serial = Some(serial.to_owned());
                d.updated_at = self.acting.at;
                tx.update_device(&d).await?;
                let event = self
                    .audit("device.set_serial", format!("device:{device}"))
                    .before(before)
                    .after(json!({"serial": serial}));
                tx.append_audit(event).await?;
            }
            tx.commit().await?;
            Ok(d)
        })
        .await
    }

    /// Applies a lifecycle action (e.g. `Personalized`, `IssuanceFailed`, `Enrolled`) with its
    /// cascades and audit event.
    pub async fn device_action<R: Repo>(
        &self,
        repo: &R,
        id: DeviceId,
        action: DeviceAction,
    ) -> Result<Device, DomainError> {
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let device = tx.get_device(id).await?.ok_or_else(|| DomainError::not_found("device", id))?;
            let device = transition_with_derived(&mut tx, device, action, &self.acting).await?;
            tx.commit().await?;
            Ok(device)
        })
        .await
    }
}

#[cfg(test)]
mod tests;
