//! `lanyard-core`: Lanyard's domain layer — users, groups and policies, devices and credentials
//! with their lifecycles, card secrets under a key-encryption key, the hash-chained audit log,
//! the repository traits storage implements, and capability-typed access to it all.
//!
//! No HTTP, no SQL, no async runtime: the store implements [`repo`]'s traits, the server obtains a
//! capability view from an [`authz::Principal`] and calls its methods.
//!
//! - [`clock`]: the only reader of the wall clock.
//! - [`ids`]: typed UUIDs.
//! - [`model`]: users, groups, [`model::Policy`], devices, credentials, enrollment codes, jobs,
//!   tokens.
//! - [`lifecycle`]: the transition tables and [`lifecycle::apply_device`] /
//!   [`lifecycle::apply_credential`].
//! - [`password`]: argon2id password hashes for local accounts and login checks.
//! - [`secrets`]: [`secrets::CardSecrets`], [`secrets::Kek`], token hashes.
//! - [`audit`]: events, canonical encoding, chain sealing and verification.
//! - [`installation`]: the installation record (root CA fingerprint, KEK id).
//! - [`repo`]: the storage traits and [`repo::StoreError`].
//! - [`authz`]: `Principal` → `SelfService` / `Operator` / `Admin` / `Auditor` views.
//!
//! `docs/domain.md` explains the model in prose.

mod macros;

pub mod audit;
pub mod authz;
pub mod clock;
mod error;
pub mod ids;
pub mod installation;
pub mod lifecycle;
pub mod model;
pub mod password;
pub mod repo;
pub mod secrets;
pub mod serial;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use error::{DomainError, Forbidden};

/// A string that is not one of an enum's stable text forms.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?} (expected one of: {})", expected.join(", "))]
pub struct ParseEnumError {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static [&'static str],
}
