//! The embedded SQLite backend: one writer thread that batches jobs into
//! group-committed transactions, and a small pool of reader connections.

mod schema;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_core::request::GrantRecord;
use airlock_core::{
    Action, AuditRecord, ChainHash, Fingerprint, GrantId, GroupName, NewAuditRecord, RecordedJson,
    Request, RequestId, RequestStatus, Review, UserName, Verdict,
};
use airlock_keys::Checkpoint;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::batch::{self, fail_all, Announced, BatchConn};
use crate::model::{
    ApiKeyRecord, AuditFilter, ConsumeOutcome, GrantRow, KeyRevocation, OutboxMessage, Role,
    SessionRecord, StatusFilter,
};
use crate::time::{fmt, parse};
use crate::{Backend, EventSender, Job, ReadJob, ReadTx, StoreError, StoreEvent, WriteTx};

/// How long a writer waits for another process's lock before failing the
/// batch: callers get an error in well under a second, never a hang.
const BUSY_TIMEOUT: Duration = Duration::from_millis(500);

/// SQLite in one file, with WAL and full fsync on commit.
pub struct SqliteBackend {
    jobs: batch::Queue,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: PathBuf,
}

fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
    )?;
    Ok(conn)
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
        let mut writer = open_conn(path)?;
        schema::migrate(&mut writer)?;
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("airlock-sqlite-writer".into())
            .spawn(move || writer_loop(writer, rx, events))
            .map_err(|e| StoreError::Db(format!("cannot start writer: {e}")))?;
        Ok(Self {
            jobs: batch::Queue::new(tx),
            readers: Arc::new(Mutex::new(Vec::new())),
            path: path.to_owned(),
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
        let mut q = Tx {
            conn: &tx,
            head: None,
            events: None,
        };
        f(&mut q)
    }
}

impl Backend for SqliteBackend {
    fn submit(&self, job: Job) -> Result<(), StoreError> {
        self.jobs.submit(job)
    }

    fn read(&self, job: ReadJob) -> Result<(), StoreError> {
        let pool = self.readers.clone();
        let path = self.path.clone();
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Db("read outside a runtime".into()))?;
        handle.spawn_blocking(move || {
            let conn = pool.lock().ok().and_then(|mut p| p.pop());
            let mut conn = match conn {
                Some(c) => c,
                None => match open_conn(&path) {
                    Ok(c) => c,
                    Err(e) => return job(Err(e)),
                },
            };
            match conn.transaction() {
                Ok(tx) => {
                    let mut q = Tx {
                        conn: &tx,
                        head: None,
                        events: None,
                    };
                    job(Ok(&mut q));
                    drop(tx);
                }
                Err(e) => job(Err(e.into())),
            }
            if let Ok(mut p) = pool.lock() {
                if p.len() < 8 {
                    p.push(conn);
                }
            }
        });
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }
}

fn writer_loop(mut conn: Connection, rx: Receiver<Job>, events: EventSender) {
    while let Some(batch) = batch::next_batch(&rx) {
        // IMMEDIATE takes the write lock now, so the audit head read by the
        // first append cannot be overtaken by another process.
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let e = StoreError::from(e);
            tracing::error!(error = %e, "cannot begin storage transaction");
            fail_all(batch, &e);
            continue;
        }
        let done = batch::run(&mut conn, batch);
        for id in done.requests {
            let _ = events.send(StoreEvent::Changed { id, remote: false });
        }
        if done.directory {
            let _ = events.send(StoreEvent::DirectoryChanged);
        }
    }
}

impl BatchConn for Connection {
    fn exec(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(self.execute_batch(sql)?)
    }

    fn with_tx<R>(
        &mut self,
        head: &mut Option<(i64, ChainHash)>,
        changed: &mut Announced,
        f: impl FnOnce(&mut dyn WriteTx) -> R,
    ) -> R {
        f(&mut Tx {
            conn: self,
            head: Some(head),
            events: Some(changed),
        })
    }
}

/// Queries over one connection inside a transaction.
struct Tx<'a> {
    conn: &'a Connection,
    /// The chain head as of this batch's last append, so appends after the
    /// first in a batch skip the read. `None` means "read it".
    head: Option<&'a mut Option<(i64, ChainHash)>>,
    /// What this batch changed, announced after it commits.
    events: Option<&'a mut Announced>,
}

const OUTBOX_COLS: &str = "id, target, event, payload, status, attempts, last_error, next_attempt_at, created_at, delivered_at";

fn outbox_from_row(r: &Row<'_>) -> Result<OutboxMessage, StoreError> {
    let delivered: Option<String> = r.get(9)?;
    Ok(OutboxMessage {
        id: r.get(0)?,
        target: r.get(1)?,
        event: r.get(2)?,
        payload: r.get(3)?,
        status: r.get(4)?,
        attempts: r.get(5)?,
        last_error: r.get(6)?,
        next_attempt_at: parse(&r.get::<_, String>(7)?)?,
        created_at: parse(&r.get::<_, String>(8)?)?,
        delivered_at: delivered.as_deref().map(parse).transpose()?,
    })
}

const API_KEY_COLS: &str =
    "id, hash, user_name, role, created_at, expires_at, revoked_at, last_used_at";

fn api_key_from_row(r: &Row<'_>) -> Result<ApiKeyRecord, StoreError> {
    let user: String = r.get(2)?;
    let role: String = r.get(3)?;
    let time = |i: usize| -> Result<Option<DateTime<Utc>>, StoreError> {
        r.get::<_, Option<String>>(i)?
            .as_deref()
            .map(parse)
            .transpose()
    };
    Ok(ApiKeyRecord {
        id: r.get(0)?,
        hash: r.get(1)?,
        user: UserName::parse(&user).map_err(corrupt)?,
        role: Role::parse(&role).ok_or_else(|| corrupt(format!("role {role:?}")))?,
        created_at: parse(&r.get::<_, String>(4)?)?,
        expires_at: time(5)?,
        revoked_at: time(6)?,
        last_used_at: time(7)?,
    })
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

const REQUEST_COLS: &str = "id, status, action_json, fingerprint, requirement_json, policies_json, reason, created_at, expires_at";

impl Tx<'_> {
    fn request_from_row(&self, row: &Row<'_>) -> Result<Request, StoreError> {
        let id: String = row.get(0)?;
        let status: String = row.get(1)?;
        let action: String = row.get(2)?;
        let fp: String = row.get(3)?;
        let requirement: String = row.get(4)?;
        let policies: String = row.get(5)?;
        let created: String = row.get(7)?;
        let expires: String = row.get(8)?;
        let id = RequestId::parse(&id).map_err(corrupt)?;
        let action = Action::from_stored_json(&action)?;
        Ok(Request {
            id,
            status: RequestStatus::parse(&status).map_err(corrupt)?,
            fingerprint: Fingerprint::parse(&fp).map_err(corrupt)?,
            requirement: serde_json::from_str(&requirement)?,
            policies: serde_json::from_str(&policies)?,
            reason: row.get(6)?,
            created_at: parse(&created)?,
            expires_at: parse(&expires)?,
            reviews: self.reviews(&id)?,
            grant: self.grant_of(&id)?,
            action,
        })
    }

    fn reviews(&self, id: &RequestId) -> Result<Vec<Review>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT reviewer, verdict, reason, channel, at FROM reviews WHERE request_id = ?1 ORDER BY at, reviewer",
        )?;
        let rows = st.query_map([id.to_string()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (reviewer, verdict, reason, channel, at) = row?;
            out.push(Review {
                reviewer: UserName::parse(&reviewer).map_err(corrupt)?,
                verdict: Verdict::parse(&verdict).map_err(corrupt)?,
                reason,
                channel,
                at: parse(&at)?,
            });
        }
        Ok(out)
    }

    fn grant_of(&self, id: &RequestId) -> Result<Option<GrantRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, expires_at, max_uses, uses, revoked, outcome FROM grants WHERE request_id = ?1",
        )?;
        let row = st
            .query_row([id.to_string()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, u32>(3)?,
                    r.get::<_, bool>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            })
            .optional()?;
        row.map(|(gid, exp, max_uses, uses, revoked, outcome)| {
            Ok(GrantRecord {
                grant_id: GrantId::parse(&gid).map_err(corrupt)?,
                expires_at: parse(&exp)?,
                max_uses,
                uses,
                revoked,
                outcome,
            })
        })
        .transpose()
    }

    fn audit_from_row(row: &Row<'_>) -> Result<AuditRecord, StoreError> {
        let details: String = row.get(5)?;
        let prev: String = row.get(6)?;
        let hash: String = row.get(7)?;
        Ok(AuditRecord {
            seq: row.get(0)?,
            ts: row.get(1)?,
            kind: row.get(2)?,
            actor: row.get(3)?,
            subject: row.get(4)?,
            details: RecordedJson::from_stored(details).map_err(corrupt)?,
            prev_hash: ChainHash::parse(&prev).map_err(corrupt)?,
            hash: ChainHash::parse(&hash).map_err(corrupt)?,
        })
    }
}

impl ReadTx for Tx<'_> {
    fn get_request(&mut self, id: &RequestId) -> Result<Option<Request>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {REQUEST_COLS} FROM requests WHERE id = ?1"
        ))?;
        let mut rows = st.query([id.to_string()])?;
        match rows.next()? {
            Some(row) => Ok(Some(self.request_from_row(row)?)),
            None => Ok(None),
        }
    }

    fn list_requests(
        &mut self,
        filter: &StatusFilter,
        limit: u32,
    ) -> Result<Vec<Request>, StoreError> {
        let statuses: Vec<&str> = filter.statuses.iter().map(|s| s.as_str()).collect();
        let statuses_json = serde_json::to_string(&statuses)?;
        let viewer = filter.visible_to.as_ref();
        let groups: Vec<&str> = viewer
            .map(|v| v.groups.iter().map(|g| g.as_str()).collect())
            .unwrap_or_default();
        let groups_json = serde_json::to_string(&groups)?;
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {REQUEST_COLS} FROM requests
             WHERE (?1 = '[]' OR status IN (SELECT value FROM json_each(?1)))
               AND (?2 IS NULL OR principal = ?2)
               AND (?3 IS NULL
                    OR (?5 AND principal = ?3)
                    OR (principal <> ?3 AND EXISTS (
                          SELECT 1 FROM request_groups g
                          WHERE g.request_id = requests.id
                            AND g.group_name IN (SELECT value FROM json_each(?4)))))
               AND (?6 IS NULL OR created_at < ?6 OR (created_at = ?6 AND id < ?7))
             ORDER BY created_at DESC, id DESC LIMIT ?8"
        ))?;
        let mut rows = st.query(params![
            statuses_json,
            filter.principal.as_ref().map(|p| p.as_str()),
            viewer.map(|v| v.user.as_str()),
            groups_json,
            viewer.is_some_and(|v| v.own),
            filter.after.map(|c| fmt(c.created_at)),
            filter.after.map(|c| c.id.to_string()),
            limit
        ])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(self.request_from_row(row)?);
        }
        Ok(out)
    }

    fn find_pending(
        &mut self,
        principal: &UserName,
        fp: &Fingerprint,
    ) -> Result<Option<RequestId>, StoreError> {
        let id: Option<String> = self
            .conn
            .prepare_cached(
                "SELECT id FROM requests WHERE principal = ?1 AND fingerprint = ?2 AND status = 'pending'",
            )?
            .query_row([principal.as_str(), &fp.to_string()], |r| r.get(0))
            .optional()?;
        id.map(|s| RequestId::parse(&s).map_err(corrupt))
            .transpose()
    }

    fn pending_expiries(&mut self) -> Result<Vec<(RequestId, DateTime<Utc>)>, StoreError> {
        // Pending requests expire at their own TTL; approved ones when their
        // grant does.
        let mut st = self.conn.prepare_cached(
            "SELECT id, expires_at FROM requests WHERE status = 'pending'
             UNION ALL
             SELECT g.request_id, g.expires_at FROM grants g JOIN requests r ON r.id = g.request_id
             WHERE r.status = 'approved'",
        )?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at) = row?;
            out.push((RequestId::parse(&id).map_err(corrupt)?, parse(&at)?));
        }
        Ok(out)
    }

    fn get_grant(&mut self, id: &GrantId) -> Result<Option<GrantRow>, StoreError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT request_id, principal, fingerprint, completed FROM grants WHERE id = ?1",
            )?
            .query_row([id.to_string()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, bool>(3)?,
                ))
            })
            .optional()?;
        let Some((rid, principal, fp, completed)) = row else {
            return Ok(None);
        };
        let request_id = RequestId::parse(&rid).map_err(corrupt)?;
        let grant = self
            .grant_of(&request_id)?
            .ok_or_else(|| StoreError::Corrupt("grant vanished".into()))?;
        Ok(Some(GrantRow {
            grant,
            request_id,
            principal: UserName::parse(&principal).map_err(corrupt)?,
            fingerprint: Fingerprint::parse(&fp).map_err(corrupt)?,
            completed,
        }))
    }

    fn audit_after(&mut self, after: i64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT seq, ts, kind, actor, subject, details, prev_hash, hash FROM audit
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let mut rows = st.query(params![after, limit])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(Self::audit_from_row(row)?);
        }
        Ok(out)
    }

    fn audit_about(&mut self, subject: &str, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT seq, ts, kind, actor, subject, details, prev_hash, hash FROM audit
             WHERE subject = ?1 ORDER BY seq LIMIT ?2",
        )?;
        let mut rows = st.query(params![subject, limit])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(Self::audit_from_row(row)?);
        }
        Ok(out)
    }

    fn audit_search(
        &mut self,
        f: &AuditFilter,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT seq, ts, kind, actor, subject, details, prev_hash, hash FROM audit
             WHERE (?1 IS NULL OR actor = ?1) AND (?2 IS NULL OR kind = ?2)
               AND (?3 IS NULL OR request_id = ?3) AND ?4 IS NULL
               AND (?5 IS NULL OR ts >= ?5) AND (?6 IS NULL OR ts < ?6)
               AND (?8 IS NULL OR subject = ?8)
             ORDER BY seq DESC LIMIT ?7",
        )?;
        let mut rows = st.query(params![
            f.actor,
            f.kind,
            f.request,
            None::<String>,
            f.since,
            f.until,
            limit,
            f.subject
        ])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(Self::audit_from_row(row)?);
        }
        Ok(out)
    }

    fn checkpoints(&mut self) -> Result<Vec<Checkpoint>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT seq, hash, ts, signature FROM checkpoints ORDER BY seq")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, hash, ts, signature) = row?;
            out.push(Checkpoint {
                seq,
                hash: ChainHash::parse(&hash).map_err(corrupt)?,
                ts,
                signature,
            });
        }
        Ok(out)
    }

    fn audit_head(&mut self) -> Result<(i64, ChainHash), StoreError> {
        let row = self
            .conn
            .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?
            .query_row([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .optional()?;
        match row {
            None => Ok((0, ChainHash::GENESIS)),
            Some((seq, hash)) => Ok((seq, ChainHash::parse(&hash).map_err(corrupt)?)),
        }
    }

    fn api_key_by_hash(&mut self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {API_KEY_COLS} FROM api_keys WHERE hash = ?1"
        ))?;
        let mut rows = st.query([hash])?;
        rows.next()?.map(api_key_from_row).transpose()
    }

    fn list_api_keys(&mut self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {API_KEY_COLS} FROM api_keys ORDER BY created_at, id"
        ))?;
        let mut rows = st.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(api_key_from_row(row)?);
        }
        Ok(out)
    }

    fn session(&mut self, id_hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT id_hash, user_name, csrf, method, created_at, expires_at FROM sessions WHERE id_hash = ?1",
            )?
            .query_row([id_hash], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })
            .optional()?;
        row.map(|(id_hash, user, csrf, method, created, expires)| {
            Ok(SessionRecord {
                id_hash,
                user: UserName::parse(&user).map_err(corrupt)?,
                csrf,
                method,
                created_at: parse(&created)?,
                expires_at: parse(&expires)?,
            })
        })
        .transpose()
    }

    fn synced_groups(&mut self) -> Result<Vec<(UserName, Vec<GroupName>)>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT user_name, groups_json FROM synced_groups ORDER BY user_name",
        )?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (user, groups) = row?;
            out.push((
                UserName::parse(&user).map_err(corrupt)?,
                serde_json::from_str(&groups)?,
            ));
        }
        Ok(out)
    }

    fn outbox_list(
        &mut self,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {OUTBOX_COLS} FROM outbox WHERE (?1 IS NULL OR status = ?1)
             ORDER BY created_at DESC, id DESC LIMIT ?2"
        ))?;
        let mut rows = st.query(params![status, limit])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(outbox_from_row(row)?);
        }
        Ok(out)
    }

    fn chat_messages(
        &mut self,
        request: &RequestId,
        provider: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT channel, ts FROM chat_messages WHERE request_id = ?1 AND provider = ?2 ORDER BY channel",
        )?;
        let rows = st.query_map(params![request.to_string(), provider], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn password_hash(&mut self, user: &UserName) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT hash FROM passwords WHERE user_name = ?1")?
            .query_row([user.as_str()], |r| r.get(0))
            .optional()?)
    }

    fn count_status(&mut self, status: RequestStatus) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM requests WHERE status = ?1")?
            .query_row([status.as_str()], |r| r.get(0))?)
    }

    fn count_pending(&mut self, principal: &UserName) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM requests WHERE principal = ?1 AND status = 'pending'",
            )?
            .query_row([principal.as_str()], |r| r.get(0))?)
    }

    fn count_requests_since(
        &mut self,
        principal: &UserName,
        since: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM requests WHERE principal = ?1 AND created_at >= ?2",
            )?
            .query_row(params![principal.as_str(), fmt(since)], |r| r.get(0))?)
    }

    fn signing_key(&mut self, purpose: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT public_key FROM signing_keys WHERE purpose = ?1")?
            .query_row([purpose], |r| r.get(0))
            .optional()?)
    }

    fn granted_before(
        &mut self,
        principal: &UserName,
        action: &str,
        resource_type: &str,
        resource_id: &str,
    ) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM grants WHERE principal = ?1 AND action = ?2
                 AND resource_type = ?3 AND resource_id = ?4)",
            )?
            .query_row(
                params![principal.as_str(), action, resource_type, resource_id],
                |r| r.get(0),
            )?)
    }
}

impl WriteTx for Tx<'_> {
    fn append_audit(
        &mut self,
        rec: NewAuditRecord,
        ts: DateTime<Utc>,
    ) -> Result<AuditRecord, StoreError> {
        // Read inside the write transaction: the lock is held, so no other
        // process (the CLI creating a key) can append between read and write.
        let (seq, prev) = match self.head.as_deref() {
            Some(Some(h)) => *h,
            _ => self.audit_head()?,
        };
        let request = rec.request_id().map(str::to_owned);
        let record = AuditRecord::link(seq, prev, fmt(ts), rec);
        self.conn
            .prepare_cached(
                "INSERT INTO audit (seq, ts, kind, actor, subject, details, prev_hash, hash, request_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                record.seq,
                record.ts,
                record.kind,
                record.actor,
                record.subject,
                record.details.get(),
                record.prev_hash.to_string(),
                record.hash.to_string(),
                request,
            ])?;
        if let Some(h) = self.head.as_deref_mut() {
            *h = Some((record.seq, record.hash));
        }
        Ok(record)
    }

    fn insert_request(&mut self, req: &Request) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO requests (id, status, principal, action_json, fingerprint, requirement_json,
                 policies_json, reason, created_at, expires_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?9)",
            )?
            .execute(params![
                req.id.to_string(),
                req.status.as_str(),
                req.action.principal.as_str(),
                serde_json::to_string(&req.action)?,
                req.fingerprint.to_string(),
                serde_json::to_string(&req.requirement)?,
                serde_json::to_string(&req.policies)?,
                req.reason,
                fmt(req.created_at),
                fmt(req.expires_at),
            ])?;
        let mut st = self.conn.prepare_cached(
            "INSERT OR IGNORE INTO request_groups (request_id, group_name) VALUES (?1, ?2)",
        )?;
        for t in &req.requirement.thresholds {
            for g in &t.groups {
                st.execute(params![req.id.to_string(), g.as_str()])?;
            }
        }
        Ok(())
    }

    fn set_status(
        &mut self,
        id: &RequestId,
        from: RequestStatus,
        to: RequestStatus,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        if !from.can_become(to) {
            return Ok(false);
        }
        let n = self
            .conn
            .prepare_cached(
                "UPDATE requests SET status = ?3, updated_at = ?4 WHERE id = ?1 AND status = ?2",
            )?
            .execute(params![id.to_string(), from.as_str(), to.as_str(), fmt(at)])?;
        Ok(n == 1)
    }

    fn raise_requirement(
        &mut self,
        id: &RequestId,
        requirement: &airlock_core::Requirement,
        policies: &[String],
    ) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE requests SET requirement_json = ?2, policies_json = ?3
                 WHERE id = ?1 AND status = 'pending'",
            )?
            .execute(params![
                id.to_string(),
                serde_json::to_string(requirement)?,
                serde_json::to_string(policies)?,
            ])?;
        // The groups now asked may see it in their lists.
        let mut st = self.conn.prepare_cached(
            "INSERT OR IGNORE INTO request_groups (request_id, group_name) VALUES (?1, ?2)",
        )?;
        for t in &requirement.thresholds {
            for g in &t.groups {
                st.execute(params![id.to_string(), g.as_str()])?;
            }
        }
        Ok(n == 1)
    }

    fn insert_review(&mut self, id: &RequestId, review: &Review) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "INSERT OR IGNORE INTO reviews (request_id, reviewer, verdict, reason, channel, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                id.to_string(),
                review.reviewer.as_str(),
                review.verdict.as_str(),
                review.reason,
                review.channel,
                fmt(review.at),
            ])?;
        Ok(n == 1)
    }

    fn insert_grant(
        &mut self,
        id: &RequestId,
        fp: &Fingerprint,
        grant: &GrantRecord,
    ) -> Result<(), StoreError> {
        let req = self
            .get_request(id)?
            .ok_or_else(|| StoreError::Db(format!("no request {id}")))?;
        self.conn
            .prepare_cached(
                "INSERT INTO grants (id, request_id, principal, action, resource_type, resource_id,
                 fingerprint, expires_at, max_uses) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                grant.grant_id.to_string(),
                id.to_string(),
                req.action.principal.as_str(),
                req.action.action.as_str(),
                req.action.resource.kind.as_str(),
                req.action.resource.id.as_str(),
                fp.to_string(),
                fmt(grant.expires_at),
                grant.max_uses,
            ])?;
        Ok(())
    }

    fn consume_grant(
        &mut self,
        id: &GrantId,
        now: DateTime<Utc>,
    ) -> Result<ConsumeOutcome, StoreError> {
        let spent: Option<(u32, u32)> = self
            .conn
            .prepare_cached(
                "UPDATE grants SET uses = uses + 1
                 WHERE id = ?1 AND revoked = 0 AND completed = 0 AND uses < max_uses AND expires_at > ?2
                 RETURNING uses, max_uses",
            )?
            .query_row(params![id.to_string(), fmt(now)], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((uses, max)) = spent {
            return Ok(ConsumeOutcome::Consumed {
                uses_left: max.saturating_sub(uses),
            });
        }
        // Nothing spent: say why, from the same transaction's view.
        let row: Option<(bool, bool, u32, u32, String)> = self
            .conn
            .prepare_cached(
                "SELECT revoked, completed, uses, max_uses, expires_at FROM grants WHERE id = ?1",
            )?
            .query_row([id.to_string()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        Ok(match row {
            None => ConsumeOutcome::Unknown,
            Some((true, ..)) => ConsumeOutcome::Revoked,
            Some((_, completed, uses, max, _)) if completed || uses >= max => ConsumeOutcome::Spent,
            Some(_) => ConsumeOutcome::Expired,
        })
    }

    fn complete_grant(&mut self, id: &GrantId, outcome: &str) -> Result<bool, StoreError> {
        // The grant closes when its last use reports; earlier uses of a
        // multi-use grant only record their outcome.
        let n = self
            .conn
            .prepare_cached(
                "UPDATE grants SET outcome = ?2, completed = CASE WHEN uses >= max_uses THEN 1 ELSE 0 END
                 WHERE id = ?1 AND uses > 0 AND completed = 0",
            )?
            .execute(params![id.to_string(), outcome])?;
        Ok(n == 1)
    }

    fn revoke_grant(&mut self, id: &GrantId) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE grants SET revoked = 1 WHERE id = ?1")?
            .execute([id.to_string()])?;
        Ok(())
    }

    fn insert_api_key(&mut self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO api_keys (id, hash, user_name, role, created_at, expires_at, revoked_at, last_used_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                key.id,
                key.hash,
                key.user.as_str(),
                key.role.as_str(),
                fmt(key.created_at),
                key.expires_at.map(fmt),
                key.revoked_at.map(fmt),
                key.last_used_at.map(fmt),
            ])?;
        Ok(())
    }

    fn revoke_api_key(&mut self, id: &str, at: DateTime<Utc>) -> Result<KeyRevocation, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            )?
            .execute(params![id, fmt(at)])?;
        if n == 1 {
            return Ok(KeyRevocation::Revoked);
        }
        let before: Option<Option<String>> = self
            .conn
            .prepare_cached("SELECT revoked_at FROM api_keys WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?;
        match before {
            None => Ok(KeyRevocation::Unknown),
            Some(Some(t)) => Ok(KeyRevocation::AlreadyRevoked(parse(&t)?)),
            Some(None) => Err(StoreError::Corrupt(format!(
                "key {id} is neither revoked nor revocable"
            ))),
        }
    }

    fn touch_api_keys(&mut self, ids: &[String], at: DateTime<Utc>) -> Result<(), StoreError> {
        let mut st = self.conn.prepare_cached(
            "UPDATE api_keys SET last_used_at = ?2
             WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
        )?;
        let at = fmt(at);
        for id in ids {
            st.execute(params![id, at])?;
        }
        Ok(())
    }

    fn set_password_hash(
        &mut self,
        user: &UserName,
        hash: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO passwords (user_name, hash, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_name) DO UPDATE SET hash = excluded.hash, updated_at = excluded.updated_at",
            )?
            .execute(params![user.as_str(), hash, fmt(at)])?;
        Ok(())
    }

    fn insert_checkpoint(&mut self, cp: &Checkpoint) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO checkpoints (seq, hash, ts, signature) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![cp.seq, cp.hash.to_string(), cp.ts, cp.signature])?;
        Ok(())
    }

    fn insert_session(&mut self, s: &SessionRecord, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM sessions WHERE expires_at <= ?1")?
            .execute([fmt(now)])?;
        self.conn
            .prepare_cached(
                "INSERT INTO sessions (id_hash, user_name, csrf, method, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                s.id_hash,
                s.user.as_str(),
                s.csrf,
                s.method,
                fmt(s.created_at),
                fmt(s.expires_at)
            ])?;
        Ok(())
    }

    fn set_synced_groups(
        &mut self,
        user: &UserName,
        groups: &[GroupName],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO synced_groups (user_name, groups_json, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_name) DO UPDATE SET groups_json = excluded.groups_json, updated_at = excluded.updated_at",
            )?
            .execute(params![user.as_str(), serde_json::to_string(groups)?, fmt(at)])?;
        Ok(())
    }

    fn directory_changed(&mut self) {
        if let Some(ev) = self.events.as_deref_mut() {
            ev.directory = true;
        }
    }

    fn save_chat_message(
        &mut self,
        request: &RequestId,
        provider: &str,
        channel: &str,
        ts: &str,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO chat_messages (request_id, provider, channel, ts) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (request_id, provider, channel) DO UPDATE SET ts = excluded.ts",
            )?
            .execute(params![request.to_string(), provider, channel, ts])?;
        Ok(())
    }

    fn first_seen(
        &mut self,
        source: &str,
        id: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "INSERT INTO interactions_seen (source, id, at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            )?
            .execute(params![source, id, fmt(at)])?
            == 1)
    }

    fn enqueue(&mut self, m: &OutboxMessage) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(&format!(
                "INSERT INTO outbox ({OUTBOX_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ))?
            .execute(params![
                m.id,
                m.target,
                m.event,
                m.payload,
                m.status,
                m.attempts,
                m.last_error,
                fmt(m.next_attempt_at),
                fmt(m.created_at),
                m.delivered_at.map(fmt),
            ])?;
        Ok(())
    }

    fn claim_outbox(
        &mut self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
        claim: &str,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {OUTBOX_COLS} FROM outbox WHERE status = 'pending' AND next_attempt_at <= ?1
             ORDER BY created_at, id LIMIT ?2"
        ))?;
        let mut rows = st.query(params![fmt(now), limit])?;
        let mut due = Vec::new();
        while let Some(row) = rows.next()? {
            due.push(outbox_from_row(row)?);
        }
        drop(rows);
        for m in &mut due {
            self.conn
                .prepare_cached("UPDATE outbox SET next_attempt_at = ?2, claim = ?3 WHERE id = ?1")?
                .execute(params![m.id, fmt(lease_until), claim])?;
            m.next_attempt_at = lease_until;
        }
        Ok(due)
    }

    fn outbox_delivered(
        &mut self,
        id: &str,
        at: DateTime<Utc>,
        claim: &str,
    ) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE outbox SET status = 'delivered', delivered_at = ?2, attempts = attempts + 1,
                 last_error = NULL WHERE id = ?1 AND claim = ?3",
            )?
            .execute(params![id, fmt(at), claim])?
            == 1)
    }

    fn outbox_attempt_failed(
        &mut self,
        id: &str,
        error: &str,
        next: DateTime<Utc>,
        give_up: bool,
        claim: &str,
    ) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, next_attempt_at = ?3,
                 status = CASE WHEN ?4 THEN 'failed' ELSE status END WHERE id = ?1 AND claim = ?5",
            )?
            .execute(params![id, error, fmt(next), give_up, claim])?
            == 1)
    }

    fn outbox_retry(&mut self, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = ?2, claim = NULL
                 WHERE id = ?1 AND status = 'failed'",
            )?
            .execute(params![id, fmt(now)])?
            == 1)
    }

    fn delete_session(&mut self, id_hash: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM sessions WHERE id_hash = ?1")?
            .execute([id_hash])?
            == 1)
    }

    fn insert_signing_key(
        &mut self,
        purpose: &str,
        public: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO signing_keys (purpose, public_key, created_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![purpose, public, fmt(at)])?;
        Ok(())
    }

    fn changed(&mut self, id: RequestId) {
        if let Some(ev) = self.events.as_deref_mut() {
            ev.requests.push(id);
        }
    }
}
