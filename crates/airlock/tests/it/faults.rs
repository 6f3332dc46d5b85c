//! Faults under a running node: a full disk under SQLite (a small tmpfs of
//! the test's own), PostgreSQL stopped and started again and turned
//! read-only (as a failover to a standby does; a cluster of the test's
//! own), and notification receivers
//! that accept and never answer. While the audit cannot be written nothing
//! is allowed and no grant issued; the refusal comes at once; the node
//! recovers without a restart; nothing acknowledged is lost.
//!
//! The tmpfs and the private cluster need root (as in CI); elsewhere those
//! two tests say so and pass without running.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

/// An answer within `limit` (a hang is a failure), and how long it took.
async fn timed(s: &Server, key: &str, path: &str, body: Value) -> (u16, Value, Duration) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let t = Instant::now();
    let r = http
        .post(format!("{}{path}", s.url))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("an answer, not a hang");
    let st = r.status().as_u16();
    let v = r.json().await.unwrap_or(Value::Null);
    (st, v, t.elapsed())
}

/// Checks on `s` until one is allowed (for up to 10 s), remembering it:
/// whether the node recovered by itself.
async fn until_allowed(s: &Server, key: &str, kept: &mut Vec<i64>) -> bool {
    for _ in 0..100 {
        let (st, v, _) = timed(s, key, "/v1/check", read_t()).await;
        if st == 200 {
            kept.push(v["audit_seq"].as_i64().unwrap());
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn run(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

/// A tmpfs of `size` mounted on a fresh folder, unmounted on drop.
struct Tmpfs(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("fs");
        std::fs::create_dir(&at).unwrap();
        let ok = run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at));
        ok.then_some(Tmpfs(at, dir))
    }

    /// Fills what is left with one file, which is returned.
    fn fill(&self) -> PathBuf {
        let f = self.0.join("filler");
        // dd stops at ENOSPC, which is the point.
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", f.display()))
            .output();
        f
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// A server whose data folder (database, keys) is `data`.
fn server_on(data: &Path) -> Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/main.cedar"), POLICIES).unwrap();
    let db = data.join("airlock.db");
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {data:?}\n\n[storage]\nurl = \"sqlite://{}\"\n\n[policy]\ndir = \"policies\"\n\n[audit]\ncheckpoint_interval_seconds = 1\n{USERS}",
        db.display(),
        data = data.display().to_string(),
    );
    std::fs::write(dir.path().join("airlock.toml"), cfg).unwrap();
    Server::serve(dir, &Db::Sqlite, 1, data)
}

/// Checks until one is refused (the disk is full for the WAL too), every
/// allowed one remembered; the refusal's code and time.
async fn until_refused(s: &Server, key: &str, kept: &mut Vec<i64>) -> (Value, Duration) {
    for _ in 0..20_000 {
        let (st, v, took) = timed(s, key, "/v1/check", read_t()).await;
        match st {
            200 => kept.push(v["audit_seq"].as_i64().unwrap()),
            503 => return (v, took),
            _ => panic!("{st} {v}"),
        }
    }
    panic!("never refused on a full disk");
}

#[tokio::test]
async fn sqlite_full_disk_refuses_then_recovers() {
    let Some(fs) = Tmpfs::mount("24m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let s = server_on(&fs.0.join("data"));
    let (alice, bob, carol) = (
        s.key("alice", "user"),
        s.key("bob", "user"),
        s.key("carol", "user"),
    );
    let mut kept = Vec::new();
    let (_, r) = s.post(&alice, "/v1/check", export("alice", "full")).await;
    let id = r["request"]["id"].as_str().unwrap().to_owned();
    let (st, _) = s.review(&bob, &id, "approve").await;
    assert_eq!(st, 200);

    // Disk full.
    let filler = fs.fill();
    let (v, took) = until_refused(&s, &alice, &mut kept).await;
    assert_eq!(v["error"]["code"], "audit_unavailable", "{v}");
    eprintln!(
        "disk full: refused in {took:?} after {} more allows",
        kept.len()
    );
    let (st, v) = s.review(&carol, &id, "approve").await;
    assert_eq!(st, 503, "no grant while the audit cannot be written: {v}");
    let (st, h) = s.get(&alice, "/healthz").await;
    assert_eq!(st, 503, "health says nothing can be written: {h}");
    std::fs::remove_file(&filler).unwrap();
    assert!(
        until_allowed(&s, &alice, &mut kept).await,
        "recovers without a restart once there is space"
    );
    let (st, h) = s.get(&alice, "/healthz").await;
    assert_eq!(st, 200, "{h}");
    let (st, r) = s.review(&carol, &id, "approve").await;
    assert_eq!((st, r["status"].as_str()), (200, Some("approved")), "{r}");

    // Nothing acknowledged lost; the log verifies.
    let list = kept
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let n: i64 = rusqlite::Connection::open(fs.0.join("data/airlock.db"))
        .unwrap()
        .query_row(
            &format!("SELECT COUNT(*) FROM audit WHERE kind = 'decision' AND seq IN ({list})"),
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n as usize, kept.len());
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert_eq!(r["status"], "approved", "{r}");
    let (code, out) = s.verify();
    assert_eq!(code, 0, "{out}");
}

/// A PostgreSQL cluster of the test's own, on its own port, that the test
/// may stop and start (the shared server must stay up for other tests).
struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn create() -> Option<Cluster> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").exists())?;
        let dir = tempfile::tempdir().ok()?;
        let data = dir.path().join("pg");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        // The server refuses to run as root: its files belong to postgres.
        if !run(Command::new("chown")
            .args(["-R", "postgres"])
            .arg(dir.path()))
        {
            return None;
        }
        let initdb = bin.join("initdb");
        let ok = run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&initdb)
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data));
        let c = Cluster { bin, dir, port };
        (ok && c.ctl("start")).then_some(c)
    }

    fn ctl(&self, what: &str) -> bool {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("pg"))
            .args(["-w", "-o", &opts]);
        match what {
            "stop" => cmd.args(["-m", "fast", "stop"]),
            other => cmd.args(["-l"]).arg(self.dir.path().join("log")).arg(other),
        };
        run(&mut cmd)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.ctl("stop");
    }
}

#[tokio::test]
async fn postgres_stopped_and_started_again_refuses_then_recovers() {
    if airlock_store::testing::skipped() {
        return;
    }
    let Some(pg) = Cluster::create() else {
        eprintln!("skipped: cannot run a PostgreSQL cluster of the test's own here (needs root and the server binaries)");
        return;
    };
    let db_handle = Arc::new(airlock_store::testing::TestDb::create_on(&pg.url()));
    let db = Db::Postgres(db_handle.clone());
    let s = Server::start(&db);
    let other = s.join();
    let (alice, bob, carol) = (
        s.key("alice", "user"),
        s.key("bob", "user"),
        s.key("carol", "user"),
    );
    let mut kept = Vec::new();
    for _ in 0..5 {
        let (st, v) = s.post(&alice, "/v1/check", read_t()).await;
        assert_eq!(st, 200, "{v}");
        kept.push(v["audit_seq"].as_i64().unwrap());
    }
    let (_, r) = s.post(&alice, "/v1/check", export("alice", "pg")).await;
    let id = r["request"]["id"].as_str().unwrap().to_owned();
    assert_eq!(other.review(&bob, &id, "approve").await.0, 200);

    assert!(pg.ctl("stop"));
    let (st, v, took) = timed(&s, &alice, "/v1/check", read_t()).await;
    eprintln!("PostgreSQL stopped: {st} in {took:?}");
    assert_eq!(st, 503, "{v}");
    assert!(
        matches!(
            v["error"]["code"].as_str(),
            Some("audit_unavailable" | "storage_unavailable")
        ),
        "{v}"
    );
    let (st, v, _) = timed(
        &other,
        &carol,
        &format!("/v1/requests/{id}/reviews"),
        json!({"verdict": "approve"}),
    )
    .await;
    assert_eq!(st, 503, "no grant without the database: {v}");

    assert!(pg.ctl("start"));
    assert!(
        until_allowed(&s, &alice, &mut kept).await
            && until_allowed(&other, &alice, &mut kept).await,
        "both nodes recover without a restart"
    );

    // Read-only, as after a failover to a standby: reads work, writes not.
    let admin_sql = |sql: &str| db_handle.execute(sql);
    admin_sql("ALTER SYSTEM SET default_transaction_read_only = on");
    admin_sql("SELECT pg_reload_conf()");
    let mut refused = None;
    for _ in 0..50 {
        let (st, v, took) = timed(&s, &alice, "/v1/check", read_t()).await;
        if st == 200 {
            kept.push(v["audit_seq"].as_i64().unwrap());
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        refused = Some((st, v, took));
        break;
    }
    let (st, v, took) = refused.expect("refused once the database is read-only");
    eprintln!("PostgreSQL read-only: {st} in {took:?}");
    assert_eq!(st, 503, "{v}");
    let (st, h) = s.get(&alice, "/healthz").await;
    assert_eq!(st, 503, "health says nothing can be written: {h}");
    let (st, v, _) = timed(
        &other,
        &carol,
        &format!("/v1/requests/{id}/reviews"),
        json!({"verdict": "approve"}),
    )
    .await;
    assert_eq!(st, 503, "no grant on a read-only database: {v}");
    admin_sql("ALTER SYSTEM RESET default_transaction_read_only");
    admin_sql("SELECT pg_reload_conf()");
    assert!(
        until_allowed(&s, &alice, &mut kept).await,
        "recovers without a restart once writable"
    );
    let (st, h) = s.get(&alice, "/healthz").await;
    assert_eq!(st, 200, "{h}");

    let (st, r) = other.review(&carol, &id, "approve").await;
    assert_eq!(
        (st, r["status"].as_str()),
        (200, Some("approved")),
        "the approval from before the faults was kept: {r}"
    );
    let admin = s.key("admin", "admin");
    let (_, all) = s.get(&admin, "/v1/audit?limit=100000").await;
    let seqs: Vec<i64> = all["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    for k in &kept {
        assert!(seqs.contains(k), "acknowledged decision {k} lost");
    }
    let (code, out) = s.verify();
    assert_eq!(code, 0, "{out}");
}

/// Accepts connections and never answers (nor closes them).
fn black_hole() -> (u16, std::thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().flatten() {
            held.push(c);
        }
    });
    (port, t)
}

#[tokio::test]
async fn receivers_that_hang_hold_up_nothing() {
    let (port, _t) = black_hole();
    let extra = format!(
        "[notify]\ndelivery_timeout_seconds = 1\n\n[[notify.webhooks]]\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n\n[notify.email]\nsmtp_url = \"smtp://127.0.0.1:{port}\"\nfrom = \"Airlock <airlock@example.com>\"\n\n[notify.slack]\napi_url = \"http://127.0.0.1:{port}/api\"\nbot_token = \"xoxb-test\"\nsigning_secret = \"{SLACK_SECRET}\"\nchannel = \"C0APPROVALS\"\n"
    );
    let s = Server::start_extra(&Db::Sqlite, POLICIES, &extra);
    let (alice, bob, carol) = (
        s.key("alice", "user"),
        s.key("bob", "user"),
        s.key("carol", "user"),
    );
    let admin = s.key("admin", "admin");
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let (st, v, took) = timed(
            &s,
            &alice,
            "/v1/check",
            export("alice", &format!("hang{i}")),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        slowest = slowest.max(took);
        let id = v["request"]["id"].as_str().unwrap().to_owned();
        for key in [&bob, &carol] {
            let (st, v, took) = timed(
                &s,
                key,
                &format!("/v1/requests/{id}/reviews"),
                json!({"verdict": "approve"}),
            )
            .await;
            assert_eq!(st, 200, "{v}");
            slowest = slowest.max(took);
        }
    }
    eprintln!("with every receiver hanging: slowest answer {slowest:?}");
    // The messages wait in the outbox, retried, not lost.
    let mut retried = false;
    for _ in 0..50 {
        let (_, out) = s.get(&admin, "/v1/outbox?limit=1000").await;
        let msgs = out["messages"].as_array().cloned().unwrap_or_default();
        if msgs
            .iter()
            .any(|m| m["attempts"].as_u64().unwrap_or(0) >= 1)
        {
            assert!(msgs.iter().all(|m| m["status"] != "delivered"), "{out}");
            retried = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        retried,
        "deliveries to hanging receivers time out and are retried"
    );
    let (st, h) = s.get(&admin, "/healthz").await;
    assert_eq!(st, 200, "{h}");
}
