//! Web console sessions: starting one for someone who proved who they
//! are, finding it again, ending it, and recording refused sign-ins.
//!
//! The cookie holds 256 random bits; the store keeps only their SHA-256,
//! so a copy of the database signs nobody in. Sessions live in the store,
//! so signing out ends the session on every node at once.

use airlock_core::{AuditKind, NewAuditRecord, UserName};
use airlock_store::time::now;
use airlock_store::{SessionRecord, Store, StoreError};
use chrono::Duration;
use serde_json::json;

use crate::api_keys::hash_key;
use crate::tokens::random_token;
use crate::AuthError;

/// How long a session lasts.
pub const SESSION_HOURS: i64 = 8;

/// The session with this id hash while it lasts: not signed out, not
/// expired, and its user still one `is_user` knows.
pub async fn live(
    store: &Store,
    id_hash: &str,
    is_user: &(dyn Fn(&UserName) -> bool + Sync),
) -> Result<Option<SessionRecord>, AuthError> {
    let h = id_hash.to_owned();
    let Some(s) = store.read(move |r| r.session(&h)).await? else {
        return Ok(None);
    };
    if s.expires_at <= now() || !is_user(&s.user) {
        return Ok(None);
    }
    Ok(Some(s))
}

/// Starts a session for a user who proved who they are (`method`:
/// `password`, `oidc`); returns the cookie secret.
pub async fn start(
    store: &Store,
    user: UserName,
    method: &'static str,
) -> Result<String, AuthError> {
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
    store
        .write(move |tx| {
            tx.insert_session(&session, t)?;
            tx.append_audit(
                NewAuditRecord {
                    kind: AuditKind::SignIn,
                    actor: user.to_string(),
                    subject: user.to_string(),
                    details: json!({"method": method, "session": &session.id_hash[..12]}).into(),
                },
                t,
            )?;
            Ok::<_, StoreError>(())
        })
        .await
        .map_err(AuthError::Audit)?;
    Ok(secret)
}

/// Records a refused sign-in.
pub async fn refused(
    store: &Store,
    who: String,
    method: &'static str,
    why: String,
) -> Result<(), AuthError> {
    let t = now();
    store
        .write(move |tx| {
            tx.append_audit(
                NewAuditRecord {
                    kind: AuditKind::SignInFailed,
                    actor: "web".into(),
                    subject: who,
                    details: json!({"method": method, "why": why}).into(),
                },
                t,
            )
            .map(|_| ())
        })
        .await
        .map_err(AuthError::Audit)
}

/// Ends the session with this id hash, everywhere, and records who signed
/// out.
pub async fn end(store: &Store, id_hash: &str, who: &UserName) -> Result<(), AuthError> {
    let (h, who) = (id_hash.to_owned(), who.to_string());
    let t = now();
    store
        .write(move |tx| {
            tx.delete_session(&h)?;
            tx.append_audit(
                NewAuditRecord {
                    kind: AuditKind::SignOut,
                    actor: who.clone(),
                    subject: who,
                    details: json!({"session": &h[..12]}).into(),
                },
                t,
            )?;
            Ok::<_, StoreError>(())
        })
        .await
        .map_err(AuthError::Audit)
}
