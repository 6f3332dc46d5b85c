//! Per-node limits that keep one user name or one address from crowding
//! out everyone else at sign-in: serialised password checks per user name,
//! and sign-in attempts per source address. All of it is in memory,
//! bounded, and forgotten at restart.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use governor::{DefaultKeyedRateLimiter, Quota};

/// Locks a std mutex whose data stays consistent even if a holder
/// panicked (every critical section here is a single map update).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The lock of one key and how many callers hold or wait for it.
type Entry = (Arc<tokio::sync::Mutex<()>>, usize);

/// One async lock per key, so work for one key is serialised without
/// holding up other keys. A key's entry lives only while someone holds or
/// waits for its lock, so memory is bounded by the work in flight.
#[derive(Debug)]
pub struct KeyedLocks<K: Eq + Hash + Clone> {
    locks: Arc<Mutex<HashMap<K, Entry>>>,
}

impl<K: Eq + Hash + Clone> Default for KeyedLocks<K> {
    fn default() -> Self {
        Self {
            locks: Arc::default(),
        }
    }
}

/// Holds (or waits for) one key's lock; dropping it lets the next holder
/// in and forgets the key when nobody else wants it.
#[derive(Debug)]
pub struct KeyGuard<K: Eq + Hash + Clone> {
    locks: Arc<Mutex<HashMap<K, Entry>>>,
    key: K,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl<K: Eq + Hash + Clone> KeyedLocks<K> {
    /// Waits for `key`'s lock.
    pub async fn lock(&self, key: K) -> KeyGuard<K> {
        let mutex = {
            let mut locks = lock(&self.locks);
            let entry = locks.entry(key.clone()).or_default();
            entry.1 += 1;
            entry.0.clone()
        };
        // Counted before the wait, so a caller that gives up while waiting
        // (a dropped connection) still gives its count back.
        let mut guard = KeyGuard {
            locks: self.locks.clone(),
            key,
            held: None,
        };
        guard.held = Some(mutex.lock_owned().await);
        guard
    }

    /// How many keys are remembered (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.locks).len()
    }
}

impl<K: Eq + Hash + Clone> Drop for KeyGuard<K> {
    fn drop(&mut self) {
        self.held = None;
        let mut locks = lock(&self.locks);
        if let Some(entry) = locks.get_mut(&self.key) {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                locks.remove(&self.key);
            }
        }
    }
}

/// Addresses remembered before forgetting those whose allowance is full
/// again; past this the limiter is trimmed at each attempt.
const MAX_SOURCES: usize = 10_000;

/// Sign-in attempts per source address per minute (GCRA: a burst of the
/// whole minute's allowance, then one more each `60 / n` seconds).
/// IPv6 addresses count per /64, the block one client usually holds.
#[derive(Debug, Default)]
pub struct SourceLimiter {
    /// The limiter and the rate it was built for; rebuilt when the
    /// configured rate changes (a reload).
    inner: Mutex<Option<(NonZeroU32, Arc<DefaultKeyedRateLimiter<IpAddr>>)>>,
}

impl SourceLimiter {
    /// Counts one attempt from `source`: whether it is within
    /// `per_minute`.
    pub fn allow(&self, source: IpAddr, per_minute: NonZeroU32) -> bool {
        let limiter = {
            let mut inner = lock(&self.inner);
            match &*inner {
                Some((rate, l)) if *rate == per_minute => l.clone(),
                _ => {
                    let l = Arc::new(DefaultKeyedRateLimiter::keyed(Quota::per_minute(
                        per_minute,
                    )));
                    *inner = Some((per_minute, l.clone()));
                    l
                }
            }
        };
        if limiter.len() >= MAX_SOURCES {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter.check_key(&source_key(source)).is_ok()
    }
}

/// The address an allowance belongs to: IPv4 as is, IPv6 by its /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut s = v6.segments();
                s[4..].fill(0);
                IpAddr::V6(s.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_key_waits_other_keys_do_not_and_keys_are_forgotten() {
        let locks = KeyedLocks::<String>::default();
        let bob = locks.lock("bob".into()).await;
        // Another name goes ahead while bob's lock is held.
        let alice = tokio::time::timeout(Duration::from_secs(5), locks.lock("alice".into()))
            .await
            .unwrap();
        drop(alice);
        // A second bob waits.
        let waiting = tokio::time::timeout(Duration::from_millis(50), locks.lock("bob".into()));
        assert!(waiting.await.is_err(), "bob's second attempt waits");
        assert_eq!(locks.len(), 1, "a waiter that gave up is forgotten");
        drop(bob);
        assert_eq!(locks.len(), 0);
        let again = tokio::time::timeout(Duration::from_secs(5), locks.lock("bob".into()))
            .await
            .unwrap();
        drop(again);
        assert_eq!(locks.len(), 0);
    }

    #[test]
    fn sources_get_their_allowance_and_ipv6_counts_per_64() {
        let limiter = SourceLimiter::default();
        let three = NonZeroU32::new(3).unwrap();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.allow(a, three));
        }
        assert!(
            !limiter.allow(a, three),
            "the fourth in a minute is refused"
        );
        assert!(limiter.allow(b, three), "another address is not affected");
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.allow(v6a, three));
        }
        assert!(!limiter.allow(v6b, three), "same /64, same allowance");
        // A new rate (a reload) starts afresh.
        assert!(limiter.allow(a, NonZeroU32::new(10).unwrap()));
    }
}
