//! The shared PostgreSQL backend, for several stateless nodes on one
//! database: a batching writer per node, a reader pool, and a listener that
//! turns other nodes' commits into local events.
//!
//! Every write batch, on every node, takes one transaction-scoped advisory
//! lock before it reads anything. That gives the nodes together what the
//! embedded store has alone: one writer at a time, so the audit chain is one
//! chain in one total order, a request is decided on the state the last
//! commit left, and a conditional update (consume, expire) happens once
//! whichever node runs it. Group commit keeps the lock's cost per batch,
//! not per write. Commits announce the requests they changed with
//! `pg_notify`, which PostgreSQL delivers only if the transaction commits.

mod audit;
mod chat;
mod grants;
mod keys;
mod lookup;
mod outbox;
mod requests;
mod schema;
mod sessions;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_core::RequestId;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};

use crate::batch::{self, fail_all, Announced, BatchConn, Effects};
use crate::logic::{corrupt, Rows};
use crate::{Backend, EventSender, Job, ReadJob, ReadTx, StoreError, StoreEvent, WriteTx};

/// The lock every write batch holds until it commits.
const WRITE_LOCK: i64 = 0x6169_726c_6f63_6b02;
/// The channel commits are announced on.
const CHANNEL: &str = "airlock_events";
/// Payloads stay under PostgreSQL's 8000-byte limit.
const MAX_PAYLOAD: usize = 7000;
/// How long a node waits for the database before answering 503.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Reader connections kept open.
const POOL: usize = 8;
/// A pooled connection used more recently than this runs single-query
/// reads without `BEGIN`; an older one goes through `begin`, which
/// replaces it if it died while idle.
const WARM: Duration = Duration::from_secs(2);

/// Server settings for every connection. The timeouts bound how long a
/// node that lost the database, or a batch stuck behind another node's
/// lock, can hold anyone up; the server kills a transaction whose node
/// vanished mid-way so its lock does not stall the others.
const SESSION_OPTIONS: &str =
    "-c lock_timeout=5s -c statement_timeout=30s -c idle_in_transaction_session_timeout=10s";

/// PostgreSQL, shared by any number of nodes.
pub struct PostgresBackend {
    jobs: batch::Queue,
    readers: Arc<Mutex<Vec<Conn>>>,
    config: postgres::Config,
    /// Key lookups, on async connections.
    lookup: Arc<lookup::Lookup>,
    stop: Arc<AtomicBool>,
}

impl Drop for PostgresBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Closing a connection blocks on the driver's event loop, which
        // must not happen on an async runtime's thread: the pool is let go
        // on a thread of its own (or by a reader still using it).
        let pool = std::mem::take(&mut self.readers);
        let _ = std::thread::Builder::new()
            .name("airlock-pg-close".into())
            .spawn(move || drop(pool));
    }
}

/// A connection and its prepared statements, which PostgreSQL keeps per
/// session: each query is parsed once per connection, not once per call.
struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
    /// Audit appends not yet sent (see [`audit::Staged`]).
    staged: audit::Staged,
    /// The writing node's id, named in its announcements.
    node: String,
    /// When it went back to the pool: a connection idle for long may have
    /// been cut meanwhile, unnoticed until used.
    idle_since: Instant,
}

impl Conn {
    fn connect(config: &postgres::Config) -> Result<Self, StoreError> {
        Ok(Self {
            client: config.connect(NoTls).map_err(|e| {
                StoreError::Db(format!("cannot connect to PostgreSQL: {}", describe(&e)))
            })?,
            statements: HashMap::new(),
            staged: audit::Staged::default(),
            node: String::new(),
            idle_since: Instant::now(),
        })
    }

    fn usable(&self) -> bool {
        !self.client.is_closed()
    }

    /// Queries over this connection, in the transaction begun on it.
    fn tx<'a>(&'a mut self, effects: Option<&'a mut Effects>) -> Tx<'a> {
        Tx {
            client: &mut self.client,
            statements: &mut self.statements,
            staged: &mut self.staged,
            effects,
        }
    }
}

/// The error and its causes: the driver's own message is only its kind.
fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        StoreError::Db(describe(&e))
    }
}

/// Parses a URL into a driver config with Airlock's session settings.
fn config_for(url: &str) -> Result<postgres::Config, StoreError> {
    async_config_for(url).map(postgres::Config::from)
}

/// The same settings, for the async connections of [`lookup`].
fn async_config_for(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e: postgres::Error| {
        StoreError::Unsupported(format!("storage url: {}", describe(&e)))
    })?;
    let options = match config.get_options() {
        Some(o) if !o.is_empty() => format!("{o} {SESSION_OPTIONS}"),
        _ => SESSION_OPTIONS.to_owned(),
    };
    config
        .options(&options)
        .application_name("airlock")
        .connect_timeout(CONNECT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .tcp_user_timeout(Duration::from_secs(10));
    Ok(config)
}

/// Runs `f` on a thread of its own: the driver runs its own event loop,
/// which must not be started from inside the caller's async runtime.
fn off_runtime<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, StoreError> + Send + 'static,
) -> Result<R, StoreError> {
    std::thread::Builder::new()
        .name("airlock-pg-open".into())
        .spawn(f)
        .map_err(|e| StoreError::Db(format!("cannot start a thread: {e}")))?
        .join()
        .unwrap_or_else(|_| Err(StoreError::Db("opening PostgreSQL panicked".into())))
}

impl PostgresBackend {
    /// Connects, migrates the schema, and starts the writer and listener
    /// threads. Commits of this node and others are announced on `events`.
    pub fn open(url: &str, events: EventSender) -> Result<Self, StoreError> {
        let async_config = async_config_for(url)?;
        let config = postgres::Config::from(async_config.clone());
        let writer = {
            let config = config.clone();
            off_runtime(move || {
                let mut conn = Conn::connect(&config)?;
                schema::migrate(&mut conn.client)?;
                Ok(conn)
            })?
        };
        let node = uuid_like();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<Job>();
        {
            let config = config.clone();
            let events = events.clone();
            let node = node.clone();
            std::thread::Builder::new()
                .name("airlock-pg-writer".into())
                .spawn(move || writer_loop(config, Some(writer), rx, events, node))
                .map_err(|e| StoreError::Db(format!("cannot start writer: {e}")))?;
        }
        {
            let config = config.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("airlock-pg-listener".into())
                .spawn(move || listen_loop(config, events, node, stop))
                .map_err(|e| StoreError::Db(format!("cannot start listener: {e}")))?;
        }
        Ok(Self {
            jobs: batch::Queue::new(tx),
            readers: Arc::new(Mutex::new(Vec::new())),
            config,
            lookup: lookup::Lookup::new(async_config),
            stop,
        })
    }

    /// Connects for reading only, without starting a writer: for
    /// `airlock audit verify`. Runs `f` in one read-only snapshot.
    pub(crate) fn read_once<R: Send + 'static>(
        url: &str,
        f: impl FnOnce(&mut dyn ReadTx) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let config = config_for(url)?;
        off_runtime(move || {
            let mut slot = None;
            begin(&mut slot, &config, BEGIN_READ)?;
            let conn = slot.as_mut().ok_or(StoreError::WriterGone)?;
            read_in_snapshot(conn, f)
        })
    }
}

/// A random id for this node, so it can skip its own announcements.
fn uuid_like() -> String {
    RequestId::new().to_string()
}

/// Starts a read: one consistent snapshot across the several queries a
/// request's view takes.
const BEGIN_READ: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";

/// Sends `sql` (a BEGIN) on the slot's connection, connecting first if
/// there is none. A connection found dead at BEGIN (the database restarted
/// or the network dropped while it sat idle) is replaced once: nothing was
/// done on it yet, so retrying is safe, and a node recovers without
/// failing the first request after an outage.
fn begin(slot: &mut Option<Conn>, config: &postgres::Config, sql: &str) -> Result<(), StoreError> {
    let mut last = StoreError::Db("PostgreSQL is unreachable".into());
    for _ in 0..2 {
        if !slot.as_ref().is_some_and(Conn::usable) {
            *slot = Some(Conn::connect(config)?);
        }
        let Some(c) = slot.as_mut() else { break };
        match c.client.batch_execute(sql) {
            Ok(()) => return Ok(()),
            Err(e) if c.usable() => {
                let _ = c.client.batch_execute("ROLLBACK");
                return Err(e.into());
            }
            Err(e) => {
                last = e.into();
                *slot = None;
            }
        }
    }
    Err(last)
}

/// Runs `f` in a transaction already begun, then ends it.
fn read_in_snapshot<R>(
    conn: &mut Conn,
    f: impl FnOnce(&mut dyn ReadTx) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    let out = f(&mut conn.tx(None));
    // Read-only: ending it either way changes nothing.
    let end = conn.client.batch_execute("COMMIT");
    let out = out?;
    end?;
    Ok(out)
}

impl Backend for PostgresBackend {
    fn submit(&self, job: Job) -> Result<(), StoreError> {
        self.jobs.submit(job)
    }

    fn read(&self, job: ReadJob) -> Result<(), StoreError> {
        let pool = self.readers.clone();
        let config = self.config.clone();
        batch::blocking(move || {
            let mut slot = pool.lock().ok().and_then(|mut p| p.pop());
            if let Err(e) = begin(&mut slot, &config, BEGIN_READ) {
                return job(Err(e));
            }
            let Some(mut conn) = slot else {
                return job(Err(StoreError::WriterGone));
            };
            let result = read_in_snapshot(&mut conn, |r| {
                job(Ok(r));
                Ok(())
            });
            if let Err(e) = result {
                tracing::warn!(error = %e, "read transaction failed");
            }
            give_back(&pool, conn);
        })
    }

    fn read_single(&self, job: ReadJob) -> Result<(), StoreError> {
        let warm = self.readers.lock().ok().and_then(|mut p| {
            let i = p.iter().rposition(|c| c.idle_since.elapsed() < WARM)?;
            Some(p.swap_remove(i))
        });
        let Some(mut conn) = warm else {
            return self.read(job);
        };
        let pool = self.readers.clone();
        batch::blocking(move || {
            // Autocommit: the one query is its own transaction. A
            // connection that died since its last use fails this read (an
            // error, never an answer) and is dropped.
            job(Ok(&mut conn.tx(None)));
            give_back(&pool, conn);
        })
    }

    fn api_key_by_hash(&self, hash: String) -> Option<crate::KeyLookup> {
        Some(Box::pin(self.lookup.clone().by_hash(hash)))
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }
}

/// Returns a reader connection to the pool, if it still works.
fn give_back(pool: &Mutex<Vec<Conn>>, mut conn: Conn) {
    if conn.usable() {
        conn.idle_since = Instant::now();
        if let Ok(mut p) = pool.lock() {
            if p.len() < POOL {
                p.push(conn);
            }
        }
    }
}

fn writer_loop(
    config: postgres::Config,
    mut conn: Option<Conn>,
    rx: Receiver<Job>,
    events: EventSender,
    node: String,
) {
    // Every batch, on every node, holds this lock until it commits.
    let begin_write = format!("BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})");
    let mut chain = None;
    while let Some(batch) = batch::next_batch(&rx) {
        // A lost connection is re-made on the next batch, so a node
        // recovers by itself when the database comes back.
        if let Err(e) = begin(&mut conn, &config, &begin_write) {
            tracing::error!(error = %e, "cannot begin a storage transaction; failing the batch");
            fail_all(batch, &e);
            continue;
        }
        let Some(c) = conn.as_mut() else {
            fail_all(batch, &StoreError::WriterGone);
            continue;
        };
        c.node.clone_from(&node);
        batch::run(c, batch, &mut chain).send_here(&events);
    }
}

impl BatchConn for Conn {
    fn exec(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(self.client.batch_execute(sql)?)
    }

    fn with_tx<R>(&mut self, effects: &mut Effects, f: impl FnOnce(&mut dyn WriteTx) -> R) -> R {
        f(&mut self.tx(Some(effects)))
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.tx(None).flush_staged()
    }

    fn discard_staged(&mut self) {
        self.staged.clear();
    }

    fn before_commit(&mut self, changed: &Announced) -> Result<(), StoreError> {
        self.flush()?;
        let node = self.node.clone();
        announce(self, &node, changed)
    }
}

/// Queues the batch's changes for other nodes; PostgreSQL sends them at
/// commit, and not at all if the commit fails.
/// The token that tells other nodes users' groups changed.
const DIRECTORY_TOKEN: &str = "directory";

fn announce(conn: &mut Conn, node: &str, changed: &Announced) -> Result<(), StoreError> {
    let mut payload = String::new();
    let mut flush = |payload: &mut String| -> Result<(), StoreError> {
        if !payload.is_empty() {
            let msg = format!("{node} {payload}");
            conn.client
                .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &msg])?;
            payload.clear();
        }
        Ok(())
    };
    let ids = changed.requests.iter().map(|id| id.to_string());
    let directory = changed.directory.then(|| DIRECTORY_TOKEN.to_owned());
    for token in ids.chain(directory) {
        if payload.len() > MAX_PAYLOAD {
            flush(&mut payload)?;
        }
        if !payload.is_empty() {
            payload.push(',');
        }
        payload.push_str(&token);
    }
    flush(&mut payload)
}

/// Listens for other nodes' commits and re-announces them here. After any
/// gap (start, lost connection) it says [`StoreEvent::Resync`], so waiters
/// re-read rather than miss what happened meanwhile.
fn listen_loop(config: postgres::Config, events: EventSender, node: String, stop: Arc<AtomicBool>) {
    let mut backoff = Duration::from_millis(100);
    while !stop.load(Ordering::Relaxed) {
        let mut conn = match Conn::connect(&config) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "event listener cannot connect; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if let Err(e) = conn.client.batch_execute(&format!("LISTEN {CHANNEL}")) {
            tracing::warn!(error = %describe(&e), "cannot LISTEN; retrying");
            std::thread::sleep(backoff);
            continue;
        }
        backoff = Duration::from_millis(100);
        events.send(StoreEvent::Resync);
        while !stop.load(Ordering::Relaxed) && conn.usable() {
            let mut notes = conn.client.notifications();
            let mut iter = notes.timeout_iter(Duration::from_secs(1));
            loop {
                use postgres::fallible_iterator::FallibleIterator;
                match iter.next() {
                    Ok(Some(n)) => relay(n.payload(), &node, &events),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %describe(&e), "event listener lost its connection");
                        break;
                    }
                }
            }
        }
    }
}

fn relay(payload: &str, node: &str, events: &EventSender) {
    let Some((from, ids)) = payload.split_once(' ') else {
        return;
    };
    if from == node {
        return;
    }
    for token in ids.split(',') {
        if token == DIRECTORY_TOKEN {
            events.send(StoreEvent::DirectoryChanged);
        } else if let Ok(id) = RequestId::parse(token) {
            events.send(StoreEvent::Changed { id, remote: true });
        }
    }
}

/// Queries over one connection inside a transaction.
struct Tx<'a> {
    client: &'a mut Client,
    statements: &'a mut HashMap<String, Statement>,
    /// Appends staged in this batch: sent before any other statement runs
    /// on the connection, so every query sees them.
    staged: &'a mut audit::Staged,
    /// The batch it writes in; `None` when it only reads.
    effects: Option<&'a mut Effects>,
}

impl Rows for Tx<'_> {
    fn effects(&mut self) -> Option<&mut Effects> {
        self.effects.as_deref_mut()
    }

    fn probe_write(&mut self) -> Result<(), StoreError> {
        self.execute("UPDATE airlock_schema_version SET version = version", &[])?;
        Ok(())
    }
}

type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

impl Tx<'_> {
    /// A prepared statement, prepared once per connection. Statements
    /// built at run time (audit searches) come in a few dozen shapes at
    /// most, so the cache stays small.
    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    fn query(&mut self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, StoreError> {
        self.flush_staged()?;
        let st = self.statement(sql)?;
        Ok(self.client.query(&st, params)?)
    }

    fn query_opt(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Option<Row>, StoreError> {
        self.flush_staged()?;
        let st = self.statement(sql)?;
        Ok(self.client.query_opt(&st, params)?)
    }

    fn query_one(&mut self, sql: &'static str, params: Params<'_>) -> Result<Row, StoreError> {
        self.flush_staged()?;
        let st = self.statement(sql)?;
        Ok(self.client.query_one(&st, params)?)
    }

    fn execute(&mut self, sql: &'static str, params: Params<'_>) -> Result<u64, StoreError> {
        self.flush_staged()?;
        let st = self.statement(sql)?;
        Ok(self.client.execute(&st, params)?)
    }
}

/// A stored count, which PostgreSQL keeps as `integer`.
fn count(n: i32) -> Result<u32, StoreError> {
    u32::try_from(n).map_err(|_| corrupt(format!("negative count {n}")))
}
