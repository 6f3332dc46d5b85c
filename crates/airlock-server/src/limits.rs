//! Per-node limits that keep one user from crowding out everyone else:
//! open waits and streams per user. In memory, bounded, and forgotten at
//! restart. (Sign-in's limits are `airlock_auth::limits`.)

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Locks a std mutex whose data stays consistent even if a holder
/// panicked (every critical section here is a single map update).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A per-user count of open long-lived connections (waits, event
/// streams), each held by a [`Slot`] that gives it back when dropped, so
/// a connection that goes away frees its place.
#[derive(Debug, Default)]
pub(crate) struct UserSlots {
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open connection's place; given back on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
}

impl UserSlots {
    /// Takes one of `user`'s `max` places, or `None` when all are taken.
    pub(crate) fn try_take(&self, user: &str, max: NonZeroU32) -> Option<Slot> {
        let mut open = lock(&self.open);
        let n = open.entry(user.to_owned()).or_insert(0);
        if *n >= max.get() as usize {
            return None;
        }
        *n += 1;
        Some(Slot {
            open: self.open.clone(),
            user: user.to_owned(),
        })
    }

    /// How many places `user` holds (for tests).
    #[cfg(test)]
    fn held(&self, user: &str) -> usize {
        lock(&self.open).get(user).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        if let Some(n) = open.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn slots_are_per_user_and_come_back_when_dropped() {
        let slots = UserSlots::default();
        let two = NonZeroU32::new(2).unwrap();
        let a = slots.try_take("alice", two).unwrap();
        let b = slots.try_take("alice", two).unwrap();
        assert!(slots.try_take("alice", two).is_none());
        assert!(slots.try_take("bob", two).is_some(), "bob is not affected");
        drop(a);
        let c = slots.try_take("alice", two).unwrap();
        drop((b, c));
        assert_eq!(slots.held("alice"), 0);
        assert!(lock(&slots.open).is_empty(), "nothing is remembered");
    }
}
