//! [`SelfService`]: a cardholder acting on their own devices.

use secrecy::SecretString;
use serde_json::json;

use crate::audit::NewAuditEvent;
use crate::error::DomainError;
use crate::ids::{DeviceId, JobId, UserId};
use crate::lifecycle::{DeviceAction, DeviceState};
use crate::model::{
    Credential, Device, DeviceClass, EnrollmentCode, EnrollmentPurpose, ExternalSponsor, Job, JobKind,
    Policy, ValidationError,
};
use crate::repo::DeviceQuery;
use crate::repo::prelude::*;
use crate::secrets::TokenHash;

use super::{
    ALL, AgentBinding, CardInfo, IssuingTo, Principal, TicketPurpose, begin_token_issuance,
    check_may_add_token, check_token, create_job, credentials_of, job_of, job_ticket, own_agent, policy_of,
    start_unlock, transition,
};

/// A cardholder acting on their own devices.
#[derive(Clone, Copy, Debug)]
pub struct SelfService<'a> {
    pub(super) p: &'a Principal,
}

impl SelfService<'_> {
    fn me(&self) -> UserId {
        self.p.user.id
    }

    /// A ticket for the agent to run (or roll back) a job on one of my devices.
    pub async fn job_ticket<R: Repo>(
        &self,
        repo: &R,
        id: JobId,
        purpose: TicketPurpose,
        ttl: time::Duration,
    ) -> Result<(Job, SecretString), DomainError> {
        job_ticket(repo, &self.p.acting(), id, Some(self.me()), purpose, ttl, None).await
    }

    /// A ticket for a job on one of my devices, bound to one of my paired agents (`bound`): the
    /// server sends it over that agent's link, and only that agent's credential makes it work.
    /// Audited `job.ticket` with the agent and the reader.
    pub async fn agent_job_ticket<R: Repo>(
        &self,
        repo: &R,
        id: JobId,
        purpose: TicketPurpose,
        ttl: time::Duration,
        bound: &AgentBinding,
    ) -> Result<(Job, SecretString), DomainError> {
        own_agent(repo, bound.agent, self.me()).await?;
        job_ticket(repo, &self.p.acting(), id, Some(self.me()), purpose, ttl, Some(bound)).await
    }

    /// A job on one of my devices.
    pub async fn job<R: Repo>(&self, repo: &R, id: JobId) -> Result<Job, DomainError> {
        job_of(repo, id, Some(self.me())).await
    }

    /// Starts unblocking the PIN of one of my cards; the ticket goes to my agent.
    pub async fn start_unlock<R: Repo>(
        &self,
        repo: &R,
        device: DeviceId,
        ttl: time::Duration,
    ) -> Result<(Job, SecretString), DomainError> {
        start_unlock(repo, &self.p.acting(), self.me(), device, Some(self.me()), ttl).await
    }

    /// Starts changing the PIN of one of my cards: an Active card issued by Lanyard (one whose
    /// card UUID is recorded, so the session can tell it from any other card). The current and
    /// the new PIN are typed in the portal; the job and its ticket are audited, the PINs never.
    pub async fn start_change_pin<R: Repo>(
        &self,
        repo: &R,
        device: DeviceId,
        ttl: time::Duration,
    ) -> Result<(Job, SecretString), DomainError> {
        let who = self.p.acting();
        let who = &who;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let d = self.mine(&mut tx, device).await?;
            if d.state != DeviceState::Active {
                return Err(DomainError::Conflict(format!(
                    "device {device} is {}; only an active card's PIN is changed",
                    d.state
                )));
            }
            if d.card_guid.is_none() {
                return Err(DomainError::Conflict(format!(
                    "device {device} was not issued by Lanyard, so its card cannot be recognised"
                )));
            }
            let created = create_job(&mut tx, who, JobKind::ChangePin, &d, self.me(), ttl).await?;
            tx.commit().await?;
            Ok(created)
        })
        .await
    }

    /// Starts a sponsor proof with one of my cards (derived PIV, DESIGN §2 C): an Active card
    /// issued by Lanyard. The session verifies the PIN typed in the portal on the card and has
    /// it sign a fresh challenge; it changes nothing on the card. The job and its ticket are
    /// audited, the PIN never.
    pub async fn start_sponsor_proof<R: Repo>(
        &self,
        repo: &R,
        device: DeviceId,
        ttl: time::Duration,
    ) -> Result<(Job, SecretString), DomainError> {
        let who = self.p.acting();
        let who = &who;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let d = self.mine(&mut tx, device).await?;
            if d.class() != DeviceClass::Token || d.card_guid.is_none() {
                return Err(DomainError::Conflict(format!(
                    "device {device} is not a card issued by Lanyard, so it cannot sponsor a derived credential"
                )));
            }
            if d.state != DeviceState::Active {
                return Err(DomainError::Conflict(format!(
                    "device {device} is {}; only an active card sponsors a derived credential",
                    d.state
                )));
            }
            let created = create_job(&mut tx, who, JobKind::SponsorProof, &d, self.me(), ttl).await?;
            tx.commit().await?;
            Ok(created)
        })
        .await
    }

    /// Loads one of my devices; another user's device, or a deleted mobile, is NotFound.
    async fn mine<T: Tx>(&self, tx: &mut T, id: DeviceId) -> Result<Device, DomainError> {
        match tx.get_device(id).await? {
            Some(d) if d.owner == Some(self.me()) && d.state != DeviceState::Deleted => Ok(d),
            _ => Err(DomainError::not_found("device", id)),
        }
    }

    /// My devices (deleted mobiles excluded), ordered by id.
    pub async fn devices<R: Repo>(&self, repo: &R) -> Result<Vec<Device>, DomainError> {
        let mut tx = repo.read().await?;
        let query = DeviceQuery { owner: Some(self.me()), limit: ALL, ..Default::default() };
        let devices = tx.list_devices(&query).await?;
        Ok(devices.into_iter().filter(|d| d.state != DeviceState::Deleted).collect())
    }

    /// The card sessions (jobs) of one of my devices, as the store lists them.
    pub async fn device_jobs<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Vec<Job>, DomainError> {
        let mut tx = repo.read().await?;
        self.mine(&mut tx, id).await?;
        Ok(tx.list_jobs_for_device(id).await?)
    }

    /// One of my devices.
    pub async fn device<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Device, DomainError> {
        let mut tx = repo.read().await?;
        self.mine(&mut tx, id).await
    }

    /// The credentials on one of my devices.
    pub async fn credentials<R: Repo>(
        &self,
        repo: &R,
        device: DeviceId,
    ) -> Result<Vec<Credential>, DomainError> {
        let mut tx = repo.read().await?;
        self.mine(&mut tx, device).await?;
        credentials_of(&mut tx, device).await
    }

    /// Whether *Add Device* is available to me now (policy and device count); the error says why
    /// not.
    pub async fn may_add_device<R: Repo>(&self, repo: &R) -> Result<(), DomainError> {
        let mut tx = repo.read().await?;
        let policy = policy_of(&mut tx, &self.p.user).await?;
        check_may_add_token(&mut tx, &self.p.user, &policy, IssuingTo::Myself).await
    }

    /// My group's policy, for showing what I may do (the checks themselves stay in the actions).
    pub async fn policy<R: Repo>(&self, repo: &R) -> Result<Policy, DomainError> {
        let mut tx = repo.read().await?;
        policy_of(&mut tx, &self.p.user).await
    }

    /// Starts issuing a card or USB key to me: checks the policy, claims the stock device for this
    /// serial (or registers the card), moves it to Issuing and creates the issuance job.
    pub async fn begin_issuance<R: Repo>(
        &self,
        repo: &R,
        card: CardInfo,
    ) -> Result<(Device, Job), DomainError> {
        check_token(&card)?;
        let who = self.p.acting();
        let who = &who;
        let card = &card;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let device = begin_token_issuance(&mut tx, &self.p.user, card, IssuingTo::Myself, who).await?;
            let job = Job::new(JobKind::Issuance, device.id, Some(self.me()), who.at);
            tx.insert_job(&job).await?;
            tx.commit().await?;
            Ok((device, job))
        })
        .await
    }

    /// The holder finished *Change PIN*: a Pending card of mine becomes Active.
    pub async fn confirm_pin_changed<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Device, DomainError> {
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let device = self.mine(&mut tx, id).await?;
            let device = transition(&mut tx, device, DeviceAction::Activate, &self.p.acting()).await?;
            tx.commit().await?;
            Ok(device)
        })
        .await
    }

    /// Issues a one-time enrollment code (QR code / URL) for adding a mobile, valid for `ttl` (at
    /// most [`super::MAX_CODE_LIFETIME`]) and bound to the portal session `session` when given
    /// (the code dies with it). Refused under the policy (the kind is off, or `max_mobiles`
    /// reached); for a derived credential the sponsor card must be an Active card of mine, and a
    /// code without a sponsor needs a policy without the sponsor step. Returns the code to show
    /// once.
    pub async fn start_mobile_enrollment<R: Repo>(
        &self,
        repo: &R,
        purpose: EnrollmentPurpose,
        ttl: time::Duration,
        session: Option<TokenHash>,
    ) -> Result<(EnrollmentCode, secrecy::SecretString), DomainError> {
        if ttl <= time::Duration::ZERO || ttl > super::MAX_CODE_LIFETIME {
            return Err(ValidationError::new(
                "ttl",
                format!(
                    "enrolment codes live 1 second to {} minutes",
                    super::MAX_CODE_LIFETIME.whole_minutes()
                ),
            )
            .into());
        }
        let who = self.p.acting();
        let who = &who;
        let purpose = &purpose;
        let session = &session;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let policy = policy_of(&mut tx, &self.p.user).await?;
            super::enrolment::check_may_add_mobile(&mut tx, &self.p.user, &policy, purpose.kind()).await?;
            if let EnrollmentPurpose::DerivedPiv { sponsor, external_sponsor } = &purpose {
                match (sponsor, external_sponsor) {
                    (Some(_), Some(_)) => {
                        return Err(ValidationError::new(
                            "sponsor",
                            "a derived credential has one sponsor card: a Lanyard card or a card of an \
                             imported root, not both",
                        )
                        .into());
                    }
                    (None, Some(external)) => {
                        // The card proved itself to the server (its certificate path, revocation
                        // status, owner and a signed challenge); Lanyard keeps no device for it.
                        // The names are checked again here, as anything stored is.
                        ExternalSponsor::new(&external.issuer, &external.serial_hex)?;
                    }
                    (Some(card), None) => {
                        let card = self.mine(&mut tx, *card).await?;
                        if card.state != DeviceState::Active || card.class() != DeviceClass::Token {
                            return Err(DomainError::Conflict(
                                "the sponsor card must be an active card of yours".into(),
                            ));
                        }
                    }
                    (None, None) if policy.derived_piv_requires_sponsor => {
                        return Err(ValidationError::new(
                            "sponsor",
                            "your group's policy requires a sponsor card",
                        )
                        .into());
                    }
                    (None, None) => {}
                }
            }
            let (mut code, secret) = EnrollmentCode::issue(self.me(), purpose.clone(), ttl, who.at)?;
            code.session = *session;
            tx.insert_enrollment_code(&code).await?;
            let event =
                NewAuditEvent::new(who.at, who.actor.clone(), "enrollment_code.issue", &who.operation_id)
                    .target(format!("enrollment_code:{}", code.id))
                    .after(json!({"purpose": code.purpose, "expires_at": code.expires_at.unix_timestamp()}));
            tx.append_audit(event).await?;
            tx.commit().await?;
            Ok((code, secret))
        })
        .await
    }

    /// *Delete Mobile*: revokes the mobile's certificates and removes it.
    pub async fn delete_mobile<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Device, DomainError> {
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let device = self.mine(&mut tx, id).await?;
            if device.class() != DeviceClass::Mobile {
                return Err(ValidationError::new(
                    "device",
                    "only mobiles can be deleted; ask an operator about cards",
                )
                .into());
            }
            let device = transition(&mut tx, device, DeviceAction::Delete, &self.p.acting()).await?;
            tx.commit().await?;
            Ok(device)
        })
        .await
    }

    /// Whether I may start a mobile enrolment of `kind` now: the refusal
    /// [`start_mobile_enrollment`](Self::start_mobile_enrollment) would give for the policy's
    /// flag or its `max_mobiles` (the portal shows it on the disabled button). Reads only; the
    /// sponsor card of a derived credential is not looked at.
    pub async fn may_add_mobile<R: Repo>(
        &self,
        repo: &R,
        kind: crate::model::EnrollmentKind,
    ) -> Result<(), DomainError> {
        let mut tx = repo.read().await?;
        let policy = policy_of(&mut tx, &self.p.user).await?;
        super::enrolment::check_may_add_mobile(&mut tx, &self.p.user, &policy, kind).await
    }
}
