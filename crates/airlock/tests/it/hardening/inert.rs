//! What requesters and reviewers write reaches approvers inert: a request
//! whose reason, params and resource id carry terminal escapes, a
//! right-to-left override, zero-width characters, Slack and Discord
//! mentions, masked links and code-block break-outs is shown escaped by the
//! real `airlock` binary, in the payloads sent to Slack and Discord, and
//! marked in the console.

use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::support::*;

/// Clears the screen and turns the text red; a carriage return to
/// overwrite the line; Slack's and Discord's mentions; a masked link; a
/// closing code fence; an override that makes "fdp.exe" read "exe.pdf".
const REASON: &str = "\u{1b}[2J\u{1b}[31mquarterly <!channel> @everyone [click](http://evil.example) <http://evil.example|docs> ```\rapproved by security\u{202e}fdp.exe";
/// No control characters are accepted in a resource id, but the rest is.
const RESOURCE_ID: &str = "report\u{202e}fdp.exe`<!here>@everyone\u{200b}";
/// A reviewer's reason with an OSC 8 hyperlink, which disguises a link on
/// terminals that support it.
const REVIEW: &str = "\u{1b}]8;;http://evil.example\u{7}fine\u{1b}]8;;\u{7} <@U0MALLORY> <@&1>";

/// Characters that must never reach a terminal, a chat message or a page
/// raw.
fn raw(s: &str) -> Option<char> {
    s.chars().find(|c| {
        matches!(
            c,
            '\u{1b}' | '\u{7}' | '\r' | '\u{202e}' | '\u{200b}' | '\u{2066}' | '\u{9b}'
        )
    })
}

/// Every string in a JSON value, keys included.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        Value::Object(o) => o.iter().for_each(|(k, v)| {
            out.push(k.clone());
            strings(v, out)
        }),
        _ => {}
    }
}

fn cli(s: &Server, key: &str, args: &[&str]) -> (String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("AIRLOCK_URL", &s.url)
        .env("AIRLOCK_TOKEN", key)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(out.status.success(), "{args:?}: {stderr}");
    (stdout, stderr)
}

#[tokio::test]
async fn what_requesters_and_reviewers_write_reaches_approvers_inert() {
    let slack = FakeSlack::start();
    let discord = FakeDiscord::start();
    let discord_key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let smtp = Smtp::start();
    let s = Server::start_extra(
        &Db::Sqlite,
        POLICIES,
        &format!(
            "[notify.slack]\napi_url = \"{}/api\"\nbot_token = \"xoxb-test\"\nsigning_secret = \"{SLACK_SECRET}\"\nchannel = \"C0APPROVALS\"\n\n\
             [notify.discord]\napi_url = \"{}\"\nbot_token = \"bot-test\"\napplication_public_key = \"{}\"\nchannel_id = \"C1\"\n\n\
             [notify.email]\nsmtp_url = \"smtp://127.0.0.1:{}\"\nfrom = \"Airlock <airlock@example.com>\"\n",
            slack.base,
            discord.base,
            hex::encode(discord_key.verifying_key().to_bytes()),
            smtp.port,
        ),
    );
    let (alice, bob) = (s.key("alice", "user"), s.key("bob", "user"));
    let params = json!({"sql": "\u{1b}[2Jselect 1 ```<!here>``` [x](http://evil.example)", "note\u{200b}": "@everyone\u{2066}"});
    let (st, r) = s
        .post(
            &alice,
            "/v1/check",
            json!({"action": "export", "resource": {"type": "Table", "id": RESOURCE_ID},
                   "params": params, "reason": REASON}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let id = r["request"]["id"].as_str().unwrap().to_owned();

    // The terminal: `requests list` and `show`, as text and as JSON.
    let (list, _) = cli(&s, &bob, &["requests", "list"]);
    let (show, _) = cli(&s, &bob, &["requests", "show", &id]);
    for out in [&list, &show] {
        assert_eq!(raw(out), None, "{out:?}");
        for shown in [
            "\\u{1b}[2J\\u{1b}[31mquarterly <!channel>",
            "```\\rapproved by security\\u{202e}fdp.exe",
            "resource id:   report\\u{202e}fdp.exe`<!here>@everyone\\u{200b}",
            "\"note\\u200b\":\"@everyone\\u2066\"",
            "\\u001b[2Jselect 1",
        ] {
            assert!(out.contains(shown), "shows {shown}: {out}");
        }
    }
    let (json_out, _) = cli(&s, &bob, &["requests", "show", &id, "--json"]);
    assert_eq!(raw(&json_out), None, "{json_out:?}");
    let parsed: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(parsed["reason"], REASON, "the same value, escaped as JSON");
    assert_eq!(parsed["resource"]["id"], RESOURCE_ID);
    assert_eq!(parsed["params"], params);

    // Slack: no mention, link or code fence of the requester's survives,
    // and nothing hidden.
    let posted = slack
        .wait("api/chat.postMessage", |v| v["channel"] == "C0APPROVALS")
        .await;
    let mut texts = Vec::new();
    strings(&posted, &mut texts);
    let all = texts.join("\n");
    assert_eq!(raw(&all), None, "{all:?}");
    for gone in [
        "<!channel>",
        "<!here>",
        "<http://evil.example|docs>",
        "```\\r",
    ] {
        assert!(!all.contains(gone), "no {gone} in {all}");
    }
    for shown in [
        "&lt;!channel&gt;",
        "&lt;http://evil.example|docs&gt;",
        "\\u{60}\\u{60}\\u{60}\\rapproved by security\\u{202e}fdp.exe",
        "report\\u{202e}fdp.exe\\u{60}&lt;!here&gt;",
    ] {
        assert!(all.contains(shown), "Slack shows {shown}: {all}");
    }

    // Discord: the same, and the message can notify nobody by its text.
    let message = discord.wait("POST", "channels/C1/messages", |_| true).await;
    assert_eq!(message["allowed_mentions"]["parse"], json!([]), "{message}");
    let content = message["content"].as_str().unwrap();
    assert_eq!(raw(content), None, "{content:?}");
    assert!(
        content
            .contains("\\<\\!channel\\> \\@everyone \\[click\\]\\(http\\:\\/\\/evil\\.example\\)"),
        "{content}"
    );
    assert!(
        content.contains("`Table:report\\u{202e}fdp.exe\\u{60}<!here>@everyone\\u{200b}`"),
        "the resource stays in its code span: {content}"
    );
    assert!(!content.contains(" @everyone"), "{content}");

    // Email: plain text, so the same escapes as the terminal (and, being
    // ASCII now, sent as it is).
    let asks = smtp
        .wait_for(1, |m| m.contains("To: bob@example.com"))
        .await;
    // Unfolded: the header's folds and quoted-printable's soft breaks.
    let mail = asks[0]
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("\r\n ", " ")
        .replace("\n ", " ");
    assert_eq!(raw(&mail), None, "{mail:?}");
    for shown in [
        "Subject: Approval needed: alice wants to export Table:report\\u{202e}fdp.exe`<!here>@everyone\\u{200b}",
        "Reason: \\u{1b}[2J\\u{1b}[31mquarterly <!channel>",
        "```\\rapproved by security\\u{202e}fdp.exe",
        "\"note\\u200b\":\"@everyone\\u2066\"",
    ] {
        assert!(mail.contains(shown), "the mail shows {shown}: {mail}");
    }

    // bob denies with a reason of his own: the updates, the requester's
    // direct messages and the CLI show it inert too.
    let (st, r) = s
        .post(
            &bob,
            &format!("/v1/requests/{id}/reviews"),
            json!({"verdict": "deny", "reason": REVIEW}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let update = slack
        .wait("api/chat.update", |v| {
            v["blocks"].to_string().contains("Request denied")
        })
        .await;
    let mut texts = Vec::new();
    strings(&update, &mut texts);
    let all = texts.join("\n");
    assert_eq!(raw(&all), None, "{all:?}");
    assert!(!all.contains("<@U0MALLORY>"), "{all}");
    assert!(
        all.contains("\\u{1b}]8;;http://evil.example\\u{7}fine"),
        "{all}"
    );
    let update = discord
        .wait("PATCH", "channels/C1/messages/m1", |v| {
            v["content"]
                .as_str()
                .unwrap_or("")
                .contains("Request denied")
        })
        .await;
    assert_eq!(update["allowed_mentions"]["parse"], json!([]), "{update}");
    let content = update["content"].as_str().unwrap();
    assert_eq!(raw(content), None, "{content:?}");
    assert!(content.contains("\\<\\@\\&1\\>"), "{content}");
    let dm = discord
        .wait("POST", "channels/dm-D0ALICE/messages", |_| true)
        .await;
    assert_eq!(dm["allowed_mentions"]["parse"], json!([]), "{dm}");
    assert_eq!(raw(dm["content"].as_str().unwrap()), None, "{dm}");
    let dm = slack
        .wait("api/chat.postMessage", |v| v["channel"] == "U0ALICE")
        .await;
    let text = dm["text"].as_str().unwrap();
    assert_eq!(raw(text), None, "{text:?}");
    assert!(
        text.contains("&lt;!here&gt;") && !text.contains("<!here>"),
        "{text}"
    );
    let (show, _) = cli(&s, &alice, &["requests", "show", &id]);
    assert_eq!(raw(&show), None, "{show:?}");
    assert!(
        show.contains("bob deny via api: \\u{1b}]8;;http://evil.example\\u{7}fine"),
        "{show}"
    );

    // `airlock run`: its refusal quotes the reviewer's reason inert.
    let child = Command::new(BIN)
        .args([
            "run",
            "--action",
            "export",
            "--resource",
            &format!("Table:{RESOURCE_ID}"),
            "--reason",
            REASON,
            "--",
            "true",
        ])
        .env("AIRLOCK_URL", &s.url)
        .env("AIRLOCK_TOKEN", &alice)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run_id = first_pending(&s, &bob).await;
    let (st, _) = s
        .post(
            &bob,
            &format!("/v1/requests/{run_id}/reviews"),
            json!({"verdict": "deny", "reason": REVIEW}),
        )
        .await;
    assert_eq!(st, 200);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_eq!(raw(&stderr), None, "{stderr:?}");
    assert!(
        stderr.contains("denied by bob: \\u{1b}]8;;http://evil.example\\u{7}fine"),
        "{stderr}"
    );

    // The console marks what hides, and shows each hidden character.
    set_password(&s, "bob", "bob's long password");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (cookie, _) = http_sign_in(&http, &s.url, "bob", "bob's long password").await;
    let page = http
        .get(format!("{}/requests/{id}", s.url))
        .header("cookie", format!("airlock_session={cookie}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(raw(&page), None, "{page:?}");
    assert!(
        page.contains("<mark class=\"suspicious\" title=\"Contains hidden or control characters"),
        "{page}"
    );
    assert!(
        page.contains("report<span class=\"hidden-char\">\\u{202e}</span>fdp.exe"),
        "{page}"
    );
    assert!(
        page.contains("<span class=\"hidden-char\">\\u{1b}</span>[31mquarterly &lt;!channel&gt;"),
        "{page}"
    );
    assert!(
        page.contains("<div class=\"suspicious\""),
        "params marked: {page}"
    );
    assert!(page.contains("@everyone\\u2066"), "{page}");
}
