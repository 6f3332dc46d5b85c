//! Break-glass: an immediate grant in an emergency, for members of
//! `[breakglass] groups`, with a reason; on record at high severity,
//! alerted on every channel at once, and reviewed by two other people after
//! the fact. Policy still decides: break-glass never opens what it forbids.

use std::net::IpAddr;

use airlock_core::{
    Action, AuditKind, Decision, NewAuditRecord, Request, RequestId, RequestStatus,
};
use airlock_store::time::now;
use airlock_store::Role;
use serde_json::json;

use super::check::CheckBody;
use super::notify;
use super::{Airlock, Caller};
use crate::ApiError;

/// Reviews after the fact a break-glass request needs.
pub const REVIEWS_AFTER: usize = 2;

impl Airlock {
    /// Whether `caller` may break the glass.
    pub fn may_break_glass(&self, caller: &Caller) -> bool {
        let loaded = self.loaded.load();
        caller.role == Role::User
            && self
                .config
                .load()
                .breakglass
                .groups
                .iter()
                .any(|g| loaded.directory.is_member(&caller.user, g))
    }

    /// Whether `caller` may review `req` after the fact: an approver of it
    /// or a member of the break-glass groups, never its requester.
    pub(crate) fn may_review_breakglass(&self, caller: &Caller, req: &Request) -> bool {
        let loaded = self.loaded.load();
        let member = |u: &airlock_core::UserName, g: &airlock_core::GroupName| {
            loaded.directory.is_member(u, g)
        };
        req.requirement.breakglass
            && req.action.principal != caller.user
            && (req.eligible_reviewer(&caller.user, member)
                || self
                    .config
                    .load()
                    .breakglass
                    .groups
                    .iter()
                    .any(|g| member(&caller.user, g)))
    }

    /// Breaks the glass for `caller`'s own action: decided by policy (a
    /// deny stays a deny),
    /// then granted at once, without approvals, for at most `[breakglass]
    /// grant_ttl`, and left `approved` with `breakglass` set until two
    /// others have reviewed it.
    pub async fn breakglass(
        &self,
        caller: &Caller,
        body: CheckBody,
        peer: Option<IpAddr>,
    ) -> Result<Request, ApiError> {
        self.count_action(caller, "breakglass")?;
        let config = self.config.load_full();
        if !self.may_break_glass(caller) {
            let groups: Vec<&str> = config
                .breakglass
                .groups
                .iter()
                .map(|g| g.as_str())
                .collect();
            let e = ApiError::forbidden(if groups.is_empty() {
                "break-glass is off: no [breakglass] groups are configured".to_owned()
            } else {
                format!(
                    "break-glass is for members of [breakglass] groups ({})",
                    groups.join(", ")
                )
            });
            self.check_refused(caller, (&body.action, &body.resource), true, &e)
                .await?;
            return Err(e);
        }
        if body.principal.as_ref().is_some_and(|p| *p != caller.user) {
            let e = ApiError::forbidden("break-glass is for your own action only");
            self.check_refused(caller, (&body.action, &body.resource), true, &e)
                .await?;
            return Err(e);
        }
        let Some(reason) = body.reason.filter(|r| !airlock_core::display::is_blank(r)) else {
            return Err(ApiError::ReasonRequired("breakglass".into()));
        };
        let mut action = Action {
            principal: caller.user.clone(),
            action: body.action,
            resource: body.resource,
            params: body.params,
            context: body.context,
        };
        let (loaded, context, decision) = self
            .screen_and_decide(caller, &mut action, peer, true)
            .await?;
        let fingerprint = action.fingerprint();
        let t = now();
        let actor = caller.user.to_string();
        let mut details = super::check::DecisionDetails::new(
            caller,
            &action,
            &fingerprint,
            context,
            &decision,
            loaded.engine.version(),
        );
        details.breakglass = Some(true);
        let (policies, mut requirement) = match decision {
            Decision::Deny { message, .. } => {
                details.refused = Some(airlock_api::ErrorCode::Forbidden);
                self.record_decision(actor, &details, t).await?;
                return Err(ApiError::forbidden(format!(
                    "policy denies this action, and break-glass never opens what policy denies: {message}"
                )));
            }
            // Allowed outright: break-glass adds nothing policy would not
            // give, but the grant and its review after are what was asked.
            Decision::Allow { policies } => (
                policies,
                airlock_core::Requirement {
                    thresholds: Vec::new(),
                    request_ttl: config.breakglass.grant_ttl,
                    grant_ttl: config.breakglass.grant_ttl,
                    max_uses: std::num::NonZeroU32::MIN,
                    reason_required: false,
                    step_up: None,
                    breakglass: true,
                },
            ),
            Decision::ApprovalRequired {
                policies,
                requirement,
            } => (policies, requirement),
        };
        requirement.breakglass = true;
        requirement.grant_ttl = requirement.grant_ttl.min(config.breakglass.grant_ttl);
        let request = Request {
            id: RequestId::new(),
            status: RequestStatus::Pending,
            fingerprint,
            requirement,
            policies,
            reason: Some(reason.clone()),
            reviews: Vec::new(),
            created_at: t,
            expires_at: t + config.breakglass.grant_ttl.as_chrono(),
            grant: None,
            action,
        };
        let hooks = self.hooks();
        let mail = self.mail();
        let id = request.id;
        let req = self
            .store
            .write(move |tx| {
                // The same action asked for the usual way and still
                // waiting: break-glass supersedes it (cancelled, saying
                // why), so the emergency is not refused for having asked
                // first, and no approval of it can issue a second grant.
                if let Some(waiting) =
                    tx.find_pending(&request.action.principal, &request.fingerprint)?
                {
                    if let Some(old) = tx.get_request(&waiting)? {
                        super::requests::transition(
                            tx,
                            &old,
                            RequestStatus::Cancelled,
                            &actor,
                            json!({"superseded_by": id.to_string(), "breakglass": true}),
                        )?;
                        notify::emit(
                            tx,
                            &hooks,
                            "request.cancelled",
                            notify::request_data(&old, RequestStatus::Cancelled, Some(&actor)),
                        )?;
                    }
                }
                tx.insert_request(&request)?;
                let mut d = details;
                d.request = Some(id.to_string());
                tx.append_audit(
                    NewAuditRecord {
                        kind: AuditKind::Decision,
                        actor: actor.clone(),
                        subject: id.to_string(),
                        details: d.details(),
                    },
                    t,
                )?;
                tx.append_audit(
                    NewAuditRecord {
                        kind: AuditKind::Breakglass,
                        actor: actor.clone(),
                        subject: id.to_string(),
                        details: json!({
                            "severity": "high",
                            "reason": &reason,
                            "grant_ttl": request.requirement.grant_ttl,
                            "thresholds_skipped": &request.requirement.thresholds,
                            "review_required": REVIEWS_AFTER,
                        })
                        .into(),
                    },
                    t,
                )?;
                super::requests::issue_grant(tx, &request, &loaded.directory)?;
                let req = tx
                    .get_request(&id)?
                    .ok_or_else(|| ApiError::NotFound(format!("no request {id}")))?;
                let data =
                    notify::RequestEventData::new(&req, RequestStatus::Approved, Some(&actor))
                        .with_thresholds(&req);
                notify::emit(tx, &hooks, "request.breakglass", notify::event_data(data))?;
                mail.to_approvers(tx, &req, &loaded.directory)?;
                Ok::<_, ApiError>(req)
            })
            .await?;
        Ok(req)
    }

    /// How many break-glass requests (of the newest `limit`) still wait
    /// for their reviews after the fact; for `/metrics`.
    pub async fn unreviewed_breakglass(&self, limit: u32) -> Result<usize, ApiError> {
        let filter = airlock_store::StatusFilter::default();
        let all = self
            .store
            .read(move |r| r.list_requests(&filter, limit))
            .await?;
        Ok(all
            .iter()
            .filter(|r| r.requirement.breakglass && r.reviews.len() < REVIEWS_AFTER)
            .count())
    }
}
