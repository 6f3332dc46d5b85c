//! Discord's callbacks: `POST /integrations/discord/interactions`,
//! verified with the application's Ed25519 key over timestamp and raw body
//! before anything is parsed. Interactions are handled once, whichever
//! node gets a retry. The messages themselves are
//! `airlock_notify::discord`'s.

use std::sync::Arc;

use airlock_core::{RequestId, UserName, Verdict};
use airlock_notify::discord::allowed_mentions;
use airlock_store::time::now;
use airlock_store::Role;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::{json, Value};

use crate::{Airlock, Caller};

type AppState = Arc<Airlock>;

/// The interactions endpoint.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/integrations/discord/interactions", post(interactions))
}

/// Checks Discord's signature: Ed25519 over `timestamp ‖ body` with the
/// application's public key (hex), strictly (no malleable signatures).
pub(crate) fn verify(
    public_key_hex: &str,
    timestamp: &str,
    signature_hex: &str,
    body: &[u8],
) -> Result<(), &'static str> {
    let key: [u8; 32] = hex::decode(public_key_hex)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or("bad public key")?;
    let key = VerifyingKey::from_bytes(&key).map_err(|_| "bad public key")?;
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
        return (StatusCode::NOT_FOUND, "Discord is not configured").into_response();
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
    ) {
        tracing::warn!(why, "refused a Discord interaction");
        return (StatusCode::UNAUTHORIZED, why).into_response();
    }
    let Ok(i) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    if i["type"] == 1 {
        return Json(json!({"type": 1})).into_response(); // PING → PONG
    }
    // Discord retries; handle each interaction once, on any node.
    let iid = i["id"].as_str().unwrap_or("").to_owned();
    let t = now();
    let fresh = airlock
        .store
        .write(move |tx| tx.first_seen("discord", &iid, t))
        .await;
    match fresh {
        Ok(true) => {}
        Ok(false) => return private("Already handled."),
        Err(e) => return private(&super::respond::discord(&e.into())),
    }
    let discord_user = i["member"]["user"]["id"]
        .as_str()
        .or(i["user"]["id"].as_str())
        .unwrap_or("");
    let Some(user) = airlock.user_of_discord(discord_user) else {
        return private("You are not an Airlock user (no `discord_id` matches yours).");
    };
    let caller = Caller {
        user,
        role: Role::User,
        key_id: format!("discord:{discord_user}"),
    };
    let custom = i["data"]["custom_id"].as_str().unwrap_or("");
    let (verb, rid) = custom.split_once(':').unwrap_or(("", ""));
    let Ok(id) = RequestId::parse(rid) else {
        return (StatusCode::BAD_REQUEST, "no request in the interaction").into_response();
    };
    match (i["type"].as_u64(), verb) {
        (Some(3), "approve") => match airlock
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
            Err(e) => private(&super::respond::discord(&e)),
        },
        (Some(3), "deny") => {
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
        (Some(5), "deny") => {
            let reason = i["data"]["components"][0]["components"][0]["value"]
                .as_str()
                .map(str::to_owned);
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
        _ => (StatusCode::BAD_REQUEST, "unsupported interaction").into_response(),
    }
}
