//! Slack: the request message (posted in each routed channel), its
//! updates, and the requester's direct message with the outcome, through
//! the Web API with the bot token.

pub mod interaction;
mod render;

use std::time::Duration;

use airlock_store::OutboxMessage;
use serde_json::{json, Value};

use crate::channel::{Channel, Delivered, DeliveryError};
use crate::chat::subject;
use crate::config::SlackConfig;
use crate::host::{Host, Platform};

pub use render::{mrkdwn_code, mrkdwn_json, mrkdwn_text, render, MAX_REVIEW, MAX_VALUE};

/// Calls a Slack Web API method; Slack answers 200 with `ok: false` on
/// errors, which count as failures too (permanent when the credentials or
/// the channel are wrong).
pub async fn call(
    http: &reqwest::Client,
    cfg: &SlackConfig,
    method: &str,
    body: &Value,
    timeout: Duration,
) -> Result<Value, DeliveryError> {
    let res = http
        .post(format!("{}/{method}", cfg.api_url.trim_end_matches('/')))
        .timeout(timeout)
        .bearer_auth(&cfg.bot_token)
        .json(body)
        .send()
        .await
        .map_err(|e| DeliveryError::Transient(format!("{method}: {e}")))?;
    let v: Value = res
        .json()
        .await
        .map_err(|e| DeliveryError::Transient(format!("{method}: {e}")))?;
    if v["ok"].as_bool() == Some(true) {
        Ok(v)
    } else {
        let err = v["error"].as_str().unwrap_or("unknown error").to_owned();
        let permanent = matches!(
            err.as_str(),
            "invalid_auth" | "not_authed" | "channel_not_found" | "account_inactive"
        );
        let why = format!("{method}: {err}");
        Err(if permanent {
            DeliveryError::Permanent(why)
        } else {
            DeliveryError::Transient(why)
        })
    }
}

/// The configured Slack workspace.
pub(crate) struct Slack<'a> {
    pub(crate) http: &'a reqwest::Client,
    pub(crate) cfg: &'a SlackConfig,
    pub(crate) host: &'a dyn Host,
    pub(crate) timeout: Duration,
}

impl Channel for Slack<'_> {
    /// Delivers one Slack outbox message, rendered from the request as it
    /// is now (so a late retry shows the latest state).
    async fn deliver(&self, msg: &OutboxMessage) -> Result<Delivered, DeliveryError> {
        let (http, cfg, timeout) = (self.http, self.cfg, self.timeout);
        let store = self.host.store();
        let s = subject(self.host, msg).await?;
        let (req, link) = (&s.req, &s.link);
        let id = req.id;
        let (text, blocks) = render(&s.view, &|u| self.host.chat_id(Platform::Slack, u), link);
        if let Some(channel) = msg.target.strip_prefix("slack:post:") {
            // Posted already (the answer was lost before the outbox heard):
            // do not post twice.
            let posted = store
                .read(move |r| r.chat_messages(&id, "slack"))
                .await
                .map_err(|e| DeliveryError::Transient(e.to_string()))?;
            if posted.iter().any(|(c, _)| c == channel) {
                return Ok(Delivered);
            }
            let v = call(
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
            store
                .write(move |tx| tx.save_chat_message(&id, "slack", &c, &ts))
                .await
                .map_err(|e| DeliveryError::Transient(e.to_string()))?;
            Ok(Delivered)
        } else if msg.target == "slack:update" {
            let posted = store
                .read(move |r| r.chat_messages(&id, "slack"))
                .await
                .map_err(|e| DeliveryError::Transient(e.to_string()))?;
            if posted.is_empty() {
                return Err(DeliveryError::Transient(
                    "the request's message is not posted yet".into(),
                ));
            }
            for (channel, ts) in posted {
                call(
                    http,
                    cfg,
                    "chat.update",
                    &json!({"channel": channel, "ts": ts, "text": text, "blocks": blocks}),
                    timeout,
                )
                .await?;
            }
            Ok(Delivered)
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
            call(
                http,
                cfg,
                "chat.postMessage",
                &json!({"channel": user, "text": outcome}),
                timeout,
            )
            .await
            .map(|_| Delivered)
        } else {
            Err(DeliveryError::Permanent(format!(
                "unknown Slack target {}",
                msg.target
            )))
        }
    }
}
