//! The overview's two pictures, drawn as SVG on the server: requests per
//! day by outcome, and how long decisions took. Colours are presentation
//! attributes, not inline styles, so the strict CSP holds.

use std::collections::BTreeMap;

use airlock_core::{Request, RequestStatus, Verdict};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use maud::{html, Markup};

/// Outcomes drawn, bottom to top, with their colours.
const OUTCOMES: [(&str, &str); 4] = [
    ("approved", "#1a7f37"),
    ("denied", "#cf222e"),
    ("expired", "#9a6700"),
    ("pending", "#8c959f"),
];

/// Where a request ended, for the picture.
fn outcome(r: &Request) -> &'static str {
    match r.status {
        RequestStatus::Approved | RequestStatus::Consumed | RequestStatus::Completed => "approved",
        RequestStatus::Denied => "denied",
        RequestStatus::Pending => "pending",
        // Cancelled and revoked ones count with the ones that lapsed.
        _ => "expired",
    }
}

/// Stacked bars: one per day of the last `days`, by outcome.
pub(crate) fn requests_per_day(requests: &[Request], now: DateTime<Utc>, days: i64) -> Markup {
    let today = now.date_naive();
    let first = today - Duration::days(days - 1);
    let mut counts: BTreeMap<NaiveDate, BTreeMap<&str, u32>> = BTreeMap::new();
    for r in requests {
        let day = r.created_at.date_naive();
        if day >= first && day <= today {
            *counts
                .entry(day)
                .or_default()
                .entry(outcome(r))
                .or_default() += 1;
        }
    }
    let max = counts
        .values()
        .map(|m| m.values().sum::<u32>())
        .max()
        .unwrap_or(0)
        .max(1);
    let (w, h, bar) = (40 * days, 160i64, 28i64);
    // (x, y, height, colour, label) of every segment, bottom up per day.
    let mut rects = Vec::new();
    let mut labels = Vec::new();
    for i in 0..days {
        let day = first + Duration::days(i);
        let x = i * 40 + 6;
        let mut y = h;
        let per = counts.get(&day).cloned().unwrap_or_default();
        for (name, colour) in OUTCOMES {
            let n = per.get(name).copied().unwrap_or(0);
            if n > 0 {
                let bh = (i64::from(n) * (h - 10)) / i64::from(max);
                y -= bh;
                rects.push((x, y, bh, colour, format!("{day}: {n} {name}")));
            }
        }
        labels.push((x + bar / 2, day.format("%d").to_string()));
    }
    html! {
        figure {
            svg.chart role="img" aria-labelledby="per-day-title" viewBox=(format!("0 0 {w} {}", h + 30)) width="100%" {
                title #per-day-title { "Requests per day by outcome, last " (days) " days" }
                @for (x, y, bh, colour, label) in &rects {
                    rect x=(x) y=(y) width=(bar) height=(bh) fill=(colour) { title { (label) } }
                }
                @for (x, day) in &labels {
                    text x=(x) y=(h + 20) text-anchor="middle" font-size="10" fill="#5b6570" { (day) }
                }
            }
            figcaption {
                @for (name, colour) in OUTCOMES {
                    span.legend { svg width="10" height="10" aria-hidden="true" { rect width="10" height="10" fill=(colour) {} } " " (name) " " }
                }
            }
        }
    }
}

/// Buckets of time to decision.
const BUCKETS: [(&str, i64); 6] = [
    ("< 1 min", 60),
    ("1–5 min", 300),
    ("5–15 min", 900),
    ("15–60 min", 3600),
    ("1–4 h", 4 * 3600),
    ("> 4 h", i64::MAX),
];

/// Seconds from asking to the deciding review (the last approval, or the
/// deny), for decided requests.
pub(crate) fn decision_seconds(r: &Request) -> Option<i64> {
    let decided = match r.status {
        RequestStatus::Denied => r.reviews.iter().find(|v| v.verdict == Verdict::Deny),
        RequestStatus::Approved | RequestStatus::Consumed | RequestStatus::Completed => r
            .reviews
            .iter()
            .filter(|v| v.verdict == Verdict::Approve)
            .max_by_key(|v| v.at),
        _ => None,
    }?;
    Some((decided.at - r.created_at).num_seconds().max(0))
}

/// A histogram of time to decision.
pub(crate) fn time_to_decision(requests: &[Request]) -> Markup {
    let mut counts = [0u32; BUCKETS.len()];
    for secs in requests.iter().filter_map(decision_seconds) {
        if let Some(i) = BUCKETS.iter().position(|(_, upto)| secs < *upto) {
            counts[i] += 1;
        }
    }
    let max = counts.iter().copied().max().unwrap_or(0).max(1);
    let (h, col) = (160i64, 80i64);
    html! {
        figure {
            svg.chart role="img" aria-labelledby="ttd-title" viewBox=(format!("0 0 {} {}", col * BUCKETS.len() as i64, h + 30)) width="100%" {
                title #ttd-title { "Time from request to decision" }
                @for (i, (label, _)) in BUCKETS.iter().enumerate() {
                    @let n = counts[i];
                    @let bh = (i64::from(n) * (h - 10)) / i64::from(max);
                    @let x = i as i64 * col + 10;
                    rect x=(x) y=(h - bh) width=(col - 20) height=(bh) fill="#0b5cad" {
                        title { (label) ": " (n) }
                    }
                    text x=(x + (col - 20) / 2) y=(h - bh - 4) text-anchor="middle" font-size="11" fill="#1b1f24" { (n) }
                    text x=(x + (col - 20) / 2) y=(h + 20) text-anchor="middle" font-size="11" fill="#5b6570" { (label) }
                }
            }
        }
    }
}
