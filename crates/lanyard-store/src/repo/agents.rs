//! Workstation agents and the one-time codes that pair them.

use lanyard_core::ids::{AgentId, PairingCodeId, UserId};
use lanyard_core::model::{Agent, PairingCode};
use lanyard_core::repo::{AgentRepo, StoreError};
use lanyard_core::secrets::TokenHash;
use time::OffsetDateTime;

use super::{clamped_nanos, found, id};
use crate::rows::{Cols, Reader};
use crate::sql::{Query, nanos, opt_nanos};
use crate::tx::StoreTx;

macro_rules! code_cols {
    () => {
        "id, user_id, code_hash, created_at, expires_at, used_at"
    };
}

macro_rules! agent_cols {
    () => {
        "id, user_id, host_name, credential_hash, created_at, last_seen_at, revoked_at"
    };
}

fn decode_code(row: &dyn Cols) -> Result<PairingCode, StoreError> {
    let r = Reader::new(row, "pairing_codes", "id");
    Ok(PairingCode {
        id: r.parse("id")?,
        user: r.parse("user_id")?,
        code_hash: TokenHash::from_bytes(r.array("code_hash")?),
        created_at: r.time("created_at")?,
        expires_at: r.time("expires_at")?,
        used_at: r.opt_time("used_at")?,
    })
}

fn decode_agent(row: &dyn Cols) -> Result<Agent, StoreError> {
    let r = Reader::new(row, "agents", "id");
    Ok(Agent {
        id: r.parse("id")?,
        user: r.parse("user_id")?,
        host_name: r.text("host_name")?,
        credential_hash: TokenHash::from_bytes(r.array("credential_hash")?),
        created_at: r.time("created_at")?,
        last_seen_at: r.opt_time("last_seen_at")?,
        revoked_at: r.opt_time("revoked_at")?,
    })
}

impl AgentRepo for StoreTx {
    async fn insert_pairing_code(&mut self, code: &PairingCode) -> Result<(), StoreError> {
        let q = Query::new(
            concat!("INSERT INTO pairing_codes (", code_cols!(), ") VALUES ($1, $2, $3, $4, $5, $6)"),
            vec![
                id(code.id),
                id(code.user),
                code.code_hash.as_bytes().as_slice().into(),
                nanos("pairing_codes.created_at", code.created_at)?.into(),
                nanos("pairing_codes.expires_at", code.expires_at)?.into(),
                opt_nanos("pairing_codes.used_at", code.used_at)?.into(),
            ],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(drop);
        self.end_call(result).await
    }

    async fn get_pairing_code(&mut self, code: PairingCodeId) -> Result<Option<PairingCode>, StoreError> {
        let q =
            Query::new(concat!("SELECT ", code_cols!(), " FROM pairing_codes WHERE id = $1"), vec![id(code)]);
        self.fetch_optional(q, decode_code).await
    }

    async fn redeem_pairing_code(
        &mut self,
        hash: &TokenHash,
        at: OffsetDateTime,
    ) -> Result<Option<PairingCode>, StoreError> {
        // The whole rule in the WHERE clause, like a job ticket's: the database, not a copy read
        // earlier, decides whether this redemption wins.
        let q = Query::new(
            "UPDATE pairing_codes SET used_at = $1 \
             WHERE code_hash = $2 AND used_at IS NULL AND expires_at > $1",
            vec![nanos("pairing_codes.used_at", at)?.into(), hash.as_bytes().as_slice().into()],
        );
        self.begin_call().await?;
        let result = match self.execute(q).await {
            Ok(0) => Ok(None),
            Ok(_) => {
                let q = Query::new(
                    concat!("SELECT ", code_cols!(), " FROM pairing_codes WHERE code_hash = $1"),
                    vec![hash.as_bytes().as_slice().into()],
                );
                self.fetch_optional(q, decode_code).await
            }
            Err(e) => Err(e),
        };
        self.end_call(result).await
    }

    async fn delete_expired_pairing_codes(&mut self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let q =
            Query::new("DELETE FROM pairing_codes WHERE expires_at < $1", vec![clamped_nanos(before).into()]);
        self.begin_call().await?;
        let result = self.execute(q).await;
        self.end_call(result).await
    }

    async fn insert_agent(&mut self, agent: &Agent) -> Result<(), StoreError> {
        let q = Query::new(
            concat!("INSERT INTO agents (", agent_cols!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7)"),
            vec![
                id(agent.id),
                id(agent.user),
                agent.host_name.as_str().into(),
                agent.credential_hash.as_bytes().as_slice().into(),
                nanos("agents.created_at", agent.created_at)?.into(),
                opt_nanos("agents.last_seen_at", agent.last_seen_at)?.into(),
                opt_nanos("agents.revoked_at", agent.revoked_at)?.into(),
            ],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(drop);
        self.end_call(result).await
    }

    async fn get_agent(&mut self, agent: AgentId) -> Result<Option<Agent>, StoreError> {
        let q = Query::new(concat!("SELECT ", agent_cols!(), " FROM agents WHERE id = $1"), vec![id(agent)]);
        self.fetch_optional(q, decode_agent).await
    }

    async fn get_agent_by_credential(&mut self, hash: &TokenHash) -> Result<Option<Agent>, StoreError> {
        let q = Query::new(
            concat!("SELECT ", agent_cols!(), " FROM agents WHERE credential_hash = $1"),
            vec![hash.as_bytes().as_slice().into()],
        );
        self.fetch_optional(q, decode_agent).await
    }

    async fn list_agents(&mut self, user: UserId) -> Result<Vec<Agent>, StoreError> {
        let q = Query::new(
            concat!("SELECT ", agent_cols!(), " FROM agents WHERE user_id = $1 ORDER BY created_at, id"),
            vec![id(user)],
        );
        self.fetch_all(q, decode_agent).await
    }

    async fn update_agent(&mut self, agent: &Agent) -> Result<(), StoreError> {
        let q = Query::new(
            "UPDATE agents SET last_seen_at = $2, revoked_at = $3 WHERE id = $1",
            vec![
                id(agent.id),
                opt_nanos("agents.last_seen_at", agent.last_seen_at)?.into(),
                opt_nanos("agents.revoked_at", agent.revoked_at)?.into(),
            ],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.and_then(found);
        self.end_call(result).await
    }
}
