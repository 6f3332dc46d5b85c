//! Where committed changes are announced: to every subscriber (background
//! tasks, console streams) and, separately, to whoever watches one request.
//!
//! A thousand long-polls each subscribed to every change would each be woken
//! by every decision (thousands a second), fall behind the broadcast, and
//! re-read the store to catch up: the wake-ups and reads grow with waiters
//! × decisions. Watching by id wakes only the waiters of the request that
//! changed, so the cost of a change does not depend on how many wait.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use airlock_core::RequestId;
use tokio::sync::{broadcast, watch};

use crate::StoreEvent;

/// How many events a slow subscriber may fall behind before it is told it
/// lagged (and re-reads what it cares about).
const BROADCAST_CAPACITY: usize = 4096;

/// Where backends send [`StoreEvent`]s: cheap to clone.
#[derive(Clone, Debug)]
pub struct EventSender {
    all: broadcast::Sender<StoreEvent>,
    watched: Arc<Mutex<HashMap<RequestId, Watched>>>,
}

/// One watched request: a change counter and how many watch it.
#[derive(Debug)]
struct Watched {
    changes: watch::Sender<u64>,
    watchers: usize,
}

/// Every critical section is one map operation, which leaves the map
/// consistent even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for EventSender {
    fn default() -> Self {
        Self {
            all: broadcast::channel(BROADCAST_CAPACITY).0,
            watched: Default::default(),
        }
    }
}

impl EventSender {
    /// Announces `event`: wakes the watchers of the request it names (all
    /// watchers for events that may concern any request), then every
    /// subscriber.
    pub fn send(&self, event: StoreEvent) {
        {
            let watched = lock(&self.watched);
            let bump = |w: &Watched| w.changes.send_modify(|n| *n = n.wrapping_add(1));
            match &event {
                StoreEvent::Changed { id, .. } => {
                    if let Some(w) = watched.get(id) {
                        bump(w);
                    }
                }
                // Missed events, or a change of groups (which changes who
                // may see a request): everyone looks again.
                StoreEvent::Resync | StoreEvent::DirectoryChanged => {
                    watched.values().for_each(bump)
                }
            }
        }
        // No subscriber is not an error: nobody needed telling.
        let _ = self.all.send(event);
    }

    /// Every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.all.subscribe()
    }

    /// Changes of one request (and events that may concern any) from now
    /// on. Watch before reading, so a change between the read and the wait
    /// is not missed.
    pub fn watch(&self, id: RequestId) -> Watch {
        let mut watched = lock(&self.watched);
        let w = watched.entry(id).or_insert_with(|| Watched {
            changes: watch::channel(0).0,
            watchers: 0,
        });
        w.watchers += 1;
        Watch {
            changes: w.changes.subscribe(),
            id,
            watched: self.watched.clone(),
        }
    }

    /// How many requests are watched (for tests: none once every watch is
    /// dropped).
    pub fn watched(&self) -> usize {
        lock(&self.watched).len()
    }
}

/// A watch on one request; stops watching when dropped.
#[derive(Debug)]
pub struct Watch {
    changes: watch::Receiver<u64>,
    id: RequestId,
    watched: Arc<Mutex<HashMap<RequestId, Watched>>>,
}

impl Watch {
    /// Returns once the request may have changed since the watch began or
    /// since the last return: re-read it then.
    pub async fn changed(&mut self) {
        // The sender lives in the map for as long as this watch does, so
        // this cannot fail; if it did, waking is the safe answer (the
        // caller re-reads).
        let _ = self.changes.changed().await;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watched = lock(&self.watched);
        if let Some(w) = watched.get_mut(&self.id) {
            w.watchers = w.watchers.saturating_sub(1);
            if w.watchers == 0 {
                watched.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    async fn woken(w: &mut Watch) -> bool {
        tokio::time::timeout(Duration::from_millis(50), w.changed())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn only_the_changed_requests_watchers_wake() {
        let events = EventSender::default();
        let (a, b) = (RequestId::new(), RequestId::new());
        let mut wa = events.watch(a);
        let mut wb = events.watch(b);
        let mut wa2 = events.watch(a);
        events.send(StoreEvent::Changed {
            id: a,
            remote: false,
        });
        assert!(woken(&mut wa).await);
        assert!(woken(&mut wa2).await);
        assert!(!woken(&mut wb).await, "b did not change");
        // A change made before the wait began is not lost.
        events.send(StoreEvent::Changed {
            id: b,
            remote: true,
        });
        assert!(woken(&mut wb).await);
        assert!(!woken(&mut wb).await, "each change wakes once");
        events.send(StoreEvent::Resync);
        assert!(woken(&mut wa).await && woken(&mut wb).await);
        events.send(StoreEvent::DirectoryChanged);
        assert!(woken(&mut wa2).await);
        drop((wa, wb));
        assert_eq!(events.watched(), 1, "a is still watched by wa2");
        drop(wa2);
        assert_eq!(events.watched(), 0, "nothing left behind");
    }

    #[tokio::test]
    async fn subscribers_still_hear_everything() {
        let events = EventSender::default();
        let mut all = events.subscribe();
        let c = RequestId::new();
        events.send(StoreEvent::Changed {
            id: c,
            remote: false,
        });
        assert_eq!(
            all.recv().await.unwrap(),
            StoreEvent::Changed {
                id: c,
                remote: false
            }
        );
    }
}
