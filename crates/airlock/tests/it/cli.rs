//! The `airlock` command line: `run` waits and runs, Ctrl-C cancels,
//! `users set-password`, and the quickstart `serve` with no config.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::support::*;

on_both_stores!(
    airlock_run_waits_runs_and_exits_with_the_command_code,
    ctrl_c_while_waiting_cancels_the_request,
    set_password_stores_an_argon2_hash_from_stdin,
);

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

    // A command killed by a signal: the shell's 128 + N, and said.
    let child = run(&["sh", "-c", "kill -TERM $$"]);
    let id = first_pending(&s, &bob).await;
    s.review(&bob, &id, "approve").await;
    s.review(&carol, &id, "approve").await;
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + 15), "{stderr}");
    assert!(stderr.contains("killed by signal 15"), "{stderr}");
    let (_, r) = s.get(&alice, &format!("/v1/requests/{id}")).await;
    assert_eq!(r["grant"]["outcome"], "failure", "{r}");
}

/// Sends SIGTERM, waits for the exit, and reads the log.
fn terminate(mut child: std::process::Child, log: &Path) -> (std::process::ExitStatus, String) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    (status, std::fs::read_to_string(log).unwrap())
}

/// The server's log, sent to a file as a supervisor would, holds plain
/// text: no terminal colour codes around its levels and fields.
#[test]
fn a_log_written_to_a_file_has_no_colour_codes() {
    let (dir, cfg) = sqlite_config();
    let log = dir.path().join("airlock.log");
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    assert!(line.starts_with("Airlock listening on "), "{line}");
    // A graceful stop is logged (SIGTERM right after the first line: the
    // handler is in place before it is printed).
    let (status, text) = terminate(child, &log);
    assert!(status.success(), "{status}: {text:?}");
    assert!(text.contains(" INFO "), "{text:?}");
    assert!(text.contains("shutting down"), "{text:?}");
    assert!(!text.contains('\u{1b}'), "{text:?}");
    drop(stdout);
}

/// A supervisor that does not read the server's standard output (closed
/// before the server starts): the lines it prints are lost, and the
/// server serves all the same, then stops gracefully.
#[test]
fn a_server_whose_stdout_is_closed_serves() {
    let (dir, cfg) = sqlite_config();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&cfg, text).unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let log = dir.path().join("airlock.log");
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdout(writer)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut healthy = false;
    for _ in 0..100 {
        if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            c.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .unwrap();
            let mut answer = String::new();
            let _ = c.read_to_string(&mut answer);
            healthy = answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200");
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, text) = terminate(child, &log);
    assert!(healthy, "{status}: {text}");
    assert!(status.success(), "{status}: {text}");
}

/// SQLite syncs the database and its WAL with `fdatasync`, never
/// `fsync`, which would also flush the WAL's new mtime (a file system
/// journal commit on every SQLite commit). The bundled SQLite uses
/// `fsync` unless built with `HAVE_FDATASYNC` (`.cargo/config.toml`).
#[test]
fn sqlite_syncs_its_files_with_fdatasync() {
    let (dir, cfg) = sqlite_config();
    let trace = dir.path().join("trace");
    // `keys create` makes the database, migrates it and commits a key and
    // its audit record: every kind of sync a commit makes.
    let out = Command::new("strace")
        .args(["-f", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(&trace)
        .arg(BIN)
        .args(["keys", "create", "--user", "alice", "--config"])
        .arg(&cfg)
        .output()
        .expect("strace (./test installs it)");
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("(a user key for alice)"), "{said}");
    let text = std::fs::read_to_string(&trace).unwrap();
    let syncs: Vec<&str> = text.lines().filter(|l| l.contains("airlock.db")).collect();
    assert!(
        syncs
            .iter()
            .any(|l| l.contains("fdatasync(") && l.contains("airlock.db-wal")),
        "{text}"
    );
    let fsyncs: Vec<&&str> = syncs
        .iter()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|c| c.starts_with("fsync("))
        })
        .collect();
    assert!(fsyncs.is_empty(), "{fsyncs:?}");
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

/// `airlock keys list | head -1`: a reader that goes away ends the
/// command quietly (141, as a command killed by SIGPIPE), not with a
/// panic and its backtrace.
#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    let s = Server::start(&Db::Sqlite);
    for _ in 0..3 {
        s.key("alice", "user");
    }
    let mut child = Command::new(BIN)
        .args(["keys", "list", "--config"])
        .arg(s.config())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A key given twice is an error before anything is asked (the last one
/// silently winning would ask about another action than the one written),
/// and a fact Airlock computes is named as such.
#[test]
fn a_key_given_twice_is_refused_and_a_computed_fact_named() {
    for flag in ["--param", "--context", "--attr"] {
        let out = Command::new(BIN)
            .args(["check", "--url", "http://127.0.0.1:9", "--token", "k"])
            .args(["--action", "export", "--resource", "Table:t"])
            .args([flag, "a=1", flag, "a=2"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("given more than once"), "{flag}: {err}");
    }
    // A fact Airlock computes is said to be one, not silently dropped.
    let out = Command::new(BIN)
        .args(["check", "--url", "http://127.0.0.1:9", "--token", "k"])
        .args(["--action", "export", "--resource", "Table:t"])
        .args(["--context", "local_hour=3"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("local_hour is computed by Airlock"), "{err}");
}

/// A config error reads as the TOML parser wrote it: the caret snippet on
/// lines of its own (indented under the first), not `\n` escapes.
#[test]
fn a_config_error_shows_its_snippet_on_lines_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("airlock.toml");
    std::fs::write(&file, "[server]\nlisten = 5\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("\\n"), "{err}");
    assert!(err.contains("\n    2 | listen = 5"), "{err}");
    assert!(
        err.lines().next().unwrap().starts_with("airlock: "),
        "{err}"
    );
}

#[test]
fn completions_and_man_page_describe_every_command() {
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = run(&["completions", "bash"]);
    assert!(bash.contains("complete -F _airlock"), "{bash}");
    for sub in ["serve", "requests", "policy", "completions", "man"] {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    // The script is one bash accepts.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("airlock.bash");
    std::fs::write(&script, &bash).unwrap();
    let checked = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(checked.success(), "bash -n refused the completion script");
    assert!(run(&["completions", "zsh"]).starts_with("#compdef airlock"));
    assert!(run(&["completions", "fish"]).contains("complete -c airlock"));
    let man = run(&["man"]);
    assert!(man.contains(".TH airlock 1"), "{man}");
    assert!(man.contains("serve") && man.contains("breakglass"), "{man}");
    let refused = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "an unknown shell is refused");
}
