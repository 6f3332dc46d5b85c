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
    // A made schema is no news (PostgreSQL's "already exists, skipping"
    // NOTICE was logged by every command; found by a black-box pass).
    assert!(!out.contains("NOTICE"), "{out}");
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
    // The request column (what a request's history and `decisions` read)
    // is held to the hashed content: moving a record to another request,
    // detaching it from its own, or filing another record under one
    // (found by a black-box pass: all three verified).
    tamper(
        "UPDATE audit SET request_id = (SELECT MAX(request_id) FROM audit)
         WHERE seq = (SELECT MIN(seq) FROM audit WHERE request_id <> (SELECT MAX(request_id) FROM audit))",
        "is filed under req_",
    );
    tamper(
        "UPDATE audit SET request_id = NULL WHERE seq = (SELECT MIN(seq) FROM audit WHERE request_id IS NOT NULL)",
        "is filed under no request but its hashed content names req_",
    );
    tamper(
        "UPDATE audit SET request_id = (SELECT MAX(request_id) FROM audit)
         WHERE seq = (SELECT MIN(seq) FROM audit WHERE request_id IS NULL)",
        "but its hashed content names no request",
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

/// A server whose config writes tree checkpoints to `witness` too.
fn witnessed(witness: &std::path::Path) -> Server {
    let (dir, cfg) = sqlite_config();
    let data = dir.path().join("data");
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        "checkpoint_interval_seconds = 1\n",
        &format!(
            "checkpoint_interval_seconds = 1\norigin = \"test.example/audit\"\nwitness_dir = {:?}\n",
            witness.display().to_string()
        ),
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    Server::serve(dir, &Db::Sqlite, 1, &data)
}

/// A log whose records and tree were rewritten in the database (and its
/// stored checkpoints removed) is not signed again: the tree must extend
/// what the witness folder keeps. The server used to sign the forged tree
/// beside the witnessed one, putting its key under two histories (found
/// by a black-box pass that re-chained a record and rebuilt the tree).
#[tokio::test]
async fn a_rewritten_log_is_not_signed_again() {
    let witness = tempfile::tempdir().unwrap();
    let s = witnessed(witness.path());
    let alice = s.key("alice", "user");
    let check = || json!({"action": "read", "resource": {"type": "Table", "id": "t"}});
    let (_, size) = reads_witnessed(&s, &alice, witness.path(), 4).await;
    // Another log's note whose file name shares this origin's prefix is
    // not this log's newest (it would not open, and stop the signing).
    let foreign = witness
        .path()
        .join("test.example_audit-eu-00000000000000000099.note");
    std::fs::write(
        &foreign,
        "test.example/audit-eu\n99\nAAAA\n\n\u{2014} other x\n",
    )
    .unwrap();
    s.post(&alice, "/v1/check", check()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    std::fs::remove_file(&foreign).unwrap();
    let mut ours: Vec<_> = std::fs::read_dir(witness.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    ours.sort();
    let newest = std::fs::read_to_string(ours.last().unwrap()).unwrap();
    let signed: u64 = newest.lines().nth(1).unwrap().parse().unwrap();
    assert!(signed > size, "still signing beside another log's file");
    let size = signed;
    // Another tree of the same records (every kept node changed, as a
    // rebuild over rewritten records would), and no stored checkpoint.
    let leaf = s.sql_text("SELECT hash FROM audit_nodes WHERE pos = 0");
    s.sql(&format!(
        "UPDATE audit_nodes SET hash = '{}'; DELETE FROM audit_notes;",
        "0".repeat(leaf.len())
    ));
    for _ in 0..4 {
        s.post(&alice, "/v1/check", check()).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, newest) = note_of_at_least(witness.path(), size).await;
    assert_eq!(newest, size, "nothing signed over the rewritten tree");
    assert_eq!(s.sql_i64("SELECT COUNT(*) FROM audit_notes"), 0);
}

/// Notes appended to one witness file are each checked: only the first
/// was, so a log rolled back past the later ones verified (found by a
/// black-box pass). A line after the signatures that is not a note fails.
#[tokio::test]
async fn every_note_of_an_appended_witness_file_is_checked() {
    let witness = tempfile::tempdir().unwrap();
    let mut s = witnessed(witness.path());
    let alice = s.key("alice", "user");
    let (_, first) = reads_witnessed(&s, &alice, witness.path(), 1).await;
    reads_witnessed(&s, &alice, witness.path(), 3).await;
    stop(&mut s);
    let mut files: Vec<_> = std::fs::read_dir(witness.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let all: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    for f in &files {
        std::fs::remove_file(f).unwrap();
    }
    let one = witness.path().join("all.note");
    std::fs::write(&one, &all).unwrap();
    let config = s.config().to_str().unwrap().to_owned();
    let (code, out) = airlock(&["audit", "verify", "--config", &config, "--json"]);
    assert_eq!(code, 0, "every note holds: {out}");
    assert!(
        out.contains("\"unwitnessed\":0"),
        "signed at shutdown: {out}"
    );
    // Rolled back to the first checkpoint, with what came after.
    s.sql(&format!(
        "DELETE FROM audit WHERE seq > {first}; DELETE FROM audit_notes WHERE size > {first}; \
         DELETE FROM checkpoints WHERE seq > {first};"
    ));
    let (code, out) = airlock(&["audit", "verify", "--config", &config]);
    assert_eq!(code, 1, "a later note in the file: {out}");
    let whole_first = airlock_server::witness::notes_in(&all).remove(0);
    std::fs::write(&one, format!("{whole_first}not a signature\n")).unwrap();
    let (code, out) = airlock(&["audit", "verify", "--config", &config]);
    assert_eq!(code, 1, "junk after a signature line: {out}");
}

/// An export taken while the server runs, before its first checkpoint,
/// signs the tree it wrote, so the outsider's check passes; checkpoints
/// the server signs after the records were read are left out.
#[tokio::test]
async fn an_export_signs_what_no_checkpoint_covers_yet() {
    let s = Server::start_opts(&Db::Sqlite, POLICIES, 3600);
    let alice = s.key("alice", "user");
    for _ in 0..3 {
        s.post(
            &alice,
            "/v1/check",
            json!({"action": "read", "resource": {"type": "Table", "id": "t"}}),
        )
        .await;
    }
    assert_eq!(s.sql_i64("SELECT COUNT(*) FROM audit_notes"), 0);
    let (code, out) = airlock(&["audit", "verify", "--config", s.config().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no signed checkpoint yet"), "{out}");
    let export = tempfile::tempdir().unwrap();
    let e = export.path().join("x");
    let (code, out) = export_to(&s, &e);
    assert_eq!(code, 0, "{out}");
    let records = std::fs::read_to_string(e.join("records.jsonl"))
        .unwrap()
        .lines()
        .count();
    let notes: Vec<_> = std::fs::read_dir(e.join("checkpoints")).unwrap().collect();
    assert_eq!(notes.len(), 1, "the export's own checkpoint");
    let note = std::fs::read_to_string(notes[0].as_ref().unwrap().path()).unwrap();
    assert_eq!(
        note.lines().nth(1),
        Some(records.to_string().as_str()),
        "{note}"
    );
    let (code, out) = airlock(&[
        "audit",
        "verify",
        "--dir",
        e.to_str().unwrap(),
        "--public-key",
        e.join("public-key").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    // The records no longer hashing to the tree the log kept as they were
    // appended (what a record rewritten and re-chained in the database
    // looks like; here the kept tree is changed instead): `verify --config`
    // fails, and the export signs nothing.
    let leaf = s.sql_text("SELECT hash FROM audit_nodes WHERE pos = 0");
    s.sql(&format!(
        "CREATE TABLE kept AS SELECT * FROM audit_nodes; UPDATE audit_nodes SET hash = '{}';",
        "0".repeat(leaf.len())
    ));
    let (code, out) = airlock(&["audit", "verify", "--config", s.config().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("the log's own tree"), "{out}");
    let regrown = export.path().join("regrown");
    let (code, out) = export_to(&s, &regrown);
    assert_eq!(code, 1, "{out}");
    s.sql("DELETE FROM audit_nodes; INSERT INTO audit_nodes SELECT * FROM kept; DROP TABLE kept;");
    // A record changed in the database: the export carries it, but signs
    // no checkpoint over it, and says so.
    s.sql("UPDATE audit SET actor = 'mallory' WHERE seq = 2");
    let changed = export.path().join("changed");
    let (code, out) = export_to(&s, &changed);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no checkpoint was signed"), "{out}");
    assert_eq!(
        std::fs::read_dir(changed.join("checkpoints"))
            .unwrap()
            .count(),
        0
    );
    // A public key that is a mistyped path says so.
    let (code, out) = airlock(&[
        "audit",
        "verify",
        "--dir",
        e.to_str().unwrap(),
        "--public-key",
        "/nonexistent/public-key",
    ]);
    assert_ne!(code, 0);
    assert!(out.contains("no such file"), "{out}");

    // The same export with CRLF line ends: each line's bytes (the tree's
    // leaves) are no longer the records', so it fails, where it passed.
    let crlf = export.path().join("crlf");
    std::fs::create_dir(&crlf).unwrap();
    for f in ["public-key", "checkpoints"] {
        let (from, to) = (e.join(f), crlf.join(f));
        if from.is_dir() {
            std::fs::create_dir(&to).unwrap();
            for n in std::fs::read_dir(&from).unwrap() {
                let n = n.unwrap();
                std::fs::copy(n.path(), to.join(n.file_name())).unwrap();
            }
        } else {
            std::fs::copy(from, to).unwrap();
        }
    }
    let text = std::fs::read_to_string(e.join("records.jsonl")).unwrap();
    std::fs::write(crlf.join("records.jsonl"), text.replace('\n', "\r\n")).unwrap();
    let verify = |dir: &std::path::Path| {
        airlock(&[
            "audit",
            "verify",
            "--dir",
            dir.to_str().unwrap(),
            "--public-key",
            dir.join("public-key").to_str().unwrap(),
        ])
    };
    let (code, out) = verify(&crlf);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("record 1"), "{out}");
    // A pipe in place of the records: refused at once, not waited on.
    std::fs::remove_file(crlf.join("records.jsonl")).unwrap();
    let made = Command::new("mkfifo")
        .arg(crlf.join("records.jsonl"))
        .status()
        .unwrap();
    assert!(made.success());
    let (code, out) = verify(&crlf);
    assert_ne!(code, 0);
    assert!(out.contains("not a regular file"), "{out}");
    // Text after a note in its file is read as another note, and fails,
    // where it was ignored.
    std::fs::remove_file(crlf.join("records.jsonl")).unwrap();
    std::fs::copy(e.join("records.jsonl"), crlf.join("records.jsonl")).unwrap();
    let (code, out) = verify(&crlf);
    assert_eq!(code, 0, "{out}");
    let note = std::fs::read_dir(crlf.join("checkpoints"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut text = std::fs::read_to_string(&note).unwrap();
    text.push_str("garbage\n");
    std::fs::write(&note, text).unwrap();
    let (code, out) = verify(&crlf);
    assert_eq!(code, 1, "{out}");
}

/// A witness folder that does not exist yet (no checkpoint has been
/// written to it) holds no note: `verify --config` passes, where it
/// failed on reading the folder.
#[tokio::test]
async fn a_witness_folder_not_made_yet_holds_no_note() {
    let s = Server::start_opts(&Db::Sqlite, POLICIES, 3600);
    let alice = s.key("alice", "user");
    s.post(
        &alice,
        "/v1/check",
        json!({"action": "read", "resource": {"type": "Table", "id": "t"}}),
    )
    .await;
    let absent = tempfile::tempdir().unwrap();
    let folder = absent.path().join("not-yet");
    let cfg = std::fs::read_to_string(s.config()).unwrap();
    assert!(cfg.contains("[audit]\n"), "{cfg}");
    let cfg = cfg.replacen(
        "[audit]\n",
        &format!(
            "[audit]\nwitness_dir = {:?}\n",
            folder.display().to_string()
        ),
        1,
    );
    let copy = s.config().with_file_name("witnessed.toml");
    std::fs::write(&copy, cfg).unwrap();
    let (code, out) = airlock(&["audit", "verify", "--config", copy.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("does not exist"), "said: {out}");
    assert!(!folder.exists());
    // A folder that exists with a note that cannot be read fails: a
    // dangling link emptied the folder, and a restored older log passed.
    std::fs::create_dir(&folder).unwrap();
    std::os::unix::fs::symlink("/nonexistent/x.note", folder.join("zzz.note")).unwrap();
    let (code, out) = airlock(&["audit", "verify", "--config", copy.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("zzz.note"), "{out}");
}

/// The checkpoint an export signs is witnessed like the server's: written
/// to every witness folder, where a later history of the same size would
/// collide with it, and checked by `verify --config` from then on.
#[tokio::test]
async fn an_exports_checkpoint_is_witnessed() {
    let witness = tempfile::tempdir().unwrap();
    let (dir, cfg) = sqlite_config();
    let data = dir.path().join("data");
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        "checkpoint_interval_seconds = 1\n",
        &format!(
            "checkpoint_interval_seconds = 3600\norigin = \"test.example/audit\"\nwitness_dir = {:?}\n",
            witness.path().display().to_string()
        ),
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    let s = Server::serve(dir, &Db::Sqlite, 1, &data);
    let alice = s.key("alice", "user");
    s.post(
        &alice,
        "/v1/check",
        json!({"action": "read", "resource": {"type": "Table", "id": "t"}}),
    )
    .await;
    let out_dir = tempfile::tempdir().unwrap();
    let (code, out) = export_to(&s, &out_dir.path().join("x"));
    assert_eq!(code, 0, "{out}");
    let records = std::fs::read_to_string(out_dir.path().join("x/records.jsonl"))
        .unwrap()
        .lines()
        .count();
    let notes = airlock_server::witness::read_all(witness.path()).unwrap();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(
        notes[0].1.lines().nth(1),
        Some(records.to_string().as_str())
    );
    // The same history exported again signs the same note.
    let (code, out) = export_to(&s, &out_dir.path().join("y"));
    assert_eq!(code, 0, "{out}");
    let (code, out) = airlock(&["audit", "verify", "--config", s.config().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 tree checkpoints"), "{out}");
}

/// `airlock audit export --config <s's config> --out DIR`.
fn export_to(s: &Server, dir: &std::path::Path) -> (i32, String) {
    airlock(&[
        "audit",
        "export",
        "--config",
        s.config().to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
    ])
}

fn airlock(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// `n` allowed reads by `key`, then the newest witnessed note, once it
/// covers them all.
async fn reads_witnessed(
    s: &Server,
    key: &str,
    witness: &std::path::Path,
    n: usize,
) -> (String, u64) {
    for _ in 0..n {
        s.post(
            key,
            "/v1/check",
            json!({"action": "read", "resource": {"type": "Table", "id": "t"}}),
        )
        .await;
    }
    let head = s.sql_i64("SELECT MAX(seq) FROM audit") as u64;
    note_of_at_least(witness, head).await
}

/// The newest note in `dir` of at least `size` records, waiting for it.
async fn note_of_at_least(dir: &std::path::Path, size: u64) -> (String, u64) {
    for _ in 0..100 {
        let mut notes: Vec<_> = std::fs::read_dir(dir)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        notes.sort();
        if let Some(last) = notes.last() {
            let text = std::fs::read_to_string(last).unwrap();
            let n: u64 = text.lines().nth(1).unwrap().parse().unwrap();
            if n >= size {
                return (text, n);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no checkpoint of {size} records in {}", dir.display());
}

fn stop(s: &mut Server) {
    Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(s.child.wait().unwrap().success());
}

/// A node killed without signing a checkpoint records the gap when it
/// starts again.
#[tokio::test]
async fn a_start_after_an_unclean_stop_records_the_gap() {
    let mut s = Server::start_opts(&Db::Sqlite, POLICIES, 3600);
    let alice = s.key("alice", "user");
    s.post(
        &alice,
        "/v1/check",
        json!({"action": "read", "resource": {"type": "Table", "id": "t"}}),
    )
    .await;
    s.restart(); // SIGKILL: nothing signed
    let gap = s.sql_i64("SELECT COUNT(*) FROM audit WHERE kind = 'resumed'");
    assert_eq!(
        gap,
        1,
        "{}",
        s.sql_text("SELECT group_concat(seq || ':' || kind || ':' || details, ' | ') FROM audit")
    );
    let (code, out) = s.verify();
    assert_eq!(code, 0, "{out}");
}

/// Audit you can prove: tree checkpoints as C2SP notes in the store and a
/// witness folder; inclusion and consistency proofs that check against
/// the note with the RFC 6962 verifier; an export verified with no
/// database and no config; and the tamper matrix, each case caught and
/// the intact log never flagged.
#[tokio::test]
async fn the_log_is_provable_offline_and_witnessed() {
    use airlock_core::merkle;
    let b64 = b64_hash;
    let witness = tempfile::tempdir().unwrap();
    let mut s = witnessed(witness.path());
    let alice = s.key("alice", "user");
    let admin = s.key("admin", "admin");
    let check = || json!({"action": "read", "resource": {"type": "Table", "id": "t"}});
    let (note, size) = reads_witnessed(&s, &alice, witness.path(), 6).await;
    let head = s.sql_i64("SELECT MAX(seq) FROM audit") as u64;
    assert!(
        note.starts_with(&format!("test.example/audit\n{size}\n")),
        "{note}"
    );
    assert!(note.contains("\n\n\u{2014} test.example/audit "), "{note}");
    let served = s
        .http
        .get(format!("{}/v1/audit/checkpoint", s.url))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(served.starts_with("test.example/audit\n"), "{served}");

    // Inclusion, checked against the witnessed note's root.
    let root = b64(note.lines().nth(2).unwrap());
    let (code, out) = airlock(&[
        "audit",
        "prove",
        "--config",
        s.config().to_str().unwrap(),
        "--seq",
        "2",
    ]);
    assert_eq!(code, 0, "{out}");
    let p: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let proof = proof_hashes(&p);
    let leaf = merkle::leaf_hash(p["record"].as_str().unwrap().as_bytes());
    let psize = p["size"].as_u64().unwrap();
    let (proot_note, _) = (p["checkpoint"].as_str().unwrap().to_owned(), ());
    let proot = b64(proot_note.lines().nth(2).unwrap());
    merkle::verify_inclusion(&leaf, 1, psize, &proof, &proot).unwrap();
    let (st, inc) = s
        .get(
            &admin,
            &format!("/v1/audit/proof/inclusion?seq=2&size={size}"),
        )
        .await;
    assert_eq!(st, 200, "{inc}");
    let proof = proof_hashes(&inc);
    merkle::verify_inclusion(
        &b64(inc["leaf_hash"].as_str().unwrap()),
        1,
        size,
        &proof,
        &root,
    )
    .unwrap();
    let (st, _) = s
        .get(
            &alice,
            &format!("/v1/audit/proof/inclusion?seq=2&size={size}"),
        )
        .await;
    assert_eq!(st, 403, "proofs are for auditors");

    // Keep an older copy of the database, then grow the log.
    stop(&mut s);
    let backup = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(s.dir.path().join("data")).unwrap() {
        let f = f.unwrap().path();
        if f.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("airlock.db")
        {
            std::fs::copy(&f, backup.path().join(f.file_name().unwrap())).unwrap();
        }
    }
    s.restart();
    for _ in 0..5 {
        s.post(&alice, "/v1/check", check()).await;
    }
    // The restart after a clean stop records no gap.
    assert_eq!(
        s.sql_i64("SELECT COUNT(*) FROM audit WHERE kind = 'resumed'"),
        0
    );
    let head2 = s.sql_i64("SELECT MAX(seq) FROM audit") as u64;
    let (_, size2) = note_of_at_least(witness.path(), head2).await;
    let (st, con) = s
        .get(
            &admin,
            &format!("/v1/audit/proof/consistency?from={size}&to={size2}"),
        )
        .await;
    assert_eq!(st, 200, "{con}");
    let proof = proof_hashes(&con);
    merkle::verify_consistency(
        size,
        size2,
        &root,
        &b64(con["to_root"].as_str().unwrap()),
        &proof,
    )
    .unwrap();
    stop(&mut s);
    let (code, out) = s.verify();
    assert_eq!(code, 0, "the intact log: {out}");

    // Export, and verify with nothing but the export.
    let export = tempfile::tempdir().unwrap();
    let e = export.path().join("x");
    let (code, out) = airlock(&[
        "audit",
        "export",
        "--config",
        s.config().to_str().unwrap(),
        "--out",
        e.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    let key = e.join("public-key");
    let verify_dir = |d: &std::path::Path| {
        airlock(&[
            "audit",
            "verify",
            "--dir",
            d.to_str().unwrap(),
            "--public-key",
            key.to_str().unwrap(),
        ])
    };
    let (code, out) = verify_dir(&e);
    assert_eq!(code, 0, "the intact export: {out}");
    // The same records as OCSF events.
    let (code, out) = airlock(&[
        "audit",
        "export",
        "--config",
        s.config().to_str().unwrap(),
        "--out",
        e.to_str().unwrap(),
        "--format",
        "ocsf",
    ]);
    assert_eq!(code, 0, "{out}");
    let events: Vec<serde_json::Value> = std::fs::read_to_string(e.join("records.ocsf.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        events.len() as u64,
        s.sql_i64("SELECT COUNT(*) FROM audit") as u64
    );
    assert!(events
        .iter()
        .any(|e| e["class_uid"] == 3003 && e["activity_name"] == "decision"));
    assert!(events
        .iter()
        .all(|e| e["metadata"]["uid"].as_str().is_some_and(|h| h.len() == 64)));
    let lines: Vec<String> = std::fs::read_to_string(e.join("records.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let tampered = |name: &str, edit: &dyn Fn(&mut Vec<String>)| {
        let d = export.path().join(name);
        std::fs::create_dir_all(d.join("checkpoints")).unwrap();
        for f in std::fs::read_dir(e.join("checkpoints")).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, d.join("checkpoints").join(f.file_name().unwrap())).unwrap();
        }
        let mut l = lines.clone();
        edit(&mut l);
        std::fs::write(d.join("records.jsonl"), l.join("\n") + "\n").unwrap();
        d
    };
    type Edit = Box<dyn Fn(&mut Vec<String>)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "change",
            Box::new(|l: &mut Vec<String>| {
                l[3] = l[3].replacen("\"actor\":\"", "\"actor\":\"x", 1)
            }),
        ),
        (
            "delete",
            Box::new(|l: &mut Vec<String>| {
                l.remove(4);
            }),
        ),
        ("reorder", Box::new(|l: &mut Vec<String>| l.swap(2, 3))),
        (
            "insert",
            Box::new(|l: &mut Vec<String>| {
                let x = l[1].clone();
                l.insert(2, x);
            }),
        ),
        (
            "truncate",
            Box::new(|l: &mut Vec<String>| {
                l.truncate(l.len() - 2);
            }),
        ),
    ];
    for (name, edit) in &cases {
        let d = tampered(name, edit.as_ref());
        let (code, out) = verify_dir(&d);
        assert_eq!(code, 1, "{name}: verified anyway: {out}");
    }
    // A byte that is not UTF-8 in the fifth line is named as record 5.
    let d = tampered("utf8", &|_| {});
    let mut bytes = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        bytes.extend_from_slice(l.as_bytes());
        if i == 4 {
            bytes.push(0xff);
        }
        bytes.push(b'\n');
    }
    std::fs::write(d.join("records.jsonl"), bytes).unwrap();
    let (code, out) = verify_dir(&d);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("record 5: not UTF-8"), "{out}");
    // Signatures taken away: nothing in the export is proven, however
    // well the chain links.
    let d = tampered("unsigned", &|_| {});
    std::fs::remove_dir_all(d.join("checkpoints")).unwrap();
    let (code, out) = verify_dir(&d);
    assert_eq!(code, 1, "no checkpoint: {out}");
    assert!(out.contains("no signed checkpoint"), "{out}");
    // The newest checkpoint taken away: the records after the one before
    // it are proven by nothing (anyone could have appended them).
    let d = tampered("tail", &|_| {});
    let mut notes: Vec<_> = std::fs::read_dir(d.join("checkpoints"))
        .unwrap()
        .map(|f| f.unwrap().path())
        .collect();
    notes.sort_by_key(|p| {
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        name.rsplit('-').next().unwrap().parse::<u64>().unwrap()
    });
    std::fs::remove_file(notes.last().unwrap()).unwrap();
    let (code, out) = verify_dir(&d);
    assert_eq!(code, 1, "an unsigned tail: {out}");
    assert!(out.contains("signed checkpoint"), "{out}");
    // A checkpoint of another log (another deployment's key) is refused.
    let other = tempfile::tempdir().unwrap();
    let mut o = witnessed(other.path());
    let ok = o.key("alice", "user");
    o.post(&ok, "/v1/check", check()).await;
    let (foreign, _) = note_of_at_least(other.path(), 1).await;
    stop(&mut o);
    let d = tampered("foreign", &|_| {});
    std::fs::write(d.join("checkpoints/zz-foreign.note"), foreign).unwrap();
    let (code, out) = verify_dir(&d);
    assert_eq!(code, 1, "another log's checkpoint: {out}");

    // The database cut short with its own checkpoints deleted too, or
    // restored from the older copy: the witness folder's notes catch both.
    s.sql(&format!(
        "DELETE FROM audit WHERE seq > {head}; DELETE FROM checkpoints WHERE seq > {head};
         DELETE FROM audit_notes WHERE size > {head}; DELETE FROM audit_nodes;"
    ));
    let (code, out) = s.verify();
    assert_eq!(code, 1, "cut short: {out}");
    assert!(out.contains(".note") && out.contains("cut off"), "{out}");
    for f in std::fs::read_dir(backup.path()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, s.dir.path().join("data").join(f.file_name().unwrap())).unwrap();
    }
    let (code, out) = s.verify();
    assert_eq!(code, 1, "restored from an older copy: {out}");
    assert!(
        out.contains(&format!("{size2:020}.note")) || out.contains("cut off"),
        "{out}"
    );
    // A record whose stored details do not read back is named by its seq.
    s.sql("UPDATE audit SET details = '{' WHERE seq = 2");
    let (code, out) = s.verify();
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("audit record 2"), "{out}");
}

/// A C2SP witness (`tlog-witness` `add-checkpoint`) for the test: it
/// checks each checkpoint's signature with the log's key and the
/// consistency proof from the size it last saw, answers 409 with its size
/// when the log's idea of it is wrong, and can be taken down.
struct TestWitness {
    url: String,
    state: std::sync::Arc<std::sync::Mutex<(u64, airlock_core::merkle::Hash, bool)>>,
}

impl TestWitness {
    async fn start(key: airlock_keys::PublicKey) -> TestWitness {
        use airlock_core::merkle;
        use base64::Engine as _;
        let state = std::sync::Arc::new(std::sync::Mutex::new((0u64, [0u8; 32], true)));
        let st = state.clone();
        let app = axum::Router::new().route(
            "/add-checkpoint",
            axum::routing::post(move |body: String| {
                let st = st.clone();
                async move {
                    let mut s = st.lock().unwrap();
                    if !s.2 {
                        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, String::new());
                    }
                    let (head, note) = body.split_once("\n\n").unwrap();
                    let mut lines = head.lines();
                    let old: u64 = lines
                        .next()
                        .unwrap()
                        .strip_prefix("old ")
                        .unwrap()
                        .parse()
                        .unwrap();
                    let proof: Vec<merkle::Hash> = lines
                        .map(|l| {
                            base64::engine::general_purpose::STANDARD
                                .decode(l)
                                .unwrap()
                                .try_into()
                                .unwrap()
                        })
                        .collect();
                    let Ok(new) = airlock_keys::open_note(note, &key) else {
                        return (axum::http::StatusCode::FORBIDDEN, "bad signature".into());
                    };
                    if old != s.0 {
                        return (axum::http::StatusCode::CONFLICT, s.0.to_string());
                    }
                    if old > 0
                        && merkle::verify_consistency(old, new.size, &s.1, &new.root, &proof)
                            .is_err()
                    {
                        return (
                            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                            "inconsistent".into(),
                        );
                    }
                    *s = (new.size, new.root, true);
                    (
                        axum::http::StatusCode::OK,
                        "\u{2014} witness.test AAAA\n".into(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        TestWitness { url, state }
    }

    fn size(&self) -> u64 {
        self.state.lock().unwrap().0
    }

    fn up(&self, up: bool) {
        self.state.lock().unwrap().2 = up;
    }

    async fn reaches(&self, size: u64) {
        for _ in 0..100 {
            if self.size() >= size {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the witness saw {} of {size} records", self.size());
    }
}

/// Checkpoints go to a C2SP witness with consistency proofs it checks; a
/// witness that is down holds nothing up (decisions go on), and gets the
/// newest checkpoint, proved consistent with what it saw, once it is back;
/// after a restart the log learns the witness's size from its 409.
#[tokio::test]
async fn checkpoints_reach_a_witness_that_was_down() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/main.cedar"), POLICIES).unwrap();
    // The keys exist before the witness is told which one to trust.
    let (keys, _) = airlock_keys::Keyring::load_or_create(&data.join("keys")).unwrap();
    let w = TestWitness::start(keys.public().audit).await;
    write_config(dir.path(), &Db::Sqlite, USERS, 1, &data);
    let cfg = dir.path().join("airlock.toml");
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        "checkpoint_interval_seconds = 1\n",
        &format!(
            "checkpoint_interval_seconds = 1\nwitness_url = \"{}\"\n",
            w.url
        ),
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    let mut s = Server::serve(dir, &Db::Sqlite, 1, &data);
    let alice = s.key("alice", "user");
    let check = || json!({"action": "read", "resource": {"type": "Table", "id": "t"}});
    s.post(&alice, "/v1/check", check()).await;
    w.reaches(s.sql_i64("SELECT MAX(seq) FROM audit") as u64)
        .await;

    w.up(false);
    for _ in 0..3 {
        let (st, _) = s.post(&alice, "/v1/check", check()).await;
        assert_eq!(st, 200, "a witness that is down holds nothing up");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = w.size();
    w.up(true);
    let head = s.sql_i64("SELECT MAX(seq) FROM audit") as u64;
    w.reaches(head).await;
    assert!(w.size() > seen);
    // The witness's cosignature is kept with the checkpoint.
    let mut served = String::new();
    for _ in 0..50 {
        served = s
            .http
            .get(format!("{}/v1/audit/checkpoint", s.url))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if served.contains("\u{2014} witness.test AAAA") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served.contains("\u{2014} witness.test AAAA"), "{served}");

    // A restart forgets what the witness saw; its 409 says.
    stop(&mut s);
    s.restart();
    s.post(&alice, "/v1/check", check()).await;
    w.reaches(s.sql_i64("SELECT MAX(seq) FROM audit") as u64)
        .await;
}

/// The audit key rotates: the rotation is on record, checkpoints signed
/// before it still verify (live and exported), and the new key alone
/// does not vouch for them.
#[tokio::test]
async fn the_audit_key_rotates_and_old_checkpoints_still_verify() {
    let mut s = Server::start(&Db::Sqlite);
    let alice = s.key("alice", "user");
    let check = || json!({"action": "read", "resource": {"type": "Table", "id": "t"}});
    s.post(&alice, "/v1/check", check()).await;
    stop(&mut s);
    let cfg = s.config().to_str().unwrap().to_owned();
    let (code, out) = airlock(&["keys", "rotate-audit", "--config", &cfg]);
    assert_eq!(code, 0, "{out}");
    s.restart();
    s.post(&alice, "/v1/check", check()).await;
    stop(&mut s);
    assert_eq!(
        s.sql_i64("SELECT COUNT(*) FROM audit WHERE kind = 'key_rotated'"),
        1
    );
    let (code, out) = s.verify();
    assert_eq!(code, 0, "{out}");
    assert!(
        !out.contains("ignoring"),
        "the rotated key is registered: {out}"
    );
    // A retired key file the registry does not hold is not trusted.
    use base64::Engine;
    let planted = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
    let paserk = format!(
        "k4.public.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(planted.as_bytes())
    );
    let keys = s.dir.path().join("data/keys");
    std::fs::write(
        keys.join("audit-retired-planted.pub"),
        format!("{paserk}\n"),
    )
    .unwrap();
    let (code, out) = s.verify();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ignoring the retired audit key"), "{out}");
    // Nor is it handed to outsiders with an export.
    let planted_export = tempfile::tempdir().unwrap();
    let (code, out) = airlock(&[
        "audit",
        "export",
        "--config",
        &cfg,
        "--out",
        planted_export.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    let public = std::fs::read_to_string(planted_export.path().join("public-key")).unwrap();
    assert!(!public.contains(&paserk), "{public}");
    std::fs::remove_file(keys.join("audit-retired-planted.pub")).unwrap();

    let export = tempfile::tempdir().unwrap();
    let e = export.path().join("x");
    let (code, out) = airlock(&[
        "audit",
        "export",
        "--config",
        &cfg,
        "--out",
        e.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    let keys = std::fs::read_to_string(e.join("public-key")).unwrap();
    assert_eq!(keys.lines().count(), 2, "{keys}");
    let key = e.join("public-key");
    let (code, out) = airlock(&[
        "audit",
        "verify",
        "--dir",
        e.to_str().unwrap(),
        "--public-key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    let newest = export.path().join("newest.key");
    std::fs::write(&newest, keys.lines().next().unwrap()).unwrap();
    let (code, out) = airlock(&[
        "audit",
        "verify",
        "--dir",
        e.to_str().unwrap(),
        "--public-key",
        newest.to_str().unwrap(),
    ]);
    assert_eq!(
        code, 1,
        "old checkpoints verified with the new key alone: {out}"
    );
}
