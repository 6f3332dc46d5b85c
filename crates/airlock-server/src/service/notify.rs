//! Notifications: events written to the durable outbox in the same
//! transaction as the change they report, and the background delivery of
//! signed webhooks (Standard Webhooks) with retries and back-off.

use std::time::Duration;

use airlock_core::display::{json_compact, visible};
use airlock_core::{Request, RequestId, RequestStatus};
use airlock_store::time::{fmt, now};
use airlock_store::{OutboxMessage, StoreError, WriteTx};
use serde_json::{json, Value};

use super::Airlock;
use crate::config::WebhookConfig;

/// A Standard Webhooks message id: unique, and the same on every retry.
fn message_id() -> String {
    format!("msg_{}", uuid::Uuid::now_v7().simple())
}

/// Where events go, captured before a write job so the job can queue them
/// in its own transaction.
#[derive(Debug, Clone, Default)]
pub(crate) struct Notifier {
    webhooks: Vec<WebhookConfig>,
    slack: Option<crate::config::SlackConfig>,
    slack_ids: std::collections::HashMap<String, String>,
    discord: Option<crate::config::DiscordConfig>,
    discord_ids: std::collections::HashMap<String, String>,
}

fn queue(
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
    routes: &'a std::collections::BTreeMap<String, String>,
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
    routes: &std::collections::BTreeMap<String, String>,
    default: &str,
    ids: &std::collections::HashMap<String, String>,
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
pub(crate) fn emit(
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

/// Who gets email about a request, captured before a write job so the job
/// can queue the messages in its own transaction.
#[derive(Debug, Clone, Default)]
pub(crate) struct Mail {
    enabled: bool,
    public_url: String,
    emails: std::collections::HashMap<airlock_core::UserName, String>,
}

impl Mail {
    /// Queues one email in `tx`.
    fn queue(
        &self,
        tx: &mut dyn WriteTx,
        to: &str,
        event: &str,
        subject: String,
        text: String,
    ) -> Result<(), StoreError> {
        let payload = json!({"subject": subject, "text": text});
        queue(tx, format!("mailto:{to}"), event, payload)
    }

    /// Asks every eligible approver with an email address to review.
    pub(crate) fn to_approvers(
        &self,
        tx: &mut dyn WriteTx,
        req: &Request,
        directory: &airlock_policy::Directory,
    ) -> Result<(), StoreError> {
        if !self.enabled {
            return Ok(());
        }
        let mut approvers: Vec<&airlock_core::UserName> = req
            .requirement
            .thresholds
            .iter()
            .flat_map(|t| directory.members_of(&t.groups))
            .filter(|u| **u != req.action.principal)
            .collect();
        approvers.sort();
        approvers.dedup();
        let link = format!("{}/requests/{}", self.public_url, req.id);
        for user in approvers {
            let Some(to) = self.emails.get(user) else {
                continue;
            };
            // What the requester wrote is shown inert: a newline in the
            // reason cannot add lines of its own, an override cannot
            // reorder the resource id.
            let subject = format!(
                "Approval needed: {} wants to {} {}:{}",
                req.action.principal,
                req.action.action,
                req.action.resource.kind,
                visible(req.action.resource.id.as_str())
            );
            let text = format!(
                "{} asks to {} {}:{}.\n\nReason: {}\nParams: {}\nExpires: {}\n\nReview it (sign in; approving is a button on the page, never this link):\n{link}\n",
                req.action.principal,
                req.action.action,
                req.action.resource.kind,
                visible(req.action.resource.id.as_str()),
                visible(req.reason.as_deref().unwrap_or("(none given)")),
                json_compact(&serde_json::to_value(&req.action.params).unwrap_or_default()),
                fmt(req.expires_at),
            );
            self.queue(tx, to, "request.created", subject, text)?;
        }
        Ok(())
    }

    /// Tells the requester how their request ended.
    pub(crate) fn to_requester(
        &self,
        tx: &mut dyn WriteTx,
        req: &Request,
        outcome: &str,
        by: Option<&str>,
    ) -> Result<(), StoreError> {
        if !self.enabled {
            return Ok(());
        }
        let Some(to) = self.emails.get(&req.action.principal) else {
            return Ok(());
        };
        let subject = format!(
            "Your request to {} {}:{} was {outcome}",
            req.action.action,
            req.action.resource.kind,
            visible(req.action.resource.id.as_str())
        );
        let text = format!(
            "Your request to {} {}:{} was {outcome}{}.\n\n{}/requests/{}\n",
            req.action.action,
            req.action.resource.kind,
            visible(req.action.resource.id.as_str()),
            by.map(|b| format!(" by {b}")).unwrap_or_default(),
            self.public_url,
            req.id,
        );
        self.queue(tx, to, "request.decided", subject, text)
    }
}

pub(crate) use airlock_api::RequestEventData;

/// An event's data as queued (the types of `airlock_api::webhook`).
pub(crate) fn event_data(data: impl serde::Serialize) -> Value {
    // Structs of strings, numbers and string-keyed maps always serialize.
    serde_json::to_value(data).unwrap_or(Value::Null)
}

/// What a request event says about it.
pub(crate) fn request_data(req: &Request, status: RequestStatus, by: Option<&str>) -> Value {
    event_data(RequestEventData::new(req, status, by))
}

/// The Standard Webhooks signature header for one message.
pub(crate) fn sign(secret: &str, id: &str, ts: i64, body: &[u8]) -> Result<String, String> {
    standardwebhooks::Webhook::new(secret)
        .and_then(|w| w.sign(id, ts, body))
        .map_err(|e| format!("{e:?}"))
}

/// Seconds to wait before attempt `n + 1` after `n` failures: 1, 2, 4, …
/// capped at an hour.
fn backoff(failures: u32) -> chrono::Duration {
    chrono::Duration::seconds(1i64 << failures.min(12)).min(chrono::Duration::hours(1))
}

/// Messages taken per claim. One: its lease must cover its own sending
/// only, or a slow batch would outlive the lease and another node would
/// send the rest again.
const BATCH: u32 = 1;
/// HTTP calls one message may need (a Discord DM takes two, a Slack
/// update one per channel), for the lease.
const CALLS_PER_MESSAGE: u32 = 4;

impl Airlock {
    /// The request a chat message is about, as a REQUEST view (never with a
    /// grant token), and its console link: messages are rendered from the
    /// request as it is when sent, so a late retry shows the latest state.
    pub(crate) async fn chat_subject(
        &self,
        msg: &OutboxMessage,
    ) -> Result<(Request, Value, String), (String, bool)> {
        let payload: Value =
            serde_json::from_str(&msg.payload).map_err(|e| (e.to_string(), true))?;
        let id = payload["request"]
            .as_str()
            .and_then(|s| RequestId::parse(s).ok())
            .ok_or_else(|| ("no request in the message".to_owned(), true))?;
        let req = self
            .store
            .read(move |r| r.get_request(&id))
            .await
            .map_err(|e| (e.to_string(), false))?
            .ok_or_else(|| ("the request is gone".to_owned(), true))?;
        // Chat is no place for a bearer credential: no token is minted.
        let view = self.request_view(&req, None).to_value();
        let link = format!("{}/requests/{id}", self.public_url());
        Ok((req, view, link))
    }

    /// Who gets email, as configured now.
    pub(crate) fn mail(&self) -> Mail {
        let config = self.config.load();
        Mail {
            enabled: config.notify.email.is_some(),
            public_url: self.public_url(),
            emails: config
                .users
                .iter()
                .filter_map(|u| u.email.clone().map(|e| (u.name.clone(), e)))
                .collect(),
        }
    }

    /// Where events go, as configured now.
    pub(crate) fn hooks(&self) -> Notifier {
        let config = self.config.load();
        Notifier {
            webhooks: config.notify.webhooks.clone(),
            slack: config.notify.slack.clone(),
            slack_ids: config
                .users
                .iter()
                .filter_map(|u| u.slack_id.clone().map(|s| (u.name.to_string(), s)))
                .collect(),
            discord: config.notify.discord.clone(),
            discord_ids: config
                .users
                .iter()
                .filter_map(|u| u.discord_id.clone().map(|s| (u.name.to_string(), s)))
                .collect(),
        }
    }

    /// One delivery round: claims due messages, sends them, records the
    /// outcomes. Returns how many were claimed.
    pub async fn deliver_due(&self, http: &reqwest::Client) -> Result<usize, StoreError> {
        let config = self.config.load_full();
        let timeout = Duration::from_secs(config.notify.delivery_timeout_seconds.max(1));
        let t = now();
        // Only this attempt may record the outcome of what it claims.
        let claim = message_id();
        let lease = t
            + chrono::Duration::from_std(timeout * CALLS_PER_MESSAGE).unwrap_or_default()
            + chrono::Duration::seconds(5);
        let due = self
            .store
            .write({
                let claim = claim.clone();
                move |tx| tx.claim_outbox(t, lease, BATCH, &claim)
            })
            .await?;
        let claimed = due.len();
        for msg in due {
            let result = if msg.target.starts_with("discord:") {
                match &config.notify.discord {
                    Some(discord) => self.send_discord(http, discord, &msg, timeout).await,
                    None => Err(("Discord is no longer configured".to_owned(), true)),
                }
            } else if msg.target.starts_with("slack:") {
                match &config.notify.slack {
                    Some(slack) => self.send_slack(http, slack, &msg, timeout).await,
                    None => Err(("Slack is no longer configured".to_owned(), true)),
                }
            } else if let Some(to) = msg.target.strip_prefix("mailto:") {
                match &config.notify.email {
                    Some(email) => send_mail(email, to, &msg, timeout).await,
                    None => Err(("email is no longer configured".to_owned(), true)),
                }
            } else {
                match config.notify.webhooks.iter().find(|h| h.url == msg.target) {
                    None => Err(("this webhook is no longer configured".to_owned(), true)),
                    Some(h) => self.send(http, h, &msg, timeout).await,
                }
            };
            let (id, c) = (msg.id.clone(), claim.clone());
            let (outcome, kept) = match result {
                Ok(()) => {
                    let kept = self
                        .store
                        .write(move |tx| tx.outbox_delivered(&id, now(), &c))
                        .await?;
                    ("delivered", kept)
                }
                Err((why, permanent)) => {
                    let give_up = permanent || msg.attempts + 1 >= config.notify.max_attempts;
                    let next = now() + backoff(msg.attempts);
                    tracing::warn!(message = %msg.id, target = %msg.target, error = %why, give_up, "webhook delivery failed");
                    let kept = self
                        .store
                        .write(move |tx| tx.outbox_attempt_failed(&id, &why, next, give_up, &c))
                        .await?;
                    (if give_up { "failed" } else { "retry" }, kept)
                }
            };
            if !kept {
                // The lease lapsed and another attempt owns the message now;
                // its outcome is the one recorded.
                tracing::warn!(message = %msg.id, "outbox lease lost before the outcome was recorded");
            }
            self.metrics.observe_notification(outcome);
        }
        Ok(claimed)
    }

    async fn send(
        &self,
        http: &reqwest::Client,
        hook: &WebhookConfig,
        msg: &OutboxMessage,
        timeout: Duration,
    ) -> Result<(), (String, bool)> {
        let ts = chrono::Utc::now().timestamp();
        let signature =
            sign(&hook.secret, &msg.id, ts, msg.payload.as_bytes()).map_err(|e| (e, true))?;
        let res = http
            .post(&hook.url)
            .timeout(timeout)
            .header("content-type", "application/json")
            .header(standardwebhooks::HEADER_WEBHOOK_ID, &msg.id)
            .header(standardwebhooks::HEADER_WEBHOOK_TIMESTAMP, ts.to_string())
            .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
            .body(msg.payload.clone())
            .send()
            .await
            .map_err(|e| (format!("{e}"), false))?;
        let status = res.status();
        if status.is_success() {
            Ok(())
        } else {
            // 4xx other than 408/429 will not get better by retrying, but a
            // misconfigured receiver can be fixed: retry all, give up late.
            Err((format!("receiver answered {status}"), false))
        }
    }
}

/// Sends one queued email. Its Message-ID is the outbox id, so a copy
/// sent again after a crash is recognisably the same message.
async fn send_mail(
    cfg: &crate::config::EmailConfig,
    to: &str,
    msg: &OutboxMessage,
    timeout: Duration,
) -> Result<(), (String, bool)> {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let body: Value = serde_json::from_str(&msg.payload).map_err(|e| (e.to_string(), true))?;
    let from = cfg.from.parse().map_err(|e| (format!("from: {e}"), true))?;
    let to = to.parse().map_err(|e| (format!("to {to}: {e}"), true))?;
    let email = Message::builder()
        .from(from)
        .to(to)
        .subject(body["subject"].as_str().unwrap_or("Airlock"))
        .message_id(Some(format!("<{}@airlock>", msg.id)))
        .header(lettre::message::header::ContentType::TEXT_PLAIN)
        .body(body["text"].as_str().unwrap_or("").to_owned())
        .map_err(|e| (e.to_string(), true))?;
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::from_url(&cfg.smtp_url)
        .map_err(|e| (format!("smtp_url: {e}"), true))?
        .timeout(Some(timeout))
        .build();
    mailer
        .send(email)
        .await
        .map(|_| ())
        .map_err(|e| (format!("SMTP: {e}"), false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification and its
    /// reference libraries.
    #[test]
    fn signature_known_answer() {
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(0), chrono::Duration::seconds(1));
        assert_eq!(backoff(3), chrono::Duration::seconds(8));
        assert_eq!(backoff(30), chrono::Duration::hours(1));
    }
}
