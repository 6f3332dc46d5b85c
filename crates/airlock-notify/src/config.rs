//! The `[notify]` section of the configuration file: where notifications
//! go and how hard delivery tries. The doc comments are the reference for
//! each setting.

use serde::Deserialize;

/// `[notify]`: telling other systems what happened. Every notification
/// is written to a durable outbox in the same transaction as the change it
/// reports, then delivered in the background with retries: a decision never
/// waits for a receiver, and a restart loses nothing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Signed webhooks (Standard Webhooks: `webhook-id`,
    /// `webhook-timestamp`, `webhook-signature`).
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// Seconds a receiver has to answer before the attempt counts as
    /// failed. A node that dies mid-delivery leaves the message to be
    /// retried (with the same `webhook-id`) four times this long plus 5 s
    /// later (the lease of one message).
    /// Default 10.
    #[serde(default = "default_delivery_timeout")]
    pub delivery_timeout_seconds: u64,
    /// Attempts before a message is marked failed (visible in
    /// `/v1/outbox?status=failed` and the metrics, and retryable). Retries
    /// back off exponentially from 1 s to 1 h. Default 10.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Email to approvers (who a request waits for, with a link to its page
    /// in the console) and to requesters (the outcome).
    #[serde(default)]
    pub email: Option<EmailConfig>,
    /// Slack: a message with Approve/Deny buttons for each request needing
    /// approval, updated as it progresses, and a direct message to the
    /// requester with the outcome.
    #[serde(default)]
    pub slack: Option<SlackConfig>,
    /// Discord: the same as Slack, with message components.
    #[serde(default)]
    pub discord: Option<DiscordConfig>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            webhooks: Vec::new(),
            email: None,
            slack: None,
            discord: None,
            delivery_timeout_seconds: default_delivery_timeout(),
            max_attempts: default_max_attempts(),
        }
    }
}

fn default_delivery_timeout() -> u64 {
    10
}

fn default_max_attempts() -> u32 {
    10
}

/// `[notify.slack]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// The Web API's base URL. Default `https://slack.com/api`.
    #[serde(default = "default_slack_api")]
    pub api_url: String,
    /// The bot token (`xoxb-…`), sent as a bearer token.
    pub bot_token: String,
    /// The app's signing secret: interaction callbacks
    /// (`POST /integrations/slack/interactions`) must carry its signature.
    pub signing_secret: String,
    /// The channel for requests no route names.
    pub channel: String,
    /// Approver group → channel, for requests that group must approve.
    #[serde(default)]
    pub routes: std::collections::BTreeMap<String, String>,
}

fn default_slack_api() -> String {
    "https://slack.com/api".into()
}

/// `[notify.discord]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscordConfig {
    /// The REST API's base URL. Default `https://discord.com/api/v10`.
    #[serde(default = "default_discord_api")]
    pub api_url: String,
    /// The bot token, sent as `Authorization: Bot …`.
    pub bot_token: String,
    /// The application's public key (hex): interactions
    /// (`POST /integrations/discord/interactions`) must be signed with it.
    pub application_public_key: String,
    /// The channel for requests no route names.
    pub channel_id: String,
    /// Approver group → channel id, for requests that group must approve.
    #[serde(default)]
    pub routes: std::collections::BTreeMap<String, String>,
}

fn default_discord_api() -> String {
    "https://discord.com/api/v10".into()
}

/// `[notify.email]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The SMTP server: `smtp://host:25` (plain), `smtp://host:587?tls=required`
    /// (STARTTLS), `smtps://host:465` (TLS); credentials as
    /// `smtps://user:password@host`.
    pub smtp_url: String,
    /// The sender, e.g. `Airlock <airlock@example.com>`.
    pub from: String,
}

/// `[[notify.webhooks]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are POSTed.
    pub url: String,
    /// The signing secret, `whsec_` and base64, as Standard Webhooks
    /// libraries expect it: at least 16 bytes once decoded (the standard
    /// asks for 24 to 64); an empty or short key is a load error, since
    /// anyone could sign with it.
    pub secret: String,
    /// Only these event types (`request.created`, `request.reviewed`,
    /// `request.raised`, `request.decided`, `request.expired`,
    /// `request.cancelled`, `request.revoked`, `request.breakglass`,
    /// `grant.consumed`, `grant.completed`). Default: all. A name not in
    /// this list is a load error, not a webhook that never fires.
    #[serde(default)]
    pub events: Vec<String>,
}

/// The fewest bytes a webhook's signing key may have: below this, its
/// signatures could be forged by guessing the key.
const MIN_WEBHOOK_SECRET: usize = 16;

/// Every event type a webhook can be sent.
pub const EVENT_TYPES: [&str; 10] = [
    "request.created",
    "request.reviewed",
    "request.raised",
    "request.decided",
    "request.expired",
    "request.cancelled",
    "request.revoked",
    "request.breakglass",
    "grant.consumed",
    "grant.completed",
];

impl NotifyConfig {
    /// Checks what the types cannot: secrets, addresses and URLs that
    /// would make every delivery fail. Says which setting is wrong.
    pub fn check(&self) -> Result<(), String> {
        if let Some(s) = &self.slack {
            if s.signing_secret.len() < 16 {
                return Err("notify.slack.signing_secret is missing or too short: copy it from the Slack app's settings".into());
            }
        }
        if let Some(e) = &self.email {
            if !(e.smtp_url.starts_with("smtp://") || e.smtp_url.starts_with("smtps://")) {
                return Err(format!(
                    "notify.email.smtp_url {:?} must be smtp:// or smtps://",
                    e.smtp_url
                ));
            }
            if e.from.parse::<lettre::message::Mailbox>().is_err() {
                return Err(format!(
                    "notify.email.from {:?} is not an email address",
                    e.from
                ));
            }
        }
        for w in &self.webhooks {
            if standardwebhooks::Webhook::new(&w.secret).is_err() {
                return Err(format!(
                    "notify.webhooks secret for {} must be whsec_ followed by base64",
                    w.url
                ));
            }
            let key = w.secret.strip_prefix("whsec_").unwrap_or(&w.secret);
            let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, key)
                .map_or(0, |k| k.len());
            if bytes < MIN_WEBHOOK_SECRET {
                return Err(format!(
                    "notify.webhooks secret for {} is {bytes} bytes: it needs at least \
                     {MIN_WEBHOOK_SECRET} random bytes (whsec_ and base64 of 24 to 64 bytes, \
                     as Standard Webhooks asks)",
                    w.url
                ));
            }
            if let Some(e) = w.events.iter().find(|e| !EVENT_TYPES.contains(&e.as_str())) {
                return Err(format!(
                    "notify.webhooks events for {}: {e:?} is not an event type ({})",
                    w.url,
                    EVENT_TYPES.join(", ")
                ));
            }
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return Err(format!(
                    "notify.webhooks url {:?} must be http(s)://",
                    w.url
                ));
            }
        }
        Ok(())
    }

    /// Whether any channel is configured (if none, the worker does no
    /// store work).
    pub fn any_channel(&self) -> bool {
        !self.webhooks.is_empty()
            || self.email.is_some()
            || self.slack.is_some()
            || self.discord.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_secret(secret: &str) -> NotifyConfig {
        NotifyConfig {
            webhooks: vec![WebhookConfig {
                url: "http://127.0.0.1:9/hook".into(),
                secret: secret.into(),
                events: Vec::new(),
            }],
            ..NotifyConfig::default()
        }
    }

    /// An empty or short webhook key is refused at load: signatures under
    /// it could be made by anyone.
    #[test]
    fn a_webhook_key_has_enough_bytes() {
        for weak in ["", "whsec_", "whsec_AA==", "whsec_AAAAAAAAAAAAAAAAAAAA"] {
            assert!(with_secret(weak).check().is_err(), "{weak:?}");
        }
        assert!(with_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .check()
            .is_ok());
    }
}
