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

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::audit::{Actor, NewAuditEvent, OperationId};
use crate::error::{DomainError, Forbidden};
use crate::ids::{AgentId, ApiTokenId, DeviceId, JobId, UserId};
use crate::lifecycle::{
    CredentialAction, CredentialState, DeviceAction, DeviceState, RevocationReason, apply_credential,
    apply_device, credential_action_allowed, device_target, new_certificate_state,
};
use crate::model::{
    Agent, ApiToken, CertSlot, Credential, CredentialKind, Device, DeviceClass, DeviceKind, Job, JobKind,
    JobState, JobStep, LinkKind, Policy, PolicyDenied, Role, StepOutcome, User, ValidationError,
};
use crate::repo::prelude::*;
use crate::repo::{CredentialQuery, DeviceQuery};

mod admin;
mod auditor;
mod enrolment;
mod operator;
mod passkeys;
mod renewal;
mod self_service;
mod system;
mod workstations;

pub use admin::{Admin, NewUser};
pub use auditor::Auditor;
pub use enrolment::{MAX_CODE_LIFETIME, Redeemed, STALE_ENROLMENT_GRACE};
pub use operator::Operator;
pub use passkeys::{
    CHALLENGE_GONE, NewPasskey, PasskeyRefused, PasskeySignIn, PasskeyStatus, RegistrationStart,
    SignInCandidate, password_refused, usable_passkeys,
};
pub use renewal::MobileRenewal;
pub use self_service::SelfService;
pub use system::System;
pub use workstations::Workstations;

/// An authenticated, enabled user acting in one request.
#[derive(Clone, Debug)]
pub struct Principal {
    user: User,
    operation_id: OperationId,
    at: OffsetDateTime,
    via_token: Option<ApiTokenId>,
    note: Option<String>,
}

/// Who, when and under which operation id: what every change records; and the note the person
/// gave for it, if any.
#[derive(Clone, Debug)]
struct Acting {
    actor: Actor,
    operation_id: OperationId,
    at: OffsetDateTime,
    note: Option<String>,
}

/// Longest note an operator may attach to an action, in characters.
pub const MAX_NOTE_CHARS: usize = 500;

impl Principal {
    /// `user` acting in the request `operation_id` that started at `at` (from the server's
    /// [`crate::clock::Clock`]). A disabled user gets no principal.
    pub fn new(user: User, operation_id: OperationId, at: OffsetDateTime) -> Result<Self, Forbidden> {
        if user.disabled {
            return Err(Forbidden::Disabled);
        }
        Ok(Self { user, operation_id, at, via_token: None, note: None })
    }

    /// Attaches the reason a person gave for this request's device actions: the `device.<action>`
    /// audit events it makes carry it as `after.note`. Surrounding white space is dropped and an
    /// empty note is none; a note over [`MAX_NOTE_CHARS`] characters or with control characters
    /// other than line breaks is refused.
    pub fn with_note(mut self, note: Option<&str>) -> Result<Self, ValidationError> {
        let note = note.map(str::trim).filter(|n| !n.is_empty());
        if let Some(n) = note {
            if n.chars().count() > MAX_NOTE_CHARS {
                return Err(ValidationError::new("note", format!("at most {MAX_NOTE_CHARS} characters")));
            }
            if n.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
                return Err(ValidationError::new("note", "contains control characters"));
            }
        }
        self.note = note.map(str::to_owned);
        Ok(self)
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
        Acting {
            actor: self.actor(),
            operation_id: self.operation_id.clone(),
            at: self.at,
            note: self.note.clone(),
        }
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

    /// My own workstation agents: pairing, listing and revoking them. Cardholders pair the agent
    /// they issue their cards with; operators the one at their desk for issuing in person; and
    /// administrators theirs. Whoever pairs an agent, it stays bound to their account alone.
    pub fn workstations(&self) -> Result<Workstations<'_>, Forbidden> {
        let may =
            [Role::User, Role::Operator, Role::Administrator].into_iter().any(|r| self.user.has_role(r));
        if may { Ok(Workstations { p: self }) } else { Err(Forbidden::NoWorkstationRole) }
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
    let mut after = snapshot(&device, &credentials);
    if let (Some(note), Some(fields)) = (&who.note, after.as_object_mut()) {
        fields.insert("note".into(), Value::String(note.clone()));
    }
    let event =
        NewAuditEvent::new(who.at, who.actor.clone(), format!("device.{}", action.kind()), &who.operation_id)
            .target(device_ref(device.id))
            .before(before)
            .after(after);
    tx.append_audit(event).await?;
    Ok(device)
}

/// [`transition`], then, when the action says the card may be in someone else's hands
/// ([`DeviceAction::revokes_recent_derived`]) and the holder's policy asks for it, revokes the
/// devices derived from this card within the policy's `derived_recheck_days` before now (one audit
/// event each, same operation id). Older derived credentials, and every one on other actions
/// (damage, retirement, replacement), stay: they follow the identity account (SP 800-157r1).
async fn transition_with_derived<T: Tx>(
    tx: &mut T,
    device: Device,
    action: DeviceAction,
    who: &Acting,
) -> Result<Device, DomainError> {
    let device = transition(tx, device, action, who).await?;
    if !action.revokes_recent_derived() {
        return Ok(device);
    }
    let Some(owner) = device.owner else { return Ok(device) };
    let Some(holder) = tx.get_user(owner).await? else { return Ok(device) };
    let policy = policy_of(tx, &holder).await?;
    if !policy.derived_revoke_on_card_loss {
        return Ok(device);
    }
    let since = who.at - time::Duration::days(i64::from(policy.derived_recheck_days));
    let query = DeviceQuery { linked_to: Some(device.id), limit: ALL, ..Default::default() };
    for derived in tx.list_devices(&query).await? {
        let is_derived = derived.linked(LinkKind::DerivedFrom).any(|t| t == device.id);
        let revoke = DeviceAction::Revoke(RevocationReason::ParentRevoked);
        if is_derived
            && derived.created_at >= since
            && device_target(derived.class(), derived.state, revoke.kind()).is_some()
        {
            transition(tx, derived, revoke, who).await?;
        }
    }
    Ok(device)
}

/// Revokes every derived credential (mobiles linked `derived_from` a card) of `holder`, whose
/// identity account ended or was disabled: derived credentials follow the account (SP
/// 800-157r1 §2.4). One audit event each, in the caller's unit of work.
async fn revoke_derived_of<T: Tx>(tx: &mut T, holder: UserId, who: &Acting) -> Result<usize, DomainError> {
    let query =
        DeviceQuery { owner: Some(holder), kind: Some(DeviceKind::Mobile), limit: ALL, ..Default::default() };
    let revoke = DeviceAction::Revoke(RevocationReason::PrivilegeWithdrawn);
    let mut n = 0;
    for mobile in tx.list_devices(&query).await? {
        let derived = mobile.linked(LinkKind::DerivedFrom).next().is_some()
            || credentials_of(tx, mobile.id).await?.iter().any(|c| {
                matches!(
                    &c.kind,
                    CredentialKind::Certificate { slot: CertSlot::DerivedPivAuthentication, .. }
                )
            });
        if derived && device_target(mobile.class(), mobile.state, revoke.kind()).is_some() {
            transition(tx, mobile, revoke, who).await?;
            n += 1;
        }
    }
    Ok(n)
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

/// Whose card an issuance is for, as its refusals name them: the holder themselves (self-service,
/// "your group's policy"), or a holder an operator issues to in person (named).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IssuingTo {
    Myself,
    InPerson,
}

/// Whether `holder`'s policy lets them receive another smart card or USB key now.
async fn check_may_add_token<T: Tx>(
    tx: &mut T,
    holder: &User,
    policy: &Policy,
    to: IssuingTo,
) -> Result<(), DomainError> {
    let name = || holder.username.to_string();
    if !policy.may_add_device {
        return Err(match to {
            IssuingTo::Myself => PolicyDenied::AddDeviceDisabled,
            IssuingTo::InPerson => PolicyDenied::HolderAddDeviceDisabled { holder: name() },
        }
        .into());
    }
    let query = DeviceQuery { owner: Some(holder.id), limit: ALL, ..Default::default() };
    let current = tx.list_devices(&query).await?.iter().filter(|d| d.counts_toward_limit()).count();
    if current >= usize::from(policy.max_devices) {
        let max = policy.max_devices;
        return Err(match to {
            IssuingTo::Myself => PolicyDenied::DeviceLimitReached { max, current },
            IssuingTo::InPerson => PolicyDenied::HolderDeviceLimitReached { holder: name(), max, current },
        }
        .into());
    }
    Ok(())
}

/// `holder`'s policy must accept the card's model.
fn check_card_model(holder: &User, policy: &Policy, model: &str, to: IssuingTo) -> Result<(), DomainError> {
    if policy.accepts_card_model(model) {
        return Ok(());
    }
    Err(match to {
        IssuingTo::Myself => PolicyDenied::CardModelNotAccepted(model.to_owned()),
        IssuingTo::InPerson => PolicyDenied::HolderCardModelNotAccepted {
            holder: holder.username.to_string(),
            model: model.to_owned(),
        },
    }
    .into())
}

/// Only smart cards and USB keys are issued through a reader.
fn check_token(card: &CardInfo) -> Result<(), DomainError> {
    if card.kind.class() != DeviceClass::Token {
        return Err(ValidationError::new(
            "kind",
            "only smart cards and USB keys are issued through a reader",
        )
        .into());
    }
    Ok(())
}

/// The part of beginning a token's issuance that is the same for a holder adding it and an
/// operator issuing it in person: `holder`'s policy decides (may add, how many, which models),
/// the stock device is claimed or the card registered, and it moves to Issuing owned by
/// `holder`. Does not commit; the caller creates the job.
async fn begin_token_issuance<T: Tx>(
    tx: &mut T,
    holder: &User,
    card: &CardInfo,
    to: IssuingTo,
    who: &Acting,
) -> Result<Device, DomainError> {
    let policy = policy_of(tx, holder).await?;
    check_may_add_token(tx, holder, &policy, to).await?;
    check_card_model(holder, &policy, &card.model, to)?;
    let mut device = claim_or_register(tx, card, who.at).await?;
    device.owner = Some(holder.id);
    transition(tx, device, DeviceAction::BeginIssuance, who).await
}

/// The device record for a card about to be issued: the stock device of that model and serial
/// when there is one (it must be unowned stock), or a new one registered now. Does not commit.
async fn claim_or_register<T: Tx>(
    tx: &mut T,
    card: &CardInfo,
    at: OffsetDateTime,
) -> Result<Device, DomainError> {
    let existing = match &card.serial {
        Some(serial) => tx.get_device_by_serial(&card.model, serial).await?,
        None => None,
    };
    match existing {
        Some(d) if d.state == DeviceState::Available && d.owner.is_none() => Ok(d),
        Some(d) => Err(DomainError::Conflict(format!(
            "this card is already registered and is {}; an operator must recycle it first",
            d.state
        ))),
        None => {
            let mut d = Device::new(card.kind, card.model.clone(), at)?;
            d.serial = card.serial.clone();
            d.validate()?;
            tx.insert_device(&d).await?;
            Ok(d)
        }
    }
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
    /// Resume an issuance that stopped because the key already had a FIDO PIN
    /// ([`STEP_FIDO_PIN_PRESENT`]), the holder having agreed in the portal that the key's FIDO
    /// application — that PIN and every passkey on it — be erased ([`STEP_FIDO_RESET_CONSENTED`]).
    RunErasingFido,
}

/// The log step an issuance stops at when the key already has a FIDO PIN Lanyard did not set.
pub const STEP_FIDO_PIN_PRESENT: &str = "fido_pin_present";
/// The log step that records the holder's consent to erase the key's FIDO application; a
/// resumed session then resets it.
pub const STEP_FIDO_RESET_CONSENTED: &str = "fido_reset_consented";

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
    bound: Option<&AgentBinding>,
) -> Result<(Job, SecretString), DomainError> {
    retry(repo, || job_ticket_once(repo, who, id, owner, purpose, ttl, bound)).await
}

/// Where a ticket goes when the server sends it to a paired agent over its link: the agent (its
/// credential must accompany the ticket) and the reader the session is for (audited).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentBinding {
    pub agent: AgentId,
    pub reader: String,
}

/// Agent `id` if it belongs to `owner` and is not revoked; anything else is NotFound, so nobody
/// learns whether another user's agent exists.
async fn own_agent<R: Repo>(repo: &R, id: AgentId, owner: UserId) -> Result<Agent, DomainError> {
    let mut tx = repo.read().await?;
    match tx.get_agent(id).await? {
        Some(a) if a.user == owner && a.revoked_at.is_none() => Ok(a),
        _ => Err(DomainError::not_found("agent", id)),
    }
}

/// One run of [`job_ticket`]'s unit of work.
async fn job_ticket_once<R: Repo>(
    repo: &R,
    who: &Acting,
    id: JobId,
    owner: Option<UserId>,
    purpose: TicketPurpose,
    ttl: time::Duration,
    bound: Option<&AgentBinding>,
) -> Result<(Job, SecretString), DomainError> {
    let mut tx = repo.begin().await?;
    let mut job = tx.get_job(id).await?.ok_or_else(|| DomainError::not_found("job", id))?;
    let device = tx.get_device(job.device).await?.ok_or_else(|| DomainError::not_found("job", id))?;
    if owner.is_some() && device.owner != owner {
        return Err(DomainError::not_found("job", id));
    }
    match (job.state, purpose) {
        (JobState::Created | JobState::Failed, TicketPurpose::Run) => {}
        (JobState::Failed, TicketPurpose::RunErasingFido) => {
            let stopped_at_fido = job
                .steps
                .iter()
                .rev()
                .find(|s| s.outcome == StepOutcome::Failed && s.name != "session")
                .is_some_and(|s| s.name == STEP_FIDO_PIN_PRESENT);
            if !stopped_at_fido {
                return Err(DomainError::Conflict(format!(
                    "job {id} did not stop at a key's FIDO PIN; there is nothing to agree to erase"
                )));
            }
            job.steps.push(JobStep {
                at: who.at,
                name: STEP_FIDO_RESET_CONSENTED.to_owned(),
                outcome: StepOutcome::Done,
                detail: Some("the holder agreed that the key's FIDO PIN and passkeys be erased".into()),
            });
        }
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
    if purpose != TicketPurpose::Rollback
        && job.steps.last().is_some_and(|s| s.name == STEP_ROLLBACK_REQUESTED)
    {
        return Err(DomainError::Conflict(format!("job {id} is marked for rollback; finish the rollback")));
    }
    let ticket = job.issue_ticket(ttl, who.at)?;
    job.agent = bound.map(|b| b.agent);
    tx.update_job(&job).await?;
    let mut after = json!({"purpose": format!("{purpose:?}").to_lowercase(), "expires_at": job.ticket_expires_at.map(|t| t.unix_timestamp())});
    if let (Some(b), Value::Object(after)) = (bound, &mut after) {
        after.insert("agent".into(), json!(b.agent));
        after.insert("reader".into(), json!(b.reader));
    }
    let event = NewAuditEvent::new(who.at, who.actor.clone(), "job.ticket", &who.operation_id)
        .target(format!("job:{id}"))
        .after(after);
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
        let created = create_job(&mut tx, who, JobKind::Unlock, &d, by, ttl).await?;
        tx.commit().await?;
        Ok(created)
    })
    .await
}

/// Inserts a new job of `kind` on `device` with a one-time agent ticket, audited as `job.create`
/// naming the device, its holder (the subject, when the actor acts on someone else's card) and
/// the note the actor gave.
async fn create_job<T: Tx>(
    tx: &mut T,
    who: &Acting,
    kind: JobKind,
    device: &Device,
    by: UserId,
    ttl: time::Duration,
) -> Result<(Job, SecretString), DomainError> {
    let mut job = Job::new(kind, device.id, Some(by), who.at);
    let ticket = job.issue_ticket(ttl, who.at)?;
    tx.insert_job(&job).await?;
    let mut after = json!({"kind": job.kind, "device": device.id, "holder": device.owner});
    if let (Some(note), Value::Object(fields)) = (&who.note, &mut after) {
        fields.insert("note".into(), Value::String(note.clone()));
    }
    let event = NewAuditEvent::new(who.at, who.actor.clone(), "job.create", &who.operation_id)
        .target(format!("job:{}", job.id))
        .after(after);
    tx.append_audit(event).await?;
    Ok((job, ticket))
}

#[cfg(test)]
mod tests;
