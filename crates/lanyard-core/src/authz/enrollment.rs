//! Redeeming a one-time mobile enrolment code (DESIGN flows C and D), as [`System`]: the code
//! itself is the caller's credential (a phone opening the link has no session).

use serde_json::json;

use crate::error::DomainError;
use crate::model::{Device, DeviceKind, EnrollmentCode, EnrollmentPurpose, Policy, PolicyDenied, User};
use crate::repo::prelude::*;
use crate::secrets::TokenHash;

use super::{System, policy_of};

/// A code used up: the code, the new mobile (Enrolling, owned by the code's user), its holder and
/// the holder's policy at that moment.
#[derive(Clone, Debug)]
pub struct Redeemed {
    pub code: EnrollmentCode,
    pub device: Device,
    pub holder: User,
    pub policy: Policy,
}

/// The purpose a caller redeems for, without its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnrollmentKind {
    /// A configuration profile (flow D).
    MobileProfile,
    /// A derived PIV credential (flow C).
    DerivedPiv,
}

impl EnrollmentKind {
    fn matches(self, purpose: &EnrollmentPurpose) -> bool {
        matches!(
            (self, purpose),
            (Self::MobileProfile, EnrollmentPurpose::MobileProfile)
                | (Self::DerivedPiv, EnrollmentPurpose::DerivedPiv { .. })
        )
    }
}

impl System {
    /// Uses up the enrolment code `presented` for `kind` and registers the phone as the code
    /// user's mobile (`model` as the client names it), Enrolling. Refused, with nothing changed:
    /// an unknown code or one for another purpose (NotFound), an expired or used one
    /// ([`DomainError::Enrollment`]), a disabled holder (NotFound), a policy that no longer allows
    /// mobiles ([`DomainError::PolicyDenied`]). Audited `enrollment_code.redeem` and
    /// `device.enrol_start`, without the code.
    pub async fn redeem_enrollment<R: Repo>(
        &self,
        repo: &R,
        presented: &str,
        kind: EnrollmentKind,
        model: &str,
    ) -> Result<Redeemed, DomainError> {
        let hash = TokenHash::of(presented);
        let at = self.at();
        let hash = &hash;
        retry(repo, || async move {
            let mut tx = repo.begin().await?;
            let not_found = || DomainError::not_found("enrollment code", "presented");
            let mut code = tx.get_enrollment_code_by_hash(hash).await?.ok_or_else(not_found)?;
            if !kind.matches(&code.purpose) {
                return Err(not_found());
            }
            code.redeem(presented, at)?;
            let holder = match tx.get_user(code.user).await? {
                Some(u) if !u.disabled => u,
                _ => return Err(not_found()),
            };
            let policy = policy_of(&mut tx, &holder).await?;
            if !policy.may_add_mobile {
                return Err(PolicyDenied::AddMobileDisabled.into());
            }
            let mut device = Device::new(DeviceKind::Mobile, model, at)?;
            device.owner = Some(holder.id);
            tx.insert_device(&device).await?;
            tx.update_enrollment_code(&code).await?;
            tx.append_audit(
                self.audit("enrollment_code.redeem", format!("enrollment_code:{}", code.id))
                    .after(json!({"purpose": code.purpose, "device": device.id})),
            )
            .await?;
            tx.append_audit(
                self.audit("device.enrol_start", format!("device:{}", device.id))
                    .after(json!({"owner": holder.id, "model": device.model, "state": device.state})),
            )
            .await?;
            tx.commit().await?;
            Ok(Redeemed { code, device, holder, policy })
        })
        .await
    }
}
