//! Slack messages: Block Kit with Approve/Deny buttons while pending.
//! Everything a requester or reviewer wrote is escaped and set in code, so
//! it shows as written and cannot mention, link or format.

use airlock_core::display::{json_compact, truncate, visible};
use serde_json::{json, Value};

/// Longest untrusted value (in characters, escaped) in one message field;
/// Slack refuses a field over 2,000 and a text over 3,000.
pub const MAX_VALUE: usize = 1500;
/// Longest review reason shown.
pub const MAX_REVIEW: usize = 300;

/// The three characters Slack's mrkdwn gives meaning to, escaped as Slack
/// documents: with no raw `<` there is no `<!channel>`, `<!here>`,
/// `<@U…>` or `<https://…|disguised>` link.
fn mrkdwn_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Untrusted text for mrkdwn: hidden characters shown as escapes, then
/// escaped for Slack.
pub fn mrkdwn_text(s: &str) -> String {
    mrkdwn_escape(&visible(s))
}

/// Untrusted text for inside a code span (`` `…` ``), at most `max`
/// characters: as [`mrkdwn_text`], on one line (newlines are shown as
/// `\n`), and with backticks, which Slack cannot escape, shown as `\u{60}`
/// so the value cannot close the span and write formatting of its own.
pub fn mrkdwn_code(s: &str, max: usize) -> String {
    let escaped = mrkdwn_text(s).replace('`', "\\u{60}");
    truncate(&escaped, max).into_owned()
}

/// Untrusted JSON for inside a code block: hidden characters and backticks
/// written as JSON escapes (`\u0060`), so it reads as the same JSON.
pub fn mrkdwn_json(v: &Value, max: usize) -> String {
    let escaped = mrkdwn_escape(&json_compact(v)).replace('`', "\\u0060");
    truncate(&escaped, max).into_owned()
}

/// `*alice* wants to *export* ...` with the thresholds, and the buttons
/// while the request is pending. Everything a requester or reviewer wrote
/// is escaped and set in code, so it shows as written and cannot mention,
/// link or format.
pub fn render(
    view: &Value,
    slack_ids: &dyn Fn(&str) -> Option<String>,
    link: &str,
) -> (String, Value) {
    let who = |u: &str| slack_ids(u).map_or_else(|| mrkdwn_text(u), |id| format!("<@{id}>"));
    let field = |v: &Value| mrkdwn_text(v.as_str().unwrap_or(""));
    let id = view["id"].as_str().unwrap_or("");
    let status = field(&view["status"]);
    let resource = airlock_core::display::resource_label(
        view["resource"]["type"].as_str().unwrap_or(""),
        view["resource"]["id"].as_str().unwrap_or(""),
    );
    // Break-glass is said first: it was granted without approval.
    let alarm = if view["breakglass"] == true {
        ":rotating_light: *BREAK-GLASS* (granted at once; review it after the fact): "
    } else {
        ""
    };
    let headline = format!(
        "{alarm}{} wants to *{}* `{}`",
        who(view["principal"].as_str().unwrap_or("")),
        field(&view["action"]),
        mrkdwn_code(&resource, MAX_VALUE),
    );
    let reason = view["reason"].as_str().map_or_else(
        || "—".to_owned(),
        |r| format!("`{}`", mrkdwn_code(r, MAX_VALUE)),
    );
    let thresholds: Vec<String> = view["thresholds"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let groups: Vec<String> = t["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|g| g.as_str())
                .map(mrkdwn_text)
                .collect();
            let eligible: Vec<String> = t["eligible"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|u| u.as_str())
                .map(who)
                .collect();
            format!(
                "• {} {}/{} — can approve: {}",
                groups.join(" or "),
                t["approvals"].as_u64().unwrap_or(0),
                t["quorum"].as_u64().unwrap_or(1),
                eligible.join(", ")
            )
        })
        .collect();
    let mut blocks = vec![
        json!({"type": "section", "text": {"type": "mrkdwn", "text": headline}}),
        json!({"type": "section", "fields": [
            {"type": "mrkdwn", "text": format!("*Reason*\n{reason}")},
            {"type": "mrkdwn", "text": format!("*Params*\n```{}```", mrkdwn_json(&view["params"], MAX_VALUE))},
        ]}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*Thresholds*\n{}", thresholds.join("\n"))}}),
    ];
    let reviews: Vec<String> = view["reviews"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            format!(
                "{} {}{}",
                who(r["reviewer"].as_str().unwrap_or("")),
                field(&r["verdict"]),
                r["reason"]
                    .as_str()
                    .map(|w| format!(": `{}`", mrkdwn_code(w, MAX_REVIEW)))
                    .unwrap_or_default()
            )
        })
        .collect();
    if !reviews.is_empty() {
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": reviews.join(" · ")}]}));
    }
    // A value cut short here is approved only where it is shown whole: a
    // long comment in params pushed the SQL out of the message, and its
    // Approve button still approved it (found by a black-box pass).
    let cut = [resource.as_str(), view["reason"].as_str().unwrap_or("")]
        .iter()
        .any(|s| mrkdwn_code(s, MAX_VALUE) != mrkdwn_code(s, usize::MAX))
        || mrkdwn_json(&view["params"], MAX_VALUE) != mrkdwn_json(&view["params"], usize::MAX);
    if status == "pending" {
        // An approval that needs step-up is made in the console, where the
        // code is asked: the button opens it instead of approving here.
        let approve = if view["step_up"].is_string() || cut {
            let why = if cut { "shown whole there" } else { "step-up" };
            json!({"type": "button", "action_id": "open_console", "style": "primary", "url": link,
                   "text": {"type": "plain_text", "text": format!("Approve in the console ({why})")}})
        } else {
            json!({"type": "button", "action_id": "approve", "style": "primary", "value": id,
                   "text": {"type": "plain_text", "text": "Approve"}})
        };
        blocks.push(
            json!({"type": "actions", "block_id": "review", "elements": [
                approve,
                {"type": "button", "action_id": "deny", "style": "danger", "value": id,
                 "text": {"type": "plain_text", "text": "Deny"}},
            ]}),
        );
    } else {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*Request {status}.*")}}));
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("<{link}|{id}> · {status}")}]}));
    // The notification's text: the headline without the bold marks (and
    // only those: the resource is shown as written).
    let text = format!(
        "{}{} wants to {} `{}` — {status}",
        if alarm.is_empty() {
            ""
        } else {
            "BREAK-GLASS: "
        },
        who(view["principal"].as_str().unwrap_or("")),
        field(&view["action"]),
        mrkdwn_code(&resource, MAX_VALUE),
    );
    (text, Value::Array(blocks))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every text object in a Block Kit value, at any depth.
    fn texts(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(t) = o.get("text").and_then(Value::as_str) {
                    out.push(t.to_owned());
                }
                o.values().for_each(|v| texts(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| texts(v, out)),
            _ => {}
        }
    }

    /// The message's buttons block.
    fn actions_of(blocks: &Value) -> Value {
        blocks
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["type"] == "actions")
            .unwrap()
            .clone()
    }

    #[test]
    fn a_step_up_approval_opens_the_console() {
        let link = "https://airlock.example/requests/req_x";
        let mut view = json!({"id": "req_x", "status": "pending", "principal": "alice", "action": "export",
            "resource": {"type": "Table", "id": "t"}, "thresholds": [], "reviews": []});
        let ids = |_: &str| None;
        let (_, blocks) = render(&view, &ids, link);
        let actions = actions_of(&blocks);
        assert_eq!(actions["elements"][0]["action_id"], "approve");
        view["step_up"] = json!("totp");
        let (_, blocks) = render(&view, &ids, link);
        let actions = actions_of(&blocks);
        assert_eq!(actions["elements"][0]["url"], link);
        assert_eq!(actions["elements"][0]["action_id"], "open_console");
        assert_eq!(
            actions["elements"][1]["action_id"], "deny",
            "deny needs no code"
        );
        // Params cut short: approved only in the console, where they are whole.
        view["step_up"] = Value::Null;
        view["params"] =
            json!({"a_comment": "routine ".repeat(200), "sql": "COPY customers TO PROGRAM 'curl'"});
        let (_, blocks) = render(&view, &ids, link);
        assert!(!blocks.to_string().contains("TO PROGRAM"), "cut: {blocks}");
        let actions = actions_of(&blocks);
        assert_eq!(actions["elements"][0]["action_id"], "open_console");
        // Break-glass is said first.
        let bg = json!({"id": "req_x", "status": "approved", "principal": "oscar", "action": "export",
            "resource": {"type": "Table", "id": "t"}, "thresholds": [], "reviews": [], "breakglass": true});
        let (text, blocks) = render(&bg, &ids, link);
        assert!(text.starts_with("BREAK-GLASS: "), "{text}");
        assert!(blocks.to_string().contains("*BREAK-GLASS*"), "{blocks}");
    }

    #[test]
    fn what_requesters_and_reviewers_write_is_inert_in_slack() {
        let link = "https://airlock.example/requests/req_x";
        let view = json!({
            "id": "req_x", "status": "pending", "principal": "alice", "action": "export",
            "resource": {"type": "Table", "id": "orders` *approved by security* `<!channel>"},
            "reason": "<!channel> <!here> <@U0CAROL> read <http://evil.example|the docs> ```\n*Thresholds* met\u{202e}fdp.exe\u{1b}[2J",
            "params": {"sql": "``` <!everyone> ``` & <http://a|b>", "k\u{200b}": "\u{7f}"},
            "thresholds": [{"groups": ["security"], "approvals": 0, "quorum": 2, "eligible": ["bob"]}],
            "reviews": [{"reviewer": "bob", "verdict": "deny", "reason": "`<!here>` fine\u{2066}"}],
        });
        let ids = |u: &str| (u == "bob").then(|| "U0BOB".to_owned());
        let (text, blocks) = render(&view, &ids, link);
        let mut all = vec![text];
        texts(&blocks, &mut all);
        for t in &all {
            // Only the mentions and the link Airlock itself wrote remain.
            let rest = t
                .replace("<@U0BOB>", "")
                .replace(&format!("<{link}|req_x>"), "");
            assert!(!rest.contains('<') && !rest.contains('>'), "{t}");
            // No hidden characters but the line breaks between Airlock's
            // own parts.
            assert!(
                t.chars()
                    .filter(|c| airlock_core::display::is_hidden(*c))
                    .all(|c| c == '\n'),
                "no hidden characters: {t:?}"
            );
            // Code spans open and close only where Airlock put them.
            let ticks = t.matches('`').count();
            if let Some(params) = t.strip_prefix("*Params*\n") {
                assert!(params.starts_with("```") && params.ends_with("```"), "{t}");
                assert_eq!(ticks, 6, "{t}");
            } else {
                assert!(ticks == 0 || ticks == 2, "{t}");
            }
        }
        let all = all.join("\n");
        for shown in [
            "&lt;!channel&gt;",
            "&lt;http://evil.example|the docs&gt;",
            "\\u{202e}fdp.exe",
            "\\u{1b}[2J",
            "\\n*Thresholds*",
            "orders\\u{60} *approved by security* \\u{60}&lt;!channel&gt;",
            "\\u0060\\u0060\\u0060 &lt;!everyone&gt;",
            "&amp; &lt;http://a|b&gt;",
            "k\\u200b",
            "\\u{2066}",
        ] {
            assert!(all.contains(shown), "shows {shown}: {all}");
        }
    }
}
