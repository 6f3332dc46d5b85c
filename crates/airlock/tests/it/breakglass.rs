//! Break-glass: an immediate grant for members of `[breakglass] groups`,
//! with a reason, alerted at once, on record at high severity, reviewed by
//! two others after the fact; policy's forbid still wins.

use serde_json::{json, Value};

use crate::support::*;

const POLICIES: &str = r#"
@id("reads")
permit(principal, action == Action::"read", resource);

@id("exports-need-security")
@approvers("security")
@grant_ttl("1h")
permit(principal, action == Action::"export", resource);

@id("drops-need-security")
@approvers("security")
permit(principal, action == Action::"drop", resource);

@id("vault-needs-a-code")
@approvers("security")
@step_up("totp")
permit(principal, action == Action::"open", resource);

@id("never-drop-prod")
forbid(principal, action == Action::"drop", resource == Table::"prod.orders");
"#;

const EXTRA: &str = r#"
[[users]]
name = "oscar"
groups = ["oncall"]

[breakglass]
groups = ["oncall"]
grant_ttl = "5m"

[notify]
[[notify.webhooks]]
url = "http://127.0.0.1:9/hook"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
"#;

fn action(verb: &str, table: &str) -> Value {
    json!({"action": verb, "resource": {"type": "Table", "id": table}, "reason": "incident 42: orders stuck"})
}

async fn metric(s: &Server, name: &str) -> String {
    s.metrics()
        .await
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_default()
        .to_owned()
}

async fn breaking_the_glass_grants_at_once_and_is_reviewed_after(db: Db) {
    let s = Server::start_extra(&db, POLICIES, EXTRA);
    let (alice, bob, carol, mallory, oscar, admin) = (
        s.key("alice", "user"),
        s.key("bob", "user"),
        s.key("carol", "user"),
        s.key("mallory", "user"),
        s.key("oscar", "user"),
        s.key("admin", "admin"),
    );

    // Only members, only with a reason.
    let (st, r) = s
        .post(&alice, "/v1/breakglass", action("export", "orders"))
        .await;
    assert_eq!(st, 403, "{r}");
    let mut no_reason = action("export", "orders");
    no_reason["reason"] = json!(" ");
    let (st, r) = s.post(&oscar, "/v1/breakglass", no_reason).await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (400, Some("reason_required")),
        "{r}"
    );
    // Policy's forbid wins; what policy allows needs no break-glass.
    let (st, r) = s
        .post(&oscar, "/v1/breakglass", action("drop", "prod.orders"))
        .await;
    assert_eq!(st, 403, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("never opens"),
        "{r}"
    );
    // What policy allows outright is granted too, and reviewed after.
    let (st, r) = s
        .post(&oscar, "/v1/breakglass", action("read", "orders"))
        .await;
    assert_eq!((st, r["status"].as_str()), (200, Some("approved")), "{r}");
    assert_eq!(r["review_required"], true);

    // Granted at once, for at most [breakglass] grant_ttl.
    let (st, r) = s
        .post(&oscar, "/v1/breakglass", action("export", "orders"))
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["status"], "approved");
    assert_eq!(
        (r["breakglass"].as_bool(), r["review_required"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(r["grant_ttl"], "5m", "shorter than policy's 1h");
    let id = r["id"].as_str().unwrap().to_owned();
    let token = r["grant"]["token"].as_str().unwrap().to_owned();
    let used = json!({"token": token, "action": {"principal": "oscar", "action": "export", "resource": {"type": "Table", "id": "orders"}}});
    let (st, r) = s.post(&oscar, "/v1/grants/consume", used.clone()).await;
    assert_eq!(st, 200, "{r}");
    let (st, r) = s.post(&oscar, "/v1/grants/consume", used).await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (403, Some("grant_spent")),
        "once"
    );

    // On record at high severity; alerted at once; counted.
    assert!(s.audit_has(&admin, "breakglass", "severity", "high").await);
    let (_, out) = s.get(&admin, "/v1/outbox?limit=100").await;
    assert!(
        out["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["event"] == "request.breakglass"),
        "{out}"
    );
    assert_eq!(
        metric(&s, "airlock_breakglass_unreviewed").await,
        "airlock_breakglass_unreviewed 2"
    );

    // Reviewed after the fact by two others (not the one who broke it, not
    // someone who may not review it).
    let (st, r) = s.review(&oscar, &id, "approve").await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (403, Some("self_review")),
        "{r}"
    );
    let (st, _) = s.review(&mallory, &id, "approve").await;
    assert_eq!(st, 403);
    let (st, r) = s.review(&bob, &id, "approve").await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["review_required"], true, "one of two");
    assert_eq!(r["thresholds"][0]["approvals"], 1, "{r}");
    let (st, r) = s.review(&carol, &id, "approve").await;
    assert_eq!(st, 200, "{r}");
    // Present and false: a client watching the field sees it turn
    // (found by a black-box pass: it vanished instead).
    assert_eq!(r["review_required"], false, "{r}");
    assert_eq!(r["breakglass"], true, "{r}");
    assert_eq!(
        metric(&s, "airlock_breakglass_unreviewed").await,
        "airlock_breakglass_unreviewed 1",
        "the read is left"
    );

    // On an action whose approvals need a code: the grant stood without
    // approvals, and an approval after the fact, with its code, is shown
    // as one, not as none.
    let (st, r) = s
        .post(&oscar, "/v1/breakglass", action("open", "vault"))
        .await;
    assert_eq!((st, r["status"].as_str()), (200, Some("approved")), "{r}");
    let vault = r["id"].as_str().unwrap().to_owned();
    // Saying it was right asks the step-up approving would have: a
    // session alone cannot clear a use of a step-up action (found by a
    // black-box pass), and a wrong code is refused as anywhere.
    let (st, r) = s.review(&bob, &vault, "approve").await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (403, Some("step_up_required")),
        "{r}"
    );
    let (_, totp) = crate::stepup::enroll(&s, "bob");
    let code = crate::stepup::fresh(&totp, &[]).await;
    let path = format!("/v1/requests/{vault}/reviews");
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (st, r) = s
        .post(&bob, &path, json!({"verdict": "approve", "totp": wrong}))
        .await;
    assert_eq!(st, 403, "{r}");
    let (st, r) = s
        .post(&bob, &path, json!({"verdict": "approve", "totp": code}))
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["thresholds"][0]["approvals"], 1, "{r}");

    // A use flagged after the fact loses what is left of its grant.
    let (_, r) = s
        .post(&oscar, "/v1/breakglass", action("export", "customers"))
        .await;
    let second = r["id"].as_str().unwrap().to_owned();
    let (st, r) = s.review(&bob, &second, "deny").await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["status"], "revoked");
    assert_eq!(r["grant"]["revoked"], true, "{r}");
    let (_, audit) = s.get(&admin, "/v1/audit?limit=1000").await;
    assert!(audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .any(|rec| rec["kind"] == "review"
            && rec["subject"] == second.as_str()
            && rec["details"]["after_the_fact"] == true));
}

/// Asked for the usual way first, then an emergency: break-glass
/// supersedes the waiting request (it was a 503, a unique-key clash). And
/// its grant stands on its holder's membership: out of the break-glass
/// groups, it is refused.
async fn break_glass_supersedes_a_waiting_request_and_needs_its_group(db: Db) {
    let s = Server::start_extra(&db, POLICIES, EXTRA);
    let (oscar, admin) = (s.key("oscar", "user"), s.key("admin", "admin"));
    let (_, r) = s
        .post(&oscar, "/v1/check", action("export", "orders"))
        .await;
    assert_eq!(r["decision"], "approval_required", "{r}");
    let waiting = r["request"]["id"].as_str().unwrap().to_owned();
    let (st, r) = s
        .post(&oscar, "/v1/breakglass", action("export", "orders"))
        .await;
    assert_eq!((st, r["status"].as_str()), (200, Some("approved")), "{r}");
    let token = r["grant"]["token"].as_str().unwrap().to_owned();
    let (_, r) = s.get(&oscar, &format!("/v1/requests/{waiting}")).await;
    assert_eq!(r["status"], "cancelled", "{r}");
    // Asked again the usual way, and broken again: the same.
    let (_, r) = s
        .post(&oscar, "/v1/check", action("export", "orders"))
        .await;
    assert_eq!(r["decision"], "approval_required", "{r}");
    let (st, r) = s
        .post(&oscar, "/v1/breakglass", action("export", "orders"))
        .await;
    assert_eq!(st, 200, "{r}");

    s.set_users(&format!(
        "{USERS}\n{}",
        EXTRA.replacen("groups = [\"oncall\"]", "groups = []", 1)
    ));
    std::process::Command::new("kill")
        .args(["-HUP", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(
        s.audit_has(&admin, "policy_loaded", "trigger", "sighup")
            .await
    );
    let used = json!({"token": token, "action": {"principal": "oscar", "action": "export", "resource": {"type": "Table", "id": "orders"}}});
    let (st, r) = s.post(&oscar, "/v1/grants/consume", used).await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (403, Some("grant_revoked")),
        "out of the break-glass groups: {r}"
    );
}

on_both_stores!(
    breaking_the_glass_grants_at_once_and_is_reviewed_after,
    break_glass_supersedes_a_waiting_request_and_needs_its_group
);

/// The console: a Break glass page for members (plain words for others),
/// and unreviewed uses first in reviewers' inboxes.
#[tokio::test]
async fn the_console_breaks_the_glass_and_shows_it_first() {
    let s = Server::start_extra(&Db::Sqlite, POLICIES, EXTRA);
    let alice = s.key("alice", "user");
    for u in ["oscar", "bob", "mallory"] {
        set_password(&s, u, &format!("{u}'s long password"));
    }
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (oscar, oscar_csrf) = http_sign_in(&http, &s.url, "oscar", "oscar's long password").await;
    let (bob, _) = http_sign_in(&http, &s.url, "bob", "bob's long password").await;
    let (mallory, _) = http_sign_in(&http, &s.url, "mallory", "mallory's long password").await;
    let get = |cookie: &str, path: &str| {
        let req = http
            .get(format!("{}{path}", s.url))
            .header("cookie", format!("airlock_session={cookie}"));
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    // A pending request, so the break-glass one must come before it.
    let (_, r) = s
        .post(
            &alice,
            "/v1/check",
            json!({"action": "export", "resource": {"type": "Table", "id": "a"}}),
        )
        .await;
    assert_eq!(r["decision"], "approval_required", "{r}");

    let (st, page) = get(&oscar, "/breakglass").await;
    assert_eq!(st, 200);
    assert!(page.contains("two other people must review it"), "{page}");
    let (_, nav) = get(&bob, "/inbox").await;
    assert!(!nav.contains("href=\"/breakglass\""), "not linked for bob");
    let (st, page) = get(&mallory, "/breakglass").await;
    assert_eq!(st, 403);
    assert!(page.contains("[breakglass] groups"), "{page}");

    let r = http
        .post(format!("{}/breakglass", s.url))
        .header("cookie", format!("airlock_session={oscar}"))
        .form(&[
            ("csrf", oscar_csrf.as_str()),
            ("action", "export"),
            ("resource", "Table:orders"),
            ("params", ""),
            ("reason", "INC-42: orders stuck"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let at = r.headers()["location"].to_str().unwrap().to_owned();
    let (_, page) = get(&oscar, &at).await;
    assert!(
        page.contains("Break-glass: oscar took this grant at once"),
        "{page}"
    );

    // bob's inbox: the break-glass use first, counted in the title.
    let (_, inbox) = get(&bob, "/inbox").await;
    let bg = inbox
        .find("Break-glass: review after the fact")
        .expect("shown");
    let pending = inbox.find("Table:a").expect("the pending one");
    assert!(bg < pending, "break-glass first");
    assert!(inbox.contains("<title>(2) Inbox"), "counted");
    let (_, page) = get(&bob, &at).await;
    assert!(
        page.contains("confirms this break-glass use was justified (1 of 2"),
        "{page}"
    );
}

/// Every chat channel is alerted at once: the default one and every
/// routed one, with the alarm said first.
#[tokio::test]
async fn breaking_the_glass_is_posted_in_every_channel() {
    let slack = FakeSlack::start();
    let extra = format!(
        "[[users]]\nname = \"oscar\"\ngroups = [\"oncall\"]\n\n[breakglass]\ngroups = [\"oncall\"]\n\n[notify.slack]\napi_url = \"{}/api\"\nbot_token = \"xoxb-test\"\nsigning_secret = \"{SLACK_SECRET}\"\nchannel = \"C0APPROVALS\"\nroutes = {{ security = \"C0SEC\", data-owners = \"C0DATA\" }}\n",
        slack.base
    );
    let s = Server::start_extra(&Db::Sqlite, POLICIES, &extra);
    let oscar = s.key("oscar", "user");
    let (st, r) = s
        .post(&oscar, "/v1/breakglass", action("export", "orders"))
        .await;
    assert_eq!(st, 200, "{r}");
    for channel in ["C0APPROVALS", "C0SEC", "C0DATA"] {
        let posted = slack
            .wait("api/chat.postMessage", |v| v["channel"] == channel)
            .await;
        assert!(
            posted["text"]
                .as_str()
                .unwrap_or_default()
                .starts_with("BREAK-GLASS"),
            "{channel}: {posted}"
        );
    }
}
