use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

use crate::ids::{AgentId, DeviceId, InstanceId, JobId, UserId};
use crate::macros::string_enum;
use crate::secrets::{SecretsError, TokenHash, generate_token};

string_enum! {
    /// What a job does to its device.
    pub enum JobKind ("job kind") {
        /// Personalise a token (DESIGN §4).
        Issuance = "issuance",
        /// Unblock a blocked PIN with the stored PUK; the holder types the new PIN at the agent, or in
        /// the portal.
        Unlock = "unlock",
        /// Reset a retired card to factory state and return it to stock.
        Wipe = "wipe",
        /// Change the PIN of an issued card from the holder's current PIN to a new one, both
        /// typed by the holder in the portal.
        ChangePin = "change_pin",
        /// Have the holder's own PIV card prove itself before a derived PIV credential is
        /// enrolled (DESIGN §2 C): the PIN typed in the portal is verified on the card, its 9A
        /// certificate read and checked, and a fresh challenge signed with the 9A key. Nothing
        /// on the card changes; the job's device is the card the holder means to present.
        SponsorProof = "sponsor_proof",
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

/// How long a running job stays with its server without a renewal. The server renews far more
/// often (every 30 s, on a timer beside the session), so only a server that stopped, or lost its
/// database, for this long loses its sessions to the sweeper.
pub const JOB_LEASE: Duration = Duration::minutes(2);

/// Which server instance runs a job's card session, and until when it vouches for it. Another
/// server fails the job only once the lease has expired (`docs/issuance.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLease {
    pub owner: InstanceId,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl JobLease {
    /// A lease for `owner` from `at`, [`JOB_LEASE`] long.
    pub fn new(owner: InstanceId, at: OffsetDateTime) -> Self {
        Self { owner, expires_at: at + JOB_LEASE }
    }
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
    /// Where the card session got to, as the personalization engine's checkpoint
    /// (`lanyard_personalize::Checkpoint` as JSON, no secrets); `None` before the first step.
    pub checkpoint: Option<serde_json::Value>,
    /// How many times the stored row has been written. Every update is conditional on it, so a
    /// writer holding an older copy is refused (`StoreError::Stale`) instead of undoing a newer
    /// change (a rollback request, a sweeper's verdict).
    #[serde(default)]
    pub version: u64,
    /// While Running: the server instance running the session and when its claim lapses.
    /// `None` in every other state.
    #[serde(default)]
    pub lease: Option<JobLease>,
    /// The paired agent the outstanding ticket is bound to: the session socket must then present
    /// that agent's credential besides the ticket. Set when a ticket is sent to an agent over its
    /// link, cleared when a plain ticket replaces it; `None` for a ticket handed out as text.
    #[serde(default)]
    pub agent: Option<AgentId>,
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
            version: 0,
            lease: None,
            agent: None,
        }
    }

    /// Moves the job to `to`. Allowed: Created→Running, Created→Failed, Running→Succeeded,
    /// Running→Failed, Failed→Running (resume), Failed→RolledBack. Leaving Running releases the
    /// lease.
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
        if to != Running {
            self.lease = None;
        }
        self.updated_at = at;
        Ok(())
    }

    /// Whether the job is Running with no live lease: its server stopped (or lost the database)
    /// for longer than [`JOB_LEASE`]. A Running job without any lease (written before leases
    /// existed) counts as abandoned too.
    pub fn lease_expired(&self, at: OffsetDateTime) -> bool {
        self.state == JobState::Running && self.lease.is_none_or(|l| at >= l.expires_at)
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

    /// Whether the presented ticket (as its hash) may start the job at `at`: it is the
    /// outstanding one, unexpired, and the job is Created or Failed. The store evaluates the same
    /// rule inside one conditional update (`JobRepo::redeem_job_ticket`); this is its reference.
    pub fn check_ticket(&self, presented: &TokenHash, at: OffsetDateTime) -> Result<(), JobError> {
        let (Some(hash), Some(expires)) = (&self.agent_ticket, self.ticket_expires_at) else {
            return Err(JobError::NoTicket);
        };
        // Hashes of 256-bit random tokens: comparing them leaks nothing about a ticket.
        if hash != presented {
            return Err(JobError::WrongTicket);
        }
        if at >= expires {
            return Err(JobError::TicketExpired(expires));
        }
        if !matches!(self.state, JobState::Created | JobState::Failed) {
            return Err(JobError::IllegalTransition { from: self.state, to: JobState::Running });
        }
        Ok(())
    }

    /// What redeeming a ticket does: the ticket is used up, the job Running under `lease`.
    pub fn start_under(&mut self, lease: JobLease, at: OffsetDateTime) -> Result<(), JobError> {
        self.transition(JobState::Running, at)?;
        self.agent_ticket = None;
        self.ticket_expires_at = None;
        self.lease = Some(lease);
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
        let hash = |s: &str| TokenHash::of(s);
        assert_eq!(job.check_ticket(&hash("x"), t), Err(JobError::NoTicket));
        let ticket = job.issue_ticket(Duration::minutes(5), t).unwrap();
        let good = hash(ticket.expose_secret());
        assert_eq!(job.check_ticket(&hash("wrong"), t), Err(JobError::WrongTicket));
        assert_eq!(
            job.check_ticket(&good, t + Duration::minutes(5)),
            Err(JobError::TicketExpired(t + Duration::minutes(5)))
        );
        let at = t + Duration::minutes(1);
        job.check_ticket(&good, at).unwrap();
        let lease = JobLease::new(InstanceId::new(), at);
        job.start_under(lease, at).unwrap();
        assert_eq!((job.state, job.lease), (JobState::Running, Some(lease)));
        assert_eq!(job.check_ticket(&good, t), Err(JobError::NoTicket));
        assert!(!job.lease_expired(lease.expires_at - Duration::nanoseconds(1)));
        assert!(job.lease_expired(lease.expires_at));
        // Leaving Running releases the lease.
        job.transition(JobState::Failed, at).unwrap();
        assert_eq!(job.lease, None);
        assert!(!job.lease_expired(lease.expires_at));
    }
}
