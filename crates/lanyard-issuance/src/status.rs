//! What OCSP and the CRL say about a credential of ours: one mapping from the lifecycle state,
//! used by both.

use lanyard_ca::{CertStatus, RevocationReason as CrlReason};
use lanyard_core::lifecycle::{CredentialState, RevocationReason};
use lanyard_core::model::Credential;
use lanyard_core::repo::RevocationRecord;

/// The reasonCode a credential's CRL entry carries (`None`: no reason code).
pub fn crl_reason(c: &Credential) -> Option<CrlReason> {
    record_crl_reason(&RevocationRecord::of(c))
}

/// What OCSP says about a credential. A Pending certificate was issued for a card whose
/// personalization has not been confirmed (an interrupted session, or a card nobody activated
/// yet): it is reported on hold from its issue until the device becomes Active, so no certificate
/// is good for a key that may not sit on an issued card.
pub fn ocsp_status(c: &Credential) -> CertStatus {
    record_ocsp_status(&RevocationRecord::of(c))
}

/// [`crl_reason`] from the status fields alone (what the store reads for OCSP and CRLs).
pub fn record_crl_reason(c: &RevocationRecord) -> Option<CrlReason> {
    listed_crl_reason(c.state, c.revocation_reason)
}

/// [`crl_reason`] from a credential's state and revocation reason.
pub fn listed_crl_reason(state: CredentialState, reason: Option<RevocationReason>) -> Option<CrlReason> {
    match state {
        // Pending certificates are on hold until their device is activated (see `ocsp_status`).
        CredentialState::OnHold | CredentialState::Pending => Some(CrlReason::CertificateHold),
        CredentialState::Superseded => Some(CrlReason::Superseded),
        _ => reason.and_then(|r| CrlReason::from_code(r.crl_reason_code())),
    }
}

/// [`ocsp_status`] from the status fields alone.
pub fn record_ocsp_status(c: &RevocationRecord) -> CertStatus {
    match c.state {
        CredentialState::Active | CredentialState::Expired => CertStatus::Good,
        CredentialState::Pending => {
            CertStatus::Revoked { revoked_at: c.created_at, reason: Some(CrlReason::CertificateHold) }
        }
        CredentialState::OnHold | CredentialState::Revoked | CredentialState::Superseded => {
            CertStatus::Revoked {
                revoked_at: c.revoked_at.unwrap_or(c.updated_at),
                reason: record_crl_reason(c).filter(|r| *r != CrlReason::Unspecified),
            }
        }
    }
}

/// When a listed credential's CRL entry says it stopped being valid.
pub fn record_revocation_date(c: &RevocationRecord) -> time::OffsetDateTime {
    c.listed_since()
}
