//! The hash-chained audit log: appends without reading the head, and the sealer that chains
//! appended events in batches (see `lanyard_core::audit` and `docs/storage.md`).

use lanyard_core::audit::{Actor, AuditEvent, ChainHead, NewAuditEvent, canonical_json};
use lanyard_core::model::Username;
use lanyard_core::repo::{AuditQuery, AuditRepo, StoreError};

use super::opt_json;
use crate::rows::{Cols, Reader};
use crate::sql::{Arg, Query, limit, nanos};
use crate::tx::StoreTx;

macro_rules! audit_cols {
    () => {
        "seq, at, actor, actor_id, actor_username, action, target, operation_id, before_json, after_json, \
         prev_hash, hash"
    };
}

fn canonical_text(value: &Option<serde_json::Value>) -> Result<Option<String>, StoreError> {
    value
        .as_ref()
        .map(|v| {
            let mut out = Vec::new();
            canonical_json(v, &mut out);
            String::from_utf8(out)
                .map_err(|e| StoreError::Backend(format!("audit JSON is not UTF-8 after encoding: {e}")))
        })
        .transpose()
}

/// A `LIKE` pattern matching text that starts with `prefix`, with `\\` as the escape character.
fn prefix_pattern(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 2);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

fn decode_audit(row: &dyn Cols) -> Result<AuditEvent, StoreError> {
    let r = Reader::new(row, "audit_events", "id");
    let seq = r.opt_int("seq")?;
    let seq = seq
        .map(|seq| u64::try_from(seq).map_err(|_| r.corrupt("seq", format!("{seq} is negative"))))
        .transpose()?;
    let actor = match r.text("actor")?.as_str() {
        "system" => Actor::System,
        "user" => {
            Actor::User { id: r.parse("actor_id")?, username: r.checked("actor_username", Username::parse)? }
        }
        "api_token" => Actor::ApiToken { id: r.parse("actor_id")? },
        other => return Err(r.corrupt("actor", format!("unknown actor kind {other:?}"))),
    };
    Ok(AuditEvent {
        at: r.time("at")?,
        actor,
        action: r.text("action")?,
        target: r.opt_text("target")?,
        operation_id: r.text("operation_id")?,
        before: opt_json(&r, "before_json")?,
        after: opt_json(&r, "after_json")?,
        prev_hash: r.opt_array("prev_hash")?.unwrap_or([0; 32]),
        hash: r.opt_array("hash")?.unwrap_or([0; 32]),
        sealed: seq.is_some(),
        seq: seq.unwrap_or(0),
    })
}

/// An unsealed event as the sealer reads it: its row id and its contents.
fn decode_unsealed(row: &dyn Cols) -> Result<(i64, AuditEvent), StoreError> {
    let r = Reader::new(row, "audit_events", "id");
    Ok((r.int("id")?, decode_audit(row)?))
}

fn decode_head(row: &dyn Cols) -> Result<ChainHead, StoreError> {
    let r = Reader::new(row, "audit_events", "seq");
    let seq = r.int("seq")?;
    let seq = u64::try_from(seq).map_err(|_| r.corrupt("seq", format!("{seq} is negative")))?;
    Ok(ChainHead { seq, hash: r.array("hash")? })
}

fn audit_args(e: &AuditEvent) -> Result<Vec<Arg>, StoreError> {
    let (actor, actor_id, actor_username) = match &e.actor {
        Actor::System => ("system", None, None),
        Actor::User { id, username } => ("user", Some(id.to_string()), Some(username.as_str().to_owned())),
        Actor::ApiToken { id } => ("api_token", Some(id.to_string()), None),
    };
    Ok(vec![
        nanos("audit_events.at", e.at)?.into(),
        actor.into(),
        actor_id.into(),
        actor_username.into(),
        e.action.as_str().into(),
        e.target.as_deref().into(),
        e.operation_id.as_str().into(),
        canonical_text(&e.before)?.into(),
        canonical_text(&e.after)?.into(),
    ])
}

/// At most this many events are chained per sealing transaction.
const SEAL_BATCH: u32 = 1000;

impl StoreTx {
    /// Chains every unsealed event this transaction can see, in append order, after the newest
    /// sealed one; returns how many. The caller makes sure only one sealer runs at a time (the
    /// SQLite write lock; a PostgreSQL advisory lock), and the unique `seq` stops a second one
    /// that got past that anyway.
    pub(crate) async fn seal_pending_audit(&mut self) -> Result<u64, StoreError> {
        let mut sealed = 0;
        let mut head = self.audit_head().await?;
        loop {
            let q = Query::new(
                concat!(
                    "SELECT id, ",
                    audit_cols!(),
                    " FROM audit_events WHERE seq IS NULL ORDER BY id LIMIT $1"
                ),
                vec![limit(SEAL_BATCH)],
            );
            let batch = self.fetch_all(q, decode_unsealed).await?;
            for (id, mut event) in batch.iter().cloned() {
                event.seal_after(&head);
                let seq = i64::try_from(event.seq)
                    .map_err(|_| StoreError::Backend(format!("audit seq {} overflows", event.seq)))?;
                let q = Query::new(
                    "UPDATE audit_events SET seq = $1, prev_hash = $2, hash = $3 WHERE id = $4 AND seq IS NULL",
                    vec![seq.into(), event.prev_hash.to_vec().into(), event.hash.to_vec().into(), id.into()],
                );
                if self.execute(q).await? != 1 {
                    let e = StoreError::Retryable(format!("audit event {id} was sealed by another sealer"));
                    self.break_with(e.clone());
                    return Err(e);
                }
                head = event.head();
                sealed += 1;
            }
            if batch.len() < SEAL_BATCH as usize {
                return Ok(sealed);
            }
        }
    }
}

impl AuditRepo for StoreTx {
    async fn append_audit(&mut self, event: NewAuditEvent) -> Result<AuditEvent, StoreError> {
        // No head is read: the row takes the next id, and the sealer chains it after commit.
        let unsealed = event.unsealed();
        let q = Query::new(
            "INSERT INTO audit_events (at, actor, actor_id, actor_username, action, target, operation_id, \
             before_json, after_json) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            audit_args(&unsealed)?,
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(drop);
        self.end_call(result).await?;
        Ok(unsealed)
    }

    async fn audit_head(&mut self) -> Result<ChainHead, StoreError> {
        let q = Query::new(
            "SELECT seq, hash FROM audit_events WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1",
            vec![],
        );
        Ok(self.fetch_optional(q, decode_head).await?.unwrap_or(ChainHead::GENESIS))
    }

    async fn unsealed_audit(&mut self) -> Result<u64, StoreError> {
        let q = Query::new("SELECT COUNT(*) AS n FROM audit_events WHERE seq IS NULL", vec![]);
        let n = self
            .fetch_optional(q, |row| Reader::new(row, "audit_events", "seq").int("n"))
            .await?
            .unwrap_or(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn list_audit(&mut self, query: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError> {
        let mut q = Query::build(concat!("SELECT ", audit_cols!(), " FROM audit_events WHERE seq > "));
        q.arg(i64::try_from(query.after_seq).unwrap_or(i64::MAX));
        filters(&mut q, query)?;
        q.push(" ORDER BY seq LIMIT ").arg(limit(query.limit));
        let mut events = self.fetch_all(q, decode_audit).await?;
        let room = u32::try_from(events.len()).map_or(0, |n| query.limit.saturating_sub(n));
        if room > 0 {
            // The events not chained yet come last, in append order, whatever `after_seq`.
            let mut q =
                Query::build(concat!("SELECT ", audit_cols!(), " FROM audit_events WHERE seq IS NULL"));
            filters(&mut q, query)?;
            q.push(" ORDER BY id LIMIT ").arg(limit(room));
            events.extend(self.fetch_all(q, decode_audit).await?);
        }
        Ok(events)
    }
}

/// The filters of `query` other than `after_seq` and `limit`, as ` AND …` clauses.
fn filters(q: &mut Query, query: &AuditQuery) -> Result<(), StoreError> {
    {
        if let Some(target) = &query.target {
            q.push(" AND target = ").arg(target.as_str());
        }
        if let Some(action) = &query.action {
            q.push(" AND (action = ").arg(action.as_str());
            if !action.contains('.') {
                // The family: `device` matches `device.suspend`; `_` and `%` in the name are
                // escaped, so they mean themselves.
                q.push(" OR action LIKE ").arg(prefix_pattern(&format!("{action}."))).push(" ESCAPE '\\'");
            }
            q.push(")");
        }
        if let Some(actor) = &query.actor {
            q.push(" AND (actor_username = ").arg(actor.as_str()).push(" OR actor_id = ").arg(actor.as_str());
            q.push(")");
        }
        if let Some(since) = query.since {
            q.push(" AND at >= ").arg(nanos("audit.since", since)?);
        }
        if let Some(until) = query.until {
            q.push(" AND at < ").arg(nanos("audit.until", until)?);
        }
    }
    Ok(())
}
