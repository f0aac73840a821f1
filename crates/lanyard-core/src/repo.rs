//! The repository traits the store implements (SQLite and PostgreSQL), and nothing else.
//!
//! # Shape
//!
//! All data access happens inside a unit of work: [`Repo::begin`] returns a [`Tx`], whose methods
//! (from the per-aggregate traits below) read and write; [`Tx::commit`] makes the writes durable;
//! dropping a `Tx` without committing rolls everything back. Read-only work simply drops it.
//!
//! # Contract for implementors
//!
//! - **Isolation**: a `Tx` behaves as if transactions ran one after another (serializable). When
//!   that cannot be guaranteed because another transaction changed what this one read, a write or
//!   the commit fails with [`StoreError::Conflict`]; the caller may retry the whole operation.
//!   (SQLite: `BEGIN IMMEDIATE`. PostgreSQL: `SERIALIZABLE`, mapping SQLSTATE 40001 and 40P01 to
//!   `Conflict`.)
//! - **Uniqueness**: inserting a duplicate id, username, group name, token or session hash, or a
//!   second device with the same `(model, serial)`, is `Conflict` with a message naming the field.
//! - **Updates** of a row that does not exist are `NotFound`.
//! - **Audit**: [`AuditRepo::append_audit`] reads the current head *inside the transaction*,
//!   seals the event with [`NewAuditEvent::seal`] and inserts it; the unique `seq` makes a
//!   concurrent append fail with `Conflict` rather than fork the chain. Events are never updated
//!   or deleted. `before`/`after` are stored as text, `at` with at least microsecond precision.
//! - **Lists** are ordered as each method says, and return at most `limit` rows (a `limit` of 0
//!   means no rows).
//! - Secrets arrive already encrypted ([`SealedCardSecrets`]); tokens, sessions, enrollment codes
//!   and agent tickets arrive as hashes. The store never sees a plaintext secret.
//! - Every future returned is `Send`, so the server can run operations on a multi-threaded
//!   runtime.

use std::future::Future;

use thiserror::Error;
use time::OffsetDateTime;

use crate::audit::{AuditEvent, ChainHead, NewAuditEvent};
use crate::ids::{ApiTokenId, CredentialId, DeviceId, GroupId, JobId, UserId};
use crate::lifecycle::{CredentialState, DeviceState};
use crate::model::{
    ApiToken, Credential, Device, DeviceKind, EnrollmentCode, Group, Job, Role, Session, User, Username,
};
use crate::password::UserPassword;
use crate::secrets::{SealedCardSecrets, TokenHash};

/// Every repository trait, for `use lanyard_core::repo::prelude::*;` in generic code (methods of
/// `R::Tx` are only callable with their traits in scope).
pub mod prelude {
    pub use super::{
        ApiTokenRepo, AuditRepo, CredentialRepo, DeviceRepo, EnrollmentCodeRepo, GroupRepo, InstallationRepo,
        JobRepo, PasswordRepo, Repo, SecretRepo, SessionRepo, Tx, UserRepo,
    };
}

/// What the store reports.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum StoreError {
    /// The row to update or delete does not exist.
    #[error("not found")]
    NotFound,
    /// A uniqueness rule or a concurrent transaction got in the way; the message says which.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database failed (connection, I/O, corrupt row). The message is for logs, not users.
    #[error("storage backend: {0}")]
    Backend(String),
}

/// A database: hands out units of work.
pub trait Repo: Send + Sync {
    type Tx: Tx;

    /// Starts a unit of work.
    fn begin(&self) -> impl Future<Output = Result<Self::Tx, StoreError>> + Send;
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

/// Which audit events to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only events with a greater sequence number (0: from the start).
    pub after_seq: u64,
    /// Only events with exactly this target.
    pub target: Option<String>,
    pub limit: u32,
}

/// The audit log: append and read, nothing else.
pub trait AuditRepo: Send {
    /// Seals `event` against the current head and inserts it (see the module docs); returns the
    /// sealed event.
    fn append_audit(
        &mut self,
        event: NewAuditEvent,
    ) -> impl Future<Output = Result<AuditEvent, StoreError>> + Send;
    /// The last event's seq and hash, or [`ChainHead::GENESIS`] for an empty log.
    fn audit_head(&mut self) -> impl Future<Output = Result<ChainHead, StoreError>> + Send;
    /// Ordered by seq.
    fn list_audit(
        &mut self,
        query: &AuditQuery,
    ) -> impl Future<Output = Result<Vec<AuditEvent>, StoreError>> + Send;
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
    /// Stores `used_at` (the only field that changes).
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
    fn insert_job(&mut self, job: &Job) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Replaces every field (the step log included).
    fn update_job(&mut self, job: &Job) -> impl Future<Output = Result<(), StoreError>> + Send;
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
