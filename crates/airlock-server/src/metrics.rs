//! Prometheus metrics: decisions by outcome, decision latency, pending
//! requests (read from the store at scrape time, so every node agrees),
//! in OpenMetrics or in Prometheus's classic text format.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The registry and the handles the service updates.
pub(crate) struct Metrics {
    registry: Mutex<Registry>,
    decisions: Family<Vec<(String, String)>, Counter>,
    latency: Histogram,
    pending: Gauge,
    unapprovable: Gauge,
    unreviewed_breakglass: Gauge,
    notifications: Family<Vec<(String, String)>, Counter>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("airlock");
        let decisions = Family::<Vec<(String, String)>, Counter>::default();
        registry.register("decisions", "Decisions by outcome", decisions.clone());
        // 10 µs to ~1.3 s.
        let latency = Histogram::new(exponential_buckets(0.00001, 2.0, 18));
        registry.register(
            "decision_duration_seconds",
            "Time to decide and durably audit a check",
            latency.clone(),
        );
        let pending = Gauge::default();
        registry.register(
            "pending_requests",
            "Requests waiting for approval",
            pending.clone(),
        );
        let unapprovable = Gauge::default();
        registry.register(
            "unapprovable_requests",
            "Pending requests with a threshold fewer people may approve than its quorum: they can only expire",
            unapprovable.clone(),
        );
        let unreviewed_breakglass = Gauge::default();
        registry.register(
            "breakglass_unreviewed",
            "Break-glass uses still waiting for their two reviews after the fact",
            unreviewed_breakglass.clone(),
        );
        let notifications = Family::<Vec<(String, String)>, Counter>::default();
        registry.register(
            "notification_attempts",
            "Notification delivery attempts by outcome (delivered, retry, failed)",
            notifications.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            decisions,
            latency,
            pending,
            unapprovable,
            unreviewed_breakglass,
            notifications,
        }
    }

    pub(crate) fn observe_decision(&self, outcome: &str, took: Duration) {
        self.decisions
            .get_or_create(&vec![("outcome".to_owned(), outcome.to_owned())])
            .inc();
        self.latency.observe(took.as_secs_f64());
    }

    pub(crate) fn observe_notification(&self, outcome: &str) {
        self.notifications
            .get_or_create(&vec![("outcome".to_owned(), outcome.to_owned())])
            .inc();
    }

    pub(crate) fn render(&self, pending: i64, unapprovable: i64, breakglass: i64) -> String {
        self.pending.set(pending);
        self.unapprovable.set(unapprovable);
        self.unreviewed_breakglass.set(breakglass);
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            if encode(&mut out, &r).is_err() {
                out.clear();
            }
        }
        out
    }
}

/// The classic Prometheus text format (0.0.4) of an OpenMetrics text, for
/// scrapers that do not ask for OpenMetrics: a counter's family is named
/// after its `_total` sample, and the OpenMetrics-only lines (`# UNIT`,
/// `# EOF`) are left out. Samples are the same in both.
pub(crate) fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{tag}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_text_names_counters_by_their_samples() {
        let m = Metrics::new();
        m.observe_notification("sent");
        let open = m.render(3, 0, 0);
        assert!(
            open.contains("# TYPE airlock_notification_attempts counter"),
            "{open}"
        );
        assert!(open.trim_end().ends_with("# EOF"), "{open}");
        let text = prometheus_text(&open);
        assert!(
            text.contains("# TYPE airlock_notification_attempts_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP airlock_notification_attempts_total "),
            "{text}"
        );
        assert!(
            text.contains("airlock_notification_attempts_total{outcome=\"sent\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE airlock_pending_requests gauge\nairlock_pending_requests 3\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        // Every sample is kept.
        let samples = |t: &str| t.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples(&open), samples(&text));
    }
}
