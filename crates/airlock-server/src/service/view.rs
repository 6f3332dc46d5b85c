//! REQUEST as the API shows it (built from `airlock_api`'s types), and the
//! grant token, minted apart and only for those allowed to hold it: tokens
//! are never stored, and a view never mints one by itself.

use airlock_api::{CheckResponse, RequestView, ThresholdView};
use airlock_core::{Request, RequestStatus, Threshold, UserName};
use airlock_keys::GrantClaims;
use airlock_policy::Directory;
use serde_json::Value;

use super::{Airlock, Caller, CheckOutcome};

/// One threshold as shown: its groups and quorum, the approvals so far, and
/// who may approve (everyone in the groups but the requester).
pub(crate) fn threshold_view(
    directory: &Directory,
    t: &Threshold,
    approvals: u32,
    requester: &UserName,
) -> ThresholdView {
    let eligible: Vec<UserName> = directory
        .members_of(&t.groups)
        .filter(|u| *u != requester)
        .cloned()
        .collect();
    ThresholdView::new(t, approvals, eligible)
}

impl Airlock {
    /// A resource's attributes as decisions see them: those in
    /// `entities.json` for a resource listed there (the policy engine
    /// ignores what a caller claims about it), else the caller's.
    pub fn resource_attrs(&self, res: &airlock_core::Resource) -> Value {
        Value::Object(self.decided_attrs(res))
    }

    fn decided_attrs(&self, res: &airlock_core::Resource) -> serde_json::Map<String, Value> {
        let loaded = self.loaded.load();
        match loaded
            .engine
            .resource_attrs(res.kind.as_str(), res.id.as_str())
        {
            Some(Value::Object(known)) => known,
            // Listed with no attributes: the caller's are still ignored.
            Some(_) => serde_json::Map::new(),
            None => res.attrs.clone(),
        }
    }

    /// The contract's REQUEST object, with `token` in its grant if given:
    /// pass [`Airlock::grant_token`]'s answer for the reader, or `None`
    /// where no token may appear (console pages, chat).
    pub fn request_view(&self, req: &Request, token: Option<String>) -> RequestView {
        let loaded = self.loaded.load();
        let directory = &loaded.directory;
        let is_member = |u: &_, g: &_| directory.is_member(u, g);
        let approvals = if req.requirement.breakglass {
            // Reviewed after the fact, where no step-up is asked (the grant
            // stood without approvals): an approval then shows as one.
            let after = airlock_core::Requirement {
                step_up: None,
                ..req.requirement.clone()
            };
            req.approvals_for(&after, is_member)
        } else {
            req.approvals(is_member)
        };
        let thresholds = req
            .requirement
            .thresholds
            .iter()
            .zip(approvals)
            .map(|(t, n)| threshold_view(directory, t, n, &req.action.principal))
            .collect();
        let url = format!("{}/requests/{}", self.public_url(), req.id);
        let mut view = RequestView::new(req, thresholds, url, token);
        // An approver reading the API or the CLI sees what the decision
        // saw, as the console shows it: not a claim policy ignored.
        view.resource.attrs = self.decided_attrs(&req.action.resource);
        view
    }

    /// Mints the grant token of `req` for `caller`, if they may hold it: the
    /// requester or an enforcer key, while the grant is live (approved, not
    /// revoked, a use left). A signing failure shows no token (logged), so
    /// the holder cannot consume; it never shows a wrong one.
    pub fn grant_token(&self, req: &Request, caller: &Caller) -> Option<String> {
        let g = req.grant.as_ref()?;
        let holder = caller.user == req.action.principal || caller.is_enforcer();
        let live = !g.revoked && g.uses < g.max_uses && req.status == RequestStatus::Approved;
        if !(holder && live) {
            return None;
        }
        let claims = GrantClaims {
            jti: g.grant_id,
            req: req.id,
            sub: req.action.principal.clone(),
            fp: req.fingerprint,
            // Issued with the last approval: the grant's life counts from
            // there (the request may have waited an hour before).
            iat: (g.expires_at - req.requirement.grant_ttl.as_chrono()).max(req.created_at),
            exp: g.expires_at,
            max_uses: g.max_uses,
        };
        match self.keys.sign_grant(&claims) {
            Ok(token) => Some(token),
            Err(e) => {
                tracing::error!(error = %e, "cannot sign grant token");
                None
            }
        }
    }

    /// REQUEST as `caller` may see it: the view, with the grant token when
    /// [`Airlock::grant_token`] mints one for them.
    pub fn request_view_with_token(&self, req: &Request, caller: &Caller) -> RequestView {
        let token = self.grant_token(req, caller);
        self.request_view(req, token)
    }

    /// What a check answers `caller`, on the wire: the request held for
    /// approval is shown with its token only if `caller` may hold one.
    pub fn check_answer(&self, out: CheckOutcome, caller: &Caller) -> CheckResponse {
        match out {
            CheckOutcome::Allow {
                policies,
                audit_seq,
            } => CheckResponse::Allow {
                policies,
                audit_seq,
            },
            CheckOutcome::Deny {
                policies,
                message,
                audit_seq,
            } => CheckResponse::Deny {
                policies,
                message,
                audit_seq,
            },
            CheckOutcome::ApprovalRequired { policies, request } => {
                CheckResponse::ApprovalRequired {
                    policies,
                    request: Box::new(self.request_view_with_token(&request, caller)),
                }
            }
        }
    }
}
