//! Queueing: events written to the durable outbox in the same transaction
//! as the change they report (the caller's write job), addressed to every
//! channel that wants them. Delivery happens later, in `worker`.

use std::collections::{BTreeMap, HashMap};

use airlock_store::time::{fmt, now};
use airlock_store::{OutboxMessage, StoreError, WriteTx};
use serde_json::{json, Value};

use crate::config::{DiscordConfig, SlackConfig, WebhookConfig};

/// A Standard Webhooks message id: unique, and the same on every retry.
pub(crate) fn message_id() -> String {
    format!("msg_{}", uuid::Uuid::now_v7().simple())
}

/// Where events go, captured before a write job so the job can queue them
/// in its own transaction.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    /// The configured webhooks.
    pub webhooks: Vec<WebhookConfig>,
    /// Slack, if configured.
    pub slack: Option<SlackConfig>,
    /// Airlock user → Slack user id, for the requester's direct message.
    pub slack_ids: HashMap<String, String>,
    /// Discord, if configured.
    pub discord: Option<DiscordConfig>,
    /// Airlock user → Discord user id, for the requester's direct message.
    pub discord_ids: HashMap<String, String>,
}

/// Writes one message to the outbox in `tx`, due at once.
pub(crate) fn queue(
    tx: &mut dyn WriteTx,
    target: String,
    event: &str,
    payload: Value,
) -> Result<(), StoreError> {
    let t = now();
    tx.enqueue(&OutboxMessage {
        id: message_id(),
        target,
        event: event.to_owned(),
        payload: payload.to_string(),
        status: "pending".into(),
        attempts: 0,
        last_error: None,
        next_attempt_at: t,
        created_at: t,
        delivered_at: None,
    })
}

/// The channels a new request goes to: those routed for the groups that
/// must approve it, else the default one.
fn routed<'a>(
    data: &'a Value,
    routes: &'a BTreeMap<String, String>,
    default: &'a str,
) -> Vec<&'a str> {
    let mut channels: Vec<&str> = data["thresholds"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["groups"].as_array().into_iter().flatten())
        .filter_map(|g| g.as_str().and_then(|g| routes.get(g)).map(String::as_str))
        .collect();
    if channels.is_empty() {
        channels.push(default);
    }
    channels.sort_unstable();
    channels.dedup();
    channels
}

/// Queues a chat platform's part of an event (`prefix` is `slack` or
/// `discord`): the message when a request is created (in each routed
/// channel), an update whenever it changes, and a direct message to the
/// requester with the outcome.
fn emit_chat(
    tx: &mut dyn WriteTx,
    prefix: &str,
    routes: &BTreeMap<String, String>,
    default: &str,
    ids: &HashMap<String, String>,
    event: &str,
    data: &Value,
) -> Result<(), StoreError> {
    let request = json!({"request": data["request"]});
    match event {
        "request.created" => {
            for c in routed(data, routes, default) {
                queue(tx, format!("{prefix}:post:{c}"), event, request.clone())?;
            }
        }
        // A pending request whose requirement was raised: its message goes
        // to the channels of the groups now asked (a channel that already
        // has it is not posted in twice), and the existing ones update.
        "request.raised" => {
            for c in routed(data, routes, default) {
                queue(tx, format!("{prefix}:post:{c}"), event, request.clone())?;
            }
            queue(tx, format!("{prefix}:update"), event, request)?;
        }
        "request.reviewed" => queue(tx, format!("{prefix}:update"), event, request)?,
        // Break-glass is alerted everywhere at once: every routed channel
        // and the default one.
        "request.breakglass" => {
            let mut all: Vec<&str> = routes.values().map(String::as_str).collect();
            all.push(default);
            all.sort_unstable();
            all.dedup();
            for c in all {
                queue(tx, format!("{prefix}:post:{c}"), event, request.clone())?;
            }
        }
        "request.decided" | "request.expired" | "request.cancelled" | "request.revoked" => {
            queue(tx, format!("{prefix}:update"), event, request.clone())?;
            if let Some(id) = data["principal"].as_str().and_then(|p| ids.get(p)) {
                queue(tx, format!("{prefix}:dm:{id}"), event, request)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Queues `event` for every webhook that wants it and for chat, inside `tx`.
pub fn emit(
    tx: &mut dyn WriteTx,
    notifier: &Notifier,
    event: &str,
    data: Value,
) -> Result<(), StoreError> {
    if let Some(slack) = &notifier.slack {
        let ids = &notifier.slack_ids;
        emit_chat(
            tx,
            "slack",
            &slack.routes,
            &slack.channel,
            ids,
            event,
            &data,
        )?;
    }
    if let Some(discord) = &notifier.discord {
        let (routes, ids) = (&discord.routes, &notifier.discord_ids);
        emit_chat(
            tx,
            "discord",
            routes,
            &discord.channel_id,
            ids,
            event,
            &data,
        )?;
    }
    let t = now();
    for hook in &notifier.webhooks {
        if !hook.events.is_empty() && !hook.events.iter().any(|e| e == event) {
            continue;
        }
        let payload = json!({"type": event, "timestamp": fmt(t), "data": data});
        queue(tx, hook.url.clone(), event, payload)?;
    }
    Ok(())
}
