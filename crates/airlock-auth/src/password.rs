//! Password sign-in to the web console: argon2id hashes, and what keeps
//! guessing slow. One address guessing fast is refused before any lock is
//! waited for or hash checked; one user name with too many recent failures
//! is locked out on every node (the count comes from the audit log); and
//! only a few hashes are checked at once.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use airlock_core::{AuditKind, NewAuditRecord, UserName};
use airlock_store::time::now;
use airlock_store::{AuditFilter, Store};
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Argon2, PasswordHash, PasswordVerifier};
use chrono::Duration;
use serde_json::json;

use crate::limits::{KeyedLocks, SourceLimiter};
use crate::{sessions, AuthError};

/// Failed password sign-ins for one user name within [`LOCKOUT_MINUTES`]
/// after which further attempts are refused without checking, on every
/// node (the count comes from the audit log).
pub const MAX_FAILURES: usize = 5;
/// How long a user name stays locked after [`MAX_FAILURES`] failures.
pub const LOCKOUT_MINUTES: i64 = 15;

/// A hash no password matches, verified when the user is unknown so that
/// the answer takes as long as for a known user (no user enumeration by
/// timing). Made with the same parameters as [`hash_password`].
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$y6Tl2L1Yu4MmF2GU1NVU8KD3IaY2hh0MEp1C0vHj2lE";

/// Hashes a password for storage (argon2id with a random salt), as
/// `airlock users set-password` stores it.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Whether `password` matches a stored hash. An unparseable hash matches
/// nothing.
fn verify(password: &[u8], hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| Argon2::default().verify_password(password, &h).is_ok())
        .unwrap_or(false)
}

/// This node's state for password sign-in: who is being checked and how
/// often each address tried.
#[derive(Debug)]
pub struct PasswordSignIn {
    /// Serialises password checks per user name.
    locks: KeyedLocks<String>,
    /// Bounds the password hashes checked at once (CPU and memory).
    checks: Arc<tokio::sync::Semaphore>,
    /// Sign-in attempts per source address.
    sources: SourceLimiter,
    /// Which addresses had a refusal for too many attempts recorded in the
    /// last minute (one record a minute each, so a flood cannot flood the
    /// audit log).
    refusals: SourceLimiter,
}

impl Default for PasswordSignIn {
    fn default() -> Self {
        Self {
            locks: KeyedLocks::default(),
            checks: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get().max(2)),
            )),
            sources: SourceLimiter::default(),
            refusals: SourceLimiter::default(),
        }
    }
}

impl PasswordSignIn {
    /// Checks a password and, if it is right, starts a session. Returns the
    /// cookie secret, or `None` for a wrong name or password. `is_user`
    /// says whether a name is a configured user; `per_minute` is the
    /// attempts allowed per address. Every attempt is in the audit log,
    /// except refusals for too many attempts from one address past the
    /// first each minute.
    pub async fn sign_in(
        &self,
        store: &Store,
        is_user: &(dyn Fn(&UserName) -> bool + Sync),
        per_minute: NonZeroU32,
        username: &str,
        password: String,
        source: IpAddr,
    ) -> Result<Option<String>, AuthError> {
        let shown = username.chars().take(64).collect::<String>();
        // One address guessing fast (at one name or many) is stopped before
        // any lock is waited for or any hash checked, so it neither burns
        // this node's CPU nor queues ahead of other people.
        if !self.sources.allow(source, per_minute) {
            if self.refusals.allow(source, NonZeroU32::MIN) {
                let t = now();
                store
                    .write(move |tx| {
                        tx.append_audit(
                            NewAuditRecord {
                                kind: AuditKind::SignInLocked,
                                actor: "web".into(),
                                subject: shown,
                                details: json!({
                                    "method": "password",
                                    "why": "too many attempts from this address",
                                    "source": source.to_string(),
                                })
                                .into(),
                            },
                            t,
                        )
                        .map(|_| ())
                    })
                    .await
                    .map_err(AuthError::Audit)?;
            }
            return Err(AuthError::TooManyAttempts);
        }
        // One password check at a time per user name on this node, so
        // parallel guesses at one name cannot all read its failure count
        // before any is recorded; other names do not wait for it.
        let _one_at_a_time = self.locks.lock(shown.clone()).await;
        // Password guessing: a user name with too many recent failures is
        // refused before any hash is checked.
        let recent = AuditFilter {
            kind: Some(AuditKind::SignInFailed.as_str().into()),
            subject: Some(shown.clone()),
            since: Some(airlock_store::time::fmt(
                now() - Duration::minutes(LOCKOUT_MINUTES),
            )),
            ..AuditFilter::default()
        };
        let failures = store
            .read(move |r| r.audit_search(&recent, MAX_FAILURES as u32))
            .await?
            .len();
        if failures >= MAX_FAILURES {
            // Its own kind, so refusals during the lockout do not extend it.
            let t = now();
            store
                .write(move |tx| {
                    tx.append_audit(
                        NewAuditRecord {
                            kind: AuditKind::SignInLocked,
                            actor: "web".into(),
                            subject: shown,
                            details: json!({"method": "password"}).into(),
                        },
                        t,
                    )
                    .map(|_| ())
                })
                .await
                .map_err(AuthError::Audit)?;
            return Err(AuthError::Refused(format!(
                "too many failed sign-ins for this user name; try again in {LOCKOUT_MINUTES} minutes"
            )));
        }
        let user = UserName::parse(username).ok().filter(|u| is_user(u));
        let stored = match &user {
            Some(u) => {
                let u = u.clone();
                store.read(move |r| r.password_hash(&u)).await?
            }
            None => None,
        };
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| DUMMY_HASH.to_owned());
        // Argon2 is deliberately slow and takes 19 MiB a check: off the
        // async threads, and only a few at once whatever the number of
        // names tried in parallel. The semaphore is never closed; if it
        // were, nobody would be signed in.
        let Ok(permit) = self.checks.clone().acquire_owned().await else {
            return Err(AuthError::Refused("password sign-in is unavailable".into()));
        };
        let ok = tokio::task::spawn_blocking(move || {
            // Held by the check itself: it runs on even if the caller goes.
            let _permit = permit;
            verify(password.as_bytes(), &hash)
        })
        .await
        .unwrap_or(false);
        match user.filter(|_| ok && known) {
            None => {
                sessions::refused(
                    store,
                    shown,
                    "password",
                    "wrong user name or password".into(),
                )
                .await?;
                Ok(None)
            }
            Some(user) => sessions::start(store, user, "password").await.map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_dummy_hash_parses_and_matches_nothing() {
        let h = PasswordHash::new(DUMMY_HASH).unwrap();
        assert!(Argon2::default().verify_password(b"", &h).is_err());
    }

    #[test]
    fn a_hashed_password_verifies_and_others_do_not() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify(b"correct horse", &hash));
        assert!(!verify(b"correct horsf", &hash));
        assert!(!verify(b"correct horse", "not a hash"));
    }
}
