//! The approval loop: check, wait, review, grant, consume, complete; who
//! may review, expiry of pending requests, revoke and cancel.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

on_both_stores!(
    the_loop_end_to_end,
    wait_is_answered_when_the_request_is_decided,
    reviewers_must_be_eligible_and_not_the_requester,
    a_reviewer_removed_from_the_group_no_longer_counts,
    pending_requests_expire_without_polling,
    revoke_cancel_and_reason_required,
);

async fn the_loop_end_to_end(db: Db) {
    let s = Server::start(&db);
    let (alice, bob, carol) = (
        s.key("alice", "user"),
        s.key("bob", "user"),
        s.key("carol", "user"),
    );
    let (st, allow) = s
        .post(
            &alice,
            "/v1/check",
            json!({"action": "read", "resource": {"type": "Table", "id": "t"}}),
        )
        .await;
    assert_eq!((st, allow["decision"].as_str()), (200, Some("allow")));
    assert_eq!(allow["policies"], json!(["allow-read"]));

    let (_, res) = s
        .post(&alice, "/v1/check", export("alice", "customers"))
        .await;
    let req = &res["request"];
    assert_eq!(req["status"], "pending");
    assert_eq!(req["thresholds"][0]["quorum"], 2);
    assert_eq!(req["thresholds"][0]["approvals"], 0);
    let id = req["id"].as_str().unwrap().to_owned();

    // Asking again returns the pending request.
    let (_, again) = s
        .post(&alice, "/v1/check", export("alice", "customers"))
        .await;
    assert_eq!(again["request"]["id"], id.as_str());

    let (_, r) = s.review(&bob, &id, "approve").await;
    assert_eq!(
        (
            r["status"].as_str(),
            r["thresholds"][0]["approvals"].as_u64()
        ),
        (Some("pending"), Some(1))
    );
    // Quorum counts distinct reviewers: bob again is refused.
    let (st, r) = s.review(&bob, &id, "approve").await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (409, Some("already_reviewed"))
    );
    let (_, r) = s.review(&carol, &id, "approve").await;
    assert_eq!(r["status"], "approved");
    assert!(
        r["grant"].get("token").is_none(),
        "an approver must not see the token"
    );

    let (_, mine) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    let token = mine["grant"]["token"].as_str().unwrap();
    assert!(token.starts_with("v4.public."));

    let (st, c) = s
        .post(
            &alice,
            "/v1/grants/consume",
            json!({"token": token, "action": export("alice", "customers")}),
        )
        .await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["uses_left"], 0);
    let gid = c["grant_id"].as_str().unwrap().to_owned();
    let (st, c) = s
        .post(
            &alice,
            "/v1/grants/consume",
            json!({"token": token, "action": export("alice", "customers")}),
        )
        .await;
    assert_eq!(
        (st, c["error"]["code"].as_str()),
        (403, Some("grant_spent"))
    );

    let (st, _) = s
        .post(
            &alice,
            &format!("/v1/grants/{gid}/complete"),
            json!({"outcome": "success", "detail": {"rows": 10}}),
        )
        .await;
    assert_eq!(st, 200);
    let (_, done) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert_eq!(done["status"], "completed");

    // Every step is on record, and the key itself never is.
    let admin = s.key("admin", "admin");
    let (_, a) = s.get(&admin, "/v1/audit?limit=1000").await;
    let kinds: Vec<&str> = a["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    for k in [
        "decision",
        "request_created",
        "review",
        "request_state",
        "grant_issued",
        "grant_consumed",
        "grant_refused",
        "grant_completed",
        "policy_loaded",
        "key_created",
    ] {
        assert!(kinds.contains(&k), "no {k} record in {kinds:?}");
    }
    let text = a.to_string();
    assert!(
        !text.contains(&alice) && !text.contains(token),
        "secrets leaked into the audit log"
    );

    let (code, out) = s.verify();
    assert_eq!(code, 0, "{out}");
}

async fn wait_is_answered_when_the_request_is_decided(db: Db) {
    let s = Server::start(&db);
    let (alice, bob, carol) = (
        s.key("alice", "user"),
        s.key("bob", "user"),
        s.key("carol", "user"),
    );
    let (_, res) = s.post(&alice, "/v1/check", export("alice", "orders")).await;
    let id = res["request"]["id"].as_str().unwrap().to_owned();
    let waiter = {
        let (url, alice, id) = (s.url.clone(), alice.clone(), id.clone());
        tokio::spawn(async move {
            let r = reqwest::Client::new()
                .get(format!("{url}/v1/requests/{id}?wait=30"))
                .bearer_auth(alice)
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "wait returned while still pending");
    s.review(&bob, &id, "approve").await;
    s.review(&carol, &id, "approve").await;
    let got = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got["status"], "approved");
    assert!(got["grant"]["token"].is_string());
}

async fn reviewers_must_be_eligible_and_not_the_requester(db: Db) {
    let s = Server::start(&db);
    let (alice, bob, mallory, admin) = (
        s.key("alice", "user"),
        s.key("bob", "user"),
        s.key("mallory", "user"),
        s.key("admin", "admin"),
    );
    let (_, res) = s.post(&admin, "/v1/check", export("admin", "orders")).await;
    let own = res["request"]["id"].as_str().unwrap().to_owned();
    let (st, r) = s.review(&admin, &own, "approve").await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (403, Some("self_review")),
        "admins included"
    );

    let (_, res) = s.post(&alice, "/v1/check", export("alice", "orders")).await;
    let id = res["request"]["id"].as_str().unwrap().to_owned();
    let (st, r) = s.review(&alice, &id, "approve").await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (403, Some("self_review"))
    );
    let (st, r) = s.review(&mallory, &id, "approve").await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (403, Some("not_eligible"))
    );
    // Each attempt is on record with its request (found by a black-box
    // pass: none was).
    let refused = s.audit_of(&admin, "review_refused", 3).await;
    let mut seen: Vec<(String, String)> = refused
        .iter()
        .map(|r| {
            (
                r["actor"].as_str().unwrap().to_owned(),
                r["details"]["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("admin".to_owned(), "self_review".to_owned()),
            ("alice".into(), "self_review".into()),
            ("mallory".into(), "not_eligible".into())
        ]
    );
    assert!(refused.iter().any(|r| r["subject"] == id.as_str()));
    // Mallory cannot even see it.
    let (st, _) = s.get(&mallory, &format!("/v1/requests/{id}")).await;
    assert_eq!(st, 404);
    let (_, r) = s.review(&bob, &id, "deny").await;
    assert_eq!(r["status"], "denied", "one eligible deny ends the request");
    let (st, r) = s.review(&admin, &id, "approve").await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (409, Some("wrong_state"))
    );
}

async fn a_reviewer_removed_from_the_group_no_longer_counts(db: Db) {
    let s = Server::start(&db);
    let (alice, bob, carol, admin) = (
        s.key("alice", "user"),
        s.key("bob", "user"),
        s.key("carol", "user"),
        s.key("admin", "admin"),
    );
    let (id, token) = approved(&s, &alice, &bob, &carol, export("alice", "orders")).await;
    s.set_users(&USERS.replace(
        "name = \"carol\"\ngroups = [\"security\"]",
        "name = \"carol\"\ngroups = []",
    ));
    Command::new("kill")
        .args(["-HUP", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(
        s.audit_has(&admin, "policy_loaded", "trigger", "sighup")
            .await
    );
    // The reload is on record a moment before it serves: wait until the
    // request's view counts carol's approval no more, before consuming.
    for _ in 0..100 {
        let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
        if r["thresholds"][0]["approvals"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (st, r) = s
        .post(
            &alice,
            "/v1/grants/consume",
            json!({"token": token, "action": export("alice", "orders")}),
        )
        .await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (403, Some("grant_revoked")),
        "{r}"
    );
}

async fn pending_requests_expire_without_polling(db: Db) {
    let s = Server::start(&db);
    let alice = s.key("alice", "user");
    let (_, res) = s
        .post(
            &alice,
            "/v1/check",
            json!({"action": "poke", "resource": {"type": "Table", "id": "t"}}),
        )
        .await;
    let id = res["request"]["id"].as_str().unwrap().to_owned();
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}?wait=20")).await;
    assert_eq!(r["status"], "expired");
}

async fn revoke_cancel_and_reason_required(db: Db) {
    let s = Server::start(&db);
    let (alice, bob, carol, mallory) = (
        s.key("alice", "user"),
        s.key("bob", "user"),
        s.key("carol", "user"),
        s.key("mallory", "user"),
    );
    let (id, token) = approved(&s, &alice, &bob, &carol, export("alice", "orders")).await;
    // Mallory may not even see it: absent to her, as for a read. Alice
    // sees it but is no approver.
    let (st, _) = s
        .post(&mallory, &format!("/v1/requests/{id}/revoke"), json!({}))
        .await;
    assert_eq!(st, 404);
    let (st, _) = s
        .post(&alice, &format!("/v1/requests/{id}/revoke"), json!({}))
        .await;
    assert_eq!(st, 403);
    let (st, r) = s
        .post(
            &bob,
            &format!("/v1/requests/{id}/revoke"),
            json!({"reason": "changed my mind"}),
        )
        .await;
    assert_eq!((st, r["status"].as_str()), (200, Some("revoked")));
    let (st, r) = s
        .post(
            &alice,
            "/v1/grants/consume",
            json!({"token": token, "action": export("alice", "orders")}),
        )
        .await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (403, Some("grant_revoked"))
    );

    let (_, res) = s
        .post(&alice, "/v1/check", export("alice", "customers"))
        .await;
    let id = res["request"]["id"].as_str().unwrap().to_owned();
    let (st, _) = s
        .post(&bob, &format!("/v1/requests/{id}/cancel"), json!({}))
        .await;
    assert_eq!(st, 403, "only the requester cancels");
    let (st, r) = s
        .post(&alice, &format!("/v1/requests/{id}/cancel"), json!({}))
        .await;
    assert_eq!((st, r["status"].as_str()), (200, Some("cancelled")));
    let (st, _) = s
        .post(&alice, &format!("/v1/requests/{id}/cancel"), json!({}))
        .await;
    assert_eq!(st, 409);

    let wipe = json!({"action": "wipe", "resource": {"type": "Table", "id": "t"}});
    let (st, r) = s.post(&alice, "/v1/check", wipe.clone()).await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (400, Some("reason_required"))
    );
    // A reason of invisible characters only is none.
    let mut blank = wipe.clone();
    blank["reason"] = json!("\u{200b}\u{feff} ");
    let (st, r) = s.post(&alice, "/v1/check", blank).await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (400, Some("reason_required"))
    );
    let mut with = wipe;
    with["reason"] = json!("ticket OPS-1");
    let (st, _) = s.post(&alice, "/v1/check", with).await;
    assert_eq!(st, 200);
}

/// A missing reason names the policy that asks for one, not merely the
/// first that asks for approval (`pii-export-owner` was named for a
/// reason `pii-export-security` asked).
#[tokio::test]
async fn a_missing_reason_names_the_policy_that_asks_for_it() {
    const POLICIES: &str = r#"
@id("a-owners") @approvers("security")
permit(principal, action == Action::"export", resource);
@id("b-why") @approvers("security") @reason("required")
permit(principal, action == Action::"export", resource);
"#;
    let s = Server::start_with(&Db::Sqlite, POLICIES);
    let alice = s.key("alice", "user");
    let (st, r) = s
        .post(
            &alice,
            "/v1/check",
            json!({"action": "export", "resource": {"type": "Table", "id": "t"}}),
        )
        .await;
    assert_eq!(st, 400, "{r}");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(message.contains("b-why"), "{message}");
}
