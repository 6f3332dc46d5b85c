//! Versioned schema migrations for SQLite, applied in order at open.

use rusqlite::Connection;

use crate::StoreError;

/// Each entry moves the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE requests (
    id               TEXT PRIMARY KEY,
    status           TEXT NOT NULL,
    principal        TEXT NOT NULL,
    action_json      TEXT NOT NULL,
    fingerprint      TEXT NOT NULL,
    requirement_json TEXT NOT NULL,
    policies_json    TEXT NOT NULL,
    reason           TEXT,
    created_at       TEXT NOT NULL,
    expires_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE INDEX requests_by_status ON requests (status, expires_at);
CREATE INDEX requests_by_principal ON requests (principal, created_at);
-- At most one pending request per principal and action: asking again
-- returns the one already waiting.
CREATE UNIQUE INDEX requests_one_pending ON requests (principal, fingerprint) WHERE status = 'pending';

CREATE TABLE reviews (
    request_id TEXT NOT NULL REFERENCES requests (id),
    reviewer   TEXT NOT NULL,
    verdict    TEXT NOT NULL,
    reason     TEXT,
    channel    TEXT NOT NULL,
    at         TEXT NOT NULL,
    PRIMARY KEY (request_id, reviewer)
);

CREATE TABLE grants (
    id            TEXT PRIMARY KEY,
    request_id    TEXT NOT NULL UNIQUE REFERENCES requests (id),
    principal     TEXT NOT NULL,
    action        TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    fingerprint   TEXT NOT NULL,
    expires_at    TEXT NOT NULL,
    max_uses      INTEGER NOT NULL CHECK (max_uses >= 1),
    uses          INTEGER NOT NULL DEFAULT 0 CHECK (uses >= 0 AND uses <= max_uses),
    revoked       INTEGER NOT NULL DEFAULT 0,
    completed     INTEGER NOT NULL DEFAULT 0,
    outcome       TEXT
);
CREATE INDEX grants_by_principal ON grants (principal, action, resource_type, resource_id);

CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    ts        TEXT NOT NULL,
    kind      TEXT NOT NULL,
    actor     TEXT NOT NULL,
    subject   TEXT NOT NULL,
    details   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX audit_by_subject ON audit (subject);

CREATE TABLE checkpoints (
    seq       INTEGER PRIMARY KEY,
    hash      TEXT NOT NULL,
    ts        TEXT NOT NULL,
    signature TEXT NOT NULL
);

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    hash       TEXT NOT NULL UNIQUE,
    user_name  TEXT NOT NULL,
    role       TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"#,
    r#"
-- Web console sign-in: argon2id hashes only.
CREATE TABLE passwords (
    user_name  TEXT PRIMARY KEY,
    hash       TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"#,
    r#"
-- The public signing keys of the deployment: a node holding other keys
-- refuses to start rather than sign what the others cannot verify.
CREATE TABLE signing_keys (
    purpose    TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"#,
    r#"
-- Web console sessions: the cookie's SHA-256 only.
CREATE TABLE sessions (
    id_hash    TEXT PRIMARY KEY,
    user_name  TEXT NOT NULL,
    csrf       TEXT NOT NULL,
    method     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);
"#,
    r#"
-- Groups reported by single sign-on, replacing the config's for the user.
CREATE TABLE synced_groups (
    user_name   TEXT PRIMARY KEY,
    groups_json TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
"#,
    r#"
-- The durable outbox of notifications.
CREATE TABLE outbox (
    id              TEXT PRIMARY KEY,
    target          TEXT NOT NULL,
    event           TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    delivered_at    TEXT,
    claim           TEXT
);
CREATE INDEX outbox_due ON outbox (status, next_attempt_at);
"#,
    r#"
-- Chat messages posted about requests, to update them as they progress.
CREATE TABLE chat_messages (
    request_id TEXT NOT NULL,
    provider   TEXT NOT NULL,
    channel    TEXT NOT NULL,
    ts         TEXT NOT NULL,
    PRIMARY KEY (request_id, provider, channel)
);
-- Interactions already handled (platforms retry them).
CREATE TABLE interactions_seen (
    source TEXT NOT NULL,
    id     TEXT NOT NULL,
    at     TEXT NOT NULL,
    PRIMARY KEY (source, id)
);
"#,
    r#"
-- Audit records name the request they belong to in a column of their own,
-- filled by Airlock from what it wrote (the record's subject, or the
-- `request` it put at the top of the details), never from caller text.
ALTER TABLE audit ADD COLUMN request_id TEXT;
UPDATE audit SET request_id = CASE
    WHEN kind NOT IN ('decision', 'request_created', 'review', 'request_state', 'grant_issued',
                     'grant_consumed', 'grant_refused', 'grant_completed') THEN NULL
    WHEN subject LIKE 'req\_%' ESCAPE '\' THEN subject
    WHEN json_valid(details) AND json_type(details, '$.request') = 'text'
        THEN json_extract(details, '$.request')
    END;
CREATE INDEX audit_by_request ON audit (request_id);
"#,
    r#"
-- API keys can expire and be revoked (the row stays, for audit); when a
-- key was last used is kept to the minute.
ALTER TABLE api_keys ADD COLUMN expires_at TEXT;
ALTER TABLE api_keys ADD COLUMN revoked_at TEXT;
ALTER TABLE api_keys ADD COLUMN last_used_at TEXT;
"#,
    r#"
-- The groups named in each request's thresholds, so listings filter by
-- who may see a request in the query itself (before the limit), not after.
CREATE TABLE request_groups (
    request_id TEXT NOT NULL REFERENCES requests (id),
    group_name TEXT NOT NULL,
    PRIMARY KEY (request_id, group_name)
);
CREATE INDEX request_groups_by_group ON request_groups (group_name, request_id);
INSERT OR IGNORE INTO request_groups (request_id, group_name)
SELECT r.id, g.value
FROM requests r, json_each(r.requirement_json, '$.thresholds') t, json_each(t.value, '$.groups') g;
CREATE INDEX requests_by_created ON requests (created_at, id);
"#,
    r#"
-- A SCRAM-SHA-256 verifier per API key, so a key can be the password of
-- a PostgreSQL session at the proxy (the key itself is never stored).
ALTER TABLE api_keys ADD COLUMN scram TEXT;
"#,
    r#"
-- The audit log's RFC 6962 Merkle tree: the hash of every perfect subtree
-- (2^level records from index·2^level), kept as records are appended, so
-- a proof reads O(log n) rows. Level 0 holds each record's leaf hash.
CREATE TABLE audit_nodes (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (level, idx)
);
-- Signed checkpoints of the tree (C2SP signed notes), by tree size.
CREATE TABLE audit_notes (
    size INTEGER PRIMARY KEY,
    note TEXT NOT NULL
);
"#,
    r#"
-- Each user's TOTP secret for step-up, sealed (XChaCha20-Poly1305 under
-- the deployment's secrets.key, bound to the user): never stored in clear.
CREATE TABLE totp_secrets (
    user_name TEXT PRIMARY KEY,
    sealed TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"#,
    r#"
-- Each user's WebAuthn credentials for step-up (webauthn-rs passkeys, as
-- a JSON list: public keys and signature counters, nothing secret).
CREATE TABLE webauthn_keys (
    user_name TEXT PRIMARY KEY,
    passkeys TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"#,
    r#"
-- One `complete` per consumed use: how many uses reported their outcome.
-- Grants from before this count every consumed use as reported once an
-- outcome was recorded (a late report of an old use is refused, never a
-- second one accepted).
ALTER TABLE grants ADD COLUMN completions INTEGER NOT NULL DEFAULT 0;
UPDATE grants SET completions = uses WHERE outcome IS NOT NULL;
"#,
    r#"
-- Fewer pages written per commit (issue 17): a commit of one decision
-- wrote 6.7 WAL frames of 4 KiB. The tree's nodes are now keyed by their
-- in-order position (node (level, idx) at idx * 2^(level+1) + 2^level - 1,
-- airlock_core::merkle::in_order_position): one B-tree, each append's new
-- nodes at its right edge, where (level, idx) made a table and its key's
-- index, each written at one place per level. Records without a subject
-- (decisions) or without a request leave those two indexes alone: they
-- are only ever searched for one subject or one request.
CREATE TABLE audit_nodes_in_order (
    pos INTEGER PRIMARY KEY,
    hash TEXT NOT NULL
);
INSERT INTO audit_nodes_in_order (pos, hash)
    SELECT (idx << (level + 1)) + (1 << level) - 1, hash FROM audit_nodes;
DROP TABLE audit_nodes;
ALTER TABLE audit_nodes_in_order RENAME TO audit_nodes;
DROP INDEX audit_by_subject;
CREATE INDEX audit_by_subject ON audit (subject) WHERE subject <> '';
DROP INDEX audit_by_request;
CREATE INDEX audit_by_request ON audit (request_id) WHERE request_id IS NOT NULL;
"#,
    r#"
-- No table changes. From this version every process that revokes an API
-- key announces it in the file `<database>-revocations`, which lets the
-- others answer keys from memory until then (crate::keycache). A build
-- from before would revoke without announcing, so it must refuse this
-- file, as it refuses every newer version.
"#,
    r#"
-- Which step-up (totp, webauthn) a reviewer passed with a review: an
-- approval counts toward a requirement with @step_up only if it passed
-- one, also when the requirement was raised after it or policy asks for
-- one at consumption. Reviews from before count as without.
ALTER TABLE reviews ADD COLUMN step_up TEXT;
"#,
    r#"
-- Whether an enforcer key (a proxy) spent a use of the grant: then only an
-- enforcer reports its outcome, so the grant's principal cannot close a
-- proxied action with an outcome of their own before the proxy reports
-- what the upstream answered. Grants from before count as not.
ALTER TABLE grants ADD COLUMN enforced INTEGER NOT NULL DEFAULT 0;
-- Only request records are filed under a request: builds of 2026-11-26
-- filed some others too (a sign-in whose user name looked like a request
-- id), which `audit verify` now holds the column to, so those are unfiled.
UPDATE audit SET request_id = NULL WHERE request_id IS NOT NULL AND kind NOT IN (
    'decision', 'request_created', 'review', 'request_state', 'grant_issued', 'grant_consumed',
    'grant_refused', 'grant_completed', 'requirement_raised', 'breakglass', 'review_refused');
"#,
];

/// The newest schema version this build knows.
pub(crate) const CURRENT: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`CURRENT`], refusing one that is newer.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    migrate_to(conn, CURRENT)
}

/// The database's schema version, refused if newer than this build's.
fn known_version(conn: &Connection) -> Result<i64, StoreError> {
    let found: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )?;
    if found > CURRENT {
        return Err(StoreError::SchemaTooNew {
            found,
            known: CURRENT,
        });
    }
    Ok(found)
}

/// Refuses a database at another version than this build's, for readers
/// that cannot migrate it.
pub(crate) fn check_version(conn: &Connection) -> Result<(), StoreError> {
    let found = known_version(conn).map_err(|e| match e {
        StoreError::SchemaTooNew { .. } => e,
        e => StoreError::Db(format!("not an Airlock database: {e}")),
    })?;
    if found < CURRENT {
        return Err(StoreError::Db(format!(
            "the database is at schema version {found} and this build reads version {CURRENT}: \
             start `airlock serve` on it once to migrate it"
        )));
    }
    Ok(())
}

/// Brings the database to `target` (tests start from older versions).
fn migrate_to(conn: &mut Connection, target: i64) -> Result<(), StoreError> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let found = known_version(&tx)?;
    let upto = usize::try_from(target).unwrap_or(0);
    let upgrade = crate::upgrade::Upgrade::start("SQLite", found, target);
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .take(upto)
        .skip(found as usize)
    {
        tx.execute_batch(sql)?;
        tx.execute("DELETE FROM schema_version", [])?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [i as i64 + 1],
        )?;
    }
    tx.commit()?;
    upgrade.done();
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use airlock_core::merkle;
    use rusqlite::params;

    use super::{migrate, migrate_to, CURRENT};
    use crate::logic::AuditRows;
    use crate::sqlite::Tx;

    /// The migration that keys the tree's nodes by in-order position
    /// computes in SQL what `merkle::in_order_position` computes in Rust:
    /// every node of a tree stored the old way is found the new way.
    #[test]
    fn tree_nodes_stored_by_level_and_index_are_found_by_position_after_migrating() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        // Version 16 keyed the tree's nodes by position.
        migrate_to(&mut conn, 15).unwrap();
        let mut frontier = Vec::new();
        let mut nodes = Vec::new();
        for i in 0..37u64 {
            nodes.extend(merkle::append(
                &mut frontier,
                i,
                merkle::leaf_hash(&i.to_be_bytes()),
            ));
        }
        for (level, index, hash) in &nodes {
            conn.execute(
                "INSERT INTO audit_nodes (level, idx, hash) VALUES (?1, ?2, ?3)",
                params![level, *index as i64, hex::encode(hash)],
            )
            .unwrap();
        }
        migrate(&mut conn).unwrap();
        let mut tx = Tx {
            conn: &conn,
            effects: None,
            revocations: None,
        };
        assert_eq!(tx.tree_leaves().unwrap(), 37);
        for (level, index, hash) in &nodes {
            assert_eq!(
                tx.tree_node_row(*level, *index).unwrap(),
                Some(hex::encode(hash)),
                "{level}/{index}"
            );
        }
        assert_eq!(tx.tree_node_row(0, 37).unwrap(), None);
    }

    /// Upgrading an existing database says so in the log, when it starts
    /// and when it is done (the server answers nothing meanwhile);
    /// creating a new one, or opening a current one, says nothing.
    #[test]
    fn an_upgrade_is_announced_and_a_new_database_is_not() {
        #[derive(Clone, Default)]
        struct Log(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Log {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let logged = |f: &mut dyn FnMut()| {
            let log = Log::default();
            let sink = log.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || sink.clone())
                .with_ansi(false)
                .finish();
            tracing::subscriber::with_default(subscriber, f);
            let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
            text
        };
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        let created = logged(&mut || migrate_to(&mut conn, CURRENT - 1).unwrap());
        assert_eq!(created, "", "creating a database is not an upgrade");
        let upgraded = logged(&mut || migrate(&mut conn).unwrap());
        assert!(
            upgraded.contains("upgrading the SQLite database's schema")
                && upgraded.contains(&format!("from={}", CURRENT - 1))
                && upgraded.contains(&format!("to={CURRENT}")),
            "{upgraded}"
        );
        assert!(upgraded.contains("schema is upgraded"), "{upgraded}");
        let again = logged(&mut || migrate(&mut conn).unwrap());
        assert_eq!(again, "", "a current database is not upgraded");
    }

    /// Offline readers never migrate, so they refuse a file of another
    /// version with a clear error rather than read it with the wrong
    /// queries.
    #[test]
    fn a_reader_refuses_a_database_of_another_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        migrate_to(&mut conn, CURRENT - 1).unwrap();
        drop(conn);
        let err = crate::sqlite::SqliteBackend::read_only(&path)
            .err()
            .unwrap();
        assert!(err.to_string().contains("start `airlock serve`"), "{err}");
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        migrate(&mut conn).unwrap();
        drop(conn);
        assert!(crate::sqlite::SqliteBackend::read_only(&path).is_ok());
    }
}
