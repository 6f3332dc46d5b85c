//! The console's HTML, rendered on the server with maud (every value is
//! escaped; nothing is built by string concatenation).

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
pub(crate) fn login(csrf: &str, error: Option<&str>) -> Markup {
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
pub(crate) fn inbox_rows(requests: &[Value], now: DateTime<Utc>) -> Markup {
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
                            " " code { (resource(r)) }
                        }
                        @if let Some(reason) = r["reason"].as_str() {
                            p.reason { "“" (reason) "”" }
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
pub(crate) fn inbox(viewer: &Viewer<'_>, requests: &[Value], now: DateTime<Utc>) -> Markup {
    layout(
        "Inbox",
        Some(viewer),
        html! {
            h1 { "Waiting for your review" }
            div #live data-live="/inbox/rows" aria-live="polite" { (inbox_rows(requests, now)) }
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
                                    (r["action"].as_str().unwrap_or("")) " " code { (resource(r)) }
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

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
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
                (r["action"].as_str().unwrap_or("")) " " code { (resource(r)) }
            }
            p { span class=(format!("status {}", r["status"].as_str().unwrap_or(""))) { (r["status"].as_str().unwrap_or("")) }
                " · " (time_left(r["expires_at"].as_str().unwrap_or(""), now)) " · " code.muted { (id) } }
            @if let Some(reason) = r["reason"].as_str() { p.reason { "Reason: “" (reason) "”" } }
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
                    dt { "Resource" } dd { code { (resource(r)) } }
                    dt { "Fingerprint" } dd { code { (r["fingerprint"].as_str().unwrap_or("")) } }
                }
                h3 { "Params" }
                pre { (pretty(&r["params"])) }
                h3 { "Resource attributes" }
                pre { (pretty(attrs)) }
                h3 { "Context" }
                pre { (pretty(&r["context"])) }
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
                            @if let Some(why) = rv["reason"].as_str() { ": “" (why) "”" }
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
                        }
                    }
                }
            }
            div #live data-live=(format!("/requests/{id}/status")) data-reload="1" hidden { (r["status"].as_str().unwrap_or("")) }
        },
    )
}
