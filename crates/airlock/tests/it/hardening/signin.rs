//! Sign-in and reads that leak: password checks serialised per user name,
//! attempts limited per address, the simulator and overview scoped for
//! non-auditors, event streams that end with their session, and bounded
//! open waits and streams per user.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// A server whose `[server]` table gets `server_extra` and whose config
/// gets `extra` (TOML) after the users.
fn start_server_extra(db: &Db, policies: &str, server_extra: &str, extra: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/main.cedar"), policies).unwrap();
    write_config(dir.path(), db, &format!("{USERS}\n{extra}"), 1, &data);
    let path = dir.path().join("airlock.toml");
    let cfg = std::fs::read_to_string(&path).unwrap().replacen(
        "[server]\n",
        &format!("[server]\n{server_extra}\n"),
        1,
    );
    std::fs::write(&path, cfg).unwrap();
    Server::serve(dir, db, 1, &data)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The sign-in form's anti-CSRF token (its cookie and field hold the same).
async fn login_token(http: &reqwest::Client, base: &str) -> String {
    let form = http.get(format!("{base}/login")).send().await.unwrap();
    form.headers()
        .get_all("set-cookie")
        .iter()
        .find_map(|v| {
            v.to_str()
                .ok()?
                .strip_prefix("airlock_login_csrf=")
                .map(|c| c.split(';').next().unwrap_or("").to_owned())
        })
        .unwrap()
}

/// One password sign-in: its status and page.
async fn attempt(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    user: &str,
    password: &str,
) -> (u16, String) {
    let r = http
        .post(format!("{base}/login"))
        .header("cookie", format!("airlock_login_csrf={token}"))
        .form(&[("csrf", token), ("username", user), ("password", password)])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// While one user name is hammered by many parallel attempts, a sign-in
/// for another name goes ahead instead of queueing behind them (before,
/// one lock per node served every attempt in arrival order, so it
/// finished only after the whole burst). The burst uses bob's right
/// password so that every attempt checks a hash: wrong ones would be cut
/// short by the lockout after five, and the queue would drain too fast to
/// tell anything.
#[tokio::test]
async fn hammering_one_user_name_does_not_hold_up_another() {
    let s = Server::start_extra(
        &Db::Sqlite,
        CONSOLE_POLICIES,
        "[web]\nsign_in_attempts_per_minute_per_ip = 100000\n",
    );
    set_password(&s, "bob", "bob's long password");
    set_password(&s, "alice", "alice's long password");
    let http = client();
    let token = login_token(&http, &s.url).await;
    const BURST: usize = 60;
    let done = Arc::new(AtomicUsize::new(0));
    let burst: Vec<_> = (0..BURST)
        .map(|_| {
            let (http, base, token, done) =
                (http.clone(), s.url.clone(), token.clone(), done.clone());
            tokio::spawn(async move {
                let (st, _) = attempt(&http, &base, &token, "bob", "bob's long password").await;
                done.fetch_add(1, Ordering::SeqCst);
                st
            })
        })
        .collect();
    // Let the burst arrive first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (st, page) = tokio::time::timeout(
        Duration::from_secs(60),
        attempt(&http, &s.url, &token, "alice", "alice's long password"),
    )
    .await
    .expect("alice's sign-in completes");
    let finished = done.load(Ordering::SeqCst);
    assert_eq!(st, 303, "alice is signed in: {page}");
    assert!(
        finished < BURST,
        "alice did not wait for the whole burst at bob ({finished} of {BURST} had finished)"
    );
    for b in burst {
        let st = tokio::time::timeout(Duration::from_secs(120), b)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(st, 303, "bob's attempts are served in turn");
    }
}

/// More attempts from one address than `[web]
/// sign_in_attempts_per_minute_per_ip` get 429 without the password being
/// checked (even the right one), recorded once as `sign_in_locked`.
#[tokio::test]
async fn a_burst_of_sign_ins_from_one_address_gets_429() {
    let s = Server::start_extra(
        &Db::Sqlite,
        CONSOLE_POLICIES,
        "[web]\nsign_in_attempts_per_minute_per_ip = 3\n",
    );
    let admin = s.key("admin", "admin");
    set_password(&s, "bob", "bob's long password");
    let http = client();
    let token = login_token(&http, &s.url).await;
    for _ in 0..3 {
        let (st, _) = attempt(&http, &s.url, &token, "nobody", "guess").await;
        assert_eq!(st, 401);
    }
    for _ in 0..3 {
        let (st, page) = attempt(&http, &s.url, &token, "bob", "bob's long password").await;
        assert_eq!(st, 429, "over the limit, even the right password: {page}");
        assert!(page.contains("Too many sign-in attempts"), "{page}");
        assert!(
            page.contains("name=\"username\""),
            "the sign-in form is shown again: {page}"
        );
    }
    let (_, a) = s.get(&admin, "/v1/audit?limit=10000").await;
    let records = a["records"].as_array().unwrap();
    let limited: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["kind"] == "sign_in_locked"
                && r["details"]["why"] == "too many attempts from this address"
        })
        .collect();
    assert_eq!(limited.len(), 1, "recorded once a minute: {limited:?}");
    assert_eq!(limited[0]["details"]["source"], "127.0.0.1");
    assert!(
        !records
            .iter()
            .any(|r| r["kind"] == "sign_in"
                || (r["subject"] == "bob" && r["kind"] == "sign_in_failed")),
        "bob's password was never checked"
    );
}

/// Signs in and returns the session cookie and CSRF token.
async fn session(s: &Server, user: &str, password: &str) -> (String, String) {
    http_sign_in(&client(), &s.url, user, password).await
}

async fn page(s: &Server, cookie: &str, path: &str) -> (u16, String) {
    let r = client()
        .get(format!("{}{path}", s.url))
        .header("cookie", format!("airlock_session={cookie}"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn simulate(s: &Server, cookie: &str, csrf: &str, principal: &str) -> (u16, String) {
    let r = client()
        .post(format!("{}/policy/simulate", s.url))
        .header("cookie", format!("airlock_session={cookie}"))
        .form(&[
            ("csrf", csrf),
            ("principal", principal),
            ("action", "export"),
            ("resource", "Table:orders"),
        ])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The simulator answers non-auditors only about themselves, and the
/// overview shows them only their own requests; auditors see everyone.
#[tokio::test]
async fn the_simulator_and_overview_show_others_only_to_auditors() {
    let s = Server::start_extra(
        &Db::Sqlite,
        CONSOLE_POLICIES,
        "[web]\nauditor_groups = [\"security\"]\n",
    );
    let (alice, bob) = (s.key("alice", "user"), s.key("bob", "user"));
    set_password(&s, "mallory", "mallory's long password");
    set_password(&s, "bob", "bob's long password");
    let (_, r) = s
        .post(
            &alice,
            "/v1/check",
            json!({"action": "export", "resource": {"type": "Table", "id": "a"}}),
        )
        .await;
    let id = r["request"]["id"].as_str().unwrap().to_owned();
    let (st, r) = s.review(&bob, &id, "approve").await;
    assert_eq!(st, 200, "{r}");

    let (m_cookie, m_csrf) = session(&s, "mallory", "mallory's long password").await;
    let (b_cookie, b_csrf) = session(&s, "bob", "bob's long password").await;

    // Simulator: mallory only as mallory, enforced on the server.
    let (st, p) = simulate(&s, &m_cookie, &m_csrf, "alice").await;
    assert_eq!(st, 403, "mallory may not simulate as alice: {p}");
    assert!(!p.contains("approval_required"), "{p}");
    let (st, p) = simulate(&s, &m_cookie, &m_csrf, "mallory").await;
    assert_eq!(st, 200, "{p}");
    assert!(p.contains("approval_required"), "{p}");
    let (_, p) = page(&s, &m_cookie, "/policy").await;
    assert!(
        p.contains("name=\"principal\" value=\"mallory\" required readonly"),
        "the field is fixed for non-auditors: {p}"
    );
    let (st, p) = simulate(&s, &b_cookie, &b_csrf, "alice").await;
    assert_eq!(st, 200, "an auditor may simulate for anyone: {p}");
    assert!(p.contains("approval_required"), "{p}");

    // Overview: counts across everyone only for auditors.
    let (st, p) = page(&s, &b_cookie, "/overview").await;
    assert_eq!(st, 200);
    assert!(
        p.contains(": 1 approved") && p.contains("1 decided requests"),
        "{p}"
    );
    let (st, p) = page(&s, &m_cookie, "/overview").await;
    assert_eq!(st, 200);
    assert!(
        !p.contains(": 1 approved") && p.contains("0 decided requests"),
        "mallory sees none of alice's requests: {p}"
    );
    assert!(p.contains("for auditors"), "{p}");
}

/// Opens the console's event stream with a session cookie.
async fn open_stream(s: &Server, cookie: &str) -> reqwest::Response {
    client()
        .get(format!("{}/events", s.url))
        .header("cookie", format!("airlock_session={cookie}"))
        .send()
        .await
        .unwrap()
}

/// Reads a stream to its end; panics if it has not ended by `within`.
async fn ends_within(mut r: reqwest::Response, within: Duration) {
    tokio::time::timeout(within, async { while let Ok(Some(_)) = r.chunk().await {} })
        .await
        .expect("the stream ended");
}

/// An event stream ends when its session is signed out, and a user can
/// hold only `[web] max_streams_per_user` streams at once; the ended
/// streams give their places back.
#[tokio::test]
async fn event_streams_end_with_their_session_and_are_bounded_per_user() {
    let s = Server::start_extra(
        &Db::Sqlite,
        CONSOLE_POLICIES,
        "[web]\nmax_streams_per_user = 2\n",
    );
    set_password(&s, "alice", "alice's long password");
    set_password(&s, "bob", "bob's long password");
    let (a1, a1_csrf) = session(&s, "alice", "alice's long password").await;
    let (a2, _) = session(&s, "alice", "alice's long password").await;
    let (b, _) = session(&s, "bob", "bob's long password").await;

    let first = open_stream(&s, &a1).await;
    assert_eq!(first.status().as_u16(), 200);
    let second = open_stream(&s, &a1).await;
    assert_eq!(second.status().as_u16(), 200);
    let third = open_stream(&s, &a2).await;
    assert_eq!(third.status().as_u16(), 429, "alice's third stream");
    let bobs = open_stream(&s, &b).await;
    assert_eq!(bobs.status().as_u16(), 200, "bob is not affected");

    // Sign out the first session: both its streams end.
    let r = client()
        .post(format!("{}/logout", s.url))
        .header("cookie", format!("airlock_session={a1}"))
        .form(&[("csrf", a1_csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    ends_within(first, Duration::from_secs(30)).await;
    ends_within(second, Duration::from_secs(30)).await;

    // Their places are free again (given back as the streams' tasks end).
    let mut accepted = false;
    for _ in 0..100 {
        let r = open_stream(&s, &a2).await;
        if r.status().as_u16() == 200 {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "a new stream is accepted after the others ended");
    drop(bobs);
}

/// A user can hold only `[server] max_waits_per_user` open `?wait=`
/// long-polls; the next gets 429 `too_many_waits`, other users are not
/// affected, and ended waits give their places back.
async fn open_waits_are_bounded_per_user(db: Db) {
    let s = start_server_extra(&db, POLICIES, "max_waits_per_user = 2", "");
    let (alice, bob) = (s.key("alice", "user"), s.key("bob", "user"));
    let mut ids = Vec::new();
    for table in ["a", "b", "c"] {
        let (st, r) = s
            .post(
                &alice,
                "/v1/check",
                json!({"action": "export", "resource": {"type": "Table", "id": table}}),
            )
            .await;
        assert_eq!(st, 200, "{r}");
        ids.push(r["request"]["id"].as_str().unwrap().to_owned());
    }
    let waits: Vec<_> = ids[..2]
        .iter()
        .map(|id| {
            let (http, url, key, id) = (s.http.clone(), s.url.clone(), alice.clone(), id.clone());
            tokio::spawn(async move {
                let r = http
                    .get(format!("{url}/v1/requests/{id}?wait=30"))
                    .bearer_auth(key)
                    .send()
                    .await
                    .unwrap();
                let st = r.status().as_u16();
                (st, r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    // Let both waits start.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (st, r) = s
        .get(&alice, &format!("/v1/requests/{}?wait=30", ids[2]))
        .await;
    assert_eq!(st, 429, "alice's third wait: {r}");
    assert_eq!(r["error"]["code"], "too_many_waits", "{r}");
    // Reading without waiting is not limited.
    let (st, _) = s.get(&alice, &format!("/v1/requests/{}", ids[2])).await;
    assert_eq!(st, 200);
    let (st, r) = s
        .get(&bob, &format!("/v1/requests/{}?wait=0.5", ids[2]))
        .await;
    assert_eq!(st, 200, "bob is not affected: {r}");

    // Bob decides the two: their waits answer, and give their places back.
    for id in &ids[..2] {
        let (st, r) = s.review(&bob, id, "deny").await;
        assert_eq!(st, 200, "{r}");
    }
    for w in waits {
        let (st, r) = tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((st, r["status"].as_str()), (200, Some("denied")), "{r}");
    }
    let (st, r) = s
        .get(&alice, &format!("/v1/requests/{}?wait=0.5", ids[2]))
        .await;
    assert_eq!(st, 200, "a new wait is accepted: {r}");
    assert_eq!(r["status"], "pending");
}

on_both_stores!(open_waits_are_bounded_per_user);

/// `airlock run` whose user already holds every wait the node allows does
/// not fail: it polls slowly without waiting until approved, then runs.
#[tokio::test]
async fn airlock_run_keeps_polling_when_its_user_has_no_wait_left() {
    let s = start_server_extra(&Db::Sqlite, POLICIES, "max_waits_per_user = 1", "");
    let (alice, bob, carol) = (
        s.key("alice", "user"),
        s.key("bob", "user"),
        s.key("carol", "user"),
    );
    // Alice's one wait is taken by another request.
    let (_, r) = s
        .post(
            &alice,
            "/v1/check",
            json!({"action": "export", "resource": {"type": "Table", "id": "other"}}),
        )
        .await;
    let other = r["request"]["id"].as_str().unwrap().to_owned();
    let holder = {
        let (http, url, key) = (s.http.clone(), s.url.clone(), alice.clone());
        tokio::spawn(async move {
            http.get(format!("{url}/v1/requests/{other}?wait=60"))
                .bearer_auth(key)
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let child = Command::new(BIN)
        .args([
            "run",
            "--action",
            "export",
            "--resource",
            "Table:orders",
            "--",
            "sh",
            "-c",
            "echo ran",
        ])
        .env("AIRLOCK_URL", &s.url)
        .env("AIRLOCK_TOKEN", &alice)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut id = None;
    for _ in 0..100 {
        let (_, list) = s.get(&bob, "/v1/requests?status=pending").await;
        id = list["requests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"]["id"] == "orders")
            .and_then(|r| r["id"].as_str().map(str::to_owned));
        if id.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = id.expect("airlock run asked");
    // Its own wait was refused by now; it must still be going.
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.review(&bob, &id, "approve").await;
    s.review(&carol, &id, "approve").await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
    holder.abort();
}
