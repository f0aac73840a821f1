//! The domain model: users and groups, policies, devices, credentials, enrollment codes, jobs and
//! access tokens. These are plain data with validation; state changes of devices and credentials go
//! through [`crate::lifecycle`], authorisation through [`crate::authz`].

mod access;
mod agent;
mod credential;
mod device;
mod enrollment;
mod job;
mod passkey;
mod policy;
mod sign_in;
mod user;

pub use access::{ApiToken, Session};
pub use agent::{
    AGENT_SEEN_RESOLUTION, Agent, PAIRING_CODE_ALPHABET, PAIRING_CODE_LEN, PAIRING_CODE_TTL, PairingCode,
};
pub use credential::{CertSlot, Credential, CredentialKind, KeyAlgorithm};
pub use device::{Device, DeviceClass, DeviceKind, DeviceLink, LinkKind};
pub use enrollment::{EnrollmentCode, EnrollmentError, EnrollmentKind, EnrollmentPurpose, ExternalSponsor};
pub use job::{JOB_LEASE, Job, JobError, JobKind, JobLease, JobState, JobStep, StepOutcome};
pub use passkey::{
    CHALLENGE_LEN, ChallengePurpose, Passkey, PasskeyState, WEBAUTHN_CHALLENGE_TTL, WebAuthnChallenge,
};
pub use policy::{
    DEFAULT_FIDO_MIN_PIN_LENGTH, FIDO_MIN_PIN_LENGTH_RANGE, FidoPinMode, FidoPinRuleError, FidoPinRules,
    InitialPinDisplay, PinRuleError, PinRules, Policy, PolicyDenied, PolicyError, PolicyErrors, SlotProfile,
};
pub use sign_in::{PasskeyUserVerification, SignInMethod, SignInPolicy};
pub use user::{Email, Group, Role, User, Username};

use thiserror::Error;

/// A value that does not satisfy the model's rules, naming the field and the rule.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    /// The field (or parameter) at fault, e.g. `"username"`.
    pub field: &'static str,
    /// What is wrong with it, phrased for a person.
    pub reason: String,
}

impl ValidationError {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self { field, reason: reason.into() }
    }
}

/// Checks a free-text field: trimmed, non-empty, at most `max` characters, no control characters.
pub(crate) fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), ValidationError> {
    if value.trim().is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.trim() != value {
        return Err(ValidationError::new(field, "must not start or end with whitespace"));
    }
    let len = value.chars().count();
    if len > max {
        return Err(ValidationError::new(field, format!("must be at most {max} characters, got {len}")));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(ValidationError::new(field, format!("must not contain control character {c:?}")));
    }
    Ok(())
}
