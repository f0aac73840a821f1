//! Passkey registrations and the one-time WebAuthn challenges.

use lanyard_core::ids::PasskeyId;
use lanyard_core::model::{ChallengePurpose, Passkey, WebAuthnChallenge};
use lanyard_core::repo::{PasskeyQuery, PasskeyRepo, StoreError};
use lanyard_core::secrets::TokenHash;
use time::OffsetDateTime;

use super::{clamped_nanos, found, id, opt_id};
use crate::rows::{Cols, Reader};
use crate::sql::{Query, limit, nanos, opt_nanos};
use crate::tx::StoreTx;

macro_rules! passkey_cols {
    () => {
        "id, credential_id, user_id, device_id, rp_id, public_key, sign_count, aaguid, attestation, state, \
         created_at, last_used_at, removed_at"
    };
}

macro_rules! challenge_cols {
    () => {
        "challenge_hash, purpose, binding_hash, user_id, device_id, created_at, expires_at, used_at"
    };
}

fn decode_passkey(row: &dyn Cols) -> Result<Passkey, StoreError> {
    let r = Reader::new(row, "passkeys", "id");
    let count = r.int("sign_count")?;
    Ok(Passkey {
        id: r.parse("id")?,
        credential_id: r.bytes("credential_id")?,
        user: r.parse("user_id")?,
        device: r.parse("device_id")?,
        rp_id: r.text("rp_id")?,
        public_key: r.bytes("public_key")?,
        sign_count: u32::try_from(count)
            .map_err(|_| r.corrupt("sign_count", format!("{count} is not a u32")))?,
        aaguid: r.array("aaguid")?,
        attestation: r.text("attestation")?,
        state: r.parse("state")?,
        created_at: r.time("created_at")?,
        last_used_at: r.opt_time("last_used_at")?,
        removed_at: r.opt_time("removed_at")?,
    })
}

fn decode_challenge(row: &dyn Cols) -> Result<WebAuthnChallenge, StoreError> {
    let r = Reader::new(row, "webauthn_challenges", "purpose");
    Ok(WebAuthnChallenge {
        challenge_hash: TokenHash::from_bytes(r.array("challenge_hash")?),
        purpose: r.parse("purpose")?,
        binding: TokenHash::from_bytes(r.array("binding_hash")?),
        user: r.opt_parse("user_id")?,
        device: r.opt_parse("device_id")?,
        created_at: r.time("created_at")?,
        expires_at: r.time("expires_at")?,
        used_at: r.opt_time("used_at")?,
    })
}

impl PasskeyRepo for StoreTx {
    async fn insert_passkey(&mut self, p: &Passkey) -> Result<(), StoreError> {
        let q = Query::new(
            concat!(
                "INSERT INTO passkeys (",
                passkey_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
            ),
            vec![
                id(p.id),
                p.credential_id.as_slice().into(),
                id(p.user),
                id(p.device),
                p.rp_id.as_str().into(),
                p.public_key.as_slice().into(),
                i64::from(p.sign_count).into(),
                p.aaguid.as_slice().into(),
                p.attestation.as_str().into(),
                p.state.as_str().into(),
                nanos("passkeys.created_at", p.created_at)?.into(),
                opt_nanos("passkeys.last_used_at", p.last_used_at)?.into(),
                opt_nanos("passkeys.removed_at", p.removed_at)?.into(),
            ],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(drop);
        self.end_call(result).await
    }

    async fn get_passkey(&mut self, passkey: PasskeyId) -> Result<Option<Passkey>, StoreError> {
        let q = Query::new(
            concat!("SELECT ", passkey_cols!(), " FROM passkeys WHERE id = $1"),
            vec![id(passkey)],
        );
        self.fetch_optional(q, decode_passkey).await
    }

    async fn get_passkey_by_credential_id(
        &mut self,
        credential_id: &[u8],
    ) -> Result<Option<Passkey>, StoreError> {
        let q = Query::new(
            concat!("SELECT ", passkey_cols!(), " FROM passkeys WHERE credential_id = $1"),
            vec![credential_id.into()],
        );
        self.fetch_optional(q, decode_passkey).await
    }

    async fn list_passkeys(&mut self, query: &PasskeyQuery) -> Result<Vec<Passkey>, StoreError> {
        let mut q = Query::build(concat!("SELECT ", passkey_cols!(), " FROM passkeys WHERE 1 = 1"));
        if let Some(user) = query.user {
            q.push(" AND user_id = ").arg(id(user));
        }
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
        q.push(" ORDER BY created_at, id LIMIT ").arg(limit(query.limit));
        self.fetch_all(q, decode_passkey).await
    }

    async fn update_passkey(&mut self, p: &Passkey) -> Result<(), StoreError> {
        let q = Query::new(
            "UPDATE passkeys SET sign_count = $2, last_used_at = $3, state = $4, removed_at = $5 WHERE id = $1",
            vec![
                id(p.id),
                i64::from(p.sign_count).into(),
                opt_nanos("passkeys.last_used_at", p.last_used_at)?.into(),
                p.state.as_str().into(),
                opt_nanos("passkeys.removed_at", p.removed_at)?.into(),
            ],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.and_then(found);
        self.end_call(result).await
    }

    async fn insert_webauthn_challenge(&mut self, c: &WebAuthnChallenge) -> Result<(), StoreError> {
        let q = Query::new(
            concat!(
                "INSERT INTO webauthn_challenges (",
                challenge_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            ),
            vec![
                c.challenge_hash.as_bytes().as_slice().into(),
                c.purpose.as_str().into(),
                c.binding.as_bytes().as_slice().into(),
                opt_id(c.user),
                opt_id(c.device),
                nanos("webauthn_challenges.created_at", c.created_at)?.into(),
                nanos("webauthn_challenges.expires_at", c.expires_at)?.into(),
                opt_nanos("webauthn_challenges.used_at", c.used_at)?.into(),
            ],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(drop);
        self.end_call(result).await
    }

    async fn redeem_webauthn_challenge(
        &mut self,
        hash: &TokenHash,
        binding: &TokenHash,
        purpose: ChallengePurpose,
        at: OffsetDateTime,
    ) -> Result<Option<WebAuthnChallenge>, StoreError> {
        // The whole rule in the WHERE clause: the database decides which redemption wins.
        let q = Query::new(
            "UPDATE webauthn_challenges SET used_at = $1 \
             WHERE challenge_hash = $2 AND binding_hash = $3 AND purpose = $4 \
             AND used_at IS NULL AND expires_at > $1",
            vec![
                nanos("webauthn_challenges.used_at", at)?.into(),
                hash.as_bytes().as_slice().into(),
                binding.as_bytes().as_slice().into(),
                purpose.as_str().into(),
            ],
        );
        self.begin_call().await?;
        let result = match self.execute(q).await {
            Ok(0) => Ok(None),
            Ok(_) => {
                let q = Query::new(
                    concat!(
                        "SELECT ",
                        challenge_cols!(),
                        " FROM webauthn_challenges WHERE challenge_hash = $1"
                    ),
                    vec![hash.as_bytes().as_slice().into()],
                );
                self.fetch_optional(q, decode_challenge).await
            }
            Err(e) => Err(e),
        };
        self.end_call(result).await
    }

    async fn delete_expired_webauthn_challenges(
        &mut self,
        before: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let q = Query::new(
            "DELETE FROM webauthn_challenges WHERE expires_at < $1",
            vec![clamped_nanos(before).into()],
        );
        self.begin_call().await?;
        let result = self.execute(q).await;
        self.end_call(result).await
    }
}
