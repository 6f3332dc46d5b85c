//! REQUEST as the API shows it, with the grant token minted on the way out
//! (tokens are never stored) and only for those allowed to hold it.

use airlock_core::{Request, Threshold, UserName};
use airlock_keys::GrantClaims;
use airlock_policy::Directory;
use airlock_store::time::fmt;
use serde_json::{json, Value};

use super::{Airlock, Caller};

/// One threshold as shown: its groups and quorum, the approvals so far, and
/// who may approve (everyone in the groups but the requester).
pub(crate) fn threshold_view(
    directory: &Directory,
    t: &Threshold,
    approvals: u32,
    requester: &UserName,
) -> Value {
    let eligible: Vec<&str> = directory
        .members_of(&t.groups)
        .filter(|u| *u != requester)
        .map(|u| u.as_str())
        .collect();
    json!({
        "groups": t.groups,
        "quorum": t.quorum.get(),
        "approvals": approvals,
        "policy_id": t.policy_id,
        "eligible": eligible,
    })
}

impl Airlock {
    /// A resource's attributes as decisions see them: the caller's, with
    /// `entities.json` winning.
    pub fn resource_attrs(&self, res: &airlock_core::Resource) -> Value {
        let mut attrs = res.attrs.clone();
        let loaded = self.loaded.load();
        if let Some(Value::Object(known)) = loaded
            .engine
            .resource_attrs(res.kind.as_str(), res.id.as_str())
        {
            attrs.extend(known);
        }
        Value::Object(attrs)
    }

    /// The contract's REQUEST object, as `caller` may see it.
    pub fn view(&self, req: &Request, caller: &Caller) -> Value {
        let loaded = self.loaded.load();
        let directory = &loaded.directory;
        let approvals = req.approvals(|u, g| directory.is_member(u, g));
        let thresholds: Vec<Value> = req
            .requirement
            .thresholds
            .iter()
            .zip(approvals)
            .map(|(t, n)| threshold_view(directory, t, n, &req.action.principal))
            .collect();
        let reviews: Vec<Value> = req
            .reviews
            .iter()
            .map(|r| {
                json!({
                    "reviewer": r.reviewer, "verdict": r.verdict.as_str(), "reason": r.reason,
                    "channel": r.channel, "at": fmt(r.at),
                })
            })
            .collect();
        let mut v = json!({
            "id": req.id.to_string(),
            "status": req.status.as_str(),
            "principal": req.action.principal,
            "action": req.action.action,
            "resource": req.action.resource,
            "params": req.action.params,
            "context": req.action.context,
            "reason": req.reason,
            "fingerprint": req.fingerprint.to_string(),
            "policies": req.policies,
            "thresholds": thresholds,
            "reviews": reviews,
            "created_at": fmt(req.created_at),
            "expires_at": fmt(req.expires_at),
            "url": format!("{}/requests/{}", self.public_url(), req.id),
        });
        if let Some(g) = &req.grant {
            let mut grant = json!({
                "grant_id": g.grant_id.to_string(),
                "expires_at": fmt(g.expires_at),
                "max_uses": g.max_uses,
                "uses": g.uses,
                "revoked": g.revoked,
                "outcome": g.outcome,
            });
            let holder = caller.user == req.action.principal || caller.is_enforcer();
            let live = !g.revoked
                && g.uses < g.max_uses
                && req.status == airlock_core::RequestStatus::Approved;
            if holder && live {
                let claims = GrantClaims {
                    jti: g.grant_id,
                    req: req.id,
                    sub: req.action.principal.clone(),
                    fp: req.fingerprint,
                    iat: req.created_at,
                    exp: g.expires_at,
                    max_uses: g.max_uses,
                };
                match self.keys.sign_grant(&claims) {
                    Ok(token) => grant["token"] = json!(token),
                    Err(e) => tracing::error!(error = %e, "cannot sign grant token"),
                }
            }
            v["grant"] = grant;
        }
        v
    }
}
