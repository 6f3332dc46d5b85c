//! The web console, in a real browser (headless Chromium via
//! chromedriver) and over plain HTTP.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn console_approve_in_a_real_browser_lets_a_waiting_run_go_ahead() {
    use fantoccini::Locator;
    let Some(driver) = Driver::start() else {
        return;
    };
    let s = Server::start_with(&Db::Sqlite, CONSOLE_POLICIES);
    let alice = s.key("alice", "user");
    set_password(&s, "bob", "bob's long password");
    set_password(&s, "mallory", "mallory's long password");
    let b = driver.browser(1280, 900).await;
    sign_in(&b, &s.url, "bob", "bob's long password").await;
    assert_eq!(b.current_url().await.unwrap().path(), "/inbox");
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("html[data-live-ready]"))
        .await
        .unwrap();

    // alice's command waits for approval; the open inbox shows it live.
    let marker = s.dir.path().join("ran");
    let run = Command::new(BIN)
        .args([
            "run",
            "--action",
            "export",
            "--resource",
            "Table:orders",
            "--reason",
            "monthly report",
            "--",
        ])
        .args(["sh", "-c", &format!("echo ran > {}", marker.display())])
        .env("AIRLOCK_URL", &s.url)
        .env("AIRLOCK_TOKEN", &alice)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let row = b
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css("li.request a.title"))
        .await
        .expect("the request appears in the open inbox without a reload");
    let text = b
        .find(Locator::Css("li.request"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("alice") && text.contains("monthly report"),
        "{text}"
    );
    assert!(text.contains("security 0/1"), "what is missing: {text}");
    std::fs::write(
        screenshot_dir().join("inbox.png"),
        b.screenshot().await.unwrap(),
    )
    .unwrap();

    row.click().await.unwrap();
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("button.approve"))
        .await
        .unwrap();
    let page = b.source().await.unwrap();
    for shown in [
        "monthly report",
        "exports-need-security",
        "Params",
        "History",
        "request_created",
    ] {
        assert!(page.contains(shown), "request page shows {shown}");
    }
    std::fs::write(
        screenshot_dir().join("request.png"),
        b.screenshot().await.unwrap(),
    )
    .unwrap();
    let request_url = b.current_url().await.unwrap();
    b.find(Locator::Css("textarea[name=reason]"))
        .await
        .unwrap()
        .send_keys("fine for the report")
        .await
        .unwrap();
    b.find(Locator::Css("button.approve"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(
            "span.status.approved, span.status.consumed, span.status.completed",
        ))
        .await
        .unwrap();

    // The waiting command goes ahead.
    let out = tokio::task::spawn_blocking(move || run.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ran\n");

    // The review is recorded as made on the web, by bob.
    let admin = s.key("admin", "admin");
    let (_, audit) = s.get(&admin, "/v1/audit?limit=1000").await;
    assert!(audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["kind"] == "review" && r["actor"] == "bob" && r["details"]["channel"] == "web"));
    assert!(audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["kind"] == "sign_in" && r["actor"] == "bob"));
    b.close().await.unwrap();

    // Someone who may see the request but not review it (its requester)
    // sees no buttons; forged POSTs are refused by the same rules as the API.
    set_password(&s, "alice", "alice's long password");
    let (_, r) = s
        .post(
            &alice,
            "/v1/check",
            json!({"action": "export", "resource": {"type": "Table", "id": "t2"}}),
        )
        .await;
    let id = r["request"]["id"].as_str().unwrap().to_owned();
    let phone = driver.phone().await;
    sign_in(&phone, &s.url, "alice", "alice's long password").await;
    phone
        .goto(&format!("{}/requests/{id}", s.url))
        .await
        .unwrap();
    phone
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("span.status.pending"))
        .await
        .unwrap();
    assert!(
        phone.find(Locator::Css("button.approve")).await.is_err(),
        "the requester sees no Approve"
    );
    assert!(
        phone.find(Locator::Css("button.deny")).await.is_err(),
        "the requester sees no Deny"
    );
    std::fs::write(
        screenshot_dir().join("request-phone-requester.png"),
        phone.screenshot().await.unwrap(),
    )
    .unwrap();
    phone.close().await.unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (user, password, code) in [
        ("alice", "alice's long password", 403),     // self-review
        ("mallory", "mallory's long password", 403), // not an approver
    ] {
        let (cookie, csrf) = http_sign_in(&http, &s.url, user, password).await;
        let forged = http
            .post(format!("{}/requests/{id}/review", s.url))
            .header("cookie", format!("airlock_session={cookie}"))
            .form(&[
                ("csrf", csrf.as_str()),
                ("verdict", "approve"),
                ("reason", ""),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status().as_u16(), code, "{user}'s forged approval");
    }

    // A POST without the right CSRF token is refused, even from bob's
    // valid session.
    let (bob_cookie, _) = http_sign_in(&http, &s.url, "bob", "bob's long password").await;
    for form in [
        vec![("verdict", "approve")],
        vec![("verdict", "approve"), ("csrf", "not-the-token")],
    ] {
        let r = http
            .post(format!("{}/requests/{id}/review", s.url))
            .header("cookie", format!("airlock_session={bob_cookie}"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "{form:?}");
    }
    // The sign-in form itself needs its token.
    let r = http
        .post(format!("{}/login", s.url))
        .form(&[("username", "bob"), ("password", "bob's long password")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // A deny whose reason is invisible characters only gives none.
    let (bob_cookie, bob_csrf) = http_sign_in(&http, &s.url, "bob", "bob's long password").await;
    let r = http
        .post(format!("{}/requests/{id}/review", s.url))
        .header("cookie", format!("airlock_session={bob_cookie}"))
        .form(&[
            ("csrf", bob_csrf.as_str()),
            ("verdict", "deny"),
            ("reason", "\u{200b}\u{feff}"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert_eq!(r["status"], "pending", "nothing above approved it");
    assert!(r["reviews"].as_array().unwrap().is_empty());
    let _ = request_url;
}

#[tokio::test]
async fn console_audit_explorer_policy_simulator_and_overview() {
    let mut s = Server::start_with(&Db::Sqlite, CONSOLE_POLICIES);
    let (alice, bob, admin) = (
        s.key("alice", "user"),
        s.key("bob", "user"),
        s.key("admin", "admin"),
    );
    set_password(&s, "bob", "bob's long password");
    set_password(&s, "alice", "alice's long password");
    s.set_users(&format!(
        "{USERS}\n[web]\nauditor_groups = [\"security\"]\n"
    ));
    Command::new("kill")
        .args(["-HUP", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(
        s.audit_has(&admin, "policy_loaded", "trigger", "sighup")
            .await
    );
    // Some history: one approved, one denied.
    for (table, verdict) in [("a", "approve"), ("b", "deny")] {
        let (_, r) = s
            .post(
                &alice,
                "/v1/check",
                json!({"action": "export", "resource": {"type": "Table", "id": table}}),
            )
            .await;
        let id = r["request"]["id"].as_str().unwrap().to_owned();
        let (st, r) = s.review(&bob, &id, verdict).await;
        assert_eq!(st, 200, "{r}");
    }
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (bob_cookie, bob_csrf) = http_sign_in(&http, &s.url, "bob", "bob's long password").await;
    let get = |cookie: &str, path: &str| {
        let req = http
            .get(format!("{}{path}", s.url))
            .header("cookie", format!("airlock_session={cookie}"));
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };

    // A review's confirmation is shown for the viewer's own verdict only.
    let (_, r) = s
        .post(
            &alice,
            "/v1/check",
            json!({"action": "export", "resource": {"type": "Table", "id": "c"}}),
        )
        .await;
    let unreviewed = r["request"]["id"].as_str().unwrap().to_owned();
    let (_, page) = get(&bob_cookie, &format!("/requests/{unreviewed}?done=deny")).await;
    assert!(!page.contains("this request."), "never reviewed: {page}");
    let (_, l) = s.get(&bob, "/v1/requests?status=approved").await;
    let approved = l["requests"][0]["id"].as_str().unwrap().to_owned();
    let (_, page) = get(&bob_cookie, &format!("/requests/{approved}?done=approve")).await;
    assert!(page.contains("You approved this request."), "{page}");

    // The audit explorer: verified, filterable, exportable.
    let (st, page) = get(&bob_cookie, "/audit").await;
    assert_eq!(st, 200, "{page}");
    assert!(page.contains("Chain verified up to record"), "{page}");
    let (_, page) = get(&bob_cookie, "/audit?kind=review&actor=bob").await;
    assert_eq!(page.matches("<td>review</td>").count(), 2, "{page}");
    assert!(!page.contains("<td>decision</td>"));
    let (st, lines) = get(&bob_cookie, "/audit/export?kind=review").await;
    assert_eq!(st, 200);
    let records: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{lines}");
    assert!(records.iter().all(|r| r["kind"] == "review"));
    assert!(
        records[0]["seq"].as_i64() < records[1]["seq"].as_i64(),
        "oldest first"
    );
    let (_, page) = get(
        &bob_cookie,
        "/audit?since=2000-01-01T00:00&until=2000-01-02T00:00",
    )
    .await;
    assert!(page.contains("0 records"), "time range filters: {page}");
    let (st, _) = get(&bob_cookie, "/audit?since=yesterday").await;
    assert_eq!(st, 400);
    // Only auditors read it.
    let (alice_cookie, alice_csrf) =
        http_sign_in(&http, &s.url, "alice", "alice's long password").await;
    let (st, _) = get(&alice_cookie, "/audit").await;
    assert_eq!(st, 403);
    let (st, _) = get(&alice_cookie, "/audit/export").await;
    assert_eq!(st, 403);

    // The policy page and simulator: decides, creates nothing.
    let (st, page) = get(&bob_cookie, "/policy").await;
    assert_eq!(st, 200);
    assert!(
        page.contains("exports-need-security") && page.contains("Last load"),
        "{page}"
    );
    let (_, before) = s.get(&admin, "/v1/requests?status=all").await;
    let simulate = |form: Vec<(&'static str, &'static str)>, csrf: &str, cookie: &str| {
        let mut form: Vec<(&str, String)> =
            form.into_iter().map(|(k, v)| (k, v.to_owned())).collect();
        form.push(("csrf", csrf.to_owned()));
        let req = http
            .post(format!("{}/policy/simulate", s.url))
            .header("cookie", format!("airlock_session={cookie}"))
            .form(&form);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (st, page) = simulate(
        vec![
            ("principal", "alice"),
            ("action", "export"),
            ("resource", "Table:orders"),
            ("params", "{\"sql\": \"select 1\"}"),
        ],
        &alice_csrf,
        &alice_cookie,
    )
    .await;
    assert_eq!(st, 200, "{page}");
    assert!(
        page.contains("approval_required") && page.contains("can approve: admin, bob, carol"),
        "{page}"
    );
    let (_, page) = simulate(
        vec![
            ("principal", "alice"),
            ("action", "read"),
            ("resource", "Table:orders"),
        ],
        &bob_csrf,
        &bob_cookie,
    )
    .await;
    assert!(page.contains("outcome allow"), "{page}");
    let (_, page) = simulate(
        vec![
            ("principal", "alice"),
            ("action", "read"),
            ("resource", "Table:orders"),
            ("context", "[1]"),
        ],
        &bob_csrf,
        &bob_cookie,
    )
    .await;
    assert!(
        page.contains("context: invalid type: sequence, expected a JSON object"),
        "{page}"
    );
    let (st, _) = simulate(
        vec![
            ("principal", "alice"),
            ("action", "read"),
            ("resource", "Table:orders"),
        ],
        "wrong",
        &bob_cookie,
    )
    .await;
    assert_eq!(st, 403, "the simulator's form needs its CSRF token too");
    let (_, after) = s.get(&admin, "/v1/requests?status=all").await;
    assert_eq!(
        before["requests"].as_array().unwrap().len(),
        after["requests"].as_array().unwrap().len()
    );

    // The overview's pictures.
    let (st, page) = get(&bob_cookie, "/overview").await;
    assert_eq!(st, 200);
    assert!(
        page.contains("<svg") && page.contains("Requests per day by outcome"),
        "{page}"
    );
    assert!(
        page.contains(": 1 approved") && page.contains(": 1 denied"),
        "{page}"
    );
    assert!(
        page.contains("&lt; 1 min: 2"),
        "both decided within a minute: {page}"
    );

    // My requests: alice's two, their states and the grant's.
    let (st, page) = get(&alice_cookie, "/mine").await;
    assert_eq!(st, 200);
    assert!(
        page.contains("status approved") && page.contains("status denied"),
        "{page}"
    );
    assert!(
        page.contains("ready, 0/1 used"),
        "the grant's state: {page}"
    );
    // Every page is served under the strict policy.
    let r = http
        .get(format!("{}/inbox", s.url))
        .header("cookie", format!("airlock_session={bob_cookie}"))
        .send()
        .await
        .unwrap();
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'")
            && csp.contains("script-src 'self'")
            && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    // Signing out ends the session (a POST with the token; a GET cannot).
    let r = http
        .post(format!("{}/logout", s.url))
        .header("cookie", format!("airlock_session={alice_cookie}"))
        .form(&[("csrf", alice_csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let r = http
        .get(format!("{}/mine", s.url))
        .header("cookie", format!("airlock_session={alice_cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303, "the old cookie signs nobody in");
    assert_eq!(r.headers()["location"], "/login");

    // Password guessing stops after five failures in a row, on every node
    // (the count is read from the audit log), even for the right password.
    set_password(&s, "carol", "carol's long password");
    let attempt_from = |password: &'static str, site: &'static str| {
        let (http, base) = (http.clone(), s.url.clone());
        async move {
            let form = http.get(format!("{base}/login")).send().await.unwrap();
            let token = form
                .headers()
                .get_all("set-cookie")
                .iter()
                .find_map(|v| {
                    v.to_str()
                        .ok()?
                        .strip_prefix("airlock_login_csrf=")
                        .map(|c| c.split(';').next().unwrap_or("").to_owned())
                })
                .unwrap();
            let r = http
                .post(format!("{base}/login"))
                .header("cookie", format!("airlock_login_csrf={token}"))
                .header("sec-fetch-site", site)
                .form(&[
                    ("csrf", token.as_str()),
                    ("username", "carol"),
                    ("password", password),
                ])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let attempt = |password: &'static str| attempt_from(password, "same-origin");
    // Login CSRF: a form posted from another port or a sibling host, which
    // can set the double-submit cookie itself, signs nobody in.
    for site in ["same-site", "cross-site"] {
        let (st, page) = attempt_from("carol's long password", site).await;
        assert_eq!(st, 403, "{site}: {page}");
    }
    for _ in 0..5 {
        assert_eq!(attempt("wrong guess").await.0, 401);
    }
    let (st, page) = attempt("carol's long password").await;
    assert_eq!(st, 403, "locked out");
    assert!(page.contains("too many failed sign-ins"), "{page}");

    // A tampered log shows where it broke.
    s.sql("UPDATE audit SET details = '{}' WHERE seq = 3");
    let (_, page) = get(&bob_cookie, "/audit").await;
    assert!(page.contains("Chain broken at record 3"), "{page}");
    s.child.kill().unwrap();
}

const RISK_POLICIES: &str = r#"
@id("reads")
permit(principal, action == Action::"read", resource);

@id("big-exports")
@approvers("security")
@quorum("2")
@grant_ttl("10m")
permit(principal, action == Action::"export", resource)
when { context has rows && context.rows > 10000 };

@id("orphaned")
@approvers("data-owners")
permit(principal, action == Action::"purge", resource);
"#;

/// Whether the page scrolls sideways.
async fn scrolls_sideways(b: &fantoccini::Client) -> bool {
    let w = b
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth];",
            vec![],
        )
        .await
        .unwrap();
    w[0].as_u64().unwrap() > w[1].as_u64().unwrap()
}

async fn js(b: &fantoccini::Client, script: &str) -> Value {
    b.execute(script, vec![]).await.unwrap()
}

async fn wait_for_text(b: &fantoccini::Client, css: &str, text: &str) -> String {
    let mut last = String::new();
    for _ in 0..100 {
        if let Ok(e) = b.find(fantoccini::Locator::Css(css)).await {
            last = e.text().await.unwrap_or_default();
            if last.contains(text) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css} never showed {text:?}; last: {last}");
}

/// Issue 14: an approver sees the risk before the buttons, what approving
/// does, live updates that keep a typed reason, a deny without a reason
/// caught on the page, a confirmation with the next request, outcomes
/// instead of countdowns, Revoke, the request nobody can approve flagged
/// (console and CLI), triage (order, title count, filters, keys), every
/// pending request for auditors, and no sideways scroll at 390 px.
#[tokio::test]
async fn console_shows_the_risk_first_and_keeps_work_while_live() {
    use fantoccini::Locator;
    let Some(driver) = Driver::start() else {
        return;
    };
    let s = Server::start_extra(
        &Db::Sqlite,
        RISK_POLICIES,
        "[web]\nauditor_groups = [\"security\"]\n",
    );
    let (alice, carol) = (s.key("alice", "user"), s.key("carol", "user"));
    set_password(&s, "bob", "bob's long password");
    set_password(&s, "mallory", "mallory's long password");
    let ask = |resource: &str, action: &str, sql: &str, rows: u64| {
        json!({
            "action": action, "resource": {"type": "Table", "id": resource},
            "params": {"sql": sql}, "context": {"rows": rows}, "reason": "quarterly numbers",
        })
    };
    let (_, big) = s
        .post(
            &alice,
            "/v1/check",
            ask(
                "orders",
                "export",
                "select * from orders where region = 'eu'",
                2_000_000,
            ),
        )
        .await;
    let big = big["request"]["id"].as_str().unwrap().to_owned();
    let (_, orphan) = s
        .post(
            &alice,
            "/v1/check",
            ask("tmp", "purge", "delete from tmp", 5),
        )
        .await;
    let orphan = orphan["request"]["id"].as_str().unwrap().to_owned();
    let (_, small) = s
        .post(
            &alice,
            "/v1/check",
            ask("users", "export", "select id from users", 50_000),
        )
        .await;
    let small = small["request"]["id"].as_str().unwrap().to_owned();

    // The CLI flags the request nobody can approve.
    let out = Command::new(BIN)
        .args(["requests", "show", &orphan])
        .env("AIRLOCK_URL", &s.url)
        .env("AIRLOCK_TOKEN", &alice)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("nobody can approve this: data-owners needs 1 approval(s) but has 0"),
        "{text}"
    );

    // And /metrics counts it, for admins' alerts.
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("airlock_unapprovable_requests 1"),
        "{metrics}"
    );

    let b = driver.browser(1280, 900).await;
    sign_in(&b, &s.url, "bob", "bob's long password").await;
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("html[data-live-ready]"))
        .await
        .unwrap();
    // Inbox: every pending request for an auditor, key facts on one line,
    // the orphan flagged, the count in the tab title.
    let cards = wait_for_text(&b, "ul.requests", "2,000,000").await;
    assert!(cards.contains("rows: 2,000,000 (limit 10,000)"), "{cards}");
    assert!(cards.contains("rows: 50,000 (limit 10,000)"), "{cards}");
    assert!(cards.contains("nobody can approve this"), "{cards}");
    assert!(b.title().await.unwrap().starts_with("(3) Inbox"));
    assert_eq!(
        js(
            &b,
            "return document.querySelector('nav a[aria-current=page]').textContent"
        )
        .await,
        "Inbox"
    );
    // Filters.
    b.goto(&format!("{}/inbox?action=purge", s.url))
        .await
        .unwrap();
    let only = wait_for_text(&b, "ul.requests", "purge").await;
    assert!(!only.contains("export"), "{only}");
    // Keys: j focuses the first card, Enter opens it.
    b.goto(&format!("{}/inbox", s.url)).await.unwrap();
    wait_for_text(&b, "ul.requests", "2,000,000").await;
    let body = b.find(Locator::Css("body")).await.unwrap();
    body.send_keys("j").await.unwrap();
    let focused = js(&b, "return document.activeElement.getAttribute('href')").await;
    assert!(
        focused.as_str().unwrap().starts_with("/requests/req_"),
        "{focused}"
    );

    // The request page: the risk before the buttons.
    b.goto(&format!("{}/requests/{big}", s.url)).await.unwrap();
    let page = b.source().await.unwrap();
    let (risk, button) = (
        page.find("class=\"risk\"").unwrap(),
        page.find("class=\"approve\"").unwrap(),
    );
    assert!(risk < button, "facts come before the buttons");
    assert!(
        page.contains("<span class=\"kw\">SELECT</span>"),
        "SQL highlighted"
    );
    assert!(page.contains("limit 10,000, crossed"), "the limit crossed");
    let consequence = b
        .find(Locator::Css("#consequence"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        consequence,
        "Approve → 1 of 2 from security; when all are met alice gets one use, valid 10m"
    );
    std::fs::write(
        screenshot_dir().join("request-risk.png"),
        b.screenshot().await.unwrap(),
    )
    .unwrap();

    // A typed reason and the focus survive a live update.
    let reason = b.find(Locator::Css("textarea[name=reason]")).await.unwrap();
    reason.send_keys("checked the ticket").await.unwrap();
    let (st, r) = s.review(&carol, &big, "approve").await;
    assert_eq!(st, 200, "{r}");
    wait_for_text(&b, "#state", "carol approved").await;
    assert_eq!(
        js(
            &b,
            "return [document.activeElement.id, document.getElementById('reason').value]"
        )
        .await,
        json!(["reason", "checked the ticket"])
    );

    // Deny without a reason is caught on the page.
    reason.clear().await.unwrap();
    b.find(Locator::Css("button.deny"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(
        js(&b, "return document.getElementById('reason-needed').hidden").await,
        json!(false)
    );
    assert!(b.current_url().await.unwrap().path().ends_with(&big));
    let (_, r) = s.get(&alice, &format!("/v1/requests/{big}")).await;
    assert_eq!(r["reviews"].as_array().unwrap().len(), 1, "nothing sent");

    // Approve: a confirmation, what happens next, the next request.
    reason.send_keys("checked the ticket").await.unwrap();
    b.find(Locator::Css("button.approve"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let done = wait_for_text(&b, ".done", "You approved").await;
    assert!(
        done.contains("alice has a grant for exactly this action, valid 10m"),
        "{done}"
    );
    let next = b.find(Locator::Css("a.next")).await.unwrap();
    let next_href = next.attr("href").await.unwrap().unwrap();
    assert!(
        next_href.ends_with(&small) || next_href.ends_with(&orphan),
        "{next_href}"
    );
    // Decided: the outcome, not a countdown; no form; Revoke offered.
    let state = b
        .find(Locator::Css("#state"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        state.contains("Approved.") && !state.contains("left"),
        "{state}"
    );
    assert!(b.find(Locator::Css("button.approve")).await.is_err());
    b.find(Locator::Css("section.revoke button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(&b, "#state", "Revoked").await;

    // a approves (after asking) from the keyboard.
    b.goto(&format!("{}/requests/{small}", s.url))
        .await
        .unwrap();
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("html[data-live-ready]"))
        .await
        .unwrap();
    b.find(Locator::Css("body"))
        .await
        .unwrap()
        .send_keys("a")
        .await
        .unwrap();
    let asked = b.get_alert_text().await.unwrap();
    assert!(asked.contains("Approve →"), "{asked}");
    b.accept_alert().await.unwrap();
    wait_for_text(&b, ".done", "You approved").await;
    let (_, r) = s.get(&alice, &format!("/v1/requests/{small}")).await;
    assert_eq!(r["reviews"][0]["reviewer"], "bob");

    // Reviewed by me, and decided.
    b.goto(&format!("{}/inbox?show=reviewed", s.url))
        .await
        .unwrap();
    let reviewed = b
        .find(Locator::Css("#live"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        reviewed.contains("Table:orders")
            && reviewed.contains("Table:users")
            && !reviewed.contains("Table:tmp"),
        "{reviewed}"
    );
    assert!(reviewed.contains("you approved"), "{reviewed}");
    b.goto(&format!("{}/inbox?show=decided", s.url))
        .await
        .unwrap();
    let decided = b
        .find(Locator::Css("#live"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        decided.contains("Table:orders")
            && decided.contains("revoked")
            && !decided.contains("Table:users"),
        "{decided}"
    );
    // Borders and the focus ring stand out at 3:1 or more.
    let ratios = js(
        &b,
        r#"function lum(c) {
             var v = c.match(/\d+/g).slice(0, 3).map(function (x) {
               x = x / 255; return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4); });
             return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]; }
           function ratio(a, b) { var x = lum(a), y = lum(b); return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05); }
           var bg = getComputedStyle(document.body).backgroundColor;
           var card = document.querySelector('li.request');
           var link = card.querySelector('a.title');
           link.focus();
           return [ratio(getComputedStyle(card).borderTopColor, bg),
                   ratio(getComputedStyle(link).outlineColor, bg)];"#,
    )
    .await;
    for r in ratios.as_array().unwrap() {
        assert!(r.as_f64().unwrap() >= 3.0, "contrast {ratios}");
    }

    // The orphan is flagged on its page.
    b.goto(&format!("{}/requests/{orphan}", s.url))
        .await
        .unwrap();
    wait_for_text(&b, "div.error", "Nobody can approve this request").await;
    b.close().await.unwrap();

    // 390 px: no page scrolls sideways.
    let phone = driver.phone().await;
    sign_in(&phone, &s.url, "bob", "bob's long password").await;
    assert_eq!(js(&phone, "return window.innerWidth").await, 390);
    for path in [
        "/inbox".to_owned(),
        format!("/requests/{big}"),
        format!("/requests/{small}"),
        format!("/requests/{orphan}"),
        "/inbox?show=decided".to_owned(),
        "/mine".to_owned(),
        "/overview".to_owned(),
        "/policy".to_owned(),
        "/audit".to_owned(),
        "/notifications".to_owned(),
    ] {
        phone.goto(&format!("{}{path}", s.url)).await.unwrap();
        assert!(
            !scrolls_sideways(&phone).await,
            "{path} scrolls sideways at 390 px"
        );
        if path.starts_with("/requests/") || path == "/inbox" {
            let name = format!(
                "phone-{}.png",
                path.trim_start_matches('/').replace('/', "-")
            );
            std::fs::write(
                screenshot_dir().join(name),
                phone.screenshot().await.unwrap(),
            )
            .unwrap();
        }
    }
    phone.close().await.unwrap();

    // Dark mode follows the system.
    let dark = driver.dark().await;
    sign_in(&dark, &s.url, "bob", "bob's long password").await;
    assert_eq!(
        js(&dark, "return [matchMedia('(prefers-color-scheme: dark)').matches, getComputedStyle(document.body).backgroundColor]").await,
        json!([true, "rgb(13, 17, 23)"])
    );
    dark.close().await.unwrap();

    // Someone who is not an auditor is not shown links they cannot open,
    // and is told in plain words where they reach one.
    let m = driver.browser(1280, 900).await;
    sign_in(&m, &s.url, "mallory", "mallory's long password").await;
    let nav = m
        .find(Locator::Css("nav"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !nav.contains("Audit") && !nav.contains("Notifications"),
        "{nav}"
    );
    m.goto(&format!("{}/audit", s.url)).await.unwrap();
    let refusal = m
        .find(Locator::Css("p.error"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(refusal.contains("auditor_groups"), "{refusal}");
    m.close().await.unwrap();
}
