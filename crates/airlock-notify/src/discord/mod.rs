//! Discord: the request message with Approve/Deny components (posted in
//! each routed channel), its updates, and the requester's direct message
//! with the outcome, through the REST API with the bot token.

pub mod interaction;
mod render;

use std::time::Duration;

use airlock_store::OutboxMessage;
use reqwest::Method;
use serde_json::{json, Value};

use crate::channel::{Channel, Delivered, DeliveryError};
use crate::chat::subject;
use crate::config::DiscordConfig;
use crate::host::{Host, Platform};

pub use render::{
    allowed_mentions, markdown_code, markdown_json, markdown_text, render, MAX_CONTENT, MAX_REVIEW,
    MAX_VALUE,
};

/// Calls the Discord REST API; 401, 403 and 404 are permanent (the token,
/// the permissions or the channel are wrong), anything else may pass later.
async fn call(
    http: &reqwest::Client,
    cfg: &DiscordConfig,
    method: Method,
    path: &str,
    body: &Value,
    timeout: Duration,
) -> Result<Value, DeliveryError> {
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
        .map_err(|e| DeliveryError::Transient(format!("{path}: {e}")))?;
    let status = res.status();
    if status.is_success() {
        Ok(res.json().await.unwrap_or(Value::Null))
    } else {
        let why = format!("{path}: Discord answered {status}");
        Err(if matches!(status.as_u16(), 401 | 403 | 404) {
            DeliveryError::Permanent(why)
        } else {
            DeliveryError::Transient(why)
        })
    }
}

/// The configured Discord application.
pub(crate) struct Discord<'a> {
    pub(crate) http: &'a reqwest::Client,
    pub(crate) cfg: &'a DiscordConfig,
    pub(crate) host: &'a dyn Host,
    pub(crate) timeout: Duration,
}

impl Channel for Discord<'_> {
    /// Delivers one Discord outbox message, rendered from the request now.
    async fn deliver(&self, msg: &OutboxMessage) -> Result<Delivered, DeliveryError> {
        let (http, cfg, timeout) = (self.http, self.cfg, self.timeout);
        let store = self.host.store();
        let s = subject(self.host, msg).await?;
        let (req, link) = (&s.req, &s.link);
        let id = req.id;
        let (content, components, mentions) =
            render(&s.view, &|u| self.host.chat_id(Platform::Discord, u), link);
        let body =
            json!({"content": content, "components": components, "allowed_mentions": mentions});
        match msg.target.as_str() {
            t if t.starts_with("discord:post:") => {
                let channel = &t["discord:post:".len()..];
                // Posted already (the answer was lost before the outbox heard):
                // do not post twice.
                let posted = store
                    .read(move |r| r.chat_messages(&id, "discord"))
                    .await
                    .map_err(|e| DeliveryError::Transient(e.to_string()))?;
                if posted.iter().any(|(c, _)| c == channel) {
                    return Ok(Delivered);
                }
                let v = call(
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
                store
                    .write(move |tx| tx.save_chat_message(&id, "discord", &c, &m))
                    .await
                    .map(|()| Delivered)
                    .map_err(|e| DeliveryError::Transient(e.to_string()))
            }
            "discord:update" => {
                let posted = store
                    .read(move |r| r.chat_messages(&id, "discord"))
                    .await
                    .map_err(|e| DeliveryError::Transient(e.to_string()))?;
                if posted.is_empty() {
                    return Err(DeliveryError::Transient(
                        "the request's message is not posted yet".into(),
                    ));
                }
                for (channel, message) in posted {
                    call(
                        http,
                        cfg,
                        Method::PATCH,
                        &format!("/channels/{channel}/messages/{message}"),
                        &body,
                        timeout,
                    )
                    .await?;
                }
                Ok(Delivered)
            }
            target => {
                let Some(user) = target.strip_prefix("discord:dm:") else {
                    return Err(DeliveryError::Permanent(format!(
                        "unknown Discord target {target}"
                    )));
                };
                let dm = call(
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
                call(
                    http,
                    cfg,
                    Method::POST,
                    &format!("/channels/{channel}/messages"),
                    &json!({"content": text, "allowed_mentions": allowed_mentions(&[])}),
                    timeout,
                )
                .await
                .map(|_| Delivered)
            }
        }
    }
}
