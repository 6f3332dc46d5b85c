//! The audit log: nothing is allowed without its record, `audit verify`
//! names the first tampered record, and the head is signed at shutdown.

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::support::*;

on_both_stores!(
    when_the_audit_log_cannot_be_written_nothing_is_allowed,
    audit_verify_names_the_first_tampered_record,
    the_chain_head_is_signed_at_shutdown,
);

async fn when_the_audit_log_cannot_be_written_nothing_is_allowed(db: Db) {
    let s = Server::start(&db);
    let (alice, bob, carol) = (
        s.key("alice", "user"),
        s.key("bob", "user"),
        s.key("carol", "user"),
    );
    let (_, res) = s.post(&alice, "/v1/check", export("alice", "orders")).await;
    let id = res["request"]["id"].as_str().unwrap().to_owned();
    s.review(&bob, &id, "approve").await;
    s.sql(match &db {
        Db::Sqlite => {
            "CREATE TRIGGER broken BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'disk full'); END;"
        }
        Db::Postgres(_) | Db::Proxied(..) => {
            "CREATE FUNCTION broken() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$;
             CREATE TRIGGER broken BEFORE INSERT ON audit FOR EACH ROW EXECUTE FUNCTION broken();"
        }
    });
    let started = std::time::Instant::now();
    let (st, r) = s
        .post(
            &alice,
            "/v1/check",
            json!({"action": "read", "resource": {"type": "Table", "id": "t"}}),
        )
        .await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (503, Some("audit_unavailable")),
        "{r}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "must answer, not hang"
    );
    let (st, _) = s.review(&carol, &id, "approve").await;
    assert_eq!(st, 503);
    s.sql(match &db {
        Db::Sqlite => "DROP TRIGGER broken;",
        Db::Postgres(_) | Db::Proxied(..) => "DROP TRIGGER broken ON audit;",
    });
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert_eq!(r["status"], "pending", "no grant without its audit record");
    assert!(r.get("grant").is_none());
}

async fn audit_verify_names_the_first_tampered_record(db: Db) {
    let mut s = Server::start(&db);
    let (alice, bob, carol) = (
        s.key("alice", "user"),
        s.key("bob", "user"),
        s.key("carol", "user"),
    );
    for t in ["a", "b", "c"] {
        approved(&s, &alice, &bob, &carol, export("alice", t)).await;
    }
    let (code, out) = s.verify();
    assert_eq!(code, 0, "{out}");
    // Stopped, so nothing signs a checkpoint over the tampering; the
    // shutdown signs the head.
    Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(s.child.wait().unwrap().success());
    let tamper = |sql: &str, expect: &str| {
        s.sql(&format!(
            "CREATE TABLE audit_saved AS SELECT * FROM audit; {sql}"
        ));
        let (code, text) = s.verify();
        assert_eq!(code, 1, "{sql}: verified anyway: {text}");
        assert!(text.contains(expect), "{sql}: {text}");
        s.sql("DELETE FROM audit; INSERT INTO audit SELECT * FROM audit_saved; DROP TABLE audit_saved;");
        let (code, text) = s.verify();
        assert_eq!(code, 0, "restored: {text}");
    };
    tamper(
        "UPDATE audit SET details = '{\"outcome\":\"allow\"}' WHERE seq = 5",
        "record 5",
    );
    tamper("DELETE FROM audit WHERE seq = 6", "record 6");
    tamper(
        "UPDATE audit SET seq = -1 WHERE seq = 7; UPDATE audit SET seq = 7 WHERE seq = 8; UPDATE audit SET seq = 8 WHERE seq = -1;",
        "record 7",
    );
    tamper(
        "UPDATE audit SET seq = seq + 1000 WHERE seq >= 9; UPDATE audit SET seq = seq - 999 WHERE seq >= 1000;
         INSERT INTO audit (seq, ts, kind, actor, subject, details, prev_hash, hash) SELECT 9, ts, kind, actor, subject, '{\"forged\":true}', prev_hash, hash FROM audit WHERE seq = 8;",
        "record 9",
    );
    // Cutting records off the end is caught by the signed checkpoints.
    let head = s.sql_i64("SELECT MAX(seq) FROM checkpoints");
    assert_eq!(head, s.sql_i64("SELECT MAX(seq) FROM audit"));
    tamper(
        &format!("DELETE FROM audit WHERE seq >= {}", head - 1),
        &format!("record {}", head - 1),
    );
}

async fn the_chain_head_is_signed_at_shutdown(db: Db) {
    let mut s = Server::start_opts(&db, POLICIES, 3600);
    let alice = s.key("alice", "user");
    s.post(
        &alice,
        "/v1/check",
        json!({"action": "read", "resource": {"type": "Table", "id": "t"}}),
    )
    .await;
    Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(s.child.wait().unwrap().success());
    let head = s.sql_i64("SELECT MAX(seq) FROM audit");
    let signed = s.sql_i64("SELECT MAX(seq) FROM checkpoints");
    assert_eq!(signed, head);
    let (code, out) = s.verify();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 signed checkpoints"), "{out}");
}
