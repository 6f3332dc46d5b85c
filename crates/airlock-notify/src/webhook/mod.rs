//! Signed webhooks (Standard Webhooks): the event's JSON, POSTed with
//! `webhook-id`, `webhook-timestamp` and `webhook-signature`.

use std::time::Duration;

use airlock_store::OutboxMessage;

use crate::channel::{Channel, Delivered, DeliveryError};
use crate::config::WebhookConfig;

/// The Standard Webhooks signature header for one message.
pub fn sign(secret: &str, id: &str, ts: i64, body: &[u8]) -> Result<String, String> {
    standardwebhooks::Webhook::new(secret)
        .and_then(|w| w.sign(id, ts, body))
        .map_err(|e| format!("{e:?}"))
}

/// One configured webhook.
pub(crate) struct Webhook<'a> {
    pub(crate) http: &'a reqwest::Client,
    pub(crate) hook: &'a WebhookConfig,
    pub(crate) timeout: Duration,
}

impl Channel for Webhook<'_> {
    async fn deliver(&self, msg: &OutboxMessage) -> Result<Delivered, DeliveryError> {
        let ts = chrono::Utc::now().timestamp();
        let signature = sign(&self.hook.secret, &msg.id, ts, msg.payload.as_bytes())
            .map_err(DeliveryError::Permanent)?;
        let res = self
            .http
            .post(&self.hook.url)
            .timeout(self.timeout)
            .header("content-type", "application/json")
            .header(standardwebhooks::HEADER_WEBHOOK_ID, &msg.id)
            .header(standardwebhooks::HEADER_WEBHOOK_TIMESTAMP, ts.to_string())
            .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
            .body(msg.payload.clone())
            .send()
            .await
            .map_err(|e| DeliveryError::Transient(format!("{e}")))?;
        let status = res.status();
        if status.is_success() {
            Ok(Delivered)
        } else {
            // 4xx other than 408/429 will not get better by retrying, but a
            // misconfigured receiver can be fixed: retry all, give up late.
            Err(DeliveryError::Transient(format!(
                "receiver answered {status}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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

    /// What a receiver checks with the reference verifier: what Airlock
    /// signs now passes; a stale timestamp, another body, another id and
    /// another secret do not.
    #[test]
    fn receivers_refuse_forged_and_stale() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"type":"request.decided"}"#;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let headers = |id: &str, ts: i64, sig: &str| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(standardwebhooks::HEADER_WEBHOOK_ID, id.parse().unwrap());
            h.insert(
                standardwebhooks::HEADER_WEBHOOK_TIMESTAMP,
                ts.to_string().parse().unwrap(),
            );
            h.insert(
                standardwebhooks::HEADER_WEBHOOK_SIGNATURE,
                sig.parse().unwrap(),
            );
            h
        };
        let receiver = standardwebhooks::Webhook::new(secret).unwrap();
        let sig = sign(secret, "msg_1", now, body).unwrap();
        assert!(receiver.verify(body, &headers("msg_1", now, &sig)).is_ok());
        let stale = sign(secret, "msg_1", now - 600, body).unwrap();
        assert!(receiver
            .verify(body, &headers("msg_1", now - 600, &stale))
            .is_err());
        assert!(receiver
            .verify(b"{}", &headers("msg_1", now, &sig))
            .is_err());
        assert!(receiver.verify(body, &headers("msg_2", now, &sig)).is_err());
        let other = sign("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "msg_1", now, body).unwrap();
        assert!(receiver
            .verify(body, &headers("msg_1", now, &other))
            .is_err());
    }
}
