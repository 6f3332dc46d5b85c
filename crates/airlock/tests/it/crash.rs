//! The crash loop: a node killed (SIGKILL) in the middle of mixed load,
//! again and again, on SQLite and on three PostgreSQL nodes. After each
//! restart everything acknowledged is there (decisions, reviews, grants),
//! no grant is used twice, and the log verifies: chain, Merkle tree and
//! checkpoints (`airlock audit verify`), and a consistency proof from the
//! checkpoint signed before the kill to the one after.
//!
//! `AIRLOCK_CRASH_CYCLES` sets the number of kills (default 2, so the suite
//! stays quick); `bench/crashloop.sh` runs 100 and prints the totals.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use airlock_core::merkle;
use airlock_store::testing::TestDb;
use serde_json::{json, Value};

use crate::support::*;

fn cycles() -> usize {
    std::env::var("AIRLOCK_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

/// What the load was told, and so must be kept.
#[derive(Default)]
struct Acked {
    /// Decision records (their `audit_seq`).
    decisions: Vec<i64>,
    /// Approvals acknowledged per request.
    reviews: HashMap<String, usize>,
    /// Grant tokens read back by the requester, per request.
    tokens: HashMap<String, String>,
    /// Requests whose one use was acknowledged as consumed.
    consumed: Vec<String>,
}

impl Acked {
    fn extend(&mut self, other: Acked) {
        self.decisions.extend(other.decisions);
        self.reviews.extend(other.reviews);
        self.tokens.extend(other.tokens);
        self.consumed.extend(other.consumed);
    }
}

struct Keys {
    /// One of alice's keys per worker, each with its own rate limit.
    alices: Vec<String>,
    /// alice's key for the checks.
    alice: String,
    bob: String,
    carol: String,
    admin: String,
}

/// A whole 200 answer, or nothing (the node died before acknowledging).
async fn ack(req: reqwest::RequestBuilder) -> Option<Value> {
    let r = req.send().await.ok()?;
    if r.status() != 200 {
        return None;
    }
    r.json::<Value>().await.ok()
}

/// One worker: decisions, and every fourth action an export that two
/// reviewers approve, the requester reads its grant and consumes it.
async fn worker(
    url: String,
    keys: Arc<Keys>,
    me: usize,
    tag: String,
    stop: Arc<AtomicBool>,
) -> Acked {
    let http = reqwest::Client::new();
    let alice = &keys.alices[me];
    let mut acked = Acked::default();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let post = |key: &str, path: &str, body: Value| {
            http.post(format!("{url}{path}"))
                .bearer_auth(key)
                .json(&body)
        };
        if i % 4 != 0 {
            match ack(post(alice, "/v1/check", read_t())).await {
                Some(v) => acked.decisions.push(v["audit_seq"].as_i64().unwrap()),
                None => break,
            }
            continue;
        }
        let action = export("alice", &format!("{tag}_{i}"));
        let Some(v) = ack(post(alice, "/v1/check", action.clone())).await else {
            break;
        };
        let id = v["request"]["id"].as_str().unwrap().to_owned();
        let mut approvals = 0;
        for key in [&keys.bob, &keys.carol] {
            let path = format!("/v1/requests/{id}/reviews");
            if ack(post(key, &path, json!({"verdict": "approve"})))
                .await
                .is_none()
            {
                break;
            }
            approvals += 1;
            acked.reviews.insert(id.clone(), approvals);
        }
        if approvals < 2 {
            break;
        }
        let req = http
            .get(format!("{url}/v1/requests/{id}"))
            .bearer_auth(alice);
        let Some(r) = ack(req).await else { break };
        let token = r["grant"]["token"].as_str().unwrap().to_owned();
        acked.tokens.insert(id.clone(), token.clone());
        let body = json!({"token": token, "action": action});
        match ack(post(alice, "/v1/grants/consume", body)).await {
            Some(_) => acked.consumed.push(id),
            None => break,
        }
    }
    acked
}

/// Runs the load on `urls` (one worker set per URL) until `kill` is done.
async fn load_then(urls: &[String], keys: &Arc<Keys>, tag: &str, kill: impl FnOnce()) -> Acked {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (n, url) in urls.iter().enumerate() {
        for w in 0..4 {
            let t = format!("{tag}_n{n}w{w}");
            let me = (n * 4 + w) % keys.alices.len();
            tasks.push(tokio::spawn(worker(
                url.clone(),
                keys.clone(),
                me,
                t,
                stop.clone(),
            )));
        }
    }
    // A kill at a different moment of the load each cycle.
    let at = 150 + (tag.len() as u64 * 7919 + tasks.len() as u64 * 104_729) % 450;
    tokio::time::sleep(Duration::from_millis(at)).await;
    kill();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Acked::default();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    acked
}

/// The latest signed checkpoint's (size, root).
async fn checkpoint(s: &Server, admin: &str) -> Option<(u64, merkle::Hash)> {
    let r = s
        .http
        .get(format!("{}/v1/audit/checkpoint", s.url))
        .bearer_auth(admin)
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    let note = r.text().await.ok()?;
    let mut lines = note.lines().skip(1);
    let size = lines.next()?.parse().ok()?;
    Some((size, b64_hash(lines.next()?)))
}

/// After a restart: everything in `acked` is there, no grant consumes
/// twice, the log verifies and grew from `before` consistently.
async fn check_after(s: &Server, keys: &Keys, acked: &Acked, before: Option<(u64, merkle::Hash)>) {
    if !acked.decisions.is_empty() {
        let list = acked
            .decisions
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let kept = s.sql_i64(&format!(
            "SELECT COUNT(*) FROM audit WHERE kind = 'decision' AND seq IN ({list})"
        ));
        assert_eq!(
            kept as usize,
            acked.decisions.len(),
            "acknowledged decisions lost"
        );
    }
    for (id, approvals) in &acked.reviews {
        let (st, r) = s.get(&keys.admin, &format!("/v1/requests/{id}")).await;
        assert_eq!(st, 200, "acknowledged request {id} lost: {r}");
        let kept = r["reviews"].as_array().unwrap().len();
        assert!(
            kept >= *approvals,
            "{id}: {approvals} approvals acknowledged, {kept} kept"
        );
        if *approvals == 2 {
            assert!(
                r["grant"]["grant_id"].is_string(),
                "acknowledged grant lost: {r}"
            );
        }
    }
    for (id, token) in &acked.tokens {
        let action = {
            let (_, r) = s.get(&keys.admin, &format!("/v1/requests/{id}")).await;
            let table = r["resource"]["id"].as_str().unwrap().to_owned();
            export("alice", &table)
        };
        let body = json!({"token": token, "action": action});
        let (st, r) = s
            .post(&keys.alice, "/v1/grants/consume", body.clone())
            .await;
        if acked.consumed.contains(id) {
            assert_eq!(
                (st, r["error"]["code"].as_str()),
                (403, Some("grant_spent")),
                "{id} consumed twice: {r}"
            );
        } else {
            // Unacknowledged: it may have been spent before the kill.
            assert!(
                st == 200 || r["error"]["code"] == "grant_spent",
                "{id}: {st} {r}"
            );
        }
        let (st, r) = s.post(&keys.alice, "/v1/grants/consume", body).await;
        assert_eq!(
            (st, r["error"]["code"].as_str()),
            (403, Some("grant_spent")),
            "{r}"
        );
    }
    assert_eq!(
        s.sql_i64("SELECT COUNT(*) FROM grants WHERE uses > max_uses"),
        0
    );
    let (code, out) = s.verify();
    assert_eq!(code, 0, "{out}");
    if let Some((old, old_root)) = before {
        let mut after = None;
        for _ in 0..100 {
            after = checkpoint(s, &keys.admin).await.filter(|(n, _)| *n > old);
            if after.is_some() {
                break;
            }
            s.post(&keys.alice, "/v1/check", read_t()).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (new, new_root) = after.expect("a checkpoint after the restart");
        let (st, p) = s
            .get(
                &keys.admin,
                &format!("/v1/audit/proof/consistency?from={old}&to={new}"),
            )
            .await;
        assert_eq!(st, 200, "{p}");
        let proof = proof_hashes(&p);
        merkle::verify_consistency(old, new, &old_root, &new_root, &proof).unwrap_or_else(|e| {
            panic!("the log before the kill is not a prefix of the log after: {e:?}")
        });
    }
}

async fn crash_loop(nodes: &mut [Server]) -> (usize, usize, usize, usize) {
    let alices = (0..nodes.len() * 4)
        .map(|_| nodes[0].key("alice", "user"))
        .collect();
    let keys = Arc::new(Keys {
        alices,
        alice: nodes[0].key("alice", "user"),
        bob: nodes[0].key("bob", "user"),
        carol: nodes[0].key("carol", "user"),
        admin: nodes[0].key("admin", "admin"),
    });
    let mut totals = (0, 0, 0, 0);
    for cycle in 0..cycles() {
        let before = checkpoint(&nodes[0], &keys.admin).await;
        let victim = cycle % nodes.len();
        let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
        let v = &mut nodes[victim];
        let acked = load_then(&urls, &keys, &format!("c{cycle}"), || v.restart()).await;
        check_after(&nodes[victim], &keys, &acked, before).await;
        // Requests the kill left pending are withdrawn, so alice stays
        // under her limit of pending requests however many cycles run.
        let s = &nodes[victim];
        let (_, l) = s
            .get(&keys.alice, "/v1/requests?status=pending&limit=1000")
            .await;
        for r in l["requests"].as_array().unwrap() {
            let id = r["id"].as_str().unwrap();
            s.post(&keys.alice, &format!("/v1/requests/{id}/cancel"), json!({}))
                .await;
        }
        totals.0 += acked.decisions.len();
        totals.1 += acked.reviews.values().sum::<usize>();
        totals.2 += acked.tokens.len();
        totals.3 += acked.consumed.len();
    }
    totals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_crash_loop_keeps_what_it_acknowledged() {
    let mut nodes = [Server::start(&Db::Sqlite)];
    let (d, r, g, c) = crash_loop(&mut nodes).await;
    eprintln!(
        "crash loop (SQLite): {} kills; acknowledged and kept: {d} decisions, {r} approvals, {g} grants, {c} consumptions",
        cycles()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_loop_over_three_nodes_keeps_what_it_acknowledged() {
    let Some(db) = TestDb::create() else {
        return;
    };
    let db = Db::Postgres(Arc::new(db));
    let a = Server::start(&db);
    let (b, c) = (a.join(), a.join());
    let mut nodes = [a, b, c];
    let (d, r, g, c) = crash_loop(&mut nodes).await;
    eprintln!(
        "crash loop (PostgreSQL, 3 nodes): {} kills; acknowledged and kept: {d} decisions, {r} approvals, {g} grants, {c} consumptions",
        cycles()
    );
}
