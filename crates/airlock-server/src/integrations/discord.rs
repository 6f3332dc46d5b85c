//! Discord: the request message with Approve/Deny components, its updates
//! and the requester's direct message (sent from the outbox), and
//! `POST /integrations/discord/interactions`, verified with the
//! application's Ed25519 key over timestamp and raw body before anything is
//! parsed. Interactions are handled once, whichever node gets a retry.

use std::sync::Arc;
use std::time::Duration;

use airlock_core::display::{json_compact, truncate, visible};
use airlock_core::{RequestId, UserName, Verdict};
use airlock_store::time::now;
use airlock_store::{OutboxMessage, Role};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::{json, Value};

use crate::config::DiscordConfig;
use crate::{Airlock, ApiError, Caller};

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

/// Longest untrusted value (in characters, escaped) in a message; Discord
/// refuses content over 2,000 characters.
const MAX_VALUE: usize = 400;
/// Longest review reason shown.
const MAX_REVIEW: usize = 150;
/// Discord's limit on a message's content.
const MAX_CONTENT: usize = 2000;

/// Untrusted text for Discord markdown: hidden characters shown as
/// escapes, then every ASCII punctuation character backslash-escaped, which
/// Discord shows as the character itself: no formatting, headings, quotes,
/// spoilers, masked links (`[text](url)`), autolinks or mentions
/// (`@everyone`, `<@…>`, `<#…>`, `<@&…>`) can be formed.
pub(crate) fn markdown_text(s: &str, max: usize) -> String {
    let shown = visible(s);
    let shown = truncate(&shown, max);
    let mut out = String::with_capacity(shown.len() * 2);
    for c in shown.chars() {
        if c.is_ascii_punctuation() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Untrusted text for inside a code span: hidden characters shown as
/// escapes and backticks, which cannot be escaped inside code, as
/// `\u{60}`, so the value cannot close the span.
pub(crate) fn markdown_code(s: &str, max: usize) -> String {
    let escaped = visible(s).replace('`', "\\u{60}");
    truncate(&escaped, max).into_owned()
}

/// Untrusted JSON for inside a code span: hidden characters and backticks
/// as JSON escapes (`\u0060`), so it reads as the same JSON.
pub(crate) fn markdown_json(v: &Value, max: usize) -> String {
    let escaped = json_compact(v).replace('`', "\\u0060");
    truncate(&escaped, max).into_owned()
}

/// Who a message may notify: nobody by what it says (`parse` is empty, so
/// an `@everyone` or a mention in a value notifies no one), only the users
/// Airlock named itself.
pub(crate) fn allowed_mentions(users: &[String]) -> Value {
    let mut users: Vec<&String> = users.iter().collect();
    users.sort();
    users.dedup();
    // Discord accepts at most 100.
    users.truncate(100);
    json!({"parse": [], "users": users})
}

/// The message text, its components (buttons while pending) and its
/// `allowed_mentions`. Everything a requester or reviewer wrote is escaped
/// or set in code, so it shows as written and cannot mention, link or
/// format.
pub(crate) fn render(
    view: &Value,
    ids: &dyn Fn(&str) -> Option<String>,
    link: &str,
) -> (String, Value, Value) {
    let named = std::cell::RefCell::new(Vec::new());
    let who = |u: &str| match ids(u) {
        Some(id) => {
            let mention = format!("<@{id}>");
            named.borrow_mut().push(id);
            mention
        }
        None => markdown_text(u, MAX_VALUE),
    };
    let field = |v: &Value| markdown_text(v.as_str().unwrap_or(""), MAX_VALUE);
    let id = view["id"].as_str().unwrap_or("");
    let status = field(&view["status"]);
    let resource = format!(
        "{}:{}",
        view["resource"]["type"].as_str().unwrap_or(""),
        view["resource"]["id"].as_str().unwrap_or(""),
    );
    let mut lines = vec![
        format!(
            "{} wants to **{}** `{}`",
            who(view["principal"].as_str().unwrap_or("")),
            field(&view["action"]),
            markdown_code(&resource, MAX_VALUE),
        ),
        format!(
            "Reason: {}",
            view["reason"]
                .as_str()
                .map_or_else(|| "—".to_owned(), |r| markdown_text(r, MAX_VALUE))
        ),
        format!("Params: `{}`", markdown_json(&view["params"], MAX_VALUE)),
    ];
    for t in view["thresholds"].as_array().into_iter().flatten() {
        let groups: Vec<String> = t["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g.as_str())
            .map(|g| markdown_text(g, MAX_VALUE))
            .collect();
        let eligible: Vec<String> = t["eligible"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u.as_str())
            .map(who)
            .collect();
        lines.push(format!(
            "{} {}/{} — can approve: {}",
            groups.join(" or "),
            t["approvals"].as_u64().unwrap_or(0),
            t["quorum"].as_u64().unwrap_or(1),
            eligible.join(", ")
        ));
    }
    for r in view["reviews"].as_array().into_iter().flatten() {
        lines.push(format!(
            "{} {}{}",
            who(r["reviewer"].as_str().unwrap_or("")),
            field(&r["verdict"]),
            r["reason"]
                .as_str()
                .map(|w| format!(": “{}”", markdown_text(w, MAX_REVIEW)))
                .unwrap_or_default()
        ));
    }
    let last = format!("**Request {status}.** {link}");
    let mut content = lines.join("\n");
    // Keep within Discord's limit, and keep the last line (the state and
    // the link) whole.
    let room = MAX_CONTENT.saturating_sub(last.chars().count() + 2);
    content = truncate(&content, room).into_owned();
    content.push('\n');
    content.push_str(&last);
    let components = if view["status"] == "pending" {
        json!([{"type": 1, "components": [
            {"type": 2, "style": 3, "label": "Approve", "custom_id": format!("approve:{id}")},
            {"type": 2, "style": 4, "label": "Deny", "custom_id": format!("deny:{id}")},
        ]}])
    } else {
        json!([])
    };
    let mentions = allowed_mentions(&named.into_inner());
    (content, components, mentions)
}

impl Airlock {
    fn discord_id_of(&self, user: &str) -> Option<String> {
        let config = self.config.load();
        config
            .user_where(|u| u.name.as_str() == user)?
            .discord_id
            .clone()
    }

    fn user_of_discord(&self, id: &str) -> Option<UserName> {
        let config = self.config.load();
        Some(
            config
                .user_where(|u| u.discord_id.as_deref() == Some(id))?
                .name
                .clone(),
        )
    }

    async fn discord_call(
        &self,
        http: &reqwest::Client,
        cfg: &DiscordConfig,
        method: reqwest::Method,
        path: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, (String, bool)> {
        let res = http
            .request(
                method,
                format!("{}{path}", cfg.api_url.trim_end_matches('/')),
            )
            .timeout(timeout)
            .header("authorization", format!("Bot {}", cfg.bot_token))
            .json(body)
            .send()
            .await
            .map_err(|e| (format!("{path}: {e}"), false))?;
        let status = res.status();
        if status.is_success() {
            Ok(res.json().await.unwrap_or(Value::Null))
        } else {
            let permanent = matches!(status.as_u16(), 401 | 403 | 404);
            Err((format!("{path}: Discord answered {status}"), permanent))
        }
    }

    /// Delivers one Discord outbox message, rendered from the request now.
    pub(crate) async fn send_discord(
        &self,
        http: &reqwest::Client,
        cfg: &DiscordConfig,
        msg: &OutboxMessage,
        timeout: Duration,
    ) -> Result<(), (String, bool)> {
        let (req, view, link) = self.chat_subject(msg).await?;
        let id = req.id;
        let (content, components, mentions) = render(&view, &|u| self.discord_id_of(u), &link);
        let body =
            json!({"content": content, "components": components, "allowed_mentions": mentions});
        use reqwest::Method;
        match msg.target.as_str() {
            t if t.starts_with("discord:post:") => {
                let channel = &t["discord:post:".len()..];
                // Posted already (the answer was lost before the outbox heard):
                // do not post twice.
                let posted = self
                    .store
                    .read(move |r| r.chat_messages(&id, "discord"))
                    .await
                    .map_err(|e| (e.to_string(), false))?;
                if posted.iter().any(|(c, _)| c == channel) {
                    return Ok(());
                }
                let v = self
                    .discord_call(
                        http,
                        cfg,
                        Method::POST,
                        &format!("/channels/{channel}/messages"),
                        &body,
                        timeout,
                    )
                    .await?;
                let (c, m) = (
                    v["channel_id"].as_str().unwrap_or(channel).to_owned(),
                    v["id"].as_str().unwrap_or_default().to_owned(),
                );
                self.store
                    .write(move |tx| tx.save_chat_message(&id, "discord", &c, &m))
                    .await
                    .map_err(|e| (e.to_string(), false))
            }
            "discord:update" => {
                let posted = self
                    .store
                    .read(move |r| r.chat_messages(&id, "discord"))
                    .await
                    .map_err(|e| (e.to_string(), false))?;
                if posted.is_empty() {
                    return Err(("the request's message is not posted yet".into(), false));
                }
                for (channel, message) in posted {
                    self.discord_call(
                        http,
                        cfg,
                        Method::PATCH,
                        &format!("/channels/{channel}/messages/{message}"),
                        &body,
                        timeout,
                    )
                    .await?;
                }
                Ok(())
            }
            target => {
                let Some(user) = target.strip_prefix("discord:dm:") else {
                    return Err((format!("unknown Discord target {target}"), true));
                };
                let dm = self
                    .discord_call(
                        http,
                        cfg,
                        Method::POST,
                        "/users/@me/channels",
                        &json!({"recipient_id": user}),
                        timeout,
                    )
                    .await?;
                let channel = dm["id"].as_str().unwrap_or_default().to_owned();
                let text = format!(
                    "Your request to {} `{}` was {}. {link}",
                    req.action.action,
                    markdown_code(
                        &format!("{}:{}", req.action.resource.kind, req.action.resource.id),
                        MAX_VALUE
                    ),
                    req.status
                );
                self.discord_call(
                    http,
                    cfg,
                    Method::POST,
                    &format!("/channels/{channel}/messages"),
                    &json!({"content": text, "allowed_mentions": allowed_mentions(&[])}),
                    timeout,
                )
                .await
                .map(|_| ())
            }
        }
    }
}

/// An answer only the clicking user sees.
fn private(text: &str) -> Response {
    Json(json!({"type": 4, "data": {"content": text, "flags": 64, "allowed_mentions": allowed_mentions(&[])}}))
        .into_response()
}

fn refusal(e: &ApiError) -> String {
    // Error messages can quote what someone wrote.
    format!("Not done: {}", markdown_text(&e.to_string(), MAX_VALUE))
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
        Err(e) => return private(&refusal(&e.into())),
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
            .review(&caller, id, Verdict::Approve, None, "discord")
            .await
        {
            // Acknowledged; the message is updated from the outbox.
            Ok(_) => Json(json!({"type": 6})).into_response(),
            Err(e) => private(&refusal(&e)),
        },
        (Some(3), "deny") => {
            if let Err(e) = airlock.may_review(&caller, id).await {
                return private(&refusal(&e));
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
                .review(&caller, id, Verdict::Deny, reason, "discord")
                .await
            {
                Ok(_) => private("Denied."),
                Err(e) => private(&refusal(&e)),
            }
        }
        _ => (StatusCode::BAD_REQUEST, "unsupported interaction").into_response(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn what_requesters_and_reviewers_write_is_inert_in_discord() {
        let link = "https://airlock.example/requests/req_x";
        let view = json!({
            "id": "req_x", "status": "pending", "principal": "alice", "action": "export",
            "resource": {"type": "Table", "id": "orders` **approved** `@everyone"},
            "reason": "@everyone @here <@123> <#456> <@&789> [click](http://evil.example) ```\n# Approved\n> by security\u{202e}fdp.exe\u{1b}[31m",
            "params": {"sql": "```@everyone```", "k\u{200b}": "\u{7f}"},
            "thresholds": [{"groups": ["security"], "approvals": 0, "quorum": 2, "eligible": ["bob"]}],
            "reviews": [{"reviewer": "bob", "verdict": "deny", "reason": "||spoiler|| *x* ~~y~~ __z__"}],
        });
        let ids = |u: &str| (u == "bob").then(|| "999".to_owned());
        let (content, _, mentions) = render(&view, &ids, link);
        assert_eq!(mentions, json!({"parse": [], "users": ["999"]}));
        // No hidden characters but the newlines between Airlock's own lines.
        assert!(content
            .chars()
            .filter(|c| airlock_core::display::is_hidden(*c))
            .all(|c| c == '\n'));
        assert_eq!(content.lines().count(), 6, "one line per part: {content}");
        let lines: Vec<&str> = content.lines().collect();
        // The resource and the params stay inside their code spans.
        assert_eq!(lines[0].matches('`').count(), 2, "{}", lines[0]);
        assert!(
            lines[0].ends_with("`Table:orders\\u{60} **approved** \\u{60}@everyone`"),
            "{}",
            lines[0]
        );
        assert_eq!(lines[2].matches('`').count(), 2, "{}", lines[2]);
        assert!(
            lines[2].contains("\\u0060\\u0060\\u0060@everyone"),
            "{}",
            lines[2]
        );
        // The reason: every markdown character escaped, so it shows as typed.
        let reason = lines[1].strip_prefix("Reason: ").unwrap();
        for c in [
            '@', '<', '>', '[', ']', '(', ')', '`', '#', '*', '_', '~', '|',
        ] {
            for (i, _) in reason.match_indices(c) {
                assert_eq!(&reason[i - 1..i], "\\", "{c} escaped in {reason}");
            }
        }
        assert!(
            reason.contains("\\@everyone \\@here \\<\\@123\\> \\<\\#456\\> \\<\\@\\&789\\>"),
            "{reason}"
        );
        assert!(
            reason.contains("\\[click\\]\\(http\\:\\/\\/evil\\.example\\)"),
            "{reason}"
        );
        assert!(
            reason.contains("\\\\u\\{202e\\}fdp\\.exe\\\\u\\{1b\\}\\[31m"),
            "{reason}"
        );
        assert!(
            reason.contains("\\\\n\\# Approved\\\\n\\> by security"),
            "{reason}"
        );
        assert!(
            lines[4].contains("\\|\\|spoiler\\|\\| \\*x\\* \\~\\~y\\~\\~ \\_\\_z\\_\\_"),
            "{}",
            lines[4]
        );
        assert!(lines[3].contains("can approve: <@999>"));
        assert_eq!(lines[5], format!("**Request pending.** {link}"));
    }

    #[test]
    fn content_stays_within_discords_limit() {
        let long = "x".repeat(5000);
        let view = json!({
            "id": "req_x", "status": "denied", "principal": "alice", "action": "export",
            "resource": {"type": "Table", "id": long}, "reason": long, "params": {"p": long},
            "reviews": (0..20).map(|_| json!({"reviewer": "bob", "verdict": "deny", "reason": long})).collect::<Vec<_>>(),
        });
        let (content, components, mentions) = render(&view, &|_| None, "https://a.example/r");
        assert!(content.chars().count() <= MAX_CONTENT, "{}", content.len());
        assert!(content.ends_with("**Request denied.** https://a.example/r"));
        assert_eq!(components, json!([]));
        assert_eq!(mentions, json!({"parse": [], "users": []}));
    }
}
