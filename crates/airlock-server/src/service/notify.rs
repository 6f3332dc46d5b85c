//! The service's side of notifications: where events go and who gets
//! email, captured from the configuration before a write job so the job
//! can queue them in its own transaction (`airlock_notify::emit`,
//! `Mail`), and what the outbox worker needs from the service
//! (`airlock_notify::Host`): the store, the `[notify]` settings, requests
//! as their REQUEST view, links and chat ids.

use airlock_core::{Request, RequestId, RequestStatus};
use airlock_notify::{DeliveryError, Host, Outcome, Platform};
use airlock_store::Store;
use serde_json::Value;

pub(crate) use airlock_api::RequestEventData;
pub(crate) use airlock_notify::{emit, Mail, Notifier};

use super::Airlock;
use crate::config::NotifyConfig;

/// An event's data as queued (the types of `airlock_api::webhook`).
pub(crate) fn event_data(data: impl serde::Serialize) -> Value {
    // Structs of strings, numbers and string-keyed maps always serialize.
    serde_json::to_value(data).unwrap_or(Value::Null)
}

/// What a request event says about it.
pub(crate) fn request_data(req: &Request, status: RequestStatus, by: Option<&str>) -> Value {
    event_data(RequestEventData::new(req, status, by))
}

impl Airlock {
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
}

impl Host for Airlock {
    fn store(&self) -> &Store {
        &self.store
    }

    fn settings(&self) -> NotifyConfig {
        self.config.load().notify.clone()
    }

    fn view(&self, req: &Request) -> Result<Value, DeliveryError> {
        // Chat and email are no place for a bearer credential: no token.
        serde_json::to_value(self.request_view(req, None))
            .map_err(|e| DeliveryError::Permanent(e.to_string()))
    }

    fn link(&self, id: RequestId) -> String {
        format!("{}/requests/{id}", self.public_url())
    }

    fn chat_id(&self, platform: Platform, user: &str) -> Option<String> {
        let config = self.config.load();
        let u = config.user_where(|u| u.name.as_str() == user)?;
        match platform {
            Platform::Slack => u.slack_id.clone(),
            Platform::Discord => u.discord_id.clone(),
        }
    }

    fn observe(&self, outcome: Outcome) {
        self.metrics.observe_notification(outcome.as_str());
    }
}
