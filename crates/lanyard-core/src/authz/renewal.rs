//! Certificate renewal by a mobile (SCEP RenewalReq): the phone proves possession of its current
//! certificate's key and receives a certificate for a new key; the old one is superseded.

use serde_json::json;

use crate::error::DomainError;
use crate::ids::CredentialId;
use crate::lifecycle::{CredentialAction, CredentialState, DeviceState, apply_credential};
use crate::model::{CertSlot, Credential, CredentialKind, Device, DeviceKind, Policy, User};
use crate::repo::prelude::*;

use super::{System, credential_snapshot, policy_of, record_certificates};

/// A renewal under way: the certificate that signed the request, its mobile, the holder and the
/// holder's policy (what the CA needs to plan the new certificate).
#[derive(Clone, Debug)]
pub struct MobileRenewal {
    pub credential: Credential,
    pub device: Device,
    pub holder: User,
    pub policy: Policy,
}

fn refuse(why: impl Into<String>) -> DomainError {
    DomainError::Conflict(why.into())
}

/// Checks that `credential` may be renewed at `at` and answers its (Active) mobile.
async fn renewable<T: Tx>(
    tx: &mut T,
    credential: &Credential,
    at: time::OffsetDateTime,
) -> Result<Device, DomainError> {
    let CredentialKind::Certificate { slot, not_before, not_after, .. } = &credential.kind;
    if *slot != CertSlot::MobileDevice {
        return Err(refuse("only a mobile device certificate renews itself this way"));
    }
    if credential.state != CredentialState::Active {
        return Err(refuse(format!("the certificate that signed the renewal is {}", credential.state)));
    }
    if at < *not_before || at >= *not_after {
        return Err(refuse("the certificate that signed the renewal is not valid now"));
    }
    let id = credential.device;
    let device = tx.get_device(id).await?.ok_or_else(|| DomainError::not_found("device", id))?;
    if device.kind != DeviceKind::Mobile || device.state != DeviceState::Active {
        return Err(refuse(format!("the mobile of that certificate is {}", device.state)));
    }
    Ok(device)
}

impl System {
    /// The mobile whose certificate (serial `serial_hex`, DER `certificate_der` exactly as Lanyard
    /// issued it) signed a renewal request. Refused when Lanyard did not issue it, it is not an
    /// Active, currently valid mobile device certificate, its mobile is not Active, or the holder is
    /// disabled. Changes nothing.
    pub async fn mobile_renewal<R: Repo>(
        &self,
        repo: &R,
        serial_hex: &str,
        certificate_der: &[u8],
    ) -> Result<MobileRenewal, DomainError> {
        let mut tx = repo.begin().await?;
        let credential = tx
            .get_credential_by_serial(serial_hex)
            .await?
            .filter(|c| {
                let CredentialKind::Certificate { certificate_der: issued, .. } = &c.kind;
                issued.as_slice() == certificate_der
            })
            .ok_or_else(|| refuse("the renewal is not signed by a certificate this server issued"))?;
        let device = renewable(&mut tx, &credential, self.at()).await?;
        let owner = device.owner.ok_or_else(|| refuse("the mobile has no holder"))?;
        let holder = tx.get_user(owner).await?.ok_or_else(|| DomainError::not_found("user", owner))?;
        if holder.disabled {
            return Err(refuse(format!("the account {} is disabled", holder.username)));
        }
        let policy = policy_of(&mut tx, &holder).await?;
        tx.commit().await?;
        Ok(MobileRenewal { credential, device, holder, policy })
    }

    /// Records the certificate signed for a renewal (Active, `credential.issue`) and supersedes
    /// the one that asked (`credential.supersede`), in one unit of work that checks both again.
    pub async fn record_mobile_renewal<R: Repo>(
        &self,
        repo: &R,
        old: CredentialId,
        new: &mut Credential,
    ) -> Result<(), DomainError> {
        let at = self.at();
        let recorded = retry(repo, || {
            let mut attempt = [new.clone()];
            async move {
                let mut tx = repo.begin().await?;
                let mut previous =
                    tx.get_credential(old).await?.ok_or_else(|| DomainError::not_found("credential", old))?;
                let device = renewable(&mut tx, &previous, at).await?;
                if attempt[0].device != device.id {
                    return Err(refuse("the new certificate is for another device"));
                }
                if let Some(refused) =
                    record_certificates(&mut tx, self.acting(), device.id, &mut attempt, None).await?
                {
                    return Err(refused.into());
                }
                let before = credential_snapshot(&previous);
                apply_credential(&mut previous, CredentialAction::Supersede, at)?;
                tx.update_credential(&previous).await?;
                let a = self.acting();
                let event = crate::audit::NewAuditEvent::new(
                    a.at,
                    a.actor.clone(),
                    "credential.supersede",
                    &a.operation_id,
                )
                .target(format!("credential:{}", previous.id))
                .before(before)
                .after(json!({"state": previous.state, "superseded_by": attempt[0].id}));
                tx.append_audit(event).await?;
                tx.commit().await?;
                let [recorded] = attempt;
                Ok::<_, DomainError>(recorded)
            }
        })
        .await?;
        *new = recorded;
        Ok(())
    }
}
