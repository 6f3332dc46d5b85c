//! The service's side of notifications: where events go and who gets
//! email, captured from the configuration before a write job so the job
//! can queue them in its own transaction (`airlock_notify::emit`,
//! `Mail`), and what the outbox worker needs from the service
//! (`airlock_notify::Host`): the store, the `[notify]` settings, requests
//! as their REQUEST view, links and chat ids.

use airlock_core::{Request, RequestId, UserName};
use airlock_notify::{DeliveryError, Host, Outcome, Platform};
use airlock_store::{Role, Store};
use serde_json::Value;

pub(crate) use airlock_notify::{emit, grant_data, request_data, Mail, Notifier};

use super::{Airlock, Caller};
use crate::config::NotifyConfig;

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
        // Not the requester and not an enforcer: the view carries no token.
        let notifier = UserName::parse("airlock-notifier")
            .map_err(|e| DeliveryError::Permanent(e.to_string()))?;
        let caller = Caller {
            user: notifier,
            role: Role::Admin,
            key_id: "notifier".into(),
        };
        Ok(Airlock::view(self, req, &caller))
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
