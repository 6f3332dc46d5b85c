//! Step-up: `@step_up("totp")` approvals need a fresh code from the
//! reviewer's authenticator on every channel, each code accepted once (on
//! every node), the secret sealed at rest.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;
use totp_rs::TOTP;

use crate::support::*;

const STEP_UP_POLICIES: &str = r#"
@id("reads")
permit(principal, action == Action::"read", resource);

@id("exports-need-a-code")
@approvers("security")
@step_up("totp")
permit(principal, action == Action::"export", resource);
"#;

pub(crate) fn enroll(s: &Server, user: &str) -> (String, TOTP) {
    let out = Command::new(BIN)
        .args(["users", "totp", "enroll", "--config"])
        .arg(s.config())
        .args(["--user", user])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uri = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let totp = TOTP::from_url(&uri).unwrap();
    (uri, totp)
}

/// The current code, once it is not one already spent (codes change every
/// 30 s).
pub(crate) async fn fresh(totp: &TOTP, spent: &[String]) -> String {
    loop {
        let c = totp.generate_current().unwrap();
        if !spent.contains(&c) {
            return c;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

async fn ask(s: &Server, key: &str, table: &str) -> String {
    let (st, r) = s
        .post(
            key,
            "/v1/check",
            json!({"action": "export", "resource": {"type": "Table", "id": table}}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["request"]["step_up"], "totp", "{r}");
    r["request"]["id"].as_str().unwrap().to_owned()
}

async fn approve(s: &Server, key: &str, id: &str, totp: Option<&str>) -> (u16, serde_json::Value) {
    let mut body = json!({"verdict": "approve"});
    if let Some(code) = totp {
        body["totp"] = json!(code);
    }
    s.post(key, &format!("/v1/requests/{id}/reviews"), body)
        .await
}

async fn a_code_is_needed_accepted_once_and_sealed(db: Db) {
    let s = Server::start_with(&db, STEP_UP_POLICIES);
    let (alice, bob) = (s.key("alice", "user"), s.key("bob", "user"));

    // Not enrolled: told to enrol.
    let first = ask(&s, &alice, "t1").await;
    let (st, r) = approve(&s, &bob, &first, Some("123456")).await;
    assert_eq!(st, 403, "{r}");
    assert_eq!(r["error"]["code"], "step_up_required");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("enrol"),
        "{r}"
    );

    let (uri, totp) = enroll(&s, "bob");
    assert!(uri.starts_with("otpauth://totp/Airlock:bob?"), "{uri}");
    // No code, a wrong code: refused, saying what to do; nothing recorded.
    let (st, r) = approve(&s, &bob, &first, None).await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (403, Some("step_up_required")),
        "{r}"
    );
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/requests/"),
        "the console link: {r}"
    );
    let code = totp.generate_current().unwrap();
    let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
    let (st, r) = approve(&s, &bob, &first, Some(&wrong)).await;
    assert_eq!(st, 403, "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("wrong"),
        "{r}"
    );
    let (_, r) = s.get(&alice, &format!("/v1/requests/{first}")).await;
    assert!(r["reviews"].as_array().unwrap().is_empty(), "{r}");

    // The current code approves, once.
    let (st, r) = approve(&s, &bob, &first, Some(&code)).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["status"], "approved");
    let second = ask(&s, &alice, "t2").await;
    let (st, r) = approve(&s, &bob, &second, Some(&code)).await;
    assert_eq!(st, 403, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already used"),
        "{r}"
    );
    // Nor is the code of the step before it, which the window still holds.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let before = totp.generate(now - 30);
    if before != code && totp.generate(now) == code {
        let (st, r) = approve(&s, &bob, &second, Some(&before)).await;
        assert_eq!(st, 403, "{r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap()
                .contains("already used"),
            "{r}"
        );
    }
    // A deny needs no code.
    let (st, r) = s.review(&bob, &second, "deny").await;
    assert_eq!(st, 200, "{r}");

    // Another node of the deployment refuses the used code too.
    let mut spent = vec![code.clone()];
    if matches!(db, Db::Postgres(_)) {
        let other = s.join();
        let third = ask(&s, &alice, "t3").await;
        let code = fresh(&totp, &spent).await;
        spent.push(code.clone());
        let fourth = ask(&other, &alice, "t4").await;
        let (st, _) = approve(&s, &bob, &third, Some(&code)).await;
        assert_eq!(st, 200);
        let (st, r) = approve(&other, &bob, &fourth, Some(&code)).await;
        assert_eq!(st, 403, "replayed on another node: {r}");
    }

    // The CLI asks for the code.
    let fifth = ask(&s, &alice, "t5").await;
    let next = fresh(&totp, &spent).await;
    let mut child = Command::new(BIN)
        .args(["requests", "approve", &fifth])
        .env("AIRLOCK_URL", &s.url)
        .env("AIRLOCK_TOKEN", &bob)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{next}").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("authenticator"), "prompted: {err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("approved"));

    // The secret is sealed at rest: neither it nor its base32 is in the
    // database file.
    if matches!(db, Db::Sqlite) {
        let raw = std::fs::read(s.dir.path().join("data/airlock.db")).unwrap();
        let b32 = totp.get_secret_base32();
        assert!(!raw.windows(b32.len()).any(|w| w == b32.as_bytes()));
        assert!(!raw
            .windows(totp.secret.len())
            .any(|w| w == totp.secret.as_slice()));
    }
    let admin = s.key("admin", "admin");
    assert!(s.audit_has(&admin, "totp_enrolled", "user", "bob").await);
}

on_both_stores!(
    a_code_is_needed_accepted_once_and_sealed,
    wrong_codes_stop_every_code_for_a_while
);

/// Guessing stops: after five wrong codes (each on record) no code of that
/// reviewer's is checked for a while, the right one included; other
/// reviewers are not affected. Without the count 3,000 guesses took five
/// seconds and the right code was still taken.
async fn wrong_codes_stop_every_code_for_a_while(db: Db) {
    let s = Server::start_with(&db, STEP_UP_POLICIES);
    let (alice, bob, carol) = (
        s.key("alice", "user"),
        s.key("bob", "user"),
        s.key("carol", "user"),
    );
    let admin = s.key("admin", "admin");
    let (_, bob_totp) = enroll(&s, "bob");
    let (_, carol_totp) = enroll(&s, "carol");
    let id = ask(&s, &alice, "guessed").await;
    let code = bob_totp.generate_current().unwrap();
    let wrong = |i: u32| format!("{:06}", (code.parse::<u32>().unwrap() + 10 + i) % 1_000_000);
    // Twenty at once: five are checked (and refused), the rest are not
    // (a count read before any failure was recorded let them all through).
    let guesses: Vec<_> = (0..20)
        .map(|i| {
            let (url, bob, id, guess) = (s.url.clone(), bob.clone(), id.clone(), wrong(i));
            tokio::spawn(async move {
                let r = reqwest::Client::new()
                    .post(format!("{url}/v1/requests/{id}/reviews"))
                    .bearer_auth(&bob)
                    .header("content-type", "application/json")
                    .body(json!({"verdict": "approve", "totp": guess}).to_string())
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                // Told when codes are checked again: within the 15 minutes.
                let retry = r
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
                assert_eq!(status == 429, retry.is_some(), "{retry:?}");
                assert!(retry.is_none_or(|s| (1..=900).contains(&s)), "{retry:?}");
                let body: serde_json::Value = r.json().await.unwrap();
                (
                    status,
                    body["error"]["code"].as_str().unwrap_or("").to_owned(),
                )
            })
        })
        .collect();
    let mut answers = Vec::new();
    for g in guesses {
        answers.push(g.await.unwrap());
    }
    let checked = answers
        .iter()
        .filter(|a| **a == (403, "step_up_required".to_owned()))
        .count();
    let stopped = answers
        .iter()
        .filter(|a| **a == (429, "too_many_attempts".to_owned()))
        .count();
    assert_eq!((checked, stopped), (5, 15), "{answers:?}");
    let (st, r) = approve(&s, &bob, &id, Some(&code)).await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (429, Some("too_many_attempts")),
        "the right code after five wrong ones: {r}"
    );
    let failed = s.audit_of(&admin, "step_up_failed", 5).await;
    assert_eq!(failed.len(), 5, "{failed:?}");
    assert!(failed
        .iter()
        .all(|r| r["subject"] == "bob" && r["details"]["request"] == id.as_str()));
    // Another reviewer approves as before.
    let code = carol_totp.generate_current().unwrap();
    let (st, r) = approve(&s, &carol, &id, Some(&code)).await;
    assert_eq!((st, r["status"].as_str()), (200, Some("approved")), "{r}");
}

/// An approval without step-up does not count where a step-up is asked
/// later: not at consumption (the action as described then needs a code),
/// and not on a pending request whose requirement was raised to one.
#[tokio::test]
async fn an_approval_without_step_up_does_not_count_where_one_is_asked_later() {
    const POLICIES: &str = r#"
@id("bulk-plain") @approvers("security")
permit(principal, action == Action::"bulk", resource);
@id("bulk-huge") @approvers("security") @step_up("totp")
permit(principal, action == Action::"bulk", resource) when { context has rows && context.rows > 1000000 };
@id("pair-plain") @approvers("security") @quorum("2")
permit(principal, action == Action::"pair", resource);
@id("pair-huge") @approvers("security") @quorum("2") @step_up("totp")
permit(principal, action == Action::"pair", resource) when { context has rows && context.rows > 1000000 };
"#;
    let s = Server::start_with(&Db::Sqlite, POLICIES);
    let (alice, bob, carol) = (
        s.key("alice", "user"),
        s.key("bob", "user"),
        s.key("carol", "user"),
    );
    let (_, carol_totp) = enroll(&s, "carol");
    let action = |name: &str, rows: u64| {
        json!({"principal": "alice", "action": name,
               "resource": {"type": "Table", "id": "t"}, "context": {"rows": rows}})
    };
    // Approved for ten rows without a code; spent on five million.
    let (_, r) = s.post(&alice, "/v1/check", action("bulk", 10)).await;
    assert!(r["request"]["step_up"].is_null(), "{r}");
    let id = r["request"]["id"].as_str().unwrap().to_owned();
    let (st, r) = approve(&s, &bob, &id, None).await;
    assert_eq!((st, r["status"].as_str()), (200, Some("approved")), "{r}");
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    let token = r["grant"]["token"].as_str().unwrap().to_owned();
    let (st, r) = s
        .post(
            &alice,
            "/v1/grants/consume",
            json!({"token": token, "action": action("bulk", 5_000_000)}),
        )
        .await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (403, Some("action_mismatch")),
        "five million rows on an approval without step-up: {r}"
    );
    // The same grant still carries what was approved.
    let (st, r) = s
        .post(
            &alice,
            "/v1/grants/consume",
            json!({"token": token, "action": action("bulk", 10)}),
        )
        .await;
    assert_eq!(st, 200, "{r}");

    // Quorum two: bob approves without a code, then the request is raised
    // to a step-up; carol's approval with a code is one of two.
    let (_, r) = s.post(&alice, "/v1/check", action("pair", 10)).await;
    let id = r["request"]["id"].as_str().unwrap().to_owned();
    let (st, _) = approve(&s, &bob, &id, None).await;
    assert_eq!(st, 200);
    let (_, r) = s.post(&alice, "/v1/check", action("pair", 5_000_000)).await;
    assert_eq!(r["request"]["step_up"], "totp", "raised: {r}");
    let code = carol_totp.generate_current().unwrap();
    let (st, r) = approve(&s, &carol, &id, Some(&code)).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["status"], "pending", "bob's approval had no step-up: {r}");
    assert_eq!(r["thresholds"][0]["approvals"], 1, "{r}");
    assert_eq!(r["reviews"][1]["step_up"], "totp", "{r}");
    // Bob may approve again, now with a code: his approval is replaced,
    // not refused as a second one (the request would be stuck).
    let (st, r) = approve(&s, &bob, &id, None).await;
    assert_eq!(st, 403, "still no code: {r}");
    let (_, bob_totp) = enroll(&s, "bob");
    let code = bob_totp.generate_current().unwrap();
    let (st, r) = approve(&s, &bob, &id, Some(&code)).await;
    assert_eq!((st, r["status"].as_str()), (200, Some("approved")), "{r}");
    let reviews = r["reviews"].as_array().unwrap();
    assert_eq!(reviews.len(), 2, "replaced, not added: {r}");
    let bobs = reviews.iter().find(|v| v["reviewer"] == "bob").unwrap();
    assert_eq!(bobs["step_up"], "totp", "{r}");
}

/// The console: a code field on step-up requests, and enrolment on the
/// Account page (with its QR code), whose replacement needs a current code.
#[tokio::test]
async fn the_console_asks_for_the_code_and_enrols() {
    let s = Server::start_with(&Db::Sqlite, STEP_UP_POLICIES);
    let alice = s.key("alice", "user");
    set_password(&s, "bob", "bob's long password");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (cookie, csrf) = http_sign_in(&http, &s.url, "bob", "bob's long password").await;
    let post = |path: &str, form: Vec<(&str, String)>| {
        let req = http
            .post(format!("{}{path}", s.url))
            .header("cookie", format!("airlock_session={cookie}"))
            .form(&form);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let get = |path: &str| {
        let req = http
            .get(format!("{}{path}", s.url))
            .header("cookie", format!("airlock_session={cookie}"));
        async move { req.send().await.unwrap().text().await.unwrap() }
    };
    assert!(get("/account")
        .await
        .contains("No authenticator is enrolled"));
    // A session that signed in long ago cannot add a second factor (a
    // stolen one would enrol its own).
    let db = rusqlite::Connection::open(s.dir.path().join("data/airlock.db")).unwrap();
    let signed_in: String = db
        .query_row("SELECT created_at FROM sessions", [], |r| r.get(0))
        .unwrap();
    db.execute(
        "UPDATE sessions SET created_at = '2026-01-01T00:00:00.000Z'",
        [],
    )
    .unwrap();
    let (st, page) = post("/account/totp", vec![("csrf", csrf.clone())]).await;
    assert_eq!(st, 403, "{page}");
    assert!(page.contains("recent sign-in"), "{page}");
    let (st, _) = post("/account/webauthn/start", vec![("csrf", csrf.clone())]).await;
    assert_eq!(st, 403);
    db.execute("UPDATE sessions SET created_at = ?1", [&signed_in])
        .unwrap();
    let (st, page) = post("/account/totp", vec![("csrf", csrf.clone())]).await;
    assert_eq!(st, 200, "{page}");
    assert!(
        page.contains("<svg") && page.contains("otpauth://totp/Airlock:bob"),
        "{page}"
    );
    let uri = page
        .split("otpauth://")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .map(|u| format!("otpauth://{}", u.replace("&amp;", "&")))
        .unwrap();
    let totp = TOTP::from_url(&uri).unwrap();
    // Replacing it needs a current code: a stolen session cannot swap in
    // its own authenticator.
    let (st, page) = post("/account/totp", vec![("csrf", csrf.clone())]).await;
    assert_eq!(st, 403);
    assert!(page.contains("replacing your authenticator"), "{page}");

    let id = ask(&s, &alice, "t1").await;
    let page = get(&format!("/requests/{id}")).await;
    assert!(page.contains("name=\"totp\""), "a code field");
    assert!(
        page.contains("needs a code from your authenticator"),
        "at the button"
    );
    let review = format!("/requests/{id}/review");
    let (st, _) = post(
        &review,
        vec![("csrf", csrf.clone()), ("verdict", "approve".into())],
    )
    .await;
    assert_eq!(st, 403, "no code");
    let code = totp.generate_current().unwrap();
    let (st, _) = post(
        &review,
        vec![
            ("csrf", csrf.clone()),
            ("verdict", "approve".into()),
            ("totp", code),
        ],
    )
    .await;
    assert_eq!(st, 303);
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert_eq!(r["status"], "approved");
    assert_eq!(r["reviews"][0]["channel"], "web");
}

/// Chromium's virtual authenticator (the WebDriver WebAuthn extension):
/// a CTAP2 security key that always verifies its user.
#[derive(Debug)]
struct AddVirtualAuthenticator;

impl fantoccini::wd::WebDriverCompatibleCommand for AddVirtualAuthenticator {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/webauthn/authenticator",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        let body = json!({
            "protocol": "ctap2", "transport": "usb", "hasResidentKey": true,
            "hasUserVerification": true, "isUserConsenting": true, "isUserVerified": true,
        });
        (http::Method::POST, Some(body.to_string()))
    }
}

const WEBAUTHN_POLICIES: &str = r#"
@id("exports-need-a-key")
@approvers("security")
@step_up("webauthn")
permit(principal, action == Action::"export", resource);
"#;

/// Browsers take no IP address as a WebAuthn RP id, so a server whose
/// public URL is http://127.0.0.1:PORT cannot ask for a key: approving is
/// refused as a step-up not met (403), not as the reviewer's bad input,
/// and says why.
#[tokio::test]
async fn a_security_key_approval_on_a_server_at_an_ip_address_is_a_step_up_not_met() {
    let s = Server::start_with(&Db::Sqlite, WEBAUTHN_POLICIES);
    let alice = s.key("alice", "user");
    let bob = s.key("bob", "user");
    let id = ask_export(&s, &alice).await;
    let (st, r) = approve(&s, &bob, &id, None).await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (403, Some("step_up_required")),
        "{r}"
    );
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot ask for"),
        "{r}"
    );
    // A deny needs no step-up.
    let (st, r) = s.review(&bob, &id, "deny").await;
    assert_eq!((st, r["status"].as_str()), (200, Some("denied")), "{r}");
}

async fn ask_export(s: &Server, key: &str) -> String {
    let (st, r) = s
        .post(
            key,
            "/v1/check",
            json!({"action": "export", "resource": {"type": "Table", "id": "t"}}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["request"]["step_up"], "webauthn");
    r["request"]["id"].as_str().unwrap().to_owned()
}

/// `@step_up("webauthn")`: a security key registered on the Account page
/// approves in the console (Chromium with a virtual authenticator); the
/// API cannot approve without one.
#[tokio::test]
async fn a_security_key_approves_in_the_console() {
    use fantoccini::Locator;
    let Some(driver) = Driver::start() else {
        return;
    };
    // WebAuthn needs a domain name or localhost, not an IP address: the
    // console's public URL is http://localhost:PORT.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/main.cedar"), WEBAUTHN_POLICIES).unwrap();
    std::fs::write(
        dir.path().join("airlock.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://localhost:{port}\"\ndata_dir = {:?}\n\n[storage]\nurl = \"sqlite://data/airlock.db\"\n\n[policy]\ndir = \"policies\"\n{USERS}",
            data.display().to_string()
        ),
    )
    .unwrap();
    let s = Server::serve(dir, &Db::Sqlite, 1, &data);
    let base = format!("http://localhost:{port}");
    let alice = s.key("alice", "user");
    let bob_key = s.key("bob", "user");
    set_password(&s, "bob", "bob's long password");

    let b = driver.browser(1280, 900).await;
    b.issue_cmd(AddVirtualAuthenticator).await.unwrap();
    sign_in(&b, &base, "bob", "bob's long password").await;
    b.goto(&format!("{base}/account")).await.unwrap();
    b.find(Locator::Css("#webauthn-register button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait()
        .at_most(std::time::Duration::from_secs(15))
        .for_element(Locator::XPath(
            "//p[@id='webauthn-status' and contains(., 'A security key is registered')]",
        ))
        .await
        .expect("the security key is registered");

    let id = {
        let (st, r) = s
            .post(
                &alice,
                "/v1/check",
                json!({"action": "export", "resource": {"type": "Table", "id": "t"}}),
            )
            .await;
        assert_eq!(st, 200, "{r}");
        assert_eq!(r["request"]["step_up"], "webauthn");
        r["request"]["id"].as_str().unwrap().to_owned()
    };
    // The API cannot give what only a security key in the console can.
    let (st, r) = approve(&s, &bob_key, &id, Some("123456")).await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (403, Some("step_up_required")),
        "{r}"
    );
    assert!(
        r["error"]["message"].as_str().unwrap().contains("console"),
        "{r}"
    );

    b.goto(&format!("{base}/requests/{id}")).await.unwrap();
    let said = b
        .find(Locator::Css("#consequence"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(said.contains("needs your security key"), "{said}");
    b.find(Locator::Css("button.approve"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait()
        .at_most(std::time::Duration::from_secs(15))
        .for_element(Locator::Css(".done"))
        .await
        .expect("approved with the security key");
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert_eq!(r["status"], "approved", "{r}");
    assert_eq!(r["reviews"][0]["channel"], "web");
    let admin = s.key("admin", "admin");
    assert!(
        s.audit_has(&admin, "webauthn_registered", "user", "bob")
            .await
    );
    b.close().await.unwrap();
}
