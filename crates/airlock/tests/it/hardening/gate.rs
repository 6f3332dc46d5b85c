//! Hardening of the gate itself: what an ordinary user key tried first to
//! get an action through with less approval than policy demands, or to
//! break the audit log for everyone (issue 9, items 1–4 and 9).

use std::process::Command;

use serde_json::{json, Value};

use crate::support::*;

/// A server whose `[policy]` table also has `policy_extra`, with `users`
/// added after the usual ones.
fn start_policy(db: &Db, policies: &str, policy_extra: &str, users: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/main.cedar"), policies).unwrap();
    write_config(dir.path(), db, &format!("{USERS}\n{users}"), 1, &data);
    let path = dir.path().join("airlock.toml");
    let cfg = std::fs::read_to_string(&path).unwrap().replace(
        "[policy]\ndir = \"policies\"\n",
        &format!("[policy]\ndir = \"policies\"\n{policy_extra}\n"),
    );
    std::fs::write(&path, cfg).unwrap();
    Server::serve(dir, db, 1, &data)
}

const LEADS: &str = "[[users]]\nname = \"lena\"\ngroups = [\"leads\"]\n";

const ROWS: &str = r#"
@id("small-export")
@approvers("leads")
permit(principal, action == Action::"export", resource)
when { context.rows < 1000 };

@id("large-export")
@approvers("security")
@quorum("2")
permit(principal, action == Action::"export", resource)
when { context.rows >= 1000 };
"#;

fn rows_export(rows: i64) -> Value {
    json!({"principal": "alice", "action": "export",
           "resource": {"type": "Table", "id": "prod.customers"},
           "params": {"sql": "select * from customers"},
           "context": {"rows": rows}})
}

async fn a_recheck_never_inherits_a_laxer_requirement(db: Db) {
    let s = start_policy(&db, ROWS, "", LEADS);
    let (alice, lena, bob, carol, enforcer, admin) = (
        s.key("alice", "user"),
        s.key("lena", "user"),
        s.key("bob", "user"),
        s.key("carol", "user"),
        s.key("proxy", "enforcer"),
        s.key("admin", "admin"),
    );
    // alice asks for ten rows: one lead.
    let (st, r) = s.post(&alice, "/v1/check", rows_export(10)).await;
    assert_eq!(st, 200, "{r}");
    let id = r["request"]["id"].as_str().unwrap().to_owned();
    assert_eq!(r["request"]["thresholds"].as_array().unwrap().len(), 1);

    // The enforcer sees the real size: a million rows. The same action
    // (same fingerprint) now needs two from security as well.
    let (st, r) = s.post(&enforcer, "/v1/check", rows_export(1_000_000)).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["decision"], "approval_required");
    assert_eq!(r["request"]["id"], id.as_str(), "one pending request");
    let th = r["request"]["thresholds"].as_array().unwrap().clone();
    assert!(
        th.iter()
            .any(|t| t["groups"] == json!(["security"]) && t["quorum"] == 2),
        "{th:?}"
    );
    assert!(th.iter().any(|t| t["groups"] == json!(["leads"])), "{th:?}");

    // Approvers see every description that led to the request.
    let (_, r) = s.get(&bob, &format!("/v1/requests/{id}")).await;
    let rows: Vec<&Value> = r["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["context"]["rows"])
        .collect();
    assert_eq!(rows, vec![&json!(10), &json!(1_000_000)], "{r}");

    // Security, newly asked, finds it in its list.
    let (_, l) = s.get(&bob, "/v1/requests?status=pending").await;
    assert!(
        l["requests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == id.as_str()),
        "{l}"
    );

    // One lead is no longer enough.
    let (st, r) = s.review(&lena, &id, "approve").await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["status"], "pending", "{r}");
    let (_, r) = s.review(&bob, &id, "approve").await;
    assert_eq!(r["status"], "pending", "{r}");
    let (_, r) = s.review(&carol, &id, "approve").await;
    assert_eq!(r["status"], "approved", "{r}");

    // Approvers see the context of every decision that led to the request.
    let (_, a) = s.get(&admin, "/v1/audit?limit=10000").await;
    let contexts: Vec<&Value> = a["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "decision" && r["subject"] == id.as_str())
        .map(|r| &r["details"]["context"]["rows"])
        .collect();
    assert_eq!(contexts, vec![&json!(10), &json!(1_000_000)]);
    assert!(
        a["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "requirement_raised" && r["subject"] == id.as_str()),
        "the raise is on record"
    );
    assert_eq!(s.verify().0, 0);
}

async fn a_grant_for_ten_rows_does_not_carry_a_million(db: Db) {
    let s = start_policy(&db, ROWS, "", LEADS);
    let (alice, lena, enforcer) = (
        s.key("alice", "user"),
        s.key("lena", "user"),
        s.key("proxy", "enforcer"),
    );
    let (_, r) = s.post(&alice, "/v1/check", rows_export(10)).await;
    let id = r["request"]["id"].as_str().unwrap().to_owned();
    let (_, r) = s.review(&lena, &id, "approve").await;
    assert_eq!(r["status"], "approved", "{r}");
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    let token = r["grant"]["token"].as_str().unwrap().to_owned();

    // The same fingerprint, but the facts at consumption need security.
    let (st, r) = s
        .post(
            &enforcer,
            "/v1/grants/consume",
            json!({"token": token, "action": rows_export(1_000_000)}),
        )
        .await;
    assert_eq!(st, 403, "{r}");
    assert_eq!(r["error"]["code"], "action_mismatch", "{r}");
    // As approved, it goes through once.
    let (st, r) = s
        .post(
            &enforcer,
            "/v1/grants/consume",
            json!({"token": token, "action": rows_export(10)}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
}

const NETWORK: &str = r#"
@id("read")
permit(principal, action == Action::"read", resource);

@id("no-loopback")
forbid(principal, action == Action::"read", resource)
when { context.source_ip.isLoopback() };

@id("swiss-only")
permit(principal, action == Action::"peek", resource)
when { context has country && context.country == "CH" };

@id("count")
permit(principal, action == Action::"count", resource);

@id("untagged-export")
permit(principal, action == Action::"take", resource)
unless { resource has tags && resource.tags.contains("pii") };
"#;

fn read_from(ip: Value) -> Value {
    json!({"action": "read", "resource": {"type": "Table", "id": "t"}, "context": {"source_ip": ip}})
}

async fn trusted_facts_come_from_trusted_callers(db: Db) {
    let s = start_policy(
        &db,
        NETWORK,
        "trusted_context = [\"rows\", \"resource.attrs\"]",
        "",
    );
    let (alice, enforcer) = (s.key("alice", "user"), s.key("proxy", "enforcer"));

    // A user key cannot claim to be elsewhere: its address is the
    // connection's (loopback here), whatever it says.
    for claim in [
        json!("10.1.2.3"),
        json!({"__extn": {"fn": "ip", "arg": "10.1.2.3"}}),
    ] {
        let (st, r) = s.post(&alice, "/v1/check", read_from(claim)).await;
        assert_eq!(st, 200, "{r}");
        assert_eq!(r["decision"], "deny", "{r}");
    }
    // An enforcer may pass the end user's address, as a string only.
    let mut as_proxy = read_from(json!("10.1.2.3"));
    as_proxy["principal"] = json!("alice");
    let (_, r) = s.post(&enforcer, "/v1/check", as_proxy).await;
    assert_eq!(r["decision"], "allow", "{r}");
    let mut raw = read_from(json!({"__extn": {"fn": "ip", "arg": "10.1.2.3"}}));
    raw["principal"] = json!("alice");
    let (st, r) = s.post(&enforcer, "/v1/check", raw).await;
    assert_eq!(st, 400, "{r}");

    // No GeoIP database: nobody states a country.
    for key in [&alice, &enforcer] {
        let (_, r) = s
            .post(
                key,
                "/v1/check",
                json!({"principal": "alice", "action": "peek", "resource": {"type": "Table", "id": "t"}, "context": {"country": "CH"}}),
            )
            .await;
        assert_eq!(r["decision"], "deny", "{r}");
    }

    // Trusted facts: refused from a user key, taken from an enforcer.
    let count = json!({"principal": "alice", "action": "count", "resource": {"type": "Table", "id": "t"}, "context": {"rows": 5}});
    let (st, r) = s.post(&alice, "/v1/check", count.clone()).await;
    assert_eq!(st, 400, "{r}");
    assert_eq!(r["error"]["code"], "untrusted_context", "{r}");
    let (st, r) = s.post(&enforcer, "/v1/check", count).await;
    assert_eq!(st, 200, "{r}");

    // Resource attributes are facts too.
    let take = json!({"principal": "alice", "action": "take", "resource": {"type": "Table", "id": "t", "attrs": {"tags": []}}});
    let (st, r) = s.post(&alice, "/v1/check", take.clone()).await;
    assert_eq!(st, 400, "{r}");
    assert_eq!(r["error"]["code"], "untrusted_context", "{r}");
    let (_, r) = s.post(&enforcer, "/v1/check", take).await;
    assert_eq!(r["decision"], "allow", "{r}");
}

/// Numbers a caller may send that do not survive as binary floats, made
/// up front and by a small generator (no dependency on a random source).
fn awkward_numbers() -> Vec<String> {
    let mut out: Vec<String> = [
        "9376.0323511051380",
        "100000000000000000000",
        "100000000000000000001",
        "-0.0",
        "0.0",
        "1e2",
        "1E+2",
        "-1e-2",
        "1.0",
        "4.9e-324",
        "5e-324",
        "2.2250738585072011e-308",
        "2.2250738585072014e-308",
        "1.7976931348623157e308",
        "18446744073709551616",
        "-9223372036854775809",
        "0.1",
        "123456789012345678901234567890.5",
        "3.141592653589793238462643383279",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..40 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let digits = 5 + (x % 25) as usize;
        let frac: String = (0..digits)
            .map(|i| char::from(b'0' + ((x >> (i % 60)) % 10) as u8))
            .collect();
        out.push(format!("{}.{frac}", x % 100_000));
        out.push(format!("{}e{}", x % 1000, (x % 600) as i64 - 300));
    }
    out
}

async fn raw_post(s: &Server, key: &str, path: &str, body: String) -> (u16, Value) {
    let res = s
        .http
        .post(format!("{}{path}", s.url))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let st = res.status().as_u16();
    (st, res.json().await.unwrap_or(Value::Null))
}

async fn numbers_bind_exactly_and_never_break_the_chain(db: Db) {
    let s = Server::start(&db);
    let (alice, bob, carol) = (
        s.key("alice", "user"),
        s.key("bob", "user"),
        s.key("carol", "user"),
    );
    let enforcer = s.key("proxy", "enforcer");
    for n in awkward_numbers() {
        for place in ["params", "context"] {
            let body = format!(
                r#"{{"action": "read", "resource": {{"type": "Table", "id": "t"}}, "{place}": {{"n": {n}, "deep": [{{"m": {n}}}]}}}}"#
            );
            let (st, r) = raw_post(&s, &alice, "/v1/check", body).await;
            assert_eq!(st, 400, "{place} {n}: {r}");
        }
    }
    // Whole numbers bind exactly: neighbours are different actions.
    let mut ids = Vec::new();
    for n in [
        "18446744073709551615",
        "18446744073709551614",
        "-9223372036854775808",
        "9007199254740993",
        "9007199254740992",
    ] {
        // Cedar's numbers are 64-bit signed: context takes those only.
        let context = if n.parse::<i64>().is_ok() { n } else { "0" };
        let body = format!(
            r#"{{"action": "export", "resource": {{"type": "Table", "id": "t"}}, "params": {{"n": {n}}}, "context": {{"n": {context}}}}}"#
        );
        let (st, r) = raw_post(&s, &alice, "/v1/check", body).await;
        assert_eq!(st, 200, "{n}: {r}");
        ids.push(r["request"]["id"].as_str().unwrap().to_owned());
        assert_eq!(r["request"]["params"]["n"].to_string(), n, "kept exactly");
    }
    ids.dedup();
    assert_eq!(ids.len(), 5, "every number its own request");

    // The outcome report is recorded too: same rule.
    let (_, token) = approved(&s, &alice, &bob, &carol, export("alice", "orders")).await;
    let (st, r) = s
        .post(
            &enforcer,
            "/v1/grants/consume",
            json!({"token": token, "action": export("alice", "orders")}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let gid = r["grant_id"].as_str().unwrap().to_owned();
    let (st, r) = raw_post(
        &s,
        &enforcer,
        &format!("/v1/grants/{gid}/complete"),
        r#"{"outcome": "success", "detail": {"rows": 9376.0323511051380}}"#.into(),
    )
    .await;
    assert_eq!(st, 400, "{r}");
    let (st, r) = raw_post(
        &s,
        &enforcer,
        &format!("/v1/grants/{gid}/complete"),
        r#"{"outcome": "success", "detail": {"rows": 18446744073709551615}}"#.into(),
    )
    .await;
    assert_eq!(st, 200, "{r}");

    let (code, out) = s.verify();
    assert_eq!(code, 0, "{out}");
}

const NAMESPACED: &str = r#"
@id("read")
permit(principal, action == Action::"read", resource);

@id("not-prod-tables")
forbid(principal, action == Action::"read", resource is Db::Table);
"#;

fn cli_check(s: &Server, key: &str, args: &[&str]) -> i32 {
    let out = Command::new(BIN)
        .arg("check")
        .args(args)
        .env("AIRLOCK_URL", &s.url)
        .env("AIRLOCK_TOKEN", key)
        .output()
        .unwrap();
    out.status.code().unwrap_or(-1)
}

async fn namespaced_resource_types_are_kept_whole(db: Db) {
    let s = Server::start_with(&db, NAMESPACED);
    let alice = s.key("alice", "user");
    assert_eq!(
        cli_check(
            &s,
            &alice,
            &["--action", "read", "--resource", "Db::Table:prod.customers"]
        ),
        3,
        "the forbid on Db::Table applies"
    );
    assert_eq!(
        cli_check(
            &s,
            &alice,
            &[
                "--action",
                "read",
                "--type",
                "Db::Table",
                "--id",
                "prod.customers"
            ]
        ),
        3
    );
    assert_eq!(
        cli_check(
            &s,
            &alice,
            &["--action", "read", "--resource", "Table:a::b"]
        ),
        0
    );
    // An id may hold colons when given apart.
    assert_eq!(
        cli_check(
            &s,
            &alice,
            &["--action", "read", "--type", "Table", "--id", ":odd"]
        ),
        0
    );
}

const USES: &str = r#"
@id("small-export")
@approvers("leads")
@max_uses("5")
permit(principal, action == Action::"export", resource)
when { context.rows < 1000 };

@id("large-export")
@approvers("leads")
permit(principal, action == Action::"export", resource)
when { context.rows >= 1000 };
"#;

async fn a_grant_keeps_no_looser_terms_than_policy_asks_now(db: Db) {
    // The same approvers either way, but a large export gets one use, not
    // five: a grant approved for ten rows must not carry it.
    let s = start_policy(&db, USES, "", LEADS);
    let (alice, lena, enforcer) = (
        s.key("alice", "user"),
        s.key("lena", "user"),
        s.key("proxy", "enforcer"),
    );
    let (_, r) = s.post(&alice, "/v1/check", rows_export(10)).await;
    let id = r["request"]["id"].as_str().unwrap().to_owned();
    let (_, r) = s.review(&lena, &id, "approve").await;
    assert_eq!(r["status"], "approved", "{r}");
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    let token = r["grant"]["token"].as_str().unwrap().to_owned();
    let (st, r) = s
        .post(
            &enforcer,
            "/v1/grants/consume",
            json!({"token": token, "action": rows_export(1_000_000)}),
        )
        .await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (403, Some("action_mismatch")),
        "{r}"
    );
    let (st, r) = s
        .post(
            &enforcer,
            "/v1/grants/consume",
            json!({"token": token, "action": rows_export(10)}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    // Both consumptions, refused and spent, are in the request's history.
    let (_, a) = s
        .get(&s.key("admin", "admin"), "/v1/audit?limit=10000")
        .await;
    let refused = a["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "grant_refused" && r["details"]["request"] == id.as_str())
        .count();
    assert_eq!(refused, 1);
}

async fn each_use_of_a_grant_reports_its_outcome_once(db: Db) {
    // A five-use grant: one `complete` per consumed use, never more, so
    // the outcomes on record are one per action that ran.
    let s = start_policy(&db, USES, "", LEADS);
    let (alice, lena) = (s.key("alice", "user"), s.key("lena", "user"));
    let (_, r) = s.post(&alice, "/v1/check", rows_export(10)).await;
    let id = r["request"]["id"].as_str().unwrap().to_owned();
    s.review(&lena, &id, "approve").await;
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    let token = r["grant"]["token"].as_str().unwrap().to_owned();
    let gid = r["grant"]["grant_id"].as_str().unwrap().to_owned();
    let complete = |outcome: &'static str| {
        let (s, alice, gid) = (&s, &alice, &gid);
        async move {
            s.post(
                alice,
                &format!("/v1/grants/{gid}/complete"),
                json!({"outcome": outcome}),
            )
            .await
        }
    };
    let (st, r) = complete("success").await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (409, Some("wrong_state")),
        "nothing consumed yet: {r}"
    );
    for used in 1..=2 {
        let (st, r) = s
            .post(
                &alice,
                "/v1/grants/consume",
                json!({"token": token, "action": rows_export(10)}),
            )
            .await;
        assert_eq!(st, 200, "{r}");
        let (st, r) = complete("success").await;
        assert_eq!(st, 200, "use {used}: {r}");
        let (st, r) = complete("failure").await;
        assert_eq!(
            (st, r["error"]["code"].as_str()),
            (409, Some("wrong_state")),
            "use {used} completed twice: {r}"
        );
    }
    let (_, a) = s
        .get(&s.key("admin", "admin"), "/v1/audit?limit=10000")
        .await;
    let completed = a["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "grant_completed" && r["subject"] == gid.as_str())
        .count();
    assert_eq!(completed, 2);
}

async fn keys_of_removed_users_and_enforcers_in_auditor_groups_are_refused(db: Db) {
    let s = Server::start_extra(&db, POLICIES, "[web]\nauditor_groups = [\"security\"]\n");
    let (alice, bob, bob_enforcer) = (
        s.key("alice", "user"),
        s.key("bob", "user"),
        s.key("bob", "enforcer"),
    );
    // An auditor's own key reads the log; an enforcer key never does.
    assert_eq!(s.get(&bob, "/v1/audit").await.0, 200);
    assert_eq!(s.get(&bob_enforcer, "/v1/audit").await.0, 403);
    // alice leaves the configuration: her key stops working.
    assert_eq!(s.get(&alice, "/v1/requests").await.0, 200);
    s.set_users(&format!(
        "{}\n[web]\nauditor_groups = [\"security\"]\n",
        USERS
            .replace(
                "name = \"alice\"\ngroups = [\"engineering\"]",
                "name = \"alicia\"\ngroups = [\"engineering\"]"
            )
            .replace(
                "email = \"alice@example.com\"\nslack_id = \"U0ALICE\"\ndiscord_id = \"D0ALICE\"",
                ""
            )
    ));
    Command::new("kill")
        .args(["-HUP", &s.child.id().to_string()])
        .status()
        .unwrap();
    let mut status = 200;
    for _ in 0..100 {
        status = s.get(&alice, "/v1/requests").await.0;
        if status == 401 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, 401);
    assert_eq!(s.get(&bob, "/v1/requests").await.0, 200);
}

/// A step-up this release does not enforce makes a policy fail to load
/// (TOTP and WebAuthn are enforced: see `stepup`).
#[test]
fn a_policy_asking_for_an_unknown_step_up_does_not_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pii.cedar"),
        "@id(\"pii-export\")\n@approvers(\"security\")\n@step_up(\"sms\")\npermit(principal, action == Action::\"export\", resource);",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["policy", "validate"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("policy \"pii-export\"") && err.contains("step_up"),
        "{err}"
    );
}

on_both_stores!(
    a_recheck_never_inherits_a_laxer_requirement,
    a_grant_for_ten_rows_does_not_carry_a_million,
    trusted_facts_come_from_trusted_callers,
    numbers_bind_exactly_and_never_break_the_chain,
    namespaced_resource_types_are_kept_whole,
    a_grant_keeps_no_looser_terms_than_policy_asks_now,
    each_use_of_a_grant_reports_its_outcome_once,
    keys_of_removed_users_and_enforcers_in_auditor_groups_are_refused,
);
