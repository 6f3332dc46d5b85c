//! The approval state machine checked against a model: random sequences of
//! check, review, cancel, revoke, expire, consume and complete (proptest)
//! run through the service on each store, every answer and every state
//! compared with what the model says, and the promises checked at the end
//! of each sequence: terminal states stay final, a grant is consumed at
//! most `max_uses` times, an approval is a quorum of distinct eligible
//! reviewers, and every transition is audited exactly once.
//!
//! Time is real (a request here lives 1 s): when a deadline falls inside an
//! operation, either reading of it is accepted and the model follows the
//! one the service took.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use airlock_api::{CompleteBody, ConsumeBody, ErrorCode, Outcome};
use airlock_core::{AuditKind, RequestId, RequestStatus, UserName, Verdict};
use airlock_store::testing::TestDb;
use airlock_store::Role;
use chrono::{DateTime, Utc};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use serde_json::json;

use super::{Airlock, Caller, CheckOutcome};
use crate::ApiError;

const POLICIES: &str = r#"
@id("export")
@approvers("security")
@quorum("2")
@max_uses("2")
permit(principal, action == Action::"export", resource);

@id("poke")
@approvers("security")
@request_ttl("1s")
@grant_ttl("1s")
permit(principal, action == Action::"poke", resource);
"#;

const USERS: &str = r#"
[[users]]
name = "alice"
groups = ["engineering"]

[[users]]
name = "bob"
groups = ["security"]

[[users]]
name = "carol"
groups = ["security"]

[[users]]
name = "dave"
groups = ["security"]

[[users]]
name = "mallory"
groups = []

[[users]]
name = "root"
groups = []
"#;

/// Who acts. Alice asks; bob, carol and dave may approve; mallory may do
/// nothing; root holds an admin key but is in no approver group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Alice,
    Bob,
    Carol,
    Dave,
    Mallory,
    Root,
}

impl Who {
    fn caller(self) -> Caller {
        let (name, role) = match self {
            Who::Alice => ("alice", Role::User),
            Who::Bob => ("bob", Role::User),
            Who::Carol => ("carol", Role::User),
            Who::Dave => ("dave", Role::User),
            Who::Mallory => ("mallory", Role::User),
            Who::Root => ("root", Role::Admin),
        };
        Caller {
            user: UserName::parse(name).unwrap(),
            role,
            key_id: format!("model-{name}"),
        }
    }

    fn approver(self) -> bool {
        matches!(self, Who::Bob | Who::Carol | Who::Dave)
    }
}

fn who() -> impl Strategy<Value = Who> {
    // Mostly those who may act, so sequences get somewhere.
    prop_oneof![
        1 => Just(Who::Alice),
        3 => Just(Who::Bob),
        3 => Just(Who::Carol),
        3 => Just(Who::Dave),
        1 => Just(Who::Mallory),
        1 => Just(Who::Root),
    ]
}

/// One step. `req` picks among the requests made so far (modulo).
#[derive(Debug, Clone)]
enum Op {
    /// Alice asks: `export` (two approvals, two uses, long-lived) or
    /// `poke` (one approval, one use, 1 s to live).
    Check {
        poke: bool,
    },
    Review {
        req: usize,
        by: Who,
        approve: bool,
    },
    Cancel {
        req: usize,
        by: Who,
    },
    Revoke {
        req: usize,
        by: Who,
    },
    /// Waits for a short-lived request's deadline first, so it is due.
    Expire {
        req: usize,
    },
    Consume {
        req: usize,
    },
    Complete {
        req: usize,
        success: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let r = 0..3usize;
    prop_oneof![
        2 => any::<bool>().prop_map(|poke| Op::Check { poke }),
        6 => (r.clone(), who(), prop::bool::weighted(0.9))
            .prop_map(|(req, by, approve)| Op::Review { req, by, approve }),
        1 => (r.clone(), who()).prop_map(|(req, by)| Op::Cancel { req, by }),
        1 => (r.clone(), who()).prop_map(|(req, by)| Op::Revoke { req, by }),
        1 => r.clone().prop_map(|req| Op::Expire { req }),
        4 => r.clone().prop_map(|req| Op::Consume { req }),
        2 => (r, any::<bool>()).prop_map(|(req, success)| Op::Complete { req, success }),
    ]
}

/// What the model knows of one request.
#[derive(Debug, Clone)]
struct Model {
    id: RequestId,
    req: airlock_core::Request,
    quorum: usize,
    max_uses: u32,
    status: RequestStatus,
    reviewed: BTreeSet<Who>,
    approvals: BTreeSet<Who>,
    /// The pending request's expiry, then its grant's.
    deadline: DateTime<Utc>,
    token: Option<String>,
    grant: Option<airlock_core::GrantId>,
    uses: u32,
    /// Consumed uses that reported their outcome (one report each).
    completions: u32,
    revoked: bool,
    closed: bool,
    transitions: Vec<(RequestStatus, RequestStatus)>,
}

impl Model {
    fn become_(&mut self, to: RequestStatus) {
        assert!(self.status.can_become(to), "model: {} -> {to}", self.status);
        self.transitions.push((self.status, to));
        self.status = to;
    }
}

/// An answer, as far as the model predicts it.
type Answer = Result<(), ErrorCode>;

fn answer<T>(r: &Result<T, ApiError>) -> Answer {
    r.as_ref().map(|_| ()).map_err(ApiError::code)
}

/// The model's step for `op` on `m`, reading the deadline as passed
/// (`due`) or not: the answer it expects, `m` changed as it expects.
fn predict(m: &Model, op: &Op, due: bool) -> (Answer, Model) {
    use RequestStatus::*;
    let mut m = m.clone();
    let a = match *op {
        Op::Check { .. } => unreachable!("checks make new requests"),
        Op::Review { by, approve, .. } => {
            if by == Who::Alice {
                Err(ErrorCode::SelfReview)
            } else if !by.approver() {
                Err(ErrorCode::NotEligible)
            } else if m.status != Pending || due {
                Err(ErrorCode::WrongState)
            } else if !m.reviewed.insert(by) {
                Err(ErrorCode::AlreadyReviewed)
            } else if !approve {
                m.become_(Denied);
                Ok(())
            } else {
                m.approvals.insert(by);
                if m.approvals.len() >= m.quorum {
                    m.become_(Approved);
                }
                Ok(())
            }
        }
        Op::Cancel { by, .. } => {
            if by == Who::Mallory {
                // Not hers to see: absent, as for a read.
                Err(ErrorCode::NotFound)
            } else if by != Who::Alice {
                Err(ErrorCode::Forbidden)
            } else if m.status.can_become(Cancelled) {
                m.become_(Cancelled);
                Ok(())
            } else {
                Err(ErrorCode::WrongState)
            }
        }
        Op::Revoke { by, .. } => {
            if by == Who::Mallory {
                Err(ErrorCode::NotFound)
            } else if !(by.approver() || by == Who::Root) {
                Err(ErrorCode::Forbidden)
            } else if m.status.can_become(Revoked) {
                m.become_(Revoked);
                m.revoked = m.grant.is_some();
                Ok(())
            } else {
                Err(ErrorCode::WrongState)
            }
        }
        Op::Expire { .. } => {
            // Ok means "it expired now"; NotFound stands for "nothing due".
            if due && matches!(m.status, Pending | Approved) {
                m.become_(Expired);
                Ok(())
            } else {
                Err(ErrorCode::NotFound)
            }
        }
        Op::Consume { .. } => {
            if m.token.is_none() {
                Err(ErrorCode::InvalidGrant)
            } else if due {
                Err(ErrorCode::GrantExpired)
            } else if m.status == Revoked || m.revoked {
                Err(ErrorCode::GrantRevoked)
            } else if m.closed || m.uses >= m.max_uses {
                Err(ErrorCode::GrantSpent)
            } else {
                m.uses += 1;
                if m.uses == m.max_uses {
                    m.become_(Consumed);
                }
                Ok(())
            }
        }
        Op::Complete { .. } => {
            if m.completions >= m.uses || m.closed {
                Err(ErrorCode::WrongState)
            } else {
                m.completions += 1;
                m.closed = m.completions >= m.max_uses;
                if m.closed && m.status == Consumed {
                    m.become_(Completed);
                }
                Ok(())
            }
        }
    };
    (a, m)
}

/// The readings of a deadline an operation between `t0` and `t1` may have
/// seen (the store keeps milliseconds, so the edge is widened by one).
fn readings(deadline: DateTime<Utc>, t0: DateTime<Utc>, t1: DateTime<Utc>) -> Vec<bool> {
    if deadline + chrono::Duration::milliseconds(2) <= t0 {
        vec![true]
    } else if deadline > t1 {
        vec![false]
    } else {
        vec![false, true]
    }
}

struct Harness {
    airlock: Arc<Airlock>,
    _dir: tempfile::TempDir,
    _db: Option<TestDb>,
    next: std::sync::atomic::AtomicU64,
    /// Per operation: (answered ok, refused), for the run's summary.
    seen: std::sync::Mutex<std::collections::BTreeMap<String, (u32, u32)>>,
}

impl Harness {
    async fn start(db: Option<TestDb>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/main.cedar"), POLICIES).unwrap();
        let url = db
            .as_ref()
            .map_or("sqlite://data/airlock.db".to_owned(), |d| {
                d.url().to_owned()
            });
        let data = dir.path().join("data").display().to_string();
        let cfg = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {data:?}\nmax_pending_per_principal = 100000\nchecks_per_second_per_key = 100000\ncheck_burst_per_key = 100000\n\n[storage]\nurl = {url:?}\n\n[policy]\ndir = \"policies\"\n{USERS}"
        );
        let path = dir.path().join("airlock.toml");
        std::fs::write(&path, cfg).unwrap();
        let config = crate::Config::load(&path).unwrap();
        // No background tasks: nothing expires behind the model's back.
        let (airlock, _bg) = Airlock::start(config).await.unwrap();
        Harness {
            airlock,
            _dir: dir,
            _db: db,
            next: Default::default(),
            seen: Default::default(),
        }
    }

    async fn fetch(&self, id: RequestId) -> airlock_core::Request {
        self.airlock
            .store()
            .read(move |r| r.get_request(&id))
            .await
            .unwrap()
            .unwrap()
    }

    async fn check(&self, poke: bool) -> Model {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body = serde_json::from_value(json!({
            "action": if poke { "poke" } else { "export" },
            "resource": {"type": "Table", "id": format!("t{}-{n}", std::process::id())},
        }))
        .unwrap();
        let out = self
            .airlock
            .check(&Who::Alice.caller(), body, None)
            .await
            .unwrap();
        let CheckOutcome::ApprovalRequired { request, .. } = out else {
            panic!("expected approval required, got {out:?}");
        };
        let req = *request;
        Model {
            id: req.id,
            quorum: if poke { 1 } else { 2 },
            max_uses: if poke { 1 } else { 2 },
            status: req.status,
            reviewed: BTreeSet::new(),
            approvals: BTreeSet::new(),
            deadline: req.expires_at,
            token: None,
            grant: None,
            uses: 0,
            completions: 0,
            revoked: false,
            closed: false,
            transitions: Vec::new(),
            req,
        }
    }

    /// Runs `op` on `m`'s request; the answer as the model states it.
    async fn run(&self, m: &Model, op: &Op) -> Answer {
        let a = &self.airlock;
        let id = m.id;
        match *op {
            Op::Check { .. } => unreachable!(),
            Op::Review { by, approve, .. } => {
                let v = if approve {
                    Verdict::Approve
                } else {
                    Verdict::Deny
                };
                let reason = (!approve).then(|| "no".to_owned());
                answer(
                    &a.review(&by.caller(), id, v, reason, "api", Default::default())
                        .await,
                )
            }
            Op::Cancel { by, .. } => answer(&a.cancel(&by.caller(), id).await),
            Op::Revoke { by, .. } => answer(&a.revoke(&by.caller(), id, None).await),
            Op::Expire { .. } => match a.expire(id).await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(ErrorCode::NotFound),
                Err(e) => Err(e.code()),
            },
            Op::Consume { .. } => {
                // Without a token an attacker would try one of their own.
                let token = m
                    .token
                    .clone()
                    .unwrap_or_else(|| "v4.public.forged".to_owned());
                let body = ConsumeBody {
                    token,
                    action: m.req.action.clone(),
                };
                answer(&a.consume(&Who::Alice.caller(), body, None).await)
            }
            Op::Complete { success, .. } => {
                let Some(gid) = m.grant else {
                    return Err(ErrorCode::WrongState);
                };
                let outcome = if success {
                    Outcome::Success
                } else {
                    Outcome::Failure
                };
                let body = CompleteBody {
                    outcome,
                    detail: Default::default(),
                };
                answer(&a.complete(&Who::Alice.caller(), gid, body).await)
            }
        }
    }

    /// One sequence: every answer and state as the model says, then the
    /// promises over what the sequence did.
    async fn sequence(&self, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut models: Vec<Model> = Vec::new();
        for op in &ops {
            let i = match *op {
                Op::Check { poke } => {
                    models.push(self.check(poke).await);
                    continue;
                }
                Op::Review { req, .. }
                | Op::Cancel { req, .. }
                | Op::Revoke { req, .. }
                | Op::Expire { req }
                | Op::Consume { req }
                | Op::Complete { req, .. } => {
                    if models.is_empty() {
                        continue;
                    }
                    req % models.len()
                }
            };
            let m = &models[i];
            if matches!(op, Op::Expire { .. })
                && matches!(m.status, RequestStatus::Pending | RequestStatus::Approved)
                && m.quorum == 1
            {
                let wait = (m.deadline - Utc::now()).to_std().unwrap_or_default();
                tokio::time::sleep(wait + Duration::from_millis(5)).await;
            }
            let t0 = Utc::now();
            let got = self.run(m, op).await;
            let t1 = Utc::now();
            {
                let name = format!("{op:?}");
                let name = name.split([' ', '{']).next().unwrap_or_default().to_owned();
                let mut seen = self.seen.lock().unwrap();
                let e = seen.entry(name).or_default();
                if got.is_ok() {
                    e.0 += 1;
                } else {
                    e.1 += 1;
                }
            }
            let mut fits = Vec::new();
            for due in readings(m.deadline, t0, t1) {
                let (want, next) = predict(m, op, due);
                if want == got {
                    fits.push(next);
                }
            }
            let Some(mut next) = fits.into_iter().next() else {
                return Err(TestCaseError::fail(format!(
                    "{op:?} on {} ({}, deadline {}, t0 {t0}, t1 {t1}): the service answered {got:?}, the model {:?}",
                    m.id,
                    m.status,
                    m.deadline,
                    predict(m, op, false).0
                )));
            };
            let actual = self.fetch(m.id).await;
            if next.status == RequestStatus::Approved && next.grant.is_none() {
                let g = actual
                    .grant
                    .as_ref()
                    .expect("an approved request has a grant");
                next.grant = Some(g.grant_id);
                next.deadline = g.expires_at;
                next.token = self.airlock.grant_token(&actual, &Who::Alice.caller());
                prop_assert!(
                    next.token.is_some(),
                    "an approved request's principal gets a token"
                );
            }
            prop_assert_eq!(actual.status, next.status, "{:?} on {}", op, m.id);
            prop_assert_eq!(actual.reviews.len(), next.reviewed.len());
            if let Some(g) = &actual.grant {
                prop_assert_eq!(g.uses, next.uses, "uses of {}", m.id);
                prop_assert_eq!(g.revoked, next.revoked, "revoked {}", m.id);
                prop_assert!(g.uses <= g.max_uses);
            }
            models[i] = next;
        }
        for m in &models {
            self.promises(m).await?;
        }
        Ok(())
    }

    /// What must hold of a request whatever happened to it.
    async fn promises(&self, m: &Model) -> Result<(), TestCaseError> {
        let req = self.fetch(m.id).await;
        let (rid, gid) = (m.id.to_string(), m.grant.map(|g| g.to_string()));
        let records = self
            .airlock
            .store()
            .read(move |r| {
                let mut v = r.audit_about(&rid, 10_000)?;
                if let Some(g) = gid {
                    v.extend(r.audit_about(&g, 10_000)?);
                }
                Ok(v)
            })
            .await
            .unwrap();
        // Every transition audited once, in order, none out of a final state.
        let audited: Vec<(String, String)> = records
            .iter()
            .filter(|r| r.kind == AuditKind::RequestState.as_str() && r.subject == m.id.to_string())
            .map(|r| {
                let d = r.details.value();
                (
                    d["from"].as_str().unwrap_or_default().to_owned(),
                    d["to"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let expected: Vec<(String, String)> = m
            .transitions
            .iter()
            .map(|(f, t)| (f.as_str().to_owned(), t.as_str().to_owned()))
            .collect();
        prop_assert_eq!(&audited, &expected, "transitions of {}", m.id);
        for (from, to) in &m.transitions {
            prop_assert!(from.can_become(*to));
        }
        // Consumed at most max_uses times, and each use audited once.
        let consumed = records
            .iter()
            .filter(|r| r.kind == AuditKind::GrantConsumed.as_str())
            .count();
        prop_assert_eq!(consumed as u32, m.uses);
        prop_assert!(m.uses <= m.max_uses);
        // One outcome on record per consumed use at most.
        let completed = records
            .iter()
            .filter(|r| r.kind == AuditKind::GrantCompleted.as_str())
            .count();
        prop_assert_eq!(completed as u32, m.completions);
        prop_assert!(m.completions <= m.uses);
        let reviews = records
            .iter()
            .filter(|r| r.kind == AuditKind::Review.as_str() && r.subject == m.id.to_string())
            .count();
        prop_assert_eq!(reviews, m.reviewed.len(), "reviews of {}", m.id);
        // A grant exists only behind a quorum of distinct eligible approvers.
        if req.grant.is_some() {
            let approvers: BTreeSet<&str> = req
                .reviews
                .iter()
                .filter(|r| r.verdict == Verdict::Approve)
                .map(|r| r.reviewer.as_str())
                .collect();
            prop_assert!(
                approvers.len() >= m.quorum,
                "{} granted on {:?}",
                m.id,
                approvers
            );
            prop_assert!(approvers
                .iter()
                .all(|a| ["bob", "carol", "dave"].contains(a)));
        }
        Ok(())
    }

    async fn chain_verifies(&self) {
        let keys = vec![self.airlock.public_keys().audit];
        let v = self
            .airlock
            .store()
            .read(move |r| airlock_store::verify_chain(r, &keys))
            .await
            .unwrap();
        assert_eq!(v.broken, None, "the audit chain verifies");
    }
}

fn run_model(db: Option<TestDb>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let h = rt.block_on(Harness::start(db));
    let cases = std::env::var("AIRLOCK_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let result = runner.run(&prop::collection::vec(op(), 1..60), |ops| {
        rt.block_on(h.sequence(ops))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    rt.block_on(h.chain_verifies());
    eprintln!(
        "model: {cases} sequences; per operation (answered, refused): {:?}",
        h.seen.lock().unwrap()
    );
}

mod sqlite {
    #[test]
    fn the_state_machine_keeps_its_promises() {
        super::run_model(None);
    }
}

mod postgres {
    #[test]
    fn the_state_machine_keeps_its_promises() {
        let Some(db) = airlock_store::testing::TestDb::create() else {
            return;
        };
        super::run_model(Some(db));
    }
}
