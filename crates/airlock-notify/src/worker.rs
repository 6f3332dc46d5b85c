//! The outbox worker: claims due messages one at a time under a lease,
//! hands each to its channel, and records the outcome: delivered, retried
//! later with back-off, or failed (at once when the error is permanent,
//! else after `max_attempts`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use airlock_store::time::now;
use airlock_store::{OutboxMessage, StoreError};

use crate::channel::{Channel, Delivered, DeliveryError};
use crate::config::NotifyConfig;
use crate::discord::Discord;
use crate::email::Email;
use crate::host::{Host, Outcome};
use crate::outbox::message_id;
use crate::slack::Slack;
use crate::webhook::Webhook;

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

/// Deliveries one node makes at once: a receiver that never answers
/// holds one lane for its timeout, not every channel (one lane made a
/// dead webhook delay every Slack message and email by its timeout, each).
const LANES: usize = 4;

/// The receivers ([`airlock_store::receiver_of`]: every Slack target is
/// one, every Discord one) this node has claimed messages for and not yet
/// recorded the outcome of. A lane leaves their other messages for later,
/// so a slow receiver holds up its own messages only, and a receiver's
/// messages leave this node one at a time, oldest first. Not in order:
/// a message put back for a retry, which the next one may overtake, and
/// messages to one receiver from two nodes.
#[derive(Debug, Default)]
pub struct InFlight {
    /// Held from reading the busy targets until the claimed message's
    /// target is marked: two lanes claiming at once would otherwise both
    /// read an idle receiver, take its next two messages, and send the
    /// second beside (or before) the first.
    claiming: tokio::sync::Mutex<()>,
    /// Claimed, unfinished messages per target.
    targets: Mutex<HashMap<String, usize>>,
}

impl InFlight {
    fn targets(&self) -> Vec<String> {
        let map = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        map.keys().cloned().collect()
    }

    /// Marks `target` as being sent to until the guard is dropped.
    fn hold(&self, target: &str) -> Held<'_> {
        *self
            .targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(target.to_owned())
            .or_default() += 1;
        Held(self, target.to_owned())
    }
}

/// One claimed message's target; let go when dropped.
struct Held<'a>(&'a InFlight, String);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut map = (self.0)
            .targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.1) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
}

/// Delivers the outbox on [`LANES`] lanes: at once after a change (any
/// node's), and every second for retries coming due. Runs until the
/// process ends.
pub async fn run<H: Host + 'static>(host: Arc<H>) {
    let in_flight = Arc::new(InFlight::default());
    let mut lanes = tokio::task::JoinSet::new();
    for _ in 0..LANES {
        lanes.spawn(lane(host.clone(), in_flight.clone()));
    }
    while lanes.join_next().await.is_some() {}
}

/// One lane of deliveries.
async fn lane<H: Host + 'static>(host: Arc<H>, in_flight: Arc<InFlight>) {
    let http = match reqwest::Client::builder()
        // A receiver's redirect is not followed: that would let it point
        // Airlock at any URL (SSRF).
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client; notifications stay queued");
            return;
        }
    };
    let mut events = host.store().subscribe();
    loop {
        // Nothing configured (now: a reload may add a channel): no store work.
        if !host.settings().any_channel() {
            let _ = tokio::time::timeout(Duration::from_secs(1), events.recv()).await;
            continue;
        }
        match deliver_due(&*host, &http, &in_flight).await {
            Ok(n) if n > 0 => continue,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "outbox round failed; retrying"),
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), events.recv()).await;
    }
}

/// Sends one message through the channel its target names, as configured
/// now.
async fn send(
    host: &dyn Host,
    http: &reqwest::Client,
    config: &NotifyConfig,
    msg: &OutboxMessage,
    timeout: Duration,
) -> Result<Delivered, DeliveryError> {
    let gone = |what: &str| {
        Err(DeliveryError::Permanent(format!(
            "{what} is no longer configured"
        )))
    };
    if msg.target.starts_with("discord:") {
        match &config.discord {
            Some(cfg) => {
                Discord {
                    http,
                    cfg,
                    host,
                    timeout,
                }
                .deliver(msg)
                .await
            }
            None => gone("Discord"),
        }
    } else if msg.target.starts_with("slack:") {
        match &config.slack {
            Some(cfg) => {
                Slack {
                    http,
                    cfg,
                    host,
                    timeout,
                }
                .deliver(msg)
                .await
            }
            None => gone("Slack"),
        }
    } else if msg.target.starts_with("mailto:") {
        match &config.email {
            Some(cfg) => Email { cfg, timeout }.deliver(msg).await,
            None => gone("email"),
        }
    } else {
        match config.webhooks.iter().find(|h| h.url == msg.target) {
            Some(hook) => {
                Webhook {
                    http,
                    hook,
                    timeout,
                }
                .deliver(msg)
                .await
            }
            None => gone("this webhook"),
        }
    }
}

/// One delivery round: claims due messages, sends them, records the
/// outcomes. Returns how many were claimed.
pub async fn deliver_due(
    host: &dyn Host,
    http: &reqwest::Client,
    in_flight: &InFlight,
) -> Result<usize, StoreError> {
    let config = host.settings();
    let store = host.store();
    let timeout = Duration::from_secs(config.delivery_timeout_seconds.max(1));
    // Only this attempt may record the outcome of what it claims.
    let claim = message_id();
    let (due, held) = {
        let _claiming = in_flight.claiming.lock().await;
        let t = now();
        let lease = t
            + chrono::Duration::from_std(timeout * CALLS_PER_MESSAGE).unwrap_or_default()
            + chrono::Duration::seconds(5);
        let busy = in_flight.targets();
        let due = store
            .write({
                let claim = claim.clone();
                move |tx| tx.claim_outbox(t, lease, BATCH, &claim, &busy)
            })
            .await?;
        let held: Vec<Held<'_>> = due
            .iter()
            .map(|m| in_flight.hold(airlock_store::receiver_of(&m.target)))
            .collect();
        (due, held)
    };
    let claimed = due.len();
    // Each receiver stays held until the outcome is recorded: no other
    // lane sends it anything while this message is on its way.
    for (msg, _held) in due.into_iter().zip(held) {
        let result = send(host, http, &config, &msg, timeout).await;
        let (id, c) = (msg.id.clone(), claim.clone());
        let (outcome, kept) = match result {
            Ok(Delivered) => {
                let kept = store
                    .write(move |tx| tx.outbox_delivered(&id, now(), &c))
                    .await?;
                (Outcome::Delivered, kept)
            }
            Err(e) => {
                let give_up = e.is_permanent() || msg.attempts + 1 >= config.max_attempts;
                let next = now() + backoff(msg.attempts);
                let why = e.to_string();
                tracing::warn!(message = %msg.id, target = %msg.target, error = %why, give_up, "webhook delivery failed");
                let kept = store
                    .write(move |tx| tx.outbox_attempt_failed(&id, &why, next, give_up, &c))
                    .await?;
                (
                    if give_up {
                        Outcome::Failed
                    } else {
                        Outcome::Retry
                    },
                    kept,
                )
            }
        };
        if !kept {
            // The lease lapsed and another attempt owns the message now;
            // its outcome is the one recorded.
            tracing::warn!(message = %msg.id, "outbox lease lost before the outcome was recorded");
        }
        host.observe(outcome);
    }
    Ok(claimed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::WebhookConfig;
    use crate::host::Platform;
    use airlock_core::{Request, RequestId};
    use airlock_store::Store;
    use serde_json::Value;

    /// A service with only a store and a `[notify]` section.
    struct Fake {
        store: Store,
        settings: NotifyConfig,
        outcomes: std::sync::Mutex<Vec<Outcome>>,
    }

    impl Host for Fake {
        fn store(&self) -> &Store {
            &self.store
        }
        fn settings(&self) -> NotifyConfig {
            self.settings.clone()
        }
        fn view(&self, _: &Request) -> Result<Value, DeliveryError> {
            Err(DeliveryError::Permanent("no views here".into()))
        }
        fn link(&self, id: RequestId) -> String {
            format!("http://airlock.invalid/requests/{id}")
        }
        fn chat_id(&self, _: Platform, _: &str) -> Option<String> {
            None
        }
        fn observe(&self, outcome: Outcome) {
            self.outcomes.lock().unwrap().push(outcome);
        }
    }

    /// A transient failure (nobody listening) is retried later; a permanent
    /// one (Slack no longer configured) is marked failed at its first
    /// attempt, whatever `max_attempts` says.
    #[tokio::test]
    async fn transient_failures_are_retried_and_permanent_ones_fail_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open("sqlite://outbox.db", dir.path()).unwrap();
        // A port nothing listens on: the connection is refused.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        drop(listener);
        let settings = NotifyConfig {
            webhooks: vec![WebhookConfig {
                url: url.clone(),
                secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
                events: Vec::new(),
            }],
            max_attempts: 10,
            ..NotifyConfig::default()
        };
        store
            .write(move |tx| {
                crate::outbox::queue(tx, url, "request.created", serde_json::json!({}))?;
                crate::outbox::queue(
                    tx,
                    "slack:update".into(),
                    "request.reviewed",
                    serde_json::json!({}),
                )
            })
            .await
            .unwrap();
        let host = Fake {
            store,
            settings,
            outcomes: Default::default(),
        };
        let http = reqwest::Client::new();
        let lanes = InFlight::default();
        assert_eq!(deliver_due(&host, &http, &lanes).await.unwrap(), 1);
        assert_eq!(deliver_due(&host, &http, &lanes).await.unwrap(), 1);
        let mut outcomes = host.outcomes.lock().unwrap().clone();
        outcomes.sort_by_key(|o| o.as_str());
        assert_eq!(outcomes, [Outcome::Failed, Outcome::Retry]);
        let all = host.store.read(|r| r.outbox_list(None, 10)).await.unwrap();
        let slack = all.iter().find(|m| m.target == "slack:update").unwrap();
        assert_eq!(slack.status, "failed");
        assert_eq!(slack.attempts, 1);
        assert_eq!(
            slack.last_error.as_deref(),
            Some("Slack is no longer configured")
        );
        let hook = all.iter().find(|m| m.target != "slack:update").unwrap();
        assert_eq!(hook.status, "pending");
        assert_eq!(hook.attempts, 1);
    }

    /// A host whose one webhook takes connections (the backlog does) and
    /// never answers, each delivery given `timeout` seconds; its URL, the
    /// listener and the store's folder, to keep while the test runs.
    fn silent_webhook(
        timeout: u64,
    ) -> (Arc<Fake>, String, std::net::TcpListener, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open("sqlite://outbox.db", dir.path()).unwrap();
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", silent.local_addr().unwrap());
        let settings = NotifyConfig {
            webhooks: vec![WebhookConfig {
                url: url.clone(),
                secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
                events: Vec::new(),
            }],
            delivery_timeout_seconds: timeout,
            ..NotifyConfig::default()
        };
        let host = Arc::new(Fake {
            store,
            settings,
            outcomes: Default::default(),
        });
        (host, url, silent, dir)
    }

    /// A receiver that never answers holds its own messages only: while
    /// one lane waits on it, another takes the next message for any other
    /// target, not the dead receiver's second one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_receiver_holds_up_only_its_own_messages() {
        let (host, url, silent, _dir) = silent_webhook(2);
        let dead = url.clone();
        host.store
            .write(move |tx| {
                crate::outbox::queue(tx, dead.clone(), "request.created", serde_json::json!({}))?;
                crate::outbox::queue(tx, dead, "request.created", serde_json::json!({}))?;
                crate::outbox::queue(
                    tx,
                    "slack:update".into(),
                    "request.reviewed",
                    serde_json::json!({}),
                )
            })
            .await
            .unwrap();
        let lanes = Arc::new(InFlight::default());
        let first = tokio::spawn({
            let (host, lanes) = (host.clone(), lanes.clone());
            async move { deliver_due(&*host, &reqwest::Client::new(), &lanes).await }
        });
        while lanes.targets().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            deliver_due(&*host, &reqwest::Client::new(), &lanes)
                .await
                .unwrap(),
            1
        );
        let all = host.store.read(|r| r.outbox_list(None, 10)).await.unwrap();
        let slack = all.iter().find(|m| m.target == "slack:update").unwrap();
        assert_eq!(slack.attempts, 1, "the second lane took the Slack message");
        assert_eq!(first.await.unwrap().unwrap(), 1);
        drop(silent);
    }

    /// Two lanes claiming at the same moment never both take a message for
    /// one receiver: the second would be sent beside the first, and could
    /// arrive before it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lanes_claiming_at_once_send_one_receivers_messages_one_at_a_time() {
        let (host, url, silent, _dir) = silent_webhook(1);
        let target = url.clone();
        host.store
            .write(move |tx| {
                crate::outbox::queue(tx, target.clone(), "request.created", serde_json::json!({}))?;
                crate::outbox::queue(tx, target, "request.decided", serde_json::json!({}))
            })
            .await
            .unwrap();
        let lanes = Arc::new(InFlight::default());
        let round = || {
            let (host, lanes) = (host.clone(), lanes.clone());
            tokio::spawn(async move { deliver_due(&*host, &reqwest::Client::new(), &lanes).await })
        };
        let (a, b) = (round(), round());
        let mut claimed = [a.await.unwrap().unwrap(), b.await.unwrap().unwrap()];
        claimed.sort_unstable();
        assert_eq!(
            claimed,
            [0, 1],
            "one lane took the first message, the other none"
        );
        let all = host.store.read(|r| r.outbox_list(None, 10)).await.unwrap();
        let tried: Vec<(&str, u32)> = all.iter().map(|m| (m.event.as_str(), m.attempts)).collect();
        assert!(tried.contains(&("request.decided", 0)), "{tried:?}");
        drop(silent);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(0), chrono::Duration::seconds(1));
        assert_eq!(backoff(3), chrono::Duration::seconds(8));
        assert_eq!(backoff(30), chrono::Duration::hours(1));
    }
}
