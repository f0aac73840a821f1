//! What servers sharing the database coordinate through it: throttle failures and cluster
//! notes (migration 0015).

use lanyard_core::repo::{ClusterNote, ClusterRepo, StoreError, ThrottleRepo};
use lanyard_core::secrets::TokenHash;
use time::OffsetDateTime;

use super::clamped_nanos;
use crate::rows::{Cols, Reader};
use crate::sql::{Query, limit, nanos};
use crate::tx::StoreTx;

fn decode_failure(row: &dyn Cols) -> Result<OffsetDateTime, StoreError> {
    Reader::new(row, "throttle_failures", "scope").time("at")
}

fn decode_note(row: &dyn Cols) -> Result<ClusterNote, StoreError> {
    let r = Reader::new(row, "cluster_notes", "owner");
    Ok(ClusterNote {
        topic: r.text("topic")?,
        owner: r.text("owner")?,
        key: r.text("note_key")?,
        value: r.bytes("value")?,
        created_at: r.time("created_at")?,
        expires_at: r.time("expires_at")?,
    })
}

impl ThrottleRepo for StoreTx {
    async fn recent_failures(
        &mut self,
        scope: &str,
        key: &TokenHash,
        since: OffsetDateTime,
        n: u32,
    ) -> Result<Vec<OffsetDateTime>, StoreError> {
        let q = Query::new(
            "SELECT scope, at FROM throttle_failures WHERE scope = $1 AND key_hash = $2 AND at >= $3 \
             ORDER BY at DESC LIMIT $4",
            vec![scope.into(), key.as_bytes().as_slice().into(), clamped_nanos(since).into(), limit(n)],
        );
        self.fetch_all(q, decode_failure).await
    }

    async fn record_failure(
        &mut self,
        scope: &str,
        key: &TokenHash,
        at: OffsetDateTime,
        forget_before: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let forget = Query::new(
            "DELETE FROM throttle_failures WHERE scope = $1 AND key_hash = $2 AND at < $3",
            vec![scope.into(), key.as_bytes().as_slice().into(), clamped_nanos(forget_before).into()],
        );
        let insert = Query::new(
            "INSERT INTO throttle_failures (scope, key_hash, at) VALUES ($1, $2, $3)",
            vec![scope.into(), key.as_bytes().as_slice().into(), nanos("throttle_failures.at", at)?.into()],
        );
        self.begin_call().await?;
        let result = match self.execute(forget).await {
            Ok(_) => self.execute(insert).await.map(drop),
            Err(e) => Err(e),
        };
        self.end_call(result).await
    }

    async fn clear_failures(&mut self, scope: &str, key: &TokenHash) -> Result<u64, StoreError> {
        let q = Query::new(
            "DELETE FROM throttle_failures WHERE scope = $1 AND key_hash = $2",
            vec![scope.into(), key.as_bytes().as_slice().into()],
        );
        self.begin_call().await?;
        let result = self.execute(q).await;
        self.end_call(result).await
    }

    async fn prune_failures(&mut self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let q = Query::new("DELETE FROM throttle_failures WHERE at < $1", vec![clamped_nanos(before).into()]);
        self.begin_call().await?;
        let result = self.execute(q).await;
        self.end_call(result).await
    }
}

fn note_args(note: &ClusterNote) -> Result<Vec<crate::sql::Arg>, StoreError> {
    Ok(vec![
        note.topic.as_str().into(),
        note.owner.as_str().into(),
        note.key.as_str().into(),
        note.value.as_slice().into(),
        nanos("cluster_notes.created_at", note.created_at)?.into(),
        nanos("cluster_notes.expires_at", note.expires_at)?.into(),
    ])
}

impl ClusterRepo for StoreTx {
    async fn put_note(&mut self, note: &ClusterNote) -> Result<(), StoreError> {
        let delete = Query::new(
            "DELETE FROM cluster_notes WHERE topic = $1 AND owner = $2 AND note_key = $3",
            vec![note.topic.as_str().into(), note.owner.as_str().into(), note.key.as_str().into()],
        );
        let insert = Query::new(
            "INSERT INTO cluster_notes (topic, owner, note_key, value, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            note_args(note)?,
        );
        self.begin_call().await?;
        let result = match self.execute(delete).await {
            Ok(_) => self.execute(insert).await.map(drop),
            Err(e) => Err(e),
        };
        self.end_call(result).await
    }

    async fn insert_note(&mut self, note: &ClusterNote) -> Result<(), StoreError> {
        let insert = Query::new(
            "INSERT INTO cluster_notes (topic, owner, note_key, value, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            note_args(note)?,
        );
        self.begin_call().await?;
        let result = self.execute(insert).await.map(drop);
        self.end_call(result).await
    }

    async fn get_note(
        &mut self,
        topic: &str,
        owner: &str,
        key: &str,
        now: OffsetDateTime,
    ) -> Result<Option<ClusterNote>, StoreError> {
        let q = Query::new(
            "SELECT topic, owner, note_key, value, created_at, expires_at FROM cluster_notes \
             WHERE topic = $1 AND owner = $2 AND note_key = $3 AND expires_at > $4",
            vec![topic.into(), owner.into(), key.into(), clamped_nanos(now).into()],
        );
        self.fetch_optional(q, decode_note).await
    }

    async fn list_notes(
        &mut self,
        topic: &str,
        owner: &str,
        now: OffsetDateTime,
        n: u32,
    ) -> Result<Vec<ClusterNote>, StoreError> {
        let q = Query::new(
            "SELECT topic, owner, note_key, value, created_at, expires_at FROM cluster_notes \
             WHERE topic = $1 AND owner = $2 AND expires_at > $3 ORDER BY created_at, note_key LIMIT $4",
            vec![topic.into(), owner.into(), clamped_nanos(now).into(), limit(n)],
        );
        self.fetch_all(q, decode_note).await
    }

    async fn delete_note(&mut self, topic: &str, owner: &str, key: &str) -> Result<bool, StoreError> {
        let q = Query::new(
            "DELETE FROM cluster_notes WHERE topic = $1 AND owner = $2 AND note_key = $3",
            vec![topic.into(), owner.into(), key.into()],
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(|n| n > 0);
        self.end_call(result).await
    }

    async fn delete_expired_notes(&mut self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let q =
            Query::new("DELETE FROM cluster_notes WHERE expires_at < $1", vec![clamped_nanos(before).into()]);
        self.begin_call().await?;
        let result = self.execute(q).await;
        self.end_call(result).await
    }
}
