//! The embedded SQLite backend: one writer connection that batches jobs
//! into group-committed transactions, and a small pool of reader
//! connections.

mod audit;
mod chat;
mod grants;
mod keys;
mod outbox;
mod requests;
mod schema;
mod sessions;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::Connection;

use crate::batch::{self, fail_all, BatchConn, Chain, Effects};
use crate::keycache::{KeyCache, Revocations};
use crate::logic::Rows;
use crate::time::parse;
use crate::{Backend, EventSender, Job, ReadJob, ReadTx, StoreError, WriteTx};

/// How long the server's writer waits for another process's lock before
/// failing the batch: callers get an error in well under a second, never a
/// hang.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a one-shot command (`airlock keys revoke` …) waits for the
/// lock: a loaded server holds it most of the time, and SQLite's busy
/// handler only polls, so half a second was sometimes not one free moment
/// (6 of 151 `keys` runs failed under load). A person at a prompt can wait.
pub(crate) const TOOL_BUSY_TIMEOUT: Duration = Duration::from_secs(15);

/// SQLite in one file, with WAL and full fsync on commit.
pub struct SqliteBackend {
    jobs: batch::Queue,
    /// The writer connection, run by a caller that finds it idle or by
    /// the writer thread.
    writer: Arc<Shared>,
    /// Wakes the writer thread.
    doorbell: Sender<()>,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: PathBuf,
    /// API keys answered from memory until any process revokes one.
    keys: Arc<KeyCache>,
}

fn open_conn(path: &Path, busy: Duration) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(busy)?;
    // rusqlite keeps 16 by default; the writer alone runs more distinct
    // statements than that, and one pushed out is parsed again.
    conn.set_prepared_statement_cache_capacity(64);
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
    )?;
    Ok(conn)
}

/// An idle reader connection from the pool, or a new one.
fn take_reader(pool: &Mutex<Vec<Connection>>, path: &Path) -> Result<Connection, StoreError> {
    match pool.lock().ok().and_then(|mut p| p.pop()) {
        Some(c) => Ok(c),
        None => open_conn(path, BUSY_TIMEOUT),
    }
}

/// Back to the pool, which keeps at most eight idle.
fn return_reader(pool: &Mutex<Vec<Connection>>, conn: Connection) {
    if let Ok(mut p) = pool.lock() {
        if p.len() < 8 {
            p.push(conn);
        }
    }
}

impl SqliteBackend {
    /// Opens (creating if needed) the database at `path`, migrates it, and
    /// starts the writer thread, which announces commits on `events`. The
    /// writer waits up to `busy` for another process's write lock.
    pub fn open(path: &Path, events: EventSender, busy: Duration) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::Db(format!("{}: {e}", dir.display())))?;
            }
        }
        let mut conn = open_conn(path, busy)?;
        schema::migrate(&mut conn)?;
        let revocations = Revocations::open(path)?;
        {
            let lock = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            revocations.reset_under_write_lock()?;
            lock.commit()?;
        }
        let keys = Arc::new(KeyCache::new(revocations));
        let writer = Writer {
            conn,
            keys: keys.clone(),
            busy,
        };
        let (tx, rx) = mpsc::channel::<Job>();
        let shared = Arc::new(Shared {
            state: Mutex::new(WriterState {
                writer,
                rx,
                chain: None,
                events,
            }),
            queued: AtomicUsize::new(0),
            singles: AtomicUsize::new(0),
        });
        let (doorbell, rings) = mpsc::channel::<()>();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("airlock-sqlite-writer".into())
            .spawn(move || writer_loop(&thread_shared, &rings))
            .map_err(|e| StoreError::Db(format!("cannot start writer: {e}")))?;
        Ok(Self {
            jobs: batch::Queue::new(tx),
            writer: shared,
            doorbell,
            readers: Arc::new(Mutex::new(Vec::new())),
            path: path.to_owned(),
            keys,
        })
    }

    /// Opens an existing database for reading only, without starting a
    /// writer: for `airlock audit verify` and other offline tools.
    pub fn read_only(path: &Path) -> Result<ReadOnly, StoreError> {
        if !path.exists() {
            return Err(StoreError::Db(format!(
                "{}: no such database",
                path.display()
            )));
        }
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Read only, so never migrated here: a file of another version
        // would be read with the wrong queries.
        schema::check_version(&conn)?;
        Ok(ReadOnly { conn })
    }
}

/// A read-only connection for offline tools.
pub struct ReadOnly {
    conn: Connection,
}

impl ReadOnly {
    /// Runs `f` in one read transaction (one consistent snapshot).
    pub fn read<R>(
        &mut self,
        f: impl FnOnce(&mut dyn ReadTx) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let tx = self.conn.transaction()?;
        f(&mut Tx {
            conn: &tx,
            effects: None,
            revocations: None,
        })
    }
}

impl Backend for SqliteBackend {
    /// A job that finds nothing else queued, the writer idle and SQLite's
    /// write lock free runs here, on the caller's thread, and commits
    /// before this returns: handing it to the writer thread and its answer
    /// back cost two thread wake-ups, on this VM most of what one
    /// connection's check paid beyond its fsync (docs/PERFORMANCE.md).
    /// Under load the queue is seldom empty and the writer thread batches
    /// as before; a lock held by another process is waited out there, not
    /// here.
    fn submit(&self, job: Job) -> Result<(), StoreError> {
        // Alone now, and the last batches were one job each: a quiet
        // spell, not a gap between a busy writer's batches.
        let alone = self.writer.queued.fetch_add(1, Ordering::SeqCst) == 0
            && job.here
            && self.writer.singles.load(Ordering::Relaxed) >= QUIET_SINGLES;
        if let Err(e) = self.jobs.submit(job) {
            self.writer.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(e);
        }
        if !alone {
            self.ring();
            return Ok(());
        }
        let Some(mut state) = self.writer.try_lock() else {
            self.ring();
            return Ok(());
        };
        let ran = state.run_here(&self.writer);
        // Jobs queued meanwhile found the writer busy and rang, but those
        // queued after this batch was taken and before the lock was let go
        // may have found it free; and if the batch did not run, it waits.
        let more = !ran || self.writer.queued.load(Ordering::SeqCst) > 0;
        drop(state);
        if more {
            self.ring();
        }
        Ok(())
    }

    fn read(&self, job: ReadJob) -> Result<(), StoreError> {
        let pool = self.readers.clone();
        let path = self.path.clone();
        batch::blocking(move || {
            let mut conn = match take_reader(&pool, &path) {
                Ok(c) => c,
                Err(e) => return job(Err(e)),
            };
            match conn.transaction() {
                Ok(tx) => {
                    job(Ok(&mut Tx {
                        conn: &tx,
                        effects: None,
                        revocations: None,
                    }));
                    drop(tx);
                }
                Err(e) => job(Err(e.into())),
            }
            return_reader(&pool, conn);
        })
    }

    /// One query (an API key lookup: a primary-key read of a small, hot
    /// table, microseconds in WAL mode, where readers do not wait for the
    /// writer) runs right here on the caller's thread. Handing it to a
    /// blocking thread and back cost more than the read itself: at 64
    /// connections the allow path went from 14.1k to 18.2k checks/s and
    /// from 3.4 to 0.8 thread switches per check (docs/PERFORMANCE.md).
    /// What can still block the caller: a page not in memory, and the rare
    /// moment a WAL reader must wait (bounded by the busy timeout).
    fn read_single(&self, job: ReadJob) -> Result<(), StoreError> {
        match take_reader(&self.readers, &self.path) {
            Ok(conn) => {
                job(Ok(&mut Tx {
                    conn: &conn,
                    effects: None,
                    revocations: None,
                }));
                return_reader(&self.readers, conn);
            }
            Err(e) => job(Err(e)),
        }
        Ok(())
    }

    fn key_cache(&self) -> Option<&KeyCache> {
        Some(&self.keys)
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }
}

impl SqliteBackend {
    /// Wakes the writer thread to run what is queued. If it is gone (it
    /// ends only with this backend), the caller runs the queue itself,
    /// waiting for the lock: no job is left unanswered.
    fn ring(&self) {
        if self.doorbell.send(()).is_err() {
            self.writer.lock().run_queued(&self.writer);
        }
    }
}

/// One-job batches in a row after which a caller that finds the writer
/// idle commits its job itself: enough that a burst of load has passed.
const QUIET_SINGLES: usize = 16;

/// The writer's connection and queue, and how many jobs wait in it.
struct Shared {
    /// Held while a batch runs, by whichever thread runs it.
    state: Mutex<WriterState>,
    /// Jobs submitted and not yet taken: counted before a job is queued
    /// and after it is taken, so it is never below the truth.
    queued: AtomicUsize,
    /// How many batches in a row held one job: fewer than
    /// [`QUIET_SINGLES`] means callers have lately been queueing behind
    /// each other, and the writer thread should batch them.
    singles: AtomicUsize,
}

/// What running batches needs, kept from one batch to the next.
struct WriterState {
    writer: Writer,
    rx: Receiver<Job>,
    chain: Chain,
    events: EventSender,
}

impl Shared {
    /// The writer, waiting for it.
    fn lock(&self) -> MutexGuard<'_, WriterState> {
        match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => self.recover(poisoned),
        }
    }

    /// The writer if no thread is running it.
    fn try_lock(&self) -> Option<MutexGuard<'_, WriterState>> {
        match self.state.try_lock() {
            Ok(state) => Some(state),
            Err(TryLockError::Poisoned(poisoned)) => Some(self.recover(poisoned)),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// A thread panicked holding the writer (outside a job, which
    /// `batch::run` catches): whatever it left open is undone before the
    /// writer is used again.
    fn recover<'a>(
        &'a self,
        poisoned: PoisonError<MutexGuard<'a, WriterState>>,
    ) -> MutexGuard<'a, WriterState> {
        self.state.clear_poison();
        let mut state = poisoned.into_inner();
        state.undo();
        state
    }
}

impl WriterState {
    /// Runs queued jobs a batch at a time until none are left.
    fn run_queued(&mut self, shared: &Shared) {
        while let Some(batch) = self.take(shared) {
            // IMMEDIATE takes the write lock now, so the audit head read
            // by the first append cannot be overtaken by another process.
            if let Err(e) = self.writer.exec("BEGIN IMMEDIATE") {
                tracing::error!(error = %e, "cannot begin storage transaction");
                fail_all(batch, &e);
                continue;
            }
            self.run_begun(batch);
        }
    }

    /// Runs one batch on this (the caller's) thread if SQLite's write lock
    /// is free now; `false` if another process holds it, for the writer
    /// thread to wait out, so a caller's thread never waits on it.
    fn run_here(&mut self, shared: &Shared) -> bool {
        if self.writer.conn.busy_timeout(Duration::ZERO).is_err() {
            return false;
        }
        let began = self.writer.exec("BEGIN IMMEDIATE");
        if let Err(e) = self.writer.conn.busy_timeout(self.writer.busy) {
            tracing::error!(error = %e, "cannot restore the writer's busy timeout");
        }
        if began.is_err() {
            return false;
        }
        match self.take(shared) {
            Some(batch) => self.run_begun(batch),
            // The writer thread took it meanwhile.
            None => {
                if let Err(e) = self.writer.exec("ROLLBACK") {
                    tracing::error!(error = %e, "cannot end an empty storage transaction");
                    self.undo();
                }
            }
        }
        true
    }

    /// The next batch, if any job is queued, counted out of the queue.
    fn take(&mut self, shared: &Shared) -> Option<Vec<Job>> {
        let batch = batch::take_queued(&self.rx);
        if batch.is_empty() {
            return None;
        }
        shared.queued.fetch_sub(batch.len(), Ordering::SeqCst);
        if batch.len() == 1 {
            shared.singles.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.singles.store(0, Ordering::Relaxed);
        }
        Some(batch)
    }

    /// Runs a batch in the transaction begun for it. A panic outside its
    /// jobs (which `batch::run` catches) leaves the transaction rolled
    /// back and its callers answered with an error (their replies are
    /// dropped), and the writer usable.
    fn run_begun(&mut self, batch: Vec<Job>) {
        let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let announced = batch::run(&mut self.writer, batch, &mut self.chain);
            announced.send_here(&self.events);
        }));
        if ran.is_err() {
            tracing::error!("the storage writer panicked; its batch was rolled back");
            self.undo();
        }
    }

    /// Ends whatever transaction is open, and forgets the chain kept from
    /// it: the next batch reads the head again.
    fn undo(&mut self) {
        if !self.writer.conn.is_autocommit() {
            let _ = self.writer.exec("ROLLBACK");
        }
        self.writer.keys.revocations().end_begun();
        self.chain = None;
    }
}

/// The writer's connection, and the cache its revocations empty.
struct Writer {
    conn: Connection,
    keys: Arc<KeyCache>,
    /// The connection's busy timeout, put back after an inline begin.
    busy: Duration,
}

/// The writer thread: woken when a caller queued a job it did not run
/// itself, it runs the queue until it is empty. It ends when the backend
/// (the doorbell's sender) is dropped.
fn writer_loop(shared: &Shared, rings: &Receiver<()>) {
    while rings.recv().is_ok() {
        // Rings while it ran are answered by this one pass.
        while rings.try_recv().is_ok() {}
        shared.lock().run_queued(shared);
    }
}

impl BatchConn for Writer {
    /// Each statement prepared once and kept: these few (`BEGIN
    /// IMMEDIATE`, savepoints, `COMMIT`) run for every batch, and SQLite's
    /// parser showed in a one-connection profile when they were parsed
    /// each time.
    fn exec(&mut self, sql: &str) -> Result<(), StoreError> {
        for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            self.conn.prepare_cached(statement)?.execute([])?;
        }
        Ok(())
    }

    fn with_tx<R>(&mut self, effects: &mut Effects, f: impl FnOnce(&mut dyn WriteTx) -> R) -> R {
        f(&mut Tx {
            conn: &self.conn,
            effects: Some(effects),
            revocations: Some(self.keys.revocations()),
        })
    }

    /// Revocations the batch began are over: ended before their callers
    /// hear back, or a lookup just after `airlock keys revoke` returns
    /// would find one still in progress and keep nothing.
    fn ended(&mut self) {
        self.keys.revocations().end_begun();
    }
}

/// Queries over one connection inside a transaction.
struct Tx<'a> {
    conn: &'a Connection,
    /// The batch it writes in; `None` when it only reads.
    effects: Option<&'a mut Effects>,
    /// Where a revocation is announced to other processes' key caches;
    /// `None` when it only reads.
    revocations: Option<&'a Revocations>,
}

impl Rows for Tx<'_> {
    fn effects(&mut self) -> Option<&mut Effects> {
        self.effects.as_deref_mut()
    }

    fn probe_write(&mut self) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE schema_version SET version = version")?
            .execute([])?;
        Ok(())
    }
}

/// A stored time that may be missing.
fn opt_time(s: Option<String>) -> Result<Option<DateTime<Utc>>, StoreError> {
    s.as_deref().map(parse).transpose()
}
