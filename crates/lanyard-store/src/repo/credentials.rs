//! Credentials (certificates) on devices.

use lanyard_core::ids::CredentialId;
use lanyard_core::model::{Credential, CredentialKind};
use lanyard_core::repo::{CredentialQuery, CredentialRepo, StoreError};

use super::{clamped_nanos, found, id};
use crate::rows::{Cols, Reader};
use crate::sql::{Arg, Query, limit, nanos, opt_nanos};
use crate::tx::StoreTx;

macro_rules! credential_cols {
    () => {
        "id, device_id, kind, slot, profile, serial_hex, not_before, not_after, certificate_der, \
         attestation_der, state, held_from, revocation_reason, revoked_at, created_at, updated_at"
    };
}

/// `credentials.kind` of [`CredentialKind::Certificate`].
const CERTIFICATE: &str = "certificate";

fn credential_args(c: &Credential) -> Result<Vec<Arg>, StoreError> {
    let CredentialKind::Certificate {
        slot,
        profile,
        serial_hex,
        not_before,
        not_after,
        certificate_der,
        attestation_der,
    } = &c.kind;
    Ok(vec![
        id(c.id),
        id(c.device),
        CERTIFICATE.into(),
        slot.as_str().into(),
        profile.as_str().into(),
        serial_hex.as_str().into(),
        nanos("credentials.not_before", *not_before)?.into(),
        nanos("credentials.not_after", *not_after)?.into(),
        certificate_der.clone().into(),
        attestation_der.clone().into(),
        c.state.as_str().into(),
        c.held_from.map(|s| s.as_str()).into(),
        c.revocation_reason.map(|r| r.as_str()).into(),
        opt_nanos("credentials.revoked_at", c.revoked_at)?.into(),
        nanos("credentials.created_at", c.created_at)?.into(),
        nanos("credentials.updated_at", c.updated_at)?.into(),
    ])
}

fn decode_credential(row: &dyn Cols) -> Result<Credential, StoreError> {
    let r = Reader::new(row, "credentials", "id");
    let kind = match r.text("kind")?.as_str() {
        CERTIFICATE => CredentialKind::Certificate {
            slot: r.parse("slot")?,
            profile: r.text("profile")?,
            serial_hex: r.text("serial_hex")?,
            not_before: r.time("not_before")?,
            not_after: r.time("not_after")?,
            certificate_der: r.bytes("certificate_der")?,
            attestation_der: r.opt_bytes("attestation_der")?,
        },
        other => return Err(r.corrupt("kind", format!("unknown credential kind {other:?}"))),
    };
    Ok(Credential {
        id: r.parse("id")?,
        device: r.parse("device_id")?,
        kind,
        state: r.parse("state")?,
        held_from: r.opt_parse("held_from")?,
        revocation_reason: r.opt_parse("revocation_reason")?,
        revoked_at: r.opt_time("revoked_at")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

impl CredentialRepo for StoreTx {
    async fn get_credential(&mut self, credential: CredentialId) -> Result<Option<Credential>, StoreError> {
        let q = Query::new(
            concat!("SELECT ", credential_cols!(), " FROM credentials WHERE id = $1"),
            vec![id(credential)],
        );
        self.fetch_optional(q, decode_credential).await
    }

    async fn get_credential_by_serial(&mut self, serial_hex: &str) -> Result<Option<Credential>, StoreError> {
        let q = Query::new(
            concat!("SELECT ", credential_cols!(), " FROM credentials WHERE serial_hex = $1"),
            vec![serial_hex.into()],
        );
        self.fetch_optional(q, decode_credential).await
    }

    async fn list_credentials(&mut self, query: &CredentialQuery) -> Result<Vec<Credential>, StoreError> {
        let mut q = Query::build(concat!("SELECT ", credential_cols!(), " FROM credentials WHERE 1 = 1"));
        if let Some(device) = query.device {
            q.push(" AND device_id = ").arg(id(device));
        }
        if !query.states.is_empty() {
            q.push(" AND state IN (");
            for (i, state) in query.states.iter().enumerate() {
                if i > 0 {
                    q.push(", ");
                }
                q.arg(state.as_str());
            }
            q.push(")");
        }
        if let Some(before) = query.not_after_before {
            q.push(" AND not_after < ").arg(clamped_nanos(before));
        }
        if let Some(after) = query.after {
            q.push(" AND id > ").arg(id(after));
        }
        q.push(" ORDER BY id LIMIT ").arg(limit(query.limit));
        self.fetch_all(q, decode_credential).await
    }

    async fn insert_credential(&mut self, credential: &Credential) -> Result<(), StoreError> {
        let q = Query::new(
            concat!(
                "INSERT INTO credentials (",
                credential_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
            ),
            credential_args(credential)?,
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(drop);
        self.end_call(result).await
    }

    async fn update_credential(&mut self, credential: &Credential) -> Result<(), StoreError> {
        let q = Query::new(
            "UPDATE credentials SET device_id = $2, kind = $3, slot = $4, profile = $5, serial_hex = $6, \
             not_before = $7, not_after = $8, certificate_der = $9, attestation_der = $10, state = $11, \
             held_from = $12, revocation_reason = $13, revoked_at = $14, created_at = $15, updated_at = $16 \
             WHERE id = $1",
            credential_args(credential)?,
        );
        self.begin_call().await?;
        let result = self.execute(q).await.and_then(found);
        self.end_call(result).await
    }
}
