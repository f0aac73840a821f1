//! Mobile enrolment with one-time codes (DESIGN §2 C and D): a phone presents the code a holder
//! obtained in the portal, a mobile device is created for the holder, and the certificate the CA
//! signs for the phone's key is recorded when the enrolment completes.
//!
//! A code goes issued → redeemed (the mobile exists, Enrolling) → completed (the mobile is Active).
//! SCEP redeems and completes in one request; the app protocol redeems first and completes when the
//! phone sends its CSR, presenting the code again. Every refusal changes nothing.

use serde_json::json;
use time::{Duration, OffsetDateTime};

use crate::audit::NewAuditEvent;
use crate::error::DomainError;
use crate::lifecycle::{DeviceAction, DeviceState};
use crate::model::{
    Credential, Device, DeviceKind, DeviceLink, EnrollmentCode, EnrollmentError, EnrollmentKind,
    EnrollmentPurpose, LinkKind, Policy, PolicyDenied, User,
};
use crate::repo::DeviceQuery;
use crate::repo::prelude::*;
use crate::secrets::TokenHash;

use super::{ALL, Acting, System, policy_of, record_certificates, transition};

/// An enrolment under way: the redeemed code, the mobile created for it, its holder and the
/// holder's policy (what the CA needs to plan the certificate).
#[derive(Clone, Debug)]
pub struct Redeemed {
    pub code: EnrollmentCode,
    pub device: Device,
    pub holder: User,
    pub policy: Policy,
}

/// How long an Enrolling mobile may wait for its certificate after its code expired before
/// [`System::abandon_stale_enrolments`] deletes it (so it stops counting against `max_mobiles`).
pub const STALE_ENROLMENT_GRACE: Duration = Duration::minutes(5);

/// Whether `holder` may start (or, at redemption, still continue) an enrolment of `kind` under
/// `policy`: the policy flag for the kind, and `max_mobiles` (mobiles count while Enrolling,
/// Active or Suspended; `excluding` is the mobile of the enrolment being redeemed, if any).
pub(super) async fn check_may_add_mobile<T: Tx>(
    tx: &mut T,
    holder: &User,
    policy: &Policy,
    kind: EnrollmentKind,
) -> Result<(), DomainError> {
    match kind {
        EnrollmentKind::MobileProfile if !policy.may_add_mobile => {
            return Err(PolicyDenied::AddMobileDisabled.into());
        }
        EnrollmentKind::DerivedPiv if !policy.may_add_derived_piv => {
            return Err(PolicyDenied::DerivedPivDisabled.into());
        }
        _ => {}
    }
    let query = DeviceQuery {
        owner: Some(holder.id),
        kind: Some(DeviceKind::Mobile),
        limit: ALL,
        ..Default::default()
    };
    let current = tx
        .list_devices(&query)
        .await?
        .iter()
        .filter(|d| matches!(d.state, DeviceState::Enrolling | DeviceState::Active | DeviceState::Suspended))
        .count();
    if current >= usize::from(policy.max_mobiles) {
        return Err(PolicyDenied::MobileLimitReached { max: policy.max_mobiles, current }.into());
    }
    Ok(())
}

/// The code `presented` names, or WrongCode.
async fn find_code<T: Tx>(tx: &mut T, presented: &str) -> Result<EnrollmentCode, DomainError> {
    let hash = TokenHash::of(presented);
    tx.get_enrollment_code_by_hash(&hash).await?.ok_or_else(|| EnrollmentError::WrongCode.into())
}

/// A code enrols only the kind of credential it was issued for.
fn check_kind(code: &EnrollmentCode, kind: EnrollmentKind) -> Result<(), EnrollmentError> {
    if code.purpose.kind() != kind {
        return Err(EnrollmentError::WrongKind {
            expected: code.purpose.kind().as_str(),
            presented: kind.as_str(),
        });
    }
    Ok(())
}

/// The code's portal session must still be signed in.
async fn check_session<T: Tx>(
    tx: &mut T,
    code: &EnrollmentCode,
    at: OffsetDateTime,
) -> Result<(), DomainError> {
    if let Some(hash) = &code.session {
        match tx.get_session(hash).await? {
            Some(s) if s.is_valid(at) && s.user == code.user => {}
            _ => return Err(EnrollmentError::SessionEnded.into()),
        }
    }
    Ok(())
}

async fn holder_of<T: Tx>(tx: &mut T, code: &EnrollmentCode) -> Result<User, DomainError> {
    let holder = tx.get_user(code.user).await?.ok_or_else(|| DomainError::not_found("user", code.user))?;
    if holder.disabled {
        return Err(DomainError::Conflict(format!(
            "the account {} is disabled; it can enrol no mobile",
            holder.username
        )));
    }
    Ok(holder)
}

impl System {
    fn event(&self, action: &str, target: String) -> NewAuditEvent {
        let a: &Acting = self.acting();
        NewAuditEvent::new(a.at, a.actor.clone(), action, &a.operation_id).target(target)
    }

    /// Redeems the code `presented` for an enrolment of `kind` from a phone reporting `model`:
    /// the code is used up and a mobile (Enrolling, held by the code's user, linked to the
    /// sponsor card for a derived credential; a card of an imported root is named in the
    /// `device.register` audit event instead) is created. Refused with the precise reason, and
    /// nothing changed, when the code is unknown, expired, used, for the other kind, its portal
    /// session ended, the holder is disabled, or the policy now forbids the enrolment.
    pub async fn redeem_enrollment<R: Repo>(
        &self,
        repo: &R,
        presented: &str,
        kind: EnrollmentKind,
        model: &str,
    ) -> Result<Redeemed, DomainError> {
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let redeemed = self.redeem_in(&mut tx, presented, kind, model).await?;
            tx.commit().await?;
            Ok(redeemed)
        })
        .await
    }

    /// What [`System::redeem_enrollment`] would answer, without redeeming: every check runs in a
    /// unit of work that is rolled back, so nothing changes. SCEP uses it to plan the certificate
    /// (key algorithm, subject) before the code is used up, so that a request the CA would refuse
    /// leaves the code and the holder's mobiles as they were. The device in the answer is not
    /// stored.
    pub async fn preview_enrollment<R: Repo>(
        &self,
        repo: &R,
        presented: &str,
        kind: EnrollmentKind,
        model: &str,
    ) -> Result<Redeemed, DomainError> {
        let mut tx = repo.begin().await?;
        // Dropped without commit: rolled back.
        self.redeem_in(&mut tx, presented, kind, model).await
    }

    async fn redeem_in<T: Tx>(
        &self,
        tx: &mut T,
        presented: &str,
        kind: EnrollmentKind,
        model: &str,
    ) -> Result<Redeemed, DomainError> {
        let at = self.at();
        let mut code = find_code(tx, presented).await?;
        check_kind(&code, kind)?;
        code.redeem(presented, at)?;
        check_session(tx, &code, at).await?;
        let holder = holder_of(tx, &code).await?;
        let policy = policy_of(tx, &holder).await?;
        check_may_add_mobile(tx, &holder, &policy, kind).await?;
        let mut device = Device::new(DeviceKind::Mobile, model, at)?;
        device.owner = Some(holder.id);
        if let EnrollmentPurpose::DerivedPiv { sponsor: Some(card), .. } = code.purpose {
            let sponsor = tx.get_device(card).await?.ok_or_else(|| DomainError::not_found("device", card))?;
            if sponsor.owner != Some(holder.id) || sponsor.state != DeviceState::Active {
                return Err(DomainError::Conflict(format!(
                    "the sponsor card is {} and no longer vouches for this enrolment",
                    sponsor.state
                )));
            }
            device.links.push(DeviceLink { kind: LinkKind::DerivedFrom, target: card });
        }
        tx.insert_device(&device).await?;
        code.device = Some(device.id);
        tx.update_enrollment_code(&code).await?;
        // A card of an imported root has no device to link to: the record of which card vouched
        // for the mobile is this event.
        let external_sponsor = match &code.purpose {
            EnrollmentPurpose::DerivedPiv { external_sponsor, .. } => external_sponsor.clone(),
            EnrollmentPurpose::MobileProfile => None,
        };
        let register = self.event("device.register", format!("device:{}", device.id)).after(json!({
            "kind": device.kind,
            "model": device.model,
            "owner": holder.id,
            "state": device.state,
            "links": device.links,
            "external_sponsor": external_sponsor,
            "enrollment_code": code.id,
        }));
        tx.append_audit(register).await?;
        let redeem = self
            .event("enrollment_code.redeem", format!("enrollment_code:{}", code.id))
            .after(json!({"purpose": code.purpose, "device": device.id, "user": holder.id}));
        tx.append_audit(redeem).await?;
        Ok(Redeemed { code, device, holder, policy })
    }

    /// The enrolment the code `presented` started: redeemed, not completed, not expired. The
    /// app's second step presents the code again; nothing changes.
    pub async fn enrollment_in_progress<R: Repo>(
        &self,
        repo: &R,
        presented: &str,
        kind: EnrollmentKind,
    ) -> Result<Redeemed, DomainError> {
        let at = self.at();
        let mut tx = repo.begin().await?;
        let code = find_code(&mut tx, presented).await?;
        check_kind(&code, kind)?;
        code.check_in_progress(presented, at)?;
        check_session(&mut tx, &code, at).await?;
        let holder = holder_of(&mut tx, &code).await?;
        let policy = policy_of(&mut tx, &holder).await?;
        let id = code.device.ok_or(EnrollmentError::NotInProgress)?;
        let device = tx.get_device(id).await?.ok_or_else(|| DomainError::not_found("device", id))?;
        if device.state != DeviceState::Enrolling {
            return Err(DomainError::Conflict(format!("the mobile being enrolled is {}", device.state)));
        }
        tx.commit().await?;
        Ok(Redeemed { code, device, holder, policy })
    }

    /// Completes the enrolment of the code `presented` with the certificates the CA signed for
    /// the phone: the mobile becomes Active, the certificates are recorded Active, the code is
    /// completed, and the holder's notification is recorded (SP 800-157 asks the issuer to notify
    /// the subscriber). Refused, changing nothing, when the enrolment is not in progress.
    pub async fn complete_enrollment<R: Repo>(
        &self,
        repo: &R,
        presented: &str,
        credentials: &mut [Credential],
    ) -> Result<Device, DomainError> {
        let at = self.at();
        let (device, recorded) = retry(repo, || {
            let mut attempt = credentials.to_vec();
            async move {
                let mut tx = repo.begin().await?;
                let mut code = find_code(&mut tx, presented).await?;
                code.check_in_progress(presented, at)?;
                check_session(&mut tx, &code, at).await?;
                let holder = holder_of(&mut tx, &code).await?;
                let id = code.device.ok_or(EnrollmentError::NotInProgress)?;
                let device = tx.get_device(id).await?.ok_or_else(|| DomainError::not_found("device", id))?;
                let device = transition(&mut tx, device, DeviceAction::Enrolled, self.acting()).await?;
                if let Some(refused) =
                    record_certificates(&mut tx, self.acting(), device.id, &mut attempt, None).await?
                {
                    return Err(refused.into());
                }
                code.completed_at = Some(at);
                tx.update_enrollment_code(&code).await?;
                let what = match code.purpose.kind() {
                    EnrollmentKind::MobileProfile => "a mobile device certificate",
                    EnrollmentKind::DerivedPiv => "a derived PIV credential",
                };
                let notice = self.event("notification.credential_issued", format!("user:{}", holder.id)).after(
                    json!({
                        "to": holder.email.as_ref().map(|e| e.as_str().to_owned()),
                        "message": format!("{what} was issued to a mobile ({}) on your account", device.model),
                        "device": device.id,
                    }),
                );
                tx.append_audit(notice).await?;
                tx.commit().await?;
                Ok::<_, DomainError>((device, attempt))
            }
        })
        .await?;
        credentials.clone_from_slice(&recorded);
        Ok(device)
    }

    /// Deletes mobiles still Enrolling whose code expired more than [`STALE_ENROLMENT_GRACE`]
    /// ago (the phone never finished), so they stop counting against `max_mobiles`. Returns how
    /// many.
    pub async fn abandon_stale_enrolments<R: Repo>(&self, repo: &R) -> Result<usize, DomainError> {
        let cutoff = self.at() - STALE_ENROLMENT_GRACE;
        let query = DeviceQuery {
            kind: Some(DeviceKind::Mobile),
            states: vec![DeviceState::Enrolling],
            limit: ALL,
            ..Default::default()
        };
        let stale: Vec<Device> = {
            let mut tx = repo.begin().await?;
            let all = tx.list_devices(&query).await?;
            tx.commit().await?;
            // Codes live at most a few minutes (policy), so a mobile created before the cutoff
            // minus the longest code lifetime has an expired code.
            all.into_iter().filter(|d| d.created_at + MAX_CODE_LIFETIME < cutoff).collect()
        };
        let mut n = 0;
        for device in stale {
            let id = device.id;
            let done = retry(repo, || async move {
                let mut tx = repo.begin().await?;
                let Some(d) = tx.get_device(id).await? else { return Ok(false) };
                if d.state != DeviceState::Enrolling {
                    return Ok(false);
                }
                transition(&mut tx, d, DeviceAction::Delete, self.acting()).await?;
                tx.commit().await?;
                Ok::<_, DomainError>(true)
            })
            .await?;
            n += usize::from(done);
        }
        Ok(n)
    }
}

/// The longest an enrolment code lives (policies may choose less).
pub const MAX_CODE_LIFETIME: Duration = Duration::minutes(10);
