//! [`System`]: Lanyard acting on its own behalf.

use secrecy::SecretString;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::audit::{Actor, NewAuditEvent, OperationId};
use crate::error::DomainError;
use crate::ids::{DeviceId, InstanceId, JobId};
use crate::lifecycle::{DeviceAction, DeviceState};
use crate::model::{
    AGENT_SEEN_RESOLUTION, Agent, Credential, Device, JOB_LEASE, Job, JobLease, JobState, PairingCode,
    StepOutcome, User,
};
use crate::repo::prelude::*;
use crate::secrets::{SealedCardSecrets, TokenHash};

use super::{Acting, record_certificates, transition, transition_with_derived};

/// Lanyard acting on its own behalf (issuance engine, enrolment endpoints, sweepers). Audit
/// events name [`Actor::System`].
#[derive(Clone, Debug)]
pub struct System {
    acting: Acting,
}

impl System {
    pub fn new(operation_id: OperationId, at: OffsetDateTime) -> Self {
        Self { acting: Acting { actor: Actor::System, operation_id, at, note: None } }
    }

    pub(super) fn acting(&self) -> &Acting {
        &self.acting
    }

    /// `at` of this actor, for callers stamping records in the same operation.
    pub fn at(&self) -> OffsetDateTime {
        self.acting.at
    }

    pub(super) fn audit(&self, action: &str, target: String) -> NewAuditEvent {
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

    /// Records what a card session did to a security key's FIDO application
    /// (`device.fido_pin`): the step, and `after` as the caller describes it (mode, minimum PIN
    /// length, whether a PIN was set, changed or forced to change, whether the key was reset).
    /// Never a PIN: the callers pass none, and this records only what it is given.
    pub async fn audit_fido<R: Repo>(
        &self,
        repo: &R,
        device: DeviceId,
        step: &str,
        after: Value,
    ) -> Result<(), DomainError> {
        let after = &after;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let mut detail = json!({"step": step});
            if let (Value::Object(d), Value::Object(a)) = (&mut detail, after.clone()) {
                d.extend(a);
            }
            tx.append_audit(self.audit("device.fido_pin", format!("device:{device}")).after(detail)).await?;
            tx.commit().await?;
            Ok::<_, DomainError>(())
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

    /// Redeems a pairing code (as typed, or from a `lanyard://pair` link) for the workstation
    /// `host_name`: one conditional update in the store uses the code up, so of two agents racing
    /// with the same code exactly one is paired. The new agent belongs to the user who asked for
    /// the code; its credential is returned once (only its hash is stored). Audited `agent.pair`
    /// without any secret.
    ///
    /// A malformed code or host name is a validation error and uses nothing up. `None`: the code
    /// is wrong, used or expired, or its user has been disabled meanwhile — deliberately one
    /// answer, so a caller cannot tell which.
    pub async fn pair_agent<R: Repo>(
        &self,
        repo: &R,
        presented: &str,
        host_name: &str,
    ) -> Result<Option<(Agent, SecretString)>, DomainError> {
        let hash = PairingCode::hash_of(presented)?;
        Agent::check_host_name(host_name)?;
        let at = self.acting.at;
        let hash = &hash;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let Some(code) = tx.redeem_pairing_code(hash, at).await? else { return Ok(None) };
            // Dropping the unit of work keeps the code unused for a user who is enabled again.
            match tx.get_user(code.user).await? {
                Some(user) if !user.disabled => {}
                _ => return Ok(None),
            }
            let (agent, secret) = Agent::pair(code.user, host_name, at)?;
            tx.insert_agent(&agent).await?;
            let event = self.audit("agent.pair", format!("agent:{}", agent.id)).after(json!({
                "user": agent.user,
                "host_name": agent.host_name,
                "pairing_code": code.id,
            }));
            tx.append_audit(event).await?;
            tx.commit().await?;
            Ok::<_, DomainError>(Some((agent, secret)))
        })
        .await
    }

    /// The agent whose credential is `presented`, and its user, if the agent is not revoked and
    /// the user exists and is enabled. Notes the use in `last_seen_at` (at most once per
    /// [`AGENT_SEEN_RESOLUTION`]; bookkeeping, not audited, like an API token's last use).
    pub async fn authenticate_agent<R: Repo>(
        &self,
        repo: &R,
        presented: &str,
    ) -> Result<Option<(Agent, User)>, DomainError> {
        let at = self.acting.at;
        let hash = TokenHash::of(presented);
        let found = {
            let mut tx = repo.read().await?;
            match tx.get_agent_by_credential(&hash).await? {
                Some(agent) if agent.revoked_at.is_none() => {
                    tx.get_user(agent.user).await?.filter(|u| !u.disabled).map(|user| (agent, user))
                }
                _ => None,
            }
        };
        let Some((agent, user)) = found else { return Ok(None) };
        if agent.last_seen_at.is_some_and(|t| at - t < AGENT_SEEN_RESOLUTION) {
            return Ok(Some((agent, user)));
        }
        // Read again inside the write: a revocation that committed since the read wins.
        let id = agent.id;
        let agent = retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let Some(mut agent) = tx.get_agent(id).await?.filter(|a| a.revoked_at.is_none()) else {
                return Ok(None);
            };
            if agent.last_seen_at.is_none_or(|t| at - t >= AGENT_SEEN_RESOLUTION) {
                agent.last_seen_at = Some(at);
                tx.update_agent(&agent).await?;
                tx.commit().await?;
            }
            Ok::<_, DomainError>(Some(agent))
        })
        .await?;
        Ok(agent.map(|a| (a, user)))
    }
}
