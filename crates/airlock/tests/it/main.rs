//! The integration suite: real `airlock serve` processes on real sockets,
//! driven over HTTP and through the real `airlock` binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use airlock_store::testing::TestDb;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_airlock");

#[path = "hardening/inert.rs"]
mod hardening_inert;

const POLICIES: &str = r#"
@id("allow-read")
permit(principal, action == Action::"read", resource);

@id("needs-security")
@approvers("security")
@quorum("2")
permit(principal, action == Action::"export", resource)
unless { resource == Table::"secrets" };

@id("no-secrets")
forbid(principal, action == Action::"export", resource == Table::"secrets");

@id("short-request")
@approvers("security")
@request_ttl("2s")
permit(principal, action == Action::"poke", resource);

@id("short-grant")
@approvers("security")
@grant_ttl("2s")
permit(principal, action == Action::"tap", resource);

@id("why")
@approvers("security")
@reason("required")
permit(principal, action == Action::"wipe", resource);
"#;

const USERS: &str = r#"
[[users]]
name = "alice"
groups = ["engineering"]
email = "alice@example.com"
slack_id = "U0ALICE"
discord_id = "D0ALICE"

[[users]]
name = "bob"
groups = ["security"]
email = "bob@example.com"
slack_id = "U0BOB"
discord_id = "D0BOB"

[[users]]
name = "carol"
groups = ["security"]
email = "carol@example.com"
slack_id = "U0CAROL"
discord_id = "D0CAROL"

[[users]]
name = "mallory"
groups = []
slack_id = "U0MALLORY"
discord_id = "D0MALLORY"

[[users]]
name = "admin"
groups = ["security"]
"#;

/// Which store a test's servers use.
#[derive(Clone)]
enum Db {
    /// A SQLite file in the server's own folder.
    Sqlite,
    /// A database of its own on the test PostgreSQL server, shared by every
    /// node the test starts.
    Postgres(Arc<TestDb>),
    /// The same, reached through a [`Proxy`] the test can cut.
    Proxied(Arc<TestDb>, String),
}

impl Db {
    fn url(&self) -> String {
        match self {
            Db::Sqlite => "sqlite://data/airlock.db".into(),
            Db::Postgres(db) => db.url().to_owned(),
            Db::Proxied(_, url) => url.clone(),
        }
    }
}

/// Runs each named test once per store: `sqlite::NAME` and
/// `postgres::NAME`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Db::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(db) = airlock_store::testing::TestDb::create() else { return };
                    super::$name(super::Db::Postgres(std::sync::Arc::new(db))).await;
                }
            )*
        }
    };
}

#[path = "hardening/starve.rs"]
mod hardening_starve;

on_both_stores!(
    the_loop_end_to_end,
    wait_is_answered_when_the_request_is_decided,
    hundred_concurrent_consumers_exactly_one_wins,
    grants_are_refused_for_other_actions_forgeries_and_expiry,
    reviewers_must_be_eligible_and_not_the_requester,
    a_reviewer_removed_from_the_group_no_longer_counts,
    pending_requests_expire_without_polling,
    revoke_cancel_and_reason_required,
    a_failed_reload_keeps_the_old_policy_and_is_recorded,
    when_the_audit_log_cannot_be_written_nothing_is_allowed,
    audit_verify_names_the_first_tampered_record,
    http_errors_follow_the_contract,
    context_is_computed_by_airlock,
    airlock_run_waits_runs_and_exits_with_the_command_code,
    policies_reload_when_their_files_change,
    the_chain_head_is_signed_at_shutdown,
    ctrl_c_while_waiting_cancels_the_request,
    set_password_stores_an_argon2_hash_from_stdin,
    principal_history_is_in_the_context,
    a_node_refuses_a_newer_schema,
    a_node_with_other_signing_keys_refuses_to_start,
    webhooks_are_signed_and_follow_the_loop,
);

#[path = "hardening/gate.rs"]
mod hardening_gate;
#[path = "hardening/keys.rs"]
mod hardening_keys;
#[path = "hardening/signin.rs"]
mod hardening_signin;

struct Server {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
    http: reqwest::Client,
    db: Db,
    data: PathBuf,
    checkpoint_every: u64,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a node keeps its signing keys: its own folder, or the first
/// node's, which every node of a deployment shares.
fn write_config(dir: &Path, db: &Db, users: &str, checkpoint_every: u64, data_dir: &Path) {
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {data:?}\n\n[storage]\nurl = {url:?}\n\n[policy]\ndir = \"policies\"\n\n[audit]\ncheckpoint_interval_seconds = {checkpoint_every}\n{users}",
        data = data_dir.display().to_string(),
        url = db.url(),
    );
    std::fs::write(dir.join("airlock.toml"), cfg).unwrap();
}

impl Server {
    fn start(db: &Db) -> Server {
        Self::start_with(db, POLICIES)
    }

    fn start_with(db: &Db, policies: &str) -> Server {
        Self::start_opts(db, policies, 1)
    }

    fn start_opts(db: &Db, policies: &str, checkpoint_every: u64) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        Self::launch(dir, db, policies, checkpoint_every, &data)
    }

    /// A server whose config has `extra` (TOML) after the users.
    fn start_extra(db: &Db, policies: &str, extra: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/main.cedar"), policies).unwrap();
        write_config(dir.path(), db, &format!("{USERS}\n{extra}"), 1, &data);
        Self::serve(dir, db, 1, &data)
    }

    /// Kills the process (SIGKILL) and starts it again on the same config.
    fn restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(self.config())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        reader.read_line(&mut line).unwrap();
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        self.url = line
            .trim()
            .strip_prefix("Airlock listening on ")
            .unwrap()
            .to_owned();
        self.child = child;
    }

    /// Another node of the same deployment: same database, same keys, its
    /// own folder, config and copy of the policies.
    fn join(&self) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let policies =
            std::fs::read_to_string(self.dir.path().join("policies/main.cedar")).unwrap();
        let data = self.dir.path().join("data");
        Self::launch(dir, &self.db, &policies, 1, &data)
    }

    fn launch(
        dir: tempfile::TempDir,
        db: &Db,
        policies: &str,
        checkpoint_every: u64,
        data: &Path,
    ) -> Server {
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/main.cedar"), policies).unwrap();
        write_config(dir.path(), db, USERS, checkpoint_every, data);
        Self::serve(dir, db, checkpoint_every, data)
    }

    /// Starts `airlock serve` on the config already in `dir`.
    fn serve(dir: tempfile::TempDir, db: &Db, checkpoint_every: u64, data: &Path) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(dir.path().join("airlock.toml"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        reader.read_line(&mut line).unwrap();
        // Keep draining, as a supervisor would.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        let url = line
            .trim()
            .strip_prefix("Airlock listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Server {
            child,
            url,
            dir,
            http: reqwest::Client::new(),
            db: db.clone(),
            data: data.to_owned(),
            checkpoint_every,
        }
    }

    /// Rewrites this node's config with other users (reload with SIGHUP).
    fn set_users(&self, users: &str) {
        write_config(
            self.dir.path(),
            &self.db,
            users,
            self.checkpoint_every,
            &self.data,
        );
    }

    /// Runs SQL against this server's store (to break or tamper with it).
    fn sql(&self, sql: &str) {
        match &self.db {
            Db::Sqlite => rusqlite::Connection::open(self.db())
                .unwrap()
                .execute_batch(sql)
                .unwrap(),
            Db::Postgres(db) | Db::Proxied(db, _) => db.execute(sql),
        }
    }

    /// One integer from the store.
    fn sql_i64(&self, sql: &str) -> i64 {
        match &self.db {
            Db::Sqlite => rusqlite::Connection::open(self.db())
                .unwrap()
                .query_row(sql, [], |r| r.get(0))
                .unwrap(),
            Db::Postgres(db) | Db::Proxied(db, _) => db.query_i64(sql),
        }
    }

    /// One text value from the store.
    fn sql_text(&self, sql: &str) -> String {
        match &self.db {
            Db::Sqlite => rusqlite::Connection::open(self.db())
                .unwrap()
                .query_row(sql, [], |r| r.get(0))
                .unwrap(),
            Db::Postgres(db) | Db::Proxied(db, _) => db.query_text(sql),
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("airlock.toml")
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("data/airlock.db")
    }

    fn key(&self, user: &str, role: &str) -> String {
        let out = Command::new(BIN)
            .args(["keys", "create", "--config"])
            .arg(self.config())
            .args(["--user", user, "--role", role])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_owned()
    }

    async fn call(
        &self,
        method: reqwest::Method,
        key: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, key: &str, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, key, path, Some(body))
            .await
    }

    async fn get(&self, key: &str, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, key, path, None).await
    }

    async fn review(&self, key: &str, id: &str, verdict: &str) -> (u16, Value) {
        self.post(
            key,
            &format!("/v1/requests/{id}/reviews"),
            json!({"verdict": verdict, "reason": "looked at it"}),
        )
        .await
    }

    /// Waits until the audit log holds a record of `kind` with `field == value`.
    async fn audit_has(&self, admin: &str, kind: &str, field: &str, value: &str) -> bool {
        for _ in 0..100 {
            let (_, a) = self.get(admin, "/v1/audit?limit=10000").await;
            if a["records"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["kind"] == kind && r["details"][field] == value)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    fn verify(&self) -> (i32, String) {
        let out = Command::new(BIN)
            .args(["audit", "verify", "--config"])
            .arg(self.config())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }
}

/// Waits for a pending request to appear for `key` and returns its id.
async fn first_pending(s: &Server, key: &str) -> String {
    loop {
        let (_, l) = s.get(key, "/v1/requests?status=pending").await;
        if let Some(id) = l["requests"][0]["id"].as_str() {
            return id.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn export(principal: &str, table: &str) -> Value {
    json!({"principal": principal, "action": "export", "resource": {"type": "Table", "id": table}, "params": {"sql": format!("select * from {table}")}})
}

/// alice asks, bob and carol approve: returns (request id, grant token).
async fn approved(
    s: &Server,
    alice: &str,
    bob: &str,
    carol: &str,
    action: Value,
) -> (String, String) {
    let (st, res) = s.post(alice, "/v1/check", action).await;
    assert_eq!(st, 200, "{res}");
    assert_eq!(res["decision"], "approval_required", "{res}");
    let id = res["request"]["id"].as_str().unwrap().to_owned();
    let (st, r) = s.review(bob, &id, "approve").await;
    assert_eq!(st, 200, "{r}");
    if r["status"] == "pending" {
        let (st, r) = s.review(carol, &id, "approve").await;
        assert_eq!(st, 200, "{r}");
        assert_eq!(r["status"], "approved");
    }
    let (_, r) = s.get(alice, &format!("/v1/requests/{id}")).await;
    (id, r["grant"]["token"].as_str().unwrap().to_owned())
}

/// 100 concurrent consumers of one grant (half with the requester's key,
/// half with an enforcer's), spread over `nodes`: exactly one may win.
async fn race_consumers(nodes: &[&Server], requester: &str, enforcer: &str, token: &str) {
    let mut tasks = Vec::new();
    for i in 0..100 {
        let key = if i % 2 == 0 { requester } else { enforcer }.to_owned();
        let (url, token) = (nodes[i % nodes.len()].url.clone(), token.to_owned());
        tasks.push(tokio::spawn(async move {
            let r = reqwest::Client::new()
                .post(format!("{url}/v1/grants/consume"))
                .bearer_auth(key)
                .json(&json!({"token": token, "action": export("alice", "orders")}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let (st, body) = t.await.unwrap();
        match st {
            200 => ok += 1,
            403 => assert_eq!(body["error"]["code"], "grant_spent", "{body}"),
            _ => panic!("{st} {body}"),
        }
    }
    assert_eq!(ok, 1);
}

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

async fn hundred_concurrent_consumers_exactly_one_wins(db: Db) {
    let s = Server::start(&db);
    let (alice, bob, carol) = (
        s.key("alice", "user"),
        s.key("bob", "user"),
        s.key("carol", "user"),
    );
    let enforcer = s.key("proxy", "enforcer");
    let (_, token) = approved(&s, &alice, &bob, &carol, export("alice", "orders")).await;
    race_consumers(&[&s], &alice, &enforcer, &token).await;
}

async fn grants_are_refused_for_other_actions_forgeries_and_expiry(db: Db) {
    let s = Server::start(&db);
    let (alice, bob, carol) = (
        s.key("alice", "user"),
        s.key("bob", "user"),
        s.key("carol", "user"),
    );
    let (_, token) = approved(&s, &alice, &bob, &carol, export("alice", "orders")).await;
    let mut changed = export("alice", "orders");
    changed["params"]["sql"] = json!("select * from orders; drop table orders");
    for action in [
        changed,
        export("alice", "customers"),
        export("bob", "orders"),
    ] {
        let (st, r) = s
            .post(
                &alice,
                "/v1/grants/consume",
                json!({"token": token, "action": action}),
            )
            .await;
        assert_eq!(
            (st, r["error"]["code"].as_str()),
            (403, Some("action_mismatch")),
            "{r}"
        );
    }
    // A token with one character changed.
    let mut forged = token.clone().into_bytes();
    let i = forged.len() - 5;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let (st, r) = s
        .post(
            &alice,
            "/v1/grants/consume",
            json!({"token": forged, "action": export("alice", "orders")}),
        )
        .await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (403, Some("invalid_grant"))
    );
    // Another user's key may not spend alice's grant.
    let (st, _) = s
        .post(
            &bob,
            "/v1/grants/consume",
            json!({"token": token, "action": export("alice", "orders")}),
        )
        .await;
    assert_eq!(st, 403);

    let tap = json!({"action": "tap", "resource": {"type": "Table", "id": "t"}});
    let (_, res) = s.post(&alice, "/v1/check", tap.clone()).await;
    let id = res["request"]["id"].as_str().unwrap().to_owned();
    s.review(&bob, &id, "approve").await;
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    let short = r["grant"]["token"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut tap_p = tap.clone();
    tap_p["principal"] = json!("alice");
    let (st, r) = s
        .post(
            &alice,
            "/v1/grants/consume",
            json!({"token": short, "action": tap_p}),
        )
        .await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (403, Some("grant_expired")),
        "{r}"
    );
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert_eq!(
        r["status"], "expired",
        "an unused grant's request expires with it"
    );
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
    let (_, token) = approved(&s, &alice, &bob, &carol, export("alice", "orders")).await;
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
    let (st, _) = s
        .post(&mallory, &format!("/v1/requests/{id}/revoke"), json!({}))
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
    let mut with = wipe;
    with["reason"] = json!("ticket OPS-1");
    let (st, _) = s.post(&alice, "/v1/check", with).await;
    assert_eq!(st, 200);
}

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

async fn http_errors_follow_the_contract(db: Db) {
    let s = Server::start(&db);
    let (alice, enforcer) = (s.key("alice", "user"), s.key("proxy", "enforcer"));
    let read = json!({"action": "read", "resource": {"type": "Table", "id": "t"}});
    let (st, r) = s.post("", "/v1/check", read.clone()).await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (401, Some("unauthenticated"))
    );
    let (st, _) = s.post("alk_nope", "/v1/check", read.clone()).await;
    assert_eq!(st, 401);
    let res = s
        .http
        .post(format!("{}/v1/check", s.url))
        .bearer_auth(&alice)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_request");
    let (st, _) = s.post(&alice, "/v1/check", read.clone()).await;
    assert_eq!(st, 200);
    let (st, _) = s
        .post(
            &alice,
            "/v1/check",
            json!({"action": "read", "resource": {"type": "Table", "id": "t"}, "typo": 1}),
        )
        .await;
    assert_eq!(st, 400);
    let big = json!({"action": "read", "resource": {"type": "Table", "id": "t"}, "params": {"x": "a".repeat(70_000)}});
    let (st, r) = s.post(&alice, "/v1/check", big).await;
    assert_eq!(
        (st, r["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    let (st, _) = s
        .get(
            &alice,
            "/v1/requests/req_01a20e92-9a95-724f-af8f-8526172314ed",
        )
        .await;
    assert_eq!(st, 404);
    // Only enforcers speak for others.
    let (st, _) = s.post(&alice, "/v1/check", export("bob", "orders")).await;
    assert_eq!(st, 403);
    let (st, r) = s
        .post(&enforcer, "/v1/check", export("bob", "orders"))
        .await;
    assert_eq!((st, r["request"]["principal"].as_str()), (200, Some("bob")));
    let (st, _) = s.get(&alice, "/v1/audit").await;
    assert_eq!(st, 403);
    let (st, k) = s.get(&alice, "/v1/keys").await;
    assert_eq!(st, 200);
    assert!(k["keys"][0]["paserk"]
        .as_str()
        .unwrap()
        .starts_with("k4.public."));
    let h: Value = s
        .http
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok");
    let m = s
        .http
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("airlock_decisions_total{outcome=\"allow\"}"),
        "{m}"
    );
    assert!(m.contains("airlock_pending_requests 1"), "{m}");
    assert!(
        m.contains("airlock_decision_duration_seconds_bucket"),
        "{m}"
    );
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

async fn airlock_run_waits_runs_and_exits_with_the_command_code(db: Db) {
    let s = Server::start(&db);
    let (alice, bob, carol) = (
        s.key("alice", "user"),
        s.key("bob", "user"),
        s.key("carol", "user"),
    );
    let run = |cmd: &[&str]| {
        Command::new(BIN)
            .args([
                "run",
                "--action",
                "export",
                "--resource",
                "Table:orders",
                "--param",
                "sql=select 1",
                "--",
            ])
            .args(cmd)
            .env("AIRLOCK_URL", &s.url)
            .env("AIRLOCK_TOKEN", &alice)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let child = run(&["sh", "-c", "echo ran; exit 7"]);
    let id = first_pending(&s, &bob).await;
    let (_, r) = s.get(&bob, &format!("/v1/requests/{id}")).await;
    assert_eq!(
        r["params"]["command"],
        json!(["sh", "-c", "echo ran; exit 7"]),
        "the command line binds the grant"
    );
    s.review(&bob, &id, "approve").await;
    s.review(&carol, &id, "approve").await;
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
    assert!(
        stderr.contains("security 0/2 (admin, bob, carol)"),
        "shows who must approve: {stderr}"
    );
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert_eq!(r["status"], "completed");
    assert_eq!(r["grant"]["outcome"], "failure");

    let child = run(&["touch", "should-not-exist"]);
    let id = first_pending(&s, &bob).await;
    s.review(&bob, &id, "deny").await;
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("denied by bob"));
    assert!(!Path::new("should-not-exist").exists());
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

#[test]
fn quickstart_starts_with_no_config() {
    let dir = tempfile::tempdir().unwrap();
    // The quickstart listens on 8080; skip when something else already does.
    if std::net::TcpListener::bind("127.0.0.1:8080").is_err() {
        eprintln!("port 8080 busy; skipping");
        return;
    }
    let mut child = Command::new(BIN)
        .arg("serve")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut text = String::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    for _ in 0..40 {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        text.push_str(&line);
        if line.starts_with("Policies:") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        text.contains("Airlock listening on http://127.0.0.1:8080"),
        "{text}"
    );
    assert!(text.contains("Admin key: alk_"), "{text}");
    assert!(text.contains("airlock run --action export"), "{text}");
    assert!(dir.path().join(".airlock/airlock.db").exists());
    assert!(dir.path().join(".airlock/keys/grant-signing.key").exists());
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

async fn ctrl_c_while_waiting_cancels_the_request(db: Db) {
    let s = Server::start(&db);
    let (alice, bob) = (s.key("alice", "user"), s.key("bob", "user"));
    let child = Command::new(BIN)
        .args([
            "run",
            "--action",
            "export",
            "--resource",
            "Table:orders",
            "--",
            "true",
        ])
        .env("AIRLOCK_URL", &s.url)
        .env("AIRLOCK_TOKEN", &alice)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = first_pending(&s, &bob).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert_eq!(r["status"], "cancelled");
}

async fn set_password_stores_an_argon2_hash_from_stdin(db: Db) {
    use std::io::Write;
    let s = Server::start(&db);
    let set = |user: &str, password: &str| {
        let mut child = Command::new(BIN)
            .args(["users", "set-password", "--config"])
            .arg(s.config())
            .args(["--user", user])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(password.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = set("alice", "correct horse battery staple\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hash = s.sql_text("SELECT hash FROM passwords WHERE user_name = 'alice'");
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("horse"));
    let audit =
        s.sql_i64("SELECT COUNT(*) FROM audit WHERE kind = 'password_set' AND subject = 'alice'");
    assert_eq!(audit, 1);
    assert!(!set("alice", "short\n").status.success());
    assert!(!set("nobody", "long enough password\n").status.success());
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

// ---------------------------------------------------------------------------
// Several nodes on one PostgreSQL database.
// ---------------------------------------------------------------------------

/// Three nodes sharing one fresh database and one set of keys; `None` when
/// PostgreSQL tests are skipped.
fn three_nodes() -> Option<(Server, Server, Server)> {
    let db = Db::Postgres(Arc::new(TestDb::create()?));
    let a = Server::start(&db);
    let (b, c) = (a.join(), a.join());
    Some((a, b, c))
}

fn read_t() -> Value {
    json!({"action": "read", "resource": {"type": "Table", "id": "t"}})
}

/// The audit records about `subject`.
async fn audit_about(s: &Server, admin: &str, subject: &str) -> Vec<Value> {
    let (st, a) = s.get(admin, "/v1/audit?limit=100000").await;
    assert_eq!(st, 200, "{a}");
    a["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["subject"] == subject)
        .cloned()
        .collect()
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

// ---------------------------------------------------------------------------
// The web console, in a real browser (headless Chromium via chromedriver).
// ---------------------------------------------------------------------------

const CONSOLE_POLICIES: &str = r#"
@id("reads")
permit(principal, action == Action::"read", resource);

@id("exports-need-security")
@approvers("security")
permit(principal, action == Action::"export", resource);
"#;

/// Sets a user's console password through the CLI, as an operator would.
fn set_password(s: &Server, user: &str, password: &str) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(["users", "set-password", "--config"])
        .arg(s.config())
        .args(["--user", user])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
}

/// chromedriver on a free port, killed at the end of the test; `None` when
/// `AIRLOCK_TEST_BROWSER=skip`.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start() -> Option<Driver> {
        if std::env::var("AIRLOCK_TEST_BROWSER").as_deref() == Ok("skip") {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("chromedriver: {e}; install chromium and chromium-driver, or set AIRLOCK_TEST_BROWSER=skip")
            });
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }

    async fn browser(&self, width: u32, height: u32) -> fantoccini::Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         format!("--window-size={width},{height}")],
            }),
        );
        fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap()
    }
}

fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn sign_in(b: &fantoccini::Client, base: &str, user: &str, password: &str) {
    use fantoccini::Locator;
    b.goto(&format!("{base}/login")).await.unwrap();
    b.find(Locator::Css("input[name=username]"))
        .await
        .unwrap()
        .send_keys(user)
        .await
        .unwrap();
    b.find(Locator::Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys(password)
        .await
        .unwrap();
    b.find(Locator::Css("form.card button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("form.signout"))
        .await
        .unwrap_or_else(|e| panic!("{user} did not get signed in: {e}"));
}

#[tokio::test]
async fn console_approve_in_a_real_browser_lets_a_waiting_run_go_ahead() {
    use fantoccini::Locator;
    let Some(driver) = Driver::start() else {
        return;
    };
    let s = Server::start_with(&Db::Sqlite, CONSOLE_POLICIES);
    let alice = s.key("alice", "user");
    set_password(&s, "bob", "bob's long password");
    set_password(&s, "mallory", "mallory's long password");
    let b = driver.browser(1280, 900).await;
    sign_in(&b, &s.url, "bob", "bob's long password").await;
    assert_eq!(b.current_url().await.unwrap().path(), "/inbox");
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("html[data-live-ready]"))
        .await
        .unwrap();

    // alice's command waits for approval; the open inbox shows it live.
    let marker = s.dir.path().join("ran");
    let run = Command::new(BIN)
        .args([
            "run",
            "--action",
            "export",
            "--resource",
            "Table:orders",
            "--reason",
            "monthly report",
            "--",
        ])
        .args(["sh", "-c", &format!("echo ran > {}", marker.display())])
        .env("AIRLOCK_URL", &s.url)
        .env("AIRLOCK_TOKEN", &alice)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let row = b
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css("li.request a.title"))
        .await
        .expect("the request appears in the open inbox without a reload");
    let text = b
        .find(Locator::Css("li.request"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("alice") && text.contains("monthly report"),
        "{text}"
    );
    assert!(text.contains("security 0/1"), "what is missing: {text}");
    std::fs::write(
        screenshot_dir().join("inbox.png"),
        b.screenshot().await.unwrap(),
    )
    .unwrap();

    row.click().await.unwrap();
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("button.approve"))
        .await
        .unwrap();
    let page = b.source().await.unwrap();
    for shown in [
        "monthly report",
        "exports-need-security",
        "Params",
        "History",
        "request_created",
    ] {
        assert!(page.contains(shown), "request page shows {shown}");
    }
    std::fs::write(
        screenshot_dir().join("request.png"),
        b.screenshot().await.unwrap(),
    )
    .unwrap();
    let request_url = b.current_url().await.unwrap();
    b.find(Locator::Css("textarea[name=reason]"))
        .await
        .unwrap()
        .send_keys("fine for the report")
        .await
        .unwrap();
    b.find(Locator::Css("button.approve"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(
            "span.status.approved, span.status.consumed, span.status.completed",
        ))
        .await
        .unwrap();

    // The waiting command goes ahead.
    let out = tokio::task::spawn_blocking(move || run.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ran\n");

    // The review is recorded as made on the web, by bob.
    let admin = s.key("admin", "admin");
    let (_, audit) = s.get(&admin, "/v1/audit?limit=1000").await;
    assert!(audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["kind"] == "review" && r["actor"] == "bob" && r["details"]["channel"] == "web"));
    assert!(audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["kind"] == "sign_in" && r["actor"] == "bob"));
    b.close().await.unwrap();

    // Someone who may see the request but not review it (its requester)
    // sees no buttons; forged POSTs are refused by the same rules as the API.
    set_password(&s, "alice", "alice's long password");
    let (_, r) = s
        .post(
            &alice,
            "/v1/check",
            json!({"action": "export", "resource": {"type": "Table", "id": "t2"}}),
        )
        .await;
    let id = r["request"]["id"].as_str().unwrap().to_owned();
    let phone = driver.browser(390, 844).await;
    sign_in(&phone, &s.url, "alice", "alice's long password").await;
    phone
        .goto(&format!("{}/requests/{id}", s.url))
        .await
        .unwrap();
    phone
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("span.status.pending"))
        .await
        .unwrap();
    assert!(
        phone.find(Locator::Css("button.approve")).await.is_err(),
        "the requester sees no Approve"
    );
    assert!(
        phone.find(Locator::Css("button.deny")).await.is_err(),
        "the requester sees no Deny"
    );
    std::fs::write(
        screenshot_dir().join("request-phone-requester.png"),
        phone.screenshot().await.unwrap(),
    )
    .unwrap();
    phone.close().await.unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (user, password, code) in [
        ("alice", "alice's long password", 403),     // self-review
        ("mallory", "mallory's long password", 403), // not an approver
    ] {
        let (cookie, csrf) = http_sign_in(&http, &s.url, user, password).await;
        let forged = http
            .post(format!("{}/requests/{id}/review", s.url))
            .header("cookie", format!("airlock_session={cookie}"))
            .form(&[
                ("csrf", csrf.as_str()),
                ("verdict", "approve"),
                ("reason", ""),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status().as_u16(), code, "{user}'s forged approval");
    }

    // A POST without the right CSRF token is refused, even from bob's
    // valid session.
    let (bob_cookie, _) = http_sign_in(&http, &s.url, "bob", "bob's long password").await;
    for form in [
        vec![("verdict", "approve")],
        vec![("verdict", "approve"), ("csrf", "not-the-token")],
    ] {
        let r = http
            .post(format!("{}/requests/{id}/review", s.url))
            .header("cookie", format!("airlock_session={bob_cookie}"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "{form:?}");
    }
    // The sign-in form itself needs its token.
    let r = http
        .post(format!("{}/login", s.url))
        .form(&[("username", "bob"), ("password", "bob's long password")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert_eq!(r["status"], "pending", "nothing above approved it");
    assert!(r["reviews"].as_array().unwrap().is_empty());
    let _ = request_url;
}

/// Signs in over plain HTTP, as a script would: returns the session cookie
/// and the session's CSRF token (from a page's hidden field).
async fn http_sign_in(
    http: &reqwest::Client,
    base: &str,
    user: &str,
    password: &str,
) -> (String, String) {
    let set_cookie = |res: &reqwest::Response, name: &str| {
        res.headers().get_all("set-cookie").iter().find_map(|v| {
            let v = v.to_str().ok()?.strip_prefix(name)?.strip_prefix('=')?;
            Some(v.split(';').next().unwrap_or("").to_owned())
        })
    };
    let form = http.get(format!("{base}/login")).send().await.unwrap();
    let login_csrf = set_cookie(&form, "airlock_login_csrf").unwrap();
    let signed = http
        .post(format!("{base}/login"))
        .header("cookie", format!("airlock_login_csrf={login_csrf}"))
        .form(&[
            ("csrf", login_csrf.as_str()),
            ("username", user),
            ("password", password),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status().as_u16(), 303, "{user} signs in");
    let cookie = set_cookie(&signed, "airlock_session").unwrap();
    let page = http
        .get(format!("{base}/inbox"))
        .header("cookie", format!("airlock_session={cookie}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    (cookie, csrf)
}

#[tokio::test]
async fn console_audit_explorer_policy_simulator_and_overview() {
    let mut s = Server::start_with(&Db::Sqlite, CONSOLE_POLICIES);
    let (alice, bob, admin) = (
        s.key("alice", "user"),
        s.key("bob", "user"),
        s.key("admin", "admin"),
    );
    set_password(&s, "bob", "bob's long password");
    set_password(&s, "alice", "alice's long password");
    s.set_users(&format!(
        "{USERS}\n[web]\nauditor_groups = [\"security\"]\n"
    ));
    Command::new("kill")
        .args(["-HUP", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(
        s.audit_has(&admin, "policy_loaded", "trigger", "sighup")
            .await
    );
    // Some history: one approved, one denied.
    for (table, verdict) in [("a", "approve"), ("b", "deny")] {
        let (_, r) = s
            .post(
                &alice,
                "/v1/check",
                json!({"action": "export", "resource": {"type": "Table", "id": table}}),
            )
            .await;
        let id = r["request"]["id"].as_str().unwrap().to_owned();
        let (st, r) = s.review(&bob, &id, verdict).await;
        assert_eq!(st, 200, "{r}");
    }
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (bob_cookie, bob_csrf) = http_sign_in(&http, &s.url, "bob", "bob's long password").await;
    let get = |cookie: &str, path: &str| {
        let req = http
            .get(format!("{}{path}", s.url))
            .header("cookie", format!("airlock_session={cookie}"));
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };

    // The audit explorer: verified, filterable, exportable.
    let (st, page) = get(&bob_cookie, "/audit").await;
    assert_eq!(st, 200, "{page}");
    assert!(page.contains("Chain verified up to record"), "{page}");
    let (_, page) = get(&bob_cookie, "/audit?kind=review&actor=bob").await;
    assert_eq!(page.matches("<td>review</td>").count(), 2, "{page}");
    assert!(!page.contains("<td>decision</td>"));
    let (st, lines) = get(&bob_cookie, "/audit/export?kind=review").await;
    assert_eq!(st, 200);
    let records: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{lines}");
    assert!(records.iter().all(|r| r["kind"] == "review"));
    assert!(
        records[0]["seq"].as_i64() < records[1]["seq"].as_i64(),
        "oldest first"
    );
    let (_, page) = get(
        &bob_cookie,
        "/audit?since=2000-01-01T00:00&until=2000-01-02T00:00",
    )
    .await;
    assert!(page.contains("0 records"), "time range filters: {page}");
    let (st, _) = get(&bob_cookie, "/audit?since=yesterday").await;
    assert_eq!(st, 400);
    // Only auditors read it.
    let (alice_cookie, alice_csrf) =
        http_sign_in(&http, &s.url, "alice", "alice's long password").await;
    let (st, _) = get(&alice_cookie, "/audit").await;
    assert_eq!(st, 403);
    let (st, _) = get(&alice_cookie, "/audit/export").await;
    assert_eq!(st, 403);

    // The policy page and simulator: decides, creates nothing.
    let (st, page) = get(&bob_cookie, "/policy").await;
    assert_eq!(st, 200);
    assert!(
        page.contains("exports-need-security") && page.contains("Last load"),
        "{page}"
    );
    let (_, before) = s.get(&admin, "/v1/requests?status=all").await;
    let simulate = |form: Vec<(&'static str, &'static str)>, csrf: &str, cookie: &str| {
        let mut form: Vec<(&str, String)> =
            form.into_iter().map(|(k, v)| (k, v.to_owned())).collect();
        form.push(("csrf", csrf.to_owned()));
        let req = http
            .post(format!("{}/policy/simulate", s.url))
            .header("cookie", format!("airlock_session={cookie}"))
            .form(&form);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (st, page) = simulate(
        vec![
            ("principal", "alice"),
            ("action", "export"),
            ("resource", "Table:orders"),
            ("params", "{\"sql\": \"select 1\"}"),
        ],
        &alice_csrf,
        &alice_cookie,
    )
    .await;
    assert_eq!(st, 200, "{page}");
    assert!(
        page.contains("approval_required") && page.contains("can approve: admin, bob, carol"),
        "{page}"
    );
    let (_, page) = simulate(
        vec![
            ("principal", "alice"),
            ("action", "read"),
            ("resource", "Table:orders"),
        ],
        &bob_csrf,
        &bob_cookie,
    )
    .await;
    assert!(page.contains("outcome allow"), "{page}");
    let (_, page) = simulate(
        vec![
            ("principal", "alice"),
            ("action", "read"),
            ("resource", "Table:orders"),
            ("context", "[1]"),
        ],
        &bob_csrf,
        &bob_cookie,
    )
    .await;
    assert!(page.contains("context must be a JSON object"), "{page}");
    let (st, _) = simulate(
        vec![
            ("principal", "alice"),
            ("action", "read"),
            ("resource", "Table:orders"),
        ],
        "wrong",
        &bob_cookie,
    )
    .await;
    assert_eq!(st, 403, "the simulator's form needs its CSRF token too");
    let (_, after) = s.get(&admin, "/v1/requests?status=all").await;
    assert_eq!(
        before["requests"].as_array().unwrap().len(),
        after["requests"].as_array().unwrap().len()
    );

    // The overview's pictures.
    let (st, page) = get(&bob_cookie, "/overview").await;
    assert_eq!(st, 200);
    assert!(
        page.contains("<svg") && page.contains("Requests per day by outcome"),
        "{page}"
    );
    assert!(
        page.contains(": 1 approved") && page.contains(": 1 denied"),
        "{page}"
    );
    assert!(
        page.contains("&lt; 1 min: 2"),
        "both decided within a minute: {page}"
    );

    // My requests: alice's two, their states and the grant's.
    let (st, page) = get(&alice_cookie, "/mine").await;
    assert_eq!(st, 200);
    assert!(
        page.contains("status approved") && page.contains("status denied"),
        "{page}"
    );
    assert!(
        page.contains("ready, 0/1 used"),
        "the grant's state: {page}"
    );
    // Every page is served under the strict policy.
    let r = http
        .get(format!("{}/inbox", s.url))
        .header("cookie", format!("airlock_session={bob_cookie}"))
        .send()
        .await
        .unwrap();
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'")
            && csp.contains("script-src 'self'")
            && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    // Signing out ends the session (a POST with the token; a GET cannot).
    let r = http
        .post(format!("{}/logout", s.url))
        .header("cookie", format!("airlock_session={alice_cookie}"))
        .form(&[("csrf", alice_csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let r = http
        .get(format!("{}/mine", s.url))
        .header("cookie", format!("airlock_session={alice_cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303, "the old cookie signs nobody in");
    assert_eq!(r.headers()["location"], "/login");

    // Password guessing stops after five failures in a row, on every node
    // (the count is read from the audit log), even for the right password.
    set_password(&s, "carol", "carol's long password");
    let attempt = |password: &'static str| {
        let (http, base) = (http.clone(), s.url.clone());
        async move {
            let form = http.get(format!("{base}/login")).send().await.unwrap();
            let token = form
                .headers()
                .get_all("set-cookie")
                .iter()
                .find_map(|v| {
                    v.to_str()
                        .ok()?
                        .strip_prefix("airlock_login_csrf=")
                        .map(|c| c.split(';').next().unwrap_or("").to_owned())
                })
                .unwrap();
            let r = http
                .post(format!("{base}/login"))
                .header("cookie", format!("airlock_login_csrf={token}"))
                .form(&[
                    ("csrf", token.as_str()),
                    ("username", "carol"),
                    ("password", password),
                ])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    for _ in 0..5 {
        assert_eq!(attempt("wrong guess").await.0, 401);
    }
    let (st, page) = attempt("carol's long password").await;
    assert_eq!(st, 403, "locked out");
    assert!(page.contains("too many failed sign-ins"), "{page}");

    // A tampered log shows where it broke.
    s.sql("UPDATE audit SET details = '{}' WHERE seq = 3");
    let (_, page) = get(&bob_cookie, "/audit").await;
    assert!(page.contains("Chain broken at record 3"), "{page}");
    s.child.kill().unwrap();
}

#[tokio::test]
async fn console_single_sign_on_with_a_real_openid_provider() {
    use fantoccini::Locator;
    let Some(driver) = Driver::start() else {
        return;
    };
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (port, idp_port) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/main.cedar"), CONSOLE_POLICIES).unwrap();
    std::fs::write(
        dir.path().join("airlock.toml"),
        format!(
            r#"[server]
listen = "127.0.0.1:{port}"
public_url = "{base}"

[storage]
url = "sqlite://data/airlock.db"

[policy]
dir = "policies"

[web.oidc]
issuer = "http://127.0.0.1:{idp_port}"
client_id = "airlock"
client_secret = "airlock-test-secret"
label = "Sign in with Example SSO"
groups_claim = "groups"

[[users]]
name = "bob"
groups = ["security"]
email = "Bob@Example.com"

[[users]]
name = "dave"
groups = []
email = "dave@example.com"

[[users]]
name = "alice"
groups = []

[[users]]
name = "unverified-carol"
groups = ["security"]
email = "unverified-carol@example.com"
"#
        ),
    )
    .unwrap();
    // The provider: the `oidc-provider` package, installed by .ci/run.
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
    if !folder.join("node_modules/oidc-provider").exists() {
        // First run on this checkout: install the pinned provider.
        let ok = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&folder)
            .status()
            .expect("npm, to install the OpenID provider (Debian: nodejs npm)");
        assert!(ok.success(), "npm ci in {}", folder.display());
    }
    let script = folder.join("provider.mjs");
    let mut idp = Command::new("node")
        .arg(&script)
        .arg(idp_port.to_string())
        .arg(format!("{base}/login/oidc/callback"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node, for the OpenID provider");
    let mut ready = String::new();
    let mut out = BufReader::new(idp.stdout.take().unwrap());
    out.read_line(&mut ready).unwrap();
    // Keep draining: a closed pipe would kill the provider.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    assert!(
        ready.starts_with("ready"),
        "provider did not start ({ready:?}); run `npm ci` in crates/airlock/tests/oidc"
    );
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _idp = Kill(idp);
    let data = dir.path().join("data");
    let s = Server::serve(dir, &Db::Sqlite, 60, &data);
    assert_eq!(s.url, base);

    // At the provider: log in as "bob", consent, and land signed in.
    let sso = |b: fantoccini::Client, login: &'static str| {
        let base = base.clone();
        async move {
            b.goto(&format!("{base}/login")).await.unwrap();
            b.find(Locator::LinkText("Sign in with Example SSO"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            b.wait()
                .at_most(Duration::from_secs(10))
                .for_element(Locator::Css("input[name=login]"))
                .await
                .unwrap()
                .send_keys(login)
                .await
                .unwrap();
            b.find(Locator::Css("input[name=password]"))
                .await
                .unwrap()
                .send_keys("anything")
                .await
                .unwrap();
            b.find(Locator::Css("button[type=submit]"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            // The consent prompt, if the provider shows one.
            for _ in 0..20 {
                let url = b.current_url().await.unwrap();
                if url.as_str().starts_with(&base) {
                    break;
                }
                if let Ok(button) = b
                    .find(Locator::Css("button[type=submit], button[autofocus]"))
                    .await
                {
                    let _ = button.click().await;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            b
        }
    };
    let b = sso(driver.browser(1280, 900).await, "bob").await;
    let who = b
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("form.signout .who"))
        .await
        .expect("signed in through the provider")
        .text()
        .await
        .unwrap();
    assert_eq!(who, "bob", "matched by email, case-insensitively");
    assert_eq!(b.current_url().await.unwrap().path(), "/inbox");
    b.close().await.unwrap();

    // Groups come from the provider's claim: dave has none in the config,
    // but the provider says security, so he may approve alice's export.
    let alice = s.key("alice", "user");
    let (_, r) = s
        .post(
            &alice,
            "/v1/check",
            json!({"action": "export", "resource": {"type": "Table", "id": "orders"}}),
        )
        .await;
    let id = r["request"]["id"].as_str().unwrap().to_owned();
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert!(
        !r["thresholds"][0]["eligible"]
            .as_array()
            .unwrap()
            .contains(&json!("dave")),
        "{r}"
    );
    let d = sso(driver.browser(1280, 900).await, "dave").await;
    let mut listed = false;
    for _ in 0..40 {
        d.goto(&format!("{base}/requests/{id}")).await.unwrap();
        if d.find(Locator::Css("button.approve")).await.is_ok() {
            listed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(listed, "dave may review once his groups are synced");
    d.find(Locator::Css("button.approve"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    d.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("span.status.approved"))
        .await
        .unwrap();
    d.close().await.unwrap();

    // Someone the provider knows but Airlock does not is refused.
    let b = sso(driver.browser(1280, 900).await, "zed").await;
    let page = b.source().await.unwrap();
    assert!(
        page.contains("zed@example.com is not an Airlock user"),
        "{page}"
    );
    b.close().await.unwrap();
    // So is an email the provider has not verified.
    let b = sso(driver.browser(1280, 900).await, "unverified-carol").await;
    let page = b.source().await.unwrap();
    assert!(page.contains("not verified"), "{page}");
    b.close().await.unwrap();

    // A callback that does not belong to a flow started here is refused.
    let r = reqwest::get(format!(
        "{base}/login/oidc/callback?code=stolen&state=forged"
    ))
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    let admin = s.key("bob", "admin");
    let (_, audit) = s.get(&admin, "/v1/audit?limit=1000").await;
    let records = audit["records"].as_array().unwrap();
    assert!(records.iter().any(|r| r["kind"] == "sign_in"
        && r["actor"] == "bob"
        && r["details"]["method"] == "oidc"));
    assert!(
        records
            .iter()
            .filter(|r| r["kind"] == "sign_in_failed" && r["details"]["method"] == "oidc")
            .count()
            >= 3
    );
    assert!(records.iter().any(|r| r["kind"] == "groups_synced"
        && r["subject"] == "dave"
        && r["details"]["groups"] == json!(["data-owners", "security"])));
    assert!(
        !records
            .iter()
            .any(|r| r["kind"] == "groups_synced" && r["subject"] == "bob"),
        "bob's groups did not change, so nothing was recorded"
    );
}

// ---------------------------------------------------------------------------
// Webhooks through the durable outbox.
// ---------------------------------------------------------------------------

const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A webhook receiver that verifies Standard Webhooks signatures with the
/// reference library, records every delivery (duplicates too), and can
/// stall its first answer.
struct Receiver {
    url: String,
    deliveries: Arc<std::sync::Mutex<Vec<(String, Value)>>>,
    bad: Arc<std::sync::atomic::AtomicUsize>,
}

impl Receiver {
    fn start(stall_first: Duration) -> Receiver {
        use axum::http::{HeaderMap, StatusCode};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let deliveries: Arc<std::sync::Mutex<Vec<(String, Value)>>> = Arc::default();
        let bad: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (d, b) = (deliveries.clone(), bad.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = axum::Router::new().route(
                    "/hooks",
                    axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                        let (d, b, first) = (d.clone(), b.clone(), first.clone());
                        async move {
                            let hook = standardwebhooks::Webhook::new(WEBHOOK_SECRET).unwrap();
                            if hook.verify(&body, &headers).is_err() {
                                b.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                return StatusCode::UNAUTHORIZED;
                            }
                            let id = headers["webhook-id"].to_str().unwrap().to_owned();
                            d.lock()
                                .unwrap()
                                .push((id, serde_json::from_slice(&body).unwrap()));
                            if first.swap(false, std::sync::atomic::Ordering::SeqCst)
                                && !stall_first.is_zero()
                            {
                                tokio::time::sleep(stall_first).await;
                            }
                            StatusCode::NO_CONTENT
                        }
                    }),
                );
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        Receiver {
            url,
            deliveries,
            bad,
        }
    }

    /// Waits until `n` distinct messages arrived; returns them by type.
    async fn wait_for(&self, n: usize) -> Vec<(String, Value)> {
        for _ in 0..600 {
            let unique = self.unique();
            if unique.len() >= n {
                return unique;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "only {} of {n} webhooks arrived: {:?}",
            self.unique().len(),
            self.unique()
        );
    }

    /// Deliveries with duplicates (same `webhook-id`) dropped, as the spec
    /// tells receivers to.
    fn unique(&self) -> Vec<(String, Value)> {
        let mut seen = std::collections::HashSet::new();
        self.deliveries
            .lock()
            .unwrap()
            .iter()
            .filter(|(id, _)| seen.insert(id.clone()))
            .cloned()
            .collect()
    }
}

fn webhook_config(url: &str, extra: &str) -> String {
    format!(
        "[notify]\n{extra}\n[[notify.webhooks]]\nurl = \"{url}\"\nsecret = \"{WEBHOOK_SECRET}\"\n"
    )
}

async fn webhooks_are_signed_and_follow_the_loop(db: Db) {
    let receiver = Receiver::start(Duration::ZERO);
    let s = Server::start_extra(&db, POLICIES, &webhook_config(&receiver.url, ""));
    let (alice, bob, carol) = (
        s.key("alice", "user"),
        s.key("bob", "user"),
        s.key("carol", "user"),
    );
    let (id, token) = approved(&s, &alice, &bob, &carol, export("alice", "orders")).await;
    let (st, r) = s
        .post(
            &alice,
            "/v1/grants/consume",
            json!({"token": token, "action": export("alice", "orders")}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let gid = r["grant_id"].as_str().unwrap().to_owned();
    let (st, r) = s
        .post(
            &alice,
            &format!("/v1/grants/{gid}/complete"),
            json!({"outcome": "success"}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let got = receiver.wait_for(5).await;
    let types: Vec<&str> = got
        .iter()
        .map(|(_, v)| v["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "request.created",
            "request.reviewed",
            "request.decided",
            "grant.consumed",
            "grant.completed"
        ]
    );
    for (_, v) in &got {
        assert_eq!(v["data"]["request"], id.as_str(), "{v}");
    }
    assert_eq!(got[2].1["data"]["status"], "approved");
    assert_eq!(got[2].1["data"]["by"], "carol");
    assert_eq!(got[4].1["data"]["outcome"], "success");
    assert_eq!(
        receiver.bad.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "every signature verified"
    );
    // The outbox says so too.
    let admin = s.key("admin", "admin");
    let (_, out) = s.get(&admin, "/v1/outbox?status=delivered").await;
    assert_eq!(out["messages"].as_array().unwrap().len(), 5, "{out}");
}

#[tokio::test]
async fn webhooks_survive_a_restart_mid_delivery_once_per_message() {
    // The receiver takes 3 s over the first message; the node is killed
    // meanwhile, so that message's delivery never completes there.
    let receiver = Receiver::start(Duration::from_secs(3));
    let mut s = Server::start_extra(
        &Db::Sqlite,
        POLICIES,
        &webhook_config(&receiver.url, "delivery_timeout_seconds = 1"),
    );
    let alice = s.key("alice", "user");
    let (_, r) = s.post(&alice, "/v1/check", export("alice", "a")).await;
    let first = r["request"]["id"].as_str().unwrap().to_owned();
    for _ in 0..100 {
        if !receiver.deliveries.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.restart(); // SIGKILL mid-delivery, then start again
                 // More happens after the restart.
    let (_, r) = s.post(&alice, "/v1/check", export("alice", "b")).await;
    let second = r["request"]["id"].as_str().unwrap().to_owned();
    let got = receiver.wait_for(2).await;
    let ids: Vec<&str> = got
        .iter()
        .map(|(_, v)| v["data"]["request"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&first.as_str()) && ids.contains(&second.as_str()),
        "{got:?}"
    );
    assert_eq!(got.len(), 2, "one message per event, whatever was re-sent");
    // The first message was re-sent after the restart with the same id, so
    // the receiver could drop the copy.
    for _ in 0..600 {
        if receiver.deliveries.lock().unwrap().len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = receiver.deliveries.lock().unwrap().clone();
    let first_id = &all[0].0;
    assert!(
        all.iter().filter(|(id, _)| id == first_id).count() >= 2,
        "the interrupted delivery was retried: {all:?}"
    );
    let admin = s.key("admin", "admin");
    let (_, out) = s.get(&admin, "/v1/outbox?status=pending").await;
    assert!(out["messages"].as_array().unwrap().is_empty(), "{out}");
}

#[tokio::test]
async fn failed_webhooks_are_visible_and_can_be_retried() {
    // Nothing listens on this port.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hooks", l.local_addr().unwrap())
    };
    let extra = format!(
        "{}\n[web]\nauditor_groups = [\"security\"]\n",
        webhook_config(&dead, "max_attempts = 2")
    );
    let s = Server::start_extra(&Db::Sqlite, POLICIES, &extra);
    let (alice, admin) = (s.key("alice", "user"), s.key("admin", "admin"));
    s.post(&alice, "/v1/check", export("alice", "a")).await;
    let wait_failed = || async {
        for _ in 0..100 {
            let (_, out) = s.get(&admin, "/v1/outbox?status=failed").await;
            if !out["messages"].as_array().unwrap().is_empty() {
                return out["messages"][0].clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no failed notification");
    };
    let failed = wait_failed().await;
    assert_eq!(failed["attempts"], 2, "{failed}");
    assert!(failed["last_error"].is_string(), "{failed}");
    let id = failed["id"].as_str().unwrap().to_owned();
    let metrics = reqwest::get(format!("{}/metrics", s.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("airlock_notification_attempts_total{outcome=\"failed\"} 1"),
        "{metrics}"
    );
    // The CLI shows it.
    let out = Command::new(BIN)
        .args(["outbox", "list", "--url", &s.url, "--token", &admin])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&id) && text.contains("request.created"),
        "{text}"
    );
    // The console shows it to auditors, with a retry button (a signed-in POST).
    set_password(&s, "bob", "bob's long password");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (cookie, csrf) = http_sign_in(&http, &s.url, "bob", "bob's long password").await;
    let page = http
        .get(format!("{}/notifications", s.url))
        .header("cookie", format!("airlock_session={cookie}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(&id) && page.contains("Retry"), "{page}");
    let r = http
        .post(format!("{}/notifications/{id}/retry", s.url))
        .header("cookie", format!("airlock_session={cookie}"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    // It is tried again (and fails again), then the API retries it too.
    let again = wait_failed().await;
    assert_eq!(again["id"], id.as_str());
    let (st, r) = s
        .post(&admin, &format!("/v1/outbox/{id}/retry"), json!({}))
        .await;
    assert_eq!((st, r["status"].as_str()), (200, Some("pending")), "{r}");
    let (st, _) = s
        .post(&alice, &format!("/v1/outbox/{id}/retry"), json!({}))
        .await;
    assert_eq!(st, 403, "admins only");
}

// ---------------------------------------------------------------------------
// Email, through a real SMTP server (aiosmtpd).
// ---------------------------------------------------------------------------

/// aiosmtpd writing what it receives into a Maildir; killed at the end.
struct Smtp {
    child: Child,
    port: u16,
    maildir: tempfile::TempDir,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Smtp {
    fn start() -> Smtp {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let maildir = tempfile::tempdir().unwrap();
        let child = Command::new("python3")
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(maildir.path().join("mail"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with aiosmtpd (pip install aiosmtpd)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Smtp {
            child,
            port,
            maildir,
        }
    }

    /// Every message delivered so far, as text.
    fn messages(&self) -> Vec<String> {
        let dir = self.maildir.path().join("mail/new");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .collect()
    }

    async fn wait_for(&self, n: usize, what: impl Fn(&str) -> bool) -> Vec<String> {
        for _ in 0..200 {
            let got: Vec<String> = self.messages().into_iter().filter(|m| what(m)).collect();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("expected {n} messages, have {:?}", self.messages());
    }
}

#[tokio::test]
async fn email_asks_approvers_with_a_link_and_tells_the_requester() {
    let smtp = Smtp::start();
    let s = Server::start_extra(
        &Db::Sqlite,
        POLICIES,
        &format!("[notify.email]\nsmtp_url = \"smtp://127.0.0.1:{}\"\nfrom = \"Airlock <airlock@example.com>\"\n", smtp.port),
    );
    let (alice, bob, carol) = (
        s.key("alice", "user"),
        s.key("bob", "user"),
        s.key("carol", "user"),
    );
    let (_, r) = s.post(&alice, "/v1/check", export("alice", "orders")).await;
    let id = r["request"]["id"].as_str().unwrap().to_owned();
    // The eligible approvers with an address (bob, carol; admin has none).
    let asks = smtp
        .wait_for(2, |m| m.contains("Subject: Approval needed"))
        .await;
    let to: Vec<bool> = ["To: bob@example.com", "To: carol@example.com"]
        .iter()
        .map(|t| asks.iter().any(|m| m.contains(t)))
        .collect();
    assert_eq!(to, [true, true], "{asks:?}");
    assert!(
        !asks.iter().any(|m| m.contains("To: alice@example.com")),
        "not the requester"
    );
    let link = format!("{}/requests/{id}", s.url);
    let mail = &asks[0];
    assert!(mail.contains(&link), "{mail}");
    assert!(
        mail.contains("select * from orders"),
        "the exact action: {mail}"
    );
    assert!(mail.contains("Message-ID: <msg_"), "{mail}");
    // A mail scanner following the link changes nothing: it lands on the
    // sign-in page, and approving is a signed-in POST.
    let follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = follow.get(&link).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/login");
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert_eq!(r["status"], "pending");
    assert!(r["reviews"].as_array().unwrap().is_empty());
    // The requester hears the outcome.
    s.review(&bob, &id, "approve").await;
    s.review(&carol, &id, "approve").await;
    let told = smtp
        .wait_for(1, |m| m.contains("To: alice@example.com"))
        .await;
    assert!(told[0].contains("was approved by carol"), "{}", told[0]);
}

// ---------------------------------------------------------------------------
// Slack: a local server speaking the Web API, and signed interactions.
// ---------------------------------------------------------------------------

/// A stand-in for Slack's Web API (chat.postMessage, chat.update,
/// views.open) and for interaction `response_url`s; records every call.
struct FakeSlack {
    base: String,
    calls: Arc<std::sync::Mutex<Vec<(String, Value)>>>,
}

impl FakeSlack {
    fn start() -> FakeSlack {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let calls: Arc<std::sync::Mutex<Vec<(String, Value)>>> = Arc::default();
        let c = calls.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = axum::Router::new().route(
                    "/{*path}",
                    axum::routing::post(
                        move |axum::extract::Path(path): axum::extract::Path<String>,
                              headers: axum::http::HeaderMap,
                              body: axum::body::Bytes| {
                            let c = c.clone();
                            async move {
                                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                                if path.starts_with("api/") {
                                    assert_eq!(
                                        headers["authorization"], "Bearer xoxb-test",
                                        "the bot token"
                                    );
                                }
                                let mut calls = c.lock().unwrap();
                                calls.push((path.clone(), v.clone()));
                                let ts = format!("1700000000.{:06}", calls.len());
                                axum::Json(json!({"ok": true, "channel": v["channel"], "ts": ts}))
                            }
                        },
                    ),
                );
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        FakeSlack { base, calls }
    }

    fn calls(&self, path: &str) -> Vec<Value> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, v)| v.clone())
            .collect()
    }

    async fn wait(&self, path: &str, what: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..200 {
            if let Some(v) = self.calls(path).into_iter().find(|v| what(v)) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "no {path} call as expected; calls: {:?}",
            self.calls.lock().unwrap()
        );
    }
}

const SLACK_SECRET: &str = "test-signing-secret";

/// Sends an interaction as Slack does: form-encoded `payload`, signed.
async fn slack_interaction(url: &str, payload: Value, skew: i64, secret: &str) -> u16 {
    use hmac::Mac;
    let body = format!("payload={}", url_encode(&payload.to_string()));
    let ts = (chrono_now() + skew).to_string();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{ts}:{body}").as_bytes());
    let sig = format!("v0={}", hex::encode(mac.finalize().into_bytes()));
    reqwest::Client::new()
        .post(format!("{url}/integrations/slack/interactions"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts)
        .header("x-slack-signature", sig)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn button(user: &str, action: &str, id: &str, respond: &str) -> Value {
    json!({
        "type": "block_actions",
        "user": {"id": user},
        "trigger_id": "trigger.1",
        "response_url": respond,
        "actions": [{"action_id": action, "value": id, "block_id": "review"}],
    })
}

#[tokio::test]
async fn slack_asks_in_the_routed_channel_and_takes_decisions_by_the_same_rules() {
    let slack = FakeSlack::start();
    let s = Server::start_extra(
        &Db::Sqlite,
        POLICIES,
        &format!(
            "[notify.slack]\napi_url = \"{}/api\"\nbot_token = \"xoxb-test\"\nsigning_secret = \"{SLACK_SECRET}\"\nchannel = \"C0APPROVALS\"\nroutes = {{ security = \"C0SEC\" }}\n",
            slack.base
        ),
    );
    let alice = s.key("alice", "user");
    let respond = format!("{}/respond", slack.base);
    let (_, r) = s.post(&alice, "/v1/check", json!({"action": "export", "resource": {"type": "Table", "id": "orders"}, "params": {"sql": "select 1"}, "reason": "report"})).await;
    let id = r["request"]["id"].as_str().unwrap().to_owned();
    // The message, in the channel routed for security, with the details.
    let posted = slack
        .wait("api/chat.postMessage", |v| v["channel"] == "C0SEC")
        .await;
    let blocks = posted["blocks"].to_string();
    for shown in [
        "<@U0ALICE>",
        "export",
        "Table:orders",
        "report",
        "select 1",
        "security 0/2",
        "<@U0BOB>",
        "Approve",
        "Deny",
    ] {
        assert!(
            blocks.contains(shown),
            "the message shows {shown}: {blocks}"
        );
    }
    assert!(blocks.contains(&format!("\"value\":\"{id}\"")));

    // Bad and stale signatures are refused before anything is read.
    assert_eq!(
        slack_interaction(
            &s.url,
            button("U0BOB", "approve", &id, &respond),
            0,
            "wrong-secret"
        )
        .await,
        401
    );
    assert_eq!(
        slack_interaction(
            &s.url,
            button("U0BOB", "approve", &id, &respond),
            -600,
            SLACK_SECRET
        )
        .await,
        401
    );
    // The requester and a non-approver are refused, told privately.
    assert_eq!(
        slack_interaction(
            &s.url,
            button("U0ALICE", "approve", &id, &respond),
            0,
            SLACK_SECRET
        )
        .await,
        200
    );
    let told = slack
        .wait("respond", |v| {
            v["text"].as_str().unwrap_or("").contains("own request")
        })
        .await;
    assert_eq!(told["response_type"], "ephemeral");
    assert_eq!(
        slack_interaction(
            &s.url,
            button("U0MALLORY", "approve", &id, &respond),
            0,
            SLACK_SECRET
        )
        .await,
        200
    );
    slack
        .wait("respond", |v| {
            v["text"]
                .as_str()
                .unwrap_or("")
                .contains("not in an approver group")
        })
        .await;
    // bob approves: one of two; the message is updated.
    assert_eq!(
        slack_interaction(
            &s.url,
            button("U0BOB", "approve", &id, &respond),
            0,
            SLACK_SECRET
        )
        .await,
        200
    );
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert_eq!(r["reviews"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["reviews"][0]["channel"], "slack");
    slack
        .wait("api/chat.update", |v| {
            v["blocks"].to_string().contains("security 1/2")
        })
        .await;
    // carol denies: Slack asks her why, then the request is denied with it.
    assert_eq!(
        slack_interaction(
            &s.url,
            button("U0CAROL", "deny", &id, &respond),
            0,
            SLACK_SECRET
        )
        .await,
        200
    );
    let modal = slack.wait("api/views.open", |_| true).await;
    assert_eq!(modal["view"]["private_metadata"], id.as_str());
    assert_eq!(modal["trigger_id"], "trigger.1");
    let submission = json!({
        "type": "view_submission",
        "user": {"id": "U0CAROL"},
        "view": {"callback_id": "deny", "private_metadata": id,
                 "state": {"values": {"reason": {"reason": {"value": "too broad"}}}}},
    });
    assert_eq!(
        slack_interaction(&s.url, submission, 0, SLACK_SECRET).await,
        200
    );
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert_eq!(r["status"], "denied", "{r}");
    assert_eq!(r["reviews"][1]["reason"], "too broad");
    slack
        .wait("api/chat.update", |v| {
            v["blocks"].to_string().contains("Request denied")
        })
        .await;
    // The requester hears it in a direct message.
    let dm = slack
        .wait("api/chat.postMessage", |v| v["channel"] == "U0ALICE")
        .await;
    assert!(dm["text"].as_str().unwrap().contains("was denied"), "{dm}");
}

// ---------------------------------------------------------------------------
// Discord: a local REST stand-in, and interactions signed with a real
// Ed25519 key pair.
// ---------------------------------------------------------------------------

struct FakeDiscord {
    base: String,
    calls: Arc<std::sync::Mutex<Vec<(String, String, Value)>>>,
}

impl FakeDiscord {
    fn start() -> FakeDiscord {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let calls: Arc<std::sync::Mutex<Vec<(String, String, Value)>>> = Arc::default();
        let c = calls.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = axum::Router::new().route(
                    "/{*path}",
                    axum::routing::any(
                        move |method: axum::http::Method, axum::extract::Path(path): axum::extract::Path<String>, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                            let c = c.clone();
                            async move {
                                assert_eq!(headers["authorization"], "Bot bot-test", "the bot token");
                                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                                let mut calls = c.lock().unwrap();
                                calls.push((method.to_string(), path.clone(), v.clone()));
                                let n = calls.len();
                                if path == "users/@me/channels" {
                                    return axum::Json(json!({"id": format!("dm-{}", v["recipient_id"].as_str().unwrap_or(""))}));
                                }
                                let channel = path.split('/').nth(1).unwrap_or("").to_owned();
                                axum::Json(json!({"id": format!("m{n}"), "channel_id": channel}))
                            }
                        },
                    ),
                );
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        FakeDiscord { base, calls }
    }

    async fn wait(&self, method: &str, path: &str, what: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..200 {
            let found = self
                .calls
                .lock()
                .unwrap()
                .iter()
                .find(|(m, p, v)| m == method && p == path && what(v))
                .map(|(_, _, v)| v.clone());
            if let Some(v) = found {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "no {method} {path} as expected: {:?}",
            self.calls.lock().unwrap()
        );
    }
}

/// Sends an interaction as Discord does: JSON, Ed25519-signed over
/// timestamp and body.
async fn discord_interaction(
    url: &str,
    key: &ed25519_dalek::SigningKey,
    body: &Value,
) -> (u16, Value) {
    use ed25519_dalek::Signer;
    let body = body.to_string();
    let ts = chrono_now().to_string();
    let sig = hex::encode(key.sign(format!("{ts}{body}").as_bytes()).to_bytes());
    let r = reqwest::Client::new()
        .post(format!("{url}/integrations/discord/interactions"))
        .header("content-type", "application/json")
        .header("x-signature-timestamp", ts)
        .header("x-signature-ed25519", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn click(iid: &str, user: &str, custom_id: &str) -> Value {
    json!({"id": iid, "type": 3, "member": {"user": {"id": user}}, "data": {"custom_id": custom_id}})
}

#[tokio::test]
async fn discord_interactions_are_verified_deduplicated_and_follow_the_rules() {
    let discord = FakeDiscord::start();
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let public = hex::encode(key.verifying_key().to_bytes());
    let s = Server::start_extra(
        &Db::Sqlite,
        POLICIES,
        &format!(
            "[notify.discord]\napi_url = \"{}\"\nbot_token = \"bot-test\"\napplication_public_key = \"{public}\"\nchannel_id = \"C1\"\nroutes = {{ security = \"CSEC\" }}\n",
            discord.base
        ),
    );
    let alice = s.key("alice", "user");
    // PING is answered with PONG; a wrong key's signature with 401.
    let (st, r) = discord_interaction(&s.url, &key, &json!({"id": "i0", "type": 1})).await;
    assert_eq!((st, r["type"].as_u64()), (200, Some(1)));
    let other = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let (st, _) = discord_interaction(&s.url, &other, &json!({"id": "i00", "type": 1})).await;
    assert_eq!(st, 401);

    let (_, r) = s.post(&alice, "/v1/check", export("alice", "orders")).await;
    let id = r["request"]["id"].as_str().unwrap().to_owned();
    let posted = discord
        .wait("POST", "channels/CSEC/messages", |_| true)
        .await;
    assert!(
        posted["content"]
            .as_str()
            .unwrap()
            .contains("<@D0ALICE> wants to **export**"),
        "{posted}"
    );
    assert_eq!(
        posted["components"][0]["components"][0]["custom_id"],
        format!("approve:{id}")
    );

    // bob approves; Discord's retry of the same interaction is not a second review.
    let (st, r) = discord_interaction(
        &s.url,
        &key,
        &click("i1", "D0BOB", &format!("approve:{id}")),
    )
    .await;
    assert_eq!((st, r["type"].as_u64()), (200, Some(6)), "{r}");
    let (_, r) = discord_interaction(
        &s.url,
        &key,
        &click("i1", "D0BOB", &format!("approve:{id}")),
    )
    .await;
    assert_eq!(r["data"]["content"], "Already handled.");
    let (_, req) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert_eq!(req["reviews"].as_array().unwrap().len(), 1);
    // The requester and a non-approver are refused, privately.
    let (_, r) = discord_interaction(
        &s.url,
        &key,
        &click("i2", "D0ALICE", &format!("approve:{id}")),
    )
    .await;
    assert_eq!(r["data"]["flags"], 64);
    assert!(
        r["data"]["content"]
            .as_str()
            .unwrap()
            .contains("own request"),
        "{r}"
    );
    let (_, r) = discord_interaction(
        &s.url,
        &key,
        &click("i3", "D0MALLORY", &format!("approve:{id}")),
    )
    .await;
    assert!(
        r["data"]["content"]
            .as_str()
            .unwrap()
            .contains("not in an approver group"),
        "{r}"
    );
    // carol denies: a dialog asks why, its submission denies.
    let (_, modal) =
        discord_interaction(&s.url, &key, &click("i4", "D0CAROL", &format!("deny:{id}"))).await;
    assert_eq!(modal["type"], 9, "{modal}");
    let submit = json!({"id": "i5", "type": 5, "member": {"user": {"id": "D0CAROL"}},
        "data": {"custom_id": format!("deny:{id}"), "components": [{"type": 1, "components": [{"type": 4, "custom_id": "reason", "value": "not this quarter"}]}]}});
    let (_, r) = discord_interaction(&s.url, &key, &submit).await;
    assert_eq!(r["data"]["content"], "Denied.");
    let (_, req) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert_eq!(req["status"], "denied");
    assert_eq!(req["reviews"][1]["reason"], "not this quarter");
    assert_eq!(req["reviews"][1]["channel"], "discord");
    discord
        .wait("PATCH", "channels/CSEC/messages/m1", |v| {
            v["content"]
                .as_str()
                .unwrap_or("")
                .contains("Request denied")
        })
        .await;
    discord
        .wait("POST", "users/@me/channels", |v| {
            v["recipient_id"] == "D0ALICE"
        })
        .await;
    discord
        .wait("POST", "channels/dm-D0ALICE/messages", |v| {
            v["content"].as_str().unwrap_or("").contains("was denied")
        })
        .await;
}

#[tokio::test]
async fn a_webhook_added_by_reload_delivers_without_a_restart() {
    let receiver = Receiver::start(Duration::ZERO);
    let s = Server::start(&Db::Sqlite);
    let (alice, admin) = (s.key("alice", "user"), s.key("admin", "admin"));
    s.set_users(&format!("{USERS}\n{}", webhook_config(&receiver.url, "")));
    Command::new("kill")
        .args(["-HUP", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(
        s.audit_has(&admin, "policy_loaded", "trigger", "sighup")
            .await
    );
    let (_, r) = s.post(&alice, "/v1/check", export("alice", "orders")).await;
    let id = r["request"]["id"].as_str().unwrap().to_owned();
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].1["type"], "request.created");
    assert_eq!(got[0].1["data"]["request"], id.as_str());
}
