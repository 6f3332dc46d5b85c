//! The embedded SQLite backend: one writer thread that batches jobs into
//! group-committed transactions, and a small pool of reader connections.

mod audit;
mod chat;
mod grants;
mod keys;
mod outbox;
mod requests;
mod schema;
mod sessions;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::Connection;

use crate::batch::{self, fail_all, BatchConn, Effects};
use crate::keycache::{KeyCache, Revocations};
use crate::logic::Rows;
use crate::time::parse;
use crate::{Backend, EventSender, Job, ReadJob, ReadTx, StoreError, WriteTx};

/// How long a writer waits for another process's lock before failing the
/// batch: callers get an error in well under a second, never a hang.
const BUSY_TIMEOUT: Duration = Duration::from_millis(500);

/// SQLite in one file, with WAL and full fsync on commit.
pub struct SqliteBackend {
    jobs: batch::Queue,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: PathBuf,
    /// API keys answered from memory until any process revokes one.
    keys: Arc<KeyCache>,
}

fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
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
        None => open_conn(path),
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
    /// starts the writer thread, which announces commits on `events`.
    pub fn open(path: &Path, events: EventSender) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::Db(format!("{}: {e}", dir.display())))?;
            }
        }
        let mut conn = open_conn(path)?;
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
        };
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("airlock-sqlite-writer".into())
            .spawn(move || writer_loop(writer, rx, events))
            .map_err(|e| StoreError::Db(format!("cannot start writer: {e}")))?;
        Ok(Self {
            jobs: batch::Queue::new(tx),
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
    fn submit(&self, job: Job) -> Result<(), StoreError> {
        self.jobs.submit(job)
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

/// The writer thread's connection, and the cache its revocations empty.
struct Writer {
    conn: Connection,
    keys: Arc<KeyCache>,
}

fn writer_loop(mut writer: Writer, rx: Receiver<Job>, events: EventSender) {
    let mut chain = None;
    while let Some(batch) = batch::next_batch(&rx) {
        // IMMEDIATE takes the write lock now, so the audit head read by the
        // first append cannot be overtaken by another process.
        if let Err(e) = writer.exec("BEGIN IMMEDIATE") {
            tracing::error!(error = %e, "cannot begin storage transaction");
            fail_all(batch, &e);
            continue;
        }
        let announced = batch::run(&mut writer, batch, &mut chain);
        announced.send_here(&events);
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
