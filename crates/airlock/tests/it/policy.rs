//! Policies: the `policy` commands without a server, reloads (on a
//! signal and on file changes, failed ones kept out), and the context
//! Airlock computes for them.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

on_both_stores!(
    a_failed_reload_keeps_the_old_policy_and_is_recorded,
    context_is_computed_by_airlock,
    policies_reload_when_their_files_change,
    principal_history_is_in_the_context,
);

async fn a_failed_reload_keeps_the_old_policy_and_is_recorded(db: Db) {
    let s = Server::start(&db);
    let (alice, admin) = (s.key("alice", "user"), s.key("admin", "admin"));
    std::fs::write(
        s.dir.path().join("policies/main.cedar"),
        format!("{POLICIES}\n@id(\"bad\")\n@approvers(\"security\")\n@quorum(\"0\")\npermit(principal, action, resource);"),
    )
    .unwrap();
    Command::new("kill")
        .args(["-HUP", &s.child.id().to_string()])
        .status()
        .unwrap();
    let mut found = None;
    for _ in 0..100 {
        let (_, a) = s.get(&admin, "/v1/audit?limit=1000").await;
        found = a["records"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == "policy_reload_failed")
            .cloned();
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rec = found.expect("no policy_reload_failed record");
    assert!(
        rec["details"]["error"]
            .as_str()
            .unwrap()
            .contains("main.cedar:"),
        "{rec}"
    );
    let (_, r) = s
        .post(
            &alice,
            "/v1/check",
            json!({"action": "read", "resource": {"type": "Table", "id": "t"}}),
        )
        .await;
    assert_eq!(r["decision"], "allow");
    let (_, r) = s
        .post(&alice, "/v1/check", export("alice", "secrets"))
        .await;
    assert_eq!(r["decision"], "deny");
}

async fn context_is_computed_by_airlock(db: Db) {
    let hour = chrono_hour();
    let policies = format!(
        "@id(\"hour\")\npermit(principal, action == Action::\"read\", resource) when {{ context.local_hour == {hour} && context.weekday != \"\" }};\n\
         @id(\"lie\")\nforbid(principal, action, resource) when {{ context.local_hour == 99 }};\n\
         @id(\"net\")\nforbid(principal, action, resource) when {{ context.source_ip.isInRange(ip(\"10.0.0.0/8\")) }};"
    );
    let s = Server::start_with(&db, &policies);
    let alice = s.key("alice", "user");
    let (_, r) = s.post(&alice, "/v1/check", json!({"action": "read", "resource": {"type": "Table", "id": "t"}, "context": {"local_hour": 99}})).await;
    if chrono_hour() == hour {
        assert_eq!(r["decision"], "allow", "{r}");
    }
    // The end user's address is a fact only an enforcer may state; a user
    // key's claim is replaced by the connection's address.
    let enforcer = s.key("proxy", "enforcer");
    let (_, r) = s.post(&enforcer, "/v1/check", json!({"principal": "alice", "action": "read", "resource": {"type": "Table", "id": "t"}, "context": {"source_ip": "10.1.2.3"}})).await;
    assert_eq!(r["decision"], "deny", "{r}");
    let (_, r) = s.post(&alice, "/v1/check", json!({"action": "read", "resource": {"type": "Table", "id": "t"}, "context": {"source_ip": "10.1.2.3"}})).await;
    if chrono_hour() == hour {
        assert_eq!(r["decision"], "allow", "{r}");
    }
}

fn chrono_hour() -> u32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    ((secs / 3600) % 24) as u32
}

#[test]
fn policy_commands_work_without_a_server() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ok.cedar"), POLICIES).unwrap();
    let out = Command::new(BIN)
        .args(["policy", "validate"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.path().join("zz.cedar"), "permit(principal, action, resource);\n@approvers(\"security\")\n@quorum(\"0\")\npermit(principal, action, resource);").unwrap();
    let out = Command::new(BIN)
        .args(["policy", "validate"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("zz.cedar:2: policy \"zz.1\"") && err.contains("quorum"),
        "{err}"
    );

    let quick =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart/policies/tests.toml");
    let out = Command::new(BIN)
        .args(["policy", "test"])
        .arg(&quick)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::remove_file(dir.path().join("zz.cedar")).unwrap();
    std::fs::write(
        dir.path().join("cases.toml"),
        "[[cases]]\nname = \"wrong\"\nprincipal = \"alice\"\naction = \"export\"\nresource = { type = \"Table\", id = \"t\" }\nexpect = \"allow\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["policy", "test"])
        .arg(dir.path().join("cases.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FAIL wrong") && text.contains("+ got:      approval_required"),
        "{text}"
    );
}

async fn policies_reload_when_their_files_change(db: Db) {
    let s = Server::start(&db);
    let alice = s.key("alice", "user");
    let health = |s: &Server| {
        let url = format!("{}/healthz", s.url);
        async move {
            reqwest::get(url)
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let before = health(&s).await["policy_version"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, r) = s
        .post(
            &alice,
            "/v1/check",
            json!({"action": "list", "resource": {"type": "Table", "id": "t"}}),
        )
        .await;
    assert_eq!(r["decision"], "deny");
    std::fs::write(
        s.dir.path().join("policies/extra.cedar"),
        "@id(\"list\")\npermit(principal, action == Action::\"list\", resource);",
    )
    .unwrap();
    let mut after = before.clone();
    for _ in 0..100 {
        after = health(&s).await["policy_version"]
            .as_str()
            .unwrap()
            .to_owned();
        if after != before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(after, before, "no reload after a file change");
    let (_, r) = s
        .post(
            &alice,
            "/v1/check",
            json!({"action": "list", "resource": {"type": "Table", "id": "t"}}),
        )
        .await;
    assert_eq!(r["decision"], "allow");
    // Each decision's record names the policy version that made it.
    let admin = s.key("admin", "admin");
    let (_, a) = s.get(&admin, "/v1/audit?limit=1000").await;
    let last = a["records"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|r| r["kind"] == "decision")
        .unwrap()
        .clone();
    assert_eq!(last["details"]["policy_version"], after.as_str());
}

async fn principal_history_is_in_the_context(db: Db) {
    let policies = r#"
@id("ask")
@approvers("security")
permit(principal, action == Action::"export", resource) unless { context.granted_before };
@id("again")
permit(principal, action == Action::"export", resource) when { context.granted_before };
@id("burst")
forbid(principal, action == Action::"export", resource) when { context.sensitive_actions_last_hour >= 2 };
"#;
    let s = Server::start_with(&db, policies);
    let (alice, bob) = (s.key("alice", "user"), s.key("bob", "user"));
    let t = |id: &str| json!({"action": "export", "resource": {"type": "Table", "id": id}, "context": {"granted_before": true, "sensitive_actions_last_hour": 0}});
    let (_, r) = s.post(&alice, "/v1/check", t("a")).await;
    assert_eq!(
        r["decision"], "approval_required",
        "the caller cannot claim a history: {r}"
    );
    let id = r["request"]["id"].as_str().unwrap().to_owned();
    s.review(&bob, &id, "approve").await;
    let (_, r) = s.post(&alice, "/v1/check", t("a")).await;
    assert_eq!(r["decision"], "allow", "granted before: {r}");
    let (_, r) = s.post(&alice, "/v1/check", t("b")).await;
    assert_eq!(r["decision"], "approval_required", "{r}");
    let (_, r) = s.post(&alice, "/v1/check", t("c")).await;
    assert_eq!(
        r["decision"], "deny",
        "two sensitive actions in the last hour: {r}"
    );
    assert_eq!(r["policies"], json!(["burst"]));
}

/// A computed fact an enforcer states (all but `source_ip`) is dropped,
/// as a user key's is: it was ignored by the decision but shown in
/// REQUEST.context, where reviewers read it as a fact policy used.
#[tokio::test]
async fn an_enforcers_computed_facts_are_not_kept() {
    let s = Server::start_with(
        &Db::Sqlite,
        "@id(\"ask\") @approvers(\"security\")\npermit(principal, action == Action::\"export\", resource);",
    );
    let enforcer = s.key("proxy", "enforcer");
    let (_, r) = s
        .post(
            &enforcer,
            "/v1/check",
            json!({"principal": "alice", "action": "export", "resource": {"type": "Table", "id": "t"},
                   "context": {"local_hour": 3, "weekday": "Sun", "source_ip": "203.0.113.9", "rows": 5}}),
        )
        .await;
    let context = &r["request"]["context"];
    assert!(context.get("local_hour").is_none(), "{r}");
    assert!(context.get("weekday").is_none(), "{r}");
    assert_eq!(context["source_ip"], "203.0.113.9", "{r}");
    assert_eq!(context["rows"], 5, "{r}");
    // The decisions it was decided on show the address as text too, not
    // Cedar's `{"__extn": …}` (found by a black-box pass).
    let id = r["request"]["id"].as_str().unwrap();
    let (_, r) = s.get(&enforcer, &format!("/v1/requests/{id}")).await;
    let decided = &r["decisions"][0]["context"];
    assert_eq!(decided["source_ip"], "203.0.113.9", "{r}");
    assert_eq!(decided["rows"], 5, "{r}");
}
