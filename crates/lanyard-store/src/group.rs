//! Group commit for SQLite write units of work.
//!
//! SQLite runs one writer at a time, and in WAL mode with `synchronous = FULL` every commit
//! waits for an fsync of the log (a few hundred microseconds on ordinary disks). Left alone,
//! concurrent writers each take `BEGIN IMMEDIATE` in turn, and the losers sleep in SQLite's busy
//! handler with growing back-off: throughput is capped by the fsync, and the wait of an unlucky
//! writer grows to hundreds of milliseconds.
//!
//! Here every write unit of work of one database file, in this process, queues on one fair
//! (first come, first served) async lock instead. The holder of the lock owns the database's
//! single open write transaction, a *batch*: its unit of work runs inside a savepoint of that
//! transaction, and at its commit the savepoint is released. If nobody is queued, the unit
//! commits the batch at once (one writer alone pays one fsync, as before). If others are
//! queued, it hands the open transaction to the next one and waits for the batch's outcome; the
//! batch commits when the queue it found has drained, so one fsync covers every unit that was
//! waiting. A unit's `commit` returns only after the transaction holding its changes committed
//! (or reports the failure that rolled it back), so durability is unchanged: what a caller is
//! told is committed, is on disk.
//!
//! Units of one batch run one after another, each seeing the changes of those before it, exactly
//! as if each had committed on its own in that order. A unit that fails or is dropped rolls back
//! to its savepoint and leaves the others' changes alone. If the batch's commit fails, every
//! unit in it gets the error.
//!
//! Writers in other processes (the CLI against a running server's database) still meet the
//! ordinary SQLite lock and its busy timeout.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use lanyard_core::repo::StoreError;
use sqlx::sqlite::SqliteConnection;
use sqlx::{ConnectOptions, Sqlite, SqlitePool, Transaction};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard, watch};

use crate::Dialect;
use crate::tx::{StoreTx, classify};

/// How long a unit of work waits for its turn before it gives up (as the busy timeout did).
const TURN_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many units of work share one transaction, so a long queue still commits
/// regularly.
const MAX_BATCH: usize = 64;

const BEGIN: &str = "BEGIN IMMEDIATE";
const UNIT: &str = "SAVEPOINT lanyard_unit";
const UNIT_RELEASE: &str = "RELEASE SAVEPOINT lanyard_unit";
const UNIT_ROLLBACK: &str = "ROLLBACK TO SAVEPOINT lanyard_unit";

type Outcome = Option<Result<(), StoreError>>;

/// The writer of one SQLite database file: its queue and its open batch.
pub(crate) struct Writer {
    batch: Arc<AsyncMutex<Batch>>,
    /// Units of work queued for their turn (not counting those waiting for a batch's outcome).
    queued: AtomicUsize,
    /// Read-only connections to the same file for read units of work (`Db::connect` opens
    /// them), so a read needs no `query_only` switching on a shared connection.
    readers: Mutex<Option<SqlitePool>>,
    /// One read-only connection of its own for the revocation epoch ([`Writer::read_epoch`]).
    epoch: AsyncMutex<Option<SqliteConnection>>,
}

#[derive(Default)]
struct Batch {
    /// The open write transaction, while no unit of work has it.
    tx: Option<Transaction<'static, Sqlite>>,
    /// Counts batches, so a unit waiting for its batch can tell whether it is still open.
    epoch: u64,
    /// Units of work committed into the open transaction.
    units: usize,
    /// Where the open batch's outcome is published.
    outcome: Option<watch::Sender<Outcome>>,
    /// A unit of work was dropped without finishing: its savepoint must be rolled back before
    /// anything else runs on the transaction.
    abandoned: bool,
}

/// One writer per database file in this process, shared by every pool opened on it.
static WRITERS: LazyLock<Mutex<HashMap<PathBuf, Arc<Writer>>>> = LazyLock::new(Default::default);

impl Writer {
    pub(crate) fn of(pool: &SqlitePool) -> Arc<Writer> {
        let path = pool.connect_options().get_filename().to_path_buf();
        // A poisoned map only means another thread panicked while inserting; the map is intact.
        let mut writers = WRITERS.lock().unwrap_or_else(|e| e.into_inner());
        writers
            .entry(path)
            .or_insert_with(|| {
                Arc::new(Writer {
                    batch: Arc::new(AsyncMutex::new(Batch::default())),
                    queued: AtomicUsize::new(0),
                    readers: Mutex::new(None),
                    epoch: AsyncMutex::new(None),
                })
            })
            .clone()
    }

    /// The read-only pool for this file, if `Db::connect` opened one.
    pub(crate) fn readers(&self) -> Option<SqlitePool> {
        // A poisoned lock only means a thread panicked while swapping pools; the value is whole.
        self.readers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records the read-only pool for this file. The latest `Db::connect` wins, so a file
    /// that was replaced and opened again is read through connections to the new file.
    pub(crate) fn set_readers(&self, pool: SqlitePool) {
        *self.readers.lock().unwrap_or_else(|e| e.into_inner()) = Some(pool);
    }

    /// Runs `sql` (one integer) on this file's epoch connection: a read-only connection kept
    /// outside the pools for the revocation epoch, which OCSP reads once per batch of requests.
    /// Through the writer pool the read took four trips to the connection's worker thread (a
    /// ping as it left the pool, the statement, the `query_only` reset and a ping on its
    /// return); here it takes one. `None`
    /// when `Db::connect` did not open this file (no read-only pool): the caller reads through
    /// its pool then. A failed read drops the connection; the next read opens a new one.
    pub(crate) async fn read_epoch(&self, sql: &'static str) -> Option<Result<i64, sqlx::Error>> {
        let readers = self.readers()?;
        let mut slot = self.epoch.lock().await;
        let conn = match slot.as_mut() {
            Some(conn) => conn,
            None => {
                let opts = readers.connect_options().as_ref().clone();
                match opts.connect().await {
                    Ok(conn) => slot.insert(conn),
                    Err(e) => return Some(Err(e)),
                }
            }
        };
        let result = sqlx::query_scalar(sql).fetch_one(&mut *conn).await;
        if result.is_err() {
            *slot = None;
        }
        Some(result)
    }

    /// Waits for this process's turn to write, then starts a unit of work inside the open batch
    /// (opening one when there is none).
    pub(crate) async fn begin(self: Arc<Self>, pool: &SqlitePool) -> Result<Unit, StoreError> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        let turn = tokio::time::timeout(TURN_TIMEOUT, self.batch.clone().lock_owned()).await;
        self.queued.fetch_sub(1, Ordering::SeqCst);
        let mut guard = turn.map_err(|_| {
            StoreError::Retryable(format!(
                "the database stayed locked by other writers for {} s",
                TURN_TIMEOUT.as_secs()
            ))
        })?;
        settle_abandoned(&mut guard).await;
        if guard.tx.is_none() {
            let tx = pool.begin_with(BEGIN).await.map_err(|e| classify(Dialect::Sqlite, &e).error)?;
            guard.tx = Some(tx);
            guard.epoch += 1;
            guard.units = 0;
            guard.outcome = Some(watch::channel(None).0);
        }
        // Should this future be dropped mid-statement, the next turn undoes whatever it did.
        guard.abandoned = true;
        let started = match guard.tx.as_mut() {
            Some(tx) => sqlx::query(UNIT).execute(&mut **tx).await.map(drop),
            None => Ok(()),
        };
        if let Err(e) = started {
            guard.abandoned = false;
            let error = classify(Dialect::Sqlite, &e).error;
            fail_batch(&mut guard, &error).await;
            return Err(error);
        }
        guard.abandoned = false;
        let epoch = guard.epoch;
        Ok(Unit { guard: Some(guard), writer: self, epoch })
    }
}

/// Rolls back the savepoint of a unit of work that was dropped, or, if that fails, the batch.
async fn settle_abandoned(guard: &mut OwnedMutexGuard<Batch>) {
    if !std::mem::take(&mut guard.abandoned) {
        return;
    }
    let undone = match guard.tx.as_mut() {
        Some(tx) => match sqlx::query(UNIT_ROLLBACK).execute(&mut **tx).await {
            Ok(_) => sqlx::query(UNIT_RELEASE).execute(&mut **tx).await.map(drop),
            Err(e) => Err(e),
        },
        None => Ok(()),
    };
    if let Err(e) = undone {
        fail_batch(guard, &classify(Dialect::Sqlite, &e).error).await;
    }
}

/// Rolls the open batch back and tells every unit in it.
async fn fail_batch(guard: &mut OwnedMutexGuard<Batch>, error: &StoreError) {
    if let Some(tx) = guard.tx.take() {
        // Best effort: SQLite may already have rolled it back itself.
        let _ = tx.rollback().await;
    }
    tracing::warn!(%error, units = guard.units, "a batch of write units of work was rolled back");
    if let Some(outcome) = guard.outcome.take() {
        outcome.send_replace(Some(Err(StoreError::Backend(format!(
            "the transaction this unit of work was committed into failed: {error}"
        )))));
    }
    guard.units = 0;
}

/// Commits the open batch (or rolls back an empty one) and publishes the outcome. The batch's
/// audit events are chained first, in the same transaction: on SQLite the group commit is the
/// audit sealer, and no unsealed event is ever visible.
async fn commit_batch(guard: &mut OwnedMutexGuard<Batch>) -> Result<(), StoreError> {
    let Some(tx) = guard.tx.take() else { return Ok(()) };
    let result = if guard.units == 0 {
        tx.rollback().await.map_err(|e| classify(Dialect::Sqlite, &e).error)
    } else {
        let mut sealer = StoreTx::on_sqlite(tx);
        let sealed = sealer.seal_pending_audit().await;
        match (sealed, sealer.into_sqlite()) {
            (Ok(_), Ok(tx)) => tx.commit().await.map_err(|e| classify(Dialect::Sqlite, &e).error),
            (Err(e), Ok(tx)) | (_, Err((e, Some(tx)))) => {
                let _ = tx.rollback().await;
                Err(e)
            }
            (_, Err((e, None))) => Err(e),
        }
    };
    if let Some(outcome) = guard.outcome.take() {
        outcome.send_replace(Some(result.clone()));
    }
    guard.units = 0;
    result
}

/// Ends a turn: commits the batch if nobody else is queued (or it is full), otherwise leaves it
/// open for the next unit of work.
async fn end_turn(writer: &Writer, mut guard: OwnedMutexGuard<Batch>) {
    if writer.queued.load(Ordering::SeqCst) == 0 || guard.units >= MAX_BATCH {
        let _ = commit_batch(&mut guard).await;
    }
}

/// A write unit of work inside a batch; it holds the writer's turn (and with it the open
/// transaction) until it commits, rolls back or is dropped.
pub(crate) struct Unit {
    guard: Option<OwnedMutexGuard<Batch>>,
    writer: Arc<Writer>,
    epoch: u64,
}

impl Unit {
    pub(crate) fn conn(&mut self) -> Result<&mut sqlx::SqliteConnection, StoreError> {
        match self.guard.as_mut().and_then(|g| g.tx.as_mut()) {
            Some(tx) => Ok(&mut **tx),
            None => Err(StoreError::Backend("the transaction of this unit of work has ended".into())),
        }
    }

    /// Runs one statement of the unit's own bookkeeping. While it runs the unit counts as
    /// abandoned, so that if this future is dropped mid-statement the next turn undoes the
    /// unit (or, failing that, the batch) instead of committing something half done.
    async fn run(&mut self, sql: &'static str) -> Result<(), StoreError> {
        let Some(guard) = self.guard.as_mut() else {
            return Err(StoreError::Backend("this unit of work has ended".into()));
        };
        guard.abandoned = true;
        let Some(tx) = guard.tx.as_mut() else {
            return Err(StoreError::Backend("the transaction of this unit of work has ended".into()));
        };
        let result = sqlx::query(sql).execute(&mut **tx).await.map(drop);
        guard.abandoned = false;
        result.map_err(|e| classify(Dialect::Sqlite, &e).error)
    }

    /// Rolls back this unit's changes and ends its turn; the batch goes on.
    pub(crate) async fn rollback(mut self) {
        let undone = match self.run(UNIT_ROLLBACK).await {
            Ok(()) => self.run(UNIT_RELEASE).await,
            Err(e) => Err(e),
        };
        let Some(mut guard) = self.guard.take() else { return };
        if let Err(e) = undone {
            fail_batch(&mut guard, &e).await;
        }
        end_turn(&self.writer, guard).await;
    }

    /// Keeps this unit's changes in the batch and returns once the batch committed.
    pub(crate) async fn commit(mut self) -> Result<(), StoreError> {
        let released = self.run(UNIT_RELEASE).await;
        let Some(mut guard) = self.guard.take() else {
            return Err(StoreError::Backend("this unit of work has ended".into()));
        };
        if let Err(error) = released {
            fail_batch(&mut guard, &error).await;
            end_turn(&self.writer, guard).await;
            return Err(error);
        }
        guard.units += 1;
        let Some(mut outcome) = guard.outcome.as_ref().map(watch::Sender::subscribe) else {
            return Err(StoreError::Backend("the batch has no outcome channel".into()));
        };
        if self.writer.queued.load(Ordering::SeqCst) == 0 || guard.units >= MAX_BATCH {
            return commit_batch(&mut guard).await;
        }
        // Others are queued: they continue this transaction. Queue again behind them; whoever
        // of those finds the queue empty commits, and if the turn comes back to this unit with
        // its batch still open (the others failed, or gave up before their turn), it commits.
        drop(guard);
        loop {
            tokio::select! {
                changed = outcome.changed() => {
                    if changed.is_err() {
                        return Err(StoreError::Backend("the batch ended without an outcome".into()));
                    }
                }
                mut guard = self.writer.batch.clone().lock_owned() => {
                    settle_abandoned(&mut guard).await;
                    if guard.epoch == self.epoch && guard.tx.is_some() {
                        return commit_batch(&mut guard).await;
                    }
                }
            }
            if let Some(result) = outcome.borrow_and_update().clone() {
                return result;
            }
        }
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        // Dropped before commit or rollback (an error returned early, or the request was
        // cancelled): leave a note to undo this unit's savepoint, and make sure someone settles
        // the batch even if no other writer comes along.
        let Some(mut guard) = self.guard.take() else { return };
        guard.abandoned = true;
        drop(guard);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let writer = self.writer.clone();
            runtime.spawn(async move {
                let mut guard = writer.batch.clone().lock_owned().await;
                settle_abandoned(&mut guard).await;
                end_turn(&writer, guard).await;
            });
        }
    }
}
