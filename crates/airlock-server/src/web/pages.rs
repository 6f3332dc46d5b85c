//! The console's HTML, rendered on the server with maud (every value is
//! escaped; nothing is built by string concatenation).

use airlock_core::display::{self, Piece};
use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};
use serde_json::Value;

/// What the layout needs to know about the viewer.
pub(crate) struct Viewer<'a> {
    pub(crate) user: &'a str,
    pub(crate) csrf: &'a str,
}

/// The page frame: header, navigation, sign-out form.
pub(crate) fn layout(title: &str, viewer: Option<&Viewer<'_>>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Airlock" }
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
            }
            body {
                header {
                    a.brand href="/" { "Airlock" }
                    @if let Some(v) = viewer {
                        nav aria-label="Main" {
                            a href="/inbox" { "Inbox" }
                            a href="/mine" { "My requests" }
                            a href="/overview" { "Overview" }
                            a href="/policy" { "Policies" }
                            a href="/audit" { "Audit" }
                            a href="/notifications" { "Notifications" }
                        }
                        form.signout method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(v.csrf);
                            span.who { (v.user) }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The sign-in form. Inputs are named `username` and `password`.
pub(crate) fn login(csrf: &str, sso: Option<&str>, error: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            @if let Some(e) = error {
                p.error role="alert" { (e) }
            }
            form.card method="post" action="/login" {
                input type="hidden" name="csrf" value=(csrf);
                label for="username" { "User name" }
                input id="username" name="username" autocomplete="username" required autofocus;
                label for="password" { "Password" }
                input id="password" name="password" type="password" autocomplete="current-password" required;
                button type="submit" { "Sign in" }
            }
            @if let Some(label) = sso {
                p { a.sso href="/login/oidc" { (label) } }
            }
        },
    )
}

/// An error page.
pub(crate) fn error(viewer: Option<&Viewer<'_>>, title: &str, message: &str) -> Markup {
    layout(
        title,
        viewer,
        html! {
            h1 { (title) }
            p.error role="alert" { (message) }
            p { a href="/inbox" { "Back to the inbox" } }
        },
    )
}

fn time_left(expires: &str, now: DateTime<Utc>) -> String {
    let Ok(t) = DateTime::parse_from_rfc3339(expires) else {
        return String::new();
    };
    let secs = (t.with_timezone(&Utc) - now).num_seconds();
    if secs <= 0 {
        return "expired".into();
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m:02}m left")
    } else {
        format!("{m}m{s:02}s left")
    }
}

/// What an approver is told about a marked value.
const HIDDEN_TITLE: &str = "Contains hidden or control characters (shown as \\u{…}): \
     it may not read as it was written";

/// Characters the console marks: those that hide themselves or change how
/// the text around them reads. Newlines and tabs are only white space in
/// HTML, so they are not marked.
fn marked(c: char) -> bool {
    display::is_hidden(c) && !matches!(c, '\n' | '\t')
}

fn json_marked(v: &Value) -> bool {
    match v {
        Value::String(s) => s.chars().any(marked),
        Value::Array(a) => a.iter().any(json_marked),
        Value::Object(o) => o
            .iter()
            .any(|(k, v)| k.chars().any(marked) || json_marked(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Text a requester or reviewer wrote. Escaped by maud like everything,
/// and, if it holds characters that hide themselves or reorder the text
/// around them (a right-to-left override makes `report`+RLO+`fdp.exe` read
/// "reportexe.pdf"), marked, with each such character shown as its escape.
fn untrusted(s: &str) -> Markup {
    html! {
        @if s.chars().any(marked) {
            mark.suspicious title=(HIDDEN_TITLE) {
                @for p in display::pieces(s) {
                    @match p {
                        Piece::Text(t) => (t),
                        Piece::Hidden(c) if !marked(c) => (c),
                        Piece::Hidden(c) => span.hidden-char { (display::escape_char(c)) },
                    }
                }
            }
        } @else {
            (s)
        }
    }
}

/// JSON a requester wrote (params, attributes, context), indented, with
/// hidden characters as JSON escapes, and marked if it held any.
fn untrusted_json(v: &Value) -> Markup {
    html! {
        @if json_marked(v) {
            div.suspicious title=(HIDDEN_TITLE) {
                p { mark.suspicious { "⚠ Contains hidden or control characters, shown as \\u escapes." } }
                pre { (display::json_pretty(v)) }
            }
        } @else {
            pre { (display::json_pretty(v)) }
        }
    }
}

/// The same, on one line (the audit explorer's details).
fn untrusted_json_line(v: &Value) -> Markup {
    html! {
        @if json_marked(v) {
            mark.suspicious title=(HIDDEN_TITLE) { code.details { (display::json_compact(v)) } }
        } @else {
            code.details { (display::json_compact(v)) }
        }
    }
}

fn resource(v: &Value) -> String {
    format!(
        "{}:{}",
        v["resource"]["type"].as_str().unwrap_or(""),
        v["resource"]["id"].as_str().unwrap_or("")
    )
}

/// "security 1/2 (bob, carol)" for each threshold.
fn thresholds(v: &Value) -> Markup {
    html! {
        ul.thresholds {
            @for t in v["thresholds"].as_array().into_iter().flatten() {
                @let groups = t["groups"].as_array().into_iter().flatten().filter_map(|g| g.as_str()).collect::<Vec<_>>().join(" or ");
                @let eligible = t["eligible"].as_array().into_iter().flatten().filter_map(|g| g.as_str()).collect::<Vec<_>>().join(", ");
                @let (n, q) = (t["approvals"].as_u64().unwrap_or(0), t["quorum"].as_u64().unwrap_or(1));
                li class=(if n >= q { "met" } else { "missing" }) {
                    progress value=(n) max=(q) aria-label=(format!("{groups}: {n} of {q} approvals")) {}
                    " " strong { (groups) } " " (n) "/" (q)
                    @if !eligible.is_empty() { span.muted { " · can approve: " (eligible) } }
                }
            }
        }
    }
}

/// The rows of the inbox: what the viewer may review now.
pub(crate) fn inbox_rows(requests: &[Value], next: Option<&str>, now: DateTime<Utc>) -> Markup {
    html! {
        (inbox_list(requests, now))
        @if let Some(next) = next {
            p.more { a href=(format!("/inbox?after={next}")) { "Older requests →" } }
        }
    }
}

fn inbox_list(requests: &[Value], now: DateTime<Utc>) -> Markup {
    html! {
        @if requests.is_empty() {
            p.empty { "Nothing waits for you." }
        } @else {
            ul.requests {
                @for r in requests {
                    li.request {
                        a.title href=(format!("/requests/{}", r["id"].as_str().unwrap_or(""))) {
                            strong { (r["principal"].as_str().unwrap_or("")) }
                            " wants to " strong { (r["action"].as_str().unwrap_or("")) }
                            " " code { (untrusted(&resource(r))) }
                        }
                        @if let Some(reason) = r["reason"].as_str() {
                            p.reason { "“" (untrusted(reason)) "”" }
                        }
                        (thresholds(r))
                        p.muted { (time_left(r["expires_at"].as_str().unwrap_or(""), now)) }
                    }
                }
            }
        }
    }
}

/// The inbox page, which refreshes its list when requests change.
pub(crate) fn inbox(
    viewer: &Viewer<'_>,
    requests: &[Value],
    next: Option<&str>,
    after: Option<&str>,
    now: DateTime<Utc>,
) -> Markup {
    // A later page refreshes itself, not the first one.
    let live = match after {
        Some(a) => format!("/inbox/rows?after={a}"),
        None => "/inbox/rows".to_owned(),
    };
    layout(
        "Inbox",
        Some(viewer),
        html! {
            h1 { "Waiting for your review" }
            @if after.is_some() { p { a href="/inbox" { "← Newest" } } }
            div #live data-live=(live) aria-live="polite" { (inbox_rows(requests, next, now)) }
        },
    )
}

/// The rows of "my requests".
pub(crate) fn mine_rows(requests: &[Value], now: DateTime<Utc>) -> Markup {
    html! {
        @if requests.is_empty() {
            p.empty { "You have asked for nothing yet." }
        } @else {
            table {
                thead { tr { th { "Request" } th { "Status" } th { "Grant" } } }
                tbody {
                    @for r in requests {
                        tr {
                            td {
                                a href=(format!("/requests/{}", r["id"].as_str().unwrap_or(""))) {
                                    (r["action"].as_str().unwrap_or("")) " " code { (untrusted(&resource(r))) }
                                }
                            }
                            td { span class=(format!("status {}", r["status"].as_str().unwrap_or(""))) { (r["status"].as_str().unwrap_or("")) } }
                            td { (grant_state(r, now)) }
                        }
                    }
                }
            }
        }
    }
}

fn grant_state(r: &Value, now: DateTime<Utc>) -> Markup {
    let g = &r["grant"];
    html! {
        @if g.is_object() {
            @let (uses, max) = (g["uses"].as_u64().unwrap_or(0), g["max_uses"].as_u64().unwrap_or(1));
            @if g["revoked"].as_bool() == Some(true) { "revoked" }
            @else if uses >= max { "used " (uses) "/" (max) @if let Some(o) = g["outcome"].as_str() { " · " (o) } }
            @else { "ready, " (uses) "/" (max) " used · " (time_left(g["expires_at"].as_str().unwrap_or(""), now)) }
        } @else { "—" }
    }
}

/// "My requests", refreshed live.
pub(crate) fn mine(viewer: &Viewer<'_>, requests: &[Value], now: DateTime<Utc>) -> Markup {
    layout(
        "My requests",
        Some(viewer),
        html! {
            h1 { "My requests" }
            div #live data-live="/mine/rows" aria-live="polite" { (mine_rows(requests, now)) }
        },
    )
}

/// Everything an approver needs to judge one request, and the buttons if
/// they may review it.
pub(crate) fn request(
    viewer: &Viewer<'_>,
    r: &Value,
    attrs: &Value,
    history: &[Value],
    can_review: bool,
    now: DateTime<Utc>,
) -> Markup {
    let id = r["id"].as_str().unwrap_or("");
    layout(
        &format!("Request {id}"),
        Some(viewer),
        html! {
            h1 {
                (r["principal"].as_str().unwrap_or("")) " wants to "
                (r["action"].as_str().unwrap_or("")) " " code { (untrusted(&resource(r))) }
            }
            p { span class=(format!("status {}", r["status"].as_str().unwrap_or(""))) { (r["status"].as_str().unwrap_or("")) }
                " · " (time_left(r["expires_at"].as_str().unwrap_or(""), now)) " · " code.muted { (id) } }
            @if let Some(reason) = r["reason"].as_str() { p.reason { "Reason: “" (untrusted(reason)) "”" } }
            section {
                h2 { "Thresholds" }
                (thresholds(r))
                p.muted { "Required by policies: " (r["policies"].as_array().into_iter().flatten().filter_map(|p| p.as_str()).collect::<Vec<_>>().join(", ")) }
            }
            @if can_review {
                section.review {
                    h2 { "Your review" }
                    form method="post" action=(format!("/requests/{id}/review")) {
                        input type="hidden" name="csrf" value=(viewer.csrf);
                        label for="reason" { "Reason (required to deny)" }
                        textarea id="reason" name="reason" rows="3" maxlength="2000" {}
                        div.buttons {
                            button.approve type="submit" name="verdict" value="approve" { "Approve" }
                            button.deny type="submit" name="verdict" value="deny" { "Deny" }
                        }
                    }
                }
            }
            section {
                h2 { "The exact action" }
                dl {
                    dt { "Principal" } dd { (r["principal"].as_str().unwrap_or("")) }
                    dt { "Action" } dd { (r["action"].as_str().unwrap_or("")) }
                    dt { "Resource" } dd { code { (untrusted(&resource(r))) } }
                    dt { "Fingerprint" } dd { code { (r["fingerprint"].as_str().unwrap_or("")) } }
                }
                h3 { "Params" }
                (untrusted_json(&r["params"]))
                h3 { "Resource attributes" }
                (untrusted_json(attrs))
                h3 { "Context" }
                (untrusted_json(&r["context"]))
            }
            section {
                h2 { "Reviews" }
                @if r["reviews"].as_array().is_none_or(|a| a.is_empty()) { p.muted { "None yet." } }
                ul {
                    @for rv in r["reviews"].as_array().into_iter().flatten() {
                        li {
                            strong { (rv["reviewer"].as_str().unwrap_or("")) } " "
                            (rv["verdict"].as_str().unwrap_or("")) " via " (rv["channel"].as_str().unwrap_or(""))
                            " at " (rv["at"].as_str().unwrap_or(""))
                            @if let Some(why) = rv["reason"].as_str() { ": “" (untrusted(why)) "”" }
                        }
                    }
                }
                @if r["grant"].is_object() { p { "Grant: " (grant_state(r, now)) } }
            }
            section {
                h2 { "History" }
                ol.history {
                    @for h in history {
                        li {
                            code { "#" (h["seq"].as_i64().unwrap_or(0)) } " " (h["ts"].as_str().unwrap_or("")) " "
                            strong { (h["kind"].as_str().unwrap_or("")) } " by " (h["actor"].as_str().unwrap_or(""))
                            @if let Some(to) = h["details"]["to"].as_str() { " → " (to) }
                            // Every description of the action that led here,
                            // so a raised requirement shows what raised it.
                            @if h["kind"] == "decision" && h["details"]["context"].is_object() {
                                (untrusted_json(&h["details"]["context"]))
                            }
                            @if h["kind"] == "requirement_raised" {
                                " — now needs: " (h["details"]["thresholds"].as_array().into_iter().flatten().map(|t| format!("{} × {}", t["quorum"], t["groups"].as_array().into_iter().flatten().filter_map(|g| g.as_str()).collect::<Vec<_>>().join("/"))).collect::<Vec<_>>().join(", "))
                            }
                        }
                    }
                }
            }
            div #live data-live=(format!("/requests/{id}/status")) data-reload="1" hidden { (r["status"].as_str().unwrap_or("")) }
        },
    )
}

/// The audit explorer's filter values, as typed.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub(crate) struct AuditQuery {
    #[serde(default)]
    pub(crate) actor: String,
    #[serde(default)]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) request: String,
    #[serde(default)]
    pub(crate) since: String,
    #[serde(default)]
    pub(crate) until: String,
}

impl AuditQuery {
    /// The same filter as a query string, for the export link.
    pub(crate) fn query_string(&self) -> String {
        let pairs = [
            ("actor", &self.actor),
            ("kind", &self.kind),
            ("request", &self.request),
            ("since", &self.since),
            ("until", &self.until),
        ];
        pairs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={}", url_encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The chain's state, in words.
pub(crate) struct ChainState {
    pub(crate) head: i64,
    pub(crate) checkpoints: usize,
    pub(crate) broken: Option<(i64, String)>,
}

/// The audit explorer.
pub(crate) fn audit(
    viewer: &Viewer<'_>,
    q: &AuditQuery,
    records: &[Value],
    chain: &ChainState,
    limit: u32,
) -> Markup {
    layout(
        "Audit log",
        Some(viewer),
        html! {
            h1 { "Audit log" }
            @match &chain.broken {
                None => p.verified role="status" {
                    "✔ Chain verified up to record " (chain.head) " (" (chain.checkpoints) " signed checkpoints)."
                },
                Some((seq, why)) => p.error role="alert" {
                    "✘ Chain broken at record " (seq) ": " (why)
                },
            }
            form.filters method="get" action="/audit" {
                label { "Actor " input name="actor" value=(q.actor); }
                label { "Kind " input name="kind" value=(q.kind) list="kinds"; }
                datalist #kinds {
                    @for k in ["decision", "request_created", "review", "request_state", "grant_issued", "grant_consumed", "grant_refused", "grant_completed", "policy_loaded", "policy_reload_failed", "key_created", "key_revoked", "password_set", "sign_in", "sign_in_failed", "sign_out"] {
                        option value=(k) {}
                    }
                }
                label { "Request " input name="request" value=(q.request) placeholder="req_…"; }
                label { "From (UTC) " input name="since" value=(q.since) placeholder="2026-11-24T09:00"; }
                label { "Until (UTC) " input name="until" value=(q.until) placeholder="2026-11-24T18:00"; }
                button type="submit" { "Filter" }
                a.export href=(format!("/audit/export?{}", q.query_string())) { "Export as JSON lines" }
            }
            p.muted { (records.len()) " records" @if records.len() as u32 >= limit { " (the newest " (limit) "; narrow the filter or export)" } }
            div.scroll {
                table {
                    thead { tr { th { "#" } th { "Time" } th { "Kind" } th { "Actor" } th { "Subject" } th { "Details" } } }
                    tbody {
                        @for r in records {
                            tr {
                                td { (r["seq"].as_i64().unwrap_or(0)) }
                                td { (r["ts"].as_str().unwrap_or("")) }
                                td { (r["kind"].as_str().unwrap_or("")) }
                                td { (r["actor"].as_str().unwrap_or("")) }
                                td {
                                    @let subject = r["subject"].as_str().unwrap_or("");
                                    @if subject.starts_with("req_") { a href=(format!("/requests/{subject}")) { code { (subject) } } }
                                    @else { code { (subject) } }
                                }
                                td { (untrusted_json_line(&r["details"])) }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// What the simulator was asked, as typed.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub(crate) struct SimulateForm {
    #[serde(default)]
    pub(crate) csrf: String,
    #[serde(default)]
    pub(crate) principal: String,
    #[serde(default)]
    pub(crate) action: String,
    #[serde(default)]
    pub(crate) resource: String,
    #[serde(default)]
    pub(crate) params: String,
    #[serde(default)]
    pub(crate) context: String,
}

/// The policy page: what is loaded, the last reload, and the simulator
/// with its answer, if it was asked.
pub(crate) fn policy(
    viewer: &Viewer<'_>,
    own_principal_only: bool,
    version: &str,
    policies: &[(String, String)],
    last_reload: Option<&Value>,
    form: &SimulateForm,
    answer: Option<Result<Value, String>>,
) -> Markup {
    layout(
        "Policies",
        Some(viewer),
        html! {
            h1 { "Policies" }
            p { "Serving version " code { (version) } " · " (policies.len()) " policies" }
            @if let Some(r) = last_reload {
                @if r["kind"] == "policy_reload_failed" {
                    p.error role="alert" { "Last reload failed (" (r["ts"].as_str().unwrap_or("")) "): " (r["details"]["error"].as_str().unwrap_or("")) " — the previous set keeps serving." }
                } @else {
                    p.verified { "Last load: " (r["ts"].as_str().unwrap_or("")) " (" (r["details"]["trigger"].as_str().unwrap_or("")) "), version " code { (r["details"]["version"].as_str().unwrap_or("")) } }
                }
            }
            section {
                h2 { "Simulator" }
                p.muted { "Decides an action as a check would, with the same computed context, without creating a request or writing to the audit log." }
                form.card method="post" action="/policy/simulate" {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    label for="principal" { "Principal" }
                    @if own_principal_only {
                        input #principal name="principal" value=(viewer.user) required readonly;
                    } @else {
                        input #principal name="principal" value=(form.principal) required;
                    }
                    label for="action" { "Action" }
                    input #action name="action" value=(form.action) required placeholder="export";
                    label for="resource" { "Resource (Type:id)" }
                    input #resource name="resource" value=(form.resource) required placeholder="Table:prod.orders";
                    label for="params" { "Params (JSON object)" }
                    textarea #params name="params" rows="3" placeholder="{\"sql\": \"select …\"}" { (form.params) }
                    label for="context" { "Context (JSON object)" }
                    textarea #context name="context" rows="3" placeholder="{\"rows\": 50000}" { (form.context) }
                    button type="submit" { "Decide" }
                }
                @match &answer {
                    None => {},
                    Some(Err(e)) => p.error role="alert" #answer { (e) },
                    Some(Ok(a)) => div #answer role="status" {
                        h3 { "Decision: " span class=(format!("outcome {}", a["decision"].as_str().unwrap_or(""))) { (a["decision"].as_str().unwrap_or("")) } }
                        p { "Decided by: " (a["policies"].as_array().into_iter().flatten().filter_map(|p| p.as_str()).collect::<Vec<_>>().join(", ")) }
                        @if let Some(m) = a["message"].as_str() { p { (m) } }
                        @if a["thresholds"].is_array() {
                            (thresholds(a))
                            p.muted { "Request expires after " (a["request_ttl"].as_str().unwrap_or("")) ", grant after " (a["grant_ttl"].as_str().unwrap_or("")) ", " (a["max_uses"].as_u64().unwrap_or(1)) " use(s)." }
                        }
                    },
                }
            }
            section {
                h2 { "Loaded policies" }
                @for (id, text) in policies {
                    details {
                        summary { code { (id) } }
                        pre { (text) }
                    }
                }
            }
        },
    )
}

/// The overview: the two pictures, of every request for auditors and of
/// the viewer's own otherwise.
pub(crate) fn overview(
    viewer: &Viewer<'_>,
    everyone: bool,
    per_day: Markup,
    ttd: Markup,
    decided: usize,
) -> Markup {
    layout(
        "Overview",
        Some(viewer),
        html! {
            h1 { "Overview" }
            @if !everyone {
                p.muted { "Your own requests. Figures across everyone's are for auditors." }
            }
            section { h2 { "Requests per day" } (per_day) }
            section { h2 { "Time to decision" } p.muted { (decided) " decided requests" } (ttd) }
        },
    )
}

/// Notifications that failed for good, with a retry button each, and how
/// many still wait.
pub(crate) fn notifications(
    viewer: &Viewer<'_>,
    failed: &[airlock_store::OutboxMessage],
    waiting: usize,
) -> Markup {
    layout(
        "Notifications",
        Some(viewer),
        html! {
            h1 { "Notifications" }
            p.muted { (waiting) " waiting to be sent." }
            h2 { "Failed" }
            @if failed.is_empty() {
                p.verified { "Nothing failed." }
            } @else {
                div.scroll {
                    table {
                        thead { tr { th { "Message" } th { "Event" } th { "To" } th { "Attempts" } th { "Last error" } th {} } }
                        tbody {
                            @for m in failed {
                                tr {
                                    td { code { (m.id) } }
                                    td { (m.event) }
                                    td { code { (m.target) } }
                                    td { (m.attempts) }
                                    td { (untrusted(m.last_error.as_deref().unwrap_or(""))) }
                                    td {
                                        form method="post" action=(format!("/notifications/{}/retry", m.id)) {
                                            input type="hidden" name="csrf" value=(viewer.csrf);
                                            button type="submit" { "Retry" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hidden_characters_are_marked_and_shown() {
        let html = untrusted("report\u{202e}fdp.exe").into_string();
        assert!(!html.contains('\u{202e}'), "{html}");
        assert!(
            html.starts_with("<mark class=\"suspicious\" title=\"Contains hidden"),
            "{html}"
        );
        assert!(
            html.contains("report<span class=\"hidden-char\">\\u{202e}</span>fdp.exe"),
            "{html}"
        );
        let html = untrusted("\u{1b}[31mred\u{200b}\r").into_string();
        assert!(!html.contains('\u{1b}') && !html.contains('\u{200b}') && !html.contains('\r'));
        assert!(html.contains("\\u{1b}</span>[31mred"), "{html}");
        // Ordinary text, newlines included, is only escaped.
        assert_eq!(untrusted("a <b> & c").into_string(), "a &lt;b&gt; &amp; c");
        assert_eq!(untrusted("two\nlines").into_string(), "two\nlines");
    }

    #[test]
    fn hidden_characters_in_json_are_marked_and_escaped() {
        let html = untrusted_json(&json!({"file": "report\u{202e}fdp.exe"})).into_string();
        assert!(html.starts_with("<div class=\"suspicious\""), "{html}");
        assert!(
            html.contains("report\\u202efdp.exe") && !html.contains('\u{202e}'),
            "{html}"
        );
        let html = untrusted_json(&json!({"k\u{2066}": 1})).into_string();
        assert!(
            html.contains("suspicious") && html.contains("k\\u2066"),
            "{html}"
        );
        let html = untrusted_json(&json!({"sql": "select\n1"})).into_string();
        assert!(!html.contains("suspicious"), "{html}");
        let html = untrusted_json_line(&json!({"reason": "\u{200f}x"})).into_string();
        assert!(
            html.contains("<mark class=\"suspicious\"") && html.contains("\\u200fx"),
            "{html}"
        );
    }
}
