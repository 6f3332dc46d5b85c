//! Discord messages: content with Approve/Deny components while pending,
//! and `allowed_mentions` naming only whom Airlock itself mentions.
//! Everything a requester or reviewer wrote is escaped or set in code, so
//! it shows as written and cannot mention, link or format.

use airlock_core::display::{json_compact, truncate, visible};
use serde_json::{json, Value};

/// Longest untrusted value (in characters, escaped) in a message; Discord
/// refuses content over 2,000 characters.
pub const MAX_VALUE: usize = 400;
/// Longest review reason shown.
pub const MAX_REVIEW: usize = 150;
/// Discord's limit on a message's content.
pub const MAX_CONTENT: usize = 2000;

/// Untrusted text for Discord markdown: hidden characters shown as
/// escapes, then every ASCII punctuation character backslash-escaped, which
/// Discord shows as the character itself: no formatting, headings, quotes,
/// spoilers, masked links (`[text](url)`), autolinks or mentions
/// (`@everyone`, `<@…>`, `<#…>`, `<@&…>`) can be formed.
pub fn markdown_text(s: &str, max: usize) -> String {
    let shown = visible(s);
    let shown = truncate(&shown, max);
    let mut out = String::with_capacity(shown.len() * 2);
    for c in shown.chars() {
        if c.is_ascii_punctuation() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Untrusted text for inside a code span: hidden characters shown as
/// escapes and backticks, which cannot be escaped inside code, as
/// `\u{60}`, so the value cannot close the span.
pub fn markdown_code(s: &str, max: usize) -> String {
    let escaped = visible(s).replace('`', "\\u{60}");
    truncate(&escaped, max).into_owned()
}

/// Untrusted JSON for inside a code span: hidden characters and backticks
/// as JSON escapes (`\u0060`), so it reads as the same JSON.
pub fn markdown_json(v: &Value, max: usize) -> String {
    let escaped = json_compact(v).replace('`', "\\u0060");
    truncate(&escaped, max).into_owned()
}

/// Who a message may notify: nobody by what it says (`parse` is empty, so
/// an `@everyone` or a mention in a value notifies no one), only the users
/// Airlock named itself.
pub fn allowed_mentions(users: &[String]) -> Value {
    let mut users: Vec<&String> = users.iter().collect();
    users.sort();
    users.dedup();
    // Discord accepts at most 100.
    users.truncate(100);
    json!({"parse": [], "users": users})
}

/// The message text, its components (buttons while pending) and its
/// `allowed_mentions`. Everything a requester or reviewer wrote is escaped
/// or set in code, so it shows as written and cannot mention, link or
/// format.
pub fn render(
    view: &Value,
    ids: &dyn Fn(&str) -> Option<String>,
    link: &str,
) -> (String, Value, Value) {
    let named = std::cell::RefCell::new(Vec::new());
    let who = |u: &str| match ids(u) {
        Some(id) => {
            let mention = format!("<@{id}>");
            named.borrow_mut().push(id);
            mention
        }
        None => markdown_text(u, MAX_VALUE),
    };
    let field = |v: &Value| markdown_text(v.as_str().unwrap_or(""), MAX_VALUE);
    let id = view["id"].as_str().unwrap_or("");
    let status = field(&view["status"]);
    let resource = airlock_core::display::resource_label(
        view["resource"]["type"].as_str().unwrap_or(""),
        view["resource"]["id"].as_str().unwrap_or(""),
    );
    // Break-glass is said first: it was granted without approval.
    let alarm = if view["breakglass"] == true {
        "🚨 **BREAK-GLASS** (granted at once; review it after the fact): "
    } else {
        ""
    };
    let mut lines = vec![
        format!(
            "{alarm}{} wants to **{}** `{}`",
            who(view["principal"].as_str().unwrap_or("")),
            field(&view["action"]),
            markdown_code(&resource, MAX_VALUE),
        ),
        format!(
            "Reason: {}",
            view["reason"]
                .as_str()
                .map_or_else(|| "—".to_owned(), |r| markdown_text(r, MAX_VALUE))
        ),
        format!("Params: `{}`", markdown_json(&view["params"], MAX_VALUE)),
    ];
    for t in view["thresholds"].as_array().into_iter().flatten() {
        let groups: Vec<String> = t["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g.as_str())
            .map(|g| markdown_text(g, MAX_VALUE))
            .collect();
        let eligible: Vec<String> = t["eligible"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u.as_str())
            .map(who)
            .collect();
        lines.push(format!(
            "{} {}/{} — can approve: {}",
            groups.join(" or "),
            t["approvals"].as_u64().unwrap_or(0),
            t["quorum"].as_u64().unwrap_or(1),
            eligible.join(", ")
        ));
    }
    for r in view["reviews"].as_array().into_iter().flatten() {
        lines.push(format!(
            "{} {}{}",
            who(r["reviewer"].as_str().unwrap_or("")),
            field(&r["verdict"]),
            r["reason"]
                .as_str()
                .map(|w| format!(": “{}”", markdown_text(w, MAX_REVIEW)))
                .unwrap_or_default()
        ));
    }
    // A value cut short here is approved only where it is shown whole (a
    // long comment in params pushed the SQL out of the message, and its
    // Approve button still approved it; found by a black-box pass).
    let mut cut = [resource.as_str(), view["reason"].as_str().unwrap_or("")]
        .iter()
        .any(|s| markdown_code(s, MAX_VALUE) != markdown_code(s, usize::MAX))
        || markdown_json(&view["params"], MAX_VALUE) != markdown_json(&view["params"], usize::MAX);
    let last = format!("**Request {status}.** {link}");
    let mut content = lines.join("\n");
    // Keep within Discord's limit, and keep the last line (the state and
    // the link) whole.
    let room = MAX_CONTENT.saturating_sub(last.chars().count() + 2);
    cut |= content.chars().count() > room;
    content = truncate(&content, room).into_owned();
    content.push('\n');
    content.push_str(&last);
    let components = if view["status"] == "pending" {
        // An approval that needs step-up is made in the console, where the
        // code is asked: a link button (style 5) opens it.
        let approve = if view["step_up"].is_string() || cut {
            let why = if cut { "shown whole there" } else { "step-up" };
            json!({"type": 2, "style": 5, "label": format!("Approve in the console ({why})"), "url": link})
        } else {
            json!({"type": 2, "style": 3, "label": "Approve", "custom_id": format!("approve:{id}")})
        };
        json!([{"type": 1, "components": [
            approve,
            {"type": 2, "style": 4, "label": "Deny", "custom_id": format!("deny:{id}")},
        ]}])
    } else {
        json!([])
    };
    let mentions = allowed_mentions(&named.into_inner());
    (content, components, mentions)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_step_up_approval_opens_the_console() {
        let link = "https://airlock.example/requests/req_x";
        let mut view = json!({"id": "req_x", "status": "pending", "principal": "alice", "action": "export",
            "resource": {"type": "Table", "id": "t"}, "thresholds": [], "reviews": []});
        let ids = |_: &str| None;
        let (_, components, _) = render(&view, &ids, link);
        assert_eq!(components[0]["components"][0]["custom_id"], "approve:req_x");
        view["step_up"] = json!("totp");
        let (_, components, _) = render(&view, &ids, link);
        let approve = &components[0]["components"][0];
        assert_eq!(
            (approve["style"].as_u64(), approve["url"].as_str()),
            (Some(5), Some(link))
        );
        assert!(approve.get("custom_id").is_none());
        assert_eq!(components[0]["components"][1]["custom_id"], "deny:req_x");
        // Params cut short: approved only in the console, where they are whole.
        view["step_up"] = Value::Null;
        view["params"] =
            json!({"a_comment": "routine ".repeat(200), "sql": "COPY customers TO PROGRAM 'curl'"});
        let (content, components, _) = render(&view, &ids, link);
        assert!(!content.contains("TO PROGRAM"), "cut: {content}");
        assert_eq!(components[0]["components"][0]["style"], 5);
        let bg = json!({"id": "req_x", "status": "approved", "principal": "oscar", "action": "export",
            "resource": {"type": "Table", "id": "t"}, "thresholds": [], "reviews": [], "breakglass": true});
        let (content, _, _) = render(&bg, &ids, link);
        assert!(content.starts_with("🚨 **BREAK-GLASS**"), "{content}");
    }

    #[test]
    fn what_requesters_and_reviewers_write_is_inert_in_discord() {
        let link = "https://airlock.example/requests/req_x";
        let view = json!({
            "id": "req_x", "status": "pending", "principal": "alice", "action": "export",
            "resource": {"type": "Table", "id": "orders` **approved** `@everyone"},
            "reason": "@everyone @here <@123> <#456> <@&789> [click](http://evil.example) ```\n# Approved\n> by security\u{202e}fdp.exe\u{1b}[31m",
            "params": {"sql": "```@everyone```", "k\u{200b}": "\u{7f}"},
            "thresholds": [{"groups": ["security"], "approvals": 0, "quorum": 2, "eligible": ["bob"]}],
            "reviews": [{"reviewer": "bob", "verdict": "deny", "reason": "||spoiler|| *x* ~~y~~ __z__"}],
        });
        let ids = |u: &str| (u == "bob").then(|| "999".to_owned());
        let (content, _, mentions) = render(&view, &ids, link);
        assert_eq!(mentions, json!({"parse": [], "users": ["999"]}));
        // No hidden characters but the newlines between Airlock's own lines.
        assert!(content
            .chars()
            .filter(|c| airlock_core::display::is_hidden(*c))
            .all(|c| c == '\n'));
        assert_eq!(content.lines().count(), 6, "one line per part: {content}");
        let lines: Vec<&str> = content.lines().collect();
        // The resource and the params stay inside their code spans.
        assert_eq!(lines[0].matches('`').count(), 2, "{}", lines[0]);
        assert!(
            lines[0].ends_with("`Table:orders\\u{60} **approved** \\u{60}@everyone`"),
            "{}",
            lines[0]
        );
        assert_eq!(lines[2].matches('`').count(), 2, "{}", lines[2]);
        assert!(
            lines[2].contains("\\u0060\\u0060\\u0060@everyone"),
            "{}",
            lines[2]
        );
        // The reason: every markdown character escaped, so it shows as typed.
        let reason = lines[1].strip_prefix("Reason: ").unwrap();
        for c in [
            '@', '<', '>', '[', ']', '(', ')', '`', '#', '*', '_', '~', '|',
        ] {
            for (i, _) in reason.match_indices(c) {
                assert_eq!(&reason[i - 1..i], "\\", "{c} escaped in {reason}");
            }
        }
        assert!(
            reason.contains("\\@everyone \\@here \\<\\@123\\> \\<\\#456\\> \\<\\@\\&789\\>"),
            "{reason}"
        );
        assert!(
            reason.contains("\\[click\\]\\(http\\:\\/\\/evil\\.example\\)"),
            "{reason}"
        );
        assert!(
            reason.contains("\\\\u\\{202e\\}fdp\\.exe\\\\u\\{1b\\}\\[31m"),
            "{reason}"
        );
        assert!(
            reason.contains("\\\\n\\# Approved\\\\n\\> by security"),
            "{reason}"
        );
        assert!(
            lines[4].contains("\\|\\|spoiler\\|\\| \\*x\\* \\~\\~y\\~\\~ \\_\\_z\\_\\_"),
            "{}",
            lines[4]
        );
        assert!(lines[3].contains("can approve: <@999>"));
        assert_eq!(lines[5], format!("**Request pending.** {link}"));
    }

    #[test]
    fn content_stays_within_discords_limit() {
        let long = "x".repeat(5000);
        let view = json!({
            "id": "req_x", "status": "denied", "principal": "alice", "action": "export",
            "resource": {"type": "Table", "id": long}, "reason": long, "params": {"p": long},
            "reviews": (0..20).map(|_| json!({"reviewer": "bob", "verdict": "deny", "reason": long})).collect::<Vec<_>>(),
        });
        let (content, components, mentions) = render(&view, &|_| None, "https://a.example/r");
        assert!(content.chars().count() <= MAX_CONTENT, "{}", content.len());
        assert!(content.ends_with("**Request denied.** https://a.example/r"));
        assert_eq!(components, json!([]));
        assert_eq!(mentions, json!({"parse": [], "users": []}));
    }
}
