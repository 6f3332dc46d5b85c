//! API keys answered from memory, on SQLite: a cache that every process
//! sharing the database file empties the moment any of them revokes a key.
//!
//! Every request is authenticated, and on SQLite a key read costs the
//! reader its page cache (the writer's last commit dropped it): three
//! `pread`s and four `fcntl` locks per request, a sixth of a check's CPU
//! (docs/PERFORMANCE.md). Keys change rarely, and only one change makes a
//! kept answer wrong: a revocation (a new key is not kept until first seen,
//! an expiry is judged at each use, last-used times do not matter).
//!
//! So every process that revokes announces it in a small file beside the
//! database, `<db>-revocations`, holding two counters: revocations begun
//! and not yet ended, and a generation bumped at each beginning and end.
//! A lookup reads the file (one `pread`) before it looks in memory:
//!
//! - a revocation in progress (begun > 0): the database is asked and
//!   nothing kept, since the revoking transaction may not be visible yet;
//! - a generation other than the one the memory was filled at: the memory
//!   is emptied, and what the database answers is kept under the new one;
//! - otherwise the kept record is the database's answer.
//!
//! A revocation begins inside its write transaction, before its `UPDATE`,
//! and ends after the transaction commits or rolls back. A lookup that
//! starts after the commit either sees it in progress or sees a generation
//! bumped twice since any answer read before the commit was kept, so it
//! asks the database. A process that dies mid-revocation leaves it "in
//! progress", which only turns the memory off; the next process to open
//! the store resets the count while it holds SQLite's write lock, when no
//! revocation can be between its beginning and its commit. Changes to the
//! file are made under an exclusive `flock`, so counts are never lost
//! between processes; a torn read can only look like a change or a
//! revocation in progress, both of which ask the database.
//!
//! What this cannot see: a key revoked by editing the database with
//! another tool (use `airlock keys revoke`), and the file deleted or
//! replaced under a running server (each lookup checks that the file it
//! holds is still linked, and asks the database when it is not).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::model::ApiKeyRecord;
use crate::StoreError;

/// How many keys a process keeps at most; past that it empties the memory
/// and starts again. Only keys that exist are kept, so unknown keys sent
/// by an attacker cannot fill it.
const MAX_KEPT: usize = 4096;

/// The two counters as the file holds them: little-endian, one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Counters {
    /// Revocations begun and not ended.
    in_progress: u64,
    /// Bumped at every beginning, end and reset.
    generation: u64,
}

impl Counters {
    fn from_bytes(b: [u8; 16]) -> Self {
        let [a, b] = [&b[..8], &b[8..]].map(|h| {
            let mut w = [0u8; 8];
            w.copy_from_slice(h);
            u64::from_le_bytes(w)
        });
        Self {
            in_progress: a,
            generation: b,
        }
    }

    fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.in_progress.to_le_bytes());
        out[8..].copy_from_slice(&self.generation.to_le_bytes());
        out
    }
}

/// The revocations file of one database, as this process holds it open.
#[derive(Debug)]
pub(crate) struct Revocations {
    file: File,
    /// Revocations this process began and has not ended yet (its writer's
    /// current batch).
    begun: AtomicU64,
}

impl Revocations {
    /// Opens (creating if needed) the file beside the database at `db`.
    pub(crate) fn open(db: &Path) -> Result<Self, StoreError> {
        // Every process must find the same file, as SQLite finds the same
        // `-wal` through a symbolic link to the database; a database not
        // made yet is named as given.
        let db = std::fs::canonicalize(db).unwrap_or_else(|_| db.to_owned());
        let mut name = db.as_os_str().to_owned();
        name.push("-revocations");
        let path = std::path::PathBuf::from(name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| StoreError::Db(format!("{}: {e}", path.display())))?;
        Ok(Self {
            file,
            begun: AtomicU64::new(0),
        })
    }

    /// The counters now; `None` when they cannot be trusted (unreadable,
    /// or the file was deleted or replaced since this process opened it).
    fn read(&self) -> Option<Counters> {
        if self.file.metadata().ok()?.nlink() == 0 {
            return None;
        }
        self.counters().ok()
    }

    /// The counters as the file holds them.
    fn counters(&self) -> std::io::Result<Counters> {
        let mut b = [0u8; 16];
        match self.file.read_exact_at(&mut b, 0) {
            Ok(()) => Ok(Counters::from_bytes(b)),
            // A file just created is empty: nothing was ever revoked
            // through it, and generation 0 is as good as any.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(Counters::default()),
            Err(e) => Err(e),
        }
    }

    /// Changes the counters under an exclusive lock on the file.
    fn change(&self, f: impl FnOnce(Counters) -> Counters) -> Result<(), StoreError> {
        let failed = |e: std::io::Error| StoreError::Db(format!("revocations file: {e}"));
        self.file.lock().map_err(failed)?;
        let result = self
            .counters()
            .and_then(|now| self.file.write_all_at(&f(now).to_bytes(), 0))
            .map_err(failed);
        // Closing the file would release the lock as well; it stays open.
        let _ = self.file.unlock();
        result
    }

    /// Announces a revocation about to be written: called inside the
    /// write transaction, before the change. An error fails the
    /// revocation (it would be invisible to other processes' memory).
    pub(crate) fn begin(&self) -> Result<(), StoreError> {
        self.change(|c| Counters {
            in_progress: c.in_progress.saturating_add(1),
            generation: c.generation.wrapping_add(1),
        })?;
        self.begun.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Ends what this process began, once its transaction committed or
    /// rolled back. A failure leaves them "in progress": memory stays off
    /// until a process resets the count.
    pub(crate) fn end_begun(&self) {
        let n = self.begun.swap(0, Ordering::SeqCst);
        if n == 0 {
            return;
        }
        let ended = self.change(|c| Counters {
            in_progress: c.in_progress.saturating_sub(n),
            generation: c.generation.wrapping_add(1),
        });
        if let Err(e) = ended {
            tracing::warn!(error = %e, "cannot mark a key revocation done; keys are read from the database until the next start");
        }
    }

    /// Forgets revocations left in progress by processes that died: only
    /// while holding SQLite's write lock, when no revocation can be
    /// between its beginning and its commit.
    pub(crate) fn reset_under_write_lock(&self) -> Result<(), StoreError> {
        self.change(|c| Counters {
            in_progress: 0,
            generation: c.generation.wrapping_add(1),
        })
    }
}

/// What [`KeyCache::get`] found.
#[derive(Debug)]
pub enum Lookup {
    /// The key as the database holds it.
    Hit(ApiKeyRecord),
    /// Ask the database; hand its answer and the ticket to
    /// [`KeyCache::keep`].
    Miss(Ticket),
}

/// When a lookup asked, so an answer read before a revocation is not kept
/// after it.
#[derive(Debug)]
pub struct Ticket(Option<u64>);

/// This process's memory of API keys (see the module's documentation).
#[derive(Debug)]
pub struct KeyCache {
    revocations: Revocations,
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    generation: u64,
    keys: HashMap<String, ApiKeyRecord>,
}

impl KeyCache {
    pub(crate) fn new(revocations: Revocations) -> Self {
        Self {
            revocations,
            kept: Mutex::new(Kept::default()),
        }
    }

    /// The revocations file, for the writer.
    pub(crate) fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// The key with SHA-256 `hash`, if this process may answer for it.
    pub fn get(&self, hash: &str) -> Lookup {
        let Some(now) = self.revocations.read() else {
            return Lookup::Miss(Ticket(None));
        };
        if now.in_progress > 0 {
            return Lookup::Miss(Ticket(None));
        }
        let Ok(mut kept) = self.kept.lock() else {
            return Lookup::Miss(Ticket(None));
        };
        if kept.generation != now.generation {
            kept.keys.clear();
            kept.generation = now.generation;
        }
        match kept.keys.get(hash) {
            Some(record) => Lookup::Hit(record.clone()),
            None => Lookup::Miss(Ticket(Some(now.generation))),
        }
    }

    /// Keeps what the database answered for a [`Lookup::Miss`], unless a
    /// revocation began since the ticket was taken.
    pub fn keep(&self, ticket: Ticket, record: &ApiKeyRecord) {
        let Some(generation) = ticket.0 else { return };
        let Ok(mut kept) = self.kept.lock() else {
            return;
        };
        if kept.generation != generation {
            return;
        }
        if kept.keys.len() >= MAX_KEPT {
            kept.keys.clear();
        }
        kept.keys.insert(record.hash.clone(), record.clone());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn record(hash: &str) -> ApiKeyRecord {
        ApiKeyRecord {
            id: format!("key_{hash}"),
            hash: hash.into(),
            user: airlock_core::UserName::parse("alice").unwrap(),
            role: crate::Role::User,
            created_at: crate::time::now(),
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
            scram: None,
        }
    }

    fn fill(cache: &KeyCache, hash: &str) {
        let Lookup::Miss(t) = cache.get(hash) else {
            panic!("a hit before anything was kept")
        };
        cache.keep(t, &record(hash));
    }

    fn hit(cache: &KeyCache, hash: &str) -> bool {
        matches!(cache.get(hash), Lookup::Hit(_))
    }

    /// A folder with a database's revocations file, this process's cache
    /// of it, and another process's handle on it.
    fn two_processes() -> (tempfile::TempDir, KeyCache, Revocations) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("airlock.db");
        let here = KeyCache::new(Revocations::open(&db).unwrap());
        let there = Revocations::open(&db).unwrap();
        (dir, here, there)
    }

    /// Two processes on one database: each revocation, begun or ended in
    /// either, empties the other's memory, and nothing is kept while one
    /// is in progress.
    #[test]
    fn a_revocation_anywhere_empties_every_memory_and_none_is_kept_meanwhile() {
        let (_dir, here, there) = two_processes();
        fill(&here, "a");
        assert!(hit(&here, "a"));
        there.begin().unwrap();
        assert!(!hit(&here, "a"), "in progress: ask the database");
        fill(&here, "a");
        assert!(!hit(&here, "a"), "nothing kept while in progress");
        there.end_begun();
        assert!(!hit(&here, "a"));
        fill(&here, "a");
        assert!(hit(&here, "a"));
    }

    /// An answer read before a revocation began is not kept after it,
    /// even when no lookup saw the change in between.
    #[test]
    fn an_answer_from_before_a_revocation_is_not_kept() {
        let (_dir, here, there) = two_processes();
        // No lookup between: the answer is kept, and the next lookup
        // empties the memory.
        let Lookup::Miss(before) = here.get("a") else {
            panic!()
        };
        there.begin().unwrap();
        there.end_begun();
        here.keep(before, &record("a"));
        assert!(!hit(&here, "a"));
        // A lookup between: the answer is not kept at all.
        let Lookup::Miss(before) = here.get("b") else {
            panic!()
        };
        there.begin().unwrap();
        there.end_begun();
        assert!(!hit(&here, "c"));
        here.keep(before, &record("b"));
        assert!(!hit(&here, "b"));
        assert!(here.kept.lock().unwrap().keys.is_empty());
    }

    /// A process that died mid-revocation leaves memory off; a reset
    /// (made under SQLite's write lock) turns it on again.
    #[test]
    fn a_revocation_left_in_progress_turns_memory_off_until_a_reset() {
        let (dir, here, died) = two_processes();
        let db = dir.path().join("airlock.db");
        died.begin().unwrap();
        drop(died);
        fill(&here, "a");
        assert!(!hit(&here, "a"));
        Revocations::open(&db)
            .unwrap()
            .reset_under_write_lock()
            .unwrap();
        fill(&here, "a");
        assert!(hit(&here, "a"));
    }

    /// The file deleted or replaced under a running process: it can no
    /// longer hear revocations, so it asks the database every time.
    #[test]
    fn a_deleted_or_replaced_file_turns_memory_off() {
        let (dir, here, _) = two_processes();
        fill(&here, "a");
        assert!(hit(&here, "a"));
        std::fs::remove_file(dir.path().join("airlock.db-revocations")).unwrap();
        assert!(!hit(&here, "a"));
        std::fs::write(dir.path().join("airlock.db-revocations"), [0u8; 16]).unwrap();
        fill(&here, "a");
        assert!(!hit(&here, "a"));
    }

    /// A process that names the database through a symbolic link hears
    /// the same revocations.
    #[test]
    fn a_database_named_through_a_link_shares_its_revocations() {
        let (dir, here, _) = two_processes();
        let db = dir.path().join("airlock.db");
        std::fs::write(&db, b"").unwrap();
        let linked = dir.path().join("linked.db");
        std::os::unix::fs::symlink(&db, &linked).unwrap();
        let there = Revocations::open(&linked).unwrap();
        fill(&here, "a");
        there.begin().unwrap();
        assert!(!hit(&here, "a"));
        assert!(!dir.path().join("linked.db-revocations").exists());
    }

    /// A revocation that cannot be announced fails, rather than go unseen
    /// by other processes' memory.
    #[test]
    fn a_revocation_that_cannot_be_announced_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("airlock.db-revocations");
        std::fs::write(&path, [0u8; 16]).unwrap();
        let read_only = Revocations {
            file: File::open(&path).unwrap(),
            begun: AtomicU64::new(0),
        };
        assert!(read_only.begin().is_err());
        assert_eq!(read_only.begun.load(Ordering::SeqCst), 0);
    }

    /// Memory is bounded: past [`MAX_KEPT`] keys it starts again.
    #[test]
    fn memory_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let here = KeyCache::new(Revocations::open(&dir.path().join("airlock.db")).unwrap());
        for i in 0..=MAX_KEPT {
            fill(&here, &i.to_string());
        }
        assert!(here.kept.lock().unwrap().keys.len() <= MAX_KEPT);
        assert!(hit(&here, &MAX_KEPT.to_string()));
    }

    #[test]
    fn counters_round_trip() {
        let c = Counters {
            in_progress: 3,
            generation: u64::MAX - 1,
        };
        assert_eq!(Counters::from_bytes(c.to_bytes()), c);
    }
}
