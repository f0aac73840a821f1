//! Reserve → sign → record for enrolment paths driven by an operator's request: the unit of work
//! that reads what the rules need, the signature outside any unit of work, and the record step
//! that re-checks the device (`Operator::record_certificate`).

use lanyard_ca::{CertificateAuthority, SoftwareKey};
use lanyard_core::DomainError;
use lanyard_core::authz::{Operator, Redeemed};
use lanyard_core::ids::DeviceId;
use lanyard_core::model::CertSlot;
use lanyard_core::repo::Repo;
use thiserror::Error;
use time::OffsetDateTime;

use crate::rules::{Channel, Enrolment, IssuanceError, Signed, plan, sign};

/// Why an enrolment stopped: the domain (not found, forbidden, storage) or the rules.
#[derive(Debug, Error)]
pub enum EnrolError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Rules(#[from] IssuanceError),
}

/// Reads device `id`, its holder and policy (reserve), applies the rules and has `ca` sign
/// (outside the unit of work). The caller records the result with
/// `Operator::record_certificate`, which re-checks the device.
#[allow(clippy::too_many_arguments)]
pub async fn sign_for_operator<R: Repo>(
    repo: &R,
    op: &Operator<'_>,
    ca: &CertificateAuthority<SoftwareKey>,
    id: DeviceId,
    slot: CertSlot,
    public_key_der: &[u8],
    channel: Channel<'_>,
    now: OffsetDateTime,
) -> Result<Signed, EnrolError> {
    let (device, holder, policy) = op.issuance_context(repo, id).await?;
    let enrolment =
        Enrolment { device: &device, holder: &holder, policy: &policy, slot, public_key_der, channel, now };
    let plan = plan(&enrolment)?;
    Ok(sign(ca, &plan)?)
}

/// Plans and signs the certificate for a phone enrolling with a one-time code (`redeemed`, from
/// `System::redeem_enrollment` or `System::enrollment_in_progress`). CPU work only; the caller
/// records the result with `System::complete_enrollment`.
pub fn sign_for_mobile(
    ca: &CertificateAuthority<SoftwareKey>,
    redeemed: &Redeemed,
    slot: CertSlot,
    public_key_der: &[u8],
    hardware_attested: bool,
    now: OffsetDateTime,
) -> Result<Signed, IssuanceError> {
    let enrolment = Enrolment {
        device: &redeemed.device,
        holder: &redeemed.holder,
        policy: &redeemed.policy,
        slot,
        public_key_der,
        channel: Channel::Mobile { hardware_attested },
        now,
    };
    sign(ca, &plan(&enrolment)?)
}
