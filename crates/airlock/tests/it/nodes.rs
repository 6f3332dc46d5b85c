//! Several nodes on one PostgreSQL database (the `nodes_` tests), and what
//! a node refuses to start on: a newer schema, other signing keys.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use airlock_store::testing::TestDb;
use serde_json::{json, Value};

use crate::support::*;

on_both_stores!(
    a_node_refuses_a_newer_schema,
    a_node_with_other_signing_keys_refuses_to_start,
);

/// Three nodes sharing one fresh database and one set of keys; `None` when
/// PostgreSQL tests are skipped.
fn three_nodes() -> Option<(Server, Server, Server)> {
    let db = Db::Postgres(Arc::new(TestDb::create()?));
    let a = Server::start(&db);
    let (b, c) = (a.join(), a.join());
    Some((a, b, c))
}

#[tokio::test]
async fn nodes_a_waiter_on_one_node_is_woken_by_an_approval_on_another() {
    let Some((a, b, c)) = three_nodes() else {
        return;
    };
    let (alice, bob, carol) = (
        a.key("alice", "user"),
        a.key("bob", "user"),
        a.key("carol", "user"),
    );
    let (st, res) = a.post(&alice, "/v1/check", export("alice", "orders")).await;
    assert_eq!(st, 200, "{res}");
    let id = res["request"]["id"].as_str().unwrap().to_owned();
    let (url, key, rid) = (a.url.clone(), alice.clone(), id.clone());
    let waiter = tokio::spawn(async move {
        let r = reqwest::Client::new()
            .get(format!("{url}/v1/requests/{rid}?wait=60"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        let answered = std::time::Instant::now();
        (r.json::<Value>().await.unwrap(), answered)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the waiter must still be waiting");
    let (st, r) = b.review(&bob, &id, "approve").await;
    assert_eq!((st, r["status"].as_str()), (200, Some("pending")), "{r}");
    let (st, r) = c.review(&carol, &id, "approve").await;
    let approved_at = std::time::Instant::now();
    assert_eq!((st, r["status"].as_str()), (200, Some("approved")), "{r}");
    // A 60 s wait answered with the decision: only the event can do that.
    let (r, answered) = waiter.await.unwrap();
    assert_eq!(r["status"], "approved", "{r}");
    assert!(r["grant"]["token"].is_string(), "{r}");
    eprintln!(
        "cross-node wake-up: answered {:?} after the approval's response",
        answered.saturating_duration_since(approved_at)
    );
}

#[tokio::test]
async fn nodes_hundred_consumers_over_three_nodes_exactly_one_wins() {
    let Some((a, b, c)) = three_nodes() else {
        return;
    };
    let (alice, bob, carol) = (
        a.key("alice", "user"),
        a.key("bob", "user"),
        a.key("carol", "user"),
    );
    let enforcer = a.key("proxy", "enforcer");
    let (_, token) = approved(&a, &alice, &bob, &carol, export("alice", "orders")).await;
    race_consumers(&[&a, &b, &c], &alice, &enforcer, &token).await;
    let (code, out) = b.verify();
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn nodes_expiry_happens_once_whichever_nodes_run() {
    let Some((mut a, b, c)) = three_nodes() else {
        return;
    };
    let (alice, bob, admin) = (
        a.key("alice", "user"),
        a.key("bob", "user"),
        a.key("admin", "admin"),
    );
    let poke = |id: &str| json!({"action": "poke", "resource": {"type": "Table", "id": id}});
    // Made while all three nodes run.
    let (_, r) = a.post(&alice, "/v1/check", poke("one")).await;
    let all_up = r["request"]["id"].as_str().unwrap().to_owned();
    // A grant made on b, expiring unused.
    let (_, r) = b
        .post(
            &alice,
            "/v1/check",
            json!({"action": "tap", "resource": {"type": "Table", "id": "t"}}),
        )
        .await;
    let tapped = r["request"]["id"].as_str().unwrap().to_owned();
    let (st, r) = c.review(&bob, &tapped, "approve").await;
    assert_eq!((st, r["status"].as_str()), (200, Some("approved")), "{r}");
    // Made on a, which then dies: the others must expire it.
    let (_, r) = a.post(&alice, "/v1/check", poke("two")).await;
    let orphan = r["request"]["id"].as_str().unwrap().to_owned();
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    for id in [&all_up, &tapped, &orphan] {
        let mut status = String::new();
        for _ in 0..100 {
            let (_, r) = c.get(&alice, &format!("/v1/requests/{id}")).await;
            status = r["status"].as_str().unwrap().to_owned();
            if status == "expired" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(status, "expired", "{id}");
    }
    // Give any late duplicate a chance to appear before counting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for id in [&all_up, &tapped, &orphan] {
        let expiries = audit_about(&c, &admin, id)
            .await
            .into_iter()
            .filter(|r| r["kind"] == "request_state" && r["details"]["to"] == "expired")
            .count();
        assert_eq!(expiries, 1, "{id} expired {expiries} times");
    }
    let (code, out) = c.verify();
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn nodes_the_audit_log_is_one_chain_after_load_on_every_node() {
    let Some((a, b, c)) = three_nodes() else {
        return;
    };
    let (alice, bob, carol) = (
        a.key("alice", "user"),
        a.key("bob", "user"),
        a.key("carol", "user"),
    );
    let admin = a.key("admin", "admin");
    let nodes = [&a, &b, &c];
    let mut tasks = Vec::new();
    for i in 0..300 {
        let (url, key) = (nodes[i % 3].url.clone(), alice.clone());
        tasks.push(tokio::spawn(async move {
            let r = reqwest::Client::new()
                .post(format!("{url}/v1/check"))
                .bearer_auth(key)
                .json(&read_t())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()["audit_seq"]
                .as_i64()
                .unwrap()
        }));
    }
    // Approvals spread over the nodes at the same time.
    for (i, t) in ["x", "y", "z"].iter().enumerate() {
        let n = nodes[i];
        let (_, r) = n.post(&alice, "/v1/check", export("alice", t)).await;
        let id = r["request"]["id"].as_str().unwrap().to_owned();
        nodes[(i + 1) % 3].review(&bob, &id, "approve").await;
        let (st, r) = nodes[(i + 2) % 3].review(&carol, &id, "approve").await;
        assert_eq!((st, r["status"].as_str()), (200, Some("approved")), "{r}");
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 300, "every decision has its own record");
    let (code, out) = c.verify();
    assert_eq!(code, 0, "{out}");
    let (_, all) = a.get(&admin, "/v1/audit?limit=100000").await;
    let all = all["records"].as_array().unwrap();
    for (i, r) in all.iter().enumerate() {
        assert_eq!(
            r["seq"].as_i64(),
            Some(i as i64 + 1),
            "one total order, no gaps"
        );
    }
}

#[tokio::test]
async fn nodes_each_reports_the_policy_version_it_serves() {
    let Some((a, b, _c)) = three_nodes() else {
        return;
    };
    let (alice, admin) = (a.key("alice", "user"), a.key("admin", "admin"));
    let version = |s: &Server| {
        let url = s.url.clone();
        async move {
            let v: Value = reqwest::get(format!("{url}/healthz"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["policy_version"].as_str().unwrap().to_owned()
        }
    };
    let before = version(&a).await;
    assert_eq!(before, version(&b).await, "same files, same version");
    std::fs::write(
        a.dir.path().join("policies/main.cedar"),
        format!("{POLICIES}\n@id(\"extra\")\npermit(principal, action == Action::\"peek\", resource);\n"),
    )
    .unwrap();
    Command::new("kill")
        .args(["-HUP", &a.child.id().to_string()])
        .status()
        .unwrap();
    let mut after = before.clone();
    for _ in 0..100 {
        after = version(&a).await;
        if after != before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(after, before, "a reloaded");
    assert_eq!(
        version(&b).await,
        before,
        "b still serves the old set, and says so"
    );
    let (_, on_a) = a.post(&alice, "/v1/check", read_t()).await;
    let (_, on_b) = b.post(&alice, "/v1/check", read_t()).await;
    let (_, all) = a.get(&admin, "/v1/audit?limit=100000").await;
    let version_of = |seq: &Value| {
        all["records"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["seq"] == *seq)
            .unwrap()["details"]["policy_version"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(version_of(&on_a["audit_seq"]), after);
    assert_eq!(version_of(&on_b["audit_seq"]), before);
}

#[tokio::test]
async fn nodes_a_node_killed_mid_load_loses_nothing_acknowledged() {
    let Some((a, b, mut c)) = three_nodes() else {
        return;
    };
    let (alice, bob, carol) = (
        a.key("alice", "user"),
        a.key("bob", "user"),
        a.key("carol", "user"),
    );
    let admin = a.key("admin", "admin");
    // A waiter on a, for a request to be approved on b after c dies.
    let (_, r) = a.post(&alice, "/v1/check", export("alice", "kept")).await;
    let waited = r["request"]["id"].as_str().unwrap().to_owned();
    let (url, key, rid) = (a.url.clone(), alice.clone(), waited.clone());
    let waiter = tokio::spawn(async move {
        reqwest::Client::new()
            .get(format!("{url}/v1/requests/{rid}?wait=60"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    // Load on c: decisions, new requests, reviews and grants, each
    // remembered once acknowledged.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for w in 0..8 {
        let (url, key, stop) = (c.url.clone(), alice.clone(), stop.clone());
        let reviewers = [bob.clone(), carol.clone()];
        load.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let (mut seqs, mut requests) = (Vec::new(), Vec::new());
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let body = if i % 4 == 0 {
                    export("alice", &format!("w{w}_{i}"))
                } else {
                    read_t()
                };
                let Ok(r) = http
                    .post(format!("{url}/v1/check"))
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await
                else {
                    break; // the node died: this one was never acknowledged
                };
                let Ok(v) = r.json::<Value>().await else {
                    break;
                };
                if let Some(seq) = v["audit_seq"].as_i64() {
                    seqs.push(seq);
                }
                let Some(id) = v["request"]["id"].as_str() else {
                    continue;
                };
                // (request, approvals acknowledged): every other request
                // gets one approval, every fourth both (and so a grant).
                requests.push((id.to_owned(), 0));
                let wanted = [0, 1, 0, 2][(i / 4) % 4];
                for reviewer in reviewers.iter().take(wanted) {
                    let review = http
                        .post(format!("{url}/v1/requests/{id}/reviews"))
                        .bearer_auth(reviewer)
                        .json(&json!({"verdict": "approve"}))
                        .send()
                        .await;
                    // Acknowledged means a whole 200 answer was read.
                    let acknowledged = match review {
                        Ok(r) if r.status() == 200 => r.json::<Value>().await.is_ok(),
                        _ => false,
                    };
                    if !acknowledged {
                        break;
                    }
                    if let Some(last) = requests.last_mut() {
                        last.1 += 1;
                    }
                }
            }
            (seqs, requests)
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    c.child.kill().unwrap(); // SIGKILL
    c.child.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut seqs, mut requests) = (Vec::new(), Vec::new());
    for t in load {
        let (s, r) = t.await.unwrap();
        seqs.extend(s);
        requests.extend(r);
    }
    assert!(!seqs.is_empty() && !requests.is_empty(), "the load ran");
    // The waiter on a still gets its answer, decided on b.
    b.review(&bob, &waited, "approve").await;
    let (st, r) = b.review(&carol, &waited, "approve").await;
    assert_eq!((st, r["status"].as_str()), (200, Some("approved")), "{r}");
    assert_eq!(waiter.await.unwrap()["status"], "approved");
    // Everything c acknowledged is there.
    let (_, all) = a.get(&admin, "/v1/audit?limit=1000000").await;
    let decisions: std::collections::HashSet<i64> = all["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "decision")
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    for seq in &seqs {
        assert!(decisions.contains(seq), "acknowledged decision {seq} lost");
    }
    let (mut reviews, mut grants) = (0, 0);
    for (id, approvals) in &requests {
        let (st, r) = b.get(&admin, &format!("/v1/requests/{id}")).await;
        assert_eq!(st, 200, "acknowledged request {id} lost: {r}");
        let kept = r["reviews"].as_array().unwrap().len();
        assert!(
            kept >= *approvals,
            "{id}: {approvals} reviews acknowledged, {kept} kept: {r}"
        );
        reviews += approvals;
        if *approvals == 2 {
            grants += 1;
            assert_eq!(r["status"], "approved", "{r}");
            assert!(
                r["grant"]["grant_id"].is_string(),
                "acknowledged grant lost: {r}"
            );
        }
    }
    assert!(reviews > 0 && grants > 0, "the load reviewed and granted");
    let (code, out) = a.verify();
    assert_eq!(code, 0, "{out}");
    eprintln!(
        "killed mid-load: {} decisions, {} requests, {reviews} reviews, {grants} grants acknowledged, all kept",
        seqs.len(),
        requests.len()
    );
}

/// A TCP proxy in front of PostgreSQL that a test can cut and restore, as
/// a network failure or a database restart would.
struct Proxy {
    port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    /// Runs on a thread and runtime of its own, so the test's blocking
    /// calls (starting servers, the CLI) cannot stall it.
    fn start(target: &str) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (u, cs, target) = (up.clone(), conns.clone(), target.to_owned());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !u.load(std::sync::atomic::Ordering::SeqCst) {
                        continue; // dropped: the connection is refused
                    }
                    let target = target.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut out) = tokio::net::TcpStream::connect(&target).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        }
                    });
                    cs.lock().unwrap().push(task.abort_handle());
                }
            });
        });
        Proxy { port, up, conns }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn nodes_fail_closed_while_the_database_is_unreachable_and_recover() {
    let Some(db) = TestDb::create() else {
        return;
    };
    let proxy = Proxy::start("127.0.0.1:5432");
    let url = db.url().replace(":5432/", &format!(":{}/", proxy.port));
    assert_ne!(url, db.url(), "the test URL goes through the proxy");
    let db = Db::Proxied(Arc::new(db), url);
    let s = Server::start(&db);
    let other = s.join();
    let (alice, bob, carol) = (
        s.key("alice", "user"),
        s.key("bob", "user"),
        s.key("carol", "user"),
    );
    let (st, _) = s.post(&alice, "/v1/check", read_t()).await;
    assert_eq!(st, 200);
    let (_, r) = s.post(&alice, "/v1/check", export("alice", "orders")).await;
    let id = r["request"]["id"].as_str().unwrap().to_owned();
    other.review(&bob, &id, "approve").await;

    proxy.cut();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let r = http
        .post(format!("{}/v1/check", s.url))
        .bearer_auth(&alice)
        .json(&read_t())
        .send()
        .await
        .expect("an answer, not a hang");
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 503, "no allow without the database: {body}");
    assert!(
        matches!(
            body["error"]["code"].as_str(),
            Some("audit_unavailable" | "storage_unavailable")
        ),
        "{body}"
    );
    let (st, r) = other.review(&carol, &id, "approve").await;
    assert_eq!(st, 503, "{r}");
    let h = http.get(format!("{}/healthz", s.url)).send().await.unwrap();
    assert_eq!(h.status(), 503);
    let h: Value = h.json().await.unwrap();
    assert!(h["reason"].as_str().unwrap().contains("storage"), "{h}");

    proxy.restore();
    let mut healthy = false;
    for _ in 0..100 {
        let h = http.get(format!("{}/healthz", s.url)).send().await.unwrap();
        if h.status() == 200 {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy, "the node recovers by itself");
    let (st, r) = s.post(&alice, "/v1/check", read_t()).await;
    assert_eq!(st, 200, "{r}");
    let (st, r) = other.review(&carol, &id, "approve").await;
    assert_eq!((st, r["status"].as_str()), (200, Some("approved")), "{r}");
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert_eq!(
        r["status"], "approved",
        "the first approval, made before the cut, was kept"
    );
    let (code, out) = s.verify();
    assert_eq!(code, 0, "{out}");
}

async fn a_node_refuses_a_newer_schema(db: Db) {
    let mut s = Server::start(&db);
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    match &db {
        Db::Sqlite => s.sql("UPDATE schema_version SET version = 999"),
        _ => s.sql("UPDATE airlock_schema_version SET version = 999"),
    }
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(s.config())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on a newer schema");
    assert!(
        err.contains("schema version 999 is newer than this Airlock knows"),
        "{err}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "never listened"
    );
}

async fn a_node_with_other_signing_keys_refuses_to_start(db: Db) {
    let mut s = Server::start(&db);
    let alice = s.key("alice", "user");
    let (_, keys) = s.get(&alice, "/v1/keys").await;
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    // Same database, a keys folder of its own: it would make new keys.
    let elsewhere = s.dir.path().join("other-data");
    write_config(s.dir.path(), &db, USERS, 1, &elsewhere);
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(s.config())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started with keys the others do not hold"
    );
    assert!(
        err.contains("is not the one this database was set up with"),
        "{err}"
    );
    // The two signing keys and not secrets.key: refused too, since it
    // could not open the TOTP seeds the others sealed (it started, and
    // refused every step-up approval).
    let partial = s.dir.path().join("partial-data");
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(partial.join("keys"))
            .unwrap();
    }
    for f in ["grant-signing.key", "audit-signing.key"] {
        std::fs::copy(s.data.join("keys").join(f), partial.join("keys").join(f)).unwrap();
    }
    write_config(s.dir.path(), &db, USERS, 1, &partial);
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(s.config())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with another secrets.key");
    assert!(err.contains("this node's secrets key"), "{err}");
    // With the deployment's keys it starts again, signing as before.
    write_config(s.dir.path(), &db, USERS, 1, &s.data);
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(s.config())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    reader.read_line(&mut line).unwrap();
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    s.url = line
        .trim()
        .strip_prefix("Airlock listening on ")
        .unwrap()
        .to_owned();
    s.child = child;
    let (_, now) = s.get(&alice, "/v1/keys").await;
    assert_eq!(now, keys);
}
