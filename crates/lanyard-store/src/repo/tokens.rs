//! API tokens and login sessions.

use lanyard_core::ids::{ApiTokenId, UserId};
use lanyard_core::model::{ApiToken, Session};
use lanyard_core::repo::{ApiTokenRepo, SessionRepo, StoreError};
use lanyard_core::secrets::TokenHash;
use time::OffsetDateTime;

use super::{clamped_nanos, found, id};
use crate::rows::{Cols, Reader};
use crate::sql::{Query, nanos, opt_nanos};
use crate::tx::StoreTx;

macro_rules! token_cols {
    () => {
        "id, user_id, name, token_hash, created_at, expires_at, last_used_at, revoked_at"
    };
}

fn decode_token(row: &dyn Cols) -> Result<ApiToken, StoreError> {
    let r = Reader::new(row, "api_tokens", "id");
    Ok(ApiToken {
        id: r.parse("id")?,
        user: r.parse("user_id")?,
        name: r.text("name")?,
        token_hash: TokenHash::from_bytes(r.array("token_hash")?),
        created_at: r.time("created_at")?,
        expires_at: r.opt_time("expires_at")?,
        last_used_at: r.opt_time("last_used_at")?,
        revoked_at: r.opt_time("revoked_at")?,
    })
}

fn decode_session(row: &dyn Cols) -> Result<Session, StoreError> {
    // Keyed by the user in messages: the token hash is a credential of sorts.
    let r = Reader::new(row, "sessions", "user_id");
    Ok(Session {
        token_hash: TokenHash::from_bytes(r.array("token_hash")?),
        user: r.parse("user_id")?,
        created_at: r.time("created_at")?,
        expires_at: r.time("expires_at")?,
        last_seen_at: r.time("last_seen_at")?,
    })
}

impl ApiTokenRepo for StoreTx {
    async fn get_api_token(&mut self, token: ApiTokenId) -> Result<Option<ApiToken>, StoreError> {
        let q =
            Query::new(concat!("SELECT ", token_cols!(), " FROM api_tokens WHERE id = $1"), vec![id(token)]);
        self.fetch_optional(q, decode_token).await
    }

    async fn get_api_token_by_hash(&mut self, hash: &TokenHash) -> Result<Option<ApiToken>, StoreError> {
        let q = Query::new(
            concat!("SELECT ", token_cols!(), " FROM api_tokens WHERE token_hash = $1"),
            vec![hash.as_bytes().as_slice().into()],
        );
        self.fetch_optional(q, decode_token).await
    }

    async fn list_api_tokens(&mut self, user: UserId) -> Result<Vec<ApiToken>, StoreError> {
        let q = Query::new(
            concat!("SELECT ", token_cols!(), " FROM api_tokens WHERE user_id = $1 ORDER BY created_at, id"),
            vec![id(user)],
        );
        self.fetch_all(q, decode_token).await
    }

    async fn insert_api_token(&mut self, token: &ApiToken) -> Result<(), StoreError> {
        let q = Query::new(
            concat!("INSERT INTO api_tokens (", token_cols!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"),
            vec![
                id(token.id),
                id(token.user),
                token.name.as_str().into(),
                token.token_hash.as_bytes().as_slice().into(),
                nanos("api_tokens.created_at", token.created_at)?.into(),
                opt_nanos("api_tokens.expires_at", token.expires_at)?.into(),
                opt_nanos("api_tokens.last_used_at", token.last_used_at)?.into(),
                opt_nanos("api_tokens.revoked_at", token.revoked_at)?.into(),
            ],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(drop);
        self.end_call(result).await
    }

    async fn update_api_token(&mut self, token: &ApiToken) -> Result<(), StoreError> {
        let q = Query::new(
            "UPDATE api_tokens SET last_used_at = $2, revoked_at = $3 WHERE id = $1",
            vec![
                id(token.id),
                opt_nanos("api_tokens.last_used_at", token.last_used_at)?.into(),
                opt_nanos("api_tokens.revoked_at", token.revoked_at)?.into(),
            ],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.and_then(found);
        self.end_call(result).await
    }
}

impl SessionRepo for StoreTx {
    async fn insert_session(&mut self, session: &Session) -> Result<(), StoreError> {
        let q = Query::new(
            "INSERT INTO sessions (token_hash, user_id, created_at, expires_at, last_seen_at) \
             VALUES ($1, $2, $3, $4, $5)",
            vec![
                session.token_hash.as_bytes().as_slice().into(),
                id(session.user),
                nanos("sessions.created_at", session.created_at)?.into(),
                nanos("sessions.expires_at", session.expires_at)?.into(),
                nanos("sessions.last_seen_at", session.last_seen_at)?.into(),
            ],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(drop);
        self.end_call(result).await
    }

    async fn get_session(&mut self, hash: &TokenHash) -> Result<Option<Session>, StoreError> {
        let q = Query::new(
            "SELECT token_hash, user_id, created_at, expires_at, last_seen_at FROM sessions WHERE token_hash = $1",
            vec![hash.as_bytes().as_slice().into()],
        );
        self.fetch_optional(q, decode_session).await
    }

    async fn update_session(&mut self, session: &Session) -> Result<(), StoreError> {
        let q = Query::new(
            "UPDATE sessions SET last_seen_at = $2, expires_at = $3 WHERE token_hash = $1",
            vec![
                session.token_hash.as_bytes().as_slice().into(),
                nanos("sessions.last_seen_at", session.last_seen_at)?.into(),
                nanos("sessions.expires_at", session.expires_at)?.into(),
            ],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.and_then(found);
        self.end_call(result).await
    }

    async fn delete_session(&mut self, hash: &TokenHash) -> Result<(), StoreError> {
        let q =
            Query::new("DELETE FROM sessions WHERE token_hash = $1", vec![hash.as_bytes().as_slice().into()]);
        self.begin_call().await?;
        let result = self.execute(q).await.and_then(found);
        self.end_call(result).await
    }

    async fn delete_sessions_of(&mut self, user: UserId) -> Result<u64, StoreError> {
        let q = Query::new("DELETE FROM sessions WHERE user_id = $1", vec![id(user)]);
        self.begin_call().await?;
        let result = self.execute(q).await;
        self.end_call(result).await
    }

    async fn delete_expired_sessions(&mut self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let q = Query::new("DELETE FROM sessions WHERE expires_at < $1", vec![clamped_nanos(before).into()]);
        self.begin_call().await?;
        let result = self.execute(q).await;
        self.end_call(result).await
    }
}
