//! The store's behavioural suite: what any backend must do.

use std::num::NonZeroU32;

use airlock_core::decision::{DEFAULT_GRANT_TTL, DEFAULT_REQUEST_TTL};
use airlock_core::request::GrantRecord;
use airlock_core::{
    Action, AuditKind, ChainVerifier, GrantId, GroupName, NewAuditRecord, Request, RequestId,
    RequestStatus, Requirement, Threshold,
};
use serde_json::json;

use crate::time::now;
use crate::{ConsumeOutcome, Store, StoreError};

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open("sqlite://db/airlock.db", dir.path()).unwrap();
    (dir, store)
}

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
        details: json!({"x": 1}),
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

#[tokio::test]
async fn request_round_trips() {
    let (_d, store) = open();
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

#[tokio::test]
async fn one_pending_per_principal_and_action() {
    let (_d, store) = open();
    let a = request("alice");
    let mut b = request("alice");
    b.id = RequestId::new();
    store.write(move |tx| tx.insert_request(&a)).await.unwrap();
    assert!(store.write(move |tx| tx.insert_request(&b)).await.is_err());
}

#[tokio::test]
async fn terminal_states_do_not_move() {
    let (_d, store) = open();
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

#[tokio::test]
async fn hundred_racing_consumers_one_wins() {
    let (_d, store) = open();
    let gid = approved_grant(&store, 1).await;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .write(move |tx| tx.consume_grant(&gid, now()))
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

#[tokio::test]
async fn consume_says_why_not() {
    let (_d, store) = open();
    let gid = approved_grant(&store, 2).await;
    let r = store
        .write(move |tx| tx.consume_grant(&gid, now()))
        .await
        .unwrap();
    assert_eq!(r, ConsumeOutcome::Consumed { uses_left: 1 });
    let late = now() + chrono::Duration::minutes(11);
    let r = store
        .write(move |tx| tx.consume_grant(&gid, late))
        .await
        .unwrap();
    assert_eq!(r, ConsumeOutcome::Expired);
    store.write(move |tx| tx.revoke_grant(&gid)).await.unwrap();
    let r = store
        .write(move |tx| tx.consume_grant(&gid, now()))
        .await
        .unwrap();
    assert_eq!(r, ConsumeOutcome::Revoked);
    let other = GrantId::new();
    let r = store
        .write(move |tx| tx.consume_grant(&other, now()))
        .await
        .unwrap();
    assert_eq!(r, ConsumeOutcome::Unknown);
}

#[tokio::test]
async fn failed_job_rolls_back_alone() {
    let (_d, store) = open();
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

#[tokio::test]
async fn concurrent_appends_make_one_chain() {
    let (_d, store) = open();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .write(|tx| tx.append_audit(audit(AuditKind::Decision), now()))
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let records = store.read(|r| r.audit_after(0, 1000)).await.unwrap();
    assert_eq!(records.len(), 200);
    let mut v = ChainVerifier::default();
    for r in &records {
        v.push(r).unwrap();
    }
}

#[tokio::test]
async fn refuses_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    drop(Store::open("sqlite://a.db", dir.path()).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE schema_version SET version = 999", [])
        .unwrap();
    drop(conn);
    let err = Store::open("sqlite://a.db", dir.path()).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 999, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn password_hashes_are_replaced() {
    let (_d, store) = open();
    let u = airlock_core::UserName::parse("alice").unwrap();
    let (a, b) = (u.clone(), u.clone());
    store
        .write(move |tx| tx.set_password_hash(&a, "$argon2id$one", now()))
        .await
        .unwrap();
    store
        .write(move |tx| tx.set_password_hash(&b, "$argon2id$two", now()))
        .await
        .unwrap();
    let got = store.read(move |r| r.password_hash(&u)).await.unwrap();
    assert_eq!(got.as_deref(), Some("$argon2id$two"));
}
