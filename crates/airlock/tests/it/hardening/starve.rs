//! Nobody can starve the gate: stalled connections, floods of requests and
//! floods of checks leave everyone else served (issue 9, item 8).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// The test policies plus one whose requests only `ops` may review: a
/// flood of those must not reach bob (security) at all.
fn policies() -> String {
    format!(
        "{POLICIES}\n@id(\"ops-only\")\n@approvers(\"ops\")\npermit(principal, action == Action::\"flood\", resource);\n"
    )
}

/// Starts a server whose `[server]` section has `server_extra` (TOML), on
/// a soft open-file limit of 1024 (a common default) so that running out
/// of files shows, as it would in production.
fn start_with_server(db: &Db, server_extra: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/main.cedar"), policies()).unwrap();
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {data:?}\n{server_extra}\n\n[storage]\nurl = {url:?}\n\n[policy]\ndir = \"policies\"\n\n[audit]\ncheckpoint_interval_seconds = 1\n{USERS}",
        data = data.display().to_string(),
        url = db.url(),
    );
    std::fs::write(dir.path().join("airlock.toml"), cfg).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -S -n 1024 && exec \"$0\" serve --config \"$1\"")
        .arg(BIN)
        .arg(dir.path().join("airlock.toml"));
    Server::serve_with(cmd, dir, db, 1, &data)
}

fn addr(s: &Server) -> String {
    s.url.strip_prefix("http://").unwrap().to_owned()
}

/// Whether the server closes `conn` (or answers and closes) before
/// `deadline`; what it sent, if anything.
async fn closed_by(conn: &mut TcpStream, deadline: tokio::time::Instant) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn half_sent_headers_do_not_starve_other_clients() {
    // 1,100 stalled sockets here, more than the server's 1,024 files.
    rlimit::increase_nofile_limit(4096).unwrap();
    let s = start_with_server(&Db::Sqlite, "header_read_timeout_seconds = 2");
    let mut stalled = Vec::new();
    for _ in 0..1100 {
        let mut c = TcpStream::connect(addr(&s)).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: airlock\r\nX-Half: ")
            .await
            .unwrap();
        stalled.push(c);
    }
    // Everyone else is still answered.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(25))
        .build()
        .unwrap();
    let res = http
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .expect("a normal client is answered while 1,100 connections stall");
    assert_eq!(res.status().as_u16(), 200);
    // And the stalled connections are closed by the server.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for (i, c) in stalled.iter_mut().enumerate() {
        assert!(
            closed_by(c, deadline).await.is_some(),
            "stalled connection {i} is still open"
        );
    }
    // Kept-alive connections that are idle count the same: closed after
    // the header timeout, not kept forever.
    let mut c = TcpStream::connect(addr(&s)).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: airlock\r\n\r\n")
        .await
        .unwrap();
    let got = closed_by(
        &mut c,
        tokio::time::Instant::now() + Duration::from_secs(20),
    )
    .await
    .expect("an idle kept-alive connection is closed");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
}

#[tokio::test]
async fn a_request_body_that_stops_arriving_is_dropped() {
    let s = start_with_server(&Db::Sqlite, "idle_timeout_seconds = 2");
    let alice = s.key("alice", "user");
    let mut c = TcpStream::connect(addr(&s)).await.unwrap();
    c.write_all(
        format!(
            "POST /v1/check HTTP/1.1\r\nHost: airlock\r\nAuthorization: Bearer {alice}\r\n\
             Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"action\": \"re"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let got = closed_by(
        &mut c,
        tokio::time::Instant::now() + Duration::from_secs(20),
    )
    .await
    .expect("a stalled body does not hold the connection forever");
    assert!(
        got.is_empty() || got.starts_with("HTTP/1.1 4"),
        "answered {got}"
    );
    // Long-polls are not cut by it: a wait longer than the idle timeout
    // is answered at its end.
    let (_, out) = s
        .post(
            &alice,
            "/v1/check",
            json!({"action": "export", "resource": {"type": "Table", "id": "orders"}}),
        )
        .await;
    let id = out["request"]["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let (status, r) = s.get(&alice, &format!("/v1/requests/{id}?wait=4")).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["status"], "pending");
    assert!(started.elapsed() >= Duration::from_secs(3));
}

fn check_body(action: &str, table: &str) -> Value {
    json!({"action": action, "resource": {"type": "Table", "id": table}, "params": {"sql": format!("select * from {table}")}})
}

/// `n` checks by `key`, 32 at a time; each must be held for approval.
async fn flood(s: &Server, key: &str, action: &str, n: usize) {
    let mut held = 0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(32) {
        let mut calls = tokio::task::JoinSet::new();
        for i in chunk {
            let req = s
                .http
                .post(format!("{}/v1/check", s.url))
                .bearer_auth(key)
                .json(&check_body(action, &format!("t{i}")));
            calls.spawn(async move {
                let res = req.send().await.unwrap();
                (res.status().as_u16(), res.json::<Value>().await.unwrap())
            });
        }
        while let Some(r) = calls.join_next().await {
            let (status, out) = r.unwrap();
            assert_eq!(status, 200, "{out}");
            assert_eq!(out["decision"], "approval_required", "{out}");
            held += 1;
        }
    }
    assert_eq!(held, n);
}

/// Every page of `key`'s pending requests, following `next`.
async fn all_pages(s: &Server, key: &str, limit: u32) -> (Vec<Value>, usize) {
    let mut all = Vec::new();
    let mut pages = 0;
    let mut path = format!("/v1/requests?status=pending&limit={limit}");
    loop {
        let (status, page) = s.get(key, &path).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        all.extend(page["requests"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/requests?status=pending&limit={limit}&after={next}"),
            None => return (all, pages),
        }
        assert!(pages < 100, "paging does not end");
    }
}

async fn a_flood_does_not_push_others_out_of_their_approvers_lists(db: Db) {
    let s = start_with_server(
        &db,
        "max_pending_per_principal = 2000\nchecks_per_second_per_key = 100000\ncheck_burst_per_key = 100000",
    );
    let alice = s.key("alice", "user");
    let bob = s.key("bob", "user");
    let mallory = s.key("mallory", "user");
    let admin = s.key("admin", "admin");
    let (_, out) = s
        .post(&alice, "/v1/check", check_body("export", "orders"))
        .await;
    let alices = out["request"]["id"].as_str().unwrap().to_owned();
    // 1,000 requests only ops may review, then 150 security may: newer
    // than alice's, so they come first in bob's list.
    flood(&s, &mallory, "flood", 1000).await;
    flood(&s, &mallory, "export", 150).await;

    // bob's first page already holds only what he may review.
    let (_, first) = s.get(&bob, "/v1/requests?status=pending").await;
    let first = first["requests"].as_array().unwrap().clone();
    assert_eq!(first.len(), 100, "a full page of what bob may review");
    assert!(first.iter().all(|r| r["action"] == "export"));

    // Following the pages reaches alice's request, and never the flood.
    let (all, pages) = all_pages(&s, &bob, 100).await;
    assert_eq!(pages, 2);
    assert_eq!(all.len(), 151, "150 of mallory's exports and alice's");
    assert!(all.iter().all(|r| r["action"] == "export"));
    assert_eq!(all.last().unwrap()["id"], alices.as_str(), "oldest last");
    let mut ids: Vec<&str> = all.iter().map(|r| r["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 151, "no request twice across pages");

    // Admins still see everything, page by page.
    let (everything, _) = all_pages(&s, &admin, 1000).await;
    assert_eq!(everything.len(), 1151);

    // The CLI follows the pages too.
    let out = Command::new(BIN)
        .args(["requests", "list", "--json"])
        .env("AIRLOCK_URL", &s.url)
        .env("AIRLOCK_TOKEN", &bob)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = listed["requests"].as_array().unwrap();
    assert_eq!(listed.len(), 151);
    assert!(listed.iter().any(|r| r["id"] == alices.as_str()));

    // So does bob's console inbox: its first page links to the next,
    // which holds alice's request.
    set_password(&s, "bob", "correct horse battery staple");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (cookie, _) = http_sign_in(&http, &s.url, "bob", "correct horse battery staple").await;
    let page = |path: String| {
        let (http, cookie) = (http.clone(), cookie.clone());
        async move {
            http.get(path)
                .header("cookie", format!("airlock_session={cookie}"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let inbox = page(format!("{}/inbox", s.url)).await;
    assert!(!inbox.contains(&alices), "alice's is not on the first page");
    let more = inbox
        .split("href=\"/inbox?after=")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the inbox links to older requests")
        .to_owned();
    let older = page(format!("{}/inbox?after={more}", s.url)).await;
    assert!(older.contains(&alices), "alice's is on the next page");
    assert!(!older.contains("wants to <strong>flood"));
}

async fn pending_requests_per_principal_are_capped(db: Db) {
    let s = start_with_server(&db, "max_pending_per_principal = 3");
    let alice = s.key("alice", "user");
    let mut ids = Vec::new();
    for t in ["t1", "t2", "t3"] {
        let (status, out) = s.post(&alice, "/v1/check", check_body("export", t)).await;
        assert_eq!(status, 200, "{out}");
        ids.push(out["request"]["id"].as_str().unwrap().to_owned());
    }
    let (status, out) = s
        .post(&alice, "/v1/check", check_body("export", "t4"))
        .await;
    assert_eq!(status, 429, "{out}");
    assert_eq!(out["error"]["code"], "too_many_pending");
    // Asking again for one already pending is answered with it.
    let (status, out) = s
        .post(&alice, "/v1/check", check_body("export", "t1"))
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["request"]["id"], ids[0].as_str());
    // Others are not affected by alice's cap.
    let bob = s.key("bob", "user");
    let (status, out) = s.post(&bob, "/v1/check", check_body("export", "t4")).await;
    assert_eq!(status, 200, "{out}");
    // Once one is decided (here: withdrawn), there is room again.
    let (status, _) = s
        .post(
            &alice,
            &format!("/v1/requests/{}/cancel", ids[0]),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, out) = s
        .post(&alice, "/v1/check", check_body("export", "t4"))
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["decision"], "approval_required");
}

on_both_stores!(
    a_flood_does_not_push_others_out_of_their_approvers_lists,
    pending_requests_per_principal_are_capped,
);

#[tokio::test]
async fn checks_are_rate_limited_per_key() {
    let s = start_with_server(
        &Db::Sqlite,
        "checks_per_second_per_key = 1\ncheck_burst_per_key = 3",
    );
    let alice = s.key("alice", "user");
    let bob = s.key("bob", "user");
    let check = |key: String| {
        let http = s.http.clone();
        let url = format!("{}/v1/check", s.url);
        async move {
            http.post(url)
                .bearer_auth(key)
                .json(&check_body("read", "orders"))
                .send()
                .await
                .unwrap()
        }
    };
    let mut limited = None;
    for _ in 0..10 {
        let res = check(alice.clone()).await;
        if res.status().as_u16() == 429 {
            limited = Some(res);
            break;
        }
        assert_eq!(res.status().as_u16(), 200);
    }
    let res = limited.expect("alice's key is limited within 10 quick checks");
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another key is not held back by alice's.
    assert_eq!(check(bob).await.status().as_u16(), 200);
    // Nor is alice for long.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(check(alice).await.status().as_u16(), 200);

    // An enforcer (a proxy) is counted per end user: alice flooding the
    // proxy does not stop bob behind the same proxy.
    let proxy = s.key("gateway", "enforcer");
    let on_behalf = |who: &'static str| {
        let http = s.http.clone();
        let url = format!("{}/v1/check", s.url);
        let proxy = proxy.clone();
        async move {
            let mut body = check_body("read", "orders");
            body["principal"] = json!(who);
            http.post(url)
                .bearer_auth(proxy)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let mut limited = false;
    for _ in 0..10 {
        if on_behalf("alice").await == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "the enforcer's checks for alice are limited");
    assert_eq!(on_behalf("bob").await, 200, "bob is not held back by alice");
}
