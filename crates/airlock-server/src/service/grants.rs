//! Execute: consuming a grant for exactly its action, and reporting the
//! outcome. Refusals are recorded as faithfully as successes.

use airlock_api::{Disposition, ErrorCode, GrantEventData};
use airlock_core::{AuditKind, Decision, GrantId, NewAuditRecord, RequestStatus};
use airlock_keys::{GrantClaims, GrantError};
use airlock_store::time::now;
use airlock_store::{ConsumeOutcome, StoreError};
use serde_json::{json, Value};

use super::requests::transition;
use super::{notify, Airlock, Caller};
use crate::ApiError;

pub use airlock_api::{CompleteBody, ConsumeBody, FindingsBody, FindingsResponse};

impl Airlock {
    /// Spends one use of a grant for `action`. Verifies the token offline
    /// first, then in one transaction: the request is still approved, its
    /// approvals still count under today's group membership, and one use is
    /// left (a conditional update, so racing consumers cannot both win).
    pub async fn consume(
        &self,
        caller: &Caller,
        body: ConsumeBody,
        peer: Option<std::net::IpAddr>,
    ) -> Result<(GrantId, u32), ApiError> {
        let t = now();
        let fingerprint = body.action.fingerprint();
        let claims = match GrantClaims::verify(&self.public_keys().grant, &body.token, t) {
            Ok(c) => c,
            Err(e) => {
                let (code, message) = match e {
                    GrantError::Expired(at) => {
                        (ErrorCode::GrantExpired, format!("grant expired at {at}"))
                    }
                    _ => (
                        ErrorCode::InvalidGrant,
                        "not a valid grant token".to_owned(),
                    ),
                };
                self.refuse(caller, None, code, &message, fingerprint.to_string())
                    .await?;
                return Err(ApiError::grant(code, message));
            }
        };
        if !(caller.is_enforcer() || caller.user == claims.sub) {
            // On record: a token in the wrong hands.
            let message = "only the grant's principal or an enforcer key may consume it";
            self.refuse(
                caller,
                Some(claims.jti),
                ErrorCode::Forbidden,
                message,
                fingerprint.to_string(),
            )
            .await?;
            return Err(ApiError::forbidden(message));
        }
        if body.action.principal != claims.sub || fingerprint != claims.fp {
            let message = "this grant was approved for a different action".to_owned();
            self.refuse(
                caller,
                Some(claims.jti),
                ErrorCode::ActionMismatch,
                &message,
                fingerprint.to_string(),
            )
            .await?;
            return Err(ApiError::grant(ErrorCode::ActionMismatch, message));
        }
        // The facts at consumption are decided again: the grant covers the
        // action only if its approvals meet what policy asks for the action
        // as it is described now (a million rows where ten were approved
        // needs the approvals a million rows needs).
        let mut action = body.action;
        let loaded = self.loaded.load_full();
        let context = match self.screen_facts(caller, &mut action) {
            Ok(()) => self.context_for(&action, &loaded.engine, peer).await,
            Err(e) => Err(e),
        };
        let context = match context {
            Ok(c) => c,
            Err(e) => {
                // Refused before the grant was looked at: still on record.
                self.refuse(
                    caller,
                    Some(claims.jti),
                    e.code(),
                    &e.to_string(),
                    fingerprint.to_string(),
                )
                .await?;
                return Err(e);
            }
        };
        let now_needs = match loaded.engine.decide(&action, context.clone()) {
            Ok(Decision::Allow { .. }) => Ok(None),
            Ok(Decision::ApprovalRequired { requirement, .. }) => Ok(Some(requirement)),
            Ok(Decision::Deny { message, .. }) => Err(format!(
                "policy denies this action as it is described now: {message}"
            )),
            Err(e) => Err(format!(
                "policy cannot decide this action as described: {e}"
            )),
        };
        let now_needs = match now_needs {
            Ok(t) => t,
            Err(message) => {
                self.refuse(
                    caller,
                    Some(claims.jti),
                    ErrorCode::ActionMismatch,
                    &message,
                    fingerprint.to_string(),
                )
                .await?;
                return Err(ApiError::grant(ErrorCode::ActionMismatch, message));
            }
        };
        let actor = caller.user.to_string();
        let key = caller.key_id.clone();
        let by_enforcer = caller.is_enforcer();
        let gid = claims.jti;
        let hooks = self.hooks();
        let breakglass_groups = self.config.load().breakglass.groups.clone();
        let result = self
            .store
            .write(move |tx| {
                let Some(row) = tx.get_grant(&gid)? else {
                    return refuse_in(tx, &actor, None, gid, ErrorCode::InvalidGrant, "unknown grant".into(), t);
                };
                let Some(req) = tx.get_request(&row.request_id)? else {
                    return refuse_in(tx, &actor, None, gid, ErrorCode::InvalidGrant, "unknown request".into(), t);
                };
                if req.status == RequestStatus::Revoked || row.grant.revoked {
                    return refuse_in(tx, &actor, Some(req.id), gid, ErrorCode::GrantRevoked, "the grant was revoked".into(), t);
                }
                // A break-glass grant stands without approvals (it is
                // reviewed after the fact); policy still decided it above.
                let breakglass = req.requirement.breakglass;
                // It stands on its holder's membership, as an approval
                // stands on its reviewers': gone with it.
                if breakglass
                    && !breakglass_groups
                        .iter()
                        .any(|g| loaded.directory.is_member(&req.action.principal, g))
                {
                    return refuse_in(
                        tx,
                        &actor,
                        Some(req.id),
                        gid,
                        ErrorCode::GrantRevoked,
                        "the break-glass grant's holder is no longer in a [breakglass] group".into(),
                        t,
                    );
                }
                if !breakglass && !req.thresholds_met(|u, g| loaded.directory.is_member(u, g)) {
                    // A reviewer left an approver group since approving:
                    // their approval no longer counts.
                    return refuse_in(
                        tx,
                        &actor,
                        Some(req.id),
                        gid,
                        ErrorCode::GrantRevoked,
                        "the approvals no longer meet the request's requirement: an approver has left their group, or an approval lacks the step-up it asks for".into(),
                        t,
                    );
                }
                if let Some(now) = &now_needs {
                    if !breakglass && !req.meets(now, |u, g| loaded.directory.is_member(u, g)) {
                        return refuse_in(
                            tx,
                            &actor,
                            Some(req.id),
                            gid,
                            ErrorCode::ActionMismatch,
                            "the approvals do not meet what policy requires for this action as it is described now (its context asks for more approvers, or for a step-up they did not pass)".into(),
                            t,
                        );
                    }
                    // The grant's own terms must be no looser than what
                    // policy asks now: uses, lifetime, and a reason.
                    let terms = &req.requirement;
                    if now.max_uses < terms.max_uses
                        || now.grant_ttl < terms.grant_ttl
                        || (now.reason_required && req.reason.is_none())
                    {
                        return refuse_in(
                            tx,
                            &actor,
                            Some(req.id),
                            gid,
                            ErrorCode::ActionMismatch,
                            "the grant is looser than what policy requires for this action as it is described now (fewer uses, a shorter lifetime, or a reason)".into(),
                            t,
                        );
                    }
                }
                let outcome = tx.consume_grant(&gid, t, by_enforcer)?;
                let (code, message) = match outcome {
                    ConsumeOutcome::Consumed { uses_left } => {
                        tx.append_audit(
                            NewAuditRecord {
                                kind: AuditKind::GrantConsumed,
                                actor: actor.clone(),
                                subject: gid.to_string(),
                                details: json!({"request": req.id.to_string(), "uses_left": uses_left, "key": key, "context": Value::Object(context)}).into(),
                            },
                            t,
                        )?;
                        if uses_left == 0 {
                            transition(tx, &req, RequestStatus::Consumed, &actor, json!({}))?;
                        } else {
                            tx.changed(req.id);
                        }
                        notify::emit(
                            tx,
                            &hooks,
                            "grant.consumed",
                            notify::event_data(GrantEventData { request: req.id, grant: gid, uses_left: Some(uses_left), outcome: None, by: actor.clone() }),
                        )?;
                        return Ok(Ok((req.id, uses_left)));
                    }
                    ConsumeOutcome::Spent => (ErrorCode::GrantSpent, "every use of this grant is spent".to_owned()),
                    ConsumeOutcome::Revoked => (ErrorCode::GrantRevoked, "the grant was revoked".to_owned()),
                    ConsumeOutcome::Expired => (ErrorCode::GrantExpired, "the grant has expired".to_owned()),
                    ConsumeOutcome::Unknown => (ErrorCode::InvalidGrant, "unknown grant".to_owned()),
                };
                refuse_in(tx, &actor, Some(req.id), gid, code, message, t)
            })
            .await?;
        match result {
            Ok((_, uses_left)) => Ok((gid, uses_left)),
            Err((code, message)) => Err(ApiError::grant(code, message)),
        }
    }

    async fn refuse(
        &self,
        caller: &Caller,
        grant: Option<GrantId>,
        code: ErrorCode,
        message: &str,
        fp: String,
    ) -> Result<(), ApiError> {
        let rec = NewAuditRecord {
            kind: AuditKind::GrantRefused,
            actor: caller.user.to_string(),
            subject: grant.map(|g| g.to_string()).unwrap_or_default(),
            details:
                json!({"code": code, "message": message, "fingerprint": fp, "key": caller.key_id})
                    .into(),
        };
        let t = now();
        self.store
            .append_audit(rec, t)
            .await
            .map(|_| ())
            .map_err(ApiError::Audit)
    }

    /// Records the outcome of a consumed use; the grant closes when its last
    /// use reports.
    pub async fn complete(
        &self,
        caller: &Caller,
        gid: GrantId,
        body: CompleteBody,
    ) -> Result<(), ApiError> {
        // An enforcer completes what it consumed, for everyone behind it:
        // its completions are not limited (one user's many would cost
        // everyone's records; found by a review).
        if !caller.is_enforcer() {
            self.count_action(caller, "complete")?;
        }
        let caller = caller.clone();
        let hooks = self.hooks();
        self
            .store
            .write(move |tx| {
                let t = now();
                let Some(row) = tx.get_grant(&gid)? else {
                    return Err(ApiError::NotFound(format!("no grant {gid}")));
                };
                let admin_closing = row.enforced && caller.is_admin();
                if !(caller.is_enforcer() || caller.user == row.principal || admin_closing) {
                    // On record: someone holding another user's grant id.
                    let message = "only the grant's principal or an enforcer key may complete it";
                    let _recorded = refuse_in(tx, caller.user.as_str(), Some(row.request_id), gid, ErrorCode::Forbidden, message.into(), t)?;
                    return Ok(Err(ApiError::forbidden(message)));
                }
                if row.enforced && !(caller.is_enforcer() || caller.is_admin()) {
                    // A proxy spent the use and reports what the upstream
                    // answered; the principal reporting first would close
                    // it with their own word for the outcome. An admin may
                    // close one a proxy never reported (it crashed), on
                    // record as theirs.
                    let message = "a use consumed by an enforcer (a proxy) is completed by an enforcer or admin key";
                    let _recorded = refuse_in(tx, caller.user.as_str(), Some(row.request_id), gid, ErrorCode::Forbidden, message.into(), t)?;
                    return Ok(Err(ApiError::forbidden(message)));
                }
                if !tx.complete_grant(&gid, body.outcome.as_str())? {
                    return Err(ApiError::wrong_state("nothing to complete: every consumed use has reported its outcome already, or none was consumed"));
                }
                tx.append_audit(
                    NewAuditRecord {
                        kind: AuditKind::GrantCompleted,
                        actor: caller.user.to_string(),
                        subject: gid.to_string(),
                        details: json!({"request": row.request_id.to_string(), "outcome": body.outcome, "detail": body.detail}).into(),
                    },
                    t,
                )?;
                tx.changed(row.request_id);
                notify::emit(
                    tx,
                    &hooks,
                    "grant.completed",
                    notify::event_data(GrantEventData { request: row.request_id, grant: gid, uses_left: None, outcome: Some(body.outcome.as_str().to_owned()), by: caller.user.to_string() }),
                )?;
                let closed = tx.get_grant(&gid)?.is_some_and(|g| g.completed);
                if let Some(req) = tx.get_request(&row.request_id)? {
                    if closed && req.status == RequestStatus::Consumed {
                        transition(tx, &req, RequestStatus::Completed, caller.user.as_str(), json!({"outcome": body.outcome}))?;
                    }
                }
                Ok(Ok(row.request_id))
            })
            .await??;
        Ok(())
    }
}

impl Airlock {
    /// Puts on record what a proxy's DLP found in an answer no grant
    /// covers (enforcer keys only: a user key could fill the log with
    /// made-up findings). Counts by type only; a failed append is an error,
    /// so a proxy that must record before it answers can refuse instead.
    pub async fn report_findings(
        &self,
        caller: &Caller,
        body: FindingsBody,
    ) -> Result<FindingsResponse, ApiError> {
        if !caller.is_enforcer() {
            return Err(ApiError::forbidden(
                "only enforcer keys report DLP findings",
            ));
        }
        let details = findings_details(&body).map_err(ApiError::BadRequest)?;
        let rec = NewAuditRecord {
            kind: AuditKind::DlpFindings,
            actor: caller.user.to_string(),
            subject: body.principal.to_string(),
            details: details.into(),
        };
        // The decisions it names are in the log already (a proxy names the
        // ones it was answered); one past the head is made up. The head only
        // grows, so one read before the append is enough.
        if let Some(&last) = body.decisions.iter().max() {
            let (head, _) = self
                .store
                .read(|r| r.audit_head())
                .await
                .map_err(ApiError::Audit)?;
            if last > head {
                return Err(ApiError::BadRequest(format!(
                    "decision {last} is not in the audit log (its last record is {head})"
                )));
            }
        }
        let written = self
            .store
            .append_audit(rec, now())
            .await
            .map_err(ApiError::Audit)?;
        Ok(FindingsResponse {
            audit_seq: written.seq,
        })
    }
}

/// Most targets and decisions one record keeps (a pipelined batch of SQL
/// statements can name more; the rest are cut, and the record says so).
const MAX_KEPT: usize = 64;
/// Most finding types one report may name: far more than the detectors.
const MAX_TYPES: usize = 256;

/// A findings report as it is recorded, or why it is refused: only what a
/// proxy could have sent (finding types named like detectors, positive
/// counts), so the record carries counts by type and nothing else. Long
/// lists of targets or decisions are cut rather than refused: the counts
/// must reach the log.
fn findings_details(body: &FindingsBody) -> Result<Value, String> {
    let proxy_ok = !body.proxy.is_empty()
        && body.proxy.len() <= 128
        && body.proxy.bytes().all(|b| b.is_ascii_graphic());
    if !proxy_ok {
        return Err("proxy must be 1 to 128 printable characters".into());
    }
    if body.targets.is_empty() {
        return Err("targets must name the action the answer was to".into());
    }
    if body.decisions.iter().any(|&d| d < 1) {
        return Err("decisions are audit sequence numbers, from 1".into());
    }
    // An answer DLP could not read is worth a record with nothing found,
    // whether it left (unscanned) or not (withheld).
    let least = usize::from(!matches!(
        body.disposition,
        Disposition::Unscanned | Disposition::Withheld
    ));
    if body.counts.len() < least || body.counts.len() > MAX_TYPES {
        return Err(format!(
            "counts must name {least} to {MAX_TYPES} finding types"
        ));
    }
    for (kind, n) in &body.counts {
        let named = !kind.is_empty()
            && kind.len() <= 64
            && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !named {
            return Err(format!(
                "{kind:?} is not a finding type (1 to 64 letters, digits or `_`)"
            ));
        }
        if *n == 0 {
            return Err(format!("the count of {kind} must be at least 1"));
        }
    }
    let total = body.counts.values().fold(0u64, |a, n| a.saturating_add(*n));
    let targets: Vec<Value> = body
        .targets
        .iter()
        .take(MAX_KEPT)
        .map(|t| {
            json!({
                "action": t.action,
                "resource": {"type": t.resource.kind, "id": t.resource.id},
            })
        })
        .collect();
    let decisions: Vec<i64> = body.decisions.iter().copied().take(MAX_KEPT).collect();
    let mut details = json!({
        "principal": body.principal,
        "proxy": body.proxy,
        "targets": targets,
        "decisions": decisions,
        "disposition": body.disposition.as_str(),
        "counts": body.counts,
        "total": total,
    });
    if body.targets.len() > MAX_KEPT || body.decisions.len() > MAX_KEPT {
        details["truncated"] = json!(true);
    }
    Ok(details)
}

type Refused = Result<Result<(airlock_core::RequestId, u32), (ErrorCode, String)>, ApiError>;

fn refuse_in(
    tx: &mut dyn airlock_store::WriteTx,
    actor: &str,
    request: Option<airlock_core::RequestId>,
    gid: GrantId,
    code: ErrorCode,
    message: String,
    t: chrono::DateTime<chrono::Utc>,
) -> Refused {
    tx.append_audit(
        NewAuditRecord {
            kind: AuditKind::GrantRefused,
            actor: actor.to_owned(),
            subject: gid.to_string(),
            // Filed under its request when it is known, so the refusal is
            // in the request's history.
            details: match request {
                Some(r) => json!({"code": code, "message": &message, "request": r.to_string()}),
                None => json!({"code": code, "message": &message}),
            }
            .into(),
        },
        t,
    )
    .map_err(|e: StoreError| ApiError::Audit(e))?;
    Ok(Err((code, message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(counts: serde_json::Value) -> FindingsBody {
        serde_json::from_value(json!({
            "principal": "alice", "proxy": "files", "disposition": "masked",
            "targets": [{"action": "download", "resource": {"type": "File", "id": "a.csv"}}],
            "decisions": [3], "counts": counts,
        }))
        .unwrap()
    }

    /// A report is recorded as counts by type with their total; anything
    /// that is not a finding type and a positive count is refused, so a
    /// value cannot ride in as a type's name.
    #[test]
    fn findings_are_counts_by_type_only() {
        let d = findings_details(&body(json!({"email": 2, "credit_card": 1}))).unwrap();
        assert_eq!(d["total"], 3);
        assert_eq!(d["disposition"], "masked");
        assert_eq!(
            d["targets"][0]["resource"],
            json!({"type": "File", "id": "a.csv"})
        );
        for bad in [
            json!({}),
            json!({"email": 0}),
            json!({"ann.lee@example.com": 1}),
            json!({"4111 1111 1111 1111": 1}),
            json!({"x".repeat(65): 1}),
        ] {
            assert!(findings_details(&body(bad.clone())).is_err(), "{bad}");
        }
        let mut b = body(json!({"email": 1}));
        b.proxy = "files; DROP".into();
        assert!(findings_details(&b).is_err());
        b.proxy = "files".into();
        let one = b.targets[0].clone();
        b.targets = vec![one; 100];
        b.decisions = (1..=100).collect();
        let cut = findings_details(&b).unwrap();
        assert_eq!(cut["targets"].as_array().unwrap().len(), MAX_KEPT);
        assert_eq!(cut["decisions"].as_array().unwrap().len(), MAX_KEPT);
        assert_eq!(cut["truncated"], true);
        b.targets.clear();
        assert!(findings_details(&b).is_err());
        let mut b = body(json!({"email": 1}));
        b.decisions = vec![0];
        assert!(findings_details(&b).is_err());
        assert!(
            serde_json::from_value::<FindingsBody>(json!({
                "principal": "alice", "proxy": "files", "disposition": "masked",
                "targets": [], "counts": {"email": 1}, "values": ["ann.lee@example.com"],
            }))
            .is_err(),
            "unknown fields are refused"
        );
    }
}
