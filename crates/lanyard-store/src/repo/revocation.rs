//! Revocation publishing: the revocation epoch (kept by triggers, see migration 0014), status
//! lookups by serial without the certificates, the CRL's entries streamed, and cRLNumbers.

use lanyard_core::lifecycle::{CredentialState, RevocationReason};
use lanyard_core::repo::{ListedEntry, RevocationRecord, RevocationRepo, StoreError};
use time::OffsetDateTime;

use crate::Dialect;
use crate::rows::{Cols, Reader};
use crate::sql::Query;
use crate::tx::StoreTx;

/// The certificates a CRL lists: the predicate of the partial index `credentials_revocation`,
/// so the database reads the index alone.
macro_rules! listed {
    () => {
        "state IN ('pending', 'revoked', 'on_hold', 'superseded')"
    };
}

macro_rules! record_cols {
    () => {
        "serial_hex, state, held_from, revocation_reason, revoked_at, created_at, updated_at"
    };
}

/// At most this many serials per lookup (an OCSP request names at most 64 certificates).
const MAX_SERIALS: usize = 64;

fn decode_record(row: &dyn Cols) -> Result<RevocationRecord, StoreError> {
    let r = Reader::new(row, "credentials", "serial_hex");
    Ok(RevocationRecord {
        serial_hex: r.text("serial_hex")?,
        state: r.parse("state")?,
        held_from: r.opt_parse("held_from")?,
        revocation_reason: r.opt_parse("revocation_reason")?,
        revoked_at: r.opt_time("revoked_at")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

/// A CRL entry's parts read by position from `SELECT serial_hex, state, revocation_reason,
/// since`, borrowing the serial from the row.
fn decode_listed(row: &dyn Cols) -> Result<ListedEntry<'_>, StoreError> {
    let corrupt = |col: &str, reason: &dyn std::fmt::Display| {
        let key = row.text_at(0).ok().flatten().unwrap_or("?");
        StoreError::Backend(format!("corrupt row in credentials ({key}): {col}: {reason}"))
    };
    let serial_hex = row
        .text_at(0)
        .map_err(|e| corrupt("serial_hex", &e))?
        .ok_or_else(|| corrupt("serial_hex", &"is NULL"))?;
    let state: CredentialState = row
        .text_at(1)
        .map_err(|e| corrupt("state", &e))?
        .ok_or_else(|| corrupt("state", &"is NULL"))?
        .parse()
        .map_err(|e| corrupt("state", &e))?;
    let revocation_reason: Option<RevocationReason> = row
        .text_at(2)
        .map_err(|e| corrupt("revocation_reason", &e))?
        .map(str::parse)
        .transpose()
        .map_err(|e| corrupt("revocation_reason", &e))?;
    let since =
        row.int_at(3).map_err(|e| corrupt("since", &e))?.ok_or_else(|| corrupt("since", &"is NULL"))?;
    let since = OffsetDateTime::from_unix_timestamp_nanos(i128::from(since))
        .map_err(|e| corrupt("since", &format!("{since} ns is not a valid time: {e}")))?;
    Ok(ListedEntry { serial_hex, state, revocation_reason, since })
}

fn decode_number(row: &dyn Cols) -> Result<i64, StoreError> {
    Reader::new(row, "crl_numbers", "scope").int("number")
}

fn decode_epoch(row: &dyn Cols) -> Result<i64, StoreError> {
    Reader::new(row, "revocation_epoch", "id").int("epoch")
}

fn unsigned(what: &str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Backend(format!("{what} is negative ({v})")))
}

impl RevocationRepo for StoreTx {
    async fn revocation_epoch(&mut self) -> Result<u64, StoreError> {
        let q = Query::new("SELECT CAST(SUM(epoch) AS BIGINT) AS epoch FROM revocation_epoch", vec![]);
        let epoch = self
            .fetch_optional(q, decode_epoch)
            .await?
            .ok_or_else(|| StoreError::Backend("revocation_epoch has no row (migration 0014)".into()))?;
        unsigned("revocation_epoch.epoch", epoch)
    }

    async fn revocation_records(&mut self, serials: &[String]) -> Result<Vec<RevocationRecord>, StoreError> {
        if serials.is_empty() {
            return Ok(Vec::new());
        }
        if serials.len() > MAX_SERIALS {
            return Err(StoreError::Backend(format!(
                "{} serials in one lookup; at most {MAX_SERIALS}",
                serials.len()
            )));
        }
        let mut q =
            Query::build(concat!("SELECT ", record_cols!(), " FROM credentials WHERE serial_hex IN ("));
        for (i, serial) in serials.iter().enumerate() {
            if i > 0 {
                q.push(", ");
            }
            q.arg(serial.as_str());
        }
        q.push(")");
        self.fetch_all(q, decode_record).await
    }

    async fn for_each_listed<F>(&mut self, each: F) -> Result<u64, StoreError>
    where
        F: FnMut(RevocationRecord) -> Result<(), StoreError> + Send,
    {
        let q = Query::new(concat!("SELECT ", record_cols!(), " FROM credentials WHERE ", listed!()), vec![]);
        self.for_each(q, decode_record, each).await
    }

    async fn for_each_listed_entry<F>(&mut self, mut each: F) -> Result<u64, StoreError>
    where
        F: FnMut(ListedEntry<'_>) -> Result<(), StoreError> + Send,
    {
        // Only what an entry needs; `since` is `RevocationRecord::listed_since` computed by the
        // database, so three timestamps are not shipped for each of a million rows.
        let q = Query::new(
            concat!(
                "SELECT serial_hex, state, revocation_reason, ",
                "CASE WHEN state = 'pending' THEN created_at ELSE COALESCE(revoked_at, updated_at) END AS since ",
                "FROM credentials WHERE ",
                listed!()
            ),
            vec![],
        );
        self.for_each_row(q, |row| each(decode_listed(row)?)).await
    }

    async fn next_crl_number(&mut self, scope: &str, floor: u64) -> Result<u64, StoreError> {
        // cRLNumbers start at 1.
        let floor = i64::try_from(floor.max(1))
            .map_err(|_| StoreError::Backend(format!("cRLNumber floor {floor} exceeds 2^63")))?;
        let sql = match self.dialect() {
            Dialect::Sqlite => {
                "INSERT INTO crl_numbers (scope, number) VALUES ($1, $2) ON CONFLICT (scope) \
                 DO UPDATE SET number = max(crl_numbers.number + 1, excluded.number) RETURNING number"
            }
            Dialect::Postgres => {
                "INSERT INTO crl_numbers (scope, number) VALUES ($1, $2) ON CONFLICT (scope) \
                 DO UPDATE SET number = GREATEST(crl_numbers.number + 1, excluded.number) RETURNING number"
            }
        };
        let q = Query::new(sql, vec![scope.into(), floor.into()]);
        self.begin_call().await?;
        let result = if self.is_read_only() {
            Err(StoreError::ReadOnly(
                "INSERT INTO crl_numbers …: a cRLNumber is taken in a write unit of work".into(),
            ))
        } else {
            self.fetch_optional(q, decode_number).await
        };
        let number = self.end_call(result).await?;
        let number =
            number.ok_or_else(|| StoreError::Backend("crl_numbers upsert returned no row".into()))?;
        unsigned("crl_numbers.number", number)
    }
}
