//! The repository traits the store implements (SQLite and PostgreSQL), and nothing else.
//!
//! # Shape
//!
//! All data access happens inside a unit of work. There are two kinds:
//!
//! - [`Repo::begin`] starts a **write** unit of work: a [`Tx`] whose methods (from the
//!   per-aggregate traits below) read and write; [`Tx::commit`] makes the writes durable;
//!   dropping a `Tx` without committing rolls everything back. Run it through [`retry`], which
//!   runs the whole unit again when a concurrent one got in the way.
//! - [`Repo::read`] starts a **read** unit of work: the same [`Tx`] type, but every write through
//!   it is refused with [`StoreError::ReadOnly`] before it reaches the database, and the database
//!   itself runs it read-only. It sees one consistent snapshot, never waits for writers, never
//!   makes them wait and never fails with [`StoreError::Retryable`] because of them. Lookups,
//!   listings and authentication use it; dropping it ends it.
//!
//! # Contract for implementors
//!
//! - **Isolation**: a write `Tx` behaves as if write transactions ran one after another
//!   (serializable). When that cannot be guaranteed because another transaction changed what
//!   this one read, a call or the commit fails with [`StoreError::Retryable`], the unit of work
//!   can only roll back, and the caller runs it again from the start ([`retry`]). (SQLite:
//!   `BEGIN IMMEDIATE`, a busy write lock after the busy timeout is `Retryable`. PostgreSQL:
//!   `SERIALIZABLE`, SQLSTATE 40001 and 40P01 are `Retryable`.)
//! - **Read units of work** see a snapshot of committed data taken at their start (SQLite: at
//!   their first read) and refuse writes with [`StoreError::ReadOnly`].
//! - **Uniqueness**: inserting a duplicate id, username, group name, token or session hash, or a
//!   second device with the same `(model, serial)`, is `Conflict` with a message naming the
//!   field. That is final: running the unit again would fail the same way.
//! - **Updates** of a row that does not exist are `NotFound`.
//! - **Jobs are versioned**: [`JobRepo::update_job`] writes only over the version the caller read
//!   and answers [`StoreError::Stale`] otherwise, so a session holding an old copy cannot undo a
//!   concurrent change; [`JobRepo::redeem_job_ticket`] is one conditional update whose success
//!   the database decides. [`AgentRepo::redeem_pairing_code`] likewise.
//! - **Audit**: [`AuditRepo::append_audit`] reads the current head *inside the transaction*,
//!   seals the event with [`NewAuditEvent::seal`] and inserts it; a concurrent append makes one
//!   of the two fail with `Retryable` (it sealed against a stale head) rather than fork the
//!   chain. Events are never updated or deleted. `before`/`after` are stored as text, `at` with
//!   at least microsecond precision.
//! - **Lists** are ordered as each method says, and return at most `limit` rows (a `limit` of 0
//!   means no rows).
//! - Secrets arrive already encrypted ([`SealedCardSecrets`]); tokens, sessions, enrollment codes,
//!   agent tickets, pairing codes and agent credentials arrive as hashes. The store never sees a plaintext secret.
//! - Every future returned is `Send`, so the server can run operations on a multi-threaded
//!   runtime.

use std::future::Future;
use std::time::Duration;

use thiserror::Error;
use time::OffsetDateTime;

use crate::audit::{AuditEvent, ChainHead, NewAuditEvent};
use crate::ids::{
    AgentId, ApiTokenId, CredentialId, DeviceId, GroupId, InstanceId, JobId, PasskeyId, UserId,
};
use crate::lifecycle::{CredentialState, DeviceState, RevocationReason};
use crate::model::{
    Agent, ApiToken, ChallengePurpose, Credential, Device, DeviceKind, EnrollmentCode, Group, Job, JobLease,
    PairingCode, Passkey, PasskeyState, Role, Session, User, Username, WebAuthnChallenge,
};
use crate::password::UserPassword;
use crate::secrets::{SealedCardSecrets, TokenHash};

/// Every repository trait, for `use lanyard_core::repo::prelude::*;` in generic code (methods of
/// `R::Tx` are only callable with their traits in scope).
pub mod prelude {
    pub use super::{
        AgentRepo, ApiTokenRepo, AuditRepo, ClusterRepo, CredentialRepo, DeviceRepo, EnrollmentCodeRepo,
        GroupRepo, InstallationRepo, JobRepo, PasskeyRepo, PasswordRepo, Repo, RevocationRepo, SecretRepo,
        SessionRepo, ThrottleRepo, Tx, UserRepo, retry,
    };
}

/// What the store reports.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum StoreError {
    /// The row to update or delete does not exist.
    #[error("not found")]
    NotFound,
    /// A uniqueness rule got in the way; the message names the field. Not worth retrying.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A concurrent unit of work got in the way (serialization failure, deadlock, a write lock
    /// not obtained in time). Nothing of this unit of work is committed; running it again from
    /// the start may succeed ([`retry`] does).
    #[error("busy: {0}")]
    Retryable(String),
    /// A write through a read unit of work ([`Repo::read`]); the message names the statement.
    /// A bug in the caller, refused before anything changed.
    #[error("refused: {0}")]
    ReadOnly(String),
    /// The row changed since the caller read it (a job's `version` moved on). Retrying the same
    /// write cannot help: the caller must re-read and decide again, or stop.
    #[error("changed concurrently: {0}")]
    Stale(String),
    /// The database failed (connection, I/O, corrupt row). The message is for logs, not users.
    #[error("storage backend: {0}")]
    Backend(String),
}

/// A database: hands out units of work.
pub trait Repo: Send + Sync {
    type Tx: Tx;

    /// Starts a write unit of work (serializable). Run it through [`retry`].
    fn begin(&self) -> impl Future<Output = Result<Self::Tx, StoreError>> + Send;

    /// Starts a read unit of work: a consistent snapshot that refuses every write with
    /// [`StoreError::ReadOnly`] and neither waits for nor blocks write units of work.
    fn read(&self) -> impl Future<Output = Result<Self::Tx, StoreError>> + Send;

    /// Waits `delay` before [`retry`] runs a unit of work again (the store sleeps on its
    /// runtime; the domain itself has no timer).
    fn pause(&self, delay: Duration) -> impl Future<Output = ()> + Send;

    /// The current revocation epoch ([`RevocationRepo::revocation_epoch`]) as committed now. A
    /// store may answer it with one statement outside any unit of work; this default opens a
    /// read unit of work for it.
    fn revocation_epoch(&self) -> impl Future<Output = Result<u64, StoreError>> + Send {
        async move {
            let mut tx = self.read().await?;
            tx.revocation_epoch().await
        }
    }

    /// Chains the audit events appended and committed so far that are not sealed yet (see
    /// [`crate::audit`]); returns how many it sealed. Servers run a sealer in the background;
    /// this is for tools and tests that need the chain complete now. A store that seals as it
    /// commits has nothing to do.
    fn seal_audit(&self) -> impl Future<Output = Result<u64, StoreError>> + Send {
        std::future::ready(Ok(0))
    }
}

/// How often and how patiently a write unit of work is run again after
/// [`StoreError::Retryable`]: at most `attempts` runs in all; before run *n + 1* a pause drawn
/// uniformly from zero to `min(cap, base × 2^(n-1))` ("full jitter"), so units of work that
/// collided once spread out instead of colliding again in lockstep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl RetryPolicy {
    /// Five runs, pauses of up to 50, 100, 200 and 400 ms: at most 0.75 s of waiting, wide
    /// enough that a burst of audited writers, which all contend for the audit log's head,
    /// drains (a test runs 8 at once on PostgreSQL).
    pub const DEFAULT: Self =
        Self { attempts: 5, base: Duration::from_millis(50), cap: Duration::from_millis(400) };

    /// The pause after `failed` failed runs (1 or more), given `random`, a uniformly random
    /// number: `random / 2^64` of the ceiling.
    pub fn pause(&self, failed: u32, random: u64) -> Duration {
        let doubling = failed.saturating_sub(1).min(31);
        let ceiling = self.base.saturating_mul(1 << doubling).min(self.cap);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        // The product of two u64 fits a u128; shifting by 64 brings it back below `nanos`.
        let scaled = (u128::from(nanos) * u128::from(random)) >> 64;
        Duration::from_nanos(u64::try_from(scaled).unwrap_or(nanos))
    }
}

/// An error that may say "run the unit of work again".
pub trait MaybeRetryable {
    fn is_retryable(&self) -> bool;
}

impl MaybeRetryable for StoreError {
    fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Retryable(_))
    }
}

/// Runs the write unit of work `unit` (everything from [`Repo::begin`] to [`Tx::commit`]) under
/// [`RetryPolicy::DEFAULT`], with pauses drawn from the operating system's random generator.
/// Returns the first result that is not retryable, or the last `Retryable` error once the
/// attempts are used up. `unit` must be safe to run again: it starts its own unit of work and
/// keeps nothing from a failed run.
///
/// ```ignore
/// retry(repo, || async move {
///     let mut tx = repo.begin().await?;
///     // …
///     tx.commit().await?;
///     Ok(value)
/// })
/// .await
/// ```
pub async fn retry<R, T, E, F, Fut>(repo: &R, unit: F) -> Result<T, E>
where
    R: Repo + ?Sized,
    E: MaybeRetryable,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    retry_with(repo, RetryPolicy::DEFAULT, system_random, unit).await
}

/// [`retry`] with an explicit policy and source of randomness (tests use a fixed one).
pub async fn retry_with<R, T, E, F, Fut>(
    repo: &R,
    policy: RetryPolicy,
    mut random: impl FnMut() -> u64,
    mut unit: F,
) -> Result<T, E>
where
    R: Repo + ?Sized,
    E: MaybeRetryable,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut failed = 0;
    loop {
        match unit().await {
            Err(e) if e.is_retryable() && failed + 1 < policy.attempts => {
                failed += 1;
                repo.pause(policy.pause(failed, random())).await;
            }
            result => return result,
        }
    }
}

fn system_random() -> u64 {
    let mut bytes = [0u8; 8];
    // Without randomness the pause is the full ceiling: still bounded, only less spread out.
    match aws_lc_rs::rand::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => u64::MAX,
    }
}

/// A unit of work with access to every aggregate. Dropping it without [`Tx::commit`] rolls back.
pub trait Tx:
    UserRepo
    + GroupRepo
    + DeviceRepo
    + CredentialRepo
    + AuditRepo
    + SecretRepo
    + EnrollmentCodeRepo
    + JobRepo
    + ApiTokenRepo
    + SessionRepo
    + PasswordRepo
    + InstallationRepo
    + AgentRepo
    + PasskeyRepo
    + RevocationRepo
    + ThrottleRepo
    + ClusterRepo
    + Send
{
    /// Makes every write of this unit durable, atomically.
    fn commit(self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Which users to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserQuery {
    /// Case-insensitive substring of username, display name or e-mail.
    pub text: Option<String>,
    pub group: Option<GroupId>,
    pub role: Option<Role>,
    /// Keyset pagination: only usernames sorting after this one.
    pub after: Option<Username>,
    pub limit: u32,
}

/// Users.
pub trait UserRepo: Send {
    fn get_user(&mut self, id: UserId) -> impl Future<Output = Result<Option<User>, StoreError>> + Send;
    fn get_user_by_username(
        &mut self,
        username: &Username,
    ) -> impl Future<Output = Result<Option<User>, StoreError>> + Send;
    /// Ordered by username.
    fn list_users(&mut self, query: &UserQuery)
    -> impl Future<Output = Result<Vec<User>, StoreError>> + Send;
    fn insert_user(&mut self, user: &User) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn update_user(&mut self, user: &User) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Groups and their policies.
pub trait GroupRepo: Send {
    fn get_group(&mut self, id: GroupId) -> impl Future<Output = Result<Option<Group>, StoreError>> + Send;
    /// Ordered by name.
    fn list_groups(&mut self) -> impl Future<Output = Result<Vec<Group>, StoreError>> + Send;
    fn insert_group(&mut self, group: &Group) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn update_group(&mut self, group: &Group) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Which devices to list. Every set field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceQuery {
    pub owner: Option<UserId>,
    pub kind: Option<DeviceKind>,
    /// Any of these states (empty: any state).
    pub states: Vec<DeviceState>,
    /// Devices with a link (of any kind) to this device.
    pub linked_to: Option<DeviceId>,
    /// A manufacturer serial equal to any of these, ignoring ASCII case (empty: any serial).
    /// [`crate::serial::SerialSearch`] turns what an operator typed into these spellings.
    pub serials: Vec<String>,
    /// Keyset pagination: only ids after this one.
    pub after: Option<DeviceId>,
    pub limit: u32,
}

/// Devices.
pub trait DeviceRepo: Send {
    fn get_device(&mut self, id: DeviceId)
    -> impl Future<Output = Result<Option<Device>, StoreError>> + Send;
    /// The device with this manufacturer serial number, if registered.
    fn get_device_by_serial(
        &mut self,
        model: &str,
        serial: &str,
    ) -> impl Future<Output = Result<Option<Device>, StoreError>> + Send;
    /// Ordered by id.
    fn list_devices(
        &mut self,
        query: &DeviceQuery,
    ) -> impl Future<Output = Result<Vec<Device>, StoreError>> + Send;
    fn insert_device(&mut self, device: &Device) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Replaces every field (links included) of the device with the same id.
    fn update_device(&mut self, device: &Device) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Which credentials to list. Every set field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CredentialQuery {
    pub device: Option<DeviceId>,
    /// Any of these states (empty: any state).
    pub states: Vec<CredentialState>,
    /// Certificates whose `not_after` is before this instant (the expiry sweeper).
    pub not_after_before: Option<OffsetDateTime>,
    /// Keyset pagination: only ids after this one.
    pub after: Option<CredentialId>,
    pub limit: u32,
}

/// Credentials.
pub trait CredentialRepo: Send {
    fn get_credential(
        &mut self,
        id: CredentialId,
    ) -> impl Future<Output = Result<Option<Credential>, StoreError>> + Send;
    /// By certificate serial (lowercase hex), for OCSP and CRL.
    fn get_credential_by_serial(
        &mut self,
        serial_hex: &str,
    ) -> impl Future<Output = Result<Option<Credential>, StoreError>> + Send;
    /// Ordered by id.
    fn list_credentials(
        &mut self,
        query: &CredentialQuery,
    ) -> impl Future<Output = Result<Vec<Credential>, StoreError>> + Send;
    fn insert_credential(
        &mut self,
        credential: &Credential,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn update_credential(
        &mut self,
        credential: &Credential,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// What OCSP and a CRL need to know about one certificate credential: its status fields,
/// without the certificate itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationRecord {
    /// Lowercase hex, as [`Credential`]s keep it.
    pub serial_hex: String,
    pub state: CredentialState,
    pub held_from: Option<CredentialState>,
    pub revocation_reason: Option<RevocationReason>,
    pub revoked_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

impl RevocationRecord {
    /// The status fields of a certificate credential.
    pub fn of(c: &Credential) -> Self {
        Self {
            serial_hex: c.serial_hex().to_owned(),
            state: c.state,
            held_from: c.held_from,
            revocation_reason: c.revocation_reason,
            revoked_at: c.revoked_at,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }

    /// Whether a CRL lists it: pending (on hold until its device is active), on hold, revoked,
    /// superseded.
    pub fn is_listed(&self) -> bool {
        LISTED_STATES.contains(&self.state)
    }

    /// When a listed certificate stopped being valid, as its CRL entry says: its issue for a
    /// pending one (on hold until its device is active), otherwise its revocation, or its last
    /// change when no revocation time was kept.
    pub fn listed_since(&self) -> OffsetDateTime {
        let since =
            if self.state == CredentialState::Pending { Some(self.created_at) } else { self.revoked_at };
        since.unwrap_or(self.updated_at)
    }

    /// What its CRL entry is made of, borrowing the serial.
    pub fn listed(&self) -> ListedEntry<'_> {
        ListedEntry {
            serial_hex: &self.serial_hex,
            state: self.state,
            revocation_reason: self.revocation_reason,
            since: self.listed_since(),
        }
    }
}

/// What a CRL entry is made of, borrowed from the row the store is reading, so listing a
/// million certificates allocates nothing per certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListedEntry<'a> {
    /// Lowercase hex.
    pub serial_hex: &'a str,
    pub state: CredentialState,
    pub revocation_reason: Option<RevocationReason>,
    /// [`RevocationRecord::listed_since`].
    pub since: OffsetDateTime,
}

/// The credential states a CRL lists.
pub const LISTED_STATES: [CredentialState; 4] = [
    CredentialState::Pending,
    CredentialState::Revoked,
    CredentialState::OnHold,
    CredentialState::Superseded,
];

/// What revocation publishing (OCSP, CRLs) reads, and the CRL numbering it writes.
pub trait RevocationRepo: Send {
    /// The revocation epoch: a counter that grows in the same unit of work as every change to
    /// what OCSP or a CRL says about any certificate (a credential inserted in a state other
    /// than active, or a change of its state, hold, reason, revocation time or serial). Caches
    /// of OCSP answers and CRLs are valid for exactly one epoch. Inserting an active credential
    /// leaves it unchanged (its serial was unknown before), so "unknown" must not be cached.
    fn revocation_epoch(&mut self) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// The records of those of `serials` (lowercase hex) that exist, in one round trip; at most
    /// 64 serials.
    fn revocation_records(
        &mut self,
        serials: &[String],
    ) -> impl Future<Output = Result<Vec<RevocationRecord>, StoreError>> + Send;
    /// Hands every record a CRL lists ([`LISTED_STATES`]) to `each` as the database returns it,
    /// without collecting them; stops at the first error `each` returns. Returns how many it
    /// handed over.
    fn for_each_listed<F>(&mut self, each: F) -> impl Future<Output = Result<u64, StoreError>> + Send
    where
        F: FnMut(RevocationRecord) -> Result<(), StoreError> + Send;
    /// The same certificates as [`RevocationRepo::for_each_listed`], each as the parts of its
    /// CRL entry borrowed from the row (what a CRL build reads: a store reads only these
    /// columns and allocates nothing per row). By default made from `for_each_listed`.
    fn for_each_listed_entry<F>(
        &mut self,
        mut each: F,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send
    where
        Self: Sized,
        F: FnMut(ListedEntry<'_>) -> Result<(), StoreError> + Send,
    {
        self.for_each_listed(move |r| each(r.listed()))
    }
    /// Takes the next cRLNumber of `scope` (a CRL's name: `issuing`, `issuing/3`, `root`): one
    /// more than the last number taken for it, and at least `floor`. A write.
    fn next_crl_number(
        &mut self,
        scope: &str,
        floor: u64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// Which audit events to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only events with a greater sequence number (0: from the start).
    pub after_seq: u64,
    /// Only events with exactly this target.
    pub target: Option<String>,
    /// Only events with exactly this action (`device.suspend`), or, for a name without a dot,
    /// any action in that family (`device` matches `device.suspend`).
    pub action: Option<String>,
    /// Only events by this actor: a user's username, or the id of a user or API token.
    pub actor: Option<String>,
    /// Only events at or after this instant.
    pub since: Option<OffsetDateTime>,
    /// Only events before this instant.
    pub until: Option<OffsetDateTime>,
    pub limit: u32,
}

/// The audit log: append and read, nothing else.
pub trait AuditRepo: Send {
    /// Appends `event` without reading the chain's head, so concurrent writers do not wait on
    /// each other; the sealer chains it after this unit of work commits. Returns the event as
    /// stored; a store may return it unsealed (`sealed` false, `seq` 0), so callers must not rely
    /// on its `seq` or hashes.
    fn append_audit(
        &mut self,
        event: NewAuditEvent,
    ) -> impl Future<Output = Result<AuditEvent, StoreError>> + Send;
    /// The newest sealed event's seq and hash, or [`ChainHead::GENESIS`] when none is sealed.
    fn audit_head(&mut self) -> impl Future<Output = Result<ChainHead, StoreError>> + Send;
    /// Sealed events ordered by seq (those after `after_seq`), then the unsealed ones (whatever
    /// `after_seq`) in append order, marked `sealed: false`; at most `limit` in all.
    fn list_audit(
        &mut self,
        query: &AuditQuery,
    ) -> impl Future<Output = Result<Vec<AuditEvent>, StoreError>> + Send;
    /// How many committed events the sealer has not chained yet.
    fn unsealed_audit(&mut self) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// Encrypted card secrets, one blob per device.
pub trait SecretRepo: Send {
    /// Inserts or replaces the device's secrets.
    fn put_card_secrets(
        &mut self,
        device: DeviceId,
        sealed: &SealedCardSecrets,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn get_card_secrets(
        &mut self,
        device: DeviceId,
    ) -> impl Future<Output = Result<Option<SealedCardSecrets>, StoreError>> + Send;
    /// Removes them; `NotFound` if there were none.
    fn delete_card_secrets(
        &mut self,
        device: DeviceId,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// One-time enrollment codes (hashes only).
pub trait EnrollmentCodeRepo: Send {
    fn insert_enrollment_code(
        &mut self,
        code: &EnrollmentCode,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn get_enrollment_code_by_hash(
        &mut self,
        hash: &TokenHash,
    ) -> impl Future<Output = Result<Option<EnrollmentCode>, StoreError>> + Send;
    /// Stores the fields that change as the enrolment goes on: `used_at`, `device`, `completed_at`.
    fn update_enrollment_code(
        &mut self,
        code: &EnrollmentCode,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Removes codes that expired before `before`; returns how many.
    fn delete_expired_enrollment_codes(
        &mut self,
        before: OffsetDateTime,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// Card-session jobs.
pub trait JobRepo: Send {
    fn get_job(&mut self, id: JobId) -> impl Future<Output = Result<Option<Job>, StoreError>> + Send;
    /// A device's jobs, oldest first.
    fn list_jobs_for_device(
        &mut self,
        device: DeviceId,
    ) -> impl Future<Output = Result<Vec<Job>, StoreError>> + Send;
    /// Jobs in Created, Running or Failed state (to resume or roll back after a restart),
    /// oldest first.
    fn list_unfinished_jobs(&mut self) -> impl Future<Output = Result<Vec<Job>, StoreError>> + Send;
    /// Stores `job` with the version it carries (0 for a new job).
    fn insert_job(&mut self, job: &Job) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Replaces every field (the step log and lease included) of the row whose version is still
    /// `job.version`, and stores `job.version + 1`; the caller's copy is then one behind, so
    /// after a commit it bumps its own `version`. A row with another version is
    /// [`StoreError::Stale`]; no row at all is `NotFound`.
    fn update_job(&mut self, job: &Job) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Redeems an agent ticket in ONE conditional update: only if job `id` holds exactly this
    /// ticket hash, the ticket has not expired at `at`, and the job is Created or Failed (the rule
    /// of [`Job::check_ticket`]), the job becomes Running under `lease`, its ticket is cleared,
    /// `updated_at` is `at` and its version moves on. Returns the job as stored afterwards, or
    /// `None` when the update matched no row (wrong, used or expired ticket, or a job that may not
    /// run): of two concurrent redemptions at most one gets `Some`.
    fn redeem_job_ticket(
        &mut self,
        id: JobId,
        ticket: &TokenHash,
        lease: &JobLease,
        at: OffsetDateTime,
    ) -> impl Future<Output = Result<Option<Job>, StoreError>> + Send;
    /// Extends the lease of job `id` to `expires_at` if the job is still Running under a lease of
    /// `owner`; `false` otherwise (the session lost the job: someone else changed its state).
    /// Leaves the version alone, so the session's own copy stays current.
    fn renew_job_lease(
        &mut self,
        id: JobId,
        owner: InstanceId,
        expires_at: OffsetDateTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// API tokens (hashes only).
pub trait ApiTokenRepo: Send {
    fn get_api_token(
        &mut self,
        id: ApiTokenId,
    ) -> impl Future<Output = Result<Option<ApiToken>, StoreError>> + Send;
    fn get_api_token_by_hash(
        &mut self,
        hash: &TokenHash,
    ) -> impl Future<Output = Result<Option<ApiToken>, StoreError>> + Send;
    /// A user's tokens, ordered by creation time.
    fn list_api_tokens(
        &mut self,
        user: UserId,
    ) -> impl Future<Output = Result<Vec<ApiToken>, StoreError>> + Send;
    fn insert_api_token(&mut self, token: &ApiToken) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Stores `last_used_at` and `revoked_at`.
    fn update_api_token(&mut self, token: &ApiToken) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Portal sessions (hashes only).
pub trait SessionRepo: Send {
    fn insert_session(&mut self, session: &Session) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn get_session(
        &mut self,
        hash: &TokenHash,
    ) -> impl Future<Output = Result<Option<Session>, StoreError>> + Send;
    /// Stores `last_seen_at` and `expires_at` (sliding expiry).
    fn update_session(&mut self, session: &Session) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Logs out; `NotFound` if there was no such session.
    fn delete_session(&mut self, hash: &TokenHash) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Ends every session of a user (disabled, roles changed); returns how many.
    fn delete_sessions_of(&mut self, user: UserId) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Removes sessions that expired before `before`; returns how many.
    fn delete_expired_sessions(
        &mut self,
        before: OffsetDateTime,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// Local account passwords (argon2id PHC strings only), one per user.
pub trait PasswordRepo: Send {
    fn get_password(
        &mut self,
        user: UserId,
    ) -> impl Future<Output = Result<Option<UserPassword>, StoreError>> + Send;
    /// Inserts or replaces the user's password.
    fn put_password(
        &mut self,
        password: &UserPassword,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

// ---------------------------------------------------------------------------------------------
// The installation record

/// The installation record (see [`crate::installation`]): at most one per database, written once
/// by `lanyard init` and never changed.
pub trait InstallationRepo: Send {
    fn get_installation(
        &mut self,
    ) -> impl Future<Output = Result<Option<crate::installation::Installation>, StoreError>> + Send;
    /// Records the installation; `Conflict` when the database has one already.
    fn insert_installation(
        &mut self,
        installation: &crate::installation::Installation,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Workstation agents and the one-time codes that pair them (hashes only).
pub trait AgentRepo: Send {
    fn insert_pairing_code(
        &mut self,
        code: &PairingCode,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn get_pairing_code(
        &mut self,
        id: crate::ids::PairingCodeId,
    ) -> impl Future<Output = Result<Option<PairingCode>, StoreError>> + Send;
    /// Uses a pairing code up in ONE conditional update: only if a code with this hash exists,
    /// has not been used and has not expired at `at`, its `used_at` becomes `at`. Returns the code
    /// as stored afterwards, or `None` when the update matched no row: of two concurrent
    /// redemptions at most one gets `Some`.
    fn redeem_pairing_code(
        &mut self,
        hash: &TokenHash,
        at: OffsetDateTime,
    ) -> impl Future<Output = Result<Option<PairingCode>, StoreError>> + Send;
    /// Removes codes that expired before `before` (used or not); returns how many.
    fn delete_expired_pairing_codes(
        &mut self,
        before: OffsetDateTime,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    fn insert_agent(&mut self, agent: &Agent) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn get_agent(&mut self, id: AgentId) -> impl Future<Output = Result<Option<Agent>, StoreError>> + Send;
    fn get_agent_by_credential(
        &mut self,
        hash: &TokenHash,
    ) -> impl Future<Output = Result<Option<Agent>, StoreError>> + Send;
    /// A user's agents (revoked ones included), ordered by creation time, then id.
    fn list_agents(&mut self, user: UserId) -> impl Future<Output = Result<Vec<Agent>, StoreError>> + Send;
    /// Stores `last_seen_at` and `revoked_at` (the only fields that change).
    fn update_agent(&mut self, agent: &Agent) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Which passkeys to list. Every set field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PasskeyQuery {
    pub user: Option<UserId>,
    pub device: Option<DeviceId>,
    /// Any of these states (empty: any state).
    pub states: Vec<PasskeyState>,
    pub limit: u32,
}

// ---------------------------------------------------------------------------------------------
// What servers sharing one database coordinate through it

/// Failures counted against a key (a username's failed logins, a source address's refused
/// enrolment codes) so that a throttle holds across every server on the database. Keys arrive
/// hashed ([`TokenHash::of`]): a username typed wrongly may be a password.
pub trait ThrottleRepo: Send {
    /// The times of `key`'s failures in `scope` at or after `since`, newest first, at most
    /// `limit`.
    fn recent_failures(
        &mut self,
        scope: &str,
        key: &TokenHash,
        since: OffsetDateTime,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<OffsetDateTime>, StoreError>> + Send;
    /// Counts a failure of `key` in `scope` at `at`, and drops that key's failures before
    /// `forget_before` (they no longer count).
    fn record_failure(
        &mut self,
        scope: &str,
        key: &TokenHash,
        at: OffsetDateTime,
        forget_before: OffsetDateTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Forgets every failure of `key` in `scope`; returns how many.
    fn clear_failures(
        &mut self,
        scope: &str,
        key: &TokenHash,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Drops every failure before `before`, of any key and scope; returns how many.
    fn prune_failures(
        &mut self,
        before: OffsetDateTime,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// A short-lived note one server leaves the others in the database: which server holds an
/// agent's link, a frame for that link, a card session's question to the portal and the sealed
/// answer. Identified by `(topic, owner, key)`; past `expires_at` it is as good as gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNote {
    pub topic: String,
    /// What the note is about (an agent id, a job id).
    pub owner: String,
    /// Distinguishes notes of one owner (empty when there is one).
    pub key: String,
    /// Not a secret in clear: secrets arrive sealed by the caller.
    pub value: Vec<u8>,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// [`ClusterNote`]s.
pub trait ClusterRepo: Send {
    /// Inserts `note`, replacing one with the same identity.
    fn put_note(&mut self, note: &ClusterNote) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Inserts `note`; `Conflict` when one with the same identity exists (expired or not).
    fn insert_note(&mut self, note: &ClusterNote) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The note, unless it is missing or expired at `now`.
    fn get_note(
        &mut self,
        topic: &str,
        owner: &str,
        key: &str,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Option<ClusterNote>, StoreError>> + Send;
    /// `owner`'s notes in `topic` not expired at `now`, oldest first, at most `limit`.
    fn list_notes(
        &mut self,
        topic: &str,
        owner: &str,
        now: OffsetDateTime,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<ClusterNote>, StoreError>> + Send;
    /// Deletes the note; whether there was one.
    fn delete_note(
        &mut self,
        topic: &str,
        owner: &str,
        key: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Deletes every note that expired before `before`; returns how many.
    fn delete_expired_notes(
        &mut self,
        before: OffsetDateTime,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// Passkey registrations and the one-time WebAuthn challenges (hashes only).
pub trait PasskeyRepo: Send {
    /// `Conflict` naming `passkeys.credential_id` when that credential id is registered already.
    fn insert_passkey(&mut self, passkey: &Passkey) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn get_passkey(
        &mut self,
        id: PasskeyId,
    ) -> impl Future<Output = Result<Option<Passkey>, StoreError>> + Send;
    fn get_passkey_by_credential_id(
        &mut self,
        credential_id: &[u8],
    ) -> impl Future<Output = Result<Option<Passkey>, StoreError>> + Send;
    /// Ordered by creation time, then id.
    fn list_passkeys(
        &mut self,
        query: &PasskeyQuery,
    ) -> impl Future<Output = Result<Vec<Passkey>, StoreError>> + Send;
    /// Stores `sign_count`, `last_used_at`, `state` and `removed_at` (the fields that change).
    fn update_passkey(&mut self, passkey: &Passkey) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn insert_webauthn_challenge(
        &mut self,
        challenge: &WebAuthnChallenge,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Uses a challenge up in ONE conditional update: only if a challenge with this hash exists,
    /// was issued for `purpose` to the browser session `binding`, has not been used and has not
    /// expired at `at`, its `used_at` becomes `at`. Returns it as stored afterwards, or `None`:
    /// of two concurrent redemptions at most one gets `Some`.
    fn redeem_webauthn_challenge(
        &mut self,
        hash: &TokenHash,
        binding: &TokenHash,
        purpose: ChallengePurpose,
        at: OffsetDateTime,
    ) -> impl Future<Output = Result<Option<WebAuthnChallenge>, StoreError>> + Send;
    /// Removes challenges that expired before `before` (used or not); returns how many.
    fn delete_expired_webauthn_challenges(
        &mut self,
        before: OffsetDateTime,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}
