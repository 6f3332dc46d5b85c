//! What every delivery channel is: something that takes one outbox message
//! to its receiver and says whether trying again could help.

use std::future::Future;

use airlock_store::OutboxMessage;

/// The message reached its receiver (or had already: a chat message posted
/// before a lost answer is not posted twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered;

/// Why a message was not delivered, and whether trying again could help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// It may work later (a timeout, a refused connection, a receiver that
    /// is down or misconfigured for now): retried with back-off until
    /// `max_attempts`.
    #[error("{0}")]
    Transient(String),
    /// It cannot work (the channel is no longer configured, the message is
    /// malformed, the platform refused the credentials or the channel):
    /// marked failed at once.
    #[error("{0}")]
    Permanent(String),
}

impl DeliveryError {
    /// Whether retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, DeliveryError::Permanent(_))
    }
}

/// One way out of Airlock: a signed webhook, email, Slack, Discord.
pub trait Channel {
    /// Delivers one outbox message addressed to this channel.
    fn deliver(
        &self,
        msg: &OutboxMessage,
    ) -> impl Future<Output = Result<Delivered, DeliveryError>> + Send;
}
