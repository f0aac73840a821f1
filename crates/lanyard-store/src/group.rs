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
//!
//! Statements run in place on the writer's own connection (`direct.rs`); only `BEGIN IMMEDIATE`
//! when another process holds the lock, and every `COMMIT` (an fsync), go to a blocking thread.
//! Read units of work take a read-only connection of the same file from [`Writer::read`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use lanyard_core::repo::StoreError;
use rusqlite::Connection;
use sqlx::SqlitePool;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard, OwnedSemaphorePermit, Semaphore, watch};

use crate::direct;
use crate::tx::StoreTx;

/// How long a unit of work waits for its turn before it gives up (as the busy timeout did).
const TURN_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many units of work share one transaction, so a long queue still commits
/// regularly.
const MAX_BATCH: usize = 64;
/// Read units of work open at once on one database file; more wait for one to end.
const MAX_READERS: usize = 64;
/// Idle read-only connections kept open per database file.
const IDLE_READERS: usize = 8;

const BEGIN: &str = "BEGIN IMMEDIATE";
const BEGIN_READ: &str = "BEGIN";
const COMMIT: &str = "COMMIT";
const ROLLBACK: &str = "ROLLBACK";
const UNIT: &str = "SAVEPOINT lanyard_unit";
const UNIT_RELEASE: &str = "RELEASE SAVEPOINT lanyard_unit";
const UNIT_ROLLBACK: &str = "ROLLBACK TO SAVEPOINT lanyard_unit";

type Outcome = Option<Result<(), StoreError>>;

/// The writer of one SQLite database file: its queue, its open batch, and the read-only
/// connections of its readers.
pub(crate) struct Writer {
    path: PathBuf,
    batch: Arc<AsyncMutex<Batch>>,
    /// Units of work queued for their turn (not counting those waiting for a batch's outcome).
    queued: AtomicUsize,
    /// Idle read-only connections, and the permits of read units of work.
    readers: Mutex<Vec<Connection>>,
    reading: Arc<Semaphore>,
}

#[derive(Default)]
struct Batch {
    /// The writer's connection, opened at the first write; away while a commit runs.
    conn: Option<Connection>,
    /// A transaction is open on `conn`.
    open: bool,
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
            .entry(path.clone())
            .or_insert_with(|| {
                Arc::new(Writer {
                    path,
                    batch: Arc::new(AsyncMutex::new(Batch::default())),
                    queued: AtomicUsize::new(0),
                    readers: Mutex::new(Vec::new()),
                    reading: Arc::new(Semaphore::new(MAX_READERS)),
                })
            })
            .clone()
    }

    /// Closes the idle connections to this file (`Db::connect` calls it), so that a file that
    /// was replaced and opened again is read and written through connections to the new file.
    pub(crate) async fn reopen(&self) {
        self.idle_readers().clear();
        let mut batch = self.batch.lock().await;
        if !batch.open {
            batch.conn = None;
        }
    }

    fn idle_readers(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        // A poisoned lock only means a thread panicked while pushing or popping; the list is
        // whole.
        self.readers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A read unit of work: a read-only connection with a snapshot open on it.
    pub(crate) async fn read(self: Arc<Self>) -> Result<ReadConn, StoreError> {
        let permit = tokio::time::timeout(TURN_TIMEOUT, self.reading.clone().acquire_owned())
            .await
            .map_err(|_| {
                StoreError::Retryable(format!(
                    "{MAX_READERS} read units of work stayed open for {} s",
                    TURN_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|_| StoreError::Backend("the readers' semaphore was closed".into()))?;
        let idle = self.idle_readers().pop();
        let conn = match idle {
            Some(conn) => conn,
            None => direct::open(&self.path, true)?,
        };
        direct::run(&conn, BEGIN_READ).map_err(|e| direct::classify(&e).error)?;
        Ok(ReadConn { conn: Some(conn), writer: self, _permit: permit })
    }

    /// Waits for this process's turn to write, then starts a unit of work inside the open batch
    /// (opening one when there is none).
    pub(crate) async fn begin(self: Arc<Self>) -> Result<Unit, StoreError> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        let turn = tokio::time::timeout(TURN_TIMEOUT, self.batch.clone().lock_owned()).await;
        self.queued.fetch_sub(1, Ordering::SeqCst);
        let mut guard = turn.map_err(|_| {
            StoreError::Retryable(format!(
                "the database stayed locked by other writers for {} s",
                TURN_TIMEOUT.as_secs()
            ))
        })?;
        settle_abandoned(&mut guard);
        if !guard.open {
            self.open_batch(&mut guard).await?;
        }
        let started = match guard.conn.as_ref() {
            Some(conn) => direct::run(conn, UNIT).map_err(|e| direct::classify(&e).error),
            None => Err(StoreError::Backend("the writer's connection is away".into())),
        };
        if let Err(error) = started {
            fail_batch(&mut guard, &error);
            return Err(error);
        }
        let epoch = guard.epoch;
        Ok(Unit { guard: Some(guard), writer: self, epoch })
    }

    /// Opens a write transaction. It is tried in place without waiting; only when another
    /// process holds the write lock does it wait (up to the busy timeout) on a blocking thread.
    async fn open_batch(&self, guard: &mut OwnedMutexGuard<Batch>) -> Result<(), StoreError> {
        let conn = match guard.conn.take() {
            Some(conn) => conn,
            None => direct::open(&self.path, false)?,
        };
        let at_once = {
            let _ = conn.busy_timeout(Duration::ZERO);
            let r = direct::run(&conn, BEGIN);
            let _ = conn.busy_timeout(direct::BUSY_TIMEOUT);
            r
        };
        let (conn, begun) = match at_once {
            Err(e) if is_busy(&e) => {
                let waited = tokio::task::spawn_blocking(move || {
                    let r = direct::run(&conn, BEGIN);
                    (conn, r)
                })
                .await;
                match waited {
                    Ok(done) => done,
                    Err(e) => {
                        return Err(StoreError::Backend(format!("BEGIN IMMEDIATE did not finish: {e}")));
                    }
                }
            }
            other => (conn, other),
        };
        guard.conn = Some(conn);
        begun.map_err(|e| direct::classify(&e).error)?;
        guard.open = true;
        guard.epoch += 1;
        guard.units = 0;
        guard.outcome = Some(watch::channel(None).0);
        Ok(())
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// A read unit of work's connection. Its snapshot ends, and the connection goes back to the
/// idle ones, when it is dropped (or committed).
pub(crate) struct ReadConn {
    conn: Option<Connection>,
    writer: Arc<Writer>,
    _permit: OwnedSemaphorePermit,
}

impl ReadConn {
    pub(crate) fn conn(&mut self) -> Result<&mut Connection, StoreError> {
        self.conn.as_mut().ok_or_else(|| StoreError::Backend("this read unit of work has ended".into()))
    }

    /// Ends the snapshot.
    pub(crate) fn commit(mut self) -> Result<(), StoreError> {
        let conn =
            self.conn.take().ok_or_else(|| StoreError::Backend("this read unit of work has ended".into()))?;
        let ended = direct::run(&conn, COMMIT).map_err(|e| direct::classify(&e).error);
        if ended.is_ok() {
            self.give_back(conn);
        }
        ended
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.writer.idle_readers();
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
    }
}

impl Drop for ReadConn {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        // A connection whose snapshot cannot be ended is closed instead of reused.
        if conn.is_autocommit() || direct::run(&conn, ROLLBACK).is_ok() {
            self.give_back(conn);
        }
    }
}

/// Rolls back the savepoint of a unit of work that was dropped, or, if that fails, the batch.
fn settle_abandoned(guard: &mut OwnedMutexGuard<Batch>) {
    if !std::mem::take(&mut guard.abandoned) {
        return;
    }
    let undone = match (guard.open, guard.conn.as_ref()) {
        (true, Some(conn)) => direct::run(conn, UNIT_ROLLBACK).and_then(|()| direct::run(conn, UNIT_RELEASE)),
        _ => Ok(()),
    };
    if let Err(e) = undone {
        fail_batch(guard, &direct::classify(&e).error);
    }
}

/// Rolls the open batch back and tells every unit in it.
fn fail_batch(guard: &mut OwnedMutexGuard<Batch>, error: &StoreError) {
    if std::mem::take(&mut guard.open) {
        // SQLite may already have rolled it back itself; a connection still inside a
        // transaction afterwards is closed (which rolls back) rather than reused.
        if let Some(conn) = guard.conn.as_ref() {
            let _ = direct::run(conn, ROLLBACK);
            if !conn.is_autocommit() {
                guard.conn = None;
            }
        }
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
/// audit sealer, and no unsealed event is ever visible. The `COMMIT` runs on a blocking thread
/// (it waits for an fsync), which publishes the outcome itself: the units waiting for it hear
/// even if this future is dropped.
async fn commit_batch(guard: &mut OwnedMutexGuard<Batch>) -> Result<(), StoreError> {
    if !guard.open {
        return Ok(());
    }
    let Some(conn) = guard.conn.take() else {
        let error = StoreError::Backend("the writer's connection is away".into());
        fail_batch(guard, &error);
        return Err(error);
    };
    if guard.units == 0 {
        guard.open = false;
        let result = direct::run(&conn, ROLLBACK).map_err(|e| direct::classify(&e).error);
        if conn.is_autocommit() {
            guard.conn = Some(conn);
        }
        if let Some(outcome) = guard.outcome.take() {
            outcome.send_replace(Some(result.clone()));
        }
        return result;
    }
    let mut sealer = StoreTx::on_batch(conn);
    let sealed = sealer.seal_pending_audit().await;
    let Some((conn, broken)) = sealer.into_batch() else {
        let error = StoreError::Backend("the sealer lost the batch's connection".into());
        fail_batch(guard, &error);
        return Err(error);
    };
    guard.conn = Some(conn);
    if let Some(error) = sealed.err().or(broken) {
        fail_batch(guard, &error);
        return Err(error);
    }
    let Some(conn) = guard.conn.take() else {
        return Err(StoreError::Backend("the writer's connection is away".into()));
    };
    guard.open = false;
    guard.units = 0;
    let outcome = guard.outcome.take();
    let committed = tokio::task::spawn_blocking(move || {
        let result = direct::run(&conn, COMMIT).map_err(|e| direct::classify(&e).error);
        if result.is_err() {
            let _ = direct::run(&conn, ROLLBACK);
        }
        if let Some(outcome) = outcome {
            outcome.send_replace(Some(result.clone()));
        }
        (conn, result)
    })
    .await;
    match committed {
        Ok((conn, result)) => {
            if conn.is_autocommit() {
                guard.conn = Some(conn);
            }
            if let Err(error) = &result {
                tracing::warn!(%error, "a batch of write units of work failed to commit");
            }
            result
        }
        Err(e) => Err(StoreError::Backend(format!("the commit did not finish: {e}"))),
    }
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
    pub(crate) fn conn(&mut self) -> Result<&mut Connection, StoreError> {
        match self.guard.as_mut().filter(|g| g.open).and_then(|g| g.conn.as_mut()) {
            Some(conn) => Ok(conn),
            None => Err(StoreError::Backend("the transaction of this unit of work has ended".into())),
        }
    }

    /// Runs one statement of the unit's own bookkeeping.
    fn run(&mut self, sql: &'static str) -> Result<(), StoreError> {
        direct::run(self.conn()?, sql).map_err(|e| direct::classify(&e).error)
    }

    /// Rolls back this unit's changes and ends its turn; the batch goes on.
    pub(crate) async fn rollback(mut self) {
        let undone = self.run(UNIT_ROLLBACK).and_then(|()| self.run(UNIT_RELEASE));
        let Some(mut guard) = self.guard.take() else { return };
        if let Err(e) = undone {
            fail_batch(&mut guard, &e);
        }
        end_turn(&self.writer, guard).await;
    }

    /// Keeps this unit's changes in the batch and returns once the batch committed.
    pub(crate) async fn commit(mut self) -> Result<(), StoreError> {
        let released = self.run(UNIT_RELEASE);
        let Some(mut guard) = self.guard.take() else {
            return Err(StoreError::Backend("this unit of work has ended".into()));
        };
        if let Err(error) = released {
            fail_batch(&mut guard, &error);
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
                    settle_abandoned(&mut guard);
                    if guard.epoch == self.epoch && guard.open {
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
        // cancelled): undo this unit's savepoint now, and make sure someone settles the batch
        // even if no other writer comes along.
        let Some(mut guard) = self.guard.take() else { return };
        guard.abandoned = true;
        settle_abandoned(&mut guard);
        drop(guard);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let writer = self.writer.clone();
            runtime.spawn(async move {
                let guard = writer.batch.clone().lock_owned().await;
                end_turn(&writer, guard).await;
            });
        }
    }
}
