//! Discord's callbacks: `POST /integrations/discord/interactions`,
//! verified with the application's Ed25519 key over timestamp and raw body
//! before anything is parsed. Interactions are handled once, whichever
//! node gets a retry. The messages themselves are
//! `airlock_notify::discord`'s.

use std::sync::Arc;

use airlock_core::{UserName, Verdict};
use airlock_notify::discord::allowed_mentions;
use airlock_notify::discord::interaction::{Ask, Interaction};
use airlock_store::time::now;
use airlock_store::Role;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::json;

use crate::{Airlock, ApiError, Caller};

type AppState = Arc<Airlock>;

/// The interactions endpoint.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/integrations/discord/interactions", post(interactions))
}

/// How far a callback's timestamp may be from now, either way. Discord
/// signs the timestamp with the body; refusing old ones means a captured
/// interaction cannot be played back later under another interaction id.
const MAX_SKEW_SECONDS: i64 = 300;

/// The application's public key as Discord shows it (64 hex digits), or
/// why it is none: checked when the config loads, so a mistyped key is a
/// start-up error rather than every interaction refused.
pub(crate) fn public_key(hex_text: &str) -> Result<VerifyingKey, &'static str> {
    let key: [u8; 32] = hex::decode(hex_text)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or("not 64 hex digits")?;
    VerifyingKey::from_bytes(&key).map_err(|_| "not an Ed25519 public key")
}

/// Checks Discord's signature: Ed25519 over `timestamp ‖ body` with the
/// application's public key (hex), strictly (no malleable signatures), and
/// that the timestamp (Unix seconds) is within five minutes of `now`.
pub(crate) fn verify(
    public_key_hex: &str,
    timestamp: &str,
    signature_hex: &str,
    body: &[u8],
    now: i64,
) -> Result<(), &'static str> {
    let ts: i64 = timestamp.parse().map_err(|_| "bad timestamp")?;
    if (now - ts).abs() > MAX_SKEW_SECONDS {
        return Err("stale timestamp");
    }
    let key = public_key(public_key_hex)?;
    let sig: [u8; 64] = hex::decode(signature_hex)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or("bad signature")?;
    let mut msg = Vec::with_capacity(timestamp.len() + body.len());
    msg.extend_from_slice(timestamp.as_bytes());
    msg.extend_from_slice(body);
    key.verify_strict(&msg, &Signature::from_bytes(&sig))
        .map_err(|_| "signature mismatch")
}

impl Airlock {
    fn user_of_discord(&self, id: &str) -> Option<UserName> {
        let config = self.config.load();
        Some(
            config
                .user_where(|u| u.discord_id.as_deref() == Some(id))?
                .name
                .clone(),
        )
    }
}

/// An answer only the clicking user sees.
fn private(text: &str) -> Response {
    Json(json!({"type": 4, "data": {"content": text, "flags": 64, "allowed_mentions": allowed_mentions(&[])}}))
        .into_response()
}

async fn interactions(
    State(airlock): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let config = airlock.config.load_full();
    let Some(cfg) = &config.notify.discord else {
        return ApiError::NotFound("Discord is not configured".into()).into_response();
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    // Verified on the raw bytes, before anything is parsed.
    if let Err(why) = verify(
        &cfg.application_public_key,
        header("x-signature-timestamp"),
        header("x-signature-ed25519"),
        &body,
        now().timestamp(),
    ) {
        tracing::warn!(why, "refused a Discord interaction");
        return ApiError::KeyRefused(format!("Discord signature refused: {why}")).into_response();
    }
    let i = match Interaction::parse(&body) {
        Ok(i) => i,
        Err(why) => return ApiError::BadRequest(why.to_string()).into_response(),
    };
    if i.ask == Ask::Ping {
        return Json(json!({"type": 1})).into_response(); // PING → PONG
    }
    // Discord retries; handle each interaction once, on any node.
    let (iid, t) = (i.id.clone(), now());
    let fresh = airlock
        .store
        .write(move |tx| tx.first_seen("discord", &iid, t))
        .await;
    match fresh {
        Ok(true) => {}
        Ok(false) => return private("Already handled."),
        Err(e) => return private(&super::respond::discord(&e.into())),
    }
    let Some(user) = airlock.user_of_discord(&i.user) else {
        return private("You are not an Airlock user (no `discord_id` matches yours).");
    };
    let caller = Caller {
        user,
        role: Role::User,
        key_id: format!("discord:{}", i.user),
    };
    match i.ask {
        Ask::Ping => Json(json!({"type": 1})).into_response(),
        Ask::Approve(id) => match airlock
            .review(
                &caller,
                id,
                Verdict::Approve,
                None,
                "discord",
                Default::default(),
            )
            .await
        {
            // Acknowledged; the message is updated from the outbox.
            Ok(_) => Json(json!({"type": 6})).into_response(),
            Err(e) if e.code() == airlock_api::ErrorCode::StepUpRequired => {
                // The refusal names the request's page, but escaped with
                // the rest of the text Discord shows it as text: the page
                // again, as a link (Airlock's own URL, not a value).
                private(&format!(
                    "{}\nApprove in the console: <{}/requests/{id}>",
                    super::respond::discord(&e),
                    airlock.public_url()
                ))
            }
            Err(e) => private(&super::respond::discord(&e)),
        },
        Ask::DenyDialog(id) => {
            if let Err(e) = airlock.may_review(&caller, id).await {
                return private(&super::respond::discord(&e));
            }
            Json(json!({"type": 9, "data": {
                "custom_id": format!("deny:{id}"),
                "title": "Deny request",
                "components": [{"type": 1, "components": [{
                    "type": 4, "custom_id": "reason", "style": 2, "required": true,
                    "label": "Why? The requester reads it."
                }]}]
            }}))
            .into_response()
        }
        Ask::Deny {
            request: id,
            reason,
        } => {
            match airlock
                .review(
                    &caller,
                    id,
                    Verdict::Deny,
                    reason,
                    "discord",
                    Default::default(),
                )
                .await
            {
                Ok(_) => private("Denied."),
                Err(e) => private(&super::respond::discord(&e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8032's first test key; the signature made by an independent
    /// implementation (Python's `cryptography`) over Discord's layout,
    /// `timestamp ‖ body`.
    const PUBLIC: &str = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";
    const TS: &str = "1764147600";
    const BODY: &str = r#"{"type":1,"id":"1","application_id":"2","token":"t","version":1}"#;
    const SIG: &str = "246c412a3bc65771865cc35df9b73db1856543af5172b6b3aa1eebf34c945a8335c49b84b12bacbbf7889ad861252e45b7ac40297b58989f20848c7bd011fa05";
    const NOW: i64 = 1_764_147_600;

    #[test]
    fn signature_known_answer() {
        assert_eq!(verify(PUBLIC, TS, SIG, BODY.as_bytes(), NOW), Ok(()));
        assert_eq!(verify(PUBLIC, TS, SIG, BODY.as_bytes(), NOW + 300), Ok(()));
    }

    #[test]
    fn forged_and_stale_are_refused() {
        let refused = |key: &str, ts: &str, sig: &str, body: &str, now: i64| {
            verify(key, ts, sig, body.as_bytes(), now).is_err()
        };
        // Stale either way, and no timestamp at all.
        assert_eq!(
            verify(PUBLIC, TS, SIG, BODY.as_bytes(), NOW + 301),
            Err("stale timestamp")
        );
        assert!(refused(PUBLIC, TS, SIG, BODY, NOW - 301));
        assert!(refused(PUBLIC, "", SIG, BODY, NOW));
        // Another body, another timestamp (signed over both), another key.
        assert!(refused(
            PUBLIC,
            TS,
            SIG,
            &BODY.replace("\"t\"", "\"u\""),
            NOW
        ));
        assert!(refused(PUBLIC, "1764147601", SIG, BODY, NOW));
        let other = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
        assert!(refused(other, TS, SIG, BODY, NOW));
        // One bit of the signature flipped; a truncated one; not hex.
        let mut flipped = hex::decode(SIG).unwrap();
        flipped[10] ^= 1;
        assert!(refused(PUBLIC, TS, &hex::encode(flipped), BODY, NOW));
        assert!(refused(PUBLIC, TS, &SIG[..126], BODY, NOW));
        assert!(refused(PUBLIC, TS, &"zz".repeat(64), BODY, NOW));
        // The malleable twin (S + L, the group order): plain Ed25519 might
        // take it, strict verification does not.
        let mut twin = hex::decode(SIG).unwrap();
        let l: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut carry = 0u16;
        for i in 0..32 {
            let v = u16::from(twin[32 + i]) + u16::from(l[i]) + carry;
            twin[32 + i] = v as u8;
            carry = v >> 8;
        }
        assert!(refused(PUBLIC, TS, &hex::encode(twin), BODY, NOW));
        // A small-order public key (the identity) with an all-zero-ish
        // signature: the classic forgery against lax verifiers.
        let identity = format!("01{}", "00".repeat(31));
        let weak = format!("01{}{}", "00".repeat(31), "00".repeat(32));
        assert!(refused(&identity, TS, &weak, BODY, NOW));
    }
}
