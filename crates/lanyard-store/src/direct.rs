//! SQLite statements run in place, on the calling thread.
//!
//! sqlx drives each SQLite connection from a worker thread of its own: every statement is a
//! message to that thread and an answer back, two thread switches. An issuance runs about twenty
//! statements, and on a server given one core those switches and the futex calls behind them
//! took most of its time (`docs/BENCHMARKS.md`, issue 12). A SQLite statement that looks up a row
//! by its key takes a few microseconds, less than one switch, so the units of work of this store
//! run theirs here directly, through `rusqlite` on the same SQLite library sqlx links.
//!
//! What may wait does not run in place: opening a write transaction (`BEGIN IMMEDIATE` waits for
//! writers in other processes, up to the busy timeout) and committing one (an fsync) run on
//! tokio's blocking threads (`group.rs`), and a query that streams many rows (the CRL's) hands
//! its thread's other tasks to another worker while it runs ([`for_each`]).
//!
//! sqlx still owns the schema: `Db::connect` opens its pool, which creates the file, puts it in
//! WAL mode and runs the migrations; the connections here open the same file afterwards.

use std::path::Path;
use std::time::Duration;

use lanyard_core::repo::StoreError;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use crate::rows::{Cols, Decode};
use crate::sql::{Arg, Query};
use crate::tx::QueryError;

/// How long a statement waits for a lock another connection holds (sqlx's pool uses the same).
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Prepared statements kept per connection: every statement text of the store fits.
const STATEMENT_CACHE: usize = 256;

/// Opens a connection to the database file at `path`: read-write for the writer of the file
/// (foreign keys enforced, full fsync at commit, as sqlx's connections have them), or read-only
/// for read units of work (the database itself refuses their writes).
pub(crate) fn open(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(|e| opening(path, &e))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| opening(path, &e))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    let pragmas = if read_only {
        "PRAGMA foreign_keys = ON;"
    } else {
        "PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;"
    };
    conn.execute_batch(pragmas).map_err(|e| opening(path, &e))?;
    Ok(conn)
}

fn opening(path: &Path, e: &rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("cannot open the SQLite database {}: {e}", path.display()))
}

/// A statement failed: the error translated, and whether the transaction is lost with it.
pub(crate) fn classify(e: &rusqlite::Error) -> crate::tx::Failure {
    match e {
        rusqlite::Error::SqliteFailure(err, message) => {
            let message = message.clone().unwrap_or_else(|| err.to_string());
            crate::tx::classify_sqlite(err.extended_code, &message)
        }
        other => crate::tx::Failure { error: StoreError::Backend(other.to_string()), dooms: false },
    }
}

/// Runs a statement without arguments or results (transaction control, savepoints).
pub(crate) fn run(conn: &Connection, sql: &str) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(sql)?.raw_execute().map(drop)
}

/// Prepares `q` (from the connection's cache) and binds its arguments: `$n` takes `args[n-1]`,
/// wherever and however often it appears.
fn prepare<'c>(conn: &'c Connection, q: &Query) -> Result<rusqlite::CachedStatement<'c>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(q.sql())?;
    for index in 1..=stmt.parameter_count() {
        let n = stmt
            .parameter_name(index)
            .and_then(|name| name.strip_prefix('$'))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| rusqlite::Error::InvalidParameterName(format!("parameter {index}")))?;
        let arg = q.args.get(n - 1).ok_or(rusqlite::Error::InvalidParameterCount(n, q.args.len()))?;
        match arg {
            Arg::Text(v) => stmt.raw_bind_parameter(index, v.as_deref())?,
            Arg::Int(v) => stmt.raw_bind_parameter(index, v)?,
            Arg::Bytes(v) => stmt.raw_bind_parameter(index, v.as_deref())?,
            Arg::Bool(v) => stmt.raw_bind_parameter(index, v)?,
        }
    }
    Ok(stmt)
}

/// Runs a statement; returns how many rows it changed.
pub(crate) fn execute(conn: &Connection, q: &Query) -> Result<u64, rusqlite::Error> {
    let mut stmt = prepare(conn, q)?;
    let changed = stmt.raw_execute()?;
    Ok(changed as u64)
}

/// Runs a query and hands each row to `each` until it returns `false` or an error. Returns the
/// number of rows handed over.
fn step_rows(
    conn: &Connection,
    q: &Query,
    mut each: impl FnMut(&dyn Cols) -> Result<bool, StoreError>,
) -> Result<u64, QueryError> {
    let mut stmt = prepare(conn, q).map_err(QueryError::Sqlite)?;
    let mut rows = stmt.raw_query();
    let mut n = 0u64;
    while let Some(row) = rows.next().map_err(QueryError::Sqlite)? {
        n += 1;
        if !each(&Row(row)).map_err(QueryError::Row)? {
            break;
        }
    }
    Ok(n)
}

/// Runs a query and hands each decoded row to `each`; stops at the first error.
fn each_row<T>(
    conn: &Connection,
    q: &Query,
    decode: Decode<T>,
    mut each: impl FnMut(T) -> Result<bool, StoreError>,
) -> Result<u64, QueryError> {
    step_rows(conn, q, |row| each(decode(row)?))
}

/// Runs a query and decodes every row.
pub(crate) fn fetch_all<T>(conn: &Connection, q: &Query, decode: Decode<T>) -> Result<Vec<T>, QueryError> {
    let mut out = Vec::new();
    each_row(conn, q, decode, |v| {
        out.push(v);
        Ok(true)
    })?;
    Ok(out)
}

/// Runs a query and decodes its first row, if any.
pub(crate) fn fetch_optional<T>(
    conn: &Connection,
    q: &Query,
    decode: Decode<T>,
) -> Result<Option<T>, QueryError> {
    let mut first = None;
    each_row(conn, q, decode, |v| {
        first = Some(v);
        Ok(false)
    })?;
    Ok(first)
}

/// Runs a query and hands each row to `each` as it is read, undecoded (so `each` may borrow
/// from it). A long query would hold up every task waiting on this thread, so on a
/// multi-threaded runtime the thread first hands them to another worker (`block_in_place`); on
/// a single-threaded one (tests) it just runs.
pub(crate) fn for_each_row(
    conn: &Connection,
    q: &Query,
    mut each: impl FnMut(&dyn Cols) -> Result<(), StoreError>,
) -> Result<u64, QueryError> {
    let mut run = || {
        step_rows(conn, q, |row| {
            each(row)?;
            Ok(true)
        })
    };
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi { tokio::task::block_in_place(run) } else { run() }
}

/// One row of a result, read by column name like sqlx's rows.
struct Row<'r>(&'r rusqlite::Row<'r>);

impl Row<'_> {
    fn value(&self, col: &str) -> Result<ValueRef<'_>, sqlx::Error> {
        self.0.get_ref(col).map_err(|e| sqlx::Error::Decode(Box::new(e)))
    }
}

fn mismatch(col: &str, wanted: &str, got: &ValueRef<'_>) -> sqlx::Error {
    sqlx::Error::Decode(format!("column {col}: expected {wanted}, found {:?}", got.data_type()).into())
}

impl Cols for Row<'_> {
    fn text(&self, col: &str) -> Result<Option<String>, sqlx::Error> {
        match self.value(col)? {
            ValueRef::Null => Ok(None),
            ValueRef::Text(t) => String::from_utf8(t.to_vec())
                .map(Some)
                .map_err(|e| sqlx::Error::Decode(format!("column {col}: {e}").into())),
            other => Err(mismatch(col, "TEXT", &other)),
        }
    }

    fn int(&self, col: &str) -> Result<Option<i64>, sqlx::Error> {
        match self.value(col)? {
            ValueRef::Null => Ok(None),
            ValueRef::Integer(i) => Ok(Some(i)),
            other => Err(mismatch(col, "INTEGER", &other)),
        }
    }

    fn bytes(&self, col: &str) -> Result<Option<Vec<u8>>, sqlx::Error> {
        match self.value(col)? {
            ValueRef::Null => Ok(None),
            // sqlx reads TEXT as bytes too; so does this.
            ValueRef::Blob(b) | ValueRef::Text(b) => Ok(Some(b.to_vec())),
            other => Err(mismatch(col, "BLOB", &other)),
        }
    }

    fn boolean(&self, col: &str) -> Result<Option<bool>, sqlx::Error> {
        match self.value(col)? {
            ValueRef::Null => Ok(None),
            ValueRef::Integer(i) => Ok(Some(i != 0)),
            other => Err(mismatch(col, "BOOLEAN (INTEGER)", &other)),
        }
    }

    fn text_at(&self, i: usize) -> Result<Option<&str>, sqlx::Error> {
        match self.0.get_ref(i).map_err(|e| sqlx::Error::Decode(Box::new(e)))? {
            ValueRef::Null => Ok(None),
            ValueRef::Text(t) => std::str::from_utf8(t)
                .map(Some)
                .map_err(|e| sqlx::Error::Decode(format!("column {i}: {e}").into())),
            other => Err(mismatch(&i.to_string(), "TEXT", &other)),
        }
    }

    fn int_at(&self, i: usize) -> Result<Option<i64>, sqlx::Error> {
        match self.0.get_ref(i).map_err(|e| sqlx::Error::Decode(Box::new(e)))? {
            ValueRef::Null => Ok(None),
            ValueRef::Integer(v) => Ok(Some(v)),
            other => Err(mismatch(&i.to_string(), "INTEGER", &other)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("t.db")).unwrap();
        conn.execute_batch("CREATE TABLE t (a TEXT, b INTEGER, c BLOB, d INTEGER)").unwrap();
        (dir, conn)
    }

    type T = (Option<String>, Option<i64>, Option<Vec<u8>>, Option<bool>);

    fn decode_t(r: &dyn Cols) -> Result<T, StoreError> {
        let e = |e: sqlx::Error| StoreError::Backend(e.to_string());
        Ok((
            r.text("a").map_err(e)?,
            r.int("b").map_err(e)?,
            r.bytes("c").map_err(e)?,
            r.boolean("d").map_err(e)?,
        ))
    }

    #[test]
    fn placeholders_bind_by_number_wherever_they_appear() {
        let (_d, conn) = db();
        let q = Query::new(
            "INSERT INTO t (d, c, b, a) VALUES ($4, $3, $2, $1)",
            vec!["x".into(), 7i64.into(), vec![1u8, 2].into(), true.into()],
        );
        assert_eq!(execute(&conn, &q).unwrap(), 1);
        let q = Query::new(
            "SELECT a, b, c, d FROM t WHERE b = $1 AND a = $2 AND b >= $1",
            vec![7i64.into(), "x".into()],
        );
        let rows = fetch_all(&conn, &q, decode_t).ok().unwrap();
        assert_eq!(rows, vec![(Some("x".into()), Some(7), Some(vec![1, 2]), Some(true))]);
        let none = Query::new(
            "INSERT INTO t (a, b, c, d) VALUES ($1, $2, $3, $4)",
            vec![Arg::Text(None), Arg::Int(None), Arg::Bytes(None), false.into()],
        );
        execute(&conn, &none).unwrap();
        let q = Query::new("SELECT a, b, c, d FROM t WHERE a IS NULL", vec![]);
        let row = fetch_optional(&conn, &q, decode_t).ok().unwrap();
        assert_eq!(row, Some((None, None, None, Some(false))));
    }

    #[test]
    fn missing_arguments_and_wrong_types_are_errors_not_panics() {
        let (_d, conn) = db();
        let q = Query::new("SELECT a FROM t WHERE a = $2", vec!["only one".into()]);
        assert!(matches!(fetch_all(&conn, &q, decode_t), Err(QueryError::Sqlite(_))));
        execute(&conn, &Query::new("INSERT INTO t (a, b) VALUES ($1, $2)", vec![7i64.into(), "text".into()]))
            .unwrap();
        let q = Query::new("SELECT a, b, c, d FROM t", vec![]);
        match fetch_all(&conn, &q, decode_t) {
            // Column a's TEXT affinity stored the 7 as text; column b kept "text" as TEXT.
            Err(QueryError::Row(e)) => assert!(e.to_string().contains("column b"), "{e}"),
            _ => panic!("an INTEGER column holding TEXT must not decode"),
        }
    }

    #[test]
    fn unique_violations_are_conflicts_and_leave_the_transaction() {
        let (_d, conn) = db();
        conn.execute_batch("CREATE UNIQUE INDEX t_a ON t (a); BEGIN").unwrap();
        execute(&conn, &Query::new("INSERT INTO t (a) VALUES ($1)", vec!["k".into()])).unwrap();
        let e = execute(&conn, &Query::new("INSERT INTO t (a) VALUES ($1)", vec!["k".into()])).unwrap_err();
        let failure = classify(&e);
        assert!(
            matches!(failure.error, StoreError::Conflict(ref m) if m.contains("t.a")),
            "{:?}",
            failure.error
        );
        assert!(!failure.dooms);
        assert!(!conn.is_autocommit(), "a failed statement must not end the transaction");
        run(&conn, "COMMIT").unwrap();
    }
}
