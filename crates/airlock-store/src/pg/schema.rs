//! Versioned schema migrations for PostgreSQL, applied in order at start
//! by whichever node gets there first.

use postgres::Client;

use crate::StoreError;

/// Advisory lock held while migrating, so nodes starting together do not
/// race each other's DDL.
const MIGRATE_LOCK: i64 = 0x6169_726c_6f63_6b01;

/// Each entry moves the schema from version `i` to `i + 1`. Times are
/// `timestamptz`; JSON documents and audit fields are `text`, kept
/// byte-for-byte as written (jsonb would reorder keys, drop duplicate
/// keys and refuse `\u0000`, and the audit hashes cover the exact text).
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE requests (
    id               text PRIMARY KEY,
    status           text NOT NULL,
    principal        text NOT NULL,
    action_json      text NOT NULL,
    fingerprint      text NOT NULL,
    requirement_json text NOT NULL,
    policies_json    text NOT NULL,
    reason           text,
    created_at       timestamptz NOT NULL,
    expires_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX requests_by_status ON requests (status, expires_at);
CREATE INDEX requests_by_principal ON requests (principal, created_at);
CREATE INDEX requests_by_created ON requests (created_at DESC, id DESC);
-- At most one pending request per principal and action.
CREATE UNIQUE INDEX requests_one_pending ON requests (principal, fingerprint) WHERE status = 'pending';

CREATE TABLE reviews (
    request_id text NOT NULL REFERENCES requests (id),
    reviewer   text NOT NULL,
    verdict    text NOT NULL,
    reason     text,
    channel    text NOT NULL,
    at         timestamptz NOT NULL,
    PRIMARY KEY (request_id, reviewer)
);

CREATE TABLE grants (
    id            text PRIMARY KEY,
    request_id    text NOT NULL UNIQUE REFERENCES requests (id),
    principal     text NOT NULL,
    action        text NOT NULL,
    resource_type text NOT NULL,
    resource_id   text NOT NULL,
    fingerprint   text NOT NULL,
    expires_at    timestamptz NOT NULL,
    max_uses      integer NOT NULL CHECK (max_uses >= 1),
    uses          integer NOT NULL DEFAULT 0 CHECK (uses >= 0 AND uses <= max_uses),
    revoked       boolean NOT NULL DEFAULT false,
    completed     boolean NOT NULL DEFAULT false,
    outcome       text
);
CREATE INDEX grants_by_principal ON grants (principal, action, resource_type, resource_id);

CREATE TABLE audit (
    seq       bigint PRIMARY KEY,
    ts        text NOT NULL,
    kind      text NOT NULL,
    actor     text NOT NULL,
    subject   text NOT NULL,
    details   text NOT NULL,
    prev_hash text NOT NULL,
    hash      text NOT NULL
);
CREATE INDEX audit_by_subject ON audit (subject);

CREATE TABLE checkpoints (
    seq       bigint PRIMARY KEY,
    hash      text NOT NULL,
    ts        text NOT NULL,
    signature text NOT NULL
);

CREATE TABLE api_keys (
    id         text PRIMARY KEY,
    hash       text NOT NULL UNIQUE,
    user_name  text NOT NULL,
    role       text NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE TABLE passwords (
    user_name  text PRIMARY KEY,
    hash       text NOT NULL,
    updated_at timestamptz NOT NULL
);

-- The public signing keys of the deployment: a node holding other keys
-- refuses to start rather than sign what the others cannot verify.
CREATE TABLE signing_keys (
    purpose    text PRIMARY KEY,
    public_key text NOT NULL,
    created_at timestamptz NOT NULL
);

-- Web console sessions: the cookie's SHA-256 only.
CREATE TABLE sessions (
    id_hash    text PRIMARY KEY,
    user_name  text NOT NULL,
    csrf       text NOT NULL,
    method     text NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);

-- Groups reported by single sign-on, replacing the config's for the user.
CREATE TABLE synced_groups (
    user_name   text PRIMARY KEY,
    groups_json text NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- The durable outbox of notifications.
CREATE TABLE outbox (
    id              text PRIMARY KEY,
    target          text NOT NULL,
    event           text NOT NULL,
    payload         text NOT NULL,
    status          text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    next_attempt_at timestamptz NOT NULL,
    created_at      timestamptz NOT NULL,
    delivered_at    timestamptz,
    claim           text
);
CREATE INDEX outbox_due ON outbox (status, next_attempt_at);

-- Chat messages posted about requests, to update them as they progress.
CREATE TABLE chat_messages (
    request_id text NOT NULL,
    provider   text NOT NULL,
    channel    text NOT NULL,
    ts         text NOT NULL,
    PRIMARY KEY (request_id, provider, channel)
);

-- Interactions already handled (platforms retry them).
CREATE TABLE interactions_seen (
    source text NOT NULL,
    id     text NOT NULL,
    at     timestamptz NOT NULL,
    PRIMARY KEY (source, id)
);
"#,
    r#"
-- Audit records name the request they belong to in a column of their own,
-- filled by Airlock from what it wrote (the record's subject, or the
-- `request` it put at the top of the details), never from caller text.
ALTER TABLE audit ADD COLUMN request_id text;
UPDATE audit SET request_id = CASE
    WHEN kind NOT IN ('decision', 'request_created', 'review', 'request_state', 'grant_issued',
                     'grant_consumed', 'grant_refused', 'grant_completed') THEN NULL
    WHEN subject LIKE 'req\_%' THEN subject
    WHEN json_typeof(details::json -> 'request') = 'string' THEN details::json ->> 'request'
    END;
CREATE INDEX audit_by_request ON audit (request_id);
"#,
    r#"
-- API keys can expire and be revoked (the row stays, for audit); when a
-- key was last used is kept to the minute.
ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;
ALTER TABLE api_keys ADD COLUMN revoked_at timestamptz;
ALTER TABLE api_keys ADD COLUMN last_used_at timestamptz;
"#,
    r#"
-- The groups named in each request's thresholds, so listings filter by
-- who may see a request in the query itself (before the limit), not after.
CREATE TABLE request_groups (
    request_id text NOT NULL REFERENCES requests (id),
    group_name text NOT NULL,
    PRIMARY KEY (request_id, group_name)
);
CREATE INDEX request_groups_by_group ON request_groups (group_name, request_id);
INSERT INTO request_groups (request_id, group_name)
SELECT DISTINCT r.id, g.name
FROM requests r,
     jsonb_array_elements(r.requirement_json::jsonb -> 'thresholds') t,
     jsonb_array_elements_text(t.value -> 'groups') g(name)
ON CONFLICT DO NOTHING;
"#,
    r#"
-- A SCRAM-SHA-256 verifier per API key, so a key can be the password of
-- a PostgreSQL session at the proxy (the key itself is never stored).
ALTER TABLE api_keys ADD COLUMN scram text;
"#,
    r#"
-- The audit log's RFC 6962 Merkle tree: the hash of every perfect subtree
-- (2^level records from index·2^level), kept as records are appended, so
-- a proof reads O(log n) rows. Level 0 holds each record's leaf hash.
CREATE TABLE audit_nodes (
    level integer NOT NULL,
    idx bigint NOT NULL,
    hash text NOT NULL,
    PRIMARY KEY (level, idx)
);
-- Signed checkpoints of the tree (C2SP signed notes), by tree size.
CREATE TABLE audit_notes (
    size bigint PRIMARY KEY,
    note text NOT NULL
);
"#,
    r#"
-- Each user's TOTP secret for step-up, sealed (XChaCha20-Poly1305 under
-- the deployment's secrets.key, bound to the user): never stored in clear.
CREATE TABLE totp_secrets (
    user_name text PRIMARY KEY,
    sealed text NOT NULL,
    updated_at timestamptz NOT NULL
);
"#,
    r#"
-- Each user's WebAuthn credentials for step-up (webauthn-rs passkeys, as
-- a JSON list: public keys and signature counters, nothing secret).
CREATE TABLE webauthn_keys (
    user_name text PRIMARY KEY,
    passkeys text NOT NULL,
    updated_at timestamptz NOT NULL
);
"#,
    r#"
-- One `complete` per consumed use: how many uses reported their outcome.
-- Grants from before this count every consumed use as reported once an
-- outcome was recorded (a late report of an old use is refused, never a
-- second one accepted).
ALTER TABLE grants ADD COLUMN completions integer NOT NULL DEFAULT 0;
UPDATE grants SET completions = uses WHERE outcome IS NOT NULL;
"#,
    r#"
-- Records without a subject (decisions, most of the log) or without a
-- request leave those two indexes alone: they are only ever searched for
-- one subject or one request, so every decision paid two index inserts
-- for nothing.
DROP INDEX audit_by_subject;
CREATE INDEX audit_by_subject ON audit (subject) WHERE subject <> '';
DROP INDEX audit_by_request;
CREATE INDEX audit_by_request ON audit (request_id) WHERE request_id IS NOT NULL;
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
ALTER TABLE grants ADD COLUMN enforced boolean NOT NULL DEFAULT false;
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
pub(crate) fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])?;
    // `IF NOT EXISTS` on a made table is a NOTICE, which the driver logs
    // at INFO on every start and every command: noise, not news.
    tx.batch_execute(
        "SET LOCAL client_min_messages = warning;
         CREATE TABLE IF NOT EXISTS airlock_schema_version (version integer NOT NULL)",
    )?;
    let found: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::bigint FROM airlock_schema_version",
            &[],
        )?
        .get(0);
    if found > CURRENT {
        return Err(StoreError::SchemaTooNew {
            found,
            known: CURRENT,
        });
    }
    let upgrade = crate::upgrade::Upgrade::start("PostgreSQL", found, CURRENT);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(sql)?;
        tx.execute("DELETE FROM airlock_schema_version", &[])?;
        tx.execute(
            "INSERT INTO airlock_schema_version (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )?;
    }
    tx.commit()?;
    upgrade.done();
    Ok(())
}
