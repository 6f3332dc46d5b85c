//! Web console sessions over HTTP: the session cookie, the anti-CSRF token
//! every state-changing form carries, and the service's sign-in calls.
//! What a session is, how a password is checked and when a name is locked
//! out is `airlock_auth`'s; this is where it meets cookies and the
//! configured users.

use std::net::IpAddr;

use axum::http::HeaderMap;

use airlock_auth::{oidc, sessions};
use airlock_core::{GroupName, UserName};
use airlock_store::{Role, SessionRecord};

pub(crate) use airlock_auth::tokens::{random_token, same_secret};

use crate::service::hash_key;
use crate::{Airlock, ApiError, Caller};

/// The session cookie.
pub(crate) const SESSION_COOKIE: &str = "airlock_session";
/// The pre-session cookie that guards the sign-in form against login CSRF.
pub(crate) const LOGIN_CSRF_COOKIE: &str = "airlock_login_csrf";

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
    /// When this session signed in: adding a second factor needs a recent
    /// one, so a stolen older session cannot enrol its own.
    pub(crate) signed_in_at: chrono::DateTime<chrono::Utc>,
}

impl Airlock {
    /// Whether `user` is a configured user now.
    fn is_user(&self, user: &UserName) -> bool {
        self.loaded.load().directory.contains(user)
    }

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
            signed_in_at: s.created_at,
        }))
    }

    /// The session with this id hash while it lasts: not signed out, not
    /// expired, and its user still configured.
    pub(crate) async fn live_session(
        &self,
        id_hash: &str,
    ) -> Result<Option<SessionRecord>, ApiError> {
        Ok(sessions::live(&self.store, id_hash, &|u| self.is_user(u)).await?)
    }

    /// Checks a password and, if it is right, starts a session. Returns the
    /// cookie secret (see `airlock_auth::password`).
    pub(crate) async fn sign_in(
        &self,
        username: &str,
        password: String,
        source: IpAddr,
    ) -> Result<Option<String>, ApiError> {
        let rate = self.config.load().web.sign_in_attempts_per_minute_per_ip;
        Ok(self
            .passwords
            .sign_in(
                &self.store,
                &|u| self.is_user(u),
                rate,
                username,
                password,
                source,
            )
            .await?)
    }

    /// Starts a session for a user who proved who they are; returns the
    /// cookie secret.
    pub(crate) async fn start_session(
        &self,
        user: UserName,
        method: &'static str,
    ) -> Result<String, ApiError> {
        Ok(sessions::start(&self.store, user, method).await?)
    }

    /// Records the groups single sign-on reported for `user`, if they differ
    /// from those in force; every node then rebuilds its directory.
    pub(crate) async fn sync_groups(
        &self,
        user: &UserName,
        claimed: &[String],
    ) -> Result<(), ApiError> {
        let current: Vec<GroupName> = self
            .loaded
            .load()
            .directory
            .groups(user)
            .map(|g| g.iter().cloned().collect())
            .unwrap_or_default();
        Ok(oidc::sync_groups(&self.store, user, claimed, current).await?)
    }

    /// Records a refused sign-in.
    pub(crate) async fn sign_in_refused(
        &self,
        who: String,
        method: &'static str,
        why: String,
    ) -> Result<(), ApiError> {
        Ok(sessions::refused(&self.store, who, method, why).await?)
    }

    /// Ends a session everywhere.
    pub(crate) async fn sign_out(&self, user: &WebUser) -> Result<(), ApiError> {
        sessions::end(&self.store, &user.id_hash, &user.caller.user).await?;
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
}
