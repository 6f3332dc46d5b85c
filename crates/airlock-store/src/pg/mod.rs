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

mod schema;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_core::request::GrantRecord;
use airlock_core::{
    Action, AuditRecord, Fingerprint, GrantId, GroupName, RequestId, RequestStatus, Review,
    UserName,
};
use airlock_keys::Checkpoint;
use chrono::{DateTime, Utc};
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};

use crate::batch::{self, fail_all, Announced, BatchConn, Effects};
use crate::logic::{
    corrupt, ApiKeyRow, AuditRow, AuditRows, ChatRows, CheckpointRow, GrantBinding, GrantRecordRow,
    GrantRows, GrantState, KeyRows, Listing, OutboxRows, RequestRow, RequestRows, ReviewRow, Rows,
    SessionRow, SessionRows,
};
use crate::model::{ApiKeyRecord, AuditFilter, OutboxMessage, SessionRecord};
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
    statements: HashMap<&'static str, Statement>,
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
    let mut config: postgres::Config = url.parse().map_err(|e: postgres::Error| {
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
        let config = config_for(url)?;
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
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Db("read outside a runtime".into()))?;
        handle.spawn_blocking(move || {
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
        });
        Ok(())
    }

    fn read_single(&self, job: ReadJob) -> Result<(), StoreError> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Db("read outside a runtime".into()))?;
        let warm = self.readers.lock().ok().and_then(|mut p| {
            let i = p.iter().rposition(|c| c.idle_since.elapsed() < WARM)?;
            Some(p.swap_remove(i))
        });
        let Some(mut conn) = warm else {
            return self.read(job);
        };
        let pool = self.readers.clone();
        handle.spawn_blocking(move || {
            // Autocommit: the one query is its own transaction. A
            // connection that died since its last use fails this read (an
            // error, never an answer) and is dropped.
            job(Ok(&mut conn.tx(None)));
            give_back(&pool, conn);
        });
        Ok(())
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
        let done = batch::run(c, batch);
        for id in done.requests {
            let _ = events.send(StoreEvent::Changed { id, remote: false });
        }
        if done.directory {
            let _ = events.send(StoreEvent::DirectoryChanged);
        }
    }
}

impl BatchConn for Conn {
    fn exec(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(self.client.batch_execute(sql)?)
    }

    fn with_tx<R>(&mut self, effects: &mut Effects, f: impl FnOnce(&mut dyn WriteTx) -> R) -> R {
        f(&mut self.tx(Some(effects)))
    }

    fn before_commit(&mut self, changed: &Announced) -> Result<(), StoreError> {
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
        let _ = events.send(StoreEvent::Resync);
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
            let _ = events.send(StoreEvent::DirectoryChanged);
        } else if let Ok(id) = RequestId::parse(token) {
            let _ = events.send(StoreEvent::Changed { id, remote: true });
        }
    }
}

/// Queries over one connection inside a transaction.
struct Tx<'a> {
    client: &'a mut Client,
    statements: &'a mut HashMap<&'static str, Statement>,
    /// The batch it writes in; `None` when it only reads.
    effects: Option<&'a mut Effects>,
}

impl Rows for Tx<'_> {
    fn effects(&mut self) -> Option<&mut Effects> {
        self.effects.as_deref_mut()
    }
}

type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

impl Tx<'_> {
    fn statement(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    fn query(&mut self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>, StoreError> {
        let st = self.statement(sql)?;
        Ok(self.client.query(&st, params)?)
    }

    fn query_opt(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Option<Row>, StoreError> {
        let st = self.statement(sql)?;
        Ok(self.client.query_opt(&st, params)?)
    }

    fn query_one(&mut self, sql: &'static str, params: Params<'_>) -> Result<Row, StoreError> {
        let st = self.statement(sql)?;
        Ok(self.client.query_one(&st, params)?)
    }

    fn execute(&mut self, sql: &'static str, params: Params<'_>) -> Result<u64, StoreError> {
        let st = self.statement(sql)?;
        Ok(self.client.execute(&st, params)?)
    }
}

/// A stored count, which PostgreSQL keeps as `integer`.
fn count(n: i32) -> Result<u32, StoreError> {
    u32::try_from(n).map_err(|_| corrupt(format!("negative count {n}")))
}

macro_rules! request_query {
    ($tail:literal) => {
        concat!(
            "SELECT id, status, action_json, fingerprint, requirement_json, policies_json, reason, created_at, expires_at FROM requests ",
            $tail
        )
    };
}

fn request_row(r: &Row) -> Result<RequestRow, StoreError> {
    Ok(RequestRow {
        id: r.try_get(0)?,
        status: r.try_get(1)?,
        action_json: r.try_get(2)?,
        fingerprint: r.try_get(3)?,
        requirement_json: r.try_get(4)?,
        policies_json: r.try_get(5)?,
        reason: r.try_get(6)?,
        created_at: r.try_get(7)?,
        expires_at: r.try_get(8)?,
    })
}

impl RequestRows for Tx<'_> {
    fn request_row(&mut self, id: &RequestId) -> Result<Option<RequestRow>, StoreError> {
        let row = self.query_opt(request_query!("WHERE id = $1"), &[&id.to_string()])?;
        row.as_ref().map(request_row).transpose()
    }

    fn request_rows(&mut self, l: &Listing<'_>) -> Result<Vec<RequestRow>, StoreError> {
        let rows = self.query(
            request_query!(
                "WHERE (cardinality($1::text[]) = 0 OR status = ANY($1))
                 AND ($2::text IS NULL OR principal = $2)
                 AND ($3::text IS NULL
                      OR ($5::bool AND principal = $3)
                      OR (principal <> $3 AND EXISTS (
                            SELECT 1 FROM request_groups g
                            WHERE g.request_id = requests.id AND g.group_name = ANY($4::text[]))))
                 AND ($6::timestamptz IS NULL OR created_at < $6
                      OR (created_at = $6 AND id < $7::text))
                 ORDER BY created_at DESC, id DESC LIMIT $8"
            ),
            &[
                &l.statuses,
                &l.principal,
                &l.viewer,
                &l.groups,
                &l.own,
                &l.after.as_ref().map(|(at, _)| *at),
                &l.after.as_ref().map(|(_, id)| id.as_str()),
                &i64::from(l.limit),
            ],
        )?;
        rows.iter().map(request_row).collect()
    }

    fn review_rows(&mut self, id: &RequestId) -> Result<Vec<ReviewRow>, StoreError> {
        let rows = self.query(
            "SELECT reviewer, verdict, reason, channel, at FROM reviews WHERE request_id = $1 ORDER BY at, reviewer",
            &[&id.to_string()],
        )?;
        rows.iter()
            .map(|r| {
                Ok(ReviewRow {
                    reviewer: r.try_get(0)?,
                    verdict: r.try_get(1)?,
                    reason: r.try_get(2)?,
                    channel: r.try_get(3)?,
                    at: r.try_get(4)?,
                })
            })
            .collect()
    }

    fn pending_id(
        &mut self,
        principal: &UserName,
        fp: &Fingerprint,
    ) -> Result<Option<String>, StoreError> {
        let row = self.query_opt(
            "SELECT id FROM requests WHERE principal = $1 AND fingerprint = $2 AND status = 'pending'",
            &[&principal.as_str(), &fp.to_string()],
        )?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    fn expiry_rows(&mut self) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        let rows = self.query(
            "SELECT id, expires_at FROM requests WHERE status = 'pending'
             UNION ALL
             SELECT g.request_id, g.expires_at FROM grants g JOIN requests r ON r.id = g.request_id
             WHERE r.status = 'approved'",
            &[],
        )?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    fn count_status(&mut self, status: RequestStatus) -> Result<i64, StoreError> {
        Ok(self
            .query_one(
                "SELECT COUNT(*) FROM requests WHERE status = $1",
                &[&status.as_str()],
            )?
            .try_get(0)?)
    }

    fn count_pending(&mut self, principal: &UserName) -> Result<i64, StoreError> {
        Ok(self
            .query_one(
                "SELECT COUNT(*) FROM requests WHERE principal = $1 AND status = 'pending'",
                &[&principal.as_str()],
            )?
            .try_get(0)?)
    }

    fn count_requests_since(
        &mut self,
        principal: &UserName,
        since: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        Ok(self
            .query_one(
                "SELECT COUNT(*) FROM requests WHERE principal = $1 AND created_at >= $2",
                &[&principal.as_str(), &since],
            )?
            .try_get(0)?)
    }

    fn insert_request_row(
        &mut self,
        row: &RequestRow,
        principal: &UserName,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO requests (id, status, principal, action_json, fingerprint, requirement_json,
             policies_json, reason, created_at, expires_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $9)",
            &[
                &row.id,
                &row.status,
                &principal.as_str(),
                &row.action_json,
                &row.fingerprint,
                &row.requirement_json,
                &row.policies_json,
                &row.reason,
                &row.created_at,
                &row.expires_at,
            ],
        )?;
        Ok(())
    }

    fn insert_request_group(
        &mut self,
        id: &RequestId,
        group: &GroupName,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO request_groups (request_id, group_name) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
            &[&id.to_string(), &group.as_str()],
        )?;
        Ok(())
    }

    fn update_status(
        &mut self,
        id: &RequestId,
        from: RequestStatus,
        to: RequestStatus,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let n = self.execute(
            "UPDATE requests SET status = $3, updated_at = $4 WHERE id = $1 AND status = $2",
            &[&id.to_string(), &from.as_str(), &to.as_str(), &at],
        )?;
        Ok(n == 1)
    }

    fn update_requirement(
        &mut self,
        id: &RequestId,
        requirement_json: &str,
        policies_json: &str,
    ) -> Result<bool, StoreError> {
        let n = self.execute(
            "UPDATE requests SET requirement_json = $2, policies_json = $3
             WHERE id = $1 AND status = 'pending'",
            &[&id.to_string(), &requirement_json, &policies_json],
        )?;
        Ok(n == 1)
    }

    fn insert_review(&mut self, id: &RequestId, review: &Review) -> Result<bool, StoreError> {
        let n = self.execute(
            "INSERT INTO reviews (request_id, reviewer, verdict, reason, channel, at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            &[
                &id.to_string(),
                &review.reviewer.as_str(),
                &review.verdict.as_str(),
                &review.reason,
                &review.channel,
                &review.at,
            ],
        )?;
        Ok(n == 1)
    }
}

impl GrantRows for Tx<'_> {
    fn grant_row(&mut self, request: &RequestId) -> Result<Option<GrantRecordRow>, StoreError> {
        let row = self.query_opt(
            "SELECT id, expires_at, max_uses, uses, revoked, outcome FROM grants WHERE request_id = $1",
            &[&request.to_string()],
        )?;
        row.map(|r| {
            Ok(GrantRecordRow {
                id: r.try_get(0)?,
                expires_at: r.try_get(1)?,
                max_uses: count(r.try_get(2)?)?,
                uses: count(r.try_get(3)?)?,
                revoked: r.try_get(4)?,
                outcome: r.try_get(5)?,
            })
        })
        .transpose()
    }

    fn grant_binding(&mut self, id: &GrantId) -> Result<Option<GrantBinding>, StoreError> {
        let row = self.query_opt(
            "SELECT request_id, principal, fingerprint, completed FROM grants WHERE id = $1",
            &[&id.to_string()],
        )?;
        row.map(|r| {
            Ok(GrantBinding {
                request_id: r.try_get(0)?,
                principal: r.try_get(1)?,
                fingerprint: r.try_get(2)?,
                completed: r.try_get(3)?,
            })
        })
        .transpose()
    }

    fn spend_use(
        &mut self,
        id: &GrantId,
        now: DateTime<Utc>,
    ) -> Result<Option<(u32, u32)>, StoreError> {
        let spent = self.query_opt(
            "UPDATE grants SET uses = uses + 1
             WHERE id = $1 AND NOT revoked AND NOT completed AND uses < max_uses AND expires_at > $2
             RETURNING uses, max_uses",
            &[&id.to_string(), &now],
        )?;
        spent
            .map(|r| Ok((count(r.try_get(0)?)?, count(r.try_get(1)?)?)))
            .transpose()
    }

    fn grant_state(&mut self, id: &GrantId) -> Result<Option<GrantState>, StoreError> {
        let row = self.query_opt(
            "SELECT revoked, completed, uses, max_uses FROM grants WHERE id = $1",
            &[&id.to_string()],
        )?;
        row.map(|r| {
            Ok(GrantState {
                revoked: r.try_get(0)?,
                completed: r.try_get(1)?,
                uses: i64::from(r.try_get::<_, i32>(2)?),
                max_uses: i64::from(r.try_get::<_, i32>(3)?),
            })
        })
        .transpose()
    }

    fn insert_grant_row(
        &mut self,
        id: &RequestId,
        fp: &Fingerprint,
        grant: &GrantRecord,
        action: &Action,
    ) -> Result<(), StoreError> {
        let max_uses = i32::try_from(grant.max_uses)
            .map_err(|_| StoreError::Db(format!("max_uses {} is too large", grant.max_uses)))?;
        self.execute(
            "INSERT INTO grants (id, request_id, principal, action, resource_type, resource_id,
             fingerprint, expires_at, max_uses) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &grant.grant_id.to_string(),
                &id.to_string(),
                &action.principal.as_str(),
                &action.action.as_str(),
                &action.resource.kind.as_str(),
                &action.resource.id.as_str(),
                &fp.to_string(),
                &grant.expires_at,
                &max_uses,
            ],
        )?;
        Ok(())
    }

    fn complete_grant(&mut self, id: &GrantId, outcome: &str) -> Result<bool, StoreError> {
        let n = self.execute(
            "UPDATE grants SET outcome = $2, completed = (uses >= max_uses)
             WHERE id = $1 AND uses > 0 AND NOT completed",
            &[&id.to_string(), &outcome],
        )?;
        Ok(n == 1)
    }

    fn revoke_grant(&mut self, id: &GrantId) -> Result<(), StoreError> {
        self.execute(
            "UPDATE grants SET revoked = true WHERE id = $1",
            &[&id.to_string()],
        )?;
        Ok(())
    }

    fn granted_before(
        &mut self,
        principal: &UserName,
        action: &str,
        resource_type: &str,
        resource_id: &str,
    ) -> Result<bool, StoreError> {
        Ok(self
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM grants WHERE principal = $1 AND action = $2
                 AND resource_type = $3 AND resource_id = $4)",
                &[&principal.as_str(), &action, &resource_type, &resource_id],
            )?
            .try_get(0)?)
    }
}

fn audit_row(r: &Row) -> Result<AuditRow, StoreError> {
    Ok(AuditRow {
        seq: r.try_get(0)?,
        ts: r.try_get(1)?,
        kind: r.try_get(2)?,
        actor: r.try_get(3)?,
        subject: r.try_get(4)?,
        details: r.try_get(5)?,
        prev_hash: r.try_get(6)?,
        hash: r.try_get(7)?,
    })
}

impl AuditRows for Tx<'_> {
    fn audit_rows_after(&mut self, after: i64, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let rows = self.query(
            "SELECT seq, ts, kind, actor, subject, details, prev_hash, hash FROM audit
             WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&after, &i64::from(limit)],
        )?;
        rows.iter().map(audit_row).collect()
    }

    fn audit_rows_about(&mut self, subject: &str, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let rows = self.query(
            "SELECT seq, ts, kind, actor, subject, details, prev_hash, hash FROM audit
             WHERE subject = $1 ORDER BY seq LIMIT $2",
            &[&subject, &i64::from(limit)],
        )?;
        rows.iter().map(audit_row).collect()
    }

    fn audit_rows_matching(
        &mut self,
        f: &AuditFilter,
        limit: u32,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let none: Option<String> = None;
        let rows = self.query(
            "SELECT seq, ts, kind, actor, subject, details, prev_hash, hash FROM audit
             WHERE ($1::text IS NULL OR actor = $1) AND ($2::text IS NULL OR kind = $2)
               AND ($3::text IS NULL OR request_id = $3) AND $4::text IS NULL
               AND ($5::text IS NULL OR ts >= $5) AND ($6::text IS NULL OR ts < $6)
               AND ($8::text IS NULL OR subject = $8)
             ORDER BY seq DESC LIMIT $7",
            &[
                &f.actor,
                &f.kind,
                &f.request,
                &none,
                &f.since,
                &f.until,
                &i64::from(limit),
                &f.subject,
            ],
        )?;
        rows.iter().map(audit_row).collect()
    }

    fn head_row(&mut self) -> Result<Option<(i64, String)>, StoreError> {
        let row = self.query_opt("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", &[])?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    fn insert_audit_row(
        &mut self,
        record: &AuditRecord,
        request: Option<&str>,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO audit (seq, ts, kind, actor, subject, details, prev_hash, hash, request_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &record.seq,
                &record.ts,
                &record.kind,
                &record.actor,
                &record.subject,
                &record.details.get(),
                &record.prev_hash.to_string(),
                &record.hash.to_string(),
                &request,
            ],
        )?;
        Ok(())
    }

    fn checkpoint_rows(&mut self) -> Result<Vec<CheckpointRow>, StoreError> {
        let rows = self.query(
            "SELECT seq, hash, ts, signature FROM checkpoints ORDER BY seq",
            &[],
        )?;
        rows.iter()
            .map(|r| {
                Ok(CheckpointRow {
                    seq: r.try_get(0)?,
                    hash: r.try_get(1)?,
                    ts: r.try_get(2)?,
                    signature: r.try_get(3)?,
                })
            })
            .collect()
    }

    fn insert_checkpoint(&mut self, cp: &Checkpoint) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO checkpoints (seq, hash, ts, signature) VALUES ($1, $2, $3, $4)
             ON CONFLICT (seq) DO UPDATE SET hash = excluded.hash, ts = excluded.ts, signature = excluded.signature",
            &[&cp.seq, &cp.hash.to_string(), &cp.ts, &cp.signature],
        )?;
        Ok(())
    }
}

fn api_key_row(r: &Row) -> Result<ApiKeyRow, StoreError> {
    Ok(ApiKeyRow {
        id: r.try_get(0)?,
        hash: r.try_get(1)?,
        user: r.try_get(2)?,
        role: r.try_get(3)?,
        created_at: r.try_get(4)?,
        expires_at: r.try_get(5)?,
        revoked_at: r.try_get(6)?,
        last_used_at: r.try_get(7)?,
    })
}

impl KeyRows for Tx<'_> {
    fn api_key_row(&mut self, hash: &str) -> Result<Option<ApiKeyRow>, StoreError> {
        let row = self.query_opt(
            "SELECT id, hash, user_name, role, created_at, expires_at, revoked_at, last_used_at
             FROM api_keys WHERE hash = $1",
            &[&hash],
        )?;
        row.as_ref().map(api_key_row).transpose()
    }

    fn api_key_rows(&mut self) -> Result<Vec<ApiKeyRow>, StoreError> {
        let rows = self.query(
            "SELECT id, hash, user_name, role, created_at, expires_at, revoked_at, last_used_at
             FROM api_keys ORDER BY created_at, id",
            &[],
        )?;
        rows.iter().map(api_key_row).collect()
    }

    fn insert_api_key(&mut self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO api_keys (id, hash, user_name, role, created_at, expires_at, revoked_at, last_used_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &key.id,
                &key.hash,
                &key.user.as_str(),
                &key.role.as_str(),
                &key.created_at,
                &key.expires_at,
                &key.revoked_at,
                &key.last_used_at,
            ],
        )?;
        Ok(())
    }

    fn mark_key_revoked(&mut self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let n = self.execute(
            "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            &[&id, &at],
        )?;
        Ok(n == 1)
    }

    fn key_revoked_at(&mut self, id: &str) -> Result<Option<Option<DateTime<Utc>>>, StoreError> {
        let row = self.query_opt("SELECT revoked_at FROM api_keys WHERE id = $1", &[&id])?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    fn touch_api_keys(&mut self, ids: &[String], at: DateTime<Utc>) -> Result<(), StoreError> {
        self.execute(
            "UPDATE api_keys SET last_used_at = $2
             WHERE id = ANY($1) AND (last_used_at IS NULL OR last_used_at < $2)",
            &[&ids, &at],
        )?;
        Ok(())
    }

    fn signing_key(&mut self, purpose: &str) -> Result<Option<String>, StoreError> {
        let row = self.query_opt(
            "SELECT public_key FROM signing_keys WHERE purpose = $1",
            &[&purpose],
        )?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    fn insert_signing_key(
        &mut self,
        purpose: &str,
        public: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO signing_keys (purpose, public_key, created_at) VALUES ($1, $2, $3)",
            &[&purpose, &public, &at],
        )?;
        Ok(())
    }
}

impl SessionRows for Tx<'_> {
    fn session_row(&mut self, id_hash: &str) -> Result<Option<SessionRow>, StoreError> {
        let row = self.query_opt(
            "SELECT id_hash, user_name, csrf, method, created_at, expires_at FROM sessions WHERE id_hash = $1",
            &[&id_hash],
        )?;
        row.map(|r| {
            Ok(SessionRow {
                id_hash: r.try_get(0)?,
                user: r.try_get(1)?,
                csrf: r.try_get(2)?,
                method: r.try_get(3)?,
                created_at: r.try_get(4)?,
                expires_at: r.try_get(5)?,
            })
        })
        .transpose()
    }

    fn delete_expired_sessions(&mut self, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.execute("DELETE FROM sessions WHERE expires_at <= $1", &[&now])?;
        Ok(())
    }

    fn insert_session_row(&mut self, s: &SessionRecord) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO sessions (id_hash, user_name, csrf, method, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &s.id_hash,
                &s.user.as_str(),
                &s.csrf,
                &s.method,
                &s.created_at,
                &s.expires_at,
            ],
        )?;
        Ok(())
    }

    fn delete_session(&mut self, id_hash: &str) -> Result<bool, StoreError> {
        Ok(self.execute("DELETE FROM sessions WHERE id_hash = $1", &[&id_hash])? == 1)
    }

    fn password_hash(&mut self, user: &UserName) -> Result<Option<String>, StoreError> {
        let row = self.query_opt(
            "SELECT hash FROM passwords WHERE user_name = $1",
            &[&user.as_str()],
        )?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    fn set_password_hash(
        &mut self,
        user: &UserName,
        hash: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO passwords (user_name, hash, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (user_name) DO UPDATE SET hash = excluded.hash, updated_at = excluded.updated_at",
            &[&user.as_str(), &hash, &at],
        )?;
        Ok(())
    }

    fn synced_group_rows(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self.query(
            "SELECT user_name, groups_json FROM synced_groups ORDER BY user_name",
            &[],
        )?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    fn upsert_synced_groups(
        &mut self,
        user: &UserName,
        groups_json: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO synced_groups (user_name, groups_json, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (user_name) DO UPDATE SET groups_json = excluded.groups_json, updated_at = excluded.updated_at",
            &[&user.as_str(), &groups_json, &at],
        )?;
        Ok(())
    }
}

fn outbox_from_row(r: &Row) -> Result<OutboxMessage, StoreError> {
    Ok(OutboxMessage {
        id: r.try_get(0)?,
        target: r.try_get(1)?,
        event: r.try_get(2)?,
        payload: r.try_get(3)?,
        status: r.try_get(4)?,
        attempts: count(r.try_get(5)?)?,
        last_error: r.try_get(6)?,
        next_attempt_at: r.try_get(7)?,
        created_at: r.try_get(8)?,
        delivered_at: r.try_get(9)?,
    })
}

impl OutboxRows for Tx<'_> {
    fn outbox_list(
        &mut self,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let rows = self.query(
            "SELECT id, target, event, payload, status, attempts, last_error, next_attempt_at, created_at, delivered_at
             FROM outbox WHERE ($1::text IS NULL OR status = $1)
             ORDER BY created_at DESC, id DESC LIMIT $2",
            &[&status, &i64::from(limit)],
        )?;
        rows.iter().map(outbox_from_row).collect()
    }

    fn enqueue(&mut self, m: &OutboxMessage) -> Result<(), StoreError> {
        let attempts = i32::try_from(m.attempts).unwrap_or(i32::MAX);
        self.execute(
            "INSERT INTO outbox (id, target, event, payload, status, attempts, last_error, next_attempt_at, created_at, delivered_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &m.id,
                &m.target,
                &m.event,
                &m.payload,
                &m.status,
                &attempts,
                &m.last_error,
                &m.next_attempt_at,
                &m.created_at,
                &m.delivered_at,
            ],
        )?;
        Ok(())
    }

    fn lease_due(
        &mut self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
        claim: &str,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        // The batch holds the write lock: no other node claims meanwhile.
        let rows = self.query(
            "UPDATE outbox SET next_attempt_at = $2, claim = $4 WHERE id IN (
                 SELECT id FROM outbox WHERE status = 'pending' AND next_attempt_at <= $1
                 ORDER BY created_at, id LIMIT $3)
             RETURNING id, target, event, payload, status, attempts, last_error, next_attempt_at, created_at, delivered_at",
            &[&now, &lease_until, &i64::from(limit), &claim],
        )?;
        rows.iter().map(outbox_from_row).collect()
    }

    fn outbox_delivered(
        &mut self,
        id: &str,
        at: DateTime<Utc>,
        claim: &str,
    ) -> Result<bool, StoreError> {
        Ok(self.execute(
            "UPDATE outbox SET status = 'delivered', delivered_at = $2, attempts = attempts + 1,
             last_error = NULL WHERE id = $1 AND claim = $3",
            &[&id, &at, &claim],
        )? == 1)
    }

    fn outbox_attempt_failed(
        &mut self,
        id: &str,
        error: &str,
        next: DateTime<Utc>,
        give_up: bool,
        claim: &str,
    ) -> Result<bool, StoreError> {
        Ok(self.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3,
             status = CASE WHEN $4 THEN 'failed' ELSE status END WHERE id = $1 AND claim = $5",
            &[&id, &error, &next, &give_up, &claim],
        )? == 1)
    }

    fn outbox_retry(&mut self, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        Ok(self.execute(
            "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = $2, claim = NULL
             WHERE id = $1 AND status = 'failed'",
            &[&id, &now],
        )? == 1)
    }
}

impl ChatRows for Tx<'_> {
    fn chat_messages(
        &mut self,
        request: &RequestId,
        provider: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self.query(
            "SELECT channel, ts FROM chat_messages WHERE request_id = $1 AND provider = $2 ORDER BY channel",
            &[&request.to_string(), &provider],
        )?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    fn save_chat_message(
        &mut self,
        request: &RequestId,
        provider: &str,
        channel: &str,
        ts: &str,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO chat_messages (request_id, provider, channel, ts) VALUES ($1, $2, $3, $4)
             ON CONFLICT (request_id, provider, channel) DO UPDATE SET ts = excluded.ts",
            &[&request.to_string(), &provider, &channel, &ts],
        )?;
        Ok(())
    }

    fn first_seen(
        &mut self,
        source: &str,
        id: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        Ok(self.execute(
            "INSERT INTO interactions_seen (source, id, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&source, &id, &at],
        )? == 1)
    }
}
