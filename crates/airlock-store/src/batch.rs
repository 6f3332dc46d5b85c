//! The group commit both backends share: a batch of jobs in one
//! transaction, each job in a savepoint so a failing one rolls back alone
//! (but plain audit appends, which can only fail with the whole batch),
//! one commit, then every caller answered with the commit's result.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, Sender};

use airlock_core::{ChainHash, RequestId};

use crate::{EventSender, Job, Reply, StoreError, StoreEvent, WriteTx};

/// Jobs per transaction at most: large enough to amortise the commit's
/// fsync (and, on PostgreSQL, the write lock), small enough that one slow
/// batch does not stall callers for long.
pub(crate) const MAX_BATCH: usize = 512;

/// What a batch announces once it commits.
#[derive(Debug, Default)]
pub(crate) struct Announced {
    /// Requests it changed.
    pub(crate) requests: Vec<RequestId>,
    /// Whether users' groups changed.
    pub(crate) directory: bool,
}

/// What a batch's jobs carry from one to the next and, once it commits,
/// announce.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// The chain head as of the batch's last append, read inside the write
    /// lock by the first append, so later appends skip the read. `None`
    /// means "read it".
    pub(crate) head: Option<(i64, ChainHash)>,
    /// The Merkle tree's frontier as of the batch's last append (as
    /// `head`: read by the first append, kept after).
    pub(crate) frontier: Option<Vec<(u32, u64, airlock_core::merkle::Hash)>>,
    /// What the batch changed.
    pub(crate) announced: Announced,
    /// The chain as this writer last committed it (see [`Chain`]).
    pub(crate) known: Chain,
}

/// The chain as a writer last committed it: its head `(seq, hash)` and the
/// Merkle frontier at that head, kept from one batch to the next. A batch's
/// first append still reads the head under the write lock, and takes this
/// frontier only when that head is the one kept; after another node's or
/// process's appends it reads the frontier again. Equal heads mean equal
/// logs (each hash covers all before it), so equal trees.
pub(crate) type Chain = Option<(
    (i64, ChainHash),
    Vec<(u32, u64, airlock_core::merkle::Hash)>,
)>;

impl Announced {
    /// Tells this process's waiters, once the batch committed.
    pub(crate) fn send_here(self, events: &EventSender) {
        for id in self.requests {
            events.send(StoreEvent::Changed { id, remote: false });
        }
        if self.directory {
            events.send(StoreEvent::DirectoryChanged);
        }
    }
}

/// What the batch runner needs from a backend's connection, once the
/// backend has begun a write transaction on it.
pub(crate) trait BatchConn {
    /// Runs statements with no result (savepoints, COMMIT, ROLLBACK).
    fn exec(&mut self, sql: &str) -> Result<(), StoreError>;
    /// Runs `f` over this connection's [`WriteTx`], which links audit
    /// appends to `effects.head` and records announced changes in
    /// `effects.announced`.
    fn with_tx<R>(&mut self, effects: &mut Effects, f: impl FnOnce(&mut dyn WriteTx) -> R) -> R;
    /// Sends what the connection holds back (PostgreSQL stages audit
    /// appends to send them together); before a job's savepoint, so a
    /// rollback to it cannot undo earlier jobs' appends.
    fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Drops what the connection holds back: the job that made it rolled
    /// back, or the batch ended.
    fn discard_staged(&mut self) {}
    /// Last words before COMMIT (PostgreSQL sends its staged appends and
    /// queues its notifications).
    fn before_commit(&mut self, _changed: &Announced) -> Result<(), StoreError> {
        Ok(())
    }
    /// The transaction is over, committed or rolled back; called before
    /// any job is answered, so a caller that goes on after its write sees
    /// what ending it changed (SQLite's key revocations end here).
    fn ended(&mut self) {}
}

/// The writer's queue, as the store's callers see it. `Sender` is `Sync`
/// (since Rust 1.72), so callers on every worker send without a lock of
/// their own: a lock here was taken by every write and contended at 64
/// connections.
pub(crate) struct Queue(Sender<Job>);

impl Queue {
    pub(crate) fn new(tx: Sender<Job>) -> Self {
        Self(tx)
    }

    /// Queues a job; fails if the writer thread is gone.
    pub(crate) fn submit(&self, job: Job) -> Result<(), StoreError> {
        self.0.send(job).map_err(|_| StoreError::WriterGone)
    }
}

/// Takes the next batch: blocks for one job, then takes what else is queued.
pub(crate) fn next_batch(rx: &Receiver<Job>) -> Option<Vec<Job>> {
    let first = rx.recv().ok()?;
    let mut batch = vec![first];
    fill(rx, &mut batch);
    Some(batch)
}

/// Takes what is queued, up to a batch, without waiting: empty when
/// nothing is.
pub(crate) fn take_queued(rx: &Receiver<Job>) -> Vec<Job> {
    let mut batch = Vec::new();
    fill(rx, &mut batch);
    batch
}

/// Adds what is queued to `batch`, up to [`MAX_BATCH`], without waiting.
fn fill(rx: &Receiver<Job>, batch: &mut Vec<Job>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

/// Runs `f` on the runtime's blocking threads: reads block on their
/// database.
pub(crate) fn blocking(f: impl FnOnce() + Send + 'static) -> Result<(), StoreError> {
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| StoreError::Db("read outside a runtime".into()))?;
    handle.spawn_blocking(f);
    Ok(())
}

/// Answers every job with `e` without running it.
pub(crate) fn fail_all(batch: Vec<Job>, e: &StoreError) {
    for job in batch {
        let (_, reply) = (job.run)(Err(e.clone()));
        reply(Err(e.clone()));
    }
}

/// Runs a batch in the transaction the caller began on `conn`, ends it,
/// and answers every job. Returns what it changed if it committed.
pub(crate) fn run(conn: &mut impl BatchConn, batch: Vec<Job>, chain: &mut Chain) -> Announced {
    // One job needs no savepoint: if it fails, the whole transaction goes.
    let savepoints = batch.len() > 1;
    let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
    let mut broken: Option<StoreError> = None;
    let mut rolled_back = false;
    let mut effects = Effects {
        known: chain.take(),
        ..Effects::default()
    };
    // How the previous job's savepoint ends, sent together with the next
    // job's SAVEPOINT (or before COMMIT): one round trip fewer per job on
    // a networked database.
    let mut pending_end: Option<&'static str> = None;
    for job in batch {
        if let Some(e) = &broken {
            // The transaction is unusable; answer without running.
            let (_, reply) = (job.run)(Err(e.clone()));
            replies.push(reply);
            continue;
        }
        // A job without a savepoint runs inside the one still open (the
        // previous job's, released later) or the transaction itself.
        let savepoint = savepoints && job.savepoint;
        if savepoint {
            if let Err(e) = conn.flush() {
                broken = Some(e.clone());
                let (_, reply) = (job.run)(Err(e));
                replies.push(reply);
                continue;
            }
            let start = match pending_end.take() {
                Some(end) => format!("{end}; SAVEPOINT job"),
                None => "SAVEPOINT job".to_owned(),
            };
            if let Err(e) = conn.exec(&start) {
                broken = Some(e.clone());
                let (_, reply) = (job.run)(Err(e));
                replies.push(reply);
                continue;
            }
        }
        let before = effects.head;
        let frontier_before = effects.frontier.clone();
        let announced = (
            effects.announced.requests.len(),
            effects.announced.directory,
        );
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            conn.with_tx(&mut effects, |tx| (job.run)(Ok(tx)))
        }));
        let keep = matches!(&outcome, Ok((true, _)));
        if !keep {
            // Appends it staged and never sent go with it (what it sent
            // goes with its savepoint).
            conn.discard_staged();
            // The job's appends are undone; so is what it did to the head
            // and what it would have announced.
            effects.head = before;
            effects.frontier = frontier_before;
            effects.announced.requests.truncate(announced.0);
            effects.announced.directory = announced.1;
        }
        let end = match (savepoints, savepoint, keep) {
            (true, true, true) => {
                pending_end = Some("RELEASE SAVEPOINT job");
                Ok(())
            }
            // Undone now: the job's statements must not stay in effect
            // while the next one runs.
            (true, true, false) => conn.exec("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job"),
            (true, false, true) | (false, _, true) => Ok(()),
            // Nothing can undo this job alone: the batch fails, every job
            // in it is answered with an error, nothing is committed.
            (true, false, false) => Err(StoreError::Db(
                "a write in this batch failed, so none of the batch was committed".into(),
            )),
            (false, _, false) => {
                rolled_back = true;
                conn.exec("ROLLBACK")
            }
        };
        if let Err(e) = end {
            broken = Some(e);
        }
        match outcome {
            Ok((_, reply)) => replies.push(reply),
            Err(_) => tracing::error!("a storage job panicked; its changes were rolled back"),
        }
    }
    let result = if rolled_back {
        // The one job failed and gets its own error; nothing to commit.
        Ok(())
    } else {
        match broken {
            Some(e) => Err(e),
            None => pending_end
                .map_or(Ok(()), |end| conn.exec(end))
                .and_then(|()| conn.before_commit(&effects.announced))
                .and_then(|()| conn.exec("COMMIT")),
        }
    };
    conn.discard_staged();
    // Kept only as committed: after a failed commit the next batch reads
    // the chain afresh.
    if result.is_ok() {
        *chain = match (effects.head, effects.frontier.take()) {
            (Some(head), Some(frontier)) if !rolled_back => Some((head, frontier)),
            _ => effects.known.take(),
        };
    }
    if let Err(e) = &result {
        let _ = conn.exec("ROLLBACK");
        tracing::error!(error = %e, "storage batch failed; nothing in it was committed");
    }
    conn.ended();
    for reply in replies {
        reply(result.clone());
    }
    if result.is_ok() && !rolled_back {
        effects.announced
    } else {
        Announced::default()
    }
}
