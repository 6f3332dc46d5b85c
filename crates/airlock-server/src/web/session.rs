//! Web console sessions: sign-in with a password, the session cookie, and
//! the anti-CSRF token every state-changing form carries.
//!
//! The cookie holds 256 random bits; the store keeps only their SHA-256,
//! so a copy of the database signs nobody in. Sessions live in the store,
//! so signing out ends the session on every node at once.

use std::net::IpAddr;
use std::num::NonZeroU32;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use axum::http::HeaderMap;
use base64::Engine as _;
use chrono::Duration;
use rand::RngCore;
use subtle::ConstantTimeEq;

use airlock_core::{AuditKind, GroupName, NewAuditRecord, UserName};
use airlock_store::time::now;
use airlock_store::{AuditFilter, Role, SessionRecord, StoreError};
use serde_json::json;

use crate::service::hash_key;
use crate::{Airlock, ApiError, Caller};

/// The session cookie.
pub(crate) const SESSION_COOKIE: &str = "airlock_session";
/// The pre-session cookie that guards the sign-in form against login CSRF.
pub(crate) const LOGIN_CSRF_COOKIE: &str = "airlock_login_csrf";
/// How long a session lasts.
const SESSION_HOURS: i64 = 8;
/// Failed password sign-ins for one user name within [`LOCKOUT_MINUTES`]
/// after which further attempts are refused without checking, on every
/// node (the count comes from the audit log).
const MAX_FAILURES: usize = 5;
const LOCKOUT_MINUTES: i64 = 15;

/// A hash no password matches, verified when the user is unknown so that
/// the answer takes as long as for a known user (no user enumeration by
/// timing). Made with the same parameters as `airlock users set-password`.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$y6Tl2L1Yu4MmF2GU1NVU8KD3IaY2hh0MEp1C0vHj2lE";

/// 256 random bits, URL-safe.
pub(crate) fn random_token() -> String {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// Whether two secrets are equal, in constant time.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A cookie's value from the request headers.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, Secure when the
/// console is served over HTTPS.
pub(crate) fn set_cookie(name: &str, value: &str, max_age: i64, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// A signed-in user.
#[derive(Debug, Clone)]
pub(crate) struct WebUser {
    pub(crate) caller: Caller,
    pub(crate) csrf: String,
    pub(crate) id_hash: String,
}

impl Airlock {
    /// The signed-in user behind the request's session cookie, if any, and
    /// only while they are still a configured user.
    pub(crate) async fn web_user(&self, headers: &HeaderMap) -> Result<Option<WebUser>, ApiError> {
        let Some(secret) = cookie(headers, SESSION_COOKIE) else {
            return Ok(None);
        };
        let id_hash = hash_key(&secret);
        let Some(s) = self.live_session(&id_hash).await? else {
            return Ok(None);
        };
        Ok(Some(WebUser {
            caller: Caller {
                user: s.user,
                role: Role::User,
                key_id: format!("session:{}", &id_hash[..12]),
            },
            csrf: s.csrf,
            id_hash,
        }))
    }

    /// The session with this id hash while it lasts: not signed out, not
    /// expired, and its user still configured.
    pub(crate) async fn live_session(
        &self,
        id_hash: &str,
    ) -> Result<Option<SessionRecord>, ApiError> {
        let h = id_hash.to_owned();
        let Some(s) = self.store.read(move |r| r.session(&h)).await? else {
            return Ok(None);
        };
        if s.expires_at <= now() || !self.loaded.load().directory.contains(&s.user) {
            return Ok(None);
        }
        Ok(Some(s))
    }

    /// Checks a password and, if it is right, starts a session. Returns the
    /// cookie secret. Every attempt is in the audit log, except refusals
    /// for too many attempts from one address past the first each minute.
    pub(crate) async fn sign_in(
        &self,
        username: &str,
        password: String,
        source: IpAddr,
    ) -> Result<Option<String>, ApiError> {
        let shown = username.chars().take(64).collect::<String>();
        // One address guessing fast (at one name or many) is stopped before
        // any lock is waited for or any hash checked, so it neither burns
        // this node's CPU nor queues ahead of other people.
        let rate = self.config.load().web.sign_in_attempts_per_minute_per_ip;
        if !self.sign_in_sources.allow(source, rate) {
            if self.sign_in_refusals.allow(source, NonZeroU32::MIN) {
                let t = now();
                self.store
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
                                }),
                            },
                            t,
                        )
                        .map(|_| ())
                    })
                    .await
                    .map_err(ApiError::Audit)?;
            }
            return Err(ApiError::TooMany {
                code: airlock_api::ErrorCode::TooManyAttempts,
                message: "too many sign-in attempts from this address; try again later".into(),
            });
        }
        // One password check at a time per user name on this node, so
        // parallel guesses at one name cannot all read its failure count
        // before any is recorded; other names do not wait for it.
        let _one_at_a_time = self.sign_in_locks.lock(shown.clone()).await;
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
        let failures = self
            .store
            .read(move |r| r.audit_search(&recent, MAX_FAILURES as u32))
            .await?
            .len();
        if failures >= MAX_FAILURES {
            // Its own kind, so refusals during the lockout do not extend it.
            let t = now();
            self.store
                .write(move |tx| {
                    tx.append_audit(
                        NewAuditRecord {
                            kind: AuditKind::SignInLocked,
                            actor: "web".into(),
                            subject: shown,
                            details: json!({"method": "password"}),
                        },
                        t,
                    )
                    .map(|_| ())
                })
                .await
                .map_err(ApiError::Audit)?;
            return Err(ApiError::forbidden(format!(
                "too many failed sign-ins for this user name; try again in {LOCKOUT_MINUTES} minutes"
            )));
        }
        let user = UserName::parse(username)
            .ok()
            .filter(|u| self.loaded.load().directory.contains(u));
        let stored = match &user {
            Some(u) => {
                let u = u.clone();
                self.store.read(move |r| r.password_hash(&u)).await?
            }
            None => None,
        };
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| DUMMY_HASH.to_owned());
        // Argon2 is deliberately slow and takes 19 MiB a check: off the
        // async threads, and only a few at once whatever the number of
        // names tried in parallel. The semaphore is never closed; if it
        // were, nobody would be signed in.
        let Ok(permit) = self.password_checks.clone().acquire_owned().await else {
            return Err(ApiError::forbidden("password sign-in is unavailable"));
        };
        let ok = tokio::task::spawn_blocking(move || {
            // Held by the check itself: it runs on even if the caller goes.
            let _permit = permit;
            PasswordHash::new(&hash)
                .map(|h| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        match user.filter(|_| ok && known) {
            None => {
                self.sign_in_refused(shown, "password", "wrong user name or password".into())
                    .await?;
                Ok(None)
            }
            Some(user) => self.start_session(user, "password").await.map(Some),
        }
    }

    /// Starts a session for a user who proved who they are; returns the
    /// cookie secret.
    pub(crate) async fn start_session(
        &self,
        user: UserName,
        method: &'static str,
    ) -> Result<String, ApiError> {
        let t = now();
        let secret = random_token();
        let session = SessionRecord {
            id_hash: hash_key(&secret),
            user: user.clone(),
            csrf: random_token(),
            method: method.into(),
            created_at: t,
            expires_at: t + Duration::hours(SESSION_HOURS),
        };
        self.store
            .write(move |tx| {
                tx.insert_session(&session, t)?;
                tx.append_audit(
                    NewAuditRecord {
                        kind: AuditKind::SignIn,
                        actor: user.to_string(),
                        subject: user.to_string(),
                        details: json!({"method": method, "session": &session.id_hash[..12]}),
                    },
                    t,
                )?;
                Ok::<_, StoreError>(())
            })
            .await
            .map_err(ApiError::Audit)?;
        Ok(secret)
    }

    /// Records the groups single sign-on reported for `user`, if they differ
    /// from those in force; every node then rebuilds its directory. Names
    /// that are not valid group names are dropped (and logged).
    pub(crate) async fn sync_groups(
        &self,
        user: &UserName,
        claimed: &[String],
    ) -> Result<(), ApiError> {
        let mut groups: Vec<GroupName> = claimed
            .iter()
            .filter_map(|g| match GroupName::parse(g) {
                Ok(g) => Some(g),
                Err(e) => {
                    tracing::warn!(group = %g, error = %e, "ignoring a group from single sign-on");
                    None
                }
            })
            .collect();
        groups.sort();
        groups.dedup();
        let current: Vec<GroupName> = self
            .loaded
            .load()
            .directory
            .groups(user)
            .map(|g| g.iter().cloned().collect())
            .unwrap_or_default();
        if current == groups {
            return Ok(());
        }
        let (user, t) = (user.clone(), now());
        self.store
            .write(move |tx| {
                tx.set_synced_groups(&user, &groups, t)?;
                tx.append_audit(
                    NewAuditRecord {
                        kind: AuditKind::GroupsSynced,
                        actor: "oidc".into(),
                        subject: user.to_string(),
                        details: json!({"groups": groups, "previous": current}),
                    },
                    t,
                )?;
                tx.directory_changed();
                Ok::<_, StoreError>(())
            })
            .await
            .map_err(ApiError::Audit)
    }

    /// Records a refused sign-in.
    pub(crate) async fn sign_in_refused(
        &self,
        who: String,
        method: &'static str,
        why: String,
    ) -> Result<(), ApiError> {
        let t = now();
        self.store
            .write(move |tx| {
                tx.append_audit(
                    NewAuditRecord {
                        kind: AuditKind::SignInFailed,
                        actor: "web".into(),
                        subject: who,
                        details: json!({"method": method, "why": why}),
                    },
                    t,
                )
                .map(|_| ())
            })
            .await
            .map_err(ApiError::Audit)
    }

    /// Ends a session everywhere.
    pub(crate) async fn sign_out(&self, user: &WebUser) -> Result<(), ApiError> {
        let (h, who) = (user.id_hash.clone(), user.caller.user.to_string());
        let t = now();
        self.store
            .write(move |tx| {
                tx.delete_session(&h)?;
                tx.append_audit(
                    NewAuditRecord {
                        kind: AuditKind::SignOut,
                        actor: who.clone(),
                        subject: who,
                        details: json!({"session": &h[..12]}),
                    },
                    t,
                )?;
                Ok::<_, StoreError>(())
            })
            .await
            .map_err(ApiError::Audit)?;
        // Nobody may be listening; the store is what counts.
        let _ = self.sessions_ended.send(user.id_hash.clone());
        Ok(())
    }

    /// Whether the console is served over HTTPS (cookies get `Secure`).
    pub(crate) fn secure_cookies(&self) -> bool {
        self.public_url().starts_with("https://")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert("cookie", "a=1; airlock_session=xyz; b=2".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("xyz"));
        assert_eq!(cookie(&h, "missing"), None);
    }

    #[test]
    fn the_dummy_hash_parses_and_matches_nothing() {
        let h = PasswordHash::new(DUMMY_HASH).unwrap();
        assert!(Argon2::default().verify_password(b"", &h).is_err());
    }

    #[test]
    fn secrets_compare_in_full() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
