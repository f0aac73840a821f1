//! Jobs: issuance, unlock and wipe sessions, their tickets and leases.

use lanyard_core::ids::{DeviceId, InstanceId, JobId};
use lanyard_core::model::{Job, JobLease, JobState};
use lanyard_core::repo::{JobRepo, StoreError};
use lanyard_core::secrets::TokenHash;
use time::OffsetDateTime;

use super::{id, opt_id, opt_json, to_json};
use crate::rows::{Cols, Reader};
use crate::sql::{Arg, Query, nanos, opt_nanos};
use crate::tx::StoreTx;

macro_rules! job_cols {
    () => {
        "id, kind, device_id, created_by, state, steps, agent_ticket, ticket_expires_at, created_at, updated_at, \
         checkpoint, lease_owner, lease_expires_at, version, agent_id"
    };
}

fn version_arg(job: &Job) -> Result<Arg, StoreError> {
    i64::try_from(job.version)
        .map(Arg::from)
        .map_err(|_| StoreError::Backend(format!("jobs.version {} does not fit a BIGINT", job.version)))
}

fn job_args(job: &Job) -> Result<Vec<Arg>, StoreError> {
    Ok(vec![
        id(job.id),
        job.kind.as_str().into(),
        id(job.device),
        opt_id(job.created_by),
        job.state.as_str().into(),
        to_json("jobs.steps", &job.steps)?.into(),
        job.agent_ticket.map(|h| h.as_bytes().to_vec()).into(),
        opt_nanos("jobs.ticket_expires_at", job.ticket_expires_at)?.into(),
        nanos("jobs.created_at", job.created_at)?.into(),
        nanos("jobs.updated_at", job.updated_at)?.into(),
        job.checkpoint.as_ref().map(|c| c.to_string()).into(),
        opt_id(job.lease.map(|l| l.owner)),
        opt_nanos("jobs.lease_expires_at", job.lease.map(|l| l.expires_at))?.into(),
        version_arg(job)?,
        opt_id(job.agent),
    ])
}

fn decode_job(row: &dyn Cols) -> Result<Job, StoreError> {
    let r = Reader::new(row, "jobs", "id");
    let lease = match (r.opt_parse("lease_owner")?, r.opt_time("lease_expires_at")?) {
        (Some(owner), Some(expires_at)) => Some(JobLease { owner, expires_at }),
        (None, None) => None,
        _ => return Err(r.corrupt("lease_owner", "set without lease_expires_at, or the other way round")),
    };
    let version = r.int("version")?;
    Ok(Job {
        id: r.parse("id")?,
        kind: r.parse("kind")?,
        device: r.parse("device_id")?,
        created_by: r.opt_parse("created_by")?,
        state: r.parse("state")?,
        steps: r.json("steps")?,
        agent_ticket: r.opt_array("agent_ticket")?.map(TokenHash::from_bytes),
        ticket_expires_at: r.opt_time("ticket_expires_at")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
        checkpoint: opt_json(&r, "checkpoint")?,
        version: u64::try_from(version)
            .map_err(|_| r.corrupt("version", format!("{version} is negative")))?,
        lease,
        agent: r.opt_parse("agent_id")?,
    })
}

impl JobRepo for StoreTx {
    async fn get_job(&mut self, job: JobId) -> Result<Option<Job>, StoreError> {
        let q = Query::new(concat!("SELECT ", job_cols!(), " FROM jobs WHERE id = $1"), vec![id(job)]);
        self.fetch_optional(q, decode_job).await
    }

    async fn list_jobs_for_device(&mut self, device: DeviceId) -> Result<Vec<Job>, StoreError> {
        let q = Query::new(
            concat!("SELECT ", job_cols!(), " FROM jobs WHERE device_id = $1 ORDER BY created_at, id"),
            vec![id(device)],
        );
        self.fetch_all(q, decode_job).await
    }

    async fn list_unfinished_jobs(&mut self) -> Result<Vec<Job>, StoreError> {
        let q = Query::new(
            concat!("SELECT ", job_cols!(), " FROM jobs WHERE state IN ($1, $2, $3) ORDER BY created_at, id"),
            vec![
                JobState::Created.as_str().into(),
                JobState::Running.as_str().into(),
                JobState::Failed.as_str().into(),
            ],
        );
        self.fetch_all(q, decode_job).await
    }

    async fn insert_job(&mut self, job: &Job) -> Result<(), StoreError> {
        let q = Query::new(
            concat!(
                "INSERT INTO jobs (",
                job_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
            ),
            job_args(job)?,
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(drop);
        self.end_call(result).await
    }

    async fn update_job(&mut self, job: &Job) -> Result<(), StoreError> {
        let q = Query::new(
            "UPDATE jobs SET kind = $2, device_id = $3, created_by = $4, state = $5, steps = $6, \
             agent_ticket = $7, ticket_expires_at = $8, created_at = $9, updated_at = $10, \
             checkpoint = $11, lease_owner = $12, lease_expires_at = $13, version = $14 + 1, \
             agent_id = $15 WHERE id = $1 AND version = $14",
            job_args(job)?,
        );
        self.begin_call().await?;
        let result = match self.execute(q).await {
            Ok(0) => {
                // Nothing matched: tell a vanished job from one that moved on.
                let q = Query::new("SELECT version FROM jobs WHERE id = $1", vec![id(job.id)]);
                match self.fetch_optional(q, |row| Reader::new(row, "jobs", "id").int("version")).await {
                    Ok(Some(current)) => Err(StoreError::Stale(format!(
                        "job {} is at version {current}, the write was based on version {}",
                        job.id, job.version
                    ))),
                    Ok(None) => Err(StoreError::NotFound),
                    Err(e) => Err(e),
                }
            }
            other => other.map(drop),
        };
        self.end_call(result).await
    }

    async fn redeem_job_ticket(
        &mut self,
        job: JobId,
        ticket: &TokenHash,
        lease: &JobLease,
        at: OffsetDateTime,
    ) -> Result<Option<Job>, StoreError> {
        // The whole rule of `Job::check_ticket` in the WHERE clause: the database, not a copy read
        // earlier, decides whether this redemption wins. Comparing hashes of 256-bit random
        // tickets in SQL leaks nothing useful through timing.
        let q = Query::new(
            "UPDATE jobs SET state = $1, agent_ticket = NULL, ticket_expires_at = NULL, \
             lease_owner = $2, lease_expires_at = $3, updated_at = $4, version = version + 1 \
             WHERE id = $5 AND agent_ticket = $6 AND ticket_expires_at > $4 AND state IN ($7, $8)",
            vec![
                JobState::Running.as_str().into(),
                id(lease.owner),
                nanos("jobs.lease_expires_at", lease.expires_at)?.into(),
                nanos("jobs.updated_at", at)?.into(),
                id(job),
                ticket.as_bytes().to_vec().into(),
                JobState::Created.as_str().into(),
                JobState::Failed.as_str().into(),
            ],
        );
        self.begin_call().await?;
        let result = match self.execute(q).await {
            Ok(0) => Ok(None),
            Ok(_) => {
                let q =
                    Query::new(concat!("SELECT ", job_cols!(), " FROM jobs WHERE id = $1"), vec![id(job)]);
                self.fetch_optional(q, decode_job).await
            }
            Err(e) => Err(e),
        };
        self.end_call(result).await
    }

    async fn renew_job_lease(
        &mut self,
        job: JobId,
        owner: InstanceId,
        expires_at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let q = Query::new(
            "UPDATE jobs SET lease_expires_at = $1 WHERE id = $2 AND state = $3 AND lease_owner = $4",
            vec![
                nanos("jobs.lease_expires_at", expires_at)?.into(),
                id(job),
                JobState::Running.as_str().into(),
                id(owner),
            ],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(|rows| rows > 0);
        self.end_call(result).await
    }
}
