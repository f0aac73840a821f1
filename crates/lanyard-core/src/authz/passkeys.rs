//! Passkeys in the lifecycle: a holder registers one for an Active security key of theirs (or for
//! the key their own issuance job is issuing, while that job runs), lists
//! and removes their own; an operator lists and removes anyone's; signing in with one needs the
//! passkey Active, its device Active *now* (read in the sign-in's own unit of work, never a copy)
//! and the group's policy to allow passkeys. Every registration, sign-in, refusal and removal is
//! audited. The WebAuthn verification itself is the server's (`lanyard-webauthn`); the domain
//! gets its verdict and decides.

use serde_json::json;
use thiserror::Error;
use time::OffsetDateTime;

use crate::audit::{Actor, NewAuditEvent, OperationId};
use crate::error::DomainError;
use crate::ids::{DeviceId, JobId, PasskeyId, UserId};
use crate::lifecycle::DeviceState;
use crate::model::{
    CHALLENGE_LEN, ChallengePurpose, DeviceClass, JobKind, JobState, Passkey, PasskeyState,
    PasskeyUserVerification, PolicyDenied, Session, SignInPolicy, User, WebAuthnChallenge,
};
use crate::repo::PasskeyQuery;
use crate::repo::prelude::*;
use crate::secrets::TokenHash;

use super::{ALL, Acting, Operator, SelfService, policy_of};

fn passkey_ref(id: PasskeyId) -> String {
    format!("passkey:{id}")
}

fn hex_prefix(credential_id: &[u8]) -> String {
    hex::encode(&credential_id[..credential_id.len().min(16)])
}

/// What a holder's browser needs to create a passkey for one of their devices.
#[derive(Clone, Debug)]
pub struct RegistrationStart {
    pub user: User,
    pub device: crate::model::Device,
    /// The challenge to send (base64url in the options).
    pub challenge: [u8; CHALLENGE_LEN],
    /// Credential ids the holder has registered already (any device): `excludeCredentials`.
    pub exclude: Vec<Vec<u8>>,
    pub user_verification: PasskeyUserVerification,
}

/// A registration the server verified, for [`SelfService::register_passkey`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPasskey {
    pub credential_id: Vec<u8>,
    pub rp_id: String,
    pub public_key: Vec<u8>,
    pub sign_count: u32,
    pub aaguid: [u8; 16],
    pub attestation: String,
}

/// A passkey with what decides whether it works now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasskeyStatus {
    pub passkey: Passkey,
    pub device_state: DeviceState,
    /// Active passkey on an Active device of its holder.
    pub usable: bool,
}

fn usable(p: &Passkey, device_state: DeviceState) -> bool {
    p.state == PasskeyState::Active && device_state == DeviceState::Active
}

async fn statuses<T: Tx>(tx: &mut T, passkeys: Vec<Passkey>) -> Result<Vec<PasskeyStatus>, DomainError> {
    let mut out = Vec::with_capacity(passkeys.len());
    for p in passkeys {
        let device =
            tx.get_device(p.device).await?.ok_or_else(|| DomainError::not_found("device", p.device))?;
        let ok = usable(&p, device.state) && device.owner == Some(p.user);
        out.push(PasskeyStatus { passkey: p, device_state: device.state, usable: ok });
    }
    Ok(out)
}

/// Removes passkey `id` (audited `passkey.remove`). `owner`, when given, must hold it: anyone
/// else's is NotFound, like a missing one.
async fn remove<R: Repo>(
    repo: &R,
    who: &Acting,
    id: PasskeyId,
    owner: Option<UserId>,
) -> Result<Passkey, DomainError> {
    retry(repo, || async move {
        let mut tx = repo.begin().await?;
        let mut p = match tx.get_passkey(id).await? {
            Some(p) if owner.is_none_or(|o| p.user == o) => p,
            _ => return Err(DomainError::not_found("passkey", id)),
        };
        if p.state == PasskeyState::Removed {
            return Err(DomainError::Conflict("this passkey is already removed".into()));
        }
        p.state = PasskeyState::Removed;
        p.removed_at = Some(who.at);
        tx.update_passkey(&p).await?;
        let mut after = json!({"state": p.state, "device": p.device, "holder": p.user});
        if let (Some(note), Some(fields)) = (&who.note, after.as_object_mut()) {
            fields.insert("note".into(), json!(note));
        }
        let event = NewAuditEvent::new(who.at, who.actor.clone(), "passkey.remove", &who.operation_id)
            .target(passkey_ref(id))
            .before(json!({"state": PasskeyState::Active}))
            .after(after);
        tx.append_audit(event).await?;
        tx.commit().await?;
        Ok(p)
    })
    .await
}

impl SelfService<'_> {
    /// My passkeys (removed ones included), oldest first, with whether each works now.
    pub async fn passkeys<R: Repo>(&self, repo: &R) -> Result<Vec<PasskeyStatus>, DomainError> {
        let mut tx = repo.read().await?;
        let query = PasskeyQuery { user: Some(self.p.user.id), limit: ALL, ..Default::default() };
        let list = tx.list_passkeys(&query).await?;
        statuses(&mut tx, list).await
    }

    /// Starts registering a passkey for `device`: it must be my smart card or USB key, Active or
    /// being issued by my own issuance job whose card session waits for me at the device PIN
    /// (`issuance`, see [`registrable`]), and my group's policy must allow passkeys. Stores a challenge bound to `binding` (my
    /// session) and answers what the browser needs.
    pub async fn start_passkey_registration<R: Repo>(
        &self,
        repo: &R,
        device: DeviceId,
        binding: TokenHash,
        issuance: Option<JobId>,
    ) -> Result<RegistrationStart, DomainError> {
        let who = self.p.acting();
        let me = self.p.user.clone();
        let (me, who) = (&me, &who);
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let d = match tx.get_device(device).await? {
                Some(d) if d.owner == Some(me.id) => d,
                _ => return Err(DomainError::not_found("device", device)),
            };
            registrable(&mut tx, &d, me.id, issuance).await?;
            let policy = policy_of(&mut tx, me).await?;
            if !policy.sign_in.passkeys_allowed() {
                return Err(PolicyDenied::PasskeysDisabled.into());
            }
            let (challenge, bytes) = WebAuthnChallenge::issue(
                ChallengePurpose::Registration,
                binding,
                Some(me.id),
                Some(d.id),
                who.at,
            )?;
            tx.delete_expired_webauthn_challenges(who.at).await?;
            tx.insert_webauthn_challenge(&challenge).await?;
            let query = PasskeyQuery { user: Some(me.id), limit: ALL, ..Default::default() };
            let exclude = tx.list_passkeys(&query).await?.into_iter().map(|p| p.credential_id).collect();
            tx.commit().await?;
            Ok(RegistrationStart {
                user: me.clone(),
                device: d,
                challenge: bytes,
                exclude,
                user_verification: policy.sign_in.passkey_user_verification,
            })
        })
        .await
    }

    /// Uses up the registration challenge `challenge` (from the browser's clientDataJSON): it must
    /// have been issued to me, in the session `binding`, and not be used or expired. Answers the
    /// device it was issued for and the user verification my policy asks for. Done before the
    /// response is verified, so a challenge serves one attempt, successful or not.
    pub async fn redeem_registration_challenge<R: Repo>(
        &self,
        repo: &R,
        binding: TokenHash,
        challenge: &[u8],
    ) -> Result<(DeviceId, PasskeyUserVerification), DomainError> {
        let who = self.p.acting();
        let me = self.p.user.clone();
        let hash = WebAuthnChallenge::hash_of(challenge);
        let (me, who, hash, binding) = (&me, &who, &hash, &binding);
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let redeemed =
                tx.redeem_webauthn_challenge(hash, binding, ChallengePurpose::Registration, who.at).await?;
            let policy = policy_of(&mut tx, me).await?;
            // Used up even when it turns out not to be mine: one attempt per challenge.
            tx.commit().await?;
            let Some(c) = redeemed.filter(|c| c.user == Some(me.id)) else {
                return Err(DomainError::Conflict(CHALLENGE_GONE.into()));
            };
            let device = c.device.ok_or_else(|| DomainError::Conflict(CHALLENGE_GONE.into()))?;
            Ok((device, policy.sign_in.passkey_user_verification))
        })
        .await
    }

    /// Records a verified registration for my `device`, which must still be mine, registrable and
    /// allowed by policy (read again here: an issuance job that ended meanwhile, leaving the key
    /// not Active, refuses it). Audited `passkey.register`, naming the issuance job when the key
    /// was registered during one.
    pub async fn register_passkey<R: Repo>(
        &self,
        repo: &R,
        device: DeviceId,
        new: &NewPasskey,
        issuance: Option<JobId>,
    ) -> Result<Passkey, DomainError> {
        let who = self.p.acting();
        let me = self.p.user.clone();
        let (me, who) = (&me, &who);
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let d = match tx.get_device(device).await? {
                Some(d) if d.owner == Some(me.id) => d,
                _ => return Err(DomainError::not_found("device", device)),
            };
            let during = registrable(&mut tx, &d, me.id, issuance).await?;
            if !policy_of(&mut tx, me).await?.sign_in.passkeys_allowed() {
                return Err(PolicyDenied::PasskeysDisabled.into());
            }
            if tx.get_passkey_by_credential_id(&new.credential_id).await?.is_some() {
                return Err(DomainError::Conflict(
                    "this passkey is registered already (a security key answers with the same credential only once)"
                        .into(),
                ));
            }
            let p = Passkey {
                id: PasskeyId::new(),
                credential_id: new.credential_id.clone(),
                user: me.id,
                device: d.id,
                rp_id: new.rp_id.clone(),
                public_key: new.public_key.clone(),
                sign_count: new.sign_count,
                aaguid: new.aaguid,
                attestation: new.attestation.clone(),
                state: PasskeyState::Active,
                created_at: who.at,
                last_used_at: None,
                removed_at: None,
            };
            tx.insert_passkey(&p).await?;
            let event = NewAuditEvent::new(who.at, who.actor.clone(), "passkey.register", &who.operation_id)
                .target(passkey_ref(p.id))
                .after(json!({
                    "device": p.device,
                    "holder": p.user,
                    "credential_id": hex_prefix(&p.credential_id),
                    "aaguid": hex::encode(p.aaguid),
                    "attestation": p.attestation,
                    "rp_id": p.rp_id,
                    "device_state": d.state,
                    "issuance_job": during,
                }));
            tx.append_audit(event).await?;
            tx.commit().await?;
            Ok(p)
        })
        .await
    }

    /// Records that a registration response for my `device` was refused (`passkey.register_refused`
    /// with the WebAuthn check that failed), so a holder's failed attempts show in the audit log.
    pub async fn refuse_registration<R: Repo>(
        &self,
        repo: &R,
        device: DeviceId,
        reason: &str,
        detail: &str,
    ) -> Result<(), DomainError> {
        let who = self.p.acting();
        let event =
            NewAuditEvent::new(who.at, who.actor.clone(), "passkey.register_refused", &who.operation_id)
                .target(format!("device:{device}"))
                .after(json!({"reason": reason, "detail": detail}));
        let event = &event;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            tx.append_audit(event.clone()).await?;
            tx.commit().await?;
            Ok::<_, DomainError>(())
        })
        .await
    }

    /// Removes one of my passkeys; anyone else's is NotFound.
    pub async fn remove_passkey<R: Repo>(&self, repo: &R, id: PasskeyId) -> Result<Passkey, DomainError> {
        remove(repo, &self.p.acting(), id, Some(self.p.user.id)).await
    }
}

impl Operator<'_> {
    /// Every passkey of `user` (removed ones included), with whether each works now.
    pub async fn passkeys_of_user<R: Repo>(
        &self,
        repo: &R,
        user: UserId,
    ) -> Result<Vec<PasskeyStatus>, DomainError> {
        let mut tx = repo.read().await?;
        let list =
            tx.list_passkeys(&PasskeyQuery { user: Some(user), limit: ALL, ..Default::default() }).await?;
        statuses(&mut tx, list).await
    }

    /// Every passkey registered for `device`.
    pub async fn passkeys_of_device<R: Repo>(
        &self,
        repo: &R,
        device: DeviceId,
    ) -> Result<Vec<PasskeyStatus>, DomainError> {
        let mut tx = repo.read().await?;
        let list = tx
            .list_passkeys(&PasskeyQuery { device: Some(device), limit: ALL, ..Default::default() })
            .await?;
        statuses(&mut tx, list).await
    }

    /// Removes anyone's passkey (audited with the operator as actor and the holder named).
    pub async fn remove_passkey<R: Repo>(&self, repo: &R, id: PasskeyId) -> Result<Passkey, DomainError> {
        remove(repo, &self.p.acting(), id, None).await
    }
}

/// The message for a challenge that is unknown, used, expired or someone else's.
pub const CHALLENGE_GONE: &str =
    "the WebAuthn challenge is unknown, already used, expired or was issued to another session; start again";

/// Whether a passkey may be registered for `d` by its holder `me` now: `d` must be a smart card
/// or USB key, and either Active, or in the device PIN step of its issuance (flow B: the issuance
/// page offers the registration before the device PIN). `issuance` is the job whose card session
/// the server knows to be waiting for the holder's device PIN right now: that session runs in the
/// server's process, so only the server can say it is live, and it says so for one job. The
/// domain checks the rest: the job is `d`'s, an issuance, started by `me` (not an operator's
/// in-person issuance), neither failed nor undone, and `d` is still Issuing or Pending. Answers
/// the job's id in that case. Without a live session (the holder skipped the PIN, the time ran
/// out, the session failed) a key that is not Active gets nothing: it waits until it is Active.
async fn registrable<T: Tx>(
    tx: &mut T,
    d: &crate::model::Device,
    me: UserId,
    issuance: Option<JobId>,
) -> Result<Option<JobId>, DomainError> {
    if d.kind.class() != DeviceClass::Token {
        return Err(DomainError::Conflict("passkeys are registered on smart cards and USB keys only".into()));
    }
    if d.state == DeviceState::Active {
        return Ok(None);
    }
    if let Some(id) = issuance
        && matches!(d.state, DeviceState::Issuing | DeviceState::Pending)
        && d.owner == Some(me)
        && let Some(job) = tx.get_job(id).await?
        && job.device == d.id
        && job.kind == JobKind::Issuance
        && job.created_by == Some(me)
        && matches!(job.state, JobState::Running | JobState::Succeeded)
    {
        return Ok(Some(job.id));
    }
    Err(DomainError::Conflict(format!(
        "device {} is {}; passkeys are registered on Active security keys, or during their holder's own issuance while it asks for the device PIN",
        d.id, d.state
    )))
}

/// Why a passkey sign-in was refused after the server verified the assertion (or found no
/// passkey). The messages are for the person at the browser, who has just proved they hold the
/// key, so they may say what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PasskeyRefused {
    #[error("this passkey is not registered with Lanyard (it may have been removed)")]
    Unknown,
    #[error("this passkey was removed; sign in with your password, or ask your help desk")]
    Removed,
    #[error("this passkey's security key is {0}, so its passkey is disabled; ask your help desk")]
    DeviceNotActive(DeviceState),
    #[error("your account is disabled")]
    AccountDisabled,
    #[error("your group's policy does not allow signing in with a passkey")]
    PolicyForbids,
    #[error("the passkey was registered for another site ({0})")]
    OtherSite(String),
    #[error(
        "the security key's signature counter went backwards ({presented} after {stored}): the key may have been copied, so this sign-in is refused and reported; ask your help desk"
    )]
    PossibleClone { stored: u32, presented: u32 },
    #[error("the passkey does not belong to the account the browser named")]
    WrongUserHandle,
}

impl PasskeyRefused {
    /// The `reason` recorded in `passkey.sign_in_refused`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unknown => "unknown_credential",
            Self::Removed => "removed",
            Self::DeviceNotActive(_) => "device_not_active",
            Self::AccountDisabled => "account_disabled",
            Self::PolicyForbids => "policy",
            Self::OtherSite(_) => "rp_id",
            Self::PossibleClone { .. } => "possible_clone",
            Self::WrongUserHandle => "user_handle",
        }
    }
}

/// Everything a passkey sign-in needs to verify an assertion for a credential: the passkey, its
/// holder, and the holder's sign-in policy.
#[derive(Clone, Debug)]
pub struct SignInCandidate {
    pub passkey: Passkey,
    pub user: User,
    pub policy: SignInPolicy,
}

/// Passkey sign-in, which runs before anyone is authenticated: Lanyard acts as itself.
pub struct PasskeySignIn<'r, R> {
    repo: &'r R,
    operation_id: OperationId,
    at: OffsetDateTime,
}

impl<'r, R: Repo> PasskeySignIn<'r, R> {
    pub fn new(repo: &'r R, operation_id: OperationId, at: OffsetDateTime) -> Self {
        Self { repo, operation_id, at }
    }

    /// A sign-in challenge bound to the browser `binding` (a short-lived cookie's hash).
    pub async fn start(&self, binding: TokenHash) -> Result<[u8; CHALLENGE_LEN], DomainError> {
        let (repo, at, binding) = (self.repo, self.at, &binding);
        retry(repo, || async move {
            let (c, bytes) = WebAuthnChallenge::issue(ChallengePurpose::SignIn, *binding, None, None, at)?;
            let mut tx = repo.begin().await?;
            tx.delete_expired_webauthn_challenges(at).await?;
            tx.insert_webauthn_challenge(&c).await?;
            tx.commit().await?;
            Ok(bytes)
        })
        .await
    }

    /// Uses up the sign-in challenge (single use, whatever the outcome).
    pub async fn redeem(&self, binding: TokenHash, challenge: &[u8]) -> Result<(), DomainError> {
        let hash = WebAuthnChallenge::hash_of(challenge);
        let (repo, at, hash, binding) = (self.repo, self.at, &hash, &binding);
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let found = tx.redeem_webauthn_challenge(hash, binding, ChallengePurpose::SignIn, at).await?;
            tx.commit().await?;
            found.map(drop).ok_or_else(|| DomainError::Conflict(CHALLENGE_GONE.into()))
        })
        .await
    }

    /// The passkey with `credential_id`, its holder and their policy; `Ok(None)` when no passkey
    /// has that id.
    pub async fn candidate(&self, credential_id: &[u8]) -> Result<Option<SignInCandidate>, DomainError> {
        let mut tx = self.repo.read().await?;
        let Some(passkey) = tx.get_passkey_by_credential_id(credential_id).await? else { return Ok(None) };
        let user =
            tx.get_user(passkey.user).await?.ok_or_else(|| DomainError::not_found("user", passkey.user))?;
        let policy = policy_of(&mut tx, &user).await?.sign_in;
        Ok(Some(SignInCandidate { passkey, user, policy }))
    }

    /// Records a refused sign-in: `passkey.sign_in_refused` with the reason (the WebAuthn check
    /// that failed, or a [`PasskeyRefused`] code) and the detail; the target is the passkey when
    /// known, else the credential id presented.
    pub async fn refuse(
        &self,
        passkey: Option<&Passkey>,
        credential_id: &[u8],
        reason: &str,
        detail: &str,
    ) -> Result<(), DomainError> {
        let target = match passkey {
            Some(p) => passkey_ref(p.id),
            None => format!("credential:{}", hex_prefix(credential_id)),
        };
        let mut after = json!({"reason": reason, "detail": detail});
        if let (Some(p), Some(fields)) = (passkey, after.as_object_mut()) {
            fields.insert("holder".into(), json!(p.user));
            fields.insert("device".into(), json!(p.device));
        }
        let event = NewAuditEvent::new(self.at, Actor::System, "passkey.sign_in_refused", &self.operation_id)
            .target(target)
            .after(after);
        let (repo, event) = (self.repo, &event);
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            tx.append_audit(event.clone()).await?;
            tx.commit().await?;
            Ok::<_, DomainError>(())
        })
        .await
    }

    /// Completes a sign-in whose assertion the server verified with `candidate`'s key, presenting
    /// counter `sign_count`. In ONE unit of work it reads the passkey, its device and its holder
    /// again and refuses unless the passkey is Active, the device is the holder's and Active now,
    /// the account enabled and the policy allows passkeys; then applies the counter rule, stores
    /// the counter and the time of use, inserts `session` and audits `passkey.sign_in` and
    /// `session.login`. A refusal is audited (`passkey.sign_in_refused`) and answered as
    /// `Ok(Err(…))`.
    pub async fn complete(
        &self,
        candidate: &SignInCandidate,
        sign_count: u32,
        rp_id: &str,
        session: &Session,
    ) -> Result<Result<User, PasskeyRefused>, DomainError> {
        let (repo, at, op) = (self.repo, self.at, &self.operation_id);
        let id = candidate.passkey.id;
        let verdict = retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let Some(mut p) = tx.get_passkey(id).await? else { return Ok(Err(PasskeyRefused::Unknown)) };
            let user = tx.get_user(p.user).await?.ok_or_else(|| DomainError::not_found("user", p.user))?;
            let device =
                tx.get_device(p.device).await?.ok_or_else(|| DomainError::not_found("device", p.device))?;
            let policy = policy_of(&mut tx, &user).await?.sign_in;
            let refusal = if p.state != PasskeyState::Active {
                Some(PasskeyRefused::Removed)
            } else if p.rp_id != rp_id {
                Some(PasskeyRefused::OtherSite(p.rp_id.clone()))
            } else if device.owner != Some(user.id) || device.state != DeviceState::Active {
                Some(PasskeyRefused::DeviceNotActive(device.state))
            } else if user.disabled {
                Some(PasskeyRefused::AccountDisabled)
            } else if !policy.passkeys_allowed() {
                Some(PasskeyRefused::PolicyForbids)
            } else if let lanyard_counter::Verdict::Clone { stored, presented } =
                lanyard_counter::check(p.sign_count, sign_count)
            {
                Some(PasskeyRefused::PossibleClone { stored, presented })
            } else {
                None
            };
            if let Some(r) = refusal {
                return Ok(Err(r));
            }
            let before = json!({"sign_count": p.sign_count});
            p.sign_count = sign_count;
            p.last_used_at = Some(at);
            tx.update_passkey(&p).await?;
            tx.insert_session(session).await?;
            let actor = Actor::User { id: user.id, username: user.username.clone() };
            let used = NewAuditEvent::new(at, actor.clone(), "passkey.sign_in", op)
                .target(passkey_ref(p.id))
                .before(before)
                .after(json!({"sign_count": p.sign_count, "device": p.device}));
            tx.append_audit(used).await?;
            let expires = session.expires_at.format(&time::format_description::well_known::Rfc3339).ok();
            let login = NewAuditEvent::new(at, actor, "session.login", op)
                .target(format!("user:{}", user.id))
                .after(json!({"expires_at": expires, "method": "passkey", "passkey": p.id}));
            tx.append_audit(login).await?;
            tx.commit().await?;
            Ok::<_, DomainError>(Ok(user))
        })
        .await?;
        if let Err(r) = &verdict {
            self.refuse(Some(&candidate.passkey), &candidate.passkey.credential_id, r.code(), &r.to_string())
                .await?;
        }
        Ok(verdict)
    }
}

/// The signature counter rule (WebAuthn §6.1.1), here as well as in `lanyard-webauthn` because
/// the domain applies it against the stored value inside its own unit of work.
mod lanyard_counter {
    pub enum Verdict {
        Fine,
        Clone { stored: u32, presented: u32 },
    }

    pub fn check(stored: u32, presented: u32) -> Verdict {
        if (stored == 0 && presented == 0) || presented > stored {
            Verdict::Fine
        } else {
            Verdict::Clone { stored, presented }
        }
    }
}

/// How many passkeys of `user` work now (Active, on an Active device of theirs).
pub async fn usable_passkeys<T: Tx>(tx: &mut T, user: UserId) -> Result<usize, DomainError> {
    let query = PasskeyQuery {
        user: Some(user),
        states: vec![PasskeyState::Active],
        limit: ALL,
        ..Default::default()
    };
    let list = tx.list_passkeys(&query).await?;
    Ok(statuses(tx, list).await?.iter().filter(|s| s.usable).count())
}

/// Whether `user` must sign in with a passkey rather than a password: their group's policy says
/// `passkey` and they have a usable one. When none is usable (the key suspended or revoked, the
/// registration removed) the password works again, so a lost key never locks anyone out.
pub async fn password_refused<R: Repo>(repo: &R, user: &User) -> Result<bool, DomainError> {
    let mut tx = repo.read().await?;
    let policy = policy_of(&mut tx, user).await?.sign_in;
    if !matches!(policy.method, crate::model::SignInMethod::Passkey) {
        return Ok(false);
    }
    Ok(policy.refuses_password(usable_passkeys(&mut tx, user.id).await?))
}
