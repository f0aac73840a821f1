use thiserror::Error;

use crate::audit::ChainError;
use crate::lifecycle::LifecycleError;
use crate::model::{EnrollmentError, JobError, PolicyDenied, PolicyErrors, Role, ValidationError};
use crate::repo::StoreError;
use crate::secrets::SecretsError;

/// The principal lacks the capability for what it asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum Forbidden {
    #[error("forbidden: this requires the {0} role")]
    MissingRole(Role),
    #[error("forbidden: the account is disabled")]
    Disabled,
    /// Workstation agents are paired by cardholders, operators (issuing in person at their own
    /// desk) and administrators; an auditor alone has no use for one.
    #[error("forbidden: pairing a workstation requires the user, operator or administrator role")]
    NoWorkstationRole,
}

/// Everything a domain operation can fail with. The server maps these to HTTP once (NotFound →
/// 404, Forbidden → 403, Validation/InvalidPolicy/Lifecycle/PolicyDenied → 4xx with the message,
/// Store::Retryable → 503 with Retry-After, Store::Backend/ReadOnly and Secrets → 500 with only
/// the operation id).
#[derive(Debug, Error)]
pub enum DomainError {
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error(transparent)]
    InvalidPolicy(#[from] PolicyErrors),
    #[error("policy: {0}")]
    PolicyDenied(#[from] PolicyDenied),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Forbidden(#[from] Forbidden),
    /// Also what a user gets for someone else's device: existence is not revealed.
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("invalid input: {0}")]
    Validation(#[from] ValidationError),
    /// The request contradicts the current data (e.g. the card is already issued).
    #[error("conflict: {0}")]
    Conflict(String),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Enrollment(#[from] EnrollmentError),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    AuditChain(#[from] ChainError),
}

impl crate::repo::MaybeRetryable for DomainError {
    fn is_retryable(&self) -> bool {
        matches!(self, DomainError::Store(StoreError::Retryable(_)))
    }
}

impl DomainError {
    pub(crate) fn not_found(kind: &'static str, id: impl ToString) -> Self {
        DomainError::NotFound { kind, id: id.to_string() }
    }
}
