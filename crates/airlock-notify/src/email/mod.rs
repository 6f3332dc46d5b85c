//! Email: to approvers (who a request waits for, with a link to its page)
//! and to requesters (the outcome), written when the event is queued and
//! sent over SMTP.

mod compose;

use std::time::Duration;

use airlock_store::OutboxMessage;
use serde_json::Value;

use crate::channel::{Channel, Delivered, DeliveryError};
use crate::config::EmailConfig;

pub use compose::Mail;

/// The configured SMTP server.
pub(crate) struct Email<'a> {
    pub(crate) cfg: &'a EmailConfig,
    pub(crate) timeout: Duration,
}

impl Channel for Email<'_> {
    /// Sends one queued email. Its Message-ID is the outbox id, so a copy
    /// sent again after a crash is recognisably the same message.
    async fn deliver(&self, msg: &OutboxMessage) -> Result<Delivered, DeliveryError> {
        use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
        use DeliveryError::{Permanent, Transient};
        let to = msg.target.strip_prefix("mailto:").unwrap_or(&msg.target);
        let body: Value =
            serde_json::from_str(&msg.payload).map_err(|e| Permanent(e.to_string()))?;
        let from = self
            .cfg
            .from
            .parse()
            .map_err(|e| Permanent(format!("from: {e}")))?;
        let to = to.parse().map_err(|e| Permanent(format!("to {to}: {e}")))?;
        let email = Message::builder()
            .from(from)
            .to(to)
            .subject(body["subject"].as_str().unwrap_or("Airlock"))
            .message_id(Some(format!("<{}@airlock>", msg.id)))
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(body["text"].as_str().unwrap_or("").to_owned())
            .map_err(|e| Permanent(e.to_string()))?;
        let mailer = AsyncSmtpTransport::<Tokio1Executor>::from_url(&self.cfg.smtp_url)
            .map_err(|e| Permanent(format!("smtp_url: {e}")))?
            .timeout(Some(self.timeout))
            .build();
        mailer
            .send(email)
            .await
            .map(|_| Delivered)
            .map_err(|e| Transient(format!("SMTP: {e}")))
    }
}
