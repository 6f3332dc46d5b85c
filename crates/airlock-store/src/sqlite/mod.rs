//! The embedded SQLite backend: one writer thread that batches jobs into
//! group-committed transactions, and a small pool of reader connections.

mod schema;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_core::request::GrantRecord;
use airlock_core::{
    Action, AuditRecord, Fingerprint, GrantId, GroupName, RequestId, RequestStatus, Review,
    UserName,
};
use airlock_keys::Checkpoint;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::batch::{self, fail_all, BatchConn, Effects};
use crate::logic::{
    ApiKeyRow, AuditRow, AuditRows, ChatRows, CheckpointRow, GrantBinding, GrantRecordRow,
    GrantRows, GrantState, KeyRows, Listing, OutboxRows, RequestRow, RequestRows, ReviewRow, Rows,
    SessionRow, SessionRows,
};
use crate::model::{ApiKeyRecord, AuditFilter, OutboxMessage, SessionRecord};
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
        f(&mut Tx {
            conn: &tx,
            effects: None,
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
                    job(Ok(&mut Tx {
                        conn: &tx,
                        effects: None,
                    }));
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

    fn with_tx<R>(&mut self, effects: &mut Effects, f: impl FnOnce(&mut dyn WriteTx) -> R) -> R {
        f(&mut Tx {
            conn: self,
            effects: Some(effects),
        })
    }
}

/// Queries over one connection inside a transaction.
struct Tx<'a> {
    conn: &'a Connection,
    /// The batch it writes in; `None` when it only reads.
    effects: Option<&'a mut Effects>,
}

impl Rows for Tx<'_> {
    fn effects(&mut self) -> Option<&mut Effects> {
        self.effects.as_deref_mut()
    }
}

/// A stored time that may be missing.
fn opt_time(s: Option<String>) -> Result<Option<DateTime<Utc>>, StoreError> {
    s.as_deref().map(parse).transpose()
}

const REQUEST_COLS: &str = "id, status, action_json, fingerprint, requirement_json, policies_json, reason, created_at, expires_at";

fn request_row(r: &Row<'_>) -> Result<RequestRow, StoreError> {
    Ok(RequestRow {
        id: r.get(0)?,
        status: r.get(1)?,
        action_json: r.get(2)?,
        fingerprint: r.get(3)?,
        requirement_json: r.get(4)?,
        policies_json: r.get(5)?,
        reason: r.get(6)?,
        created_at: parse(&r.get::<_, String>(7)?)?,
        expires_at: parse(&r.get::<_, String>(8)?)?,
    })
}

impl RequestRows for Tx<'_> {
    fn request_row(&mut self, id: &RequestId) -> Result<Option<RequestRow>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {REQUEST_COLS} FROM requests WHERE id = ?1"
        ))?;
        let mut rows = st.query([id.to_string()])?;
        rows.next()?.map(request_row).transpose()
    }

    fn request_rows(&mut self, l: &Listing<'_>) -> Result<Vec<RequestRow>, StoreError> {
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
            serde_json::to_string(&l.statuses)?,
            l.principal,
            l.viewer,
            serde_json::to_string(&l.groups)?,
            l.own,
            l.after.as_ref().map(|(at, _)| fmt(*at)),
            l.after.as_ref().map(|(_, id)| id),
            l.limit
        ])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(request_row(row)?);
        }
        Ok(out)
    }

    fn review_rows(&mut self, id: &RequestId) -> Result<Vec<ReviewRow>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT reviewer, verdict, reason, channel, at FROM reviews WHERE request_id = ?1 ORDER BY at, reviewer",
        )?;
        let mut rows = st.query([id.to_string()])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(ReviewRow {
                reviewer: r.get(0)?,
                verdict: r.get(1)?,
                reason: r.get(2)?,
                channel: r.get(3)?,
                at: parse(&r.get::<_, String>(4)?)?,
            });
        }
        Ok(out)
    }

    fn pending_id(
        &mut self,
        principal: &UserName,
        fp: &Fingerprint,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT id FROM requests WHERE principal = ?1 AND fingerprint = ?2 AND status = 'pending'",
            )?
            .query_row([principal.as_str(), &fp.to_string()], |r| r.get(0))
            .optional()?)
    }

    fn expiry_rows(&mut self) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
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
            out.push((id, parse(&at)?));
        }
        Ok(out)
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

    fn insert_request_row(
        &mut self,
        row: &RequestRow,
        principal: &UserName,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO requests (id, status, principal, action_json, fingerprint, requirement_json,
                 policies_json, reason, created_at, expires_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?9)",
            )?
            .execute(params![
                row.id,
                row.status,
                principal.as_str(),
                row.action_json,
                row.fingerprint,
                row.requirement_json,
                row.policies_json,
                row.reason,
                fmt(row.created_at),
                fmt(row.expires_at),
            ])?;
        Ok(())
    }

    fn insert_request_group(
        &mut self,
        id: &RequestId,
        group: &GroupName,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT OR IGNORE INTO request_groups (request_id, group_name) VALUES (?1, ?2)",
            )?
            .execute(params![id.to_string(), group.as_str()])?;
        Ok(())
    }

    fn update_status(
        &mut self,
        id: &RequestId,
        from: RequestStatus,
        to: RequestStatus,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE requests SET status = ?3, updated_at = ?4 WHERE id = ?1 AND status = ?2",
            )?
            .execute(params![id.to_string(), from.as_str(), to.as_str(), fmt(at)])?;
        Ok(n == 1)
    }

    fn update_requirement(
        &mut self,
        id: &RequestId,
        requirement_json: &str,
        policies_json: &str,
    ) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE requests SET requirement_json = ?2, policies_json = ?3
                 WHERE id = ?1 AND status = 'pending'",
            )?
            .execute(params![id.to_string(), requirement_json, policies_json])?;
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
}

impl GrantRows for Tx<'_> {
    fn grant_row(&mut self, request: &RequestId) -> Result<Option<GrantRecordRow>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, expires_at, max_uses, uses, revoked, outcome FROM grants WHERE request_id = ?1",
        )?;
        let mut rows = st.query([request.to_string()])?;
        rows.next()?
            .map(|r| {
                Ok(GrantRecordRow {
                    id: r.get(0)?,
                    expires_at: parse(&r.get::<_, String>(1)?)?,
                    max_uses: r.get(2)?,
                    uses: r.get(3)?,
                    revoked: r.get(4)?,
                    outcome: r.get(5)?,
                })
            })
            .transpose()
    }

    fn grant_binding(&mut self, id: &GrantId) -> Result<Option<GrantBinding>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT request_id, principal, fingerprint, completed FROM grants WHERE id = ?1",
            )?
            .query_row([id.to_string()], |r| {
                Ok(GrantBinding {
                    request_id: r.get(0)?,
                    principal: r.get(1)?,
                    fingerprint: r.get(2)?,
                    completed: r.get(3)?,
                })
            })
            .optional()?)
    }

    fn spend_use(
        &mut self,
        id: &GrantId,
        now: DateTime<Utc>,
    ) -> Result<Option<(u32, u32)>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE grants SET uses = uses + 1
                 WHERE id = ?1 AND revoked = 0 AND completed = 0 AND uses < max_uses AND expires_at > ?2
                 RETURNING uses, max_uses",
            )?
            .query_row(params![id.to_string(), fmt(now)], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    fn grant_state(&mut self, id: &GrantId) -> Result<Option<GrantState>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT revoked, completed, uses, max_uses FROM grants WHERE id = ?1")?
            .query_row([id.to_string()], |r| {
                Ok(GrantState {
                    revoked: r.get(0)?,
                    completed: r.get(1)?,
                    uses: r.get(2)?,
                    max_uses: r.get(3)?,
                })
            })
            .optional()?)
    }

    fn insert_grant_row(
        &mut self,
        id: &RequestId,
        fp: &Fingerprint,
        grant: &GrantRecord,
        action: &Action,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO grants (id, request_id, principal, action, resource_type, resource_id,
                 fingerprint, expires_at, max_uses) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                grant.grant_id.to_string(),
                id.to_string(),
                action.principal.as_str(),
                action.action.as_str(),
                action.resource.kind.as_str(),
                action.resource.id.as_str(),
                fp.to_string(),
                fmt(grant.expires_at),
                grant.max_uses,
            ])?;
        Ok(())
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

const AUDIT_COLS: &str = "seq, ts, kind, actor, subject, details, prev_hash, hash";

impl Tx<'_> {
    fn audit_rows(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let mut st = self.conn.prepare_cached(sql)?;
        let mut rows = st.query(params)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(AuditRow {
                seq: r.get(0)?,
                ts: r.get(1)?,
                kind: r.get(2)?,
                actor: r.get(3)?,
                subject: r.get(4)?,
                details: r.get(5)?,
                prev_hash: r.get(6)?,
                hash: r.get(7)?,
            });
        }
        Ok(out)
    }
}

impl AuditRows for Tx<'_> {
    fn audit_rows_after(&mut self, after: i64, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        self.audit_rows(
            &format!("SELECT {AUDIT_COLS} FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2"),
            params![after, limit],
        )
    }

    fn audit_rows_about(&mut self, subject: &str, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        self.audit_rows(
            &format!("SELECT {AUDIT_COLS} FROM audit WHERE subject = ?1 ORDER BY seq LIMIT ?2"),
            params![subject, limit],
        )
    }

    fn audit_rows_matching(
        &mut self,
        f: &AuditFilter,
        limit: u32,
    ) -> Result<Vec<AuditRow>, StoreError> {
        self.audit_rows(
            &format!(
                "SELECT {AUDIT_COLS} FROM audit
                 WHERE (?1 IS NULL OR actor = ?1) AND (?2 IS NULL OR kind = ?2)
                   AND (?3 IS NULL OR request_id = ?3) AND ?4 IS NULL
                   AND (?5 IS NULL OR ts >= ?5) AND (?6 IS NULL OR ts < ?6)
                   AND (?8 IS NULL OR subject = ?8)
                 ORDER BY seq DESC LIMIT ?7"
            ),
            params![
                f.actor,
                f.kind,
                f.request,
                None::<String>,
                f.since,
                f.until,
                limit,
                f.subject
            ],
        )
    }

    fn head_row(&mut self) -> Result<Option<(i64, String)>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    fn insert_audit_row(
        &mut self,
        record: &AuditRecord,
        request: Option<&str>,
    ) -> Result<(), StoreError> {
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
        Ok(())
    }

    fn checkpoint_rows(&mut self) -> Result<Vec<CheckpointRow>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT seq, hash, ts, signature FROM checkpoints ORDER BY seq")?;
        let rows = st.query_map([], |r| {
            Ok(CheckpointRow {
                seq: r.get(0)?,
                hash: r.get(1)?,
                ts: r.get(2)?,
                signature: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn insert_checkpoint(&mut self, cp: &Checkpoint) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO checkpoints (seq, hash, ts, signature) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![cp.seq, cp.hash.to_string(), cp.ts, cp.signature])?;
        Ok(())
    }
}

const API_KEY_COLS: &str =
    "id, hash, user_name, role, created_at, expires_at, revoked_at, last_used_at";

fn api_key_row(r: &Row<'_>) -> Result<ApiKeyRow, StoreError> {
    Ok(ApiKeyRow {
        id: r.get(0)?,
        hash: r.get(1)?,
        user: r.get(2)?,
        role: r.get(3)?,
        created_at: parse(&r.get::<_, String>(4)?)?,
        expires_at: opt_time(r.get(5)?)?,
        revoked_at: opt_time(r.get(6)?)?,
        last_used_at: opt_time(r.get(7)?)?,
    })
}

impl KeyRows for Tx<'_> {
    fn api_key_row(&mut self, hash: &str) -> Result<Option<ApiKeyRow>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {API_KEY_COLS} FROM api_keys WHERE hash = ?1"
        ))?;
        let mut rows = st.query([hash])?;
        rows.next()?.map(api_key_row).transpose()
    }

    fn api_key_rows(&mut self) -> Result<Vec<ApiKeyRow>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {API_KEY_COLS} FROM api_keys ORDER BY created_at, id"
        ))?;
        let mut rows = st.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(api_key_row(row)?);
        }
        Ok(out)
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

    fn mark_key_revoked(&mut self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            )?
            .execute(params![id, fmt(at)])?;
        Ok(n == 1)
    }

    fn key_revoked_at(&mut self, id: &str) -> Result<Option<Option<DateTime<Utc>>>, StoreError> {
        let before: Option<Option<String>> = self
            .conn
            .prepare_cached("SELECT revoked_at FROM api_keys WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?;
        before.map(opt_time).transpose()
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

    fn signing_key(&mut self, purpose: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT public_key FROM signing_keys WHERE purpose = ?1")?
            .query_row([purpose], |r| r.get(0))
            .optional()?)
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
}

impl SessionRows for Tx<'_> {
    fn session_row(&mut self, id_hash: &str) -> Result<Option<SessionRow>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT id_hash, user_name, csrf, method, created_at, expires_at FROM sessions WHERE id_hash = ?1",
        )?;
        let mut rows = st.query([id_hash])?;
        rows.next()?
            .map(|r| {
                Ok(SessionRow {
                    id_hash: r.get(0)?,
                    user: r.get(1)?,
                    csrf: r.get(2)?,
                    method: r.get(3)?,
                    created_at: parse(&r.get::<_, String>(4)?)?,
                    expires_at: parse(&r.get::<_, String>(5)?)?,
                })
            })
            .transpose()
    }

    fn delete_expired_sessions(&mut self, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM sessions WHERE expires_at <= ?1")?
            .execute([fmt(now)])?;
        Ok(())
    }

    fn insert_session_row(&mut self, s: &SessionRecord) -> Result<(), StoreError> {
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

    fn delete_session(&mut self, id_hash: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM sessions WHERE id_hash = ?1")?
            .execute([id_hash])?
            == 1)
    }

    fn password_hash(&mut self, user: &UserName) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT hash FROM passwords WHERE user_name = ?1")?
            .query_row([user.as_str()], |r| r.get(0))
            .optional()?)
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

    fn synced_group_rows(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT user_name, groups_json FROM synced_groups ORDER BY user_name",
        )?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn upsert_synced_groups(
        &mut self,
        user: &UserName,
        groups_json: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO synced_groups (user_name, groups_json, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_name) DO UPDATE SET groups_json = excluded.groups_json, updated_at = excluded.updated_at",
            )?
            .execute(params![user.as_str(), groups_json, fmt(at)])?;
        Ok(())
    }
}

const OUTBOX_COLS: &str = "id, target, event, payload, status, attempts, last_error, next_attempt_at, created_at, delivered_at";

fn outbox_from_row(r: &Row<'_>) -> Result<OutboxMessage, StoreError> {
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
        delivered_at: opt_time(r.get(9)?)?,
    })
}

impl OutboxRows for Tx<'_> {
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

    fn lease_due(
        &mut self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
        claim: &str,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        // The batch holds the write lock: no other process claims meanwhile.
        let mut st = self.conn.prepare_cached(&format!(
            "UPDATE outbox SET next_attempt_at = ?2, claim = ?4 WHERE id IN (
                 SELECT id FROM outbox WHERE status = 'pending' AND next_attempt_at <= ?1
                 ORDER BY created_at, id LIMIT ?3)
             RETURNING {OUTBOX_COLS}"
        ))?;
        let mut rows = st.query(params![fmt(now), fmt(lease_until), limit, claim])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(outbox_from_row(row)?);
        }
        Ok(out)
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
}

impl ChatRows for Tx<'_> {
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
}
