//! Flag and decide: `POST /v1/check`.

use std::net::IpAddr;
use std::time::Instant;

use airlock_core::audit::Details;
use airlock_core::{
    Action, AuditKind, Decision, NewAuditRecord, Request, RequestId, RequestStatus,
};
use airlock_store::time::now;
use airlock_store::StoreError;
use chrono::{Datelike, Timelike};
use serde_json::{json, Map, Value};

use airlock_api::ErrorCode;

use super::notify;
use super::{Airlock, Caller};
use crate::ApiError;

pub use airlock_api::CheckBody;

/// What a check answers.
#[derive(Debug)]
pub enum CheckOutcome {
    /// Allowed outright.
    Allow {
        /// Determining policies.
        policies: Vec<String>,
        /// The decision's audit record.
        audit_seq: i64,
    },
    /// Denied.
    Deny {
        /// Determining policies.
        policies: Vec<String>,
        /// The decision's audit record.
        audit_seq: i64,
        /// Why.
        message: String,
    },
    /// Held for approval.
    ApprovalRequired {
        /// Determining policies.
        policies: Vec<String>,
        /// The request (new, or the one already pending).
        request: Box<Request>,
    },
}

const MAX_REASON: usize = 2000;

/// What a check requiring approval did with the pending request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// None was pending: a new one.
    Created,
    /// The pending one already demands at least this.
    Reused,
    /// The pending one now demands this too.
    Raised,
}

/// Context facts Airlock computes itself; a caller's value is dropped
/// (an enforcer key may pass its end user's `source_ip`).
pub const COMPUTED_CONTEXT: [&str; 5] = [
    "source_ip",
    "local_hour",
    "weekday",
    "sensitive_actions_last_hour",
    "granted_before",
];

/// A decision record's details: one shape for every outcome and every
/// way in (a check, break-glass), built from the decision. Its fields are
/// declared in sorted order and its free-form values (params, context)
/// serialize canonically, so the record's canonical text is written from
/// it directly, with no JSON value built and sorted on the way
/// (`decision_details_are_canonical` holds it to the canonical form).
#[derive(serde::Serialize)]
pub(crate) struct DecisionDetails {
    action: String,
    /// Asked for as break-glass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) breakglass: Option<bool>,
    #[serde(serialize_with = "canonical_object")]
    context: Map<String, Value>,
    /// Whether the request named was pending already.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) existing_request: Option<bool>,
    fingerprint: String,
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    outcome: &'static str,
    #[serde(serialize_with = "canonical_members")]
    params: std::collections::BTreeMap<String, Value>,
    policies: Vec<String>,
    policy_version: String,
    principal: String,
    /// Why nothing was asked, or nothing was granted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) refused: Option<ErrorCode>,
    /// The approval request it made or found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) request: Option<String>,
    resource: DecidedResource,
}

/// The resource in a decision record (`id`, then `type`: sorted).
#[derive(serde::Serialize)]
struct DecidedResource {
    id: String,
    #[serde(rename = "type")]
    kind: String,
}

fn canonical_object<S: serde::Serializer>(m: &Map<String, Value>, s: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&airlock_core::action::CanonicalObject(m), s)
}

fn canonical_members<S: serde::Serializer>(
    m: &std::collections::BTreeMap<String, Value>,
    s: S,
) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&airlock_core::action::CanonicalMembers(m), s)
}

impl DecisionDetails {
    pub(crate) fn new(
        caller: &Caller,
        action: &Action,
        fingerprint: &airlock_core::Fingerprint,
        context: Map<String, Value>,
        decision: &Decision,
        policy_version: &str,
    ) -> Self {
        Self {
            action: action.action.as_str().to_owned(),
            breakglass: None,
            context,
            existing_request: None,
            fingerprint: fingerprint.to_string(),
            key: caller.key_id.clone(),
            message: match decision {
                Decision::Deny { message, .. } => Some(message.clone()),
                _ => None,
            },
            outcome: decision.outcome(),
            params: action.params.clone(),
            policies: decision.policies().to_vec(),
            policy_version: policy_version.to_owned(),
            principal: action.principal.as_str().to_owned(),
            refused: None,
            request: None,
            resource: DecidedResource {
                id: action.resource.id.as_str().to_owned(),
                kind: action.resource.kind.as_str().to_owned(),
            },
        }
    }

    /// The record's details, canonical.
    pub(crate) fn details(&self) -> Details {
        Details::from_sorted(self, self.request.clone())
    }
}

impl Airlock {
    /// Decides an action, records the decision, and creates (or returns
    /// the pending) request when approval is required.
    pub async fn check(
        &self,
        caller: &Caller,
        body: CheckBody,
        peer: Option<IpAddr>,
    ) -> Result<CheckOutcome, ApiError> {
        let started = Instant::now();
        let (max_pending, rate, burst) = {
            let cfg = self.config.load();
            (
                cfg.server.max_pending_per_principal.get(),
                cfg.server.checks_per_second_per_key,
                cfg.server.check_burst_per_key,
            )
        };
        // An enforcer checks for everyone behind its proxy: its allowance
        // is counted per end user, so one of them cannot use it up for all.
        // Counted before anything is recorded, refusals included (a check
        // naming another principal wrote a record each, unlimited; found
        // by a review).
        if caller.is_enforcer() {
            let who = body.principal.as_ref().unwrap_or(&caller.user);
            let key = format!("{}\u{0}{}", caller.key_id, who.as_str());
            self.check_limiter.check(&key, rate, burst)?;
        } else {
            self.check_limiter.check(&caller.key_id, rate, burst)?;
        }
        let principal = match body.principal {
            Some(p) if p != caller.user && !caller.is_enforcer() => {
                let e = ApiError::forbidden(format!(
                    "only enforcer keys may check on behalf of another principal ({p})"
                ));
                self.check_refused(caller, (&body.action, &body.resource), false, &e)
                    .await?;
                return Err(e);
            }
            Some(p) => p,
            None => caller.user.clone(),
        };
        let reason = body.reason.filter(|r| !airlock_core::display::is_blank(r));
        if reason.as_ref().is_some_and(|r| r.len() > MAX_REASON) {
            return Err(ApiError::BadRequest(format!(
                "reason is longer than {MAX_REASON} bytes"
            )));
        }
        let mut action = Action {
            principal,
            action: body.action,
            resource: body.resource,
            params: body.params,
            context: body.context,
        };
        let (loaded, context, decision) = self
            .screen_and_decide(caller, &mut action, peer, false)
            .await?;
        let fingerprint = action.fingerprint();
        let t = now();
        let actor = caller.user.to_string();
        let mut details = DecisionDetails::new(
            caller,
            &action,
            &fingerprint,
            context,
            &decision,
            loaded.engine.version(),
        );

        let outcome = match decision {
            Decision::Allow { policies } => {
                let audit_seq = self.record_decision(actor, &details, t).await?;
                CheckOutcome::Allow {
                    policies,
                    audit_seq,
                }
            }
            Decision::Deny { policies, message } => {
                let audit_seq = self.record_decision(actor, &details, t).await?;
                CheckOutcome::Deny {
                    policies,
                    message,
                    audit_seq,
                }
            }
            Decision::ApprovalRequired {
                policies,
                requirement,
            } => {
                if requirement.reason_required && reason.is_none() {
                    // The policy that asks for the reason, not merely
                    // the first that asks for approval.
                    let p = requirement
                        .thresholds
                        .iter()
                        .find(|t| loaded.engine.asks_reason(&t.policy_id))
                        .or(requirement.thresholds.first())
                        .map(|t| t.policy_id.clone())
                        .unwrap_or_default();
                    // The decision is on record with why nothing was asked.
                    details.refused = Some(ErrorCode::ReasonRequired);
                    self.record_decision(actor, &details, t).await?;
                    return Err(ApiError::ReasonRequired(p));
                }
                let decision_details = details;
                let request = Request {
                    id: RequestId::new(),
                    status: RequestStatus::Pending,
                    fingerprint,
                    requirement: requirement.clone(),
                    policies: policies.clone(),
                    reason,
                    reviews: Vec::new(),
                    created_at: t,
                    expires_at: t + requirement.request_ttl.as_chrono(),
                    grant: None,
                    action,
                };
                let hooks = self.hooks();
                let mail = self.mail();
                let approvers = loaded.clone();
                let principal_name = request.action.principal.to_string();
                let request = self
                    .store
                    .write(move |tx| {
                        let existing = tx
                            .find_pending(&request.action.principal, &request.fingerprint)?
                            .map(|id| tx.get_request(&id))
                            .transpose()?
                            .flatten();
                        // A pending request is reused only when what it
                        // already demands covers this decision; otherwise it
                        // is raised to demand both, so approvals given for a
                        // laxer description never carry a riskier one.
                        let (mut req, fate, asked) = match existing {
                            Some(req) if req.requirement.covers(&request.requirement) => {
                                (req, Fate::Reused, None)
                            }
                            Some(req) => (req, Fate::Raised, Some(request)),
                            None => {
                                // Counted in the writer's transaction, so
                                // racing checks cannot overshoot the cap.
                                let pending = tx.count_pending(&request.action.principal)?;
                                if pending >= i64::from(max_pending) {
                                    // On record, with why no request was made.
                                    let mut d = decision_details;
                                    d.refused = Some(ErrorCode::TooManyPending);
                                    tx.append_audit(
                                        NewAuditRecord {
                                            kind: AuditKind::Decision,
                                            actor,
                                            subject: String::new(),
                                            details: d.details(),
                                        },
                                        t,
                                    )?;
                                    return Ok(None);
                                }
                                tx.insert_request(&request)?;
                                (request, Fate::Created, None)
                            }
                        };
                        let created = fate == Fate::Created;
                        if let Some(asked) = &asked {
                            req.requirement = req.requirement.raised(&asked.requirement);
                            for p in &asked.policies {
                                if !req.policies.contains(p) {
                                    req.policies.push(p.clone());
                                }
                            }
                            // The write lock is held since the read above, so
                            // the request is still pending; if not, refuse.
                            if !tx.raise_requirement(&req.id, &req.requirement, &req.policies)? {
                                return Err(StoreError::Db(format!(
                                    "request {} left pending while its requirement was raised",
                                    req.id
                                )));
                            }
                        }
                        let mut d = decision_details;
                        d.request = Some(req.id.to_string());
                        d.existing_request = Some(!created);
                        tx.append_audit(
                            NewAuditRecord {
                                kind: AuditKind::Decision,
                                actor: actor.clone(),
                                subject: req.id.to_string(),
                                details: d.details(),
                            },
                            t,
                        )?;
                        if fate == Fate::Raised {
                            tx.append_audit(
                                NewAuditRecord {
                                    kind: AuditKind::RequirementRaised,
                                    actor: actor.clone(),
                                    subject: req.id.to_string(),
                                    details: json!({
                                        "thresholds": &req.requirement.thresholds,
                                        "grant_ttl": req.requirement.grant_ttl,
                                        "max_uses": req.requirement.max_uses,
                                        "policies": &req.policies,
                                    })
                                    .into(),
                                },
                                t,
                            )?;
                            tx.changed(req.id);
                            let data =
                                notify::RequestEventData::new(&req, RequestStatus::Pending, None)
                                    .with_thresholds(&req);
                            notify::emit(tx, &hooks, "request.raised", notify::event_data(data))?;
                            mail.to_approvers(tx, &req, &approvers.directory)?;
                        }
                        if created {
                            tx.append_audit(
                                NewAuditRecord {
                                    kind: AuditKind::RequestCreated,
                                    actor,
                                    subject: req.id.to_string(),
                                    details: json!({
                                        "thresholds": &req.requirement.thresholds,
                                        "expires_at": airlock_store::time::fmt(req.expires_at),
                                        "reason": &req.reason,
                                    })
                                    .into(),
                                },
                                t,
                            )?;
                            tx.changed(req.id);
                            let data =
                                notify::RequestEventData::new(&req, RequestStatus::Pending, None)
                                    .with_thresholds(&req)
                                    .with_expiry(&req);
                            notify::emit(tx, &hooks, "request.created", notify::event_data(data))?;
                            mail.to_approvers(tx, &req, &approvers.directory)?;
                        }
                        Ok::<_, StoreError>(Some((req, created)))
                    })
                    .await
                    .map_err(ApiError::Audit)?;
                let Some((request, created)) = request else {
                    return Err(ApiError::TooManyPending {
                        principal: principal_name,
                        limit: max_pending,
                    });
                };
                if created {
                    let _ = self.timers.send((request.expires_at, request.id));
                }
                CheckOutcome::ApprovalRequired {
                    policies,
                    request: Box::new(request),
                }
            }
        };
        self.metrics.observe_decision(
            match &outcome {
                CheckOutcome::Allow { .. } => "allow",
                CheckOutcome::Deny { .. } => "deny",
                CheckOutcome::ApprovalRequired { .. } => "approval_required",
            },
            started.elapsed(),
        );
        Ok(outcome)
    }

    /// Counts a review, break-glass or grant completion against its key's
    /// allowance (the check rate, kept apart from checks): each may put a
    /// refusal on record, which must not be had without limit.
    pub(crate) fn count_action(&self, caller: &Caller, what: &str) -> Result<(), ApiError> {
        let (rate, burst) = {
            let cfg = self.config.load();
            (
                cfg.server.checks_per_second_per_key,
                cfg.server.check_burst_per_key,
            )
        };
        self.check_limiter
            .check(&format!("{}\u{0}{what}", caller.key_id), rate, burst)
    }

    /// Puts on record a check or break-glass refused for what its caller
    /// claimed (another principal, a trusted fact, a glass it may not
    /// break): attempts to get around a decision leave a trace. A failed
    /// append is the answer instead (503), as for decisions.
    pub(crate) async fn check_refused(
        &self,
        caller: &Caller,
        (action, resource): (&airlock_core::ActionName, &airlock_core::Resource),
        breakglass: bool,
        refusal: &ApiError,
    ) -> Result<(), ApiError> {
        let rec = NewAuditRecord {
            kind: AuditKind::CheckRefused,
            actor: caller.user.to_string(),
            subject: String::new(),
            details: json!({
                "code": refusal.code(),
                "message": refusal.to_string(),
                "action": action.as_str(),
                "resource": format!("{}:{}", resource.kind, resource.id),
                "breakglass": breakglass,
                "key": caller.key_id,
            })
            .into(),
        };
        self.store
            .append_audit(rec, now())
            .await
            .map(|_| ())
            .map_err(ApiError::Audit)
    }

    /// Appends the decision record; an error here means no answer but 503.
    /// What a check and break-glass do first: the caller's facts
    /// screened, the context computed, and the action decided by the
    /// policies loaded now (returned with them).
    pub(crate) async fn screen_and_decide(
        &self,
        caller: &Caller,
        action: &mut Action,
        peer: Option<IpAddr>,
        breakglass: bool,
    ) -> Result<(std::sync::Arc<super::Loaded>, Map<String, Value>, Decision), ApiError> {
        if let Err(e) = self.screen_facts(caller, action) {
            self.check_refused(caller, (&action.action, &action.resource), breakglass, &e)
                .await?;
            return Err(e);
        }
        let loaded = self.loaded.load_full();
        let context = self.context_for(action, &loaded.engine, peer).await?;
        let decision = loaded
            .engine
            .decide(action, context.clone())
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        Ok((loaded, context, decision))
    }

    pub(crate) async fn record_decision(
        &self,
        actor: String,
        details: &DecisionDetails,
        t: chrono::DateTime<chrono::Utc>,
    ) -> Result<i64, ApiError> {
        let rec = NewAuditRecord {
            kind: AuditKind::Decision,
            actor,
            subject: String::new(),
            details: details.details(),
        };
        self.store
            .append_audit(rec, t)
            .await
            .map(|r| r.seq)
            .map_err(ApiError::Audit)
    }

    /// Whether a context fact (`rows`, `dlp.card`) was checked: computed
    /// by Airlock, or trusted (`[policy] trusted_context`, so only an
    /// enforcer key can have stated it). Anything else is the caller's
    /// word, and the console says so.
    pub fn fact_is_checked(&self, fact: &str) -> bool {
        let top = fact.split('.').next().unwrap_or(fact);
        COMPUTED_CONTEXT.contains(&top)
            || top == "country"
            || self
                .config
                .load()
                .policy
                .trusted_context
                .iter()
                .any(|t| t == top)
    }

    /// Who may state which facts: a `user` key's claims of facts Airlock
    /// computes are dropped (the connection's address stands for
    /// `source_ip`), and its claims of trusted facts are refused, so a user
    /// cannot talk their way past a network `forbid` or a row limit.
    pub(crate) fn screen_facts(
        &self,
        caller: &Caller,
        action: &mut Action,
    ) -> Result<(), ApiError> {
        // No GeoIP database is supported yet: nobody may state a country.
        action.context.remove("country");
        for computed in COMPUTED_CONTEXT {
            // An enforcer passes the end user's address; every other
            // computed fact is Airlock's, also when an enforcer states it
            // (it was ignored by the decision, but kept in REQUEST.context
            // for reviewers to read as if policy had used it).
            if !(caller.is_enforcer() && computed == "source_ip") {
                action.context.remove(computed);
            }
        }
        if caller.is_enforcer() {
            return Ok(());
        }
        let config = self.config.load();
        let trusted = &config.policy.trusted_context;
        if let Some(k) = action.context.keys().find(|k| trusted.contains(k)) {
            return Err(ApiError::UntrustedContext(format!(
                "context.{} is a trusted fact ([policy] trusted_context): only an enforcer key may state it",
                k.escape_debug()
            )));
        }
        if !action.resource.attrs.is_empty()
            && trusted
                .iter()
                .any(|t| t == crate::config::TRUSTED_RESOURCE_ATTRS)
        {
            return Err(ApiError::UntrustedContext(
                "resource.attrs are trusted facts ([policy] trusted_context): only an enforcer key may state them; Airlock takes them from entities.json".into(),
            ));
        }
        Ok(())
    }

    /// The caller's context plus what Airlock computes. Computed keys
    /// override the caller's: a client cannot claim it is 10 a.m.
    pub(crate) async fn context_for(
        &self,
        action: &Action,
        engine: &airlock_policy::PolicyEngine,
        peer: Option<IpAddr>,
    ) -> Result<Map<String, Value>, ApiError> {
        let mut ctx = action.context.clone();
        let local = chrono::Utc::now().with_timezone(&self.tz);
        ctx.insert("local_hour".into(), json!(local.hour()));
        ctx.insert("weekday".into(), json!(local.weekday().to_string()));
        // source_ip is what the enforcement point saw; without one, the
        // address this call came from.
        let ip = match ctx.get("source_ip") {
            Some(Value::String(s)) => Some(s.parse::<IpAddr>().map_err(|_| {
                ApiError::BadRequest(format!("context.source_ip {s:?} is not an IP address"))
            })?),
            Some(_) => {
                return Err(ApiError::BadRequest(
                    "context.source_ip must be a string".into(),
                ))
            }
            None => peer,
        };
        if let Some(ip) = ip {
            ctx.insert(
                "source_ip".into(),
                json!({"__extn": {"fn": "ip", "arg": ip.to_string()}}),
            );
        }
        // These cost a store read; only pay when a policy can look at them.
        if engine.mentions("sensitive_actions_last_hour") {
            let p = action.principal.clone();
            let since = now() - chrono::Duration::hours(1);
            let n = self
                .store
                .read(move |r| r.count_requests_since(&p, since))
                .await?;
            ctx.insert("sensitive_actions_last_hour".into(), json!(n));
        } else {
            ctx.remove("sensitive_actions_last_hour");
        }
        if engine.mentions("granted_before") {
            let (p, a, t, i) = (
                action.principal.clone(),
                action.action.to_string(),
                action.resource.kind.to_string(),
                action.resource.id.to_string(),
            );
            let b = self
                .store
                .read(move |r| r.granted_before(&p, &a, &t, &i))
                .await?;
            ctx.insert("granted_before".into(), json!(b));
        } else {
            ctx.remove("granted_before");
        }
        Ok(ctx)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{json, Map, Value};

    use super::{Caller, DecisionDetails};
    use airlock_api::ErrorCode;
    use airlock_core::{Action, Decision, RecordedJson};

    /// JSON values as callers send them: nested, with keys that sort
    /// differently as bytes and as text, escapes and whole numbers.
    fn value() -> impl Strategy<Value = Value> {
        let key = prop::sample::select(vec!["a", "B", "é", "a\"b", "z", "10", "9", "", "_"]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            // Only exact numbers are bound and recorded.
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            "\\PC{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..4).prop_map(|kv| {
                    Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                }),
            ]
        })
    }

    proptest! {
        /// The decision record is written from typed fields, not through
        /// a sorted JSON value: it must be exactly the canonical text of
        /// its own value (the chain hashes these bytes), on every outcome
        /// and with every optional member.
        #[test]
        fn decision_details_are_canonical(
            params in prop::collection::btree_map("[a-z\u{e9}]{0,3}", value(), 0..4),
            context in prop::collection::vec(("[a-zA-Z_]{0,4}", value()), 0..5),
            outcome in 0..3u8,
            extras in any::<(bool, bool, bool, bool)>(),
        ) {
            let action: Action = serde_json::from_value(json!({
                "principal": "alice", "action": "export",
                "resource": {"type": "Table", "id": "cust\"omers"},
                "params": params,
            })).unwrap();
            let decision = match outcome {
                0 => Decision::Allow { policies: vec!["p1".into(), "p0".into()] },
                1 => Decision::Deny { policies: vec![], message: "no \u{e9}".into() },
                _ => Decision::ApprovalRequired {
                    policies: vec!["p".into()],
                    requirement: airlock_core::Requirement {
                        thresholds: vec![],
                        request_ttl: airlock_core::decision::DEFAULT_REQUEST_TTL,
                        grant_ttl: airlock_core::decision::DEFAULT_GRANT_TTL,
                        max_uses: std::num::NonZeroU32::MIN,
                        reason_required: false,
                        step_up: None,
                        breakglass: false,
                    },
                },
            };
            let caller = Caller {
                user: airlock_core::UserName::parse("alice").unwrap(),
                role: airlock_store::Role::User,
                key_id: "key_1".into(),
            };
            let context: Map<String, Value> = context.into_iter().collect();
            let mut d = DecisionDetails::new(
                &caller, &action, &action.fingerprint(), context, &decision, "v1",
            );
            if extras.0 { d.breakglass = Some(true); }
            if extras.1 { d.refused = Some(ErrorCode::ReasonRequired); }
            if extras.2 { d.request = Some("req_1".into()); }
            if extras.3 { d.existing_request = Some(false); }
            let written = d.details();
            let value = serde_json::to_value(&d).unwrap();
            let canonical = RecordedJson::canonical(&value);
            prop_assert_eq!(written.text().get(), canonical.get());
            prop_assert_eq!(
                &airlock_core::Details::from(value.clone()),
                &written,
                "the request it names is the one in its text"
            );
            prop_assert_eq!(&value["params"], &json!(action.params));
        }
    }
}
