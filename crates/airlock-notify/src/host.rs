//! What the outbox worker and its channels need from the service they run
//! in, so that this crate needs nothing of the server.

use airlock_core::{Request, RequestId};
use airlock_store::Store;
use serde_json::Value;

use crate::channel::DeliveryError;
use crate::config::NotifyConfig;

/// The chat platforms, for looking up people's ids on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// Slack (`slack_id`).
    Slack,
    /// Discord (`discord_id`).
    Discord,
}

/// What delivery needs from the service it runs in.
pub trait Host: Send + Sync {
    /// The store holding the outbox (and the requests chat messages show).
    fn store(&self) -> &Store;
    /// The `[notify]` section as configured now (a reload may change it).
    fn settings(&self) -> NotifyConfig;
    /// A request's REQUEST view as someone who is neither its requester nor
    /// an enforcer reads it, so it never carries a grant token.
    fn view(&self, req: &Request) -> Result<Value, DeliveryError>;
    /// The console page of a request.
    fn link(&self, id: RequestId) -> String;
    /// A user's id on a chat platform, if configured.
    fn chat_id(&self, platform: Platform, user: &str) -> Option<String>;
    /// Counts one message's outcome (for metrics).
    fn observe(&self, outcome: Outcome);
}

/// What became of one claimed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered.
    Delivered,
    /// Failed; tried again later.
    Retry,
    /// Failed for good.
    Failed,
}

impl Outcome {
    /// Its metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Retry => "retry",
            Outcome::Failed => "failed",
        }
    }
}
