//! [`Operator`]: the help desk's view of every user's devices.

use secrecy::SecretString;
use serde_json::json;

use crate::audit::{AuditEvent, NewAuditEvent};
use crate::error::DomainError;
use crate::ids::{CredentialId, DeviceId, JobId, UserId};
use crate::lifecycle::{CredentialAction, DeviceAction, DeviceState, RevocationReason, apply_credential};
use crate::model::{
    Credential, CredentialKind, Device, DeviceClass, Group, Job, JobKind, LinkKind, Policy, Role, User,
    Username, ValidationError,
};
use crate::repo::prelude::*;
use crate::repo::{AuditQuery, DeviceQuery, UserQuery};
use crate::serial::SerialSearch;

use super::{
    AgentBinding, CardInfo, IssuingTo, Principal, TicketPurpose, begin_token_issuance, check_card_model,
    check_may_add_token, check_token, claim_or_register, create_job, credential_snapshot, credentials_of,
    device_ref, job_of, job_ticket, own_agent, policy_of, record_certificates, snapshot, start_unlock,
    transition, transition_with_derived,
};

/// The life of the ticket a job is created with when it is never handed out (the session gets a
/// fresh one, bound to an agent): it lapses at once.
const TICKET_UNUSED: time::Duration = time::Duration::ZERO;

/// The help desk: finds users and devices, and moves devices through their lifecycle.
#[derive(Clone, Copy, Debug)]
pub struct Operator<'a> {
    pub(super) p: &'a Principal,
}

impl Operator<'_> {
    /// Users matching `query`.
    pub async fn find_users<R: Repo>(&self, repo: &R, query: &UserQuery) -> Result<Vec<User>, DomainError> {
        let mut tx = repo.read().await?;
        Ok(tx.list_users(query).await?)
    }

    /// A ticket for the agent to run (or roll back) any job.
    pub async fn job_ticket<R: Repo>(
        &self,
        repo: &R,
        id: JobId,
        purpose: TicketPurpose,
        ttl: time::Duration,
    ) -> Result<(Job, SecretString), DomainError> {
        job_ticket(repo, &self.p.acting(), id, None, purpose, ttl, None).await
    }

    /// A ticket for any job, bound to one of the operator's own paired agents (`bound`), for a
    /// card issued in person at the operator's desk. Another user's agent is NotFound.
    pub async fn agent_job_ticket<R: Repo>(
        &self,
        repo: &R,
        id: JobId,
        purpose: TicketPurpose,
        ttl: time::Duration,
        bound: &AgentBinding,
    ) -> Result<(Job, SecretString), DomainError> {
        own_agent(repo, bound.agent, self.p.user.id).await?;
        job_ticket(repo, &self.p.acting(), id, None, purpose, ttl, Some(bound)).await
    }

    /// Starts wiping a terminated or failed card that Lanyard personalized: the agent at the card
    /// resets it to factory state, then the device returns to stock.
    pub async fn start_wipe<R: Repo>(
        &self,
        repo: &R,
        device: DeviceId,
        ttl: time::Duration,
    ) -> Result<(Job, SecretString), DomainError> {
        let who = self.p.acting();
        let who = &who;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let d = tx.get_device(device).await?.ok_or_else(|| DomainError::not_found("device", device))?;
            if !matches!(d.state, DeviceState::Terminated | DeviceState::Failed) {
                return Err(DomainError::Conflict(format!(
                    "device {device} is {}; terminate it before wiping it",
                    d.state
                )));
            }
            if d.card_guid.is_none() {
                return Err(DomainError::Conflict(format!(
                    "device {device} was never personalized by Lanyard; reset it with the vendor's tool"
                )));
            }
            let created = create_job(&mut tx, who, JobKind::Wipe, &d, self.p.user.id, ttl).await?;
            tx.commit().await?;
            Ok(created)
        })
        .await
    }

    /// Replaces a holder's card: the old one is revoked with `reason` (unless already revoked),
    /// and a new device for the same holder starts issuance with a `replaces` link to it. Returns
    /// the new device, its job and the agent ticket.
    pub async fn replace_device<R: Repo>(
        &self,
        repo: &R,
        old: DeviceId,
        reason: RevocationReason,
        card: CardInfo,
        ttl: time::Duration,
    ) -> Result<(Device, Job, SecretString), DomainError> {
        if card.kind.class() != DeviceClass::Token {
            return Err(ValidationError::new("kind", "only smart cards and USB keys replace a card").into());
        }
        let who = self.p.acting();
        let who = &who;
        let card = &card;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let previous = tx.get_device(old).await?.ok_or_else(|| DomainError::not_found("device", old))?;
            if previous.class() != DeviceClass::Token {
                return Err(DomainError::Conflict(format!("device {old} is not a card or USB key")));
            }
            let owner = previous.owner.ok_or_else(|| {
                DomainError::Conflict(format!("device {old} has no holder to replace it for"))
            })?;
            let holder = tx.get_user(owner).await?.ok_or_else(|| DomainError::not_found("user", owner))?;
            let policy = policy_of(&mut tx, &holder).await?;
            check_card_model(&holder, &policy, &card.model, IssuingTo::InPerson)?;
            if previous.state != DeviceState::Revoked {
                transition_with_derived(&mut tx, previous, DeviceAction::Revoke(reason), who).await?;
            }
            let mut device = claim_or_register(&mut tx, card, who.at).await?;
            device.links.push(crate::model::DeviceLink { kind: LinkKind::Replaces, target: old });
            device.validate()?;
            let mut after = json!({"replaces": old, "reason": reason, "owner": owner});
            if let (Some(note), Some(fields)) = (&who.note, after.as_object_mut()) {
                fields.insert("note".into(), serde_json::Value::String(note.clone()));
            }
            let event = NewAuditEvent::new(who.at, who.actor.clone(), "device.replace", &who.operation_id)
                .target(device_ref(device.id))
                .after(after);
            tx.append_audit(event).await?;
            device.owner = Some(owner);
            let device = transition(&mut tx, device, DeviceAction::BeginIssuance, who).await?;
            let (job, ticket) =
                create_job(&mut tx, who, JobKind::Issuance, &device, self.p.user.id, ttl).await?;
            tx.commit().await?;
            Ok((device, job, ticket))
        })
        .await
    }

    /// The cardholder `holder` and their group's policy, if an operator may issue them a smart
    /// card or USB key in person now: they hold the `user` role, their account is enabled, and
    /// their policy allows another device. The error says why not, naming the holder.
    pub async fn may_issue_to<R: Repo>(
        &self,
        repo: &R,
        holder: UserId,
    ) -> Result<(User, Policy), DomainError> {
        let mut tx = repo.read().await?;
        let holder = tx.get_user(holder).await?.ok_or_else(|| DomainError::not_found("user", holder))?;
        Self::check_cardholder(&holder)?;
        let policy = policy_of(&mut tx, &holder).await?;
        check_may_add_token(&mut tx, &holder, &policy, IssuingTo::InPerson).await?;
        Ok((holder, policy))
    }

    fn check_cardholder(holder: &User) -> Result<(), DomainError> {
        if holder.disabled {
            return Err(
                ValidationError::new("holder", format!("{}'s account is disabled", holder.username)).into()
            );
        }
        if !holder.has_role(Role::User) {
            return Err(ValidationError::new(
                "holder",
                format!(
                    "{} is not a cardholder (the user role); an administrator grants it",
                    holder.username
                ),
            )
            .into());
        }
        Ok(())
    }

    /// Starts issuing a card or USB key, in a reader at the operator's desk, to the cardholder
    /// `holder` (in person): the holder's group policy decides, exactly as when they add a device
    /// themselves (may add, how many, which models), and its refusals name the holder. Claims the
    /// stock device for this serial or registers the card, moves it to Issuing for the holder,
    /// and creates the issuance job. Audited with the operator as actor: `device.begin_issuance`
    /// (the holder as owner) and `job.create` (device, holder, and the operator's note).
    pub async fn begin_issuance_for<R: Repo>(
        &self,
        repo: &R,
        holder: UserId,
        card: CardInfo,
    ) -> Result<(Device, Job), DomainError> {
        check_token(&card)?;
        let who = self.p.acting();
        let who = &who;
        let card = &card;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let holder = tx.get_user(holder).await?.ok_or_else(|| DomainError::not_found("user", holder))?;
            Self::check_cardholder(&holder)?;
            let device = begin_token_issuance(&mut tx, &holder, card, IssuingTo::InPerson, who).await?;
            // The ticket is never handed out: the session starts with a fresh one bound to the
            // operator's agent.
            let (job, _unused) =
                create_job(&mut tx, who, JobKind::Issuance, &device, self.p.user.id, TICKET_UNUSED).await?;
            tx.commit().await?;
            Ok((device, job))
        })
        .await
    }

    /// A device's jobs (issuance, unlock, wipe…) with their step logs, oldest first.
    pub async fn device_jobs<R: Repo>(&self, repo: &R, device: DeviceId) -> Result<Vec<Job>, DomainError> {
        let mut tx = repo.read().await?;
        tx.get_device(device).await?.ok_or_else(|| DomainError::not_found("device", device))?;
        Ok(tx.list_jobs_for_device(device).await?)
    }

    /// Any job.
    pub async fn job<R: Repo>(&self, repo: &R, id: JobId) -> Result<Job, DomainError> {
        job_of(repo, id, None).await
    }

    /// Starts unblocking the PIN of any card in use; the ticket goes to the agent at the card.
    pub async fn start_unlock<R: Repo>(
        &self,
        repo: &R,
        device: DeviceId,
        ttl: time::Duration,
    ) -> Result<(Job, SecretString), DomainError> {
        start_unlock(repo, &self.p.acting(), self.p.user.id, device, None, ttl).await
    }

    /// The user `reference` names: a user id, or else a username (case-insensitive).
    pub async fn user<R: Repo>(&self, repo: &R, reference: &str) -> Result<User, DomainError> {
        let reference = reference.trim();
        let mut tx = repo.read().await?;
        let found = match reference.parse::<UserId>() {
            Ok(id) => tx.get_user(id).await?,
            Err(_) => match Username::parse(&reference.to_ascii_lowercase()) {
                Ok(name) => tx.get_user_by_username(&name).await?,
                Err(_) => None,
            },
        };
        found.ok_or_else(|| DomainError::not_found("user", reference))
    }

    /// Every group and its policy, ordered by name (read-only: only an administrator changes
    /// policy).
    pub async fn groups<R: Repo>(&self, repo: &R) -> Result<Vec<Group>, DomainError> {
        let mut tx = repo.read().await?;
        Ok(tx.list_groups().await?)
    }

    /// Devices matching `query`.
    pub async fn find_devices<R: Repo>(
        &self,
        repo: &R,
        query: &DeviceQuery,
    ) -> Result<Vec<Device>, DomainError> {
        let mut tx = repo.read().await?;
        Ok(tx.list_devices(query).await?)
    }

    /// The devices a typed serial names (see [`SerialSearch`]): by manufacturer serial, and the
    /// devices holding a certificate with that serial; each once, ordered by id, at most `limit`.
    pub async fn find_by_serial<R: Repo>(
        &self,
        repo: &R,
        search: &SerialSearch,
        limit: u32,
    ) -> Result<Vec<Device>, DomainError> {
        let mut tx = repo.read().await?;
        let query = DeviceQuery { serials: search.device_serials.clone(), limit, ..DeviceQuery::default() };
        let mut found = tx.list_devices(&query).await?;
        for serial in &search.certificate_serials {
            if let Some(credential) = tx.get_credential_by_serial(serial).await?
                && !found.iter().any(|d| d.id == credential.device)
                && let Some(device) = tx.get_device(credential.device).await?
            {
                found.push(device);
            }
        }
        found.sort_by_key(|d| d.id);
        found.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(found)
    }

    /// Any device.
    pub async fn device<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Device, DomainError> {
        let mut tx = repo.read().await?;
        tx.get_device(id).await?.ok_or_else(|| DomainError::not_found("device", id))
    }

    /// Any device's credentials.
    pub async fn credentials<R: Repo>(
        &self,
        repo: &R,
        device: DeviceId,
    ) -> Result<Vec<Credential>, DomainError> {
        let mut tx = repo.read().await?;
        credentials_of(&mut tx, device).await
    }

    /// The audit events about a device, oldest first.
    pub async fn device_history<R: Repo>(
        &self,
        repo: &R,
        device: DeviceId,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, DomainError> {
        let mut tx = repo.read().await?;
        let query = AuditQuery { after_seq, target: Some(device_ref(device)), limit, ..Default::default() };
        Ok(tx.list_audit(&query).await?)
    }

    async fn act<R: Repo>(
        &self,
        repo: &R,
        id: DeviceId,
        action: DeviceAction,
    ) -> Result<Device, DomainError> {
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let device = tx.get_device(id).await?.ok_or_else(|| DomainError::not_found("device", id))?;
            let device = transition_with_derived(&mut tx, device, action, &self.p.acting()).await?;
            tx.commit().await?;
            Ok(device)
        })
        .await
    }

    /// Activates a Pending device whose holder never completed *Change PIN*.
    pub async fn activate_device<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Device, DomainError> {
        self.act(repo, id, DeviceAction::Activate).await
    }

    /// Activates a Pending card and reveals its initial PIN so the operator can deliver it: the
    /// one time the API shows a card secret. Activation and the `card_secrets.reveal_initial_pin`
    /// audit event commit together; a card without stored secrets is refused unchanged.
    pub async fn activate_and_reveal_initial_pin<R: Repo>(
        &self,
        repo: &R,
        id: DeviceId,
        kek: &crate::secrets::Kek,
    ) -> Result<(Device, SecretString), DomainError> {
        self.activate_and_reveal_pins(repo, id, kek).await.map(|(d, pin, _)| (d, pin))
    }

    /// [`Operator::activate_and_reveal_initial_pin`], and the random FIDO PIN Lanyard set on the
    /// key when the card secrets hold one (`shared` and `temporary` FIDO PIN modes), for the
    /// operator to deliver with the initial PIN. The audit event says whether one was revealed.
    pub async fn activate_and_reveal_pins<R: Repo>(
        &self,
        repo: &R,
        id: DeviceId,
        kek: &crate::secrets::Kek,
    ) -> Result<(Device, SecretString, Option<SecretString>), DomainError> {
        let who = self.p.acting();
        let who = &who;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let device = tx.get_device(id).await?.ok_or_else(|| DomainError::not_found("device", id))?;
            let sealed = tx
                .get_card_secrets(id)
                .await?
                .ok_or_else(|| DomainError::Conflict(format!("device {id} has no stored card secrets")))?;
            let secrets = crate::secrets::CardSecrets::open(&sealed, kek, id)?;
            let device = transition_with_derived(&mut tx, device, DeviceAction::Activate, who).await?;
            let event = NewAuditEvent::new(
                who.at,
                who.actor.clone(),
                "card_secrets.reveal_initial_pin",
                &who.operation_id,
            )
            .target(format!("device:{id}"))
            .after(serde_json::json!({"fido_pin_revealed": secrets.fido_pin().is_some()}));
            tx.append_audit(event).await?;
            tx.commit().await?;
            Ok((device, secrets.initial_pin().clone(), secrets.fido_pin().cloned()))
        })
        .await
    }

    /// Suspends an Active or Pending device; its certificates go on hold.
    pub async fn suspend_device<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Device, DomainError> {
        self.act(repo, id, DeviceAction::Suspend).await
    }

    /// Returns a Suspended device to where it was; its held certificates are released.
    pub async fn resume_device<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Device, DomainError> {
        self.act(repo, id, DeviceAction::Resume).await
    }

    /// Revokes a device and its certificates (and devices derived from it).
    pub async fn revoke_device<R: Repo>(
        &self,
        repo: &R,
        id: DeviceId,
        reason: RevocationReason,
    ) -> Result<Device, DomainError> {
        self.act(repo, id, DeviceAction::Revoke(reason)).await
    }

    pub async fn mark_device_lost<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Device, DomainError> {
        self.act(repo, id, DeviceAction::MarkLost).await
    }

    pub async fn mark_device_stolen<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Device, DomainError> {
        self.act(repo, id, DeviceAction::MarkStolen).await
    }

    pub async fn mark_device_damaged<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Device, DomainError> {
        self.act(repo, id, DeviceAction::MarkDamaged).await
    }

    /// *Delete Mobile* on a holder's behalf: the mobile's certificates are revoked and it is
    /// Deleted (audited `device.delete`). Only mobiles; cards are revoked or terminated instead.
    pub async fn delete_mobile<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Device, DomainError> {
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let device = tx.get_device(id).await?.ok_or_else(|| DomainError::not_found("device", id))?;
            if device.class() != crate::model::DeviceClass::Mobile {
                return Err(crate::model::ValidationError::new(
                    "device",
                    "only mobiles can be deleted; revoke or terminate a card instead",
                )
                .into());
            }
            let device =
                transition_with_derived(&mut tx, device, DeviceAction::Delete, &self.p.acting()).await?;
            tx.commit().await?;
            Ok(device)
        })
        .await
    }

    /// Retires a device for good (its certificates and derived devices are revoked).
    pub async fn terminate_device<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Device, DomainError> {
        self.act(repo, id, DeviceAction::Terminate).await
    }

    /// Applies a credential action with one `credential.<action>` audit event.
    async fn credential_act<R: Repo>(
        &self,
        repo: &R,
        id: CredentialId,
        action: CredentialAction,
    ) -> Result<Credential, DomainError> {
        let who = self.p.acting();
        let who = &who;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let mut credential =
                tx.get_credential(id).await?.ok_or_else(|| DomainError::not_found("credential", id))?;
            let before = credential_snapshot(&credential);
            if action == CredentialAction::Release {
                // A suspended (or revoked) device keeps its certificates invalid: releasing one
                // here would make a card reported lost usable again behind the device's back.
                let device = tx
                    .get_device(credential.device)
                    .await?
                    .ok_or_else(|| DomainError::not_found("device", credential.device))?;
                if !matches!(device.state, DeviceState::Active | DeviceState::Pending) {
                    return Err(DomainError::Conflict(format!(
                        "the credential's device is {}; only credentials on an active or pending device \
                         can be released (resume the device instead)",
                        device.state
                    )));
                }
            }
            apply_credential(&mut credential, action, who.at)?;
            tx.update_credential(&credential).await?;
            let event = NewAuditEvent::new(
                who.at,
                who.actor.clone(),
                format!("credential.{}", action.kind()),
                &who.operation_id,
            )
            .target(format!("credential:{id}"))
            .before(before)
            .after(credential_snapshot(&credential));
            tx.append_audit(event).await?;
            tx.commit().await?;
            Ok(credential)
        })
        .await
    }

    /// Revokes one credential (the CRL and OCSP report it with `reason`).
    pub async fn revoke_credential<R: Repo>(
        &self,
        repo: &R,
        id: CredentialId,
        reason: RevocationReason,
    ) -> Result<Credential, DomainError> {
        self.credential_act(repo, id, CredentialAction::Revoke(reason)).await
    }

    /// Puts one credential on hold (certificateHold).
    pub async fn hold_credential<R: Repo>(
        &self,
        repo: &R,
        id: CredentialId,
    ) -> Result<Credential, DomainError> {
        self.credential_act(repo, id, CredentialAction::Hold).await
    }

    /// Releases a held credential back to the state it was held from.
    pub async fn release_credential<R: Repo>(
        &self,
        repo: &R,
        id: CredentialId,
    ) -> Result<Credential, DomainError> {
        self.credential_act(repo, id, CredentialAction::Release).await
    }

    /// Registers a card or USB key. Without an owner it is stock (Available); with one, issuance
    /// to that user begins at once (Issuing), as when the holder starts it through the agent. One
    /// `device.register` audit event (and `device.begin_issuance` with an owner), one unit of work.
    pub async fn register_device<R: Repo>(
        &self,
        repo: &R,
        card: CardInfo,
        owner: Option<UserId>,
    ) -> Result<Device, DomainError> {
        if card.kind.class() != DeviceClass::Token {
            return Err(ValidationError::new(
                "kind",
                "only smart cards and USB keys are registered by operators",
            )
            .into());
        }
        let who = self.p.acting();
        let who = &who;
        let card = &card;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            if let Some(serial) = &card.serial
                && tx.get_device_by_serial(&card.model, serial).await?.is_some()
            {
                return Err(DomainError::Conflict(format!(
                    "a {} with serial {serial} is already registered",
                    card.model
                )));
            }
            let mut device = Device::new(card.kind, card.model.clone(), who.at)?;
            device.serial = card.serial.clone();
            device.validate()?;
            tx.insert_device(&device).await?;
            let event = NewAuditEvent::new(who.at, who.actor.clone(), "device.register", &who.operation_id)
                .target(device_ref(device.id))
                .after(snapshot(&device, &[]));
            tx.append_audit(event).await?;
            if let Some(owner) = owner {
                let user = tx.get_user(owner).await?.ok_or_else(|| DomainError::not_found("user", owner))?;
                device.owner = Some(user.id);
                device = transition(&mut tx, device, DeviceAction::BeginIssuance, who).await?;
            }
            tx.commit().await?;
            Ok(device)
        })
        .await
    }

    /// What the issuance rules need to issue a certificate for device `id` (reserve): the device,
    /// its holder and the holder's policy, read in one unit of work that writes nothing.
    pub async fn issuance_context<R: Repo>(
        &self,
        repo: &R,
        id: DeviceId,
    ) -> Result<(Device, User, Policy), DomainError> {
        let mut tx = repo.read().await?;
        let device = tx.get_device(id).await?.ok_or_else(|| DomainError::not_found("device", id))?;
        let owner = device.owner.ok_or_else(|| {
            DomainError::Conflict(format!(
                "device {id} has no holder; certificates are issued to held devices"
            ))
        })?;
        let holder = tx.get_user(owner).await?.ok_or_else(|| DomainError::not_found("user", owner))?;
        let policy = policy_of(&mut tx, &holder).await?;
        Ok((device, holder, policy))
    }

    /// Records a certificate signed for device `id` (record): its state follows the device as
    /// it is now, one `credential.issue` audit event, one unit of work. See
    /// [`record_certificates`] for a device that changed while the CA was signing.
    pub async fn record_certificate<R: Repo>(
        &self,
        repo: &R,
        id: DeviceId,
        kind: CredentialKind,
    ) -> Result<Credential, DomainError> {
        let who = self.p.acting();
        let (credentials, refused) = retry(repo, || {
            let (who, kind) = (&who, kind.clone());
            async move {
                let mut tx = repo.begin().await?;
                let mut credentials = [Credential::new(id, kind, who.at)];
                let refused = record_certificates(&mut tx, who, id, &mut credentials, None).await?;
                tx.commit().await?;
                Ok::<_, DomainError>((credentials, refused))
            }
        })
        .await?;
        match refused {
            Some(r) => Err(r.into()),
            None => {
                let [credential] = credentials;
                Ok(credential)
            }
        }
    }

    /// Turns a Terminated or Failed token back into unowned stock; its stored card secrets are
    /// discarded (issuance generates new ones).
    pub async fn recycle_device<R: Repo>(&self, repo: &R, id: DeviceId) -> Result<Device, DomainError> {
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let device = tx.get_device(id).await?.ok_or_else(|| DomainError::not_found("device", id))?;
            let device = transition(&mut tx, device, DeviceAction::Recycle, &self.p.acting()).await?;
            if tx.get_card_secrets(id).await?.is_some() {
                tx.delete_card_secrets(id).await?;
            }
            tx.commit().await?;
            Ok(device)
        })
        .await
    }
}
