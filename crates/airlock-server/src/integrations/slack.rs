//! Slack: the request message (Block Kit, Approve/Deny buttons), its
//! updates and the requester's direct message (sent from the outbox), and
//! `POST /integrations/slack/interactions` (button presses and the deny
//! reason dialog), verified with Slack's `v0` signature.

use std::sync::Arc;
use std::time::Duration;

use airlock_core::display::{json_compact, truncate, visible};
use airlock_core::{RequestId, UserName, Verdict};
use airlock_store::{OutboxMessage, Role};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::config::SlackConfig;
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

/// Longest untrusted value (in characters, escaped) in one message field;
/// Slack refuses a field over 2,000 and a text over 3,000.
const MAX_VALUE: usize = 1500;
/// Longest review reason shown.
const MAX_REVIEW: usize = 300;

/// The three characters Slack's mrkdwn gives meaning to, escaped as Slack
/// documents: with no raw `<` there is no `<!channel>`, `<!here>`,
/// `<@U…>` or `<https://…|disguised>` link.
fn mrkdwn_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Untrusted text for mrkdwn: hidden characters shown as escapes, then
/// escaped for Slack.
pub(crate) fn mrkdwn_text(s: &str) -> String {
    mrkdwn_escape(&visible(s))
}

/// Untrusted text for inside a code span (`` `…` ``), at most `max`
/// characters: as [`mrkdwn_text`], on one line (newlines are shown as
/// `\n`), and with backticks, which Slack cannot escape, shown as `\u{60}`
/// so the value cannot close the span and write formatting of its own.
pub(crate) fn mrkdwn_code(s: &str, max: usize) -> String {
    let escaped = mrkdwn_text(s).replace('`', "\\u{60}");
    truncate(&escaped, max).into_owned()
}

/// Untrusted JSON for inside a code block: hidden characters and backticks
/// written as JSON escapes (`\u0060`), so it reads as the same JSON.
pub(crate) fn mrkdwn_json(v: &Value, max: usize) -> String {
    let escaped = mrkdwn_escape(&json_compact(v)).replace('`', "\\u0060");
    truncate(&escaped, max).into_owned()
}

/// `*alice* wants to *export* ...` with the thresholds, and the buttons
/// while the request is pending. Everything a requester or reviewer wrote
/// is escaped and set in code, so it shows as written and cannot mention,
/// link or format.
pub(crate) fn render(
    view: &Value,
    slack_ids: &dyn Fn(&str) -> Option<String>,
    link: &str,
) -> (String, Value) {
    let who = |u: &str| slack_ids(u).map_or_else(|| mrkdwn_text(u), |id| format!("<@{id}>"));
    let field = |v: &Value| mrkdwn_text(v.as_str().unwrap_or(""));
    let id = view["id"].as_str().unwrap_or("");
    let status = field(&view["status"]);
    let resource = format!(
        "{}:{}",
        view["resource"]["type"].as_str().unwrap_or(""),
        view["resource"]["id"].as_str().unwrap_or(""),
    );
    let headline = format!(
        "{} wants to *{}* `{}`",
        who(view["principal"].as_str().unwrap_or("")),
        field(&view["action"]),
        mrkdwn_code(&resource, MAX_VALUE),
    );
    let reason = view["reason"].as_str().map_or_else(
        || "—".to_owned(),
        |r| format!("`{}`", mrkdwn_code(r, MAX_VALUE)),
    );
    let thresholds: Vec<String> = view["thresholds"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let groups: Vec<String> = t["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|g| g.as_str())
                .map(mrkdwn_text)
                .collect();
            let eligible: Vec<String> = t["eligible"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|u| u.as_str())
                .map(who)
                .collect();
            format!(
                "• {} {}/{} — can approve: {}",
                groups.join(" or "),
                t["approvals"].as_u64().unwrap_or(0),
                t["quorum"].as_u64().unwrap_or(1),
                eligible.join(", ")
            )
        })
        .collect();
    let mut blocks = vec![
        json!({"type": "section", "text": {"type": "mrkdwn", "text": headline}}),
        json!({"type": "section", "fields": [
            {"type": "mrkdwn", "text": format!("*Reason*\n{reason}")},
            {"type": "mrkdwn", "text": format!("*Params*\n```{}```", mrkdwn_json(&view["params"], MAX_VALUE))},
        ]}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*Thresholds*\n{}", thresholds.join("\n"))}}),
    ];
    let reviews: Vec<String> = view["reviews"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            format!(
                "{} {}{}",
                who(r["reviewer"].as_str().unwrap_or("")),
                field(&r["verdict"]),
                r["reason"]
                    .as_str()
                    .map(|w| format!(": `{}`", mrkdwn_code(w, MAX_REVIEW)))
                    .unwrap_or_default()
            )
        })
        .collect();
    if !reviews.is_empty() {
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": reviews.join(" · ")}]}));
    }
    if status == "pending" {
        blocks.push(
            json!({"type": "actions", "block_id": "review", "elements": [
                {"type": "button", "action_id": "approve", "style": "primary", "value": id,
                 "text": {"type": "plain_text", "text": "Approve"}},
                {"type": "button", "action_id": "deny", "style": "danger", "value": id,
                 "text": {"type": "plain_text", "text": "Deny"}},
            ]}),
        );
    } else {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*Request {status}.*")}}));
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("<{link}|{id}> · {status}")}]}));
    // The notification's text: the headline without the bold marks (and
    // only those: the resource is shown as written).
    let text = format!(
        "{} wants to {} `{}` — {status}",
        who(view["principal"].as_str().unwrap_or("")),
        field(&view["action"]),
        mrkdwn_code(&resource, MAX_VALUE),
    );
    (text, Value::Array(blocks))
}

impl Airlock {
    fn slack_id_of(&self, user: &str) -> Option<String> {
        let config = self.config.load();
        config
            .user_where(|u| u.name.as_str() == user)?
            .slack_id
            .clone()
    }

    fn user_of_slack(&self, slack_id: &str) -> Option<UserName> {
        let config = self.config.load();
        Some(
            config
                .user_where(|u| u.slack_id.as_deref() == Some(slack_id))?
                .name
                .clone(),
        )
    }

    /// Calls a Slack Web API method; Slack answers 200 with `ok: false`
    /// on errors, which count as failures too.
    async fn slack_call(
        &self,
        http: &reqwest::Client,
        cfg: &SlackConfig,
        method: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, (String, bool)> {
        let res = http
            .post(format!("{}/{method}", cfg.api_url.trim_end_matches('/')))
            .timeout(timeout)
            .bearer_auth(&cfg.bot_token)
            .json(body)
            .send()
            .await
            .map_err(|e| (format!("{method}: {e}"), false))?;
        let v: Value = res
            .json()
            .await
            .map_err(|e| (format!("{method}: {e}"), false))?;
        if v["ok"].as_bool() == Some(true) {
            Ok(v)
        } else {
            let err = v["error"].as_str().unwrap_or("unknown error").to_owned();
            let permanent = matches!(
                err.as_str(),
                "invalid_auth" | "not_authed" | "channel_not_found" | "account_inactive"
            );
            Err((format!("{method}: {err}"), permanent))
        }
    }

    /// Delivers one Slack outbox message, rendered from the request as it
    /// is now (so a late retry shows the latest state).
    pub(crate) async fn send_slack(
        &self,
        http: &reqwest::Client,
        cfg: &SlackConfig,
        msg: &OutboxMessage,
        timeout: Duration,
    ) -> Result<(), (String, bool)> {
        let (req, view, link) = self.chat_subject(msg).await?;
        let id = req.id;
        let (text, blocks) = render(&view, &|u| self.slack_id_of(u), &link);
        if let Some(channel) = msg.target.strip_prefix("slack:post:") {
            // Posted already (the answer was lost before the outbox heard):
            // do not post twice.
            let posted = self
                .store
                .read(move |r| r.chat_messages(&id, "slack"))
                .await
                .map_err(|e| (e.to_string(), false))?;
            if posted.iter().any(|(c, _)| c == channel) {
                return Ok(());
            }
            let v = self
                .slack_call(
                    http,
                    cfg,
                    "chat.postMessage",
                    &json!({"channel": channel, "text": text, "blocks": blocks}),
                    timeout,
                )
                .await?;
            let (c, ts) = (
                v["channel"].as_str().unwrap_or(channel).to_owned(),
                v["ts"].as_str().unwrap_or_default().to_owned(),
            );
            self.store
                .write(move |tx| tx.save_chat_message(&id, "slack", &c, &ts))
                .await
                .map_err(|e| (e.to_string(), false))?;
            Ok(())
        } else if msg.target == "slack:update" {
            let posted = self
                .store
                .read(move |r| r.chat_messages(&id, "slack"))
                .await
                .map_err(|e| (e.to_string(), false))?;
            if posted.is_empty() {
                return Err(("the request's message is not posted yet".into(), false));
            }
            for (channel, ts) in posted {
                self.slack_call(
                    http,
                    cfg,
                    "chat.update",
                    &json!({"channel": channel, "ts": ts, "text": text, "blocks": blocks}),
                    timeout,
                )
                .await?;
            }
            Ok(())
        } else if let Some(user) = msg.target.strip_prefix("slack:dm:") {
            let outcome = format!(
                "Your request to {} `{}` was {}. {link}",
                req.action.action,
                mrkdwn_code(
                    &format!("{}:{}", req.action.resource.kind, req.action.resource.id),
                    MAX_VALUE
                ),
                req.status
            );
            self.slack_call(
                http,
                cfg,
                "chat.postMessage",
                &json!({"channel": user, "text": outcome}),
                timeout,
            )
            .await
            .map(|_| ())
        } else {
            Err((format!("unknown Slack target {}", msg.target), true))
        }
    }
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, Json(json!({"error": why}))).into_response()
}

/// Button presses and the deny dialog's submission.
async fn interactions(
    State(airlock): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let config = airlock.config.load_full();
    let Some(cfg) = &config.notify.slack else {
        return refuse(StatusCode::NOT_FOUND, "Slack is not configured");
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
        return refuse(StatusCode::UNAUTHORIZED, why);
    }
    let payload: Option<Value> =
        url_form_payload(&body).and_then(|p| serde_json::from_str(&p).ok());
    let Some(payload) = payload else {
        return refuse(StatusCode::BAD_REQUEST, "no payload");
    };
    let slack_user = payload["user"]["id"].as_str().unwrap_or("");
    let Some(user) = airlock.user_of_slack(slack_user) else {
        return ephemeral(
            &payload,
            "You are not an Airlock user (no `slack_id` matches yours).",
        )
        .await;
    };
    let caller = Caller {
        user,
        role: Role::User,
        key_id: format!("slack:{slack_user}"),
    };
    match payload["type"].as_str() {
        Some("block_actions") => {
            let action = &payload["actions"][0];
            let Some(id) = action["value"]
                .as_str()
                .and_then(|v| RequestId::parse(v).ok())
            else {
                return refuse(StatusCode::BAD_REQUEST, "no request in the action");
            };
            match action["action_id"].as_str() {
                Some("approve") => match airlock
                    .review(&caller, id, Verdict::Approve, None, "slack")
                    .await
                {
                    Ok(_) => StatusCode::OK.into_response(),
                    Err(e) => ephemeral(&payload, &refusal(&e)).await,
                },
                Some("deny") => {
                    // A deny needs a reason: ask for it in a dialog, checking
                    // first that this person may deny at all.
                    if let Err(e) = airlock.may_review(&caller, id).await {
                        return ephemeral(&payload, &refusal(&e)).await;
                    }
                    let modal = json!({
                        "trigger_id": payload["trigger_id"],
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
                    match airlock
                        .slack_call(&http, cfg, "views.open", &modal, Duration::from_secs(3))
                        .await
                    {
                        Ok(_) => StatusCode::OK.into_response(),
                        Err((e, _)) => refuse(StatusCode::BAD_GATEWAY, &e),
                    }
                }
                _ => refuse(StatusCode::BAD_REQUEST, "unknown action"),
            }
        }
        Some("view_submission") if payload["view"]["callback_id"] == "deny" => {
            let id = payload["view"]["private_metadata"]
                .as_str()
                .and_then(|v| RequestId::parse(v).ok());
            let reason = payload["view"]["state"]["values"]["reason"]["reason"]["value"]
                .as_str()
                .map(str::to_owned);
            let Some(id) = id else {
                return refuse(StatusCode::BAD_REQUEST, "no request in the dialog");
            };
            match airlock
                .review(&caller, id, Verdict::Deny, reason, "slack")
                .await
            {
                // An empty 200 closes the dialog.
                Ok(_) => StatusCode::OK.into_response(),
                Err(e) => {
                    Json(json!({"response_action": "errors", "errors": {"reason": refusal(&e)}}))
                        .into_response()
                }
            }
        }
        _ => refuse(StatusCode::BAD_REQUEST, "unsupported interaction"),
    }
}

fn refusal(e: &ApiError) -> String {
    // Error messages can quote what someone wrote.
    format!("Not done: {}", mrkdwn_text(&e.to_string()))
}

/// Tells only the person who clicked, through the interaction's
/// `response_url`.
async fn ephemeral(payload: &Value, text: &str) -> Response {
    if let Some(url) = payload["response_url"].as_str() {
        let sent = reqwest::Client::new()
            .post(url)
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

/// The `payload` field of an `application/x-www-form-urlencoded` body.
fn url_form_payload(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "payload").then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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

    /// Every text object in a Block Kit value, at any depth.
    fn texts(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(t) = o.get("text").and_then(Value::as_str) {
                    out.push(t.to_owned());
                }
                o.values().for_each(|v| texts(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| texts(v, out)),
            _ => {}
        }
    }

    #[test]
    fn what_requesters_and_reviewers_write_is_inert_in_slack() {
        let link = "https://airlock.example/requests/req_x";
        let view = json!({
            "id": "req_x", "status": "pending", "principal": "alice", "action": "export",
            "resource": {"type": "Table", "id": "orders` *approved by security* `<!channel>"},
            "reason": "<!channel> <!here> <@U0CAROL> read <http://evil.example|the docs> ```\n*Thresholds* met\u{202e}fdp.exe\u{1b}[2J",
            "params": {"sql": "``` <!everyone> ``` & <http://a|b>", "k\u{200b}": "\u{7f}"},
            "thresholds": [{"groups": ["security"], "approvals": 0, "quorum": 2, "eligible": ["bob"]}],
            "reviews": [{"reviewer": "bob", "verdict": "deny", "reason": "`<!here>` fine\u{2066}"}],
        });
        let ids = |u: &str| (u == "bob").then(|| "U0BOB".to_owned());
        let (text, blocks) = render(&view, &ids, link);
        let mut all = vec![text];
        texts(&blocks, &mut all);
        for t in &all {
            // Only the mentions and the link Airlock itself wrote remain.
            let rest = t
                .replace("<@U0BOB>", "")
                .replace(&format!("<{link}|req_x>"), "");
            assert!(!rest.contains('<') && !rest.contains('>'), "{t}");
            // No hidden characters but the line breaks between Airlock's
            // own parts.
            assert!(
                t.chars()
                    .filter(|c| airlock_core::display::is_hidden(*c))
                    .all(|c| c == '\n'),
                "no hidden characters: {t:?}"
            );
            // Code spans open and close only where Airlock put them.
            let ticks = t.matches('`').count();
            if let Some(params) = t.strip_prefix("*Params*\n") {
                assert!(params.starts_with("```") && params.ends_with("```"), "{t}");
                assert_eq!(ticks, 6, "{t}");
            } else {
                assert!(ticks == 0 || ticks == 2, "{t}");
            }
        }
        let all = all.join("\n");
        for shown in [
            "&lt;!channel&gt;",
            "&lt;http://evil.example|the docs&gt;",
            "\\u{202e}fdp.exe",
            "\\u{1b}[2J",
            "\\n*Thresholds*",
            "orders\\u{60} *approved by security* \\u{60}&lt;!channel&gt;",
            "\\u0060\\u0060\\u0060 &lt;!everyone&gt;",
            "&amp; &lt;http://a|b&gt;",
            "k\\u200b",
            "\\u{2066}",
        ] {
            assert!(all.contains(shown), "shows {shown}: {all}");
        }
    }

    #[test]
    fn payload_is_url_decoded() {
        assert_eq!(
            url_form_payload(b"a=1&payload=%7B%22x%22%3A+1%7D").as_deref(),
            Some("{\"x\": 1}")
        );
    }
}
