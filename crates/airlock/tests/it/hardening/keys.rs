//! API keys can be listed, revoked and made to expire, with the real
//! `airlock` binary against running servers: a revoked or expired key is
//! refused (401) by the very next request, on every node.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use airlock_store::testing::TestDb;
use serde_json::Value;

use crate::support::*;

on_both_stores!(
    keys_are_listed_and_a_revoked_key_is_refused_at_once,
    an_expiring_key_works_until_it_expires,
);

/// Runs `airlock keys ARGS --config <the server's config>`: (exit code,
/// stdout, stderr).
fn keys_cli(s: &Server, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("keys")
        .args(args)
        .arg("--config")
        .arg(s.config())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `keys list --json`, parsed.
fn list_keys(s: &Server) -> Vec<Value> {
    let (code, out, err) = keys_cli(s, &["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<Value>(&out)
        .unwrap_or_else(|e| panic!("{e}: {out}"))
        .as_array()
        .unwrap()
        .clone()
}

/// The listed key of `user` (there must be exactly one).
fn listed(s: &Server, user: &str) -> Value {
    let mut found: Vec<Value> = list_keys(s)
        .into_iter()
        .filter(|k| k["user"] == user)
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found.remove(0)
}

async fn keys_are_listed_and_a_revoked_key_is_refused_at_once(db: Db) {
    let s = Server::start(&db);
    let admin = s.key("admin", "admin");
    let alice = s.key("alice", "user");
    // Used several times, so a cache of good keys would hold it.
    for _ in 0..3 {
        let (st, body) = s.post(&alice, "/v1/check", read_t()).await;
        assert_eq!(st, 200, "{body}");
    }

    let k = listed(&s, "alice");
    assert_eq!(k["role"], "user");
    let id = k["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("key_"), "{k}");
    assert!(k["created"].as_str().unwrap().ends_with('Z'), "{k}");
    assert_eq!(k["revoked"], Value::Null);
    assert_eq!(k["expires"], Value::Null);
    assert_eq!(k["active"], true);
    // Its use is recorded off the request path: it shows up shortly.
    let mut used = Value::Null;
    for _ in 0..50 {
        used = listed(&s, "alice")["last_used"].clone();
        if used.is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(used.is_string(), "last_used was never recorded");
    assert_eq!(listed(&s, "admin")["role"], "admin");

    // The table names every column and the key.
    let (code, table, err) = keys_cli(&s, &["list"]);
    assert_eq!(code, 0, "{err}");
    let head = table.lines().next().unwrap();
    for col in [
        "ID",
        "USER",
        "ROLE",
        "CREATED",
        "LAST USED",
        "EXPIRES",
        "REVOKED",
    ] {
        assert!(head.contains(col), "{head}");
    }
    assert!(table.contains(&id), "{table}");

    // Revoked by another process while the server runs: the very next
    // request with the key is refused; other keys still work.
    let (code, _, err) = keys_cli(&s, &["revoke", &id]);
    assert_eq!(code, 0, "{err}");
    let (st, body) = s.post(&alice, "/v1/check", read_t()).await;
    assert_eq!(st, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthenticated", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{body}"
    );
    let (st, _) = s.get(&alice, "/v1/requests").await;
    assert_eq!(st, 401);
    let (st, body) = s.get(&admin, "/v1/requests").await;
    assert_eq!(st, 200, "{body}");

    // A long-poll opened before its key is revoked gets no answer after,
    // least of all the grant token the approval issues meanwhile.
    let alice2 = s.key("alice", "user");
    let (bob, carol) = (s.key("bob", "user"), s.key("carol", "user"));
    let (_, res) = s
        .post(&alice2, "/v1/check", export("alice", "orders"))
        .await;
    let rid = res["request"]["id"].as_str().unwrap().to_owned();
    let id2 = list_keys(&s)
        .into_iter()
        .find(|k| k["user"] == "alice" && k["active"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let config = s.config();
    let poll = format!("/v1/requests/{rid}?wait=20");
    let (polled, ()) = tokio::join!(s.get(&alice2, &poll), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let out = tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .args(["keys", "revoke", &id2, "--config"])
                .arg(config)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(out.status.success(), "{out:?}");
        let (st, r) = s.review(&bob, &rid, "approve").await;
        assert_eq!(st, 200, "{r}");
        if r["status"] == "pending" {
            let (st, r) = s.review(&carol, &rid, "approve").await;
            assert_eq!(st, 200, "{r}");
        }
    });
    let (st, body) = polled;
    assert_eq!(st, 401, "the revoked key's long-poll answered: {body}");
    assert!(body.get("grant").is_none(), "{body}");

    // Kept, marked revoked, and the revocation is in the audit log.
    let k = list_keys(&s)
        .into_iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap();
    assert!(k["revoked"].is_string(), "{k}");
    assert_eq!(k["active"], false);
    let records = audit_about(&s, &admin, &id).await;
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["key_created", "key_revoked"], "{records:?}");
    assert_eq!(records[1]["actor"], "cli");

    // Revoking again, or a key that does not exist, fails and says why.
    let (code, _, err) = keys_cli(&s, &["revoke", &id]);
    assert_ne!(code, 0);
    assert!(err.contains("already revoked"), "{err}");
    let (code, _, err) = keys_cli(&s, &["revoke", "key_doesnotexist"]);
    assert_ne!(code, 0);
    assert!(err.contains("no API key"), "{err}");
    assert_eq!(audit_about(&s, &admin, &id).await.len(), 2);
    assert_eq!(s.verify().0, 0);
}

async fn an_expiring_key_works_until_it_expires(db: Db) {
    let s = Server::start(&db);
    // A bad duration is refused before anything is stored.
    let (code, _, err) = keys_cli(&s, &["create", "--user", "alice", "--expires-in", "soon"]);
    assert_ne!(code, 0);
    assert!(err.contains("--expires-in"), "{err}");
    assert!(list_keys(&s).is_empty());

    let (code, out, err) = keys_cli(&s, &["create", "--user", "alice", "--expires-in", "2s"]);
    assert_eq!(code, 0, "{err}");
    let key = out.lines().last().unwrap().to_owned();
    let (st, body) = s.post(&key, "/v1/check", read_t()).await;
    assert_eq!(st, 200, "{body}");
    let k = listed(&s, "alice");
    let expires = chrono::DateTime::parse_from_rfc3339(k["expires"].as_str().unwrap()).unwrap();
    let created = chrono::DateTime::parse_from_rfc3339(k["created"].as_str().unwrap()).unwrap();
    assert_eq!(expires - created, chrono::Duration::seconds(2), "{k}");

    let wait = (expires.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(100)).await;
    let (st, body) = s.post(&key, "/v1/check", read_t()).await;
    assert_eq!(st, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );
    assert_eq!(listed(&s, "alice")["active"], false);
}

/// Two nodes on one PostgreSQL database have both used a key; the CLI
/// revokes it; both refuse it on the very next request.
#[tokio::test]
async fn nodes_a_key_revoked_by_the_cli_is_refused_at_once_on_every_node() {
    let Some(db) = TestDb::create() else { return };
    let db = Db::Postgres(Arc::new(db));
    let a = Server::start(&db);
    let b = a.join();
    let alice = a.key("alice", "user");
    let bob = a.key("bob", "user");
    for node in [&a, &b] {
        for key in [&alice, &bob] {
            let (st, body) = node.post(key, "/v1/check", read_t()).await;
            assert_eq!(st, 200, "{body}");
        }
    }
    let id = listed(&a, "alice")["id"].as_str().unwrap().to_owned();
    let (code, _, err) = keys_cli(&b, &["revoke", &id]);
    assert_eq!(code, 0, "{err}");
    for node in [&a, &b] {
        let (st, body) = node.post(&alice, "/v1/check", read_t()).await;
        assert_eq!(st, 401, "{body}");
        let (st, body) = node.post(&bob, "/v1/check", read_t()).await;
        assert_eq!(st, 200, "{body}");
    }
}
