//! API keys: making, listing and revoking them, checking one on every
//! request, and recording (to the minute, off the request path) when each
//! was last used.
//!
//! There is deliberately no cache of good keys. A key is looked up in the
//! store on every request, so a revocation or expiry committed by anyone (this node, another node on the same PostgreSQL, or `airlock keys revoke`
//! writing straight into the SQLite file from another process) refuses the
//! very next request that carries the key, on every node, with no window.
//! A cache would need invalidating across processes, and any invalidation
//! that travels (an event, `pg_notify`, a poll) arrives some time after the
//! commit, during which a revoked key still works; a cache validated
//! against a counter in the database costs the same round trip as the
//! lookup it saves. The lookup is one read on the unique index of key
//! hashes (one round trip on PostgreSQL, from the request's own task: see
//! `Store::api_key_by_hash`).

use std::collections::HashMap;
use std::sync::Mutex;

use airlock_core::scram::{self, Verifier};
use airlock_core::{AuditKind, KeyLifetime, NewAuditRecord, UserName};
use airlock_store::{ApiKeyRecord, KeyRefusal, KeyRevocation, Role, Store, StoreError};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::AuthError;

/// The prefix of every API key, so leaked keys are easy to scan for.
pub const KEY_PREFIX: &str = "alk_";

/// Hashes an API key (or a session secret) for storage and lookup. Keys are
/// 256 random bits, so a fast hash is enough: there is nothing to
/// brute-force.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Makes a new API key: `(secret, stored record)`.
pub fn new_api_key(user: UserName, role: Role) -> (String, ApiKeyRecord) {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let secret = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    let id = format!("key_{}", &hash_key(&secret)[..16]);
    // Enforcer keys name a service, which never opens a database session
    // as itself through the proxy.
    let scram = (role != Role::Enforcer).then(|| Verifier::derive(&user, &secret).to_string());
    let record = ApiKeyRecord {
        id,
        hash: hash_key(&secret),
        user,
        role,
        created_at: airlock_store::time::now(),
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
        scram,
    };
    (secret, record)
}

/// Stores a new API key and records its creation. Returns the secret, which
/// is shown once and never stored.
pub async fn create_api_key(
    store: &Store,
    user: UserName,
    role: Role,
    actor: &str,
) -> Result<String, StoreError> {
    let (secret, _) = create_api_key_with(store, user, role, None, actor).await?;
    Ok(secret)
}

/// How stale a key's `last_used_at` may get before a use rewrites it: the
/// granularity of "last used".
pub const LAST_USED_GRANULARITY: chrono::Duration = chrono::Duration::seconds(60);

/// Stores a new API key that stops working after `lifetime` (never, if
/// `None`), and records its creation. Returns the secret, shown once and
/// never stored, and the stored record.
pub async fn create_api_key_with(
    store: &Store,
    user: UserName,
    role: Role,
    lifetime: Option<KeyLifetime>,
    actor: &str,
) -> Result<(String, ApiKeyRecord), StoreError> {
    let (secret, mut record) = new_api_key(user, role);
    record.expires_at = lifetime.map(|l| record.created_at + l.as_chrono());
    let actor = actor.to_owned();
    let stored = record.clone();
    store
        .write(move |tx| {
            tx.insert_api_key(&record)?;
            let mut details = json!({"user": record.user.as_str(), "role": record.role.as_str()});
            if let Some(at) = record.expires_at {
                details["expires_at"] = json!(airlock_store::time::fmt(at));
            }
            tx.append_audit(
                NewAuditRecord {
                    kind: AuditKind::KeyCreated,
                    actor,
                    subject: record.id.clone(),
                    details: details.into(),
                },
                record.created_at,
            )?;
            Ok::<_, StoreError>(())
        })
        .await?;
    Ok((secret, stored))
}

/// Every API key, revoked and expired ones included, oldest first.
pub async fn list_api_keys(store: &Store) -> Result<Vec<ApiKeyRecord>, StoreError> {
    store.read(|r| r.list_api_keys()).await
}

/// Revokes the key with public id `id`, and records who did, in the same
/// transaction. Only a live key is revoked and recorded; an unknown or
/// already revoked one changes nothing and says so.
pub async fn revoke_api_key(
    store: &Store,
    id: &str,
    actor: &str,
) -> Result<KeyRevocation, StoreError> {
    let (id, actor) = (id.to_owned(), actor.to_owned());
    store
        .write(move |tx| {
            let at = airlock_store::time::now();
            let outcome = tx.revoke_api_key(&id, at)?;
            if outcome == KeyRevocation::Revoked {
                tx.append_audit(
                    NewAuditRecord {
                        kind: AuditKind::KeyRevoked,
                        actor,
                        subject: id,
                        details: json!({}).into(),
                    },
                    at,
                )?;
            }
            Ok::<_, StoreError>(outcome)
        })
        .await
}

/// Checks a bearer key against the store and returns its record: unknown,
/// revoked and expired keys are refused. Any store failure is an error,
/// never a pass.
pub async fn authenticate(
    store: &Store,
    uses: &KeyUses,
    bearer: &str,
) -> Result<ApiKeyRecord, AuthError> {
    if !bearer.starts_with(KEY_PREFIX) || bearer.len() > 128 {
        return Err(AuthError::Unauthenticated);
    }
    let hash = hash_key(bearer);
    let record = store.api_key_by_hash(hash).await?;
    let Some(record) = record else {
        return Err(AuthError::Unauthenticated);
    };
    let now = airlock_store::time::now();
    match record.refusal(now) {
        Some(KeyRefusal::Revoked(at)) => {
            return Err(AuthError::KeyRefused(format!(
                "this API key ({}) was revoked at {}",
                record.id,
                airlock_store::time::fmt(at)
            )))
        }
        Some(KeyRefusal::Expired(at)) => {
            return Err(AuthError::KeyRefused(format!(
                "this API key ({}) expired at {}",
                record.id,
                airlock_store::time::fmt(at)
            )))
        }
        None => {}
    }
    uses.note(store, &record, now);
    Ok(record)
}

/// Checks a SCRAM-SHA-256 proof made with one of `user`'s live keys (the
/// PostgreSQL proxy's login): the key it was made with and the server
/// signature proving Airlock knew the verifier. Unknown users, revoked,
/// expired and verifier-less keys, and wrong proofs are all one
/// `Unauthenticated`; a store failure is an error, never a pass.
pub async fn scram_login(
    store: &Store,
    uses: &KeyUses,
    user: &UserName,
    auth_message: &[u8],
    proof: &[u8],
) -> Result<(ApiKeyRecord, [u8; 32]), AuthError> {
    let who = user.clone();
    let keys = store.read_single(move |r| r.api_keys_of(&who)).await?;
    let now = airlock_store::time::now();
    let salt = scram::salt(user);
    for key in keys {
        if key.role == Role::Enforcer || key.refusal(now).is_some() {
            continue;
        }
        let Some(v) = key.scram.as_deref().and_then(Verifier::parse) else {
            continue;
        };
        if !v.uses_salt(&salt, scram::ITERATIONS) {
            continue;
        }
        if let Some(signature) = v.check(auth_message, proof) {
            uses.note(store, &key, now);
            return Ok((key, signature));
        }
    }
    Err(AuthError::Unauthenticated)
}

/// When this node last asked the store to record each key's use, so that a
/// busy key costs one small write a minute, not one per request.
#[derive(Debug, Default)]
pub struct KeyUses {
    asked: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl KeyUses {
    /// Records, in the background, that `key` was used at `now` if what
    /// the store holds is older than [`LAST_USED_GRANULARITY`]. Never
    /// waits, and a failure only leaves "last used" a little older.
    fn note(&self, store: &Store, key: &ApiKeyRecord, now: DateTime<Utc>) {
        let fresh = |t: DateTime<Utc>| now - t < LAST_USED_GRANULARITY;
        if key.last_used_at.is_some_and(fresh) {
            return;
        }
        {
            let Ok(mut asked) = self.asked.lock() else {
                return;
            };
            if asked.get(&key.id).is_some_and(|t| fresh(*t)) {
                return;
            }
            asked.insert(key.id.clone(), now);
        }
        let (store, id) = (store.clone(), key.id.clone());
        tokio::spawn(async move {
            let ids = vec![id];
            if let Err(e) = store.write(move |tx| tx.touch_api_keys(&ids, now)).await {
                tracing::debug!(error = %e, "could not record an API key's use");
            }
        });
    }
}
