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
    let phone = driver.browser(390, 844).await;
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
    assert!(page.contains("context must be a JSON object"), "{page}");
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
    let attempt = |password: &'static str| {
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
