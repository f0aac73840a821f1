use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

use crate::ids::{DeviceId, JobId, UserId};
use crate::macros::string_enum;
use crate::secrets::{SecretsError, TokenHash, generate_token};

string_enum! {
    /// What a job does to its device.
    pub enum JobKind ("job kind") {
        /// Personalise a token (DESIGN §4).
        Issuance = "issuance",
        /// Unblock a blocked PIN with the stored PUK; the holder types the new PIN at the agent.
        Unlock = "unlock",
        /// Reset a retired card to factory state and return it to stock.
        Wipe = "wipe",
    }
}

string_enum! {
    /// Where a job is.
    pub enum JobState ("job state") {
        /// Created; waiting for the agent to connect with the ticket.
        Created = "created",
        /// The card session is under way.
        Running = "running",
        Succeeded = "succeeded",
        /// Stopped on an error; the device has not yet been rolled back.
        Failed = "failed",
        /// Stopped and undone: the device is back to a clean state.
        RolledBack = "rolled_back",
    }
}

impl JobState {
    /// Whether the job can change no more.
    pub const fn is_finished(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::RolledBack)
    }
}

string_enum! {
    /// How a recorded step ended.
    pub enum StepOutcome ("step outcome") {
        Started = "started",
        Done = "done",
        Failed = "failed",
    }
}

/// One entry of a job's step log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStep {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// A stable step name, e.g. `"rotate_management_key"`.
    pub name: String,
    pub outcome: StepOutcome,
    /// A short human-readable note (never a secret).
    pub detail: Option<String>,
}

/// A server-driven card session (issuance now; PIN unlock and reset later), recorded step by step
/// so that a crash or a pulled card leaves something to resume or roll back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub kind: JobKind,
    pub device: DeviceId,
    /// Who asked for it (`None` for system-initiated jobs).
    pub created_by: Option<UserId>,
    pub state: JobState,
    pub steps: Vec<JobStep>,
    /// Hash of the one-time agent ticket, until it is redeemed.
    pub agent_ticket: Option<TokenHash>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub ticket_expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Where the card session got to, as the personalization engine's checkpoint (JSON, no
    /// secrets); `None` before the first step.
    pub checkpoint: Option<serde_json::Value>,
}

/// A job operation that does not fit the job's state.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum JobError {
    #[error("job cannot go from {from} to {to}")]
    IllegalTransition { from: JobState, to: JobState },
    #[error("job is {0}, not running, so no step can be recorded")]
    NotRunning(JobState),
    #[error("job has no agent ticket outstanding")]
    NoTicket,
    #[error("agent ticket expired at {0}")]
    TicketExpired(OffsetDateTime),
    #[error("agent ticket does not match")]
    WrongTicket,
}

impl Job {
    /// A new job in state Created.
    pub fn new(kind: JobKind, device: DeviceId, created_by: Option<UserId>, at: OffsetDateTime) -> Self {
        Self {
            id: JobId::new(),
            kind,
            device,
            created_by,
            state: JobState::Created,
            steps: Vec::new(),
            agent_ticket: None,
            ticket_expires_at: None,
            created_at: at,
            updated_at: at,
            checkpoint: None,
        }
    }

    /// Moves the job to `to`. Allowed: Created→Running, Created→Failed, Running→Succeeded,
    /// Running→Failed, Failed→Running (resume), Failed→RolledBack.
    pub fn transition(&mut self, to: JobState, at: OffsetDateTime) -> Result<(), JobError> {
        use JobState::*;
        let ok = matches!(
            (self.state, to),
            (Created, Running)
                | (Created, Failed)
                | (Running, Succeeded)
                | (Running, Failed)
                | (Failed, Running)
                | (Failed, RolledBack)
        );
        if !ok {
            return Err(JobError::IllegalTransition { from: self.state, to });
        }
        self.state = to;
        self.updated_at = at;
        Ok(())
    }

    /// Appends a step to the log (only while Running).
    pub fn record(
        &mut self,
        name: impl Into<String>,
        outcome: StepOutcome,
        detail: Option<String>,
        at: OffsetDateTime,
    ) -> Result<(), JobError> {
        if self.state != JobState::Running {
            return Err(JobError::NotRunning(self.state));
        }
        self.steps.push(JobStep { at, name: name.into(), outcome, detail });
        self.updated_at = at;
        Ok(())
    }

    /// Creates a one-time agent ticket valid for `ttl`, replacing any outstanding one. The
    /// returned secret is handed to the portal once; only its hash stays on the job.
    pub fn issue_ticket(&mut self, ttl: Duration, at: OffsetDateTime) -> Result<SecretString, SecretsError> {
        let (ticket, hash) = generate_token(32)?;
        self.agent_ticket = Some(hash);
        self.ticket_expires_at = Some(at + ttl);
        self.updated_at = at;
        Ok(ticket)
    }

    /// Uses the agent ticket up; changes nothing when it fails.
    pub fn redeem_ticket(&mut self, presented: &str, at: OffsetDateTime) -> Result<(), JobError> {
        let (Some(hash), Some(expires)) = (&self.agent_ticket, self.ticket_expires_at) else {
            return Err(JobError::NoTicket);
        };
        if !hash.matches(presented) {
            return Err(JobError::WrongTicket);
        }
        if at >= expires {
            return Err(JobError::TicketExpired(expires));
        }
        self.agent_ticket = None;
        self.ticket_expires_at = None;
        self.updated_at = at;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use time::macros::datetime;

    #[test]
    fn job_states_and_log() {
        let t = datetime!(2025-01-01 0:00 UTC);
        let mut job = Job::new(JobKind::Issuance, DeviceId::new(), None, t);
        assert_eq!(job.record("x", StepOutcome::Done, None, t), Err(JobError::NotRunning(JobState::Created)));
        assert_eq!(
            job.transition(JobState::Succeeded, t),
            Err(JobError::IllegalTransition { from: JobState::Created, to: JobState::Succeeded })
        );
        job.transition(JobState::Running, t).unwrap();
        job.record("rotate_management_key", StepOutcome::Done, None, t).unwrap();
        job.transition(JobState::Failed, t).unwrap();
        job.transition(JobState::RolledBack, t).unwrap();
        assert!(job.state.is_finished());
        assert_eq!(job.steps.len(), 1);
        assert!(job.transition(JobState::Running, t).is_err());
    }

    #[test]
    fn agent_ticket_is_one_time() {
        let t = datetime!(2025-01-01 0:00 UTC);
        let mut job = Job::new(JobKind::Issuance, DeviceId::new(), None, t);
        assert_eq!(job.redeem_ticket("x", t), Err(JobError::NoTicket));
        let ticket = job.issue_ticket(Duration::minutes(5), t).unwrap();
        assert_eq!(job.redeem_ticket("wrong", t), Err(JobError::WrongTicket));
        assert_eq!(
            job.redeem_ticket(ticket.expose_secret(), t + Duration::minutes(5)),
            Err(JobError::TicketExpired(t + Duration::minutes(5)))
        );
        job.redeem_ticket(ticket.expose_secret(), t + Duration::minutes(1)).unwrap();
        assert_eq!(job.redeem_ticket(ticket.expose_secret(), t), Err(JobError::NoTicket));
    }
}
