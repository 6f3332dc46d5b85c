//! The PostgreSQL proxy (`[[proxies.postgres]]`, `airlock proxy`): the
//! real server on this machine behind the real proxy, driven by real
//! clients: `psql` (simple protocol, `\copy`, TLS), `tokio-postgres`
//! (extended protocol, prepared statements, pipelining, cancel) and
//! `pgbench`. Needs `AIRLOCK_TEST_POSTGRES` (the database holding the
//! proxied tables); skipped without it, like the store's PostgreSQL tests.

use std::process::{Command, Stdio};
use std::time::Duration;

use airlock_store::testing::TestDb;
use serde_json::Value;

use crate::proxy_http::{free_port, CARD, EMAIL};
use crate::support::*;

const SQL_POLICIES: &str = r#"
@id("read-orders")
permit(principal, action == Action::"sql.select", resource == Table::"public.orders");

@id("write-orders")
permit(principal, action in [Action::"sql.insert", Action::"sql.copy_out", Action::"sql.copy_in"], resource == Table::"public.orders");

@id("update-orders")
permit(principal, action == Action::"sql.update", resource == Table::"public.orders")
when { context.has_where };

@id("read-contacts")
permit(principal, action == Action::"sql.select", resource == Table::"public.contacts");

@id("delete-orders")
@approvers("security")
permit(principal, action == Action::"sql.delete", resource == Table::"public.orders");

@id("no-secrets")
forbid(principal, action, resource == Table::"public.secrets");

@id("database")
permit(principal, action in [Action::"sql.select", Action::"sql.other"], resource is Database);

@id("order-results")
permit(principal, action == Action::"sql.result", resource == Table::"public.orders");

@id("contact-results")
@approvers("security")
permit(principal, action == Action::"sql.result", resource == Table::"public.contacts");

@id("catalog")
permit(principal, action == Action::"sql.select", resource == Table::"pg_catalog.pg_stat_ssl");

@id("bench")
permit(principal, action == Action::"sql.select", resource)
when { [Table::"public.pgbench_accounts", Table::"public.pgbench_branches"].contains(resource) };
"#;

/// A fresh database with the proxied tables: orders (1..=5), contacts
/// (with the planted email and card), secrets.
fn data() -> Option<TestDb> {
    let db = TestDb::create()?;
    db.execute(&format!(
        "CREATE TABLE orders (id int PRIMARY KEY, amount int, note text);
         INSERT INTO orders SELECT g, g * 10, 'n' || g FROM generate_series(1, 5) g;
         CREATE TABLE contacts (id int, email text, card text);
         INSERT INTO contacts VALUES (1, '{EMAIL}', '{CARD}');
         CREATE TABLE secrets (x text);
         INSERT INTO secrets VALUES ('the crown jewels');"
    ));
    Some(db)
}

fn database_of(db: &TestDb) -> String {
    db.url()
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned()
}

/// `[[proxies.postgres]]` named `prod` on `port` in front of `db`.
fn pg_toml(port: u16, db: &TestDb, hold: u64, extra: &str) -> String {
    format!(
        "[[proxies.postgres]]\nname = \"prod\"\nlisten = \"127.0.0.1:{port}\"\nupstream = \"{}\"\nhold_seconds = {hold}\n{extra}\n",
        db.url()
    )
}

struct Pg {
    server: Server,
    db: TestDb,
    port: u16,
}

impl Pg {
    fn start(store: &Db, hold: u64, extra: &str) -> Option<Pg> {
        let db = data()?;
        let port = free_port();
        let server = Server::start_extra(store, SQL_POLICIES, &pg_toml(port, &db, hold, extra));
        Some(Pg { server, db, port })
    }

    fn url(&self, user: &str, key: &str) -> String {
        format!(
            "postgres://{user}:{key}@127.0.0.1:{}/{}?sslmode=disable",
            self.port,
            database_of(&self.db)
        )
    }

    async fn connect(
        &self,
        user: &str,
        key: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) =
            tokio_postgres::connect(&self.url(user, key), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    fn count(&self, sql: &str) -> i64 {
        self.db.query_i64(sql)
    }
}

/// psql's output and status for `-c` commands.
fn psql(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("psql")
        .arg(url)
        .args(["-X", "-q", "-v", "VERBOSITY=verbose"])
        .args(args)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no code: {e}"))
}

/// The id of alice's one pending request.
async fn pending_of(s: &Server, admin: &str) -> Vec<String> {
    let (_, v) = s.get(admin, "/v1/requests?status=pending").await;
    v["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect()
}

/// psql, simple protocol: allowed reads run; a denied table is `AL002`
/// and the next command on the same connection still works; a statement
/// that cannot be parsed is refused; a query of several statements where
/// one is denied runs none of them; `\copy` out and in are decided as
/// `sql.copy_out`/`sql.copy_in`; and a wrong key never reaches the server.
async fn psql_simple_protocol_copy_and_refusals(store: Db) {
    let Some(pg) = Pg::start(&store, 1, "") else {
        return;
    };
    let alice = pg.server.key("alice", "user");
    let url = pg.url("alice", &alice);

    let (ok, out, err) = psql(&url, &["-c", "SELECT id FROM orders ORDER BY id"]);
    assert!(ok, "{err}");
    assert!(out.contains(" 5"), "{out}");

    // One session: refused, then more work; the refusal names its policy.
    let (ok, out, err) = psql(
        &url,
        &[
            "-c",
            "SELECT * FROM secrets",
            "-c",
            "SELEC oops",
            "-c",
            "SELECT count(*) AS n FROM orders",
        ],
    );
    let _ = ok; // psql answers for the last command only
    assert!(err.contains("AL002") && err.contains("no-secrets"), "{err}");
    assert!(err.contains("42601"), "unparseable: {err}");
    assert!(out.contains("5"), "the session went on: {out}");
    assert!(!out.contains("crown jewels"));

    // Several statements in one query: nothing partial.
    let (ok, _, err) = psql(
        &url,
        &[
            "-c",
            "UPDATE orders SET note = 'x' WHERE id = 1; SELECT * FROM secrets",
        ],
    );
    assert!(!ok && err.contains("AL002"), "{err}");
    assert_eq!(pg.count("SELECT count(*) FROM orders WHERE note = 'x'"), 0);
    // A WHERE-less UPDATE is not what update-orders permits.
    let (ok, _, err) = psql(&url, &["-c", "UPDATE orders SET note = 'all'"]);
    assert!(!ok && err.contains("AL002"), "{err}");
    assert_eq!(
        pg.count("SELECT count(*) FROM orders WHERE note = 'all'"),
        0
    );
    // Nor are the writes hidden in a MERGE (its ON is a join, not a
    // WHERE) or in an upsert's DO UPDATE.
    for sql in [
        "MERGE INTO orders o USING orders s ON o.id = s.id WHEN MATCHED THEN UPDATE SET note = 'all'",
        "INSERT INTO orders SELECT id, 0, 'all' FROM orders ON CONFLICT (id) DO UPDATE SET note = 'all'",
    ] {
        let (ok, _, err) = psql(&url, &["-c", sql]);
        assert!(!ok && err.contains("AL002"), "{sql}: {err}");
    }
    let (ok, _, err) = psql(
        &url,
        &[
            "-c",
            "MERGE INTO orders o USING orders s ON o.id = s.id WHEN MATCHED THEN DELETE",
        ],
    );
    assert!(!ok && err.contains("AL00"), "{err}");
    assert_eq!(
        pg.count("SELECT count(*) FROM orders WHERE note = 'all'"),
        0
    );
    assert_eq!(pg.count("SELECT count(*) FROM orders"), 5);
    // Moving the search path would make Airlock decide other tables than
    // the server reads.
    let (ok, _, err) = psql(&url, &["-c", "SET search_path = secret_schema"]);
    assert!(!ok && err.contains("search_path"), "{err}");
    // Temporary relations come last, not first: one named like a public
    // table cannot stand in for it.
    let (ok, out, err) = psql(&url, &["-tAc", "SHOW search_path"]);
    assert!(ok && out.trim() == "public,pg_temp", "{out} {err}");
    let (ok, _, err) = psql(&url, &["-c", "PREPARE p AS DELETE FROM orders"]);
    assert!(!ok && err.contains("PREPARE"), "{err}");
    // Text the server would read differently, and SQL run from text.
    let (ok, _, err) = psql(&url, &["-c", "SET standard_conforming_strings = off"]);
    assert!(!ok && err.contains("0A000"), "{err}");
    // A tableless SELECT that changes the server's state.
    let (ok, _, err) = psql(&url, &["-c", "SELECT pg_stat_reset()"]);
    assert!(!ok && err.contains("0A000"), "{err}");
    let sql = "SELECT query_to_xml('select * from secrets', true, false, '')";
    let (ok, out, err) = psql(&url, &["-c", sql]);
    assert!(
        !ok && err.contains("0A000") && !out.contains("crown"),
        "{err}"
    );
    // SHIFT_JIS_2004 hides a backslash as SJIS does (a denylist missed
    // it: a read permit ran a hidden DELETE; found by a black-box pass).
    for enc in ["GBK", "SHIFT_JIS_2004", "shiftjis2004", "LATIN1"] {
        let other = url.replace(
            "sslmode=disable",
            &format!("sslmode=disable&client_encoding={enc}"),
        );
        let (ok, _, err) = psql(&other, &["-c", "SELECT 1"]);
        assert!(!ok && err.contains("UTF8"), "{enc}: {err}");
    }
    let ascii = url.replace(
        "sslmode=disable",
        "sslmode=disable&client_encoding=SQL_ASCII",
    );
    let (ok, _, err) = psql(&ascii, &["-c", "SELECT 1"]);
    assert!(ok, "{err}");

    // \copy: out is sql.copy_out on orders, in is sql.copy_in (only where
    // policies say: write-orders permits both).
    let (ok, out, err) = psql(&url, &["-c", "\\copy orders TO STDOUT"]);
    assert!(ok, "{err}");
    assert!(out.contains("n3"), "{out}");
    let (ok, _, err) = psql(&url, &["-c", "\\copy secrets TO STDOUT"]);
    assert!(!ok && err.contains("AL002"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rows.tsv");
    std::fs::write(&file, "100\t1000\tcopied\n101\t1010\tcopied\n").unwrap();
    let (ok, _, err) = psql(
        &url,
        &["-c", &format!("\\copy orders FROM '{}'", file.display())],
    );
    assert!(ok, "{err}");
    assert_eq!(
        pg.count("SELECT count(*) FROM orders WHERE note = 'copied'"),
        2
    );

    // Wrong key, unknown user, someone else's key: refused by Airlock.
    let bob = pg.server.key("bob", "user");
    for (user, key) in [
        ("alice", "alk_wrong"),
        ("nobody", alice.as_str()),
        ("alice", bob.as_str()),
    ] {
        let Err(e) = pg.connect(user, key).await else {
            panic!("{user} logged in with a wrong key")
        };
        assert_eq!(sqlstate(&e), "28P01", "{user}: {e}");
    }
    // An enforcer's key is not a database password.
    let enforcer = pg.server.key("svc", "enforcer");
    assert!(pg.connect("svc", &enforcer).await.is_err());
}

/// Wrong credentials never reach the database: against an upstream
/// nobody listens on, a bad login is `28P01` (Airlock said no before
/// connecting) while a good one fails connecting (`08006`).
#[tokio::test]
async fn wrong_credentials_never_reach_the_server() {
    let port = free_port();
    let dead = free_port();
    let cfg = format!(
        "[[proxies.postgres]]\nname = \"prod\"\nlisten = \"127.0.0.1:{port}\"\nupstream = \"postgres://postgres@127.0.0.1:{dead}/test\"\n"
    );
    let s = Server::start_extra(&Db::Sqlite, SQL_POLICIES, &cfg);
    let alice = s.key("alice", "user");
    let url = |k: &str| format!("postgres://alice:{k}@127.0.0.1:{port}/test?sslmode=disable");
    let bad = tokio_postgres::connect(&url("alk_wrong"), tokio_postgres::NoTls)
        .await
        .err()
        .unwrap();
    assert_eq!(sqlstate(&bad), "28P01", "{bad}");
    let good = tokio_postgres::connect(&url(&alice), tokio_postgres::NoTls)
        .await
        .err()
        .unwrap();
    assert_eq!(sqlstate(&good), "08006", "{good}");
    // Another database than the one served: refused at once.
    let other = format!("postgres://alice:{alice}@127.0.0.1:{port}/postgres?sslmode=disable");
    let e = tokio_postgres::connect(&other, tokio_postgres::NoTls)
        .await
        .err()
        .unwrap();
    assert_eq!(sqlstate(&e), "3D000", "{e}");
}

/// tokio-postgres, extended protocol: parameters are bound into the
/// decision (the same prepared statement is allowed for one value set,
/// refused for the other), prepared statements are decided at each
/// execution, pipelined queries all come back in order, a refusal inside
/// BEGIN leaves the transaction open and usable, and the session goes on.
async fn extended_protocol_parameters_pipelining_and_transactions(store: Db) {
    let Some(pg) = Pg::start(&store, 1, "") else {
        return;
    };
    let alice = pg.server.key("alice", "user");
    let c = pg.connect("alice", &alice).await.unwrap();

    let st = c
        .prepare("SELECT note FROM orders WHERE id = $1")
        .await
        .unwrap();
    for id in 1..=3 {
        let row = c.query_one(&st, &[&id]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), format!("n{id}"));
    }
    // Pipelined: several executions in flight at once.
    let (a, b, d) = tokio::join!(
        c.query_one(&st, &[&4i32]),
        c.query(
            "SELECT id FROM orders WHERE amount > $1 ORDER BY id",
            &[&20i32]
        ),
        c.query_one(&st, &[&5i32]),
    );
    assert_eq!(a.unwrap().get::<_, String>(0), "n4");
    assert_eq!(b.unwrap().len(), 3);
    assert_eq!(d.unwrap().get::<_, String>(0), "n5");

    // Denied with parameters; the connection goes on.
    let e = c
        .query("SELECT * FROM secrets WHERE x = $1", &[&"a"])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "AL002", "{e}");
    assert_eq!(c.query(&st, &[&1i32]).await.unwrap().len(), 1);
    // Unparseable at Parse.
    let e = c.prepare("SELEC $1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42601", "{e}");

    // Held inside a transaction: the transaction stays usable.
    c.batch_execute("BEGIN").await.unwrap();
    c.execute("INSERT INTO orders VALUES ($1, 1, 'in-tx')", &[&50i32])
        .await
        .unwrap();
    let e = c
        .execute("DELETE FROM orders WHERE id = $1", &[&2i32])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "AL001", "{e}");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("req_"), "{message}");
    c.execute("INSERT INTO orders VALUES ($1, 1, 'in-tx')", &[&51i32])
        .await
        .unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        pg.count("SELECT count(*) FROM orders WHERE note = 'in-tx'"),
        2
    );
    assert_eq!(
        pg.count("SELECT count(*) FROM orders WHERE id = 2"),
        1,
        "the held delete ran"
    );

    // The held DELETE's params bind its values: approved for id 2, it runs
    // once for id 2; id 3 is another question.
    let admin = pg.server.key("admin", "admin");
    let bob = pg.server.key("bob", "user");
    let pending = pending_of(&pg.server, &admin).await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    let (_, view) = pg
        .server
        .get(&admin, &format!("/v1/requests/{}", pending[0]))
        .await;
    // tokio-postgres binds int4 in binary: 2 is 00 00 00 02.
    assert_eq!(
        view["params"]["parameters"],
        serde_json::json!([{"base64": "AAAAAg=="}])
    );
    assert_eq!(view["params"]["sql"], "DELETE FROM orders WHERE id = $1");
    assert_eq!(view["context"]["in_transaction"], Value::Bool(true));
    assert_eq!(view["resource"]["id"], "public.orders");
    pg.server.review(&bob, &pending[0], "approve").await;
    let e = c
        .execute("DELETE FROM orders WHERE id = $1", &[&3i32])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "AL001");
    assert_eq!(
        c.execute("DELETE FROM orders WHERE id = $1", &[&2i32])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        pg.count("SELECT count(*) FROM orders WHERE id IN (2, 3)"),
        1
    );
    // Completed once the server's answer went by (on its own task).
    let mut after = Value::Null;
    for _ in 0..50 {
        let path = format!("/v1/requests/{}", pending[0]);
        after = pg.server.get(&admin, &path).await.1;
        if after["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(after["status"], "completed", "{after}");
    assert_eq!(after["grant"]["outcome"], "success", "{after}");
    // Spent: the identical statement is a new question.
    let e = c
        .execute("DELETE FROM orders WHERE id = $1", &[&2i32])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "AL001");
}

/// The hold: a NOTICE names the request at once, an approval given
/// meanwhile runs the statement (once), a denial is `AL002` and nothing
/// reaches the server, and a cancel request ends a hold promptly.
async fn holds_notice_approval_denial_and_cancel(store: Db) {
    let Some(pg) = Pg::start(&store, 30, "") else {
        return;
    };
    let alice = pg.server.key("alice", "user");
    let bob = pg.server.key("bob", "user");
    let admin = pg.server.key("admin", "admin");
    let url = pg.url("alice", &alice);

    let held = {
        let url = url.clone();
        std::thread::spawn(move || psql(&url, &["-c", "DELETE FROM orders WHERE id = 4"]))
    };
    let id = loop {
        if let Some(id) = pending_of(&pg.server, &admin).await.pop() {
            break id;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    pg.server.review(&bob, &id, "approve").await;
    let (ok, out, err) = held.join().unwrap();
    assert!(ok, "{err}");
    assert!(err.contains("NOTICE") && err.contains(&id), "{err}");
    assert!(out.is_empty() || out.contains("DELETE"), "{out}");
    assert_eq!(pg.count("SELECT count(*) FROM orders WHERE id = 4"), 0);
    // Its completion says what the write did (it returns no rows).
    let done = pg.server.audit_of(&admin, "grant_completed", 1).await;
    assert_eq!(
        done[0]["details"]["detail"]["commands"][0], "DELETE 1",
        "{done:?}"
    );

    // Denied while held.
    let held = {
        let url = url.clone();
        std::thread::spawn(move || psql(&url, &["-c", "DELETE FROM orders WHERE id = 5"]))
    };
    let id = loop {
        if let Some(id) = pending_of(&pg.server, &admin).await.pop() {
            break id;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    pg.server.review(&bob, &id, "deny").await;
    let (ok, _, err) = held.join().unwrap();
    assert!(!ok && err.contains("AL002"), "{err}");
    assert_eq!(pg.count("SELECT count(*) FROM orders WHERE id = 5"), 1);

    // Approved after its key was revoked while held: it does not run.
    let second = pg.server.key("alice", "user");
    let held = {
        let url = pg.url("alice", &second);
        std::thread::spawn(move || psql(&url, &["-c", "DELETE FROM orders WHERE id = 5"]))
    };
    let id = loop {
        if let Some(id) = pending_of(&pg.server, &admin).await.pop() {
            break id;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    pg.server.revoke_key(&second);
    pg.server.review(&bob, &id, "approve").await;
    let (ok, _, err) = held.join().unwrap();
    assert!(!ok && err.contains("28000"), "{err}");
    assert_eq!(pg.count("SELECT count(*) FROM orders WHERE id = 5"), 1);

    // Cancel ends the hold.
    let c = pg.connect("alice", &alice).await.unwrap();
    let token = c.cancel_token();
    let started = std::time::Instant::now();
    let run = tokio::spawn(async move { c.execute("DELETE FROM orders WHERE id = 1", &[]).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = run.await.unwrap().unwrap_err();
    assert_eq!(sqlstate(&e), "57014", "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the cancel did not end the hold"
    );
    assert_eq!(pg.count("SELECT count(*) FROM orders WHERE id = 1"), 1);

    // One approval runs its statement once: a query that runs it twice is
    // refused before the grant is spent (the first run spent it and only
    // the second was refused), and the approval stays for a single run.
    let id = pending_of(&pg.server, &admin).await.pop().unwrap();
    pg.server.review(&bob, &id, "approve").await;
    let c = pg.connect("alice", &alice).await.unwrap();
    let e = c
        .batch_execute("DELETE FROM orders WHERE id = 1; DELETE FROM orders WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "AL002", "{e}");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("runs it 2 times"), "{message}");
    assert_eq!(pg.count("SELECT count(*) FROM orders WHERE id = 1"), 1);
    c.execute("DELETE FROM orders WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(pg.count("SELECT count(*) FROM orders WHERE id = 1"), 0);

    // The client leaves while held, then the request is approved: the
    // statement does not run with no one to answer (it did), and the
    // grant stays for a retry.
    let before = pending_of(&pg.server, &admin).await;
    let mut client = Command::new("psql")
        .arg(&url)
        .args(["-X", "-q", "-c", "DELETE FROM orders WHERE id = 2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let id = loop {
        let now = pending_of(&pg.server, &admin).await;
        if let Some(id) = now.into_iter().find(|id| !before.contains(id)) {
            break id;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Killed: its socket closes as a dropped connection's does.
    client.kill().unwrap();
    client.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.server.review(&bob, &id, "approve").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pg.count("SELECT count(*) FROM orders WHERE id = 2"), 1);
    let (_, r) = pg.server.get(&admin, &format!("/v1/requests/{id}")).await;
    assert_eq!(r["status"], "approved", "{r}");
    // The same statement again uses it.
    let c = pg.connect("alice", &alice).await.unwrap();
    c.execute("DELETE FROM orders WHERE id = 2", &[])
        .await
        .unwrap();
    assert_eq!(pg.count("SELECT count(*) FROM orders WHERE id = 2"), 0);
}

/// A query that is not UTF-8 ends the session, and with it the proxy's
/// upstream connection. It used to leave both open for good: the client
/// got no answer, and each such session held one of the database's
/// connections (found by a black-box pass).
#[tokio::test]
async fn a_query_that_is_not_utf8_ends_the_session() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(pg) = Pg::start(&Db::Sqlite, 1, "") else {
        return;
    };
    let alice = pg.server.key("alice", "user");
    let mut tcp = raw_login(&pg, "alice", &alice).await;
    let sql = b"select '\xff'\0";
    let mut q = vec![b'Q'];
    q.extend_from_slice(&(4 + sql.len() as i32).to_be_bytes());
    q.extend_from_slice(sql);
    tcp.write_all(&q).await.unwrap();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the session was left open");
}

/// A raw protocol session signed in as `user` with `key` (SCRAM), at its
/// first `ReadyForQuery`.
async fn raw_login(pg: &Pg, user: &str, key: &str) -> tokio::net::TcpStream {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use postgres_protocol::message::{backend::Message, frontend};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", pg.port))
        .await
        .unwrap();
    let mut out = bytes::BytesMut::new();
    let database = database_of(&pg.db);
    frontend::startup_message([("user", user), ("database", database.as_str())], &mut out).unwrap();
    tcp.write_all(&out).await.unwrap();
    let mut scram = ScramSha256::new(key.as_bytes(), ChannelBinding::unsupported());
    let mut inbox = bytes::BytesMut::new();
    'login: loop {
        assert!(
            tcp.read_buf(&mut inbox).await.unwrap() > 0,
            "closed during login"
        );
        while let Some(m) = Message::parse(&mut inbox).unwrap() {
            out.clear();
            match m {
                Message::AuthenticationSasl(_) => {
                    frontend::sasl_initial_response("SCRAM-SHA-256", scram.message(), &mut out)
                        .unwrap();
                }
                Message::AuthenticationSaslContinue(b) => {
                    scram.update(b.data()).unwrap();
                    frontend::sasl_response(scram.message(), &mut out).unwrap();
                }
                Message::AuthenticationSaslFinal(b) => scram.finish(b.data()).unwrap(),
                Message::ReadyForQuery(_) => break 'login,
                Message::ErrorResponse(_) => panic!("login refused"),
                _ => {}
            }
            tcp.write_all(&out).await.unwrap();
        }
    }
    tcp
}

/// The session reads text as UTF-8 whatever the database's default, and a
/// startup packet naming a parameter twice is refused (the server takes
/// the last, the encoding check read the first; found by a review).
#[tokio::test]
async fn the_session_encoding_is_utf8_and_parameters_come_once() {
    use postgres_protocol::message::{backend::Message, frontend};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(pg) = Pg::start(&Db::Sqlite, 1, "") else {
        return;
    };
    let database = database_of(&pg.db);
    pg.db.execute(&format!(
        "ALTER DATABASE \"{database}\" SET client_encoding = 'LATIN1'"
    ));
    let alice = pg.server.key("alice", "user");
    let c = pg.connect("alice", &alice).await.unwrap();
    let row = c.simple_query("SHOW client_encoding").await.unwrap();
    let shown = row.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(shown.as_deref(), Some("UTF8"));

    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", pg.port))
        .await
        .unwrap();
    let mut out = bytes::BytesMut::new();
    frontend::startup_message(
        [
            ("user", "alice"),
            ("database", database.as_str()),
            ("client_encoding", "UTF8"),
            ("client_encoding", "SHIFT_JIS_2004"),
        ],
        &mut out,
    )
    .unwrap();
    tcp.write_all(&out).await.unwrap();
    let mut inbox = bytes::BytesMut::new();
    let refused = loop {
        assert!(tcp.read_buf(&mut inbox).await.unwrap() > 0, "closed");
        if let Some(m) = Message::parse(&mut inbox).unwrap() {
            break matches!(m, Message::ErrorResponse(_));
        }
    };
    assert!(refused, "a startup packet with client_encoding twice");
}

/// A batch with two approvals, the second of which cannot be used (its
/// approver left the group): nothing runs, and the use already spent of
/// the first is completed as a failure, not left open (found by a review).
#[tokio::test]
async fn a_batch_whose_second_approval_fails_completes_the_first() {
    let Some(pg) = Pg::start(&Db::Sqlite, 1, "") else {
        return;
    };
    let alice = pg.server.key("alice", "user");
    let bob = pg.server.key("bob", "user");
    let carol = pg.server.key("carol", "user");
    let admin = pg.server.key("admin", "admin");
    let url = pg.url("alice", &alice);
    let both = "DELETE FROM orders WHERE id = 4; DELETE FROM orders WHERE id = 5";
    let (ok, _, err) = psql(&url, &["-c", both]);
    assert!(!ok && err.contains("AL001"), "{err}");
    let ids = pending_of(&pg.server, &admin).await;
    assert_eq!(ids.len(), 2, "{ids:?}");
    let mut first = None;
    for id in &ids {
        let (_, r) = pg.server.get(&admin, &format!("/v1/requests/{id}")).await;
        if r["params"]["sql"].as_str().unwrap().contains("id = 5") {
            pg.server.review(&bob, id, "approve").await;
        } else {
            pg.server.review(&carol, id, "approve").await;
            first = Some(id.clone());
        }
    }
    // Bob leaves security: his approval no longer counts at consumption.
    pg.server.set_users(&USERS.replace(
        "name = \"bob\"\ngroups = [\"security\"]",
        "name = \"bob\"\ngroups = []",
    ));
    Command::new("kill")
        .args(["-HUP", &pg.server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(
        pg.server
            .audit_has(&admin, "policy_loaded", "trigger", "sighup")
            .await
    );
    let (ok, _, err) = psql(&url, &["-c", both]);
    assert!(
        !ok && err.contains("AL002") && err.contains("nothing ran"),
        "{err}"
    );
    assert_eq!(
        pg.count("SELECT count(*) FROM orders WHERE id IN (4, 5)"),
        2
    );
    let first = first.unwrap();
    let mut status = Value::Null;
    for _ in 0..50 {
        let (_, r) = pg
            .server
            .get(&admin, &format!("/v1/requests/{first}"))
            .await;
        status = r["status"].clone();
        if status == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "completed");
}

/// A database whose own encoding is not UTF8 is not served: there the
/// server folds and cuts names by bytes, not as Airlock's parser does
/// (`CAFÉ` is `café`; found by a review).
#[tokio::test]
async fn a_database_not_in_utf8_is_not_served() {
    let Some(db) = TestDb::create() else {
        return;
    };
    let utf8 = database_of(&db);
    let latin = format!("{utf8}_latin1");
    db.execute(&format!(
        "CREATE DATABASE \"{latin}\" ENCODING 'LATIN1' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'"
    ));
    let (port, control) = (free_port(), free_port());
    // The same server in front of the UTF8 database too: the setup works.
    let toml = format!(
        "[[proxies.postgres]]\nname = \"latin\"\nlisten = \"127.0.0.1:{port}\"\nupstream = \"{}\"\nhold_seconds = 1\n{}",
        db.url().replace(&format!("/{utf8}"), &format!("/{latin}")),
        pg_toml(control, &db, 1, "")
    );
    let server = Server::start_extra(&Db::Sqlite, SQL_POLICIES, &toml);
    let alice = server.key("alice", "user");
    let url = |port: u16, name: &str| {
        format!("postgres://alice:{alice}@127.0.0.1:{port}/{name}?sslmode=disable")
    };
    let (served, _, control_err) = psql(&url(control, &utf8), &["-c", "SELECT 1"]);
    let (ok, _, err) = psql(&url(port, &latin), &["-c", "SELECT 1"]);
    db.execute(&format!("DROP DATABASE \"{latin}\" WITH (FORCE)"));
    assert!(served, "{control_err}");
    assert!(
        !ok && err.contains("could not connect to the database"),
        "{err}"
    );
}

/// A client that sends Terminate while its statement is held, and keeps
/// the connection open, has left: the statement does not run after the
/// approval (it did; found by a black-box pass).
#[tokio::test]
async fn a_terminate_during_a_hold_ends_it() {
    use postgres_protocol::message::{backend::Message, frontend};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(pg) = Pg::start(&Db::Sqlite, 30, "") else {
        return;
    };
    let alice = pg.server.key("alice", "user");
    let bob = pg.server.key("bob", "user");
    let admin = pg.server.key("admin", "admin");
    let mut tcp = raw_login(&pg, "alice", &alice).await;
    let mut out = bytes::BytesMut::new();
    frontend::query("DELETE FROM orders WHERE id = 3", &mut out).unwrap();
    tcp.write_all(&out).await.unwrap();
    let mut inbox = bytes::BytesMut::new();
    'notice: loop {
        assert!(tcp.read_buf(&mut inbox).await.unwrap() > 0, "closed");
        while let Some(m) = Message::parse(&mut inbox).unwrap() {
            if let Message::NoticeResponse(_) = m {
                break 'notice;
            }
        }
    }
    out.clear();
    frontend::terminate(&mut out);
    tcp.write_all(&out).await.unwrap();
    let id = pending_of(&pg.server, &admin).await.pop().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.server.review(&bob, &id, "approve").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pg.count("SELECT count(*) FROM orders WHERE id = 3"), 1);
    drop(tcp);
}

/// Messages a client sends while its statement is held (read during the
/// hold, to see whether it left) run after it, in order.
#[tokio::test]
async fn what_a_held_client_sends_meanwhile_runs_after_in_order() {
    use postgres_protocol::message::{backend::Message, frontend};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(pg) = Pg::start(&Db::Sqlite, 30, "") else {
        return;
    };
    let alice = pg.server.key("alice", "user");
    let bob = pg.server.key("bob", "user");
    let admin = pg.server.key("admin", "admin");
    let mut tcp = raw_login(&pg, "alice", &alice).await;
    let mut out = bytes::BytesMut::new();
    frontend::query("DELETE FROM orders WHERE id = 3", &mut out).unwrap();
    tcp.write_all(&out).await.unwrap();
    let id = loop {
        if let Some(id) = pending_of(&pg.server, &admin).await.pop() {
            break id;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    out.clear();
    frontend::query("SELECT count(*) FROM orders", &mut out).unwrap();
    tcp.write_all(&out).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    pg.server.review(&bob, &id, "approve").await;
    let mut inbox = bytes::BytesMut::new();
    let (mut completed, mut ready, mut count) = (Vec::new(), 0, None);
    while ready < 2 {
        assert!(tcp.read_buf(&mut inbox).await.unwrap() > 0, "closed");
        while let Some(m) = Message::parse(&mut inbox).unwrap() {
            match m {
                Message::CommandComplete(c) => completed.push(c.tag().unwrap().to_owned()),
                Message::DataRow(r) => {
                    let raw = r.buffer();
                    count = Some(String::from_utf8_lossy(&raw[4..]).into_owned());
                }
                Message::ErrorResponse(_) => panic!("refused"),
                Message::ReadyForQuery(_) => ready += 1,
                _ => {}
            }
        }
    }
    assert_eq!(completed, ["DELETE 1", "SELECT 1"]);
    assert_eq!(count.as_deref(), Some("4"));
}

/// COPY FROM STDIN over the extended protocol with its data sent before
/// `Sync`, in one write: the data follows the decided statement to the
/// server. It was written at once, ahead of the statement, and the
/// session hung (found by a black-box pass).
#[tokio::test]
async fn copy_data_pipelined_before_sync_follows_its_statement() {
    use postgres_protocol::message::{backend::Message, frontend};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(pg) = Pg::start(&Db::Sqlite, 1, "") else {
        return;
    };
    let alice = pg.server.key("alice", "user");
    let mut tcp = raw_login(&pg, "alice", &alice).await;
    let mut out = bytes::BytesMut::new();
    frontend::parse("", "COPY orders FROM STDIN", std::iter::empty(), &mut out).unwrap();
    frontend::bind(
        "",
        "",
        std::iter::empty(),
        std::iter::empty::<i32>(),
        |_: i32,
         _: &mut bytes::BytesMut|
         -> Result<postgres_protocol::IsNull, Box<dyn std::error::Error + Sync + Send>> {
            unreachable!()
        },
        Some(0),
        &mut out,
    )
    .map_err(|_| "bind")
    .unwrap();
    frontend::execute("", 0, &mut out).unwrap();
    out.extend_from_slice(b"d");
    let row = b"912\t1\tpiped\n";
    out.extend_from_slice(&(4 + row.len() as i32).to_be_bytes());
    out.extend_from_slice(row);
    frontend::copy_done(&mut out);
    frontend::sync(&mut out);
    tcp.write_all(&out).await.unwrap();
    let mut inbox = bytes::BytesMut::new();
    let mut done = false;
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            assert!(tcp.read_buf(&mut inbox).await.unwrap() > 0, "closed");
            while let Some(m) = Message::parse(&mut inbox).unwrap() {
                match m {
                    Message::CommandComplete(_) => done = true,
                    Message::ErrorResponse(_) => panic!("refused"),
                    Message::ReadyForQuery(_) => return,
                    _ => {}
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the session hung");
    assert!(done);
    assert_eq!(pg.count("SELECT count(*) FROM orders WHERE id = 912"), 1);
}

/// Result rows through DLP: `mask` replaces the planted email and card
/// (keeping the card's last 4) in simple and extended results and COPY.
#[tokio::test]
async fn result_rows_are_masked() {
    let Some(pg) = Pg::start(&Db::Sqlite, 1, "response_dlp = \"mask\"") else {
        return;
    };
    let alice = pg.server.key("alice", "user");
    let (ok, out, err) = psql(
        &pg.url("alice", &alice),
        &["-c", "SELECT email, card FROM contacts"],
    );
    assert!(ok, "{err}");
    assert!(!out.contains(EMAIL) && !out.contains(CARD), "{out}");
    assert!(out.contains("1111"), "{out}");
    // What was found in the allowed statement's rows is on record, counts
    // only, with the decision that let it run.
    let admin = pg.server.key("admin", "admin");
    let found = pg.server.audit_of(&admin, "dlp_findings", 1).await;
    assert_eq!(found.len(), 1, "{found:?}");
    let d = &found[0]["details"];
    assert_eq!(found[0]["actor"], "postgres.prod");
    assert_eq!(d["principal"], "alice");
    assert_eq!(d["disposition"], "masked");
    assert_eq!(d["counts"]["email"], 1, "{d}");
    assert_eq!(d["counts"]["credit_card"], 1, "{d}");
    assert_eq!(d["targets"][0]["action"], "sql.select", "{d}");
    assert_eq!(d["targets"][0]["resource"]["id"], "public.contacts", "{d}");
    assert!(d["decisions"][0].as_i64().is_some(), "{d}");
    let (_, a) = pg.server.get(&admin, "/v1/audit?limit=10000").await;
    assert!(!a.to_string().contains(EMAIL) && !a.to_string().contains(CARD));
    // Pipelined: rows sent after a Flush, with the Sync that ends them
    // alone in a batch of its own, are on record too.
    let mut raw = raw::Conn::login(pg.port, "alice", &alice, &database_of(&pg.db)).await;
    let mut batch = raw::parse("", "SELECT email FROM contacts");
    batch.extend(raw::bind_execute());
    batch.extend(raw::flush());
    raw.roundtrip_until(&batch, b'C').await;
    let replies = raw.roundtrip(&raw::sync()).await;
    assert!(replies.iter().all(|r| raw::error_code(r).is_none()));
    let found = pg.server.audit_of(&admin, "dlp_findings", 2).await;
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(
        found[1]["details"]["counts"],
        serde_json::json!({"email": 1})
    );
    let c = pg.connect("alice", &alice).await.unwrap();
    let row = c
        .query_one(
            "SELECT email, card, id FROM contacts WHERE id = $1",
            &[&1i32],
        )
        .await
        .unwrap();
    let email: String = row.get(0);
    assert!(
        !email.contains("ann.lee") && email.len() == EMAIL.len(),
        "{email}"
    );
    assert_eq!(row.get::<_, i32>(2), 1, "non-text columns pass untouched");
    // A card read as a number in binary (tokio-postgres asks for binary
    // results), alone, in an array or in a record: read as the text a
    // text-format client gets, and, since a number cannot be masked in
    // place, sent as NULL.
    let row = c
        .query_one(
            "SELECT card::bigint, card::numeric, ARRAY[card::bigint], id::bigint FROM contacts WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<i64>>(0), None, "bigint");
    assert_eq!(row.get::<_, Option<Vec<i64>>>(2), None, "bigint[]");
    assert_eq!(
        row.get::<_, Option<i64>>(3),
        Some(1),
        "numbers that are no card pass"
    );
    // A portal described with text results, then bound again for binary
    // ones (or another portal run after the description): its rows are
    // not read with the description's text formats (found by a black-box
    // pass: the bigint card left as its eight bytes).
    let card_bytes = CARD.parse::<i64>().unwrap().to_be_bytes().to_vec();
    for batch in [
        [
            raw::parse("", "SELECT card::bigint FROM contacts WHERE id = 1"),
            raw::bind_formats("", "", &[0]),
            raw::describe(b'P', ""),
            raw::bind_formats("", "", &[1]),
            raw::execute(""),
            raw::sync(),
        ]
        .concat(),
        [
            raw::parse("t", "SELECT 'x'::text AS card"),
            raw::parse("n", "SELECT card::bigint FROM contacts WHERE id = 1"),
            raw::bind_formats("pt", "t", &[0]),
            raw::bind_formats("pn", "n", &[1]),
            raw::describe(b'P', "pt"),
            raw::execute("pn"),
            raw::close(b'P', "pt"),
            raw::close(b'P', "pn"),
            raw::close(b'S', "t"),
            raw::close(b'S', "n"),
            raw::sync(),
        ]
        .concat(),
    ] {
        let replies = raw.roundtrip(&batch).await;
        let leaked = replies
            .iter()
            .filter(|(tag, _)| *tag == b'D')
            .any(|(_, body)| body.windows(8).any(|w| w == card_bytes.as_slice()));
        assert!(!leaked, "{replies:?}");
        let ended = replies
            .iter()
            .any(|r| r.0 == b'D' || raw::error_code(r).as_deref() == Some("AL003"));
        assert!(ended, "neither a masked row nor a refusal: {replies:?}");
    }
    // The ordinary flow (psycopg's: Bind for binary, Describe the portal,
    // Execute) still answers rows, the card sent as NULL.
    let batch = [
        raw::parse(
            "",
            "SELECT card::bigint, id::bigint FROM contacts WHERE id = 1",
        ),
        raw::bind_formats("", "", &[1]),
        raw::describe(b'P', ""),
        raw::execute(""),
        raw::sync(),
    ]
    .concat();
    let replies = raw.roundtrip(&batch).await;
    assert!(
        replies.iter().all(|r| raw::error_code(r).is_none()),
        "{replies:?}"
    );
    let row = replies.iter().find(|r| r.0 == b'D').expect("a row");
    // Two columns: the card NULL (length -1), the id 8 bytes.
    assert_eq!(&row.1[..6], &[0, 2, 0xff, 0xff, 0xff, 0xff], "{row:?}");
    // A statement bound and never executed is never decided; SQL naming
    // the portal the proxy bound it as (on a new session: `w` is `al1` on
    // the server, `pw` is `al2`) would run it under the permit for FETCH
    // (found by a black-box pass: a forbidden table read, writes
    // committed). Refused.
    let mut fresh = raw::Conn::login(pg.port, "alice", &alice, &database_of(&pg.db)).await;
    let batch = [
        raw::parse("w", "UPDATE contacts SET email = 'pwned' RETURNING id"),
        raw::bind("pw", "w"),
        raw::parse("", "FETCH ALL FROM al2"),
        raw::bind("", ""),
        raw::execute(""),
        raw::sync(),
    ]
    .concat();
    let replies = fresh.roundtrip(&batch).await;
    assert_eq!(
        replies.iter().find_map(raw::error_code).as_deref(),
        Some("0A000"),
        "{replies:?}"
    );
    assert!(!replies.iter().any(|r| r.0 == b'D'), "{replies:?}");
    let c2 = pg.connect("alice", &alice).await.unwrap();
    let emails: Vec<String> = c2
        .query("SELECT email FROM contacts", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!emails.iter().any(|e| e == "pwned"), "{emails:?}");
    // In text: a bytea (written in hex) is scanned decoded and masked back
    // in hex; a number stays a number (9s, not Xs).
    let (ok, out, err) = psql(
        &pg.url("alice", &alice),
        &[
            "-At",
            "-c",
            "SELECT card::bytea, card::bigint FROM contacts WHERE id = 1",
        ],
    );
    assert!(ok, "{err}");
    let card_hex = CARD.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    assert!(!out.contains(&card_hex) && !out.contains(CARD), "{out}");
    assert!(out.contains("|9999999999991111"), "{out}");
    // A binary COPY carries no column types: withheld where DLP must act.
    let (ok, _, err) = psql(
        &pg.url("alice", &alice),
        &[
            "-c",
            "COPY (SELECT 4111111111111111::bigint FROM orders LIMIT 1) TO STDOUT (FORMAT binary)",
        ],
    );
    assert!(!ok && err.contains("binary COPY"), "{err}");
    let found = pg.server.audit_of(&admin, "dlp_findings", 4).await;
    assert!(
        found
            .iter()
            .any(|f| f["details"]["counts"]["credit_card"] == 3),
        "the bigint, the numeric and the array: {found:?}"
    );
}

/// TLS: a client asking for it gets it (psql sslmode=require), and one
/// not asking is served in plain text when no certificate is configured
/// (SSL negotiation answered 'N').
#[tokio::test]
async fn ssl_negotiation() {
    let Some(db) = data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(made.success());
    let port = free_port();
    let extra = format!(
        "tls_cert = {:?}\ntls_key = {:?}",
        cert.display().to_string(),
        key.display().to_string()
    );
    let s = Server::start_extra(&Db::Sqlite, SQL_POLICIES, &pg_toml(port, &db, 1, &extra));
    let alice = s.key("alice", "user");
    let base = format!(
        "postgres://alice:{alice}@127.0.0.1:{port}/{}",
        database_of(&db)
    );
    let (ok, out, err) = psql(
        &format!("{base}?sslmode=require"),
        &[
            "-c",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            "-c",
            "\\conninfo",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("SSL connection"), "{out}");

    // Without a certificate: 'N', then plain text for sslmode=prefer.
    let Some(pg) = Pg::start(&Db::Sqlite, 1, "") else {
        return;
    };
    let k = pg.server.key("alice", "user");
    let prefer = pg
        .url("alice", &k)
        .replace("sslmode=disable", "sslmode=prefer");
    let (ok, out, err) = psql(&prefer, &["-c", "\\conninfo"]);
    assert!(ok, "{err}");
    assert!(!out.contains("SSL connection"), "{out}");
    let require = pg
        .url("alice", &k)
        .replace("sslmode=disable", "sslmode=require");
    let (ok, _, _) = psql(&require, &["-c", "SELECT 1"]);
    assert!(!ok, "TLS was required and none is offered");
}

/// pgbench through the proxy, every statement decided: simple, extended
/// and prepared protocols run to the end without a failed transaction.
#[tokio::test]
async fn pgbench_runs_through_the_proxy() {
    let Some(pg) = Pg::start(&Db::Sqlite, 1, "") else {
        return;
    };
    let alice = pg.server.key("alice", "user");
    let db = database_of(&pg.db);
    let init = Command::new("pgbench")
        .args([
            "-i",
            "-s",
            "1",
            "-q",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            &db,
        ])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    for mode in ["simple", "extended", "prepared"] {
        let out = Command::new("pgbench")
            .args([
                "-S",
                "-n",
                "-M",
                mode,
                "-c",
                "2",
                "-t",
                "20",
                "-h",
                "127.0.0.1",
                "-p",
            ])
            .arg(pg.port.to_string())
            .args(["-U", "alice", &db])
            .env("PGPASSWORD", &alice)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{mode}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("processed: 40/40"), "{mode}: {text}");
    }
}

/// `airlock proxy --config FILE` runs `[[proxies.postgres]]` alone against
/// the server with an enforcer key: logins and decisions go over HTTP.
#[tokio::test]
async fn standalone_proxy_decides_over_http() {
    let Some(db) = data() else { return };
    let s = Server::start_with(&Db::Sqlite, SQL_POLICIES);
    let enforcer = s.key("pgproxy", "enforcer");
    let alice = s.key("alice", "user");
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    std::fs::write(
        &file,
        format!(
            "[proxy]\nserver_url = \"{}\"\ntoken = \"{enforcer}\"\n\n{}",
            s.url,
            pg_toml(port, &db, 1, "")
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["proxy", "--config"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.contains("postgres prod listening"), "{line}");
    let url = format!(
        "postgres://alice:{alice}@127.0.0.1:{port}/{}?sslmode=disable",
        database_of(&db)
    );
    let (ok, out, err) = psql(
        &url,
        &[
            "-c",
            "SELECT count(*) FROM orders",
            "-c",
            "SELECT * FROM secrets",
        ],
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.contains('5'), "{out}{err}");
    assert!(!ok && err.contains("AL002"), "{err}");
    let admin = s.key("admin", "admin");
    let (_, audit) = s.get(&admin, "/v1/audit?limit=1000").await;
    assert!(
        audit.to_string().contains("public.secrets"),
        "the denial is on record"
    );
}

/// Results decided before they leave (`result_action`): orders' results
/// are allowed, contacts' need approval — held with a NOTICE, the request
/// carrying the row count, DLP counts and a masked preview (never the raw
/// values); approved, the identical result on a re-run is released once.
/// `mask_columns` hides a column by name; `max_rows` cuts a result.
#[tokio::test]
async fn results_are_decided_masked_by_column_and_capped() {
    let extra = "result_action = \"sql.result\"\nresult_preview_rows = 1\nmask_columns = [\"note\"]\nmax_rows = 3";
    let Some(pg) = Pg::start(&Db::Sqlite, 1, extra) else {
        return;
    };
    let alice = pg.server.key("alice", "user");
    let bob = pg.server.key("bob", "user");
    let admin = pg.server.key("admin", "admin");
    let url = pg.url("alice", &alice);

    // Allowed result, note masked by name, cut after 3 rows.
    let (_, out, err) = psql(&url, &["-c", "SELECT id, note FROM orders ORDER BY id"]);
    assert!(err.contains("AL003") && err.contains("max_rows"), "{err}");
    assert!(!out.contains("n1"), "{out}");
    let (ok, out, err) = psql(
        &url,
        &[
            "-c",
            "SELECT id, note FROM orders WHERE id <= 2 ORDER BY id",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("****") && !out.contains("n1"), "{out}");

    // The same over the extended protocol (columns learned from the
    // statement's Describe; the int column binary, untouched).
    let c = pg.connect("alice", &alice).await.unwrap();
    let row = c
        .query_one("SELECT id, note FROM orders WHERE id = $1", &[&1i32])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    assert_eq!(row.get::<_, String>(1), "****");

    // The contacts' result is held: the statement ran, its rows did not
    // leave.
    let (ok, out, err) = psql(&url, &["-c", "SELECT email, card FROM contacts"]);
    assert!(
        !ok && err.contains("AL001") && err.contains("sql.result"),
        "{err}"
    );
    assert!(!out.contains(EMAIL), "{out}");
    let pending = pending_of(&pg.server, &admin).await;
    assert_eq!(pending.len(), 1);
    let (_, view) = pg
        .server
        .get(&admin, &format!("/v1/requests/{}", pending[0]))
        .await;
    assert_eq!(view["action"], "sql.result");
    assert_eq!(view["context"]["rows"], 1);
    assert_eq!(view["context"]["dlp"]["email"], 1, "{view}");
    assert_eq!(view["context"]["dlp"]["credit_card"], 1, "{view}");
    assert_eq!(
        view["context"]["columns"],
        serde_json::json!(["email", "card"])
    );
    let text = view.to_string();
    assert!(
        !text.contains(EMAIL) && !text.contains(CARD),
        "a raw value in the request: {text}"
    );
    assert!(
        text.contains("1111"),
        "the preview keeps the card's last 4: {text}"
    );
    assert!(view["params"]["result_sha256"]
        .as_str()
        .is_some_and(|h| h.len() == 64));

    pg.server.review(&bob, &pending[0], "approve").await;
    let (ok, out, err) = psql(&url, &["-c", "SELECT email, card FROM contacts"]);
    assert!(ok, "{err}");
    assert!(out.contains(EMAIL), "approved, released as it is: {out}");
    // Used: the next identical result is a new question.
    let (ok, _, err) = psql(&url, &["-c", "SELECT email, card FROM contacts"]);
    assert!(!ok && err.contains("AL001"), "{err}");
}

/// Re-parsing the unnamed statement later in the same pipelined batch
/// cannot change what an earlier `Execute` is decided as: a raw client
/// sends Parse(DELETE) Bind Execute Parse(SELECT 1) Bind Execute Sync;
/// the DELETE is held, nothing of the batch runs, and the session goes on.
async fn a_batch_is_decided_in_order(store: Db) {
    let Some(pg) = Pg::start(&store, 1, "") else {
        return;
    };
    let alice = pg.server.key("alice", "user");
    let mut c = raw::Conn::login(pg.port, "alice", &alice, &database_of(&pg.db)).await;
    let mut batch = Vec::new();
    batch.extend(raw::parse("", "DELETE FROM orders WHERE id = 1"));
    batch.extend(raw::bind_execute());
    batch.extend(raw::parse("", "SELECT 1"));
    batch.extend(raw::bind_execute());
    batch.extend(raw::sync());
    let replies = c.roundtrip(&batch).await;
    let codes: Vec<String> = replies.iter().filter_map(raw::error_code).collect();
    assert_eq!(codes, vec!["AL001".to_owned()], "{replies:?}");
    assert_eq!(pg.count("SELECT count(*) FROM orders WHERE id = 1"), 1);
    // The session goes on.
    let mut again = Vec::new();
    again.extend(raw::parse("", "SELECT id FROM orders WHERE id = 2"));
    again.extend(raw::bind_execute());
    again.extend(raw::sync());
    let replies = c.roundtrip(&again).await;
    assert!(replies.iter().any(|(t, _)| *t == b'D'), "{replies:?}");
    assert!(
        replies.iter().all(|r| raw::error_code(r).is_none()),
        "{replies:?}"
    );

    let secret = |replies: &[(u8, Vec<u8>)]| {
        replies
            .iter()
            .any(|(t, b)| *t == b'D' && String::from_utf8_lossy(b).contains("crown"))
    };
    // A Close the server skips after an error cannot leave the proxy
    // deciding one statement while the server runs another: "s" is
    // prepared (no Execute, nothing decided), then an error skips its
    // Close on the server; binding "s" afterwards is refused by the proxy.
    let mut b1 = raw::parse("s", "SELECT * FROM secrets");
    b1.extend(raw::sync());
    c.roundtrip(&b1).await;
    let mut b2 = raw::execute("nope");
    b2.extend(raw::close(b'S', "s"));
    b2.extend(raw::parse("s", "SELECT 1"));
    b2.extend(raw::sync());
    c.roundtrip(&b2).await;
    let mut b3 = raw::bind("", "s");
    b3.extend(raw::execute(""));
    b3.extend(raw::sync());
    let replies = c.roundtrip(&b3).await;
    assert!(!secret(&replies), "the secret came out: {replies:?}");
    // A portal keeps what it was bound to: re-parsing the unnamed
    // statement after Bind does not change what Execute is decided as.
    let mut b4 = raw::parse("", "SELECT * FROM secrets");
    b4.extend(raw::bind("p", ""));
    b4.extend(raw::parse("", "SELECT 1"));
    b4.extend(raw::execute("p"));
    b4.extend(raw::sync());
    let replies = c.roundtrip(&b4).await;
    let codes: Vec<String> = replies.iter().filter_map(raw::error_code).collect();
    assert_eq!(codes, vec!["AL002".to_owned()], "{replies:?}");
    assert!(!secret(&replies));
    // SQL EXECUTE of a protocol-prepared statement, however dressed.
    let mut b5 = raw::parse("t", "SELECT * FROM secrets");
    b5.extend(raw::sync());
    c.roundtrip(&b5).await;
    for q in [
        "/**/EXECUTE t",
        "EXPLAIN ANALYZE EXECUTE t",
        "CREATE TABLE loot AS EXECUTE t",
    ] {
        let replies = c.roundtrip(&raw::query(q)).await;
        let codes: Vec<String> = replies.iter().filter_map(raw::error_code).collect();
        assert_eq!(codes, vec!["0A000".to_owned()], "{q}: {replies:?}");
        assert!(!secret(&replies));
    }
    // Re-parsing the unnamed statement many times: the replies the client
    // gets are exactly its own (Airlock's clean-up is not seen).
    let mut many = Vec::new();
    for i in 0..3 {
        many.extend(raw::parse(
            "",
            &format!("SELECT id FROM orders WHERE id = {}", i + 2),
        ));
        many.extend(raw::bind_execute());
    }
    many.extend(raw::sync());
    let replies = c.roundtrip(&many).await;
    let tags: String = replies.iter().map(|(t, _)| *t as char).collect();
    assert_eq!(tags, "12DC12DC12DCZ", "{replies:?}");
}

/// `max_rows` counts a portal's rows across the executions it is
/// suspended between (`Execute` with a row limit), not per chunk.
#[tokio::test]
async fn max_rows_holds_across_a_suspended_portal() {
    let Some(pg) = Pg::start(&Db::Sqlite, 1, "max_rows = 3") else {
        return;
    };
    let alice = pg.server.key("alice", "user");
    let mut c = raw::Conn::login(pg.port, "alice", &alice, &database_of(&pg.db)).await;
    let mut b = raw::parse("", "SELECT id FROM orders ORDER BY id");
    b.extend(raw::bind("p", ""));
    for _ in 0..3 {
        b.extend(raw::execute_n("p", 2));
    }
    b.extend(raw::sync());
    let replies = c.roundtrip(&b).await;
    let rows = replies.iter().filter(|(t, _)| *t == b'D').count();
    assert_eq!(rows, 3, "{replies:?}");
    let codes: Vec<String> = replies.iter().filter_map(raw::error_code).collect();
    assert_eq!(codes, vec!["AL003".to_owned()], "{replies:?}");
}

/// Connections that never log in cannot take every place: one address
/// gets at most `max_logins_per_address` (here 8) logging in at once; a
/// logged-in client is unaffected.
#[tokio::test]
async fn idle_logins_from_one_address_are_capped() {
    use tokio::io::AsyncReadExt;
    let Some(pg) = Pg::start(&Db::Sqlite, 1, "max_logins_per_address = 8") else {
        return;
    };
    let alice = pg.server.key("alice", "user");
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", pg.port))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ninth = tokio::net::TcpStream::connect(("127.0.0.1", pg.port))
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), ninth.read_to_end(&mut answer)).await;
    assert!(
        String::from_utf8_lossy(&answer).contains("53300"),
        "{answer:?}"
    );
    drop(idle);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = pg.connect("alice", &alice).await.unwrap();
    assert_eq!(c.query("SELECT 1", &[]).await.unwrap().len(), 1);
}

/// A key revoked while its session is open ends that session (at the
/// next statement, within seconds); the statement never reaches the
/// server.
#[tokio::test]
async fn a_revoked_key_ends_its_open_sessions() {
    let Some(pg) = Pg::start(&Db::Sqlite, 1, "") else {
        return;
    };
    let alice = pg.server.key("alice", "user");
    let c = pg.connect("alice", &alice).await.unwrap();
    assert_eq!(
        c.query("SELECT id FROM orders", &[]).await.unwrap().len(),
        5
    );
    pg.server.revoke_key(&alice);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let e = c
        .query("DELETE FROM orders WHERE id = 1", &[])
        .await
        .unwrap_err();
    assert!(
        e.code().is_some_and(|c| c.code() == "28000") || e.is_closed(),
        "{e:?}"
    );
    assert_eq!(pg.count("SELECT count(*) FROM orders"), 5);
}

/// A PostgreSQL server of the test's own, asking for SCRAM-SHA-256 and
/// serving TLS with a certificate made here: what Airlock's upstream login
/// is tested against (the machine's server trusts everyone). Needs root
/// (to run initdb as `postgres`); `None` otherwise.
struct PrivatePg {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    port: u16,
}

impl PrivatePg {
    const PASSWORD: &'static str = "airlock-db-pass";

    fn start() -> Option<PrivatePg> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("initdb").exists())
            .max()?;
        if !Command::new("id")
            .arg("-u")
            .output()
            .ok()?
            .stdout
            .starts_with(b"0")
        {
            eprintln!("skipped: initdb runs as postgres, which needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let chown = |p: &std::path::Path| {
            Command::new("chown")
                .arg("-R")
                .arg("postgres")
                .arg(p)
                .status()
                .unwrap();
        };
        std::fs::write(d.join("pw"), format!("{}\n", Self::PASSWORD)).unwrap();
        chown(d);
        let ok = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .arg("-D")
            .arg(d.join("data"))
            .args([
                "-U",
                "airlock",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--pwfile",
            ])
            .arg(d.join("pw"))
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        // A CA, and the server's certificate signed by it (a self-signed
        // certificate cannot be both, and rustls tells them apart).
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "data/server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(
            d.join("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            "data/server.crt",
        ]);
        Command::new("chmod")
            .arg("600")
            .arg(d.join("data/server.key"))
            .status()
            .unwrap();
        chown(d);
        // TLS or nothing: a session that works proves the login was over
        // TLS.
        std::fs::write(
            d.join("data/pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        chown(d);
        let port = free_port();
        let started = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("pg_ctl"))
            .arg("-D")
            .arg(d.join("data"))
            .arg("-o")
            .arg(format!(
                "-p {port} -k {} -c ssl=on -c listen_addresses=127.0.0.1",
                d.display()
            ))
            .arg("-l")
            .arg(d.join("log"))
            .args(["-w", "start"])
            .output()
            .unwrap();
        assert!(
            started.status.success(),
            "{}",
            String::from_utf8_lossy(&started.stderr)
        );
        Some(PrivatePg { dir, bin, port })
    }

    fn ca(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// Airlock logs in upstream with its own credentials by SCRAM-SHA-256
/// over TLS verified against `upstream_ca` (a real server demanding
/// both); a wrong password or a certificate from another CA fails the
/// session (08006) and nothing runs.
#[tokio::test]
async fn upstream_login_is_scram_over_verified_tls() {
    let Some(db) = PrivatePg::start() else {
        return;
    };
    let other_ca = tempfile::tempdir().unwrap();
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(other_ca.path().join("k.pem"))
        .arg("-out")
        .arg(other_ca.path().join("ca.pem"))
        .output()
        .unwrap();
    assert!(made.status.success());
    let proxy = |name: &str, port: u16, password: &str, ca: &std::path::Path| {
        format!(
            "[[proxies.postgres]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\nupstream = \"postgres://airlock:{password}@127.0.0.1:{}/postgres?sslmode=verify-full\"\nupstream_ca = {:?}\n",
            db.port,
            ca.display().to_string()
        )
    };
    let (good, bad_pw, bad_ca) = (free_port(), free_port(), free_port());
    let cfg = format!(
        "{}{}{}",
        proxy("good", good, PrivatePg::PASSWORD, &db.ca()),
        proxy("badpw", bad_pw, "wrong", &db.ca()),
        proxy(
            "badca",
            bad_ca,
            PrivatePg::PASSWORD,
            &other_ca.path().join("ca.pem")
        )
    );
    let s = Server::start_extra(&Db::Sqlite, SQL_POLICIES, &cfg);
    let alice = s.key("alice", "user");
    let url =
        |port: u16| format!("postgres://alice:{alice}@127.0.0.1:{port}/postgres?sslmode=disable");
    let (ok, out, err) = psql(
        &url(good),
        &[
            "-At",
            "-c",
            "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "airlock|t", "Airlock's own login, over TLS");
    for port in [bad_pw, bad_ca] {
        let (ok, _, err) = psql(&url(port), &["-c", "SELECT 1"]);
        assert!(
            !ok && err.contains("could not connect to the database"),
            "{port}: {err}"
        );
    }
}

/// A minimal protocol-3 client, to send what drivers would not.
mod raw {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub struct Conn {
        tcp: TcpStream,
    }

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    pub fn parse(name: &str, sql: &str) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        b.extend_from_slice(sql.as_bytes());
        b.push(0);
        b.extend_from_slice(&0i16.to_be_bytes());
        msg(b'P', &b)
    }

    pub fn bind_execute() -> Vec<u8> {
        let mut b = vec![0u8, 0u8];
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        let mut out = msg(b'B', &b);
        let mut e = vec![0u8];
        e.extend_from_slice(&0i32.to_be_bytes());
        out.extend(msg(b'E', &e));
        out
    }

    pub fn flush() -> Vec<u8> {
        msg(b'H', &[])
    }

    pub fn sync() -> Vec<u8> {
        msg(b'S', &[])
    }

    pub fn bind(portal: &str, statement: &str) -> Vec<u8> {
        bind_formats(portal, statement, &[])
    }

    /// A Bind asking for these result formats (0 text, 1 binary).
    pub fn bind_formats(portal: &str, statement: &str, results: &[i16]) -> Vec<u8> {
        let mut b = Vec::new();
        for n in [portal, statement] {
            b.extend_from_slice(n.as_bytes());
            b.push(0);
        }
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(results.len() as i16).to_be_bytes());
        for f in results {
            b.extend_from_slice(&f.to_be_bytes());
        }
        msg(b'B', &b)
    }

    pub fn describe(kind: u8, name: &str) -> Vec<u8> {
        let mut b = vec![kind];
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        msg(b'D', &b)
    }

    pub fn execute(portal: &str) -> Vec<u8> {
        let mut e = portal.as_bytes().to_vec();
        e.push(0);
        e.extend_from_slice(&0i32.to_be_bytes());
        msg(b'E', &e)
    }

    pub fn execute_n(portal: &str, rows: i32) -> Vec<u8> {
        let mut e = portal.as_bytes().to_vec();
        e.push(0);
        e.extend_from_slice(&rows.to_be_bytes());
        msg(b'E', &e)
    }

    pub fn close(kind: u8, name: &str) -> Vec<u8> {
        let mut b = vec![kind];
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        msg(b'C', &b)
    }

    pub fn query(sql: &str) -> Vec<u8> {
        let mut b = sql.as_bytes().to_vec();
        b.push(0);
        msg(b'Q', &b)
    }

    pub fn error_code((tag, body): &(u8, Vec<u8>)) -> Option<String> {
        if *tag != b'E' {
            return None;
        }
        body.split(|b| *b == 0)
            .find_map(|f| f.strip_prefix(b"C"))
            .map(|c| String::from_utf8_lossy(c).into_owned())
    }

    impl Conn {
        async fn read(&mut self) -> (u8, Vec<u8>) {
            let tag = self.tcp.read_u8().await.unwrap();
            let len = self.tcp.read_i32().await.unwrap() as usize;
            let mut body = vec![0; len - 4];
            self.tcp.read_exact(&mut body).await.unwrap();
            (tag, body)
        }

        pub async fn login(port: u16, user: &str, key: &str, db: &str) -> Conn {
            let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let mut b = Vec::new();
            b.extend_from_slice(&196_608i32.to_be_bytes());
            for (k, v) in [("user", user), ("database", db)] {
                b.extend_from_slice(k.as_bytes());
                b.push(0);
                b.extend_from_slice(v.as_bytes());
                b.push(0);
            }
            b.push(0);
            let mut startup = ((b.len() + 4) as i32).to_be_bytes().to_vec();
            startup.extend(b);
            tcp.write_all(&startup).await.unwrap();
            let mut c = Conn { tcp };
            let mut scram = ScramSha256::new(key.as_bytes(), ChannelBinding::unsupported());
            loop {
                let (tag, body) = c.read().await;
                match (
                    tag,
                    body.get(..4)
                        .map(|c| i32::from_be_bytes(c.try_into().unwrap())),
                ) {
                    (b'R', Some(10)) => {
                        let mut m = b"SCRAM-SHA-256\0".to_vec();
                        m.extend_from_slice(&(scram.message().len() as i32).to_be_bytes());
                        m.extend_from_slice(scram.message());
                        c.tcp.write_all(&msg(b'p', &m)).await.unwrap();
                    }
                    (b'R', Some(11)) => {
                        scram.update(&body[4..]).unwrap();
                        c.tcp.write_all(&msg(b'p', scram.message())).await.unwrap();
                    }
                    (b'R', Some(12)) => scram.finish(&body[4..]).unwrap(),
                    (b'Z', _) => return c,
                    (b'E', _) => panic!("login failed: {}", String::from_utf8_lossy(&body)),
                    _ => {}
                }
            }
        }

        /// Sends `bytes` and reads replies up to the first of type `last`.
        pub async fn roundtrip_until(&mut self, bytes: &[u8], last: u8) -> Vec<(u8, Vec<u8>)> {
            self.tcp.write_all(bytes).await.unwrap();
            let mut out = Vec::new();
            loop {
                let m = self.read().await;
                let done = m.0 == last;
                out.push(m);
                if done {
                    return out;
                }
            }
        }

        /// Sends `bytes` and reads replies up to `ReadyForQuery`.
        pub async fn roundtrip(&mut self, bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
            self.tcp.write_all(bytes).await.unwrap();
            let mut out = Vec::new();
            loop {
                let m = self.read().await;
                let done = m.0 == b'Z';
                out.push(m);
                if done {
                    return out;
                }
            }
        }
    }
}

on_both_stores!(
    a_batch_is_decided_in_order,
    psql_simple_protocol_copy_and_refusals,
    extended_protocol_parameters_pipelining_and_transactions,
    holds_notice_approval_denial_and_cancel,
);
