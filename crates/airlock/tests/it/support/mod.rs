//! The harness every area shares: real `airlock serve` processes
//! (`Server`), the store they run on (`Db`, `on_both_stores!`), the test
//! users and policies, and helpers for the approval loop. Stand-ins for
//! outside services and the console's helpers are in the submodules.

mod console;
mod fakes;

pub(crate) use console::*;
pub(crate) use fakes::*;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use airlock_store::testing::TestDb;
use serde_json::{json, Value};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_airlock");

pub(crate) const POLICIES: &str = r#"
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

pub(crate) const USERS: &str = r#"
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
pub(crate) enum Db {
    /// A SQLite file in the server's own folder.
    Sqlite,
    /// A database of its own on the test PostgreSQL server, shared by every
    /// node the test starts.
    Postgres(Arc<TestDb>),
    /// The same, reached through a proxy the test can cut (`nodes::Proxy`).
    Proxied(Arc<TestDb>, String),
}

impl Db {
    pub(crate) fn url(&self) -> String {
        match self {
            Db::Sqlite => "sqlite://data/airlock.db".into(),
            Db::Postgres(db) => db.url().to_owned(),
            Db::Proxied(_, url) => url.clone(),
        }
    }
}

/// Runs each named test once per store: `sqlite::NAME` and
/// `postgres::NAME`, inside the module that invokes it.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(crate::support::Db::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(db) = airlock_store::testing::TestDb::create() else { return };
                    super::$name(crate::support::Db::Postgres(std::sync::Arc::new(db))).await;
                }
            )*
        }
    };
}

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) url: String,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) http: reqwest::Client,
    pub(crate) db: Db,
    pub(crate) data: PathBuf,
    pub(crate) checkpoint_every: u64,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a node keeps its signing keys: its own folder, or the first
/// node's, which every node of a deployment shares.
/// A folder with a SQLite server's policies and config (its data in
/// `data/`), and the config's path, to edit before starting it.
pub(crate) fn sqlite_config() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/main.cedar"), POLICIES).unwrap();
    write_config(dir.path(), &Db::Sqlite, USERS, 1, &data);
    let cfg = dir.path().join("airlock.toml");
    (dir, cfg)
}

pub(crate) fn write_config(
    dir: &Path,
    db: &Db,
    users: &str,
    checkpoint_every: u64,
    data_dir: &Path,
) {
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {data:?}\n\n[storage]\nurl = {url:?}\n\n[policy]\ndir = \"policies\"\n\n[audit]\ncheckpoint_interval_seconds = {checkpoint_every}\n{users}",
        data = data_dir.display().to_string(),
        url = db.url(),
    );
    std::fs::write(dir.join("airlock.toml"), cfg).unwrap();
}

impl Server {
    pub(crate) fn start(db: &Db) -> Server {
        Self::start_with(db, POLICIES)
    }

    pub(crate) fn start_with(db: &Db, policies: &str) -> Server {
        Self::start_opts(db, policies, 1)
    }

    pub(crate) fn start_opts(db: &Db, policies: &str, checkpoint_every: u64) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        Self::launch(dir, db, policies, checkpoint_every, &data)
    }

    /// A server whose config has `extra` (TOML) after the users.
    pub(crate) fn start_extra(db: &Db, policies: &str, extra: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/main.cedar"), policies).unwrap();
        write_config(dir.path(), db, &format!("{USERS}\n{extra}"), 1, &data);
        Self::serve(dir, db, 1, &data)
    }

    /// Kills the process (SIGKILL) and starts it again on the same config.
    pub(crate) fn restart(&mut self) {
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
    pub(crate) fn join(&self) -> Server {
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
    pub(crate) fn serve(
        dir: tempfile::TempDir,
        db: &Db,
        checkpoint_every: u64,
        data: &Path,
    ) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(dir.path().join("airlock.toml"));
        Self::serve_with(cmd, dir, db, checkpoint_every, data)
    }

    /// Starts `cmd` (which runs `airlock serve` on the config in `dir`)
    /// and waits for the address it listens on.
    pub(crate) fn serve_with(
        mut cmd: Command,
        dir: tempfile::TempDir,
        db: &Db,
        checkpoint_every: u64,
        data: &Path,
    ) -> Server {
        let mut child = cmd
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
    pub(crate) fn set_users(&self, users: &str) {
        write_config(
            self.dir.path(),
            &self.db,
            users,
            self.checkpoint_every,
            &self.data,
        );
    }

    /// Runs SQL against this server's store (to break or tamper with it).
    pub(crate) fn sql(&self, sql: &str) {
        match &self.db {
            Db::Sqlite => rusqlite::Connection::open(self.db())
                .unwrap()
                .execute_batch(sql)
                .unwrap(),
            Db::Postgres(db) | Db::Proxied(db, _) => db.execute(sql),
        }
    }

    /// One integer from the store.
    pub(crate) fn sql_i64(&self, sql: &str) -> i64 {
        match &self.db {
            Db::Sqlite => rusqlite::Connection::open(self.db())
                .unwrap()
                .query_row(sql, [], |r| r.get(0))
                .unwrap(),
            Db::Postgres(db) | Db::Proxied(db, _) => db.query_i64(sql),
        }
    }

    /// One text value from the store.
    pub(crate) fn sql_text(&self, sql: &str) -> String {
        match &self.db {
            Db::Sqlite => rusqlite::Connection::open(self.db())
                .unwrap()
                .query_row(sql, [], |r| r.get(0))
                .unwrap(),
            Db::Postgres(db) | Db::Proxied(db, _) => db.query_text(sql),
        }
    }

    pub(crate) fn config(&self) -> PathBuf {
        self.dir.path().join("airlock.toml")
    }

    pub(crate) fn db(&self) -> PathBuf {
        self.dir.path().join("data/airlock.db")
    }

    /// Revokes `key` with the CLI, by its public id (`key_` and the first
    /// 16 hex digits of its SHA-256).
    pub(crate) fn revoke_key(&self, key: &str) {
        let digest = hex::encode(sha2::Digest::finalize(sha2::Digest::chain_update(
            sha2::Sha256::default(),
            key.as_bytes(),
        )));
        let out = Command::new(BIN)
            .args(["keys", "revoke", "--config"])
            .arg(self.config())
            .arg(format!("key_{}", &digest[..16]))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub(crate) fn key(&self, user: &str, role: &str) -> String {
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

    pub(crate) async fn call(
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

    pub(crate) async fn post(&self, key: &str, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, key, path, Some(body))
            .await
    }

    pub(crate) async fn get(&self, key: &str, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, key, path, None).await
    }

    pub(crate) async fn review(&self, key: &str, id: &str, verdict: &str) -> (u16, Value) {
        self.post(
            key,
            &format!("/v1/requests/{id}/reviews"),
            json!({"verdict": verdict, "reason": "looked at it"}),
        )
        .await
    }

    /// `/metrics`, as text.
    pub(crate) async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits until the audit log holds a record of `kind` with `field == value`.
    pub(crate) async fn audit_has(
        &self,
        admin: &str,
        kind: &str,
        field: &str,
        value: &str,
    ) -> bool {
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

    /// The audit records of `kind`, once there are at least `n` (or after
    /// ten seconds, however many there are).
    pub(crate) async fn audit_of(&self, admin: &str, kind: &str, n: usize) -> Vec<Value> {
        let mut found = Vec::new();
        for _ in 0..100 {
            let (_, a) = self.get(admin, "/v1/audit?limit=10000").await;
            found = a["records"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["kind"] == kind)
                .cloned()
                .collect();
            if found.len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        found
    }

    pub(crate) fn verify(&self) -> (i32, String) {
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
pub(crate) async fn first_pending(s: &Server, key: &str) -> String {
    loop {
        let (_, l) = s.get(key, "/v1/requests?status=pending").await;
        if let Some(id) = l["requests"][0]["id"].as_str() {
            return id.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn export(principal: &str, table: &str) -> Value {
    json!({"principal": principal, "action": "export", "resource": {"type": "Table", "id": table}, "params": {"sql": format!("select * from {table}")}})
}

/// alice asks, bob and carol approve: returns (request id, grant token).
pub(crate) async fn approved(
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
pub(crate) async fn race_consumers(
    nodes: &[&Server],
    requester: &str,
    enforcer: &str,
    token: &str,
) {
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

pub(crate) fn read_t() -> Value {
    json!({"action": "read", "resource": {"type": "Table", "id": "t"}})
}

/// The audit records about `subject`.
pub(crate) async fn audit_about(s: &Server, admin: &str, subject: &str) -> Vec<Value> {
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

/// A Merkle hash from its base64 (checkpoints, proofs).
pub(crate) fn b64_hash(s: &str) -> airlock_core::merkle::Hash {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap()
        .try_into()
        .unwrap()
}

/// The `proof` list of an inclusion or consistency proof answer.
pub(crate) fn proof_hashes(answer: &Value) -> Vec<airlock_core::merkle::Hash> {
    answer["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| b64_hash(h.as_str().unwrap()))
        .collect()
}
