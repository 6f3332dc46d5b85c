//! The decision on a statement: one check per table it touches (or one on
//! the database, for a statement that names none), all of which must pass;
//! a hold while any needs approval; and the grants' single use, consumed
//! before the statement is sent. A statement held past `hold_seconds` is
//! remembered by its fingerprint, so running the identical statement again
//! after approval uses that approval (and nothing else does).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_api::{CheckBody, CheckResponse, FindingsTarget, RequestView};
use airlock_client::{ClientError, Enforcer, Gate, Waited};
use airlock_core::action::{Resource, ResourceId, ResourceType};
use airlock_core::{ActionName, Fingerprint, GrantId, RequestId, RequestStatus, UserName};
use serde_json::{json, Map, Value};

use crate::classify::{Access, Statement};

/// SQLSTATE of a statement still held for approval.
pub const HELD: &str = "AL001";
/// SQLSTATE of a statement denied (by policy or by people).
pub const DENIED: &str = "AL002";
/// SQLSTATE of a result withheld by DLP (`response_dlp = "block"`).
pub const BLOCKED: &str = "AL003";
/// SQLSTATE when Airlock could not decide (it fails closed).
pub const UNDECIDED: &str = "AL000";

/// How a statement (or a batch of them) fared.
#[derive(Debug)]
pub enum Outcome {
    /// Send it: allowed, or approved with each grant's use consumed.
    Pass {
        /// Grants consumed for it, to complete once it ran.
        grants: Vec<GrantId>,
        /// What it was decided as, for the record of what DLP finds in
        /// its results.
        decided: Decided,
    },
    /// Do not send it: an `ErrorResponse` with this SQLSTATE and message.
    Refused {
        /// `AL001`, `AL002`, `AL000`, or PostgreSQL's own.
        code: &'static str,
        /// For the client.
        message: String,
    },
}

/// What a passed statement or batch was decided as: whose, each check's
/// action and resource, and the audit records of the checks allowed
/// outright.
#[derive(Debug, Default, Clone)]
pub struct Decided {
    /// The session's user; `None` when nothing was checked or rows are
    /// not scanned (nothing to record).
    pub principal: Option<UserName>,
    /// Each check's action and resource.
    pub targets: Vec<FindingsTarget>,
    /// The allow decisions' audit records.
    pub decisions: Vec<i64>,
}

impl Decided {
    /// Adds `other`'s targets and decisions (a later batch whose replies
    /// run on with these).
    pub fn merge(&mut self, other: Decided) {
        if self.principal.is_none() {
            self.principal = other.principal;
        }
        for t in other.targets {
            if !self.targets.contains(&t) {
                self.targets.push(t);
            }
        }
        self.decisions.extend(other.decisions);
    }
}

impl Outcome {
    /// Passed with nothing checked (an empty query, transaction control).
    pub fn unchecked() -> Self {
        Outcome::Pass {
            grants: Vec::new(),
            decided: Decided::default(),
        }
    }

    fn refused(code: &'static str, message: impl Into<String>) -> Self {
        Outcome::Refused {
            code,
            message: message.into(),
        }
    }
}

/// Held requests remembered, at most.
const MAX_HELD: usize = 10_000;

/// One proxy's way to decide statements.
pub struct Decider {
    name: String,
    database: String,
    enforcer: Enforcer<Arc<dyn Gate>>,
    hold: Duration,
    held: Mutex<Held>,
    /// Whether result rows are scanned: only then is what a statement was
    /// decided as kept (in [`Decided`]) for the findings record.
    scans: bool,
}

#[derive(Default)]
struct Held {
    by_fp: HashMap<Fingerprint, RequestId>,
    order: VecDeque<Fingerprint>,
}

impl Held {
    fn insert(&mut self, fp: Fingerprint, id: RequestId) {
        if self.by_fp.insert(fp, id).is_none() {
            self.order.push_back(fp);
        }
        while self.order.len() > MAX_HELD {
            if let Some(old) = self.order.pop_front() {
                self.by_fp.remove(&old);
            }
        }
    }

    fn remove(&mut self, fp: &Fingerprint) {
        if self.by_fp.remove(fp).is_some() {
            self.order.retain(|f| f != fp);
        }
    }
}

/// What the session knows when a statement is decided.
pub struct Session<'a> {
    /// The end user.
    pub principal: &'a UserName,
    /// Whether a transaction block is open.
    pub in_transaction: bool,
    /// The client's address.
    pub source_ip: Option<std::net::IpAddr>,
}

impl Decider {
    /// A decider for the proxy `name` in front of `database`.
    /// `scans`: whether result rows go through DLP, so what a passed
    /// statement was decided as must be kept for the findings record.
    pub fn new(
        name: &str,
        database: &str,
        gate: Arc<dyn Gate>,
        hold: Duration,
        scans: bool,
    ) -> Self {
        Self {
            scans,
            name: name.to_owned(),
            database: database.to_owned(),
            enforcer: Enforcer::new(gate),
            hold,
            held: Mutex::new(Held::default()),
        }
    }

    /// The enforcer, for completing grants and logging users in.
    pub fn enforcer(&self) -> &Enforcer<Arc<dyn Gate>> {
        &self.enforcer
    }

    /// The checks a statement needs: one per (access, table), or one on
    /// the database when it names no table. Transaction control needs none.
    /// A table name Airlock cannot use as a resource id (too long,
    /// control characters) refuses the statement.
    pub fn checks(
        &self,
        s: &Session<'_>,
        st: &Statement,
        parameters: &[Value],
    ) -> Result<Vec<CheckBody>, String> {
        if st.transaction_control {
            return Ok(Vec::new());
        }
        let mut params = BTreeMap::new();
        params.insert("sql".to_owned(), json!(st.text));
        params.insert("parameters".to_owned(), json!(parameters));
        let tables: Vec<&str> = st.tables.iter().map(|(_, t)| t.as_str()).collect();
        let mut context = Map::new();
        context.insert("statement".into(), json!(st.kind.kind()));
        context.insert("tables".into(), json!(tables));
        context.insert("has_where".into(), json!(st.has_where));
        context.insert("locks_rows".into(), json!(st.locks_rows));
        context.insert("in_transaction".into(), json!(s.in_transaction));
        context.insert("functions".into(), json!(st.functions));
        context.insert("database".into(), json!(self.database));
        context.insert("proxy".into(), json!(self.name));
        if let Some(ip) = s.source_ip {
            context.insert("source_ip".into(), json!(ip.to_string()));
        }
        let targets: Vec<(Access, &str, &str)> = if st.tables.is_empty() {
            vec![(st.kind, "Database", self.database.as_str())]
        } else {
            st.tables
                .iter()
                .map(|(a, t)| (*a, "Table", t.as_str()))
                .collect()
        };
        targets
            .into_iter()
            .map(|(access, kind, id)| {
                let resource = Resource {
                    kind: ResourceType::parse(kind).map_err(|e| e.to_string())?,
                    id: ResourceId::parse(id).map_err(|e| format!("table {id:?}: {e}"))?,
                    attrs: Map::new(),
                };
                Ok(CheckBody {
                    principal: Some(s.principal.clone()),
                    action: ActionName::parse(access.action()).map_err(|e| e.to_string())?,
                    resource,
                    params: params.clone(),
                    context: context.clone(),
                    reason: None,
                })
            })
            .collect()
    }

    /// Decides every check of a statement or batch: all must pass. While
    /// any needs approval, `notice` is told each request at once and the
    /// batch is held, up to the hold, for all of them.
    ///
    /// `stop` ends the wait (a cancel request, the client gone) with its
    /// outcome: polled only while waiting, never while a check is made or a
    /// grant consumed, so a grant is never spent for a statement that then
    /// does not run.
    pub async fn decide(
        &self,
        checks: Vec<CheckBody>,
        notice: &mut (dyn FnMut(&RequestView) + Send),
        mut stop: Pin<&mut (dyn Future<Output = Outcome> + Send + '_)>,
    ) -> Outcome {
        let mut approved: Vec<(RequestView, CheckBody)> = Vec::new();
        let mut pending: Vec<(RequestView, CheckBody)> = Vec::new();
        let mut decided = Decided::default();
        for check in checks {
            if self.scans {
                decided.principal = check.principal.clone();
                let target = FindingsTarget {
                    action: check.action.clone(),
                    resource: Resource {
                        attrs: Map::new(),
                        ..check.resource.clone()
                    },
                };
                if !decided.targets.contains(&target) {
                    decided.targets.push(target);
                }
            }
            let fp = check.fingerprint();
            let known = fp.as_ref().and_then(|fp| self.held_id(fp));
            if let Some(id) = known {
                match self.enforcer.gate().request(id, None).await {
                    Ok(v) if v.status == RequestStatus::Approved => {
                        approved.push((v, check));
                        continue;
                    }
                    Ok(v) if v.status == RequestStatus::Pending => {
                        pending.push((v, check));
                        continue;
                    }
                    // Spent, denied, expired: this run is a new question.
                    Ok(_) | Err(ClientError::Api { status: 404, .. }) => {
                        if let Some(fp) = &fp {
                            self.forget(fp);
                        }
                    }
                    Err(e) => return undecided(e),
                }
            }
            match self.enforcer.check(&check).await {
                Err(e) => return undecided(e),
                Ok(CheckResponse::Allow { audit_seq, .. }) => decided.decisions.push(audit_seq),
                Ok(CheckResponse::Deny { message, .. }) => {
                    return Outcome::refused(
                        DENIED,
                        format!(
                            "Airlock denied {} on {}: {message}",
                            check.action,
                            show(&check.resource)
                        ),
                    )
                }
                Ok(CheckResponse::ApprovalRequired { request, .. }) => {
                    if let Some(fp) = &fp {
                        self.remember(*fp, request.id);
                    }
                    pending.push((*request, check));
                }
            }
        }
        if !pending.is_empty() {
            for (view, _) in &pending {
                notice(view);
            }
            let deadline = tokio::time::Instant::now() + self.hold;
            let mut still = Vec::new();
            for (view, check) in pending {
                let id = view.id;
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let waited = tokio::select! {
                    w = self.enforcer.wait(view, left) => w,
                    o = stop.as_mut() => return o,
                };
                match waited {
                    Ok(Waited::Held(view)) => still.push(view),
                    Err(e) => return undecided(e),
                    Ok(Waited::Decided(view)) if view.status == RequestStatus::Approved => {
                        approved.push((view, check))
                    }
                    Ok(Waited::Decided(view)) => {
                        return Outcome::refused(
                            DENIED,
                            format!(
                                "request {id} was {}; the statement was not run",
                                view.status
                            ),
                        )
                    }
                }
            }
            if !still.is_empty() {
                let list: Vec<String> = still
                    .iter()
                    .map(|v| format!("{} ({})", v.id, v.url))
                    .collect();
                return Outcome::refused(
                    HELD,
                    format!(
                        "held for approval: request {}; run the same statement again once it is approved",
                        list.join(", ")
                    ),
                );
            }
        }
        // An approval runs its statement as many times as its grant has
        // uses left: a batch that executes it more often (two Executes of
        // its portal, the statement twice in one query) is refused before
        // any use is spent, so the approval stays for a run that fits.
        let mut runs: HashMap<RequestId, (u32, u32)> = HashMap::new();
        for (view, _) in &approved {
            let left = view
                .grant
                .as_ref()
                .map_or(1, |g| g.max_uses.saturating_sub(g.uses));
            runs.entry(view.id).or_insert((0, left)).0 += 1;
        }
        if let Some((id, (n, left))) = runs.iter().find(|(_, (n, left))| n > left) {
            return Outcome::refused(
                DENIED,
                format!(
                    "request {id} approves {left} more run(s) of its statement; this batch runs it {n} times (nothing ran, the approval stays)"
                ),
            );
        }
        let mut grants = Vec::new();
        for (view, check) in approved {
            if let Some(fp) = check.fingerprint() {
                self.forget(&fp);
            }
            match self.enforcer.consume(&view, &check).await {
                Ok(g) => grants.push(g.grant_id),
                Err(e) => {
                    // Uses already spent in this batch ran nothing: they
                    // are completed as failures, not left open (found by a
                    // review).
                    let mut detail = Map::new();
                    detail.insert(
                        "error".into(),
                        json!(format!("not run: the approval of request {} in the same batch could not be used", view.id)),
                    );
                    for g in &grants {
                        if let Err(e) = self
                            .enforcer
                            .complete(*g, airlock_api::Outcome::Failure, detail.clone())
                            .await
                        {
                            tracing::warn!(grant = %g, error = %e, "could not complete a grant");
                        }
                    }
                    return Outcome::refused(
                        DENIED,
                        format!(
                            "the approval of request {} cannot be used: {e}; nothing ran",
                            view.id
                        ),
                    );
                }
            }
        }
        Outcome::Pass { grants, decided }
    }

    fn held_id(&self, fp: &Fingerprint) -> Option<RequestId> {
        self.held.lock().ok()?.by_fp.get(fp).copied()
    }

    fn remember(&self, fp: Fingerprint, id: RequestId) {
        if let Ok(mut h) = self.held.lock() {
            h.insert(fp, id);
        }
    }

    fn forget(&self, fp: &Fingerprint) {
        if let Ok(mut h) = self.held.lock() {
            h.remove(fp);
        }
    }
}

fn undecided(e: ClientError) -> Outcome {
    tracing::warn!(error = %e, "Airlock could not decide a statement; refused");
    Outcome::refused(
        UNDECIDED,
        format!("Airlock could not decide this statement ({e}); refused"),
    )
}

fn show(r: &Resource) -> String {
    format!("{}:{}", r.kind, r.id)
}

/// A bound parameter as params bind it: text as text, NULL as null, and
/// binary or non-UTF-8 values as `{"base64": …}`.
pub fn parameter(value: Option<&[u8]>, format: i16) -> Value {
    use base64::Engine as _;
    match value {
        None => Value::Null,
        Some(v) if format == 0 => match std::str::from_utf8(v) {
            Ok(s) => json!(s),
            Err(_) => json!({"base64": base64::engine::general_purpose::STANDARD.encode(v)}),
        },
        Some(v) => json!({"base64": base64::engine::general_purpose::STANDARD.encode(v)}),
    }
}
