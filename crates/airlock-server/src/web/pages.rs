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
    /// A member of `[web] auditor_groups`: sees every request, the audit
    /// log and the notifications; others are not shown links they could
    /// not open.
    pub(crate) auditor: bool,
    /// A member of `[breakglass] groups`: offered the break-glass page.
    pub(crate) breakglass: bool,
}

/// The navigation: (path, label, for auditors only); "Break glass" is
/// added for those who may.
const NAV: [(&str, &str, bool); 7] = [
    ("/inbox", "Inbox", false),
    ("/mine", "My requests", false),
    ("/overview", "Overview", false),
    ("/policy", "Policies", false),
    ("/audit", "Audit", true),
    ("/notifications", "Notifications", true),
    ("/account", "Account", false),
];

/// The page frame: skip link, header, navigation (the current page
/// marked), sign-out form.
pub(crate) fn layout(title: &str, viewer: Option<&Viewer<'_>>, body: Markup) -> Markup {
    // Titles begin with the page's name ("(3) Inbox", "Audit log").
    let name =
        title.trim_start_matches(|c: char| c == '(' || c == ')' || c.is_ascii_digit() || c == ' ');
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · Airlock" }
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    a.brand href="/" { "Airlock" }
                    @if let Some(v) = viewer {
                        nav aria-label="Main" {
                            @for (path, label, auditors) in NAV {
                                @if !auditors || v.auditor {
                                    @if name.starts_with(label) {
                                        a href=(path) aria-current="page" { (label) }
                                    } @else {
                                        a href=(path) { (label) }
                                    }
                                }
                            }
                            @if v.breakglass {
                                @if name.starts_with("Break glass") {
                                    a.breakglass href="/breakglass" aria-current="page" { "Break glass" }
                                } @else {
                                    a.breakglass href="/breakglass" { "Break glass" }
                                }
                            }
                        }
                        form.signout method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(v.csrf);
                            span.who { (v.user) }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main tabindex="-1" { (body) }
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
pub(crate) fn is_marked(c: char) -> bool {
    display::is_hidden(c) && !matches!(c, '\n' | '\t')
}

fn json_marked(v: &Value) -> bool {
    match v {
        Value::String(s) => s.chars().any(is_marked),
        Value::Array(a) => a.iter().any(json_marked),
        Value::Object(o) => o
            .iter()
            .any(|(k, v)| k.chars().any(is_marked) || json_marked(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Text a requester or reviewer wrote. Escaped by maud like everything,
/// and, if it holds characters that hide themselves or reorder the text
/// around them (a right-to-left override makes `report`+RLO+`fdp.exe` read
/// "reportexe.pdf"), marked, with each such character shown as its escape.
pub(crate) fn untrusted(s: &str) -> Markup {
    html! {
        @if s.chars().any(is_marked) {
            mark.suspicious title=(HIDDEN_TITLE) {
                @for p in display::pieces(s) {
                    @match p {
                        Piece::Text(t) => (t),
                        Piece::Hidden(c) if !is_marked(c) => (c),
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

/// JSON on one line, hidden characters as escapes.
pub(crate) fn compact(v: &Value) -> String {
    display::json_compact(v)
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

/// What an approver is told about a resource id that mixes scripts.
const MIXED_TITLE: &str = "Mixes letters of scripts that look alike (shown as \\u{…}): \
     it names another resource than the one it may look like";

/// A request's resource as [`resource`] writes it, marked when its id
/// mixes look-alike letters of another script into a Latin word.
pub(crate) fn resource_marked(v: &Value) -> Markup {
    let id = v["resource"]["id"].as_str().unwrap_or("");
    let label = resource(v);
    html! {
        @if matches!(display::mixed_scripts_shown(id), std::borrow::Cow::Owned(_)) {
            mark.suspicious title=(MIXED_TITLE) { (untrusted(&label)) }
        } @else {
            (untrusted(&label))
        }
    }
}

pub(crate) fn resource(v: &Value) -> String {
    display::resource_label(
        v["resource"]["type"].as_str().unwrap_or(""),
        v["resource"]["id"].as_str().unwrap_or(""),
    )
}

/// A time as a `<time>` element: UTC in the text, the browser's local time
/// once the script runs.
pub(crate) fn time(at: &str) -> Markup {
    html! { time datetime=(at) data-local="1" { (at.replace('T', " ").trim_end_matches('Z')) " UTC" } }
}

/// Time left until `expires`, ticking in the browser.
fn countdown(expires: &str, now: DateTime<Utc>) -> Markup {
    html! { time.countdown datetime=(expires) data-countdown="1" { (time_left(expires, now)) } }
}

/// Thresholds that cannot be met: fewer people may approve than the
/// quorum asks. Such a request waits until it expires unless an admin adds
/// approvers, so it is flagged wherever it is shown.
pub(crate) fn unmeetable(r: &Value) -> Vec<String> {
    r["thresholds"]
        .as_array()
        .into_iter()
        .flatten()
        // The API's one rule for it; a threshold that does not read back
        // is flagged rather than passed over.
        .filter(|t| {
            serde_json::from_value::<airlock_api::ThresholdView>((*t).clone())
                .map_or(true, |t| !t.can_be_met())
        })
        .map(|t| {
            let groups = names(&t["groups"], " or ");
            let n = t["eligible"].as_array().map_or(0, Vec::len);
            let q = t["quorum"].as_u64().unwrap_or(1);
            format!("{groups} needs {q} approval(s) but has {n} member(s) who may give one")
        })
        .collect()
}

fn names(v: &Value, sep: &str) -> String {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g.as_str())
        .collect::<Vec<_>>()
        .join(sep)
}

/// The inbox's filters, as typed.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub(crate) struct InboxQuery {
    /// A page cursor.
    #[serde(default)]
    pub(crate) after: Option<String>,
    /// `waiting` (default), `reviewed` (by me) or `decided`.
    #[serde(default)]
    pub(crate) show: String,
    #[serde(default)]
    pub(crate) requester: String,
    #[serde(default)]
    pub(crate) action: String,
    #[serde(default)]
    pub(crate) resource: String,
    #[serde(default)]
    pub(crate) group: String,
}

impl InboxQuery {
    /// Whether `r` passes the typed filters (requester, action, resource
    /// part, approver group).
    pub(crate) fn keeps(&self, r: &Value) -> bool {
        fn typed(s: &str) -> Option<&str> {
            Some(s.trim()).filter(|s| !s.is_empty())
        }
        typed(&self.requester).is_none_or(|u| r["principal"] == u)
            && typed(&self.action).is_none_or(|a| r["action"] == a)
            && typed(&self.resource).is_none_or(|x| resource(r).contains(x))
            && typed(&self.group).is_none_or(|g| {
                r["thresholds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|t| t["groups"].as_array().into_iter().flatten().any(|n| n == g))
            })
    }

    /// The filters as a query string (without the cursor).
    pub(crate) fn query_string(&self) -> String {
        [
            ("show", &self.show),
            ("requester", &self.requester),
            ("action", &self.action),
            ("resource", &self.resource),
            ("group", &self.group),
        ]
        .iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| format!("{k}={}", url_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
    }
}

/// One inbox card as the viewer sees it: the request, its one-line facts,
/// and whether the viewer already reviewed it.
pub(crate) struct Card {
    pub(crate) request: Value,
    pub(crate) facts: String,
    pub(crate) reviewed_by_me: Option<String>,
}

/// "security 1/2" for each threshold, met ones marked.
fn thresholds(v: &Value) -> Markup {
    html! {
        ul.thresholds {
            @for t in v["thresholds"].as_array().into_iter().flatten() {
                @let groups = names(&t["groups"], " or ");
                @let eligible = names(&t["eligible"], ", ");
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

/// The rows of the inbox, with the count the tab title shows.
pub(crate) fn inbox_rows(
    cards: &[Card],
    q: &InboxQuery,
    next: Option<&str>,
    now: DateTime<Utc>,
) -> Markup {
    let waiting = waiting_for_me(cards);
    html! {
        div.rows data-count=(waiting) {
            @if cards.is_empty() {
                p.empty { "Nothing waits for you." }
            } @else {
                ul.requests {
                    @for c in cards {
                        @let r = &c.request;
                        @let id = r["id"].as_str().unwrap_or("");
                        @let status = r["status"].as_str().unwrap_or("");
                        li.request data-href=(format!("/requests/{id}")) {
                            @if r["review_required"] == true { p.flag { "🚨 Break-glass: review after the fact" } }
                            a.title href=(format!("/requests/{id}")) {
                                strong { (r["principal"].as_str().unwrap_or("")) }
                                " wants to " strong { (r["action"].as_str().unwrap_or("")) }
                                " " code { (untrusted(&resource(r))) }
                            }
                            @if !c.facts.is_empty() { p.facts { (untrusted(&c.facts)) } }
                            @if let Some(reason) = r["reason"].as_str() {
                                p.reason { "“" (untrusted(reason)) "”" }
                            }
                            (thresholds(r))
                            p.meta {
                                @if status == "pending" { (countdown(r["expires_at"].as_str().unwrap_or(""), now)) }
                                @else { span class=(format!("status {status}")) { (status) } }
                                @if let Some(v) = &c.reviewed_by_me { " · " span.mine { "you " (v) } }
                                @if status == "pending" && !unmeetable(r).is_empty() {
                                    " · " strong.flag { "⚠ nobody can approve this" }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(next) = next {
                p.more { a href=(format!("/inbox?after={next}&{}", q.query_string())) { "Older requests →" } }
            }
        }
    }
}

/// Cards that wait for the viewer: pending ones and break-glass uses to
/// review after the fact, not yet reviewed by them.
fn waiting_for_me(cards: &[Card]) -> usize {
    cards
        .iter()
        .filter(|c| {
            (c.request["status"] == "pending" || c.request["review_required"] == true)
                && c.reviewed_by_me.is_none()
        })
        .count()
}

/// The inbox: filters, then cards sorted by time left, refreshed live.
pub(crate) fn inbox(
    viewer: &Viewer<'_>,
    cards: &[Card],
    q: &InboxQuery,
    next: Option<&str>,
    now: DateTime<Utc>,
) -> Markup {
    let qs = q.query_string();
    let live = match q.after.as_deref() {
        Some(a) => format!("/inbox/rows?after={a}&{qs}"),
        None => format!("/inbox/rows?{qs}"),
    };
    let waiting = waiting_for_me(cards);
    let title = if waiting > 0 {
        format!("({waiting}) Inbox")
    } else {
        "Inbox".to_owned()
    };
    let heading = match q.show.as_str() {
        "reviewed" => "Reviewed by you",
        "decided" => "Decided",
        _ if viewer.auditor => "Every pending request",
        _ => "Waiting for your review",
    };
    layout(
        &title,
        Some(viewer),
        html! {
            h1 { (heading) }
            form.filters method="get" action="/inbox" role="search" aria-label="Filter requests" {
                label { "Show "
                    select name="show" {
                        option value="" selected[q.show.is_empty()] { "Waiting" }
                        option value="reviewed" selected[q.show == "reviewed"] { "Reviewed by me" }
                        option value="decided" selected[q.show == "decided"] { "Decided" }
                    }
                }
                label { "Requester " input name="requester" value=(q.requester) size="10"; }
                label { "Action " input name="action" value=(q.action) size="10"; }
                label { "Resource " input name="resource" value=(q.resource) size="14"; }
                label { "Group " input name="group" value=(q.group) size="10"; }
                button type="submit" { "Filter" }
            }
            p.muted.keys { "Keys: " kbd { "j" } "/" kbd { "k" } " move, " kbd { "Enter" } " opens; on a request " kbd { "a" } " approves, " kbd { "d" } " denies (each asks first)." }
            @if q.after.is_some() { p { a href="/inbox" { "← Newest" } } }
            div #live data-live=(live) aria-live="polite" { (inbox_rows(cards, q, next, now)) }
        },
    )
}

/// The rows of "my requests".
pub(crate) fn mine_rows(requests: &[Value], now: DateTime<Utc>) -> Markup {
    html! {
        @if requests.is_empty() {
            p.empty { "You have asked for nothing yet." }
        } @else {
            div.scroll {
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
}

fn grant_state(r: &Value, now: DateTime<Utc>) -> Markup {
    let g = &r["grant"];
    html! {
        @if g.is_object() {
            @let (uses, max) = (g["uses"].as_u64().unwrap_or(0), g["max_uses"].as_u64().unwrap_or(1));
            @if g["revoked"].as_bool() == Some(true) { "revoked" }
            @else if uses >= max { "used " (uses) "/" (max) @if let Some(o) = g["outcome"].as_str() { " · " (o) } }
            @else { "ready, " (uses) "/" (max) " used · " (countdown(g["expires_at"].as_str().unwrap_or(""), now)) }
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

/// A verdict as done: `approved`, `denied`.
pub(crate) fn past(verdict: &str) -> &str {
    match verdict {
        "approve" => "approved",
        "deny" => "denied",
        other => other,
    }
}

/// "one use" or "3 uses".
fn uses(n: u64) -> String {
    if n == 1 {
        "one use".into()
    } else {
        format!("{n} uses")
    }
}

/// What approving does, said at the button: "Approve → 1 of 2 from
/// security; when all are met alice gets one use, valid 10m".
pub(crate) fn consequence(r: &Value, me: &str) -> String {
    if r["breakglass"] == true {
        let n = r["reviews"].as_array().map_or(0, Vec::len);
        return format!(
            "Approve → confirms this break-glass use was justified ({} of 2 reviews after the fact); Deny flags it{}",
            (n + 1).min(2),
            if r["status"] == "approved" { " and revokes its grant now" } else { "" }
        );
    }
    let ts: Vec<&Value> = r["thresholds"].as_array().into_iter().flatten().collect();
    let mine: Vec<String> = ts
        .iter()
        .filter(|t| {
            t["eligible"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|u| u == me)
        })
        .map(|t| {
            let (n, q) = (
                t["approvals"].as_u64().unwrap_or(0),
                t["quorum"].as_u64().unwrap_or(1),
            );
            format!(
                "{} of {q} from {}",
                (n + 1).min(q),
                names(&t["groups"], " or ")
            )
        })
        .collect();
    let all_met_after = ts.iter().all(|t| {
        let (n, q) = (
            t["approvals"].as_u64().unwrap_or(0),
            t["quorum"].as_u64().unwrap_or(1),
        );
        let counts = t["eligible"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|u| u == me);
        n + u64::from(counts) >= q
    });
    let who = r["principal"].as_str().unwrap_or("");
    let grant = format!(
        "{who} gets {}, valid {}",
        uses(r["max_uses"].as_u64().unwrap_or(1)),
        r["grant_ttl"].as_str().unwrap_or("")
    );
    let then = if all_met_after {
        format!("that meets every threshold: {grant}, at once")
    } else {
        format!("when all are met {grant}")
    };
    let step_up = match r["step_up"].as_str() {
        Some("totp") => " (needs a code from your authenticator)",
        Some("webauthn") => " (needs your security key)",
        _ => "",
    };
    format!("Approve → {}; {then}{step_up}", mine.join(", "))
}

/// Each approver's state: who approved or denied (when, where, why) and
/// who may still.
fn approver_states(r: &Value) -> Markup {
    let reviews: Vec<&Value> = r["reviews"].as_array().into_iter().flatten().collect();
    let mut eligible: Vec<&str> = r["thresholds"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["eligible"].as_array().into_iter().flatten())
        .filter_map(|u| u.as_str())
        .collect();
    eligible.sort_unstable();
    eligible.dedup();
    let pending = r["status"] == "pending";
    html! {
        ul.approvers {
            @for rv in &reviews {
                li class=(rv["verdict"].as_str().unwrap_or("")) {
                    strong { (rv["reviewer"].as_str().unwrap_or("")) } " "
                    (past(rv["verdict"].as_str().unwrap_or(""))) " via " (rv["channel"].as_str().unwrap_or(""))
                    " at " (time(rv["at"].as_str().unwrap_or("")))
                    @if let Some(why) = rv["reason"].as_str() { ": “" (untrusted(why)) "”" }
                }
            }
            @for u in eligible.iter().filter(|u| !reviews.iter().any(|rv| rv["reviewer"] == **u)) {
                li.waiting { strong { (u) } @if pending { " has not reviewed yet" } @else { " did not review" } }
            }
        }
    }
}

/// The outcome of a decided request in words.
fn outcome(r: &Value) -> Markup {
    let status = r["status"].as_str().unwrap_or("");
    let denial = r["reviews"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|rv| rv["verdict"] == "deny");
    html! {
        @match status {
            "approved" => { "Approved. " (grant_words(r)) },
            "consumed" | "completed" => { "Approved and used. " (grant_words(r)) },
            "denied" => {
                "Denied"
                @if let Some(d) = denial {
                    " by " (d["reviewer"].as_str().unwrap_or(""))
                    @if let Some(why) = d["reason"].as_str() { ": “" (untrusted(why)) "”" }
                }
                "."
            },
            "expired" => { "Expired: nobody decided in time, or the grant was not used in time." },
            "cancelled" => { "Cancelled by the requester." },
            "revoked" => { "Revoked: the grant can no longer be used." },
            _ => { (status) },
        }
    }
}

fn grant_words(r: &Value) -> Markup {
    let g = &r["grant"];
    html! {
        @if g.is_object() {
            "Grant: " (g["uses"].as_u64().unwrap_or(0)) " of " (g["max_uses"].as_u64().unwrap_or(1)) " use(s) spent"
            @if let Some(o) = g["outcome"].as_str() { ", outcome " (o) }
            @if g["revoked"].as_bool() == Some(true) { ", revoked" }
            ", valid until " (time(g["expires_at"].as_str().unwrap_or(""))) "."
        }
    }
}

/// The part of a request page that changes while it is open: status,
/// thresholds, each approver's state, the grant. Replaced in place, so a
/// reason being typed and the keyboard focus (both outside it) survive.
pub(crate) fn request_state(r: &Value, now: DateTime<Utc>) -> Markup {
    let status = r["status"].as_str().unwrap_or("");
    let reviewers: Vec<&str> = r["reviews"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|rv| rv["reviewer"].as_str())
        .collect();
    html! {
        div.state data-status=(status) data-reviewers=(reviewers.join(" ")) {
            p.statusline {
                span class=(format!("status {status}")) { (status) }
                @if status == "pending" {
                    " · " (countdown(r["expires_at"].as_str().unwrap_or(""), now)) " to decide"
                } @else {
                    " · " (outcome(r))
                }
            }
            (thresholds(r))
            (approver_states(r))
        }
    }
}

/// Everything an approver needs to judge one request, risk first: the
/// action as a person reads it, the facts policy used and the limits they
/// crossed, the masked preview; then the thresholds and the buttons with
/// what pressing them does; then the raw params and the history.
#[allow(clippy::too_many_arguments)]
pub(crate) fn request(
    viewer: &Viewer<'_>,
    r: &Value,
    attrs: &Value,
    facts: &[super::show::Fact],
    preview_checked: bool,
    history: &[Value],
    may: Allowed,
    done: Option<Done<'_>>,
    now: DateTime<Utc>,
) -> Markup {
    let id = r["id"].as_str().unwrap_or("");
    let status = r["status"].as_str().unwrap_or("");
    let blocked = unmeetable(r);
    layout(
        &format!("Request {id}"),
        Some(viewer),
        html! {
            @if let Some(d) = &done {
                div.done role="status" {
                    p { strong { "You " (past(d.verdict)) " this request." } " " (d.what_next) }
                    p {
                        @if let Some(next) = d.next { a.next href=(format!("/requests/{next}")) { "Next request waiting for you →" } }
                        @else { "Nothing else waits for you. " a href="/inbox" { "Back to the inbox" } }
                    }
                }
            }
            h1 {
                (r["principal"].as_str().unwrap_or("")) " wants to "
                (r["action"].as_str().unwrap_or("")) " " code { (untrusted(&resource(r))) }
            }
            @if let Some(reason) = r["reason"].as_str() { p.reason { "Reason given: “" (untrusted(reason)) "”" } }
            @if r["breakglass"] == true {
                div.error role="alert" {
                    p { "🚨 Break-glass: " (r["principal"].as_str().unwrap_or("")) " took this grant at once, without approval." }
                    @if r["review_required"] == true {
                        p { "It needs two reviews after the fact (" (r["reviews"].as_array().map_or(0, Vec::len)) " so far): say whether it was justified." }
                    }
                }
            }
            @if status == "pending" && !blocked.is_empty() {
                div.error role="alert" {
                    p { "⚠ Nobody can approve this request as things stand: " (blocked.join("; ")) "." }
                    p { "An admin must add approvers to the group or change the policy; otherwise it expires." }
                }
            }
            section.risk aria-labelledby="what" {
                h2 #what { "What would happen" }
                (super::show::action(r))
                h2 { "What policy looked at" }
                (super::show::facts_list(facts))
                @if let Some(p) = super::show::preview(r) {
                    @if preview_checked {
                        h2 { "Masked preview of what would leave" }
                        p.muted { "The first rows as the enforcement point saw them, with personal data and secrets masked." }
                    } @else {
                        h2 { "Preview stated by the caller" }
                        p.error { "Not checked: `preview` is not a trusted fact ([policy] trusted_context), so the caller could have written anything here." }
                    }
                    (p)
                }
            }
            section aria-labelledby="approvals" {
                h2 #approvals { "Approvals" }
                div #state data-live=(format!("/requests/{id}/state")) aria-live="polite" { (request_state(r, now)) }
            }
            @if may.review {
                section.review #review {
                    h2 { "Your review" }
                    form #review-form method="post" action=(format!("/requests/{id}/review"))
                        data-webauthn=[(r["step_up"] == "webauthn").then_some(format!("/requests/{id}/webauthn"))] {
                        input type="hidden" name="csrf" value=(viewer.csrf);
                        @if r["step_up"] == "webauthn" {
                            input type="hidden" name="webauthn" value="";
                            input type="hidden" name="webauthn_state" value="";
                            p.muted { "Approving asks for your security key (" a href="/account" { "register one" } " if you have not)." }
                            p.error.webauthn-error role="alert" hidden {}
                        }
                        p.consequence #consequence { (consequence(r, viewer.user)) }
                        label for="reason" { "Reason (required to deny)" }
                        textarea id="reason" name="reason" rows="3" maxlength="2000" {}
                        @if r["step_up"] == "totp" {
                            label for="totp" { "Code from your authenticator (approving needs step-up; " a href="/account" { "enrol" } " if you have not)" }
                            input #totp name="totp" inputmode="numeric" autocomplete="one-time-code" maxlength="6";
                            p.error #totp-needed role="alert" hidden { "Enter the current code from your authenticator to approve." }
                        }
                        p.error #reason-needed role="alert" hidden { "Say why you deny: the requester reads it." }
                        div.buttons {
                            button.approve type="submit" name="verdict" value="approve" aria-describedby="consequence" { "Approve" }
                            button.deny type="submit" name="verdict" value="deny" { "Deny" }
                        }
                        p.muted.decided-note hidden { "This request was decided while the page was open; your review was not sent." }
                    }
                }
            }
            @if may.revoke {
                section.revoke {
                    h2 { "Revoke" }
                    form method="post" action=(format!("/requests/{id}/revoke")) {
                        input type="hidden" name="csrf" value=(viewer.csrf);
                        p.muted { "Revoking ends the grant now: no use left is accepted, on any node." }
                        label for="revoke-reason" { "Reason" }
                        input #revoke-reason name="reason" maxlength="2000";
                        div.buttons { button.deny type="submit" { "Revoke" } }
                    }
                }
            }
            details.raw {
                summary { "Params, attributes and context as sent" }
                dl {
                    dt { "Fingerprint" } dd { code { (r["fingerprint"].as_str().unwrap_or("")) } }
                    dt { "Request" } dd { code { (id) } }
                    dt { "Asked" } dd { (time(r["created_at"].as_str().unwrap_or(""))) }
                    dt { "Policies" } dd { (names(&r["policies"], ", ")) }
                }
                h3 { "Params" }
                (untrusted_json(&r["params"]))
                h3 { "Resource attributes" }
                (untrusted_json(attrs))
                h3 { "Context" }
                (untrusted_json(&r["context"]))
            }
            section {
                h2 { "History" }
                ol.history {
                    @for h in history {
                        li {
                            code { "#" (h["seq"].as_i64().unwrap_or(0)) } " " (time(h["ts"].as_str().unwrap_or(""))) " "
                            strong { (h["kind"].as_str().unwrap_or("")) } " by " (h["actor"].as_str().unwrap_or(""))
                            @if let Some(to) = h["details"]["to"].as_str() { " → " (to) }
                            // Every description of the action that led here,
                            // so a raised requirement shows what raised it.
                            @if h["kind"] == "decision" && h["details"]["context"].is_object() {
                                details { summary { "context" } (untrusted_json(&h["details"]["context"])) }
                            }
                            @if h["kind"] == "requirement_raised" {
                                " — now needs: " (h["details"]["thresholds"].as_array().into_iter().flatten().map(|t| format!("{} × {}", t["quorum"], names(&t["groups"], "/"))).collect::<Vec<_>>().join(", "))
                            }
                        }
                    }
                }
            }
        },
    )
}

/// What the viewer may do on a request page.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Allowed {
    pub(crate) review: bool,
    pub(crate) revoke: bool,
}

/// The confirmation after a review.
pub(crate) struct Done<'a> {
    pub(crate) verdict: &'a str,
    pub(crate) what_next: String,
    pub(crate) next: Option<&'a str>,
}

/// The account page: TOTP enrolment, and the QR code of a new one (shown
/// once, right after enrolling).
pub(crate) fn account(
    viewer: &Viewer<'_>,
    enrolled: bool,
    security_key: bool,
    new: Option<(&str, &str)>,
) -> Markup {
    layout(
        "Account",
        Some(viewer),
        html! {
            h1 { "Account" }
            section {
                h2 { "Step-up: authenticator app (TOTP)" }
                p { "Approvals whose policy asks for step-up need a current six-digit code from your authenticator app as well as your session." }
                @if let Some((uri, svg)) = new {
                    div.done role="status" {
                        p { strong { "Enrolled." } " Scan this code with your authenticator app now: it is shown only once." }
                        div.qr { (maud::PreEscaped(svg)) }
                        details { summary { "Or enter the key by hand" } p { code { (uri) } } }
                    }
                } @else if enrolled {
                    p.verified { "An authenticator is enrolled." }
                } @else {
                    p.error { "No authenticator is enrolled: you cannot approve requests that ask for step-up until you enrol one." }
                }
                form.card method="post" action="/account/totp" {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    @if enrolled && new.is_none() {
                        label for="code" { "A current code from the authenticator you have now (to replace it)" }
                        input #code name="code" inputmode="numeric" autocomplete="one-time-code" maxlength="6" required;
                        button type="submit" { "Replace my authenticator" }
                    } @else if new.is_none() {
                        button type="submit" { "Enrol an authenticator" }
                    }
                }
            }
            section {
                h2 { "Step-up: security key or passkey (WebAuthn)" }
                p { "Approvals whose policy asks for WebAuthn are made here in the console, with a touch of your security key." }
                @if security_key {
                    p.verified #webauthn-status { "A security key is registered." }
                } @else {
                    p.error #webauthn-status { "No security key is registered." }
                }
                form #webauthn-register method="post" action="/account/webauthn/finish" {
                    input type="hidden" name="csrf" value=(viewer.csrf);
                    input type="hidden" name="credential" value="";
                    input type="hidden" name="state" value="";
                    button type="submit" { "Register a security key" }
                    p.error.webauthn-error role="alert" hidden {}
                }
            }
        },
    )
}

/// The break-glass form, as typed.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub(crate) struct BreakglassForm {
    #[serde(default)]
    pub(crate) csrf: String,
    #[serde(default)]
    pub(crate) action: String,
    #[serde(default)]
    pub(crate) resource: String,
    #[serde(default)]
    pub(crate) params: String,
    #[serde(default)]
    pub(crate) reason: String,
}

/// The break-glass page: what it does, in plain words, and the form.
pub(crate) fn breakglass(
    viewer: &Viewer<'_>,
    form: &BreakglassForm,
    error: Option<&str>,
) -> Markup {
    layout(
        "Break glass",
        Some(viewer),
        html! {
            h1 { "Break glass" }
            p { "For an emergency that cannot wait for approval: you get a grant for exactly this action at once. Every channel is alerted now, the audit log records it at high severity, and two other people must review it afterwards. Policy still decides: what it forbids stays closed." }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form.card method="post" action="/breakglass" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                label for="bg-action" { "Action" }
                input #bg-action name="action" value=(form.action) required placeholder="export";
                label for="bg-resource" { "Resource (Type:id)" }
                input #bg-resource name="resource" value=(form.resource) required placeholder="Table:prod.orders";
                label for="bg-params" { "Params (JSON object, optional)" }
                textarea #bg-params name="params" rows="2" { (form.params) }
                label for="bg-reason" { "Why this cannot wait (required)" }
                textarea #bg-reason name="reason" rows="3" maxlength="2000" required { (form.reason) }
                div.buttons { button.deny type="submit" { "Break glass" } }
            }
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
                    @for k in airlock_core::AuditKind::ALL {
                        option value=(k.as_str()) {}
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
                                // Actor and subject can be typed by anyone
                                // (a failed sign-in's user name): marked.
                                td { (untrusted(r["actor"].as_str().unwrap_or(""))) }
                                td {
                                    @let subject = r["subject"].as_str().unwrap_or("");
                                    @if subject.starts_with("req_") { a href=(format!("/requests/{subject}")) { code { (untrusted(subject)) } } }
                                    @else { code { (untrusted(subject)) } }
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

    /// An id that begins or ends with a space is quoted, so it does not
    /// read as the id without.
    #[test]
    fn a_padded_resource_id_is_quoted() {
        let r = |id: &str| resource(&json!({"resource": {"type": "Table", "id": id}}));
        assert_eq!(r("prod.customers"), "Table:prod.customers");
        assert_eq!(r("prod.customers "), "Table:\"prod.customers \"");
        assert_eq!(r(" x"), "Table:\" x\"");
    }

    #[test]
    fn a_resource_id_mixing_look_alike_scripts_is_marked() {
        let r = |id: &str| {
            resource_marked(&json!({"resource": {"type": "Table", "id": id}})).into_string()
        };
        let html = r("prod.cust\u{43e}mers");
        assert!(html.contains("Mixes letters"), "{html}");
        assert!(html.contains("cust\\u{43e}mers"), "{html}");
        assert!(!r("prod.customers").contains("<mark"));
    }

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
