//! What runs beside the request handlers: expiry timers, signed audit
//! checkpoints, policy reloads on SIGHUP and on file change, and the
//! outbox worker (`airlock_notify::run`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use airlock_core::{merkle, AuditKind, NewAuditRecord, RequestId, RequestStatus};
use airlock_keys::{Keyring, TreeHead};
use airlock_policy::PolicyEngine;
use airlock_store::time::{fmt, now};
use airlock_store::{StoreError, StoreEvent};
use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::service::{Airlock, Background, Loaded};
use crate::witness;

/// Starts every background task.
pub fn spawn(airlock: &Arc<Airlock>, bg: Background) {
    tokio::spawn(run_timers(airlock.clone(), bg.timers));
    tokio::spawn(run_checkpoints(airlock.clone()));
    tokio::spawn(run_sighup(airlock.clone()));
    tokio::spawn(run_directory_changes(airlock.clone()));
    tokio::spawn(airlock_notify::run(airlock.clone()));
    if airlock.config.load().policy.watch {
        spawn_watcher(airlock.clone());
    }
}

/// Expires requests and grants at their deadlines: a heap of deadlines and
/// one sleep until the earliest, so nothing polls. Every node arms a timer
/// for every request, including those made on other nodes (it hears of them
/// from the store), so expiry happens while any node runs; it happens once
/// because expiring is a conditional change under the store's write lock.
async fn run_timers(
    airlock: Arc<Airlock>,
    mut rx: mpsc::UnboundedReceiver<(DateTime<Utc>, RequestId)>,
) {
    let mut heap: BinaryHeap<Reverse<(DateTime<Utc>, RequestId)>> = BinaryHeap::new();
    let mut armed: HashSet<(DateTime<Utc>, RequestId)> = HashSet::new();
    let mut events = airlock.store.subscribe();
    // Several sources may announce one deadline; arm it once.
    fn arm(
        heap: &mut BinaryHeap<Reverse<(DateTime<Utc>, RequestId)>>,
        armed: &mut HashSet<(DateTime<Utc>, RequestId)>,
        entry: (DateTime<Utc>, RequestId),
    ) {
        if armed.insert(entry) {
            heap.push(Reverse(entry));
        }
    }
    loop {
        let next = heap.peek().map(|Reverse((at, _))| *at);
        let sleep = match next {
            Some(at) => (at - Utc::now()).to_std().unwrap_or(Duration::ZERO),
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(entry) => arm(&mut heap, &mut armed, entry),
                None => return,
            },
            ev = events.recv() => {
                for entry in deadlines_after(&airlock, ev).await {
                    arm(&mut heap, &mut armed, entry);
                }
            }
            _ = tokio::time::sleep(sleep) => {
                while let Some(Reverse((at, id))) = heap.peek().copied() {
                    if at > Utc::now() {
                        break;
                    }
                    heap.pop();
                    if let Err(e) = airlock.expire(id).await {
                        tracing::error!(request = %id, error = %e, "expiry failed; retrying in 1s");
                        heap.push(Reverse((Utc::now() + chrono::Duration::seconds(1), id)));
                        break;
                    }
                }
                armed.retain(|(at, _)| *at > Utc::now() - chrono::Duration::seconds(5));
            }
        }
    }
}

/// The deadlines a store event brings: another node's request, or after a
/// gap, everything still waiting.
async fn deadlines_after(
    airlock: &Airlock,
    ev: Result<StoreEvent, RecvError>,
) -> Vec<(DateTime<Utc>, RequestId)> {
    let result = match ev {
        Ok(StoreEvent::Changed { id, remote: true }) => airlock
            .store
            .read(move |r| {
                let req = r.get_request(&id)?;
                Ok(req.and_then(|req| match (req.status, &req.grant) {
                    (RequestStatus::Pending, _) => Some((req.expires_at, id)),
                    (RequestStatus::Approved, Some(g)) => Some((g.expires_at, id)),
                    _ => None,
                }))
            })
            .await
            .map(|d| d.into_iter().collect()),
        Ok(StoreEvent::Resync) | Err(RecvError::Lagged(_)) => airlock
            .store
            .read(|r| r.pending_expiries())
            .await
            .map(|v| v.into_iter().map(|(id, at)| (at, id)).collect()),
        Ok(StoreEvent::Changed { .. }) | Ok(StoreEvent::DirectoryChanged) => Ok(Vec::new()),
        Err(RecvError::Closed) => {
            // Cannot happen while the store lives; do not spin if it does.
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(Vec::new())
        }
    };
    result.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read deadlines; they are re-read after the next gap");
        Vec::new()
    })
}

async fn run_checkpoints(airlock: Arc<Airlock>) {
    let every = Duration::from_secs(
        airlock
            .config
            .load()
            .audit
            .checkpoint_interval_seconds
            .max(1),
    );
    let mut last = -1;
    loop {
        tokio::time::sleep(every).await;
        match checkpoint(&airlock).await {
            Ok(seq) if seq != last => last = seq,
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "audit checkpoint failed"),
        }
    }
}

/// Signs the current chain head and the Merkle tree of the log, stores
/// both checkpoints, and writes the tree's note to every witness folder.
/// Returns the head's seq.
pub async fn checkpoint(airlock: &Airlock) -> Result<i64, StoreError> {
    let keys = airlock.keys.clone();
    let config = airlock.config.load();
    let origin = config.audit_origin();
    // Every key this log signed with: after a rotation, the newest notes
    // are the retired key's.
    let mut known = vec![keys.public().audit];
    if let Ok(all) = Keyring::audit_keys(&config.data_dir().join("keys")) {
        known.extend(all.into_iter().filter(|k| *k != keys.public().audit));
    }
    // What this log signed before, as the witness folders keep it (the
    // database's owner cannot rewrite them): the tree must still extend it.
    // A newest note that opens with none of its keys stops the signing
    // rather than switch the check off.
    let mut signed: Vec<(String, TreeHead)> = Vec::new();
    for dir in config.witness_dirs() {
        match witness::newest(&dir, &origin) {
            // Every note of the file (a witness may append them to one).
            Ok(Some(text)) => {
                for note in witness::notes_in(&text) {
                    match airlock_keys::open_note_any(&note, &known) {
                        Ok(head) => {
                            signed.push((format!("the witness folder {}", dir.display()), head));
                        }
                        Err(e) => {
                            return Err(StoreError::Corrupt(format!(
                                "the newest checkpoint file in the witness folder {} holds a note \
                                 that does not open with this log's keys ({e}); no checkpoint is \
                                 signed until it is looked into",
                                dir.display()
                            )))
                        }
                    }
                }
            }
            Ok(None) => {}
            // Unread, the folder checks nothing: signing waits for it, as
            // for a note that does not open.
            Err(e) => {
                return Err(StoreError::Corrupt(format!(
                "the witness folder {} cannot be read ({e}); no checkpoint is signed until it can",
                dir.display()
            )))
            }
        }
    }
    drop(config);
    let store_keys = known.clone();
    let (seq, note) = airlock
        .store
        .write(move |tx| {
            let (seq, hash) = tx.audit_head()?;
            if seq == 0 {
                return Ok::<_, StoreError>((0, None));
            }
            if tx.checkpoints()?.last().is_none_or(|c| c.seq != seq) {
                let cp = keys.sign_checkpoint(seq, hash, fmt(now()));
                tx.insert_checkpoint(&cp)?;
            }
            let size = tx.audit_tree_size()?;
            let last = tx.audit_notes()?.last().map_or(0, |(s, _)| *s);
            let size_i = i64::try_from(size).unwrap_or(i64::MAX);
            if size == 0 || size_i <= last {
                return Ok((seq, None));
            }
            // Never sign a tree that does not extend one signed before
            // (its records rewritten, removed or rolled back): that would
            // put the log's key under two histories.
            // (The store is the database's owner's to rewrite: its note is
            // a check when it opens, not the anchor the witnesses are.)
            if let Some((_, note)) = tx.audit_notes()?.last() {
                match airlock_keys::open_note_any(note, &store_keys) {
                    Ok(head) => signed.push(("the store".to_owned(), head)),
                    Err(e) => tracing::warn!(error = %e, "the newest checkpoint in the store does not open with this node's audit keys"),
                }
            }
            for (place, head) in &signed {
                let root_then = if head.size > size {
                    None
                } else {
                    let mut nodes = |l: u32, i: u64| tx.audit_tree_node(l, i).ok().flatten();
                    merkle::root(&mut nodes, head.size).ok()
                };
                if root_then != Some(head.root) {
                    return Err(StoreError::Corrupt(format!(
                        "the audit log of {size} records does not extend the checkpoint of {} \
                         records this log signed (kept in {place}): records were changed, removed \
                         or rolled back; no checkpoint is signed until `airlock audit verify` is \
                         run and the log restored",
                        head.size
                    )));
                }
            }
            let root = {
                let mut nodes = |l: u32, i: u64| tx.audit_tree_node(l, i).ok().flatten();
                merkle::root(&mut nodes, size)
                    .map_err(|e| StoreError::Corrupt(format!("audit tree: {e}")))?
            };
            let note = keys.sign_note(&TreeHead {
                origin: origin.clone(),
                size,
                root,
            });
            tx.insert_audit_note(size_i, &note)?;
            Ok((seq, Some((origin, size, note))))
        })
        .await?;
    // Bounded: a witness that hangs must not hold up the next checkpoint
    // or a shutdown; what it missed goes at the next interval.
    let _ = tokio::time::timeout(WITNESS_ROUND, send_to_witnesses(airlock)).await;
    if let Some((origin, size, note)) = note {
        for dir in airlock.config.load().witness_dirs() {
            if let Err(e) = witness::write(&dir, &origin, size, &note) {
                // A witness folder out of reach never blocks the log: the
                // note is in the store, and the next checkpoint writes the
                // newest one (which proves everything before it).
                tracing::warn!(dir = %dir.display(), error = %e, "could not write a checkpoint to a witness folder");
            }
        }
    }
    Ok(seq)
}

/// The longest one round of sending checkpoints to witnesses may take.
const WITNESS_ROUND: Duration = Duration::from_secs(5);

/// Brings every C2SP witness up to the newest tree checkpoint, with the
/// consistency proof from what it last acknowledged. A witness that is
/// down or refuses is logged and tried again at the next interval; the log
/// never waits for it.
async fn send_to_witnesses(airlock: &Airlock) {
    let urls = airlock.config.load().audit.witness_url.clone();
    if urls.is_empty() {
        return;
    }
    let latest = match airlock.store.read(|r| r.audit_notes()).await {
        Ok(notes) => notes.into_iter().last(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the newest checkpoint for the witnesses");
            return;
        }
    };
    let Some((size, note)) = latest else { return };
    let size = u64::try_from(size).unwrap_or(0);
    let http = reqwest::Client::new();
    for url in urls {
        if airlock.witnessed.size(&url) == size {
            continue;
        }
        match witness::send(&http, &airlock.witnessed, &url, size, &note, &airlock.store).await {
            Ok(body) => {
                tracing::info!(%url, size, "witness cosigned the audit checkpoint");
                // Its cosignature lines join the stored note (C2SP notes
                // carry any number of signatures; verifiers skip the ones
                // they do not know).
                let lines: String = body
                    .lines()
                    .filter(|l| l.starts_with("\u{2014} "))
                    .map(|l| format!("{l}\n"))
                    .collect();
                if !lines.is_empty() {
                    let size = i64::try_from(size).unwrap_or(i64::MAX);
                    let stored = airlock
                        .store
                        .write(move |tx| tx.cosign_audit_note(size, &lines))
                        .await;
                    if let Err(e) = stored {
                        tracing::warn!(error = %e, "could not keep a witness's cosignature");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(%url, size, error = %e, "a witness did not take the audit checkpoint")
            }
        }
    }
}

/// Rebuilds the directory (and the policy entities built from it) when
/// single sign-on reported new groups, on this node or another.
async fn run_directory_changes(airlock: Arc<Airlock>) {
    let mut events = airlock.store.subscribe();
    loop {
        match events.recv().await {
            Ok(StoreEvent::DirectoryChanged) | Ok(StoreEvent::Resync) => {
                reload(&airlock, "groups_synced", false).await;
            }
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => reload(&airlock, "groups_synced", false).await,
            Err(RecvError::Closed) => return,
        }
    }
}

async fn run_sighup(airlock: Arc<Airlock>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP");
            return;
        };
        while hup.recv().await.is_some() {
            reload(&airlock, "sighup", true).await;
        }
    }
    #[cfg(not(unix))]
    let _ = airlock;
}

fn spawn_watcher(airlock: Arc<Airlock>) {
    use notify::{RecursiveMode, Watcher};
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if !ev.kind.is_access() {
                let _ = tx.send(());
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the policy folder; reload with SIGHUP");
            return;
        }
    };
    let dir = airlock.policy_dir();
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the policy folder; reload with SIGHUP");
        return;
    }
    tokio::spawn(async move {
        let _keep = watcher;
        while rx.recv().await.is_some() {
            // Editors write in bursts; settle, then load once.
            tokio::time::sleep(Duration::from_millis(200)).await;
            while rx.try_recv().is_ok() {}
            reload(&airlock, "file_change", false).await;
        }
    });
}

/// Reloads policies (and, for SIGHUP, the config's users). On failure the
/// previous set keeps serving; both outcomes are recorded in the audit log.
pub async fn reload(airlock: &Airlock, trigger: &str, reread_config: bool) {
    let current = airlock.config.load_full();
    let config = if reread_config {
        match current.path.as_deref().map(Config::load) {
            Some(Ok(c)) => Arc::new(c),
            Some(Err(e)) => {
                record_failure(airlock, trigger, e.to_string()).await;
                return;
            }
            None => current,
        }
    } else {
        current
    };
    let synced = match airlock.store.read(|r| r.synced_groups()).await {
        Ok(s) => s,
        Err(e) => {
            record_failure(airlock, trigger, format!("reading synced groups: {e}")).await;
            return;
        }
    };
    let directory = config.directory_with(&synced);
    let dir = config.policy_dir();
    let loaded = tokio::task::spawn_blocking(move || {
        PolicyEngine::load(&dir, &directory).map(|e| (e, directory))
    })
    .await;
    match loaded {
        Ok(Ok((engine, directory))) => {
            let version = engine.version().to_owned();
            let count = engine.policy_count();
            let previous = airlock.policy_version();
            let t = now();
            let rec = NewAuditRecord {
                kind: AuditKind::PolicyLoaded,
                actor: "system".into(),
                subject: String::new(),
                details: json!({"version": version, "previous": previous, "policies": count, "trigger": trigger}).into(),
            };
            // Serve the new set only once its loading is on record.
            match airlock.store.append_audit(rec, t).await.map(|_| ()) {
                Ok(()) => {
                    airlock.loaded.store(Arc::new(Loaded { engine, directory }));
                    airlock.config.store(config);
                    tracing::info!(%version, policies = count, trigger, "policy loaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "policy reload not recorded; keeping the previous set")
                }
            }
        }
        Ok(Err(e)) => record_failure(airlock, trigger, e.to_string()).await,
        Err(e) => record_failure(airlock, trigger, e.to_string()).await,
    }
}

async fn record_failure(airlock: &Airlock, trigger: &str, error: String) {
    tracing::error!(%error, trigger, "policy reload failed; the previous policy set keeps serving");
    let t = now();
    let rec = NewAuditRecord {
        kind: AuditKind::PolicyReloadFailed,
        actor: "system".into(),
        subject: String::new(),
        details: json!({"error": error, "serving": airlock.policy_version(), "trigger": trigger})
            .into(),
    };
    if let Err(e) = airlock.store.append_audit(rec, t).await.map(|_| ()) {
        tracing::error!(error = %e, "cannot record the failed reload");
    }
}
