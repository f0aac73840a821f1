//! Bulk seeding for benchmarks and scale tests: many certificate credentials written through the
//! store's own schema (and its triggers) in large multi-row statements, so a million rows take
//! seconds instead of a million round trips. Nothing in the server calls this.
//!
//! The rows are real credentials of seeded devices (one device per [`CERTIFICATES_PER_DEVICE`]),
//! with distinct serials ([`seeded_serial`]); every row carries a copy of the certificate DER the
//! caller passes, so rows have a realistic width; OCSP and CRLs read only the status columns.

use lanyard_core::ids::{CredentialId, DeviceId};
use lanyard_core::lifecycle::{CredentialState, RevocationReason};
use lanyard_core::model::{CertSlot, Device, DeviceKind};
use lanyard_core::repo::StoreError;
use lanyard_core::repo::prelude::*;
use time::OffsetDateTime;

use crate::Db;
use crate::sql::{Arg, Query, nanos};

/// Certificates per seeded device.
pub const CERTIFICATES_PER_DEVICE: u64 = 1000;
/// Rows per INSERT statement (16 arguments each: within SQLite's and PostgreSQL's limits).
const ROWS_PER_STATEMENT: u64 = 500;
/// Rows per transaction.
const ROWS_PER_TRANSACTION: u64 = 50_000;

/// What to seed.
#[derive(Clone, Debug)]
pub struct SeedSpec {
    /// Certificates to add.
    pub certificates: u64,
    /// Every `revoke_every`-th certificate (index 0, n, 2n, …) is revoked (key compromise); 0: none.
    pub revoke_every: u64,
    /// The DER stored in every row.
    pub certificate_der: Vec<u8>,
    /// Issue (and revocation) time written into the rows.
    pub at: OffsetDateTime,
    /// Distinguishes the serials of several seedings into one database.
    pub batch: u32,
}

/// The serial (lowercase hex, as credentials keep it) of certificate `index` of seeding `batch`:
/// distinct for every (batch, index), 16 bytes, positive, like the CA's random serials.
pub fn seeded_serial(batch: u32, index: u64) -> String {
    // Multiplying by an odd constant is a bijection modulo 2^96, so serials never collide.
    let mixed =
        u128::from(index).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835) & ((1u128 << 96) - 1);
    let value = (0x40u128 << 120) | (u128::from(batch) << 96) | mixed;
    format!("{value:032x}")
}

/// Whether certificate `index` of `spec` is revoked.
pub fn seeded_revoked(spec: &SeedSpec, index: u64) -> bool {
    spec.revoke_every > 0 && index.is_multiple_of(spec.revoke_every)
}

/// Seeds `spec.certificates` certificates (and their devices) into `db`. Returns how many rows
/// were written.
pub async fn seed_certificates(db: &Db, spec: &SeedSpec) -> Result<u64, StoreError> {
    let at = nanos("credentials.created_at", spec.at)?;
    let not_after = nanos("credentials.not_after", spec.at + time::Duration::days(365))?;
    let mut index = 0u64;
    let mut device = DeviceId::new();
    while index < spec.certificates {
        let mut tx = db.begin().await?;
        let end = (index + ROWS_PER_TRANSACTION).min(spec.certificates);
        while index < end {
            let stop = (index + ROWS_PER_STATEMENT).min(end);
            let mut q = Query::build(
                "INSERT INTO credentials (id, device_id, kind, slot, profile, serial_hex, not_before, not_after, \
                 certificate_der, attestation_der, state, held_from, revocation_reason, revoked_at, created_at, \
                 updated_at) VALUES ",
            );
            for i in index..stop {
                if i.is_multiple_of(CERTIFICATES_PER_DEVICE) {
                    let mut d = Device::new(DeviceKind::SmartCard, "Seeded card", spec.at)
                        .map_err(|e| StoreError::Backend(format!("seeded device: {e}")))?;
                    d.serial = Some(format!("seed-{}-{}", spec.batch, i / CERTIFICATES_PER_DEVICE));
                    tx.insert_device(&d).await?;
                    device = d.id;
                }
                let revoked = seeded_revoked(spec, i);
                if i > index {
                    q.push(", ");
                }
                q.push("(");
                let args: [Arg; 16] = [
                    CredentialId::new().to_string().into(),
                    device.to_string().into(),
                    "certificate".into(),
                    CertSlot::PivAuthentication.as_str().into(),
                    "piv-authentication".into(),
                    seeded_serial(spec.batch, i).into(),
                    at.into(),
                    not_after.into(),
                    spec.certificate_der.clone().into(),
                    Arg::Bytes(None),
                    if revoked { CredentialState::Revoked } else { CredentialState::Active }.as_str().into(),
                    Arg::Text(None),
                    Arg::Text(revoked.then(|| RevocationReason::KeyCompromise.as_str().to_owned())),
                    Arg::Int(revoked.then_some(at)),
                    at.into(),
                    at.into(),
                ];
                for (n, arg) in args.into_iter().enumerate() {
                    if n > 0 {
                        q.push(", ");
                    }
                    q.arg(arg);
                }
                q.push(")");
            }
            tx.execute(q).await?;
            index = stop;
        }
        tx.commit().await?;
    }
    Ok(index)
}
