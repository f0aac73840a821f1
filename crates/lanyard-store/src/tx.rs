//! The unit of work: one database transaction on either dialect, the statement helpers every
//! repository method goes through, and the translation of database errors into
//! [`StoreError`]s.

use lanyard_core::repo::{Repo, StoreError, Tx};
use sqlx::{Postgres, Transaction};

use crate::rows::{Cols, Decode};
use crate::sql::{Arg, Query};
use crate::{Db, Dialect};

/// How a write unit of work starts. SQLite: the writers of this process take turns on one fair
/// queue and share the open `BEGIN IMMEDIATE` transaction, each in a savepoint, committed as a
/// group (see `group.rs`); PostgreSQL runs them concurrently and aborts one that could not have
/// run in some serial order.
const POSTGRES_BEGIN: &str = "BEGIN ISOLATION LEVEL SERIALIZABLE";

/// How a read unit of work starts. SQLite: a deferred transaction (`group.rs`), which in WAL
/// mode reads a snapshot beside the writer and never takes the write lock, on a connection
/// opened read-only. PostgreSQL: a repeatable-read snapshot, read-only: it takes no predicate
/// locks, so it never aborts a writer and is never aborted itself (`docs/storage.md` explains
/// why not SERIALIZABLE READ ONLY).
const POSTGRES_BEGIN_READ: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

/// Every write method runs inside this savepoint, so that a failed call (a uniqueness conflict,
/// say) changes nothing and leaves the unit of work usable, on PostgreSQL too, where an error
/// otherwise aborts the whole transaction.
const SAVEPOINT: &str = "SAVEPOINT lanyard_call";
const RELEASE: &str = "RELEASE SAVEPOINT lanyard_call";
const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT lanyard_call";

/// A unit of work on a [`Db`]: an open transaction. [`Tx::commit`] commits it; dropping it rolls
/// it back (sqlx queues the `ROLLBACK` and the pool flushes it before reusing the connection).
pub struct StoreTx {
    conn: Conn,
    /// Why this unit of work can do nothing more but roll back: a serialization failure, or an
    /// error outside a savepoint (after which PostgreSQL would silently turn `COMMIT` into
    /// `ROLLBACK`).
    broken: Option<StoreError>,
    /// Inside a write method's savepoint.
    in_call: bool,
    /// Started by [`Repo::read`]: every write is refused.
    read_only: bool,
}

enum Conn {
    /// A write unit of work on SQLite: a turn in its database's group commit.
    SqliteUnit(crate::group::Unit),
    /// A read unit of work on SQLite: a read-only connection with a snapshot open.
    SqliteRead(crate::group::ReadConn),
    /// The group commit's own transaction, lent for sealing the batch's audit events.
    SqliteBatch(rusqlite::Connection),
    Postgres(Transaction<'static, Postgres>),
}

impl std::fmt::Debug for StoreTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreTx")
            .field("dialect", &self.dialect())
            .field("read_only", &self.read_only)
            .field("broken", &self.broken)
            .finish()
    }
}

/// Binds every [`Arg`] to a sqlx query of either database.
macro_rules! bind_args {
    ($query:expr, $args:expr) => {{
        let mut q = $query;
        for arg in $args {
            q = match arg {
                Arg::Text(v) => q.bind(v),
                Arg::Int(v) => q.bind(v),
                Arg::Bytes(v) => q.bind(v),
                Arg::Bool(v) => q.bind(v),
            };
        }
        q
    }};
}

/// The connection a statement runs on: SQLite's in place (`direct.rs`), PostgreSQL's through
/// sqlx.
enum On<'a> {
    // `&mut`, not `&`: a `Connection` is `Send` but not `Sync`, and the futures holding this
    // must be `Send`.
    Sqlite(&'a mut rusqlite::Connection),
    Postgres(&'a mut sqlx::PgConnection),
}

impl Conn {
    fn on(&mut self) -> Result<On<'_>, StoreError> {
        Ok(match self {
            Conn::SqliteUnit(unit) => On::Sqlite(unit.conn()?),
            Conn::SqliteRead(read) => On::Sqlite(read.conn()?),
            Conn::SqliteBatch(conn) => On::Sqlite(conn),
            Conn::Postgres(tx) => On::Postgres(tx),
        })
    }
}

/// A statement failed on either database.
enum Failed {
    Sqlite(rusqlite::Error),
    Postgres(sqlx::Error),
    /// Not a statement's failure: the unit of work had no connection to run it on.
    Store(StoreError),
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Self {
        Failed::Store(e)
    }
}

impl Repo for Db {
    type Tx = StoreTx;

    async fn begin(&self) -> Result<StoreTx, StoreError> {
        let conn = match self {
            Db::Sqlite(pool) => Conn::SqliteUnit(crate::group::Writer::of(pool).begin().await?),
            Db::Postgres(pool) => Conn::Postgres(pg_begin(pool, POSTGRES_BEGIN).await?),
        };
        Ok(StoreTx { conn, broken: None, in_call: false, read_only: false })
    }

    async fn read(&self) -> Result<StoreTx, StoreError> {
        let conn = match self {
            // Opened read-only: the database itself refuses writes.
            Db::Sqlite(pool) => Conn::SqliteRead(crate::group::Writer::of(pool).read().await?),
            Db::Postgres(pool) => Conn::Postgres(pg_begin(pool, POSTGRES_BEGIN_READ).await?),
        };
        Ok(StoreTx { conn, broken: None, in_call: false, read_only: true })
    }

    async fn pause(&self, delay: std::time::Duration) {
        tokio::time::sleep(delay).await;
    }

    /// One statement on a pooled connection, no transaction around it: the cheapest way to see
    /// the committed epoch (OCSP asks for it once per batch of requests).
    async fn revocation_epoch(&self) -> Result<u64, StoreError> {
        const SQL: &str = "SELECT CAST(SUM(epoch) AS BIGINT) AS epoch FROM revocation_epoch";
        let epoch: i64 = match self {
            Db::Sqlite(pool) => {
                // In place, on a read-only connection like every SQLite read (`direct.rs`).
                fn sum(row: &dyn crate::rows::Cols) -> Result<i64, StoreError> {
                    crate::rows::Reader::new(row, "revocation_epoch", "epoch").int("epoch")
                }
                let mut read = crate::group::Writer::of(pool).read().await?;
                let q = Query::new(SQL, Vec::new());
                match crate::direct::fetch_optional(read.conn()?, &q, sum) {
                    Ok(Some(epoch)) => epoch,
                    Ok(None) => return Err(StoreError::Backend("revocation_epoch: no row".into())),
                    Err(QueryError::Sqlite(e)) => return Err(crate::direct::classify(&e).error),
                    Err(QueryError::Row(e)) => return Err(e),
                    Err(QueryError::Postgres(e)) => return Err(classify(Dialect::Postgres, &e).error),
                }
            }
            Db::Postgres(pool) => {
                pg_epoch(pool, SQL).await.map_err(|e| classify(Dialect::Postgres, &e).error)?
            }
        };
        u64::try_from(epoch)
            .map_err(|_| StoreError::Backend(format!("revocation_epoch.epoch is negative ({epoch})")))
    }

    async fn seal_audit(&self) -> Result<u64, StoreError> {
        match self {
            // Sealed at every commit already (group.rs); a unit of work of its own seals
            // whatever another process might have left.
            Db::Sqlite(_) => {
                let mut tx = self.begin().await?;
                let sealed = tx.seal_pending_audit().await?;
                tx.commit().await?;
                Ok(sealed)
            }
            Db::Postgres(pool) => {
                let tx = pool
                    .begin_with(POSTGRES_BEGIN_SEALER)
                    .await
                    .map_err(|e| classify(Dialect::Postgres, &e).error)?;
                let mut tx =
                    StoreTx { conn: Conn::Postgres(tx), broken: None, in_call: false, read_only: false };
                let q =
                    Query::new("SELECT pg_try_advisory_xact_lock($1) AS locked", vec![SEALER_LOCK.into()]);
                let locked = tx
                    .fetch_optional(q, |row| {
                        crate::rows::Reader::new(row, "advisory lock", "locked").boolean("locked")
                    })
                    .await?
                    .unwrap_or(false);
                if !locked {
                    // Another server's sealer is at work; it will chain these events too.
                    return Ok(0);
                }
                let sealed = tx.seal_pending_audit().await?;
                tx.commit().await?;
                Ok(sealed)
            }
        }
    }
}

/// Starts a PostgreSQL transaction on a pooled connection, in a task of its own so that it
/// always finishes. sqlx counts a transaction only once its `BEGIN` has been answered: a request
/// cancelled in between (a client closing its connection mid-request, as every load generator
/// does when it stops) left the connection inside a transaction that sqlx did not know about.
/// The pool handed it out again, the next unit's `BEGIN` only drew the warning "there is
/// already a transaction in progress", and that unit ran inside the stale one — with its
/// isolation level, read-only if it was a read unit's, so a revocation failed with an internal
/// error (`./scripts/bench`, issue 12). Finished in its own task, the `BEGIN` is always
/// counted; a transaction nobody waits for any more is dropped and rolled back as usual.
async fn pg_begin(
    pool: &sqlx::PgPool,
    begin: &'static str,
) -> Result<Transaction<'static, Postgres>, StoreError> {
    let pool = pool.clone();
    match tokio::spawn(async move { pool.begin_with(begin).await }).await {
        Ok(begun) => begun.map_err(|e| classify(Dialect::Postgres, &e).error),
        Err(e) => Err(StoreError::Backend(format!("starting a transaction did not finish: {e}"))),
    }
}

/// The PostgreSQL sealer's transaction: READ COMMITTED, so each statement sees what committed
/// before it, in particular the previous sealer's batch, which committed before that sealer
/// released the advisory lock this one then took.
const POSTGRES_BEGIN_SEALER: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";
/// The advisory lock key that lets one sealer at a time work on a PostgreSQL database
/// ("lanyard" in ASCII).
const SEALER_LOCK: i64 = 0x006c_616e_7961_7264;

impl Tx for StoreTx {
    async fn commit(self) -> Result<(), StoreError> {
        let dialect = self.dialect();
        if let Some(e) = self.broken {
            // Best effort: dropping the transaction would roll back as well.
            match self.conn {
                Conn::SqliteUnit(unit) => unit.rollback().await,
                // Dropping it rolls back (the group commit rolls back what it lent).
                Conn::SqliteRead(_) | Conn::SqliteBatch(_) => {}
                Conn::Postgres(tx) => {
                    let _ = tx.rollback().await;
                }
            }
            return Err(e);
        }
        match self.conn {
            Conn::SqliteUnit(unit) => unit.commit().await,
            Conn::SqliteRead(read) => read.commit(),
            Conn::SqliteBatch(_) => {
                Err(StoreError::Backend("the group commit's transaction commits with its batch".into()))
            }
            Conn::Postgres(tx) => tx.commit().await.map_err(|e| classify(dialect, &e).error),
        }
    }
}

impl StoreTx {
    /// A write unit of work on the group commit's open SQLite transaction, to seal it.
    pub(crate) fn on_batch(conn: rusqlite::Connection) -> Self {
        StoreTx { conn: Conn::SqliteBatch(conn), broken: None, in_call: false, read_only: false }
    }

    /// The group commit's connection back, and why its transaction cannot commit, if it
    /// cannot.
    pub(crate) fn into_batch(self) -> Option<(rusqlite::Connection, Option<StoreError>)> {
        match self.conn {
            Conn::SqliteBatch(conn) => Some((conn, self.broken)),
            _ => None,
        }
    }

    pub(crate) fn dialect(&self) -> Dialect {
        match self.conn {
            Conn::SqliteUnit(_) | Conn::SqliteRead(_) | Conn::SqliteBatch(_) => Dialect::Sqlite,
            Conn::Postgres(_) => Dialect::Postgres,
        }
    }

    pub(crate) fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn usable(&self) -> Result<(), StoreError> {
        match &self.broken {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Makes every further call, and the commit, fail with `e`.
    pub(crate) fn break_with(&mut self, e: StoreError) {
        self.broken.get_or_insert(e);
    }

    /// Records a failed statement: a serialization failure always breaks the unit of work, any
    /// other error does unless a savepoint is there to undo it.
    fn failed(&mut self, e: Failed) -> StoreError {
        let failure = match e {
            Failed::Sqlite(e) => crate::direct::classify(&e),
            Failed::Postgres(e) => classify(Dialect::Postgres, &e),
            Failed::Store(error) => Failure { error, dooms: true },
        };
        if failure.dooms || !self.in_call {
            let reason = match &failure.error {
                StoreError::Retryable(m) => {
                    StoreError::Retryable(format!("{m} (the unit of work must be run again from the start)"))
                }
                StoreError::Backend(m) => {
                    StoreError::Backend(format!("an earlier statement of this unit of work failed: {m}"))
                }
                other => other.clone(),
            };
            tracing::debug!(error = %reason, "unit of work can only roll back now");
            self.broken.get_or_insert(reason);
        }
        failure.error
    }

    async fn run_simple(&mut self, sql: &'static str) -> Result<(), Failed> {
        match self.conn.on()? {
            On::Sqlite(c) => crate::direct::run(c, sql).map_err(Failed::Sqlite),
            On::Postgres(c) => sqlx::query(sql).execute(&mut *c).await.map(drop).map_err(Failed::Postgres),
        }
    }

    /// Opens the savepoint of a write method; pair with [`StoreTx::end_call`].
    pub(crate) async fn begin_call(&mut self) -> Result<(), StoreError> {
        self.usable()?;
        if self.in_call {
            // A previous call was cancelled between its savepoint and its end: what it did is
            // unknown, so nothing more may be committed.
            let e =
                StoreError::Backend("an earlier call on this unit of work was cancelled mid-write".into());
            self.broken = Some(e.clone());
            return Err(e);
        }
        if self.read_only {
            // Nothing to undo: `execute` refuses every statement of the call.
            self.in_call = true;
            return Ok(());
        }
        match self.run_simple(SAVEPOINT).await {
            Ok(()) => {
                self.in_call = true;
                Ok(())
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Closes the savepoint: keeps the call's writes when it succeeded, undoes them when it
    /// failed. Returns `result`.
    pub(crate) async fn end_call<T>(&mut self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if self.broken.is_some() || self.read_only {
            self.in_call = false;
            return result;
        }
        let closed = match &result {
            Ok(_) => self.run_simple(RELEASE).await,
            Err(_) => match self.run_simple(ROLLBACK_TO).await {
                Ok(()) => self.run_simple(RELEASE).await,
                Err(e) => Err(e),
            },
        };
        self.in_call = false;
        match closed {
            Ok(()) => result,
            Err(e) => {
                let err = self.failed(e);
                result.and(Err(err))
            }
        }
    }

    /// Runs a statement; returns how many rows it changed. Only write methods run statements
    /// through here, so this is where a read unit of work refuses them, before the database
    /// sees them (the database's own read-only mode is the second line).
    pub(crate) async fn execute(&mut self, q: Query) -> Result<u64, StoreError> {
        self.usable()?;
        if self.read_only {
            let what = q.sql().split_whitespace().take(3).collect::<Vec<_>>().join(" ");
            return Err(StoreError::ReadOnly(format!(
                "{what} …: this unit of work only reads (Repo::read); writes need Repo::begin"
            )));
        }
        let result = match self.conn.on() {
            Ok(On::Sqlite(c)) => crate::direct::execute(c, &q).map_err(Failed::Sqlite),
            Ok(On::Postgres(c)) => bind_args!(q.statement(), q.args)
                .execute(&mut *c)
                .await
                .map(|r| r.rows_affected())
                .map_err(Failed::Postgres),
            Err(e) => Err(Failed::Store(e)),
        };
        result.map_err(|e| self.failed(e))
    }

    /// Runs a query and decodes every row.
    pub(crate) async fn fetch_all<T: Send>(
        &mut self,
        q: Query,
        decode: Decode<T>,
    ) -> Result<Vec<T>, StoreError> {
        self.usable()?;
        let result = match self.conn.on() {
            Ok(On::Sqlite(c)) => crate::direct::fetch_all(c, &q, decode),
            Ok(On::Postgres(c)) => match bind_args!(q.statement(), q.args).fetch_all(&mut *c).await {
                Ok(rows) => rows
                    .iter()
                    .map(|row| decode(row))
                    .collect::<Result<Vec<T>, StoreError>>()
                    .map_err(QueryError::Row),
                Err(e) => Err(QueryError::Postgres(e)),
            },
            Err(e) => Err(QueryError::Row(e)),
        };
        self.queried(result)
    }

    /// Runs a query and hands each decoded row to `each` as it arrives; stops at the first error.
    /// Returns the number of rows.
    pub(crate) async fn for_each<T, F>(
        &mut self,
        q: Query,
        decode: Decode<T>,
        mut each: F,
    ) -> Result<u64, StoreError>
    where
        F: FnMut(T) -> Result<(), StoreError> + Send,
    {
        self.for_each_row(q, |row| decode(row).and_then(&mut each)).await
    }

    /// Runs a query and hands every row to `each` as the database returns it, undecoded (so
    /// `each` may borrow from it); stops at the first error `each` returns. Returns how many
    /// rows it handed over.
    pub(crate) async fn for_each_row<F>(&mut self, q: Query, mut each: F) -> Result<u64, StoreError>
    where
        F: FnMut(&dyn Cols) -> Result<(), StoreError> + Send,
    {
        use futures_util::TryStreamExt;
        self.usable()?;
        let result = match self.conn.on() {
            Ok(On::Sqlite(c)) => crate::direct::for_each_row(c, &q, each),
            Ok(On::Postgres(c)) => {
                let mut n = 0u64;
                let args = q.args.clone();
                let mut rows = bind_args!(q.statement(), args).fetch(&mut *c);
                loop {
                    match rows.try_next().await {
                        Ok(Some(row)) => {
                            // Errors of `each` or of decoding are not database errors: they
                            // leave the unit of work usable.
                            if let Err(e) = each(&row) {
                                break Err(QueryError::Row(e));
                            }
                            n += 1;
                        }
                        Ok(None) => break Ok(n),
                        Err(e) => break Err(QueryError::Postgres(e)),
                    }
                }
            }
            Err(e) => Err(QueryError::Row(e)),
        };
        self.queried(result)
    }

    /// Runs a query and decodes the first row, if any.
    pub(crate) async fn fetch_optional<T: Send>(
        &mut self,
        q: Query,
        decode: Decode<T>,
    ) -> Result<Option<T>, StoreError> {
        self.usable()?;
        let result = match self.conn.on() {
            Ok(On::Sqlite(c)) => crate::direct::fetch_optional(c, &q, decode),
            Ok(On::Postgres(c)) => match bind_args!(q.statement(), q.args).fetch_optional(&mut *c).await {
                Ok(row) => row.as_ref().map(|row| decode(row)).transpose().map_err(QueryError::Row),
                Err(e) => Err(QueryError::Postgres(e)),
            },
            Err(e) => Err(QueryError::Row(e)),
        };
        self.queried(result)
    }

    /// A query's outcome: a database failure is recorded like a statement's; an error decoding
    /// a row or from the caller's `each` leaves the unit of work as it was.
    fn queried<T>(&mut self, result: Result<T, QueryError>) -> Result<T, StoreError> {
        result.map_err(|e| match e {
            QueryError::Sqlite(e) => self.failed(Failed::Sqlite(e)),
            QueryError::Postgres(e) => self.failed(Failed::Postgres(e)),
            QueryError::Row(e) => e,
        })
    }
}

/// Why a query returned no rows: the database failed, or a row (or what was done with it) did.
pub(crate) enum QueryError {
    Sqlite(rusqlite::Error),
    Postgres(sqlx::Error),
    Row(StoreError),
}

/// A database error, translated.
pub(crate) struct Failure {
    pub(crate) error: StoreError,
    /// The transaction cannot go on (serialization failure, deadlock, lock timeout).
    pub(crate) dooms: bool,
}

/// SQLSTATEs of PostgreSQL's serialization_failure and deadlock_detected.
const PG_RETRY: [&str; 2] = ["40001", "40P01"];
const PG_UNIQUE: &str = "23505";
/// SQLSTATE read_only_sql_transaction: a write reached the database in a read unit of work.
const PG_READ_ONLY: &str = "25006";
/// SQLITE_READONLY (and its extended codes): a write on a read-only connection.
const SQLITE_READ_ONLY: i32 = 8;
/// Two sealers gave out the same chain position (only if one got past the advisory lock): the
/// later one must run again.
const AUDIT_SEQ_CONSTRAINT: &str = "audit_events_seq_key";
/// SQLite extended result codes: SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_PRIMARYKEY.
const SQLITE_UNIQUE: [i32; 2] = [2067, 1555];
/// SQLITE_BUSY and SQLITE_LOCKED (primary codes; their extended codes too): another connection
/// held the lock for longer than the busy timeout.
const SQLITE_BUSY: [i32; 2] = [5, 6];

/// Which field each PostgreSQL unique constraint or index protects, for `Conflict` messages.
/// (SQLite names the columns in its message instead.) A test checks that every unique index of
/// the schema is listed.
pub const POSTGRES_UNIQUE_FIELDS: &[(&str, &str)] = &[
    ("groups_pkey", "groups.id"),
    ("groups_name_key", "groups.name"),
    ("users_pkey", "users.id"),
    ("users_username_key", "users.username"),
    ("devices_pkey", "devices.id"),
    ("devices_model_serial_key", "devices.(model, serial)"),
    ("device_links_pkey", "device_links.(device_id, position)"),
    ("credentials_pkey", "credentials.id"),
    ("credentials_serial_hex_key", "credentials.serial_hex"),
    ("card_secrets_pkey", "card_secrets.device_id"),
    ("audit_events_pkey", "audit_events.id"),
    ("audit_events_seq_key", "audit_events.seq"),
    ("enrollment_codes_pkey", "enrollment_codes.id"),
    ("enrollment_codes_code_hash_key", "enrollment_codes.code_hash"),
    ("jobs_pkey", "jobs.id"),
    ("api_tokens_pkey", "api_tokens.id"),
    ("api_tokens_token_hash_key", "api_tokens.token_hash"),
    ("sessions_pkey", "sessions.token_hash"),
    ("user_passwords_pkey", "user_passwords.user_id"),
    ("installation_pkey", "installation.id"),
    ("pairing_codes_pkey", "pairing_codes.id"),
    ("pairing_codes_code_hash_key", "pairing_codes.code_hash"),
    ("agents_pkey", "agents.id"),
    ("agents_credential_hash_key", "agents.credential_hash"),
    ("passkeys_pkey", "passkeys.id"),
    ("passkeys_credential_id_key", "passkeys.credential_id"),
    ("webauthn_challenges_pkey", "webauthn_challenges.challenge_hash"),
    ("revocation_epoch_pkey", "revocation_epoch.id"),
    ("crl_numbers_pkey", "crl_numbers.scope"),
    ("cluster_notes_pkey", "cluster_notes.(topic, owner, note_key)"),
];

pub(crate) fn classify(dialect: Dialect, e: &sqlx::Error) -> Failure {
    let backend = || Failure { error: StoreError::Backend(e.to_string()), dooms: false };
    let sqlx::Error::Database(db) = e else {
        return backend();
    };
    let Some(code) = db.code() else {
        return backend();
    };
    let code = code.as_ref();
    match dialect {
        Dialect::Postgres if PG_RETRY.contains(&code) => Failure {
            error: StoreError::Retryable(format!(
                "a concurrent transaction got in the way ({})",
                db.message()
            )),
            dooms: true,
        },
        Dialect::Postgres if code == PG_UNIQUE && db.constraint() == Some(AUDIT_SEQ_CONSTRAINT) => Failure {
            error: StoreError::Retryable("a concurrent sealer chained these audit events first".into()),
            dooms: true,
        },
        Dialect::Postgres if code == PG_READ_ONLY => {
            Failure { error: StoreError::ReadOnly(db.message().to_owned()), dooms: false }
        }
        Dialect::Postgres if code == PG_UNIQUE => {
            let field = db
                .constraint()
                .and_then(|c| POSTGRES_UNIQUE_FIELDS.iter().find(|(name, _)| *name == c))
                .map(|(_, field)| (*field).to_owned())
                .unwrap_or_else(|| format!("unique constraint {}", db.constraint().unwrap_or("(unnamed)")));
            Failure { error: StoreError::Conflict(format!("{field} already exists")), dooms: false }
        }
        Dialect::Sqlite => match code.parse::<i32>() {
            Ok(code) => classify_sqlite(code, db.message()),
            Err(_) => backend(),
        },
        _ => backend(),
    }
}

/// A SQLite error by its extended result code, on either kind of connection.
pub(crate) fn classify_sqlite(code: i32, message: &str) -> Failure {
    let primary = code & 0xff;
    if primary == SQLITE_READ_ONLY {
        Failure { error: StoreError::ReadOnly(message.to_owned()), dooms: false }
    } else if SQLITE_UNIQUE.contains(&code) {
        Failure {
            error: StoreError::Conflict(format!("{} already exists", sqlite_unique_field(message))),
            dooms: false,
        }
    } else if SQLITE_BUSY.contains(&primary) {
        Failure {
            error: StoreError::Retryable(format!("the database stayed locked by another writer ({message})")),
            dooms: true,
        }
    } else {
        Failure { error: StoreError::Backend(format!("{message} (SQLite error {code})")), dooms: false }
    }
}

/// `"UNIQUE constraint failed: devices.model, devices.serial"` → `"devices.(model, serial)"`.
fn sqlite_unique_field(message: &str) -> String {
    let cols = message.rsplit_once(": ").map_or(message, |(_, cols)| cols);
    let parts: Vec<(&str, &str)> = cols.split(", ").filter_map(|c| c.split_once('.')).collect();
    match parts.as_slice() {
        [(table, col)] => format!("{table}.{col}"),
        [(table, _), ..] if parts.iter().all(|(t, _)| t == table) => {
            let cols: Vec<&str> = parts.iter().map(|(_, c)| *c).collect();
            format!("{table}.({})", cols.join(", "))
        }
        _ => cols.to_owned(),
    }
}

/// The PostgreSQL connection kept for the revocation epoch of one pool.
struct PgEpoch {
    /// The pool's connect options: alive as long as the pool is.
    pool: std::sync::Weak<sqlx::postgres::PgConnectOptions>,
    conn: std::sync::Arc<tokio::sync::Mutex<Option<sqlx::PgConnection>>>,
}

/// The `application_name` of the connection that reads the revocation epoch, as
/// `pg_stat_activity` shows it.
pub const PG_EPOCH_APPLICATION: &str = "lanyard revocation epoch";

/// One connection per pool for the revocation epoch, kept outside the pool. OCSP reads the
/// epoch once per batch of requests; through the pool each read took three round trips (the
/// ping sqlx sends when a connection leaves the pool, the statement, the ping when it comes
/// back), here one. A pool's connection is closed once the pool is gone and another epoch read
/// happens; a failed read drops the connection and the next read opens a new one.
static PG_EPOCH: std::sync::LazyLock<std::sync::Mutex<Vec<PgEpoch>>> =
    std::sync::LazyLock::new(Default::default);

async fn pg_epoch(pool: &sqlx::PgPool, sql: &'static str) -> Result<i64, sqlx::Error> {
    use sqlx::ConnectOptions;
    let options = pool.connect_options();
    let slot = {
        // A poisoned lock only means a thread panicked while pushing; the list is whole.
        let mut all = PG_EPOCH.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        all.retain(|e| e.pool.strong_count() > 0);
        match all.iter().find(|e| std::ptr::eq(e.pool.as_ptr(), std::sync::Arc::as_ptr(&options))) {
            Some(e) => std::sync::Arc::clone(&e.conn),
            None => {
                let conn = std::sync::Arc::new(tokio::sync::Mutex::new(None));
                all.push(PgEpoch {
                    pool: std::sync::Arc::downgrade(&options),
                    conn: std::sync::Arc::clone(&conn),
                });
                conn
            }
        }
    };
    let mut slot = slot.lock().await;
    let conn = match slot.as_mut() {
        Some(conn) => conn,
        None => slot.insert(options.as_ref().clone().application_name(PG_EPOCH_APPLICATION).connect().await?),
    };
    let result = sqlx::query_scalar(sql).fetch_one(&mut *conn).await;
    if result.is_err() {
        *slot = None;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_unique_messages_name_the_field() {
        assert_eq!(sqlite_unique_field("UNIQUE constraint failed: users.username"), "users.username");
        assert_eq!(
            sqlite_unique_field("UNIQUE constraint failed: devices.model, devices.serial"),
            "devices.(model, serial)"
        );
        assert_eq!(sqlite_unique_field("something else"), "something else");
    }
}
