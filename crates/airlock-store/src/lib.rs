//! Airlock's persistence: requests, reviews, grants, API keys, and the
//! hash-chained audit log.
//!
//! Every state change and the audit records that describe it are written in
//! one transaction, so the log can never miss a change nor record one that
//! did not happen. Writes from many callers are batched into one
//! transaction each (group commit) by a single writer, which is what lets
//! every decision be durably audited at tens of thousands per second.
//! The service layer speaks to [`ReadTx`] and [`WriteTx`]; each backend
//! implements them.
#![forbid(unsafe_code)]

mod batch;
mod error;
mod events;
mod keycache;
mod logic;
mod model;
mod pg;
mod readonly;
mod sqlite;
pub mod testing;
pub mod time;
mod upgrade;
mod verify;

use std::sync::Arc;

pub use error::StoreError;
pub use events::{EventSender, Watch};
pub use keycache::{KeyCache, Lookup, Ticket};
pub use model::{
    ApiKeyRecord, AuditFilter, ConsumeOutcome, Cursor, GrantRow, KeyRefusal, KeyRevocation,
    OutboxMessage, Role, SessionRecord, StatusFilter, Viewer,
};
pub use pg::PostgresBackend;
pub use readonly::ReadOnlyStore;
pub use sqlite::SqliteBackend;
use tokio::sync::broadcast;
pub use verify::{verify_chain, Verification};

use airlock_core::request::GrantRecord;
use airlock_core::{
    AuditRecord, ChainHash, Fingerprint, GrantId, GroupName, NewAuditRecord, Request, RequestId,
    RequestStatus, Review, UserName,
};
use airlock_keys::Checkpoint;
use chrono::{DateTime, Utc};

/// Queries every backend answers, inside a read or write transaction.
pub trait ReadTx {
    /// One request with its reviews and grant.
    fn get_request(&mut self, id: &RequestId) -> Result<Option<Request>, StoreError>;
    /// Requests matching `filter`, newest first, at most `limit`.
    fn list_requests(
        &mut self,
        filter: &StatusFilter,
        limit: u32,
    ) -> Result<Vec<Request>, StoreError>;
    /// The pending request for this principal and fingerprint, if any.
    fn find_pending(
        &mut self,
        principal: &UserName,
        fp: &Fingerprint,
    ) -> Result<Option<RequestId>, StoreError>;
    /// Pending requests (id, expiry) and live grants' requests, for timers.
    fn pending_expiries(&mut self) -> Result<Vec<(RequestId, DateTime<Utc>)>, StoreError>;
    /// A grant and its request id.
    fn get_grant(&mut self, id: &GrantId) -> Result<Option<GrantRow>, StoreError>;
    /// Audit records with `seq > after`, at most `limit`.
    fn audit_after(&mut self, after: i64, limit: u32) -> Result<Vec<AuditRecord>, StoreError>;
    /// The request each record with `seq > after` is filed under (the
    /// column listings by request read), at most `limit`, by seq.
    fn audit_filing_after(
        &mut self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, Option<String>)>, StoreError>;
    /// Audit records about `subject` (a request or grant id), oldest first.
    fn audit_about(&mut self, subject: &str, limit: u32) -> Result<Vec<AuditRecord>, StoreError>;
    /// Audit records matching `filter`, newest first, at most `limit`.
    fn audit_search(
        &mut self,
        filter: &AuditFilter,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError>;
    /// All checkpoints, oldest first.
    fn checkpoints(&mut self) -> Result<Vec<Checkpoint>, StoreError>;
    /// The chain head `(seq, hash)`; `(0, GENESIS)` when empty.
    fn audit_head(&mut self) -> Result<(i64, ChainHash), StoreError>;
    /// The API key whose SHA-256 is `hash`, revoked or expired or not.
    fn api_key_by_hash(&mut self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// Every API key, revoked and expired ones included, oldest first.
    fn list_api_keys(&mut self) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// The audit Merkle tree's perfect subtree `(level, index)`, if stored.
    fn audit_tree_node(
        &mut self,
        level: u32,
        index: u64,
    ) -> Result<Option<airlock_core::merkle::Hash>, StoreError>;
    /// How many records the audit Merkle tree holds.
    fn audit_tree_size(&mut self) -> Result<u64, StoreError>;
    /// Every signed checkpoint of the tree `(size, C2SP note)`, smallest
    /// first.
    fn audit_notes(&mut self) -> Result<Vec<(i64, String)>, StoreError>;
    /// `user`'s API keys, revoked and expired ones included, oldest first.
    fn api_keys_of(&mut self, user: &UserName) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// A live-or-not web session by the hash of its cookie.
    fn session(&mut self, id_hash: &str) -> Result<Option<SessionRecord>, StoreError>;
    /// Groups taken from single sign-on, by user, replacing the config's.
    fn synced_groups(&mut self) -> Result<Vec<(UserName, Vec<GroupName>)>, StoreError>;
    /// Outbox messages, newest first, optionally only those in `status`.
    fn outbox_list(
        &mut self,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<OutboxMessage>, StoreError>;
    /// Chat messages posted about a request: `(channel, ts)` per provider.
    fn chat_messages(
        &mut self,
        request: &RequestId,
        provider: &str,
    ) -> Result<Vec<(String, String)>, StoreError>;
    /// A user's password hash, if one is set.
    fn password_hash(&mut self, user: &UserName) -> Result<Option<String>, StoreError>;
    /// A user's sealed TOTP secret, if they enrolled.
    fn totp_secret(&mut self, user: &UserName) -> Result<Option<String>, StoreError>;
    /// A user's WebAuthn credentials (a JSON list), if they registered any.
    fn webauthn_keys(&mut self, user: &UserName) -> Result<Option<String>, StoreError>;
    /// How many requests are in `status`.
    fn count_status(&mut self, status: RequestStatus) -> Result<i64, StoreError>;
    /// How many requests of `principal` are pending.
    fn count_pending(&mut self, principal: &UserName) -> Result<i64, StoreError>;
    /// Requests created by `principal` since `since`.
    fn count_requests_since(
        &mut self,
        principal: &UserName,
        since: DateTime<Utc>,
    ) -> Result<i64, StoreError>;
    /// The public key registered for a signing purpose (`grant`, `audit`),
    /// as PASERK: the deployment's key every node must hold.
    fn signing_key(&mut self, purpose: &str) -> Result<Option<String>, StoreError>;
    /// Whether `principal` was ever issued a grant for this action verb on
    /// this resource.
    fn granted_before(
        &mut self,
        principal: &UserName,
        action: &str,
        resource_type: &str,
        resource_id: &str,
    ) -> Result<bool, StoreError>;
}

/// Changes, inside one write transaction. Return `Err` from the closure
/// given to [`Store::write`] and everything it did is rolled back.
pub trait WriteTx: ReadTx {
    /// Appends to the audit chain; `ts` is the record's time.
    fn append_audit(
        &mut self,
        rec: NewAuditRecord,
        ts: DateTime<Utc>,
    ) -> Result<AuditRecord, StoreError>;
    /// Stores a new pending request.
    fn insert_request(&mut self, req: &Request) -> Result<(), StoreError>;
    /// Moves a request from `from` to `to`; false if it was not in `from`.
    fn set_status(
        &mut self,
        id: &RequestId,
        from: RequestStatus,
        to: RequestStatus,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Adds a review; false if this reviewer already reviewed.
    fn insert_review(&mut self, id: &RequestId, review: &Review) -> Result<bool, StoreError>;
    /// Replaces a reviewer's approval that passed the step-up `old` (none,
    /// or a weaker one) with `review`: an approval that passed a stronger
    /// one, or a deny; false if their stored approval no longer has `old`.
    /// A request raised to a step-up after someone approved would otherwise
    /// never count them again.
    fn strengthen_review(
        &mut self,
        id: &RequestId,
        old: Option<&str>,
        review: &Review,
    ) -> Result<bool, StoreError>;
    /// Replaces a pending request's requirement and policies with stricter
    /// ones; false (nothing changed) unless it is still pending.
    fn raise_requirement(
        &mut self,
        id: &RequestId,
        requirement: &airlock_core::Requirement,
        policies: &[String],
    ) -> Result<bool, StoreError>;
    /// Stores the grant of an approved request.
    fn insert_grant(
        &mut self,
        id: &RequestId,
        fp: &Fingerprint,
        grant: &GrantRecord,
    ) -> Result<(), StoreError>;
    /// Spends one use, if the grant is live: one conditional update, so of
    /// any number of racing consumers only the available uses succeed. A
    /// use spent `by_enforcer` (a proxy's key) leaves the grant's outcome
    /// for an enforcer to report.
    fn consume_grant(
        &mut self,
        id: &GrantId,
        now: DateTime<Utc>,
        by_enforcer: bool,
    ) -> Result<ConsumeOutcome, StoreError>;
    /// Records the outcome of one consumed use; false if every consumed
    /// use has reported already (or none was consumed) or it is closed.
    fn complete_grant(&mut self, id: &GrantId, outcome: &str) -> Result<bool, StoreError>;
    /// Marks the grant revoked.
    fn revoke_grant(&mut self, id: &GrantId) -> Result<(), StoreError>;
    /// A write that changes nothing, committed like any other: whether
    /// this node can record anything now (health).
    fn probe_write(&mut self) -> Result<(), StoreError>;
    /// Stores an API key (its hash only).
    fn insert_api_key(&mut self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    /// Marks an API key revoked at `at`, keeping its row.
    fn revoke_api_key(&mut self, id: &str, at: DateTime<Utc>) -> Result<KeyRevocation, StoreError>;
    /// Records that these keys were used at `at` (never moving a key's
    /// `last_used_at` back).
    fn touch_api_keys(&mut self, ids: &[String], at: DateTime<Utc>) -> Result<(), StoreError>;
    /// Sets a user's password hash (a PHC string; never the password) and
    /// ends every console session they have: a password is changed when
    /// the old one may be known, and a session it opened must not outlive it.
    fn set_password_hash(
        &mut self,
        user: &UserName,
        hash: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Sets a user's sealed TOTP secret (replacing an earlier enrolment).
    fn set_totp_secret(
        &mut self,
        user: &UserName,
        sealed: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Sets a user's WebAuthn credentials (the whole JSON list).
    fn set_webauthn_keys(
        &mut self,
        user: &UserName,
        passkeys: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Stores a signed checkpoint.
    fn insert_checkpoint(&mut self, cp: &Checkpoint) -> Result<(), StoreError>;
    /// Stores a signed checkpoint of the tree at `size`.
    fn insert_audit_note(&mut self, size: i64, note: &str) -> Result<(), StoreError>;
    /// Appends a witness's cosignature lines to the checkpoint at `size`
    /// (once: lines already there are not added again).
    fn cosign_audit_note(&mut self, size: i64, lines: &str) -> Result<(), StoreError>;
    /// Stores a new web session, dropping expired ones.
    fn insert_session(&mut self, s: &SessionRecord, now: DateTime<Utc>) -> Result<(), StoreError>;
    /// Records the groups single sign-on reported for a user.
    fn set_synced_groups(
        &mut self,
        user: &UserName,
        groups: &[GroupName],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Announces, once committed, that users' groups changed: every node
    /// rebuilds its directory.
    fn directory_changed(&mut self);
    /// Remembers a chat message posted about a request, to update it later.
    fn save_chat_message(
        &mut self,
        request: &RequestId,
        provider: &str,
        channel: &str,
        ts: &str,
    ) -> Result<(), StoreError>;
    /// Records an incoming interaction (a platform's id for a click);
    /// false if it was seen before, on any node: platforms retry.
    fn first_seen(&mut self, source: &str, id: &str, at: DateTime<Utc>)
        -> Result<bool, StoreError>;
    /// Adds a message to the outbox.
    fn enqueue(&mut self, msg: &OutboxMessage) -> Result<(), StoreError>;
    /// Takes up to `limit` due pending messages, oldest first, and leases
    /// them until `lease_until` (a node that dies mid-delivery lets the
    /// lease lapse, and another attempt follows).
    /// `claim` marks the rows as this attempt's, so only it can record
    /// their outcome. Messages whose receiver is in `busy` (being
    /// delivered to by this node now) are left for later, so one slow
    /// receiver holds up its own messages only. A receiver is the target,
    /// except that every `slack:…` target is `slack` and every
    /// `discord:…` one `discord` (a message's update must not overtake
    /// its post); see [`receiver_of`].
    fn claim_outbox(
        &mut self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
        claim: &str,
        busy: &[String],
    ) -> Result<Vec<OutboxMessage>, StoreError>;
    /// The receiver accepted it; false if the claim was lost (the lease
    /// lapsed and another attempt took the message over).
    fn outbox_delivered(
        &mut self,
        id: &str,
        at: DateTime<Utc>,
        claim: &str,
    ) -> Result<bool, StoreError>;
    /// An attempt failed: try again at `next`, or give up (`failed`);
    /// false if the claim was lost.
    fn outbox_attempt_failed(
        &mut self,
        id: &str,
        error: &str,
        next: DateTime<Utc>,
        give_up: bool,
        claim: &str,
    ) -> Result<bool, StoreError>;
    /// Puts a failed message back in line; false if it was not failed.
    fn outbox_retry(&mut self, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError>;
    /// Ends a web session; false if there was none.
    fn delete_session(&mut self, id_hash: &str) -> Result<bool, StoreError>;
    /// Registers the public key of a signing purpose (first node to start).
    /// Registers `public` as the deployment's `purpose` key, replacing
    /// the one registered (a rotation).
    fn replace_signing_key(
        &mut self,
        purpose: &str,
        public: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    fn insert_signing_key(
        &mut self,
        purpose: &str,
        public: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Announces that this request changed, once the transaction commits:
    /// to waiters in this process and, on a shared store, on every node.
    /// Dropped if the job rolls back, so nobody is woken for nothing.
    fn changed(&mut self, id: RequestId);
}

/// What the store tells the service after commits, its own and other
/// nodes'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreEvent {
    /// A request (or its reviews or grant) changed.
    Changed {
        /// Which request.
        id: RequestId,
        /// Whether another node made the change.
        remote: bool,
    },
    /// Events from other nodes may have been missed (the listening
    /// connection was re-established): re-read whatever you wait on.
    Resync,
    /// Users' groups changed (single sign-on reported new ones).
    DirectoryChanged,
}

/// Whether another runtime worker keeps serving while this thread would
/// commit a write itself. On a runtime of one worker (a host or container
/// with one CPU) every other request waits behind that commit, then finds
/// the writer idle again and commits alone too: writes were never batched
/// again, and 64 connections made 3k checks/s where batching made 8k.
fn others_serve() -> bool {
    tokio::runtime::Handle::try_current().is_ok_and(|h| h.metrics().num_workers() > 1)
}

/// What the writer runs: a closure over a write transaction (or the reason
/// there is none), answering whether to keep its changes and with a
/// continuation that receives the commit's result; and whether it needs a
/// savepoint.
pub struct Job {
    run: JobFn,
    /// Whether the job runs in a savepoint of its own, so that it can fail
    /// and roll back alone. A job without one (an audit append, which fails
    /// only when the database does) costs a round trip less on PostgreSQL;
    /// if it fails, the whole batch fails with it.
    savepoint: bool,
    /// Whether it may run on the caller's thread when the writer is idle
    /// (SQLite). Not the health probe: a disk that hangs must leave
    /// `/healthz` able to time out and answer.
    here: bool,
}
/// A [`Job`]'s work.
type JobFn = Box<dyn FnOnce(Result<&mut dyn WriteTx, StoreError>) -> (bool, Reply) + Send>;
/// Called once the batch holding a job committed (or failed to).
pub type Reply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// What a reader runs: a closure over a read transaction, or the reason
/// there is none.
pub type ReadJob = Box<dyn FnOnce(Result<&mut dyn ReadTx, StoreError>) + Send>;

/// A storage backend: a batched writer and a pool of readers.
pub trait Backend: Send + Sync + 'static {
    /// Queues a write job.
    fn submit(&self, job: Job) -> Result<(), StoreError>;
    /// Runs a read job on a blocking thread.
    fn read(&self, job: ReadJob) -> Result<(), StoreError>;
    /// Runs a read job that makes one query, so needs no snapshot held
    /// across queries: a backend may skip the explicit transaction.
    fn read_single(&self, job: ReadJob) -> Result<(), StoreError> {
        self.read(job)
    }
    /// The API key with this hash, looked up without leaving the async
    /// runtime, where the backend can; `None` sends the lookup through
    /// [`Backend::read_single`].
    fn api_key_by_hash(&self, _hash: String) -> Option<KeyLookup> {
        None
    }
    /// API keys this process may answer for from memory; `None` where
    /// every lookup asks the database (several nodes on PostgreSQL, which
    /// cannot hear another node's revocation before its next lookup).
    fn key_cache(&self) -> Option<&KeyCache> {
        None
    }
    /// `sqlite` or `postgres`.
    fn kind(&self) -> &'static str;
}

/// An API key lookup under way (see [`Backend::api_key_by_hash`]).
pub type KeyLookup = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Option<ApiKeyRecord>, StoreError>> + Send>,
>;

/// The store the service uses: cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    events: EventSender,
    /// Reads running at once. Each runs on a blocking thread with a
    /// connection of its own: a thousand long-polls re-reading at the same
    /// moment would otherwise start hundreds of threads and connections.
    reads: Arc<tokio::sync::Semaphore>,
    /// The writer's last failure to commit, until an audit append commits
    /// (see [`Store::recent_write_failure`]).
    write_failure: Arc<WriteFailure>,
}

/// When and why the writer last failed to commit. Read through a poisoned
/// lock: what it holds is a plain value, and losing it would report a
/// failing node healthy.
#[derive(Debug, Default)]
struct WriteFailure(std::sync::Mutex<Option<(std::time::Instant, StoreError)>>);

impl WriteFailure {
    fn last(&self) -> std::sync::MutexGuard<'_, Option<(std::time::Instant, StoreError)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn failed(&self, e: &StoreError) {
        *self.last() = Some((std::time::Instant::now(), e.clone()));
    }
}

/// How many reads run at once, per node, on either backend: more than the
/// cores, so a slow read does not hold the others up, few enough to keep
/// threads and connections (and their memory) bounded; on PostgreSQL, so
/// a burst of requests cannot exhaust the server's `max_connections` for
/// every node.
const MAX_CONCURRENT_READS: usize = 8;
/// How long a read waits for a turn before failing (503, never an answer).
const READ_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend.kind())
            .finish()
    }
}

impl Store {
    /// Opens the store named by a URL: `sqlite://PATH` (relative to
    /// `base`) or `postgres://…` / `postgresql://…`, migrating its schema.
    /// Blocks while it connects: call it at start-up.
    pub fn open(url: &str, base: &std::path::Path) -> Result<Self, StoreError> {
        Self::open_waiting(url, base, sqlite::BUSY_TIMEOUT)
    }

    /// [`Store::open`] for a one-shot command beside a running server: on
    /// SQLite it waits its turn for the write lock for seconds, not half a
    /// second, so `airlock keys revoke` does not fail because the server is
    /// busy.
    pub fn open_for_tool(url: &str, base: &std::path::Path) -> Result<Self, StoreError> {
        Self::open_waiting(url, base, sqlite::TOOL_BUSY_TIMEOUT)
    }

    fn open_waiting(
        url: &str,
        base: &std::path::Path,
        busy: std::time::Duration,
    ) -> Result<Self, StoreError> {
        let events = EventSender::default();
        let backend: Arc<dyn Backend> = match Location::parse(url, base)? {
            Location::Sqlite(path) => Arc::new(SqliteBackend::open(&path, events.clone(), busy)?),
            Location::Postgres(url) => Arc::new(PostgresBackend::open(&url, events.clone())?),
        };
        Ok(Self {
            backend,
            events,
            reads: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_READS)),
            write_failure: Arc::default(),
        })
    }

    /// Waiters subscribe here to hear of committed changes.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    /// One request's changes from now on (see [`EventSender::watch`]): a
    /// long-poll wakes for its own request only.
    pub fn watch(&self, id: RequestId) -> Watch {
        self.events.watch(id)
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        self.backend.kind()
    }

    /// Runs `f` in a write transaction and returns once it is committed.
    /// If `f` fails, its changes are rolled back and its error returned; if
    /// the commit fails, the commit's error is returned: nothing the caller
    /// sees as done can be lost.
    pub async fn write<R, E>(
        &self,
        f: impl FnOnce(&mut dyn WriteTx) -> Result<R, E> + Send + 'static,
    ) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        self.submit(f, true, false, true).await
    }

    /// Commits a write that changes nothing (`/healthz`). Its failure is
    /// remembered as any write's; its success clears nothing, since a
    /// one-page write can fit where the records of a decision do not (a
    /// nearly full disk).
    pub async fn probe_write(&self) -> Result<(), StoreError> {
        self.submit(|tx| tx.probe_write(), true, false, false).await
    }

    /// Why the writer last failed to commit, if that was within `within`
    /// and no [`Store::append_audit`] (the decisions' path) committed
    /// since: a node whose decisions are being refused is not healthy,
    /// even when a smaller write goes through.
    pub fn recent_write_failure(&self, within: std::time::Duration) -> Option<StoreError> {
        match &*self.write_failure.last() {
            Some((at, e)) if at.elapsed() <= within => Some(e.clone()),
            _ => None,
        }
    }

    /// Appends `rec` to the audit chain, in the writer's next batch; the
    /// record once it is committed. Cheaper than the same append through
    /// [`Store::write`]: it needs no savepoint of its own, since it can only
    /// fail when the database does.
    pub async fn append_audit(
        &self,
        rec: NewAuditRecord,
        ts: DateTime<Utc>,
    ) -> Result<AuditRecord, StoreError> {
        self.submit(move |tx| tx.append_audit(rec, ts), false, true, true)
            .await
    }

    /// Queues `f` for the writer; see [`Job`]. A batch that failed to
    /// commit is remembered for [`Store::recent_write_failure`], and
    /// forgotten when one committed a job that `proves_health`.
    async fn submit<R, E>(
        &self,
        f: impl FnOnce(&mut dyn WriteTx) -> Result<R, E> + Send + 'static,
        savepoint: bool,
        proves_health: bool,
        here: bool,
    ) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let failure = self.write_failure.clone();
        let note = move |commit: &Result<(), StoreError>| match commit {
            Err(e) => failure.failed(e),
            Ok(()) if proves_health => *failure.last() = None,
            Ok(()) => {}
        };
        let run = Box::new(move |wtx: Result<&mut dyn WriteTx, StoreError>| {
            let result = match wtx {
                Ok(wtx) => f(wtx),
                Err(e) => Err(E::from(e)),
            };
            let keep = result.is_ok();
            let reply: Reply = Box::new(move |commit| {
                note(&commit);
                let out = match (result, commit) {
                    (Ok(v), Ok(())) => Ok(v),
                    (Err(e), _) => Err(e),
                    (Ok(_), Err(ce)) => Err(E::from(ce)),
                };
                let _ = tx.send(out);
            });
            (keep, reply)
        });
        if let Err(e) = self.backend.submit(Job {
            run,
            savepoint,
            here: here && others_serve(),
        }) {
            self.write_failure.failed(&e);
            return Err(E::from(e));
        }
        rx.await
            .unwrap_or_else(|_| Err(E::from(StoreError::WriterGone)))
    }

    /// Runs `f` in a read transaction on a blocking thread.
    pub async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn ReadTx) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.read_with(|b, job| b.read(job), f).await
    }

    /// Like [`Store::read`], for an `f` that makes exactly one query (a
    /// user's keys, say): on PostgreSQL it runs without
    /// an explicit transaction, one round trip instead of three; on SQLite
    /// on the calling thread, with no hand-off to a blocking thread and
    /// back. Several queries in `f` would each see their own snapshot.
    pub async fn read_single<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn ReadTx) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.read_with(|b, job| b.read_single(job), f).await
    }

    /// The API key with this hash (what authentication asks on every
    /// request): on SQLite from memory while no process revoked a key
    /// (see [`KeyCache`]); on PostgreSQL one prepared query on an async
    /// connection, on the caller's task; elsewhere as
    /// [`Store::read_single`].
    pub async fn api_key_by_hash(&self, hash: String) -> Result<Option<ApiKeyRecord>, StoreError> {
        let cache = self.backend.key_cache();
        let ticket = match cache.map(|c| c.get(&hash)) {
            Some(Lookup::Hit(record)) => return Ok(Some(record)),
            Some(Lookup::Miss(ticket)) => Some(ticket),
            None => None,
        };
        let found = {
            let _turn = self.read_turn().await?;
            match self.backend.api_key_by_hash(hash.clone()) {
                Some(lookup) => lookup.await?,
                None => {
                    self.read_now(
                        |b, job| b.read_single(job),
                        move |r| r.api_key_by_hash(&hash),
                    )
                    .await?
                }
            }
        };
        if let (Some(cache), Some(ticket), Some(record)) = (cache, ticket, &found) {
            cache.keep(ticket, record);
        }
        Ok(found)
    }

    /// One of the read turns, waiting at most [`READ_WAIT`]. Held until
    /// the read answers. Too long a wait is an error (503), never an
    /// answer; the semaphore is never closed.
    async fn read_turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, StoreError> {
        tokio::time::timeout(READ_WAIT, self.reads.acquire())
            .await
            .map_err(|_| StoreError::Db("too many reads at once on this node".into()))?
            .map_err(|_| StoreError::WriterGone)
    }

    /// Takes one of the read turns, then hands `f` to the backend with
    /// `start` and waits for its answer.
    async fn read_with<R: Send + 'static>(
        &self,
        start: impl FnOnce(&dyn Backend, ReadJob) -> Result<(), StoreError>,
        f: impl FnOnce(&mut dyn ReadTx) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let _turn = self.read_turn().await?;
        self.read_now(start, f).await
    }

    /// Hands `f` to the backend with `start` (the caller holds a read
    /// turn) and waits for its answer.
    async fn read_now<R: Send + 'static>(
        &self,
        start: impl FnOnce(&dyn Backend, ReadJob) -> Result<(), StoreError>,
        f: impl FnOnce(&mut dyn ReadTx) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        start(
            self.backend.as_ref(),
            Box::new(move |r| {
                let _ = tx.send(r.and_then(f));
            }),
        )?;
        rx.await.unwrap_or(Err(StoreError::WriterGone))
    }
}

/// A parsed storage URL.
#[derive(Debug)]
enum Location {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl Location {
    fn parse(url: &str, base: &std::path::Path) -> Result<Self, StoreError> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            return Ok(Location::Sqlite(base.join(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Location::Postgres(url.to_owned()));
        }
        Err(StoreError::Unsupported(format!(
            "storage url {url:?}: expected sqlite://PATH or postgres://USER@HOST/DATABASE"
        )))
    }
}

#[cfg(test)]
mod tests;

/// The receiver an outbox target is delivered to, as `claim_outbox`'s
/// `busy` names it: every Slack target is one receiver (`slack`), every
/// Discord one `discord`, anything else the target itself. The stores'
/// claim queries say the same in SQL.
pub fn receiver_of(target: &str) -> &str {
    if target.starts_with("slack:") {
        "slack"
    } else if target.starts_with("discord:") {
        "discord"
    } else {
        target
    }
}
