//! Slack's callbacks: `POST /integrations/slack/interactions` (button
//! presses and the deny reason dialog), verified with Slack's `v0`
//! signature. The messages themselves are `airlock_notify::slack`'s.

use std::sync::Arc;
use std::time::Duration;

use airlock_core::{UserName, Verdict};
use airlock_notify::slack::interaction::{Ask, Interaction};
use airlock_store::Role;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::{Airlock, ApiError, Caller};

type AppState = Arc<Airlock>;

/// Requests older than this are refused (replays).
const MAX_SKEW_SECONDS: i64 = 300;

/// The interactions endpoint.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/integrations/slack/interactions", post(interactions))
}

/// Checks Slack's signature: `v0=` + hex HMAC-SHA256 of
/// `v0:{timestamp}:{raw body}` with the signing secret, compared in
/// constant time; timestamps more than five minutes off are refused.
pub(crate) fn verify(
    secret: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: i64,
) -> Result<(), &'static str> {
    if secret.is_empty() {
        return Err("no signing secret");
    }
    let ts: i64 = timestamp.parse().map_err(|_| "bad timestamp")?;
    if (now - ts).abs() > MAX_SKEW_SECONDS {
        return Err("stale timestamp");
    }
    let sig = signature.strip_prefix("v0=").ok_or("bad signature")?;
    let sig = hex::decode(sig).map_err(|_| "bad signature")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| "bad secret")?;
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&sig).map_err(|_| "signature mismatch")
}

impl Airlock {
    fn user_of_slack(&self, slack_id: &str) -> Option<UserName> {
        let config = self.config.load();
        Some(
            config
                .user_where(|u| u.slack_id.as_deref() == Some(slack_id))?
                .name
                .clone(),
        )
    }
}

/// A refusal in the API's error shape (`{"error": {"code", "message"}}`).
fn refuse(e: ApiError) -> Response {
    e.into_response()
}

/// Button presses and the deny dialog's submission.
async fn interactions(
    State(airlock): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let config = airlock.config.load_full();
    let Some(cfg) = &config.notify.slack else {
        return refuse(ApiError::NotFound("Slack is not configured".into()));
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    // Verified on the raw bytes, before anything is parsed.
    if let Err(why) = verify(
        &cfg.signing_secret,
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
        &body,
        chrono::Utc::now().timestamp(),
    ) {
        tracing::warn!(why, "refused a Slack callback");
        return refuse(ApiError::KeyRefused(format!(
            "Slack signature refused: {why}"
        )));
    }
    let i = match Interaction::parse(&body) {
        Ok(i) => i,
        Err(why) => return refuse(ApiError::BadRequest(why.to_string())),
    };
    // The link opened the console (which signs the person in); nothing
    // to do here, whoever clicked.
    if i.ask == Ask::OpenConsole {
        return StatusCode::OK.into_response();
    }
    let answer = |text: String| ephemeral(i.response_url.clone(), text);
    let Some(user) = airlock.user_of_slack(&i.user) else {
        return answer("You are not an Airlock user (no `slack_id` matches yours).".into()).await;
    };
    let caller = Caller {
        user,
        role: Role::User,
        key_id: format!("slack:{}", i.user),
    };
    match &i.ask {
        Ask::OpenConsole => StatusCode::OK.into_response(),
        Ask::Approve(id) => match airlock
            .review(
                &caller,
                *id,
                Verdict::Approve,
                None,
                "slack",
                Default::default(),
            )
            .await
        {
            Ok(_) => StatusCode::OK.into_response(),
            Err(e) => answer(super::respond::slack(&e)).await,
        },
        Ask::DenyDialog {
            request: id,
            trigger_id,
        } => {
            // A deny needs a reason: ask for it in a dialog, checking
            // first that this person may deny at all.
            if let Err(e) = airlock.may_review(&caller, *id).await {
                return answer(super::respond::slack(&e)).await;
            }
            let modal = json!({
                "trigger_id": trigger_id,
                "view": {
                    "type": "modal", "callback_id": "deny", "private_metadata": id.to_string(),
                    "title": {"type": "plain_text", "text": "Deny request"},
                    "submit": {"type": "plain_text", "text": "Deny"},
                    "blocks": [{"type": "input", "block_id": "reason",
                        "label": {"type": "plain_text", "text": "Why? The requester reads it."},
                        "element": {"type": "plain_text_input", "action_id": "reason", "multiline": true}}],
                }
            });
            let http = reqwest::Client::new();
            match airlock_notify::slack::call(
                &http,
                cfg,
                "views.open",
                &modal,
                Duration::from_secs(3),
            )
            .await
            {
                Ok(_) => StatusCode::OK.into_response(),
                Err(e) => refuse(ApiError::Upstream(e.to_string())),
            }
        }
        Ask::Deny {
            request: id,
            reason,
        } => {
            match airlock
                .review(&caller, *id, Verdict::Deny, reason.clone(), "slack", Default::default())
                .await
            {
                // An empty 200 closes the dialog.
                Ok(_) => StatusCode::OK.into_response(),
                Err(e) => {
                    Json(json!({"response_action": "errors", "errors": {"reason": super::respond::slack(&e)}}))
                        .into_response()
                }
            }
        }
    }
}

/// Tells only the person who clicked, through the interaction's
/// `response_url`.
async fn ephemeral(response_url: Option<String>, text: String) -> Response {
    if let Some(url) = response_url {
        let sent = reqwest::Client::new()
            .post(&url)
            .timeout(Duration::from_secs(3))
            .json(&json!({"response_type": "ephemeral", "replace_original": false, "text": text}))
            .send()
            .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "cannot answer on Slack's response_url");
        }
    }
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slack's documented example.
    #[test]
    fn signature_known_answer() {
        let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let sig = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert_eq!(
            verify(
                "8f742231b10e8888abcd99yyyzzz85a5",
                "1531420618",
                sig,
                body.as_bytes(),
                1_531_420_618
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                "8f742231b10e8888abcd99yyyzzz85a5",
                "1531420618",
                sig,
                body.as_bytes(),
                1_531_420_618 + 301
            ),
            Err("stale timestamp")
        );
        assert!(verify(
            "other-secret",
            "1531420618",
            sig,
            body.as_bytes(),
            1_531_420_618
        )
        .is_err());
        assert!(verify(
            "8f742231b10e8888abcd99yyyzzz85a5",
            "1531420618",
            sig,
            b"tampered",
            1_531_420_618
        )
        .is_err());
    }
}
