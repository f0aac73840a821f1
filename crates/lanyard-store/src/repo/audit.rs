//! The hash-chained audit log.

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
    let r = Reader::new(row, "audit_events", "seq");
    let seq = r.int("seq")?;
    let seq = u64::try_from(seq).map_err(|_| r.corrupt("seq", format!("{seq} is negative")))?;
    let actor = match r.text("actor")?.as_str() {
        "system" => Actor::System,
        "user" => {
            Actor::User { id: r.parse("actor_id")?, username: r.checked("actor_username", Username::parse)? }
        }
        "api_token" => Actor::ApiToken { id: r.parse("actor_id")? },
        other => return Err(r.corrupt("actor", format!("unknown actor kind {other:?}"))),
    };
    Ok(AuditEvent {
        seq,
        at: r.time("at")?,
        actor,
        action: r.text("action")?,
        target: r.opt_text("target")?,
        operation_id: r.text("operation_id")?,
        before: opt_json(&r, "before_json")?,
        after: opt_json(&r, "after_json")?,
        prev_hash: r.array("prev_hash")?,
        hash: r.array("hash")?,
    })
}

fn decode_head(row: &dyn Cols) -> Result<ChainHead, StoreError> {
    let r = Reader::new(row, "audit_events", "seq");
    let seq = r.int("seq")?;
    let seq = u64::try_from(seq).map_err(|_| r.corrupt("seq", format!("{seq} is negative")))?;
    Ok(ChainHead { seq, hash: r.array("hash")? })
}

fn audit_args(e: &AuditEvent) -> Result<Vec<Arg>, StoreError> {
    let seq =
        i64::try_from(e.seq).map_err(|_| StoreError::Backend(format!("audit seq {} overflows", e.seq)))?;
    let (actor, actor_id, actor_username) = match &e.actor {
        Actor::System => ("system", None, None),
        Actor::User { id, username } => ("user", Some(id.to_string()), Some(username.as_str().to_owned())),
        Actor::ApiToken { id } => ("api_token", Some(id.to_string()), None),
    };
    Ok(vec![
        seq.into(),
        nanos("audit_events.at", e.at)?.into(),
        actor.into(),
        actor_id.into(),
        actor_username.into(),
        e.action.as_str().into(),
        e.target.as_deref().into(),
        e.operation_id.as_str().into(),
        canonical_text(&e.before)?.into(),
        canonical_text(&e.after)?.into(),
        e.prev_hash.to_vec().into(),
        e.hash.to_vec().into(),
    ])
}

impl AuditRepo for StoreTx {
    async fn append_audit(&mut self, event: NewAuditEvent) -> Result<AuditEvent, StoreError> {
        // The head is read inside this unit of work. Two concurrent appends both read the same
        // head and try the same seq: the primary key lets only one of them commit (SQLite never
        // gets that far, since its writers run one at a time).
        let head = self.audit_head().await?;
        let sealed = event.seal(&head);
        let q = Query::new(
            concat!(
                "INSERT INTO audit_events (",
                audit_cols!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            ),
            audit_args(&sealed)?,
        );
        self.begin_call().await?;
        let result = self.execute(q).await.map(drop);
        match self.end_call(result).await {
            Ok(()) => Ok(sealed),
            Err(StoreError::Conflict(m)) => {
                // Another unit of work took this seq. This one would read the same head again,
                // so only a fresh start can append.
                self.break_with(StoreError::Conflict(format!(
                    "{m}: another unit of work appended to the audit log first; retry from the start"
                )));
                Err(StoreError::Conflict(m))
            }
            Err(e) => Err(e),
        }
    }

    async fn audit_head(&mut self) -> Result<ChainHead, StoreError> {
        let q = Query::new("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1", vec![]);
        Ok(self.fetch_optional(q, decode_head).await?.unwrap_or(ChainHead::GENESIS))
    }

    async fn list_audit(&mut self, query: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError> {
        let mut q = Query::build(concat!("SELECT ", audit_cols!(), " FROM audit_events WHERE seq > "));
        q.arg(i64::try_from(query.after_seq).unwrap_or(i64::MAX));
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
        q.push(" ORDER BY seq LIMIT ").arg(limit(query.limit));
        self.fetch_all(q, decode_audit).await
    }
}
