//! The store's behavioural suite: what any backend must do.

use std::num::NonZeroU32;

use airlock_core::decision::{DEFAULT_GRANT_TTL, DEFAULT_REQUEST_TTL};
use airlock_core::request::GrantRecord;
use airlock_core::{
    Action, AuditKind, ChainVerifier, GrantId, GroupName, NewAuditRecord, Request, RequestId,
    RequestStatus, Requirement, Threshold,
};
use serde_json::json;

use crate::testing::TestDb;
use crate::time::now;
use crate::{ConsumeOutcome, Store, StoreError, StoreEvent};

/// Where a test's store lives; dropped after the store.
enum Home {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Db(TestDb),
}

impl Home {
    fn sqlite() -> Self {
        Home::Dir(tempfile::tempdir().unwrap())
    }

    /// A connection of another process on the SQLite file, for changes
    /// made behind the store's back.
    fn sqlite_by_hand(&self) -> rusqlite::Connection {
        let Home::Dir(d) = self else {
            panic!("not a SQLite home")
        };
        rusqlite::Connection::open(d.path().join("db/airlock.db")).unwrap()
    }

    fn open(&self) -> Store {
        match self {
            Home::Dir(d) => Store::open("sqlite://db/airlock.db", d.path()).unwrap(),
            Home::Db(db) => Store::open(db.url(), std::path::Path::new(".")).unwrap(),
        }
    }
}

/// Runs each named test once per backend: `sqlite::NAME` and
/// `postgres::NAME` (skipped only when `AIRLOCK_TEST_POSTGRES=skip`).
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let home = super::Home::sqlite();
                    super::$name(&home).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = crate::testing::TestDb::create() else { return };
                    let home = super::Home::Db(db);
                    super::$name(&home).await;
                }
            )*
        }
    };
}

both_backends!(
    request_round_trips,
    one_pending_per_principal_and_action,
    terminal_states_do_not_move,
    hundred_racing_consumers_one_wins,
    consume_says_why_not,
    failed_job_rolls_back_alone,
    appends_without_savepoints_commit_whole_or_not_at_all,
    refuses_newer_schema,
    password_hashes_are_replaced,
    commits_are_announced_rollbacks_are_not,
    two_nodes_make_one_chain,
    two_nodes_hear_each_other,
    two_nodes_race_one_grant,
    sessions_are_stored_hashed_and_end,
    audit_search_filters,
    synced_groups_round_trip_and_reach_every_node,
    outbox_claims_lease_retry_and_give_up,
    a_busy_chat_platform_holds_all_its_targets,
    an_approval_is_strengthened_once,
    listings_filter_by_visibility_page_and_survive_the_backfill,
    api_keys_are_listed_revoked_once_and_expire,
    a_revocation_is_seen_by_the_next_read_everywhere,
    key_use_is_recorded_and_never_moves_back,
    raising_a_decided_request_changes_nothing,
    the_merkle_tree_grows_with_the_log_and_catches_up,
);

fn request(principal: &str) -> Request {
    let action: Action = serde_json::from_value(json!({
        "principal": principal, "action": "export",
        "resource": {"type": "Table", "id": "t"}, "params": {"sql": "select 1"}
    }))
    .unwrap();
    let t = now();
    Request {
        id: RequestId::new(),
        status: RequestStatus::Pending,
        fingerprint: action.fingerprint(),
        action,
        requirement: Requirement {
            thresholds: vec![Threshold {
                policy_id: "p".into(),
                groups: vec![GroupName::parse("security").unwrap()],
                quorum: NonZeroU32::MIN,
            }],
            request_ttl: DEFAULT_REQUEST_TTL,
            grant_ttl: DEFAULT_GRANT_TTL,
            max_uses: NonZeroU32::MIN,
            reason_required: false,
            step_up: None,
            breakglass: false,
        },
        policies: vec!["p".into()],
        reason: Some("because".into()),
        reviews: vec![],
        created_at: t,
        expires_at: t + DEFAULT_REQUEST_TTL.as_chrono(),
        grant: None,
    }
}

fn audit(kind: AuditKind) -> NewAuditRecord {
    NewAuditRecord {
        kind,
        actor: "alice".into(),
        subject: String::new(),
        details: json!({"x": 1}).into(),
    }
}

async fn approved_grant(store: &Store, max_uses: u32) -> GrantId {
    let req = request("alice");
    let gid = GrantId::new();
    let grant = GrantRecord {
        grant_id: gid,
        expires_at: now() + chrono::Duration::minutes(10),
        max_uses,
        uses: 0,
        revoked: false,
        outcome: None,
    };
    store
        .write(move |tx| {
            tx.insert_request(&req)?;
            assert!(tx.set_status(
                &req.id,
                RequestStatus::Pending,
                RequestStatus::Approved,
                now()
            )?);
            tx.insert_grant(&req.id, &req.fingerprint, &grant)?;
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    gid
}

async fn request_round_trips(home: &Home) {
    let store = home.open();
    let req = request("alice");
    let id = req.id;
    let copy = req.clone();
    store
        .write(move |tx| tx.insert_request(&copy))
        .await
        .unwrap();
    let back = store
        .read(move |r| r.get_request(&id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, req);
    let fp = req.fingerprint;
    let p = req.action.principal.clone();
    assert_eq!(
        store.read(move |r| r.find_pending(&p, &fp)).await.unwrap(),
        Some(id)
    );
}

async fn one_pending_per_principal_and_action(home: &Home) {
    let store = home.open();
    let a = request("alice");
    let mut b = request("alice");
    b.id = RequestId::new();
    store.write(move |tx| tx.insert_request(&a)).await.unwrap();
    assert!(store.write(move |tx| tx.insert_request(&b)).await.is_err());
}

async fn terminal_states_do_not_move(home: &Home) {
    let store = home.open();
    let req = request("alice");
    let id = req.id;
    store
        .write(move |tx| tx.insert_request(&req))
        .await
        .unwrap();
    let moved = store
        .write(move |tx| {
            let a = tx.set_status(&id, RequestStatus::Pending, RequestStatus::Denied, now())?;
            let b = tx.set_status(&id, RequestStatus::Pending, RequestStatus::Approved, now())?;
            let c = tx.set_status(&id, RequestStatus::Denied, RequestStatus::Approved, now())?;
            Ok::<_, StoreError>((a, b, c))
        })
        .await
        .unwrap();
    assert_eq!(moved, (true, false, false));
}

async fn hundred_racing_consumers_one_wins(home: &Home) {
    let store = home.open();
    let gid = approved_grant(&store, 1).await;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .write(move |tx| tx.consume_grant(&gid, now(), false))
                .await
                .unwrap()
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            ConsumeOutcome::Consumed { uses_left } => {
                assert_eq!(uses_left, 0);
                won += 1
            }
            ConsumeOutcome::Spent => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(won, 1);
}

async fn consume_says_why_not(home: &Home) {
    let store = home.open();
    let gid = approved_grant(&store, 2).await;
    let r = store
        .write(move |tx| tx.consume_grant(&gid, now(), false))
        .await
        .unwrap();
    assert_eq!(r, ConsumeOutcome::Consumed { uses_left: 1 });
    let late = now() + chrono::Duration::minutes(11);
    let r = store
        .write(move |tx| tx.consume_grant(&gid, late, false))
        .await
        .unwrap();
    assert_eq!(r, ConsumeOutcome::Expired);
    store.write(move |tx| tx.revoke_grant(&gid)).await.unwrap();
    let r = store
        .write(move |tx| tx.consume_grant(&gid, now(), false))
        .await
        .unwrap();
    assert_eq!(r, ConsumeOutcome::Revoked);
    let other = GrantId::new();
    let r = store
        .write(move |tx| tx.consume_grant(&other, now(), false))
        .await
        .unwrap();
    assert_eq!(r, ConsumeOutcome::Unknown);
}

async fn failed_job_rolls_back_alone(home: &Home) {
    let store = home.open();
    let ok = store.clone();
    let a = tokio::spawn(async move {
        ok.write(|tx| tx.append_audit(audit(AuditKind::Decision), now()))
            .await
    });
    let b = store
        .write(|tx| {
            tx.append_audit(audit(AuditKind::Decision), now())?;
            Err::<(), _>(StoreError::Db("caller failed".into()))
        })
        .await;
    assert!(b.is_err());
    a.await.unwrap().unwrap();
    let records = store.read(|r| r.audit_after(0, 100)).await.unwrap();
    assert_eq!(records.len(), 1);
}

/// Runs `sql` on the store's database from outside the store.
fn run_sql(home: &Home, sqlite: &str, postgres: &str) {
    match home {
        Home::Dir(d) => rusqlite::Connection::open(d.path().join("db/airlock.db"))
            .unwrap()
            .execute_batch(sqlite)
            .unwrap(),
        Home::Db(db) => db.execute(postgres),
    }
}

/// Audit appends run without a savepoint of their own ([`Store::append_audit`]),
/// beside jobs that have one. When an append fails half-way (its record
/// stored, its tree leaf refused), nothing of its batch is committed: every
/// append that was answered `Ok` is stored as answered, none that failed
/// is, and the chain and the tree stay whole.
async fn appends_without_savepoints_commit_whole_or_not_at_all(home: &Home) {
    let store = home.open();
    // The sixth record's leaf cannot be stored: its row is inserted first.
    run_sql(
        home,
        "CREATE TRIGGER no_leaf_5 BEFORE INSERT ON audit_nodes
         WHEN NEW.pos = 10 BEGIN SELECT RAISE(ABORT, 'no leaf 5'); END;",
        "CREATE FUNCTION no_leaf_5() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.level = 0 AND NEW.idx = 5 THEN RAISE EXCEPTION 'no leaf 5'; END IF;
         RETURN NEW; END $$;
         CREATE TRIGGER no_leaf_5 BEFORE INSERT ON audit_nodes
         FOR EACH ROW EXECUTE FUNCTION no_leaf_5();",
    );
    let round = |n: usize| {
        let mut tasks = Vec::new();
        for i in 0..n {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                if i % 4 == 3 {
                    // A job with a savepoint, failing alone after its append.
                    let r = store
                        .write(|tx| {
                            tx.append_audit(audit(AuditKind::Decision), now())?;
                            Err::<(), _>(StoreError::Db("caller failed".into()))
                        })
                        .await;
                    assert!(r.is_err());
                    None
                } else {
                    store
                        .append_audit(audit(AuditKind::Decision), now())
                        .await
                        .ok()
                }
            }));
        }
        tasks
    };
    let mut answered = Vec::new();
    for t in round(40) {
        answered.extend(t.await.unwrap());
    }
    assert!(answered.len() < 30, "appends past the fifth must fail");
    run_sql(
        home,
        "DROP TRIGGER no_leaf_5;",
        "DROP TRIGGER no_leaf_5 ON audit_nodes; DROP FUNCTION no_leaf_5();",
    );
    for t in round(12) {
        answered.extend(t.await.unwrap());
    }

    let stored = assert_stored_is_answered(&store, answered).await;
    assert!(
        stored.len() > 5,
        "the appends after the trigger went through"
    );
}

/// The log holds exactly the appends that were answered Ok, in the order
/// of their sequence, chained, and the tree is the one they make; the
/// stored records.
async fn assert_stored_is_answered(
    store: &Store,
    mut answered: Vec<airlock_core::AuditRecord>,
) -> Vec<airlock_core::AuditRecord> {
    let stored = store.read(|r| r.audit_after(0, 10_000)).await.unwrap();
    let mut v = ChainVerifier::default();
    for r in &stored {
        v.push(r).unwrap();
    }
    answered.sort_by_key(|r| r.seq);
    assert_eq!(
        stored.iter().map(|r| (r.seq, r.hash)).collect::<Vec<_>>(),
        answered.iter().map(|r| (r.seq, r.hash)).collect::<Vec<_>>(),
        "what is stored is exactly what was answered Ok"
    );
    assert_tree_is_the_logs(store, &stored).await;
    stored
}

/// Every perfect subtree the store holds is the one the log's records make,
/// and it holds all of them.
async fn assert_tree_is_the_logs(store: &Store, records: &[airlock_core::AuditRecord]) {
    use airlock_core::merkle::{MemoryTree, Nodes};
    let mut whole = MemoryTree::new();
    for r in records {
        whole.push(r.leaf_hash());
    }
    let size = store.read(|r| r.audit_tree_size()).await.unwrap();
    assert_eq!(size, records.len() as u64, "tree size");
    let mut level = 0u32;
    while (size >> level) > 0 {
        for index in 0..(size >> level) {
            let stored = store
                .read(move |t| t.audit_tree_node(level, index))
                .await
                .unwrap();
            assert_eq!(
                stored,
                whole.node(level, index).unwrap(),
                "node {level}/{index}"
            );
        }
        level += 1;
    }
}

async fn refuses_newer_schema(home: &Home) {
    drop(home.open());
    match home {
        Home::Dir(d) => {
            let conn = rusqlite::Connection::open(d.path().join("db/airlock.db")).unwrap();
            conn.execute("UPDATE schema_version SET version = 999", [])
                .unwrap();
        }
        Home::Db(db) => db.execute("UPDATE airlock_schema_version SET version = 999"),
    }
    let err = match home {
        Home::Dir(d) => Store::open("sqlite://db/airlock.db", d.path()).unwrap_err(),
        Home::Db(db) => Store::open(db.url(), std::path::Path::new(".")).unwrap_err(),
    };
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 999, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade Airlock"), "{err}");
}

async fn password_hashes_are_replaced(home: &Home) {
    let store = home.open();
    let u = airlock_core::UserName::parse("alice").unwrap();
    let (a, b) = (u.clone(), u.clone());
    store
        .write(move |tx| tx.set_password_hash(&a, "$argon2id$one", now()))
        .await
        .unwrap();
    // A new password ends the user's sessions, and no one else's.
    let t = now();
    let session = |hash: &str, user: &str| crate::SessionRecord {
        id_hash: hash.into(),
        user: airlock_core::UserName::parse(user).unwrap(),
        csrf: "token".into(),
        method: "password".into(),
        created_at: t,
        expires_at: t + chrono::Duration::hours(8),
    };
    let (mine, theirs) = (session("alices", "alice"), session("bobs", "bob"));
    store
        .write(move |tx| {
            tx.insert_session(&mine, t)?;
            tx.insert_session(&theirs, t)
        })
        .await
        .unwrap();
    store
        .write(move |tx| tx.set_password_hash(&b, "$argon2id$two", now()))
        .await
        .unwrap();
    let got = store.read(move |r| r.password_hash(&u)).await.unwrap();
    assert_eq!(got.as_deref(), Some("$argon2id$two"));
    let left = store
        .read(|r| Ok::<_, StoreError>((r.session("alices")?, r.session("bobs")?)))
        .await
        .unwrap();
    assert!(left.0.is_none(), "alice's session outlived her password");
    assert!(
        left.1.is_some(),
        "bob's session ended with alice's password"
    );
}

async fn next_change(
    rx: &mut tokio::sync::broadcast::Receiver<StoreEvent>,
) -> Option<(RequestId, bool)> {
    let deadline = std::time::Duration::from_secs(5);
    loop {
        match tokio::time::timeout(deadline, rx.recv()).await {
            Ok(Ok(StoreEvent::Changed { id, remote })) => return Some((id, remote)),
            Ok(Ok(StoreEvent::Resync)) => continue,
            _ => return None,
        }
    }
}

async fn commits_are_announced_rollbacks_are_not(home: &Home) {
    let store = home.open();
    let mut rx = store.subscribe();
    let (a, b) = (request("alice"), request("bob"));
    let (ida, idb) = (a.id, b.id);
    store
        .write(move |tx| {
            tx.insert_request(&a)?;
            tx.changed(ida);
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    let failed = store
        .write(move |tx| {
            tx.insert_request(&b)?;
            tx.changed(idb);
            Err::<(), _>(StoreError::Db("caller failed".into()))
        })
        .await;
    assert!(failed.is_err());
    store
        .write(move |tx| {
            tx.changed(ida);
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    assert_eq!(next_change(&mut rx).await, Some((ida, false)));
    // The rolled-back job's announcement never comes; the next is `a` again.
    assert_eq!(next_change(&mut rx).await, Some((ida, false)));
}

/// A second node on the same store; on SQLite there is only one node, so
/// these tests check the one-node behaviour.
fn second_node(home: &Home, first: &Store) -> Store {
    match home {
        Home::Dir(_) => first.clone(),
        Home::Db(_) => home.open(),
    }
}

/// Concurrent appends (from two nodes, on PostgreSQL) make one valid chain.
async fn two_nodes_make_one_chain(home: &Home) {
    let a = home.open();
    let b = second_node(home, &a);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            store
                .write(|tx| tx.append_audit(audit(AuditKind::Decision), now()))
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let records = a.read(|r| r.audit_after(0, 1000)).await.unwrap();
    assert_eq!(records.len(), 200);
    let mut v = ChainVerifier::default();
    for r in &records {
        v.push(r).unwrap();
    }
    // Each node's writer keeps the frontier of its own last batch, to be
    // taken only when no other node appended meanwhile.
    assert_tree_is_the_logs(&a, &records).await;
}

async fn two_nodes_hear_each_other(home: &Home) {
    let a = home.open();
    let b = second_node(home, &a);
    let mut on_b = b.subscribe();
    // Wait until b's listener is up (it says Resync when it is).
    if matches!(home, Home::Db(_)) {
        let up = tokio::time::timeout(std::time::Duration::from_secs(5), on_b.recv()).await;
        assert!(matches!(up, Ok(Ok(StoreEvent::Resync))), "{up:?}");
    }
    let req = request("alice");
    let id = req.id;
    a.write(move |tx| {
        tx.insert_request(&req)?;
        tx.changed(id);
        Ok::<_, StoreError>(())
    })
    .await
    .unwrap();
    let remote = matches!(home, Home::Db(_));
    assert_eq!(next_change(&mut on_b).await, Some((id, remote)));
}

async fn two_nodes_race_one_grant(home: &Home) {
    let a = home.open();
    let b = second_node(home, &a);
    let gid = approved_grant(&a, 1).await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            store
                .write(move |tx| tx.consume_grant(&gid, now(), false))
                .await
                .unwrap()
        }));
    }
    let mut won = 0;
    for t in tasks {
        if let ConsumeOutcome::Consumed { .. } = t.await.unwrap() {
            won += 1;
        }
    }
    assert_eq!(won, 1);
}

async fn sessions_are_stored_hashed_and_end(home: &Home) {
    let store = home.open();
    let t = now();
    let session = |hash: &str, expires: chrono::DateTime<chrono::Utc>| crate::SessionRecord {
        id_hash: hash.into(),
        user: airlock_core::UserName::parse("bob").unwrap(),
        csrf: "token".into(),
        method: "password".into(),
        created_at: t,
        expires_at: expires,
    };
    let (old, live) = (
        session("old", t - chrono::Duration::minutes(1)),
        session("live", t + chrono::Duration::hours(8)),
    );
    let expect = live.clone();
    store
        .write(move |tx| tx.insert_session(&old, t - chrono::Duration::hours(1)))
        .await
        .unwrap();
    store
        .write(move |tx| tx.insert_session(&live, t))
        .await
        .unwrap();
    let got = store.read(|r| r.session("live")).await.unwrap();
    assert_eq!(got, Some(expect));
    // Making a session sweeps the expired ones.
    assert_eq!(store.read(|r| r.session("old")).await.unwrap(), None);
    assert!(store.write(|tx| tx.delete_session("live")).await.unwrap());
    assert_eq!(store.read(|r| r.session("live")).await.unwrap(), None);
}

async fn audit_search_filters(home: &Home) {
    let store = home.open();
    let t = now();
    store
        .write(move |tx| {
            for (kind, actor, subject, details) in [
                (AuditKind::Decision, "alice", "", json!({"x": 1})),
                (
                    AuditKind::Review,
                    "bob",
                    "req_1",
                    json!({"verdict": "approve"}),
                ),
                (
                    AuditKind::GrantIssued,
                    "system",
                    "grt_1",
                    json!({"request": "req_1"}),
                ),
                (AuditKind::Review, "carol", "req_2", json!({})),
                // A caller's own text naming a request, deep in what it
                // sent: never filed under that request.
                (
                    AuditKind::Decision,
                    "mallory",
                    "",
                    json!({"params": {"request": "req_1"}, "context": {"x": "\"request\":\"req_1\""}}),
                ),
                (
                    AuditKind::Decision,
                    "mallory",
                    "",
                    json!({"params": {"request": "req_%"}}),
                ),
            ] {
                tx.append_audit(
                    NewAuditRecord {
                        kind,
                        actor: actor.into(),
                        subject: subject.into(),
                        details: details.into(),
                    },
                    t,
                )?;
            }
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    let find = |f: crate::AuditFilter| {
        let store = store.clone();
        async move {
            store
                .read(move |r| r.audit_search(&f, 100))
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>()
        }
    };
    let f = |actor: Option<&str>, kind: Option<&str>, request: Option<&str>| crate::AuditFilter {
        actor: actor.map(Into::into),
        kind: kind.map(Into::into),
        request: request.map(Into::into),
        ..Default::default()
    };
    assert_eq!(
        find(f(None, None, None)).await,
        vec![6, 5, 4, 3, 2, 1],
        "newest first"
    );
    assert_eq!(find(f(None, Some("review"), None)).await, vec![4, 2]);
    assert!(
        find(f(None, None, Some("req_%"))).await.is_empty(),
        "no wildcards"
    );
    assert_eq!(find(f(Some("bob"), Some("review"), None)).await, vec![2]);
    assert_eq!(
        find(f(None, None, Some("req_1"))).await,
        vec![3, 2],
        "its own and those naming it"
    );
    let later = crate::AuditFilter {
        since: Some(crate::time::fmt(t + chrono::Duration::seconds(1))),
        ..Default::default()
    };
    assert!(find(later).await.is_empty());
}

async fn synced_groups_round_trip_and_reach_every_node(home: &Home) {
    let a = home.open();
    let b = second_node(home, &a);
    let mut on_b = b.subscribe();
    if matches!(home, Home::Db(_)) {
        let up = tokio::time::timeout(std::time::Duration::from_secs(5), on_b.recv()).await;
        assert!(matches!(up, Ok(Ok(StoreEvent::Resync))), "{up:?}");
    }
    let dave = airlock_core::UserName::parse("dave").unwrap();
    let groups = vec![GroupName::parse("security").unwrap()];
    let (u, g) = (dave.clone(), groups.clone());
    a.write(move |tx| {
        tx.set_synced_groups(&u, &g, now())?;
        tx.directory_changed();
        Ok::<_, StoreError>(())
    })
    .await
    .unwrap();
    let heard = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            if let Ok(StoreEvent::DirectoryChanged) = on_b.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(heard.is_ok(), "the other node hears that groups changed");
    let synced = b.read(|r| r.synced_groups()).await.unwrap();
    assert_eq!(synced, vec![(dave, groups)]);
}

/// A pending outbox message to `target`, due at `t`.
fn outbox_message(
    id: &str,
    target: &str,
    t: chrono::DateTime<chrono::Utc>,
) -> crate::OutboxMessage {
    crate::OutboxMessage {
        id: id.into(),
        target: target.into(),
        event: "request.created".into(),
        payload: "{}".into(),
        status: "pending".into(),
        attempts: 0,
        last_error: None,
        next_attempt_at: t,
        created_at: t,
        delivered_at: None,
    }
}

/// Every Slack target is one receiver (`slack`), every Discord one
/// `discord`: a message's update is not claimed while its post is out.
async fn a_busy_chat_platform_holds_all_its_targets(home: &Home) {
    let a = home.open();
    let t = now();
    let (m1, m2) = (
        outbox_message("msg_1", "slack:update", t),
        outbox_message("msg_2", "discord:dm:42", t),
    );
    a.write(move |tx| {
        tx.enqueue(&m1)?;
        tx.enqueue(&m2)
    })
    .await
    .unwrap();
    let lease = t + chrono::Duration::seconds(30);
    let busy = vec![crate::receiver_of("slack:post:C1").to_owned()];
    let claimed = a
        .write(move |tx| tx.claim_outbox(t, lease, 10, "claim-a", &busy))
        .await
        .unwrap();
    let ids: Vec<&str> = claimed.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["msg_2"], "Slack busy, Discord not");
}

/// An approval raised past by a step-up is replaced by one that passed
/// it, once: the update is conditional on the step-up it replaces.
async fn an_approval_is_strengthened_once(home: &Home) {
    let s = home.open();
    let req = request("alice");
    let id = req.id;
    s.write(move |tx| tx.insert_request(&req)).await.unwrap();
    let bob = airlock_core::UserName::parse("bob").unwrap();
    let review = |step_up: Option<&str>| airlock_core::Review {
        reviewer: bob.clone(),
        verdict: airlock_core::Verdict::Approve,
        reason: None,
        channel: "api".into(),
        at: now(),
        step_up: step_up.map(str::to_owned),
    };
    let (plain, coded) = (review(None), review(Some("totp")));
    let (first, second) = s
        .write(move |tx| {
            assert!(tx.insert_review(&id, &plain)?);
            Ok::<_, StoreError>((
                tx.strengthen_review(&id, None, &coded)?,
                tx.strengthen_review(&id, None, &coded)?,
            ))
        })
        .await
        .unwrap();
    assert_eq!((first, second), (true, false));
    let got = s.read(move |r| r.get_request(&id)).await.unwrap().unwrap();
    assert_eq!(got.reviews.len(), 1);
    assert_eq!(got.reviews[0].step_up.as_deref(), Some("totp"));
    // A deny may take the place of an approval that no longer stands.
    let mut deny = got.reviews[0].clone();
    deny.verdict = airlock_core::Verdict::Deny;
    deny.step_up = None;
    let replaced = s
        .write(move |tx| tx.strengthen_review(&id, Some("totp"), &deny))
        .await
        .unwrap();
    assert!(replaced);
    let got = s.read(move |r| r.get_request(&id)).await.unwrap().unwrap();
    assert_eq!(got.reviews[0].verdict, airlock_core::Verdict::Deny);
}

async fn outbox_claims_lease_retry_and_give_up(home: &Home) {
    let a = home.open();
    let b = second_node(home, &a);
    let t = now();
    let hook = "http://127.0.0.1:9/hook";
    let (m1, m2) = (
        outbox_message("msg_1", hook, t),
        outbox_message("msg_2", hook, t),
    );
    a.write(move |tx| {
        tx.enqueue(&m1)?;
        tx.enqueue(&m2)
    })
    .await
    .unwrap();
    let lease = t + chrono::Duration::seconds(30);
    // A target this node is sending to now is left for later.
    let busy = a
        .write(move |tx| {
            tx.claim_outbox(
                t,
                lease,
                10,
                "claim-0",
                &["http://127.0.0.1:9/hook".to_owned()],
            )
        })
        .await
        .unwrap();
    assert!(busy.is_empty(), "{busy:?}");
    let claimed = a
        .write(move |tx| tx.claim_outbox(t, lease, 10, "claim-a", &[]))
        .await
        .unwrap();
    assert_eq!(
        claimed.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["msg_1", "msg_2"]
    );
    // Leased: another node finds nothing due.
    let again = b
        .write(move |tx| tx.claim_outbox(t, lease, 10, "claim-b", &[]))
        .await
        .unwrap();
    assert!(again.is_empty());
    let kept = a
        .write(move |tx| {
            // Another attempt's claim records nothing.
            assert!(!tx.outbox_delivered("msg_1", t, "claim-b")?);
            Ok::<_, StoreError>((
                tx.outbox_delivered("msg_1", t, "claim-a")?,
                tx.outbox_attempt_failed("msg_2", "503 from receiver", t, false, "claim-a")?,
            ))
        })
        .await
        .unwrap();
    assert_eq!(kept, (true, true));
    let retried = b
        .write(move |tx| tx.claim_outbox(t, lease, 10, "claim-c", &[]))
        .await
        .unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!((retried[0].id.as_str(), retried[0].attempts), ("msg_2", 1));
    b.write(move |tx| tx.outbox_attempt_failed("msg_2", "still down", t, true, "claim-c"))
        .await
        .unwrap();
    let failed = a.read(|r| r.outbox_list(Some("failed"), 10)).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].last_error.as_deref(), Some("still down"));
    assert!(a
        .write(move |tx| tx.outbox_retry("msg_2", t))
        .await
        .unwrap());
    assert!(
        !a.write(move |tx| tx.outbox_retry("msg_1", t))
            .await
            .unwrap(),
        "delivered stays delivered"
    );
    let delivered = a
        .read(|r| r.outbox_list(Some("delivered"), 10))
        .await
        .unwrap();
    assert_eq!(delivered[0].id, "msg_1");
    assert!(delivered[0].delivered_at.is_some());
}

/// A pending request of `principal` on table `table` that members of
/// `group` may review.
fn request_for(principal: &str, table: &str, group: &str) -> Request {
    let mut req = request(principal);
    req.action.resource.id = serde_json::from_value(json!(table)).unwrap();
    req.fingerprint = req.action.fingerprint();
    req.requirement.thresholds[0].groups = vec![GroupName::parse(group).unwrap()];
    req
}

async fn listings_filter_by_visibility_page_and_survive_the_backfill(home: &Home) {
    use crate::{Cursor, StatusFilter, Viewer};
    let store = home.open();
    let alices = request_for("alice", "orders", "security");
    let a = alices.clone();
    store.write(move |tx| tx.insert_request(&a)).await.unwrap();
    for i in 0..5 {
        let r = request_for("mallory", &format!("t{i}"), "ops");
        store.write(move |tx| tx.insert_request(&r)).await.unwrap();
    }
    let viewer = |user: &str, groups: &[&str], own: bool| Viewer {
        user: airlock_core::UserName::parse(user).unwrap(),
        groups: groups
            .iter()
            .map(|g| GroupName::parse(g).unwrap())
            .collect(),
        own,
    };
    let list = |store: Store, v: Option<Viewer>, limit: u32, after: Option<Cursor>| async move {
        let filter = StatusFilter {
            statuses: vec![RequestStatus::Pending],
            visible_to: v,
            after,
            ..Default::default()
        };
        store
            .read(move |r| r.list_requests(&filter, limit))
            .await
            .unwrap()
    };
    // The limit applies after visibility: one request among newer ones bob
    // may not see still fills his first page.
    let bobs = list(
        store.clone(),
        Some(viewer("bob", &["security"], true)),
        1,
        None,
    )
    .await;
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0].id, alices.id);
    let mine = list(store.clone(), Some(viewer("mallory", &[], true)), 100, None).await;
    assert_eq!(mine.len(), 5);
    let inbox = list(
        store.clone(),
        Some(viewer("mallory", &["ops"], false)),
        100,
        None,
    )
    .await;
    assert!(inbox.is_empty(), "own requests are not in one's inbox");
    // Pages of two, newest first, each request once.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = list(store.clone(), None, 2, after).await;
        let Some(last) = page.last() else { break };
        after = Some(Cursor::parse(&Cursor::after(last).to_string()).unwrap());
        seen.extend(page.iter().map(|r| (r.created_at, r.id)));
    }
    assert_eq!(seen.len(), 6);
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first, no repeats"
    );
    assert_eq!(seen.last().unwrap().1, alices.id);
    drop(store);

    // A database from before the side table (and the migrations after
    // it): the migration fills it.
    match home {
        Home::Dir(d) => {
            let conn = rusqlite::Connection::open(d.path().join("db/airlock.db")).unwrap();
            conn.execute_batch(
                "DROP TABLE request_groups; DROP INDEX requests_by_created;
                 ALTER TABLE api_keys DROP COLUMN scram; DROP TABLE audit_nodes; DROP TABLE audit_notes;
                 DROP TABLE totp_secrets; DROP TABLE webauthn_keys;
                 ALTER TABLE grants DROP COLUMN completions; ALTER TABLE reviews DROP COLUMN step_up;
                 ALTER TABLE grants DROP COLUMN enforced;
                 UPDATE schema_version SET version = 9;",
            )
            .unwrap();
        }
        Home::Db(db) => db.execute(
            "DROP TABLE request_groups; ALTER TABLE api_keys DROP COLUMN scram;
             DROP TABLE audit_nodes; DROP TABLE audit_notes; DROP TABLE totp_secrets; DROP TABLE webauthn_keys;
             ALTER TABLE grants DROP COLUMN completions; ALTER TABLE reviews DROP COLUMN step_up;
             ALTER TABLE grants DROP COLUMN enforced;
             UPDATE airlock_schema_version SET version = version - 9",
        ),
    }
    let store = home.open();
    let bobs = list(
        store.clone(),
        Some(viewer("bob", &["security"], true)),
        10,
        None,
    )
    .await;
    assert_eq!(
        bobs.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![alices.id]
    );
    let ops = list(store, Some(viewer("carol", &["ops"], true)), 10, None).await;
    assert_eq!(ops.len(), 5);
}

fn api_key(id: &str, role: crate::Role, expires_in: Option<i64>) -> crate::ApiKeyRecord {
    let t = now();
    crate::ApiKeyRecord {
        id: id.to_owned(),
        hash: format!("hash-of-{id}"),
        user: airlock_core::UserName::parse("alice").unwrap(),
        role,
        created_at: t,
        expires_at: expires_in.map(|s| t + chrono::Duration::seconds(s)),
        revoked_at: None,
        last_used_at: None,
        scram: Some(format!("SCRAM-SHA-256$4096:c2FsdA==$verifier-of-{id}")),
    }
}

/// `raise_requirement` on a request no longer pending answers false and
/// changes nothing: the groups it names are not let in to see the request.
async fn raising_a_decided_request_changes_nothing(home: &Home) {
    use crate::{StatusFilter, Viewer};
    let store = home.open();
    let req = request_for("alice", "orders", "security");
    let (r, id) = (req.clone(), req.id);
    store
        .write(move |tx| {
            tx.insert_request(&r)?;
            tx.set_status(&id, RequestStatus::Pending, RequestStatus::Denied, now())
        })
        .await
        .unwrap();
    let mut raised = req.requirement.clone();
    raised.thresholds[0].groups = vec![GroupName::parse("auditors").unwrap()];
    let policies = req.policies.clone();
    let changed = store
        .write(move |tx| tx.raise_requirement(&id, &raised, &policies))
        .await
        .unwrap();
    assert!(!changed);
    let filter = StatusFilter {
        visible_to: Some(Viewer {
            user: airlock_core::UserName::parse("carol").unwrap(),
            groups: vec![GroupName::parse("auditors").unwrap()],
            own: true,
        }),
        ..Default::default()
    };
    let seen = store
        .read(move |r| r.list_requests(&filter, 10))
        .await
        .unwrap();
    assert!(seen.is_empty(), "a refused raise lets no new group see it");
    let stored = store
        .read(move |r| r.get_request(&id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.requirement, req.requirement);
}

async fn api_keys_are_listed_revoked_once_and_expire(home: &Home) {
    use crate::{KeyRefusal, KeyRevocation, Role};
    let store = home.open();
    let live = api_key("key_live", Role::Admin, None);
    let mut old = api_key("key_old", Role::User, Some(-5));
    old.created_at = live.created_at - chrono::Duration::seconds(10);
    let (l, o) = (live.clone(), old.clone());
    store
        .write(move |tx| {
            tx.insert_api_key(&l)?;
            tx.insert_api_key(&o)
        })
        .await
        .unwrap();
    // Oldest first, every field as written.
    let listed = store.read(|r| r.list_api_keys()).await.unwrap();
    assert_eq!(listed, vec![old.clone(), live.clone()]);
    let alice = airlock_core::UserName::parse("alice").unwrap();
    let bob = airlock_core::UserName::parse("bob").unwrap();
    let of_alice = store.read(move |r| r.api_keys_of(&alice)).await.unwrap();
    assert_eq!(of_alice, vec![old.clone(), live.clone()], "with verifiers");
    assert!(store
        .read(move |r| r.api_keys_of(&bob))
        .await
        .unwrap()
        .is_empty());
    let t = now();
    assert_eq!(live.refusal(t), None);
    assert!(matches!(old.refusal(t), Some(KeyRefusal::Expired(at)) if Some(at) == old.expires_at));

    let at = now();
    let first = store
        .write(move |tx| tx.revoke_api_key("key_live", at))
        .await
        .unwrap();
    assert_eq!(first, KeyRevocation::Revoked);
    let again = store
        .write(move |tx| tx.revoke_api_key("key_live", now()))
        .await
        .unwrap();
    assert_eq!(
        again,
        KeyRevocation::AlreadyRevoked(at),
        "the first time is kept"
    );
    let unknown = store
        .write(move |tx| tx.revoke_api_key("key_nope", now()))
        .await
        .unwrap();
    assert_eq!(unknown, KeyRevocation::Unknown);

    // The row stays, revoked, for the audit trail.
    let got = store
        .read(|r| r.api_key_by_hash("hash-of-key_live"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.revoked_at, Some(at));
    assert_eq!(got.refusal(now()), Some(KeyRefusal::Revoked(at)));
    assert_eq!(store.read(|r| r.list_api_keys()).await.unwrap().len(), 2);
}

/// A key revoked through one store (another node, or the CLI as another
/// process on the same SQLite file) is refused by the very next lookup
/// through any other, as authentication makes it (`api_key_by_hash`, on
/// a connection just used, after the key was kept in memory on SQLite;
/// and `read_single`).
async fn a_revocation_is_seen_by_the_next_read_everywhere(home: &Home) {
    let a = home.open();
    let b = home.open();
    let k = api_key("key_shared", crate::Role::User, None);
    a.write(move |tx| tx.insert_api_key(&k)).await.unwrap();
    let seen = a
        .api_key_by_hash("hash-of-key_shared".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.revoked_at, None);
    assert_eq!(seen.user.as_str(), "alice");
    assert_eq!(
        a.api_key_by_hash("hash-of-key_nope".into()).await.unwrap(),
        None
    );
    b.write(|tx| tx.revoke_api_key("key_shared", now()))
        .await
        .unwrap();
    let seen = a
        .api_key_by_hash("hash-of-key_shared".into())
        .await
        .unwrap()
        .unwrap();
    assert!(seen.revoked_at.is_some());
    let seen = a
        .read_single(|r| r.api_key_by_hash("hash-of-key_shared"))
        .await
        .unwrap()
        .unwrap();
    assert!(seen.revoked_at.is_some());
}

/// On SQLite a key is answered from memory (the database changed behind
/// the store's back, by hand, is not seen) until any process revokes any
/// key through a store: then the next lookup everywhere asks the
/// database again. Revoking an unknown key, which changes no row, still
/// empties every memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_keys_are_answered_from_memory_until_any_revocation() {
    let home = Home::sqlite();
    let a = home.open();
    let b = home.open();
    for id in ["key_kept", "key_other"] {
        let k = api_key(id, crate::Role::User, None);
        a.write(move |tx| tx.insert_api_key(&k)).await.unwrap();
    }
    let lookup = |store: &Store| {
        let store = store.clone();
        async move {
            store
                .api_key_by_hash("hash-of-key_kept".into())
                .await
                .unwrap()
                .unwrap()
        }
    };
    assert_eq!(lookup(&a).await.revoked_at, None);
    let by_hand = home.sqlite_by_hand();
    by_hand
        .execute(
            "UPDATE api_keys SET revoked_at = '2026-01-01T00:00:00Z' WHERE id = 'key_kept'",
            [],
        )
        .unwrap();
    assert_eq!(lookup(&a).await.revoked_at, None, "answered from memory");
    assert!(lookup(&b).await.revoked_at.is_some(), "b never kept it");
    b.write(|tx| tx.revoke_api_key("key_other", now()))
        .await
        .unwrap();
    assert!(lookup(&a).await.revoked_at.is_some());

    by_hand
        .execute(
            "UPDATE api_keys SET revoked_at = NULL WHERE id = 'key_kept'",
            [],
        )
        .unwrap();
    assert!(lookup(&a).await.revoked_at.is_some(), "kept again");
    // Revoking a key that does not exist changes no row, and still tells
    // every process to ask again.
    let unknown = b
        .write(|tx| tx.revoke_api_key("key_nope", now()))
        .await
        .unwrap();
    assert_eq!(unknown, crate::KeyRevocation::Unknown);
    assert_eq!(lookup(&a).await.revoked_at, None);
}

/// On SQLite a write made in a quiet spell commits on the caller's own
/// thread (no hand-off to the writer thread and back); under a burst the
/// writer thread batches as before; either way every append answered is
/// stored, chained and in the tree, in the order of its sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_a_quiet_write_commits_on_the_callers_thread() {
    let home = Home::sqlite();
    let store = home.open();
    let mut answered = Vec::new();
    let mut on_caller = 0;
    // An append, and whether it ran on the thread that asked for it.
    let append_here = || async {
        let caller = std::thread::current().id();
        let (rec, ran_on) = store
            .write(move |tx| {
                let ran_on = std::thread::current().id();
                tx.append_audit(audit(AuditKind::Decision), now())
                    .map(|r| (r, ran_on))
            })
            .await
            .unwrap();
        (rec, ran_on == caller)
    };
    for _ in 0..60 {
        let (rec, here) = append_here().await;
        on_caller += usize::from(here);
        answered.push(rec);
    }
    // Most do; one that finds the writer thread still letting go of the
    // last batch is handed to it, as under load.
    assert!(
        on_caller >= 1,
        "after a quiet spell writes commit where they are made"
    );
    // SQLite's write lock held by another process (the CLI, a backup): a
    // quiet write does not wait for it on the caller's thread, but is
    // handed to the writer thread, which waits it out.
    let by_hand = home.sqlite_by_hand();
    by_hand.execute_batch("BEGIN IMMEDIATE").unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        by_hand.execute_batch("COMMIT").unwrap();
    });
    let (rec, here) = append_here().await;
    release.join().unwrap();
    assert!(!here, "waited for another process's lock here");
    answered.push(rec);
    for round in 0..3 {
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .append_audit(audit(AuditKind::Decision), now())
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            answered.push(t.await.unwrap());
        }
        // And quiet again between bursts.
        for _ in 0..(20 * round) {
            answered.push(
                store
                    .append_audit(audit(AuditKind::Decision), now())
                    .await
                    .unwrap(),
            );
        }
    }
    assert_stored_is_answered(&store, answered).await;
}

/// On a runtime of one worker (a host with one CPU) no write commits on
/// the caller's thread: it would hold every other request behind its
/// commit, and they would each find the writer idle and commit alone.
/// Without this a burst after a quiet spell ran write by write on the
/// worker, never batched.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn on_sqlite_one_worker_hands_every_write_to_the_writer() {
    let home = Home::sqlite();
    let store = home.open();
    let mut answered = Vec::new();
    // An append from a task on the worker, and whether it ran there.
    let append_here = |store: Store| async move {
        let caller = std::thread::current().id();
        let (rec, ran_on) = store
            .write(move |tx| {
                let ran_on = std::thread::current().id();
                tx.append_audit(audit(AuditKind::Decision), now())
                    .map(|r| (r, ran_on))
            })
            .await
            .unwrap();
        (rec, usize::from(ran_on == caller))
    };
    let quiet = tokio::spawn({
        let store = store.clone();
        async move {
            let mut out = (Vec::new(), 0);
            for _ in 0..40 {
                let (rec, here) = append_here(store.clone()).await;
                out.0.push(rec);
                out.1 += here;
            }
            out
        }
    });
    let (recs, mut on_worker) = quiet.await.unwrap();
    answered.extend(recs);
    let burst: Vec<_> = (0..200)
        .map(|_| tokio::spawn(append_here(store.clone())))
        .collect();
    for t in burst {
        let (rec, here) = t.await.unwrap();
        on_worker += here;
        answered.push(rec);
    }
    assert_eq!(on_worker, 0, "writes committed on the only worker");
    assert_stored_is_answered(&store, answered).await;
}

/// A one-shot command (`airlock keys revoke`) opened beside a busy server
/// waits its turn for SQLite's write lock for seconds; the server's own
/// writer gives up within a second, so its callers get a 503, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_a_tool_waits_its_turn_for_the_write_lock() {
    let home = Home::sqlite();
    let server = home.open();
    let Home::Dir(d) = &home else { unreachable!() };
    let tool = Store::open_for_tool("sqlite://db/airlock.db", d.path()).unwrap();
    let by_hand = home.sqlite_by_hand();
    by_hand.execute_batch("BEGIN IMMEDIATE").unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        by_hand.execute_batch("COMMIT").unwrap();
    });
    let from_server = server.append_audit(audit(AuditKind::Decision), now()).await;
    let from_tool = tool.append_audit(audit(AuditKind::Decision), now()).await;
    release.join().unwrap();
    assert!(
        from_server.is_err(),
        "the server's writer waited out a 1.5 s lock"
    );
    let rec = from_tool.expect("the tool waited for the lock");
    assert_eq!(rec.seq, 1);
}

/// A commit that failed is remembered until a decision's record (an
/// `append_audit`) commits: a probe write that goes through does not
/// clear it, since it is smaller than what decisions write (`/healthz`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_is_remembered_until_an_audit_append_commits() {
    let home = Home::sqlite();
    let store = home.open();
    let minute = std::time::Duration::from_secs(60);
    store.probe_write().await.unwrap();
    assert!(store.recent_write_failure(minute).is_none());
    // Another process holds the write lock past the busy timeout.
    let other = home.sqlite_by_hand();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    assert!(store
        .append_audit(audit(AuditKind::Decision), now())
        .await
        .is_err());
    let failure = store.recent_write_failure(minute).expect("remembered");
    assert!(failure.to_string().contains("locked"), "{failure}");
    assert!(store
        .recent_write_failure(std::time::Duration::ZERO)
        .is_none());
    other.execute_batch("ROLLBACK").unwrap();
    store.probe_write().await.unwrap();
    assert!(
        store.recent_write_failure(minute).is_some(),
        "a probe proves nothing"
    );
    store
        .append_audit(audit(AuditKind::Decision), now())
        .await
        .unwrap();
    assert!(store.recent_write_failure(minute).is_none());
}

/// PostgreSQL's key lookups run on async connections of their own: one
/// the server cut while it sat in the pool (a restart, a network drop) is
/// replaced without failing the lookup, and a server that cannot be
/// reached is an error, never "no such key".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_lookup_connection_is_replaced_and_no_server_is_an_error() {
    let Some(db) = TestDb::create() else { return };
    let home = Home::Db(db);
    let store = home.open();
    let k = api_key("key_cut", crate::Role::User, None);
    store.write(move |tx| tx.insert_api_key(&k)).await.unwrap();
    assert!(store
        .api_key_by_hash("hash-of-key_cut".into())
        .await
        .unwrap()
        .is_some());
    let Home::Db(db) = &home else { unreachable!() };
    let cut = db.query_i64(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 'airlock-keys' AND datname = current_database()",
    );
    assert!(cut >= 1, "the lookup has a connection of its own");
    for _ in 0..3 {
        let seen = store.api_key_by_hash("hash-of-key_cut".into()).await;
        assert!(matches!(seen, Ok(Some(_))), "{seen:?}");
    }

    // The database stops taking connections and the pooled one is cut:
    // the lookup cannot be made, which is an error (a 503 upstream),
    // never "no such key" nor the key as last seen.
    db.shut_out("airlock-keys");
    let seen = store.api_key_by_hash("hash-of-key_cut".into()).await;
    assert!(matches!(seen, Err(StoreError::Db(_))), "{seen:?}");
}

async fn key_use_is_recorded_and_never_moves_back(home: &Home) {
    let store = home.open();
    let (k1, k2) = (
        api_key("key_one", crate::Role::User, None),
        api_key("key_two", crate::Role::User, Some(3600)),
    );
    store
        .write(move |tx| {
            tx.insert_api_key(&k1)?;
            tx.insert_api_key(&k2)
        })
        .await
        .unwrap();
    let t = now();
    let ids = vec![
        "key_one".to_owned(),
        "key_two".to_owned(),
        "key_gone".to_owned(),
    ];
    store
        .write(move |tx| tx.touch_api_keys(&ids, t))
        .await
        .unwrap();
    let earlier = t - chrono::Duration::seconds(60);
    store
        .write(move |tx| tx.touch_api_keys(&["key_one".to_owned()], earlier))
        .await
        .unwrap();
    let listed = store.read(|r| r.list_api_keys()).await.unwrap();
    assert_eq!(listed.len(), 2);
    for k in listed {
        assert_eq!(k.last_used_at, Some(t), "{}", k.id);
    }
}

/// What a key lookup costs, now that every request does one (there is no
/// cache of keys), through `read` (a snapshot transaction) and
/// `read_single` (what authentication uses). Not a test: run with
/// `cargo test --release -p airlock-store key_lookup_cost -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn key_lookup_cost() {
    let homes = [
        Some(Home::sqlite()),
        crate::testing::TestDb::create().map(Home::Db),
    ];
    for home in homes.into_iter().flatten() {
        let store = home.open();
        let k = api_key("key_bench", crate::Role::User, None);
        store.write(move |tx| tx.insert_api_key(&k)).await.unwrap();
        for single in [false, true] {
            let lookup = move |s: Store| async move {
                let f = |r: &mut dyn crate::ReadTx| r.api_key_by_hash("hash-of-key_bench");
                let got = if single {
                    s.read_single(f).await
                } else {
                    s.read(f).await
                };
                got.unwrap().unwrap()
            };
            for _ in 0..200 {
                lookup(store.clone()).await;
            }
            let n = 5000;
            let t = std::time::Instant::now();
            for _ in 0..n {
                lookup(store.clone()).await;
            }
            let one = t.elapsed() / n;
            let t = std::time::Instant::now();
            let tasks: Vec<_> = (0..64)
                .map(|_| {
                    let s = store.clone();
                    tokio::spawn(async move {
                        for _ in 0..n / 64 {
                            lookup(s.clone()).await;
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            let per_sec = f64::from(n / 64 * 64) / t.elapsed().as_secs_f64();
            println!(
                "{} {}: one at a time {one:?} per lookup; 64 concurrent: {per_sec:.0} lookups/s",
                store.kind(),
                if single { "read_single" } else { "read" },
            );
        }
    }
}

/// The audit Merkle tree is extended in the same transaction as each
/// append, on two nodes at once and across batches with a failing job; its
/// stored nodes give the same tree heads as a tree built from the records'
/// export lines; and a log whose tree is missing (written before the tree
/// was kept) gets it on the next append.
async fn the_merkle_tree_grows_with_the_log_and_catches_up(home: &Home) {
    use airlock_core::merkle;
    let a = home.open();
    let b = second_node(home, &a);
    let mut tasks = Vec::new();
    for i in 0..37 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            store
                .write(move |tx| {
                    tx.append_audit(audit(AuditKind::Decision), now())?;
                    if i % 5 == 0 {
                        // Undone with its job: the tree must not keep it.
                        tx.append_audit(audit(AuditKind::Decision), now())?;
                        return Err(StoreError::Db("caller failed".into()));
                    }
                    Ok(())
                })
                .await
        }));
    }
    for t in tasks {
        let _ = t.await.unwrap();
    }
    let check = |store: Store| async move {
        let records = store.read(|r| r.audit_after(0, 10_000)).await.unwrap();
        let mut mem = merkle::MemoryTree::new();
        for r in &records {
            mem.push(merkle::leaf_hash(r.export_line().as_bytes()));
        }
        let n = records.len() as u64;
        let size = store.read(|r| r.audit_tree_size()).await.unwrap();
        assert_eq!(size, n);
        let roots = store
            .read(move |r| {
                let mut nodes = |l: u32, i: u64| r.audit_tree_node(l, i).ok().flatten();
                Ok::<_, StoreError>(
                    (1..=n)
                        .map(|s| merkle::root(&mut nodes, s).unwrap())
                        .collect::<Vec<_>>(),
                )
            })
            .await
            .unwrap();
        for (s, got) in (1..=n).zip(roots) {
            assert_eq!(got, merkle::root(&mut mem, s).unwrap(), "size {s}");
        }
        n
    };
    let n = check(a.clone()).await;
    assert!(n >= 29, "{n}");

    // A log from before the tree: the next append builds it whole.
    match home {
        Home::Dir(d) => {
            let conn = rusqlite::Connection::open(d.path().join("db/airlock.db")).unwrap();
            conn.execute("DELETE FROM audit_nodes", []).unwrap();
        }
        Home::Db(db) => db.execute("DELETE FROM audit_nodes"),
    }
    let fresh = home.open();
    fresh
        .write(|tx| tx.append_audit(audit(AuditKind::Decision), now()))
        .await
        .unwrap();
    assert_eq!(check(fresh).await, n + 1);
}
