//! Ask and review: reading, waiting on, reviewing, cancelling and revoking
//! requests. Every rule lives here, whichever channel asks.

use std::time::Duration;

use airlock_api::DecisionView;
use airlock_core::request::GrantRecord;
use airlock_core::{
    AuditKind, AuditRecord, GrantId, NewAuditRecord, Request, RequestId, RequestStatus, Review,
    UserName, Verdict,
};
use airlock_policy::Directory;
use airlock_store::time::{fmt, now};
use airlock_store::{AuditFilter, Cursor, StatusFilter, Viewer, WriteTx};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{notify, Airlock, Caller};
use crate::ApiError;

const MAX_REVIEW_REASON: usize = 2000;

/// The most requests one page of a listing holds.
pub const MAX_PAGE: u32 = 1000;

/// What a reviewer offers for step-up: a TOTP code (any channel) or a
/// security key's answer (the console).
#[derive(Debug, Clone, Default)]
pub struct StepUp {
    /// A current TOTP code.
    pub totp: Option<String>,
    /// A WebAuthn assertion and its sealed challenge.
    pub webauthn: Option<super::WebauthnAnswer>,
}

/// Which requests the console's inbox shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxShow {
    /// Pending, for the viewer to review.
    Waiting,
    /// Those the viewer reviewed.
    Reviewed,
    /// Decided ones.
    Decided,
}

/// One page of a listing of requests.
#[derive(Debug)]
pub struct RequestPage {
    /// Newest first.
    pub requests: Vec<Request>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

/// Most records of one request shown at once (its history, its decisions):
/// the newest, so a flood of re-checks cannot push the latest out.
const HISTORY: u32 = 500;

impl Airlock {
    /// A request's history (its records and its grant's), oldest first:
    /// the newest `HISTORY` records filed under it (by the request column,
    /// which only request records fill, so nothing a caller types can join
    /// it). Takes the request itself, which only `get_request` hands out
    /// after checking the caller may see it.
    pub async fn request_history(&self, req: &Request) -> Result<Vec<AuditRecord>, ApiError> {
        let id = req.id;
        Ok(self.store.read(move |r| filed_under(r, id, None)).await?)
    }

    /// The caller's own requests, newest first.
    pub async fn my_requests(&self, caller: &Caller, limit: u32) -> Result<Vec<Request>, ApiError> {
        let filter = StatusFilter {
            principal: Some(caller.user.clone()),
            ..Default::default()
        };
        Ok(self
            .store
            .read(move |r| r.list_requests(&filter, limit))
            .await?)
    }

    /// Whether `caller` may see `req`: its requester, anyone who may review
    /// it, enforcers and admins.
    pub(crate) fn may_see(&self, caller: &Caller, req: &Request) -> bool {
        let loaded = self.loaded.load();
        caller.is_admin()
            || caller.is_enforcer()
            || req.action.principal == caller.user
            // Auditors read every request in the audit log already.
            || self.may_oversee(caller)
            || self.may_review_breakglass(caller, req)
            || req.eligible_reviewer(&caller.user, |u, g| loaded.directory.is_member(u, g))
    }

    /// The request if the caller may see it, and the decisions filed under
    /// it when `decisions` says so for its status, read together: one trip
    /// to the store.
    async fn load_visible_with(
        &self,
        caller: &Caller,
        id: RequestId,
        decisions: impl FnOnce(RequestStatus) -> bool + Send + 'static,
    ) -> Result<(Request, Vec<DecisionView>), ApiError> {
        let (req, records) = self
            .store
            .read(move |r| {
                let Some(req) = r.get_request(&id)? else {
                    return Ok((None, Vec::new()));
                };
                let records = if decisions(req.status) {
                    filed_under(r, id, Some(AuditKind::Decision))?
                } else {
                    Vec::new()
                };
                Ok((Some(req), records))
            })
            .await?;
        match req {
            Some(req) if self.may_see(caller, &req) => Ok((req, decision_views(records))),
            // Not visible is reported as absent, so ids cannot be probed.
            _ => Err(ApiError::NotFound(format!("no request {id}"))),
        }
    }

    /// 404 unless the caller may see the request: a change refused to
    /// someone who may not even read it is refused as a read is, so ids
    /// cannot be probed through it. Who may make the change is decided
    /// again inside the change's transaction.
    async fn must_see(&self, caller: &Caller, id: RequestId) -> Result<(), ApiError> {
        self.load_visible_with(caller, id, |_| false)
            .await
            .map(drop)
    }

    /// One request; with `wait`, answers as soon as it leaves `pending` or
    /// when the wait is over, woken by the event of its change.
    pub async fn get_request(
        &self,
        caller: &Caller,
        id: RequestId,
        wait: Option<Duration>,
    ) -> Result<Request, ApiError> {
        Ok(self.get_request_with(caller, id, wait, false).await?.0)
    }

    /// [`Airlock::get_request`] with the request's decisions (the API's
    /// view of one request), read in the same trip to the store as the
    /// request: a waiter woken by an approval reads once, not twice.
    pub async fn get_request_with_decisions(
        &self,
        caller: &Caller,
        id: RequestId,
        wait: Option<Duration>,
    ) -> Result<(Request, Vec<DecisionView>), ApiError> {
        self.get_request_with(caller, id, wait, true).await
    }

    async fn get_request_with(
        &self,
        caller: &Caller,
        id: RequestId,
        wait: Option<Duration>,
        decisions: bool,
    ) -> Result<(Request, Vec<DecisionView>), ApiError> {
        // Watch before reading, so a change between the read and the wait
        // is not missed. Changes made on other nodes arrive here too. The
        // decisions are read only with the request that is answered: not
        // while it stays pending and the wait goes on.
        let mut changes = self.store.watch(id);
        let waits = wait.is_some();
        let (req, seen) = self
            .load_visible_with(caller, id, move |s| {
                decisions && !(waits && s == RequestStatus::Pending)
            })
            .await?;
        let Some(wait) = wait else {
            return Ok((req, seen));
        };
        if req.status != RequestStatus::Pending {
            return Ok((req, seen));
        }
        // Each open wait holds a task, a connection and a subscription: a
        // user gets a bounded number, so one cannot crowd out the rest.
        // The place is given back when the wait ends or is dropped.
        let max = self.config.load().server.max_waits_per_user;
        let Some(_slot) = self.waits.try_take(caller.user.as_str(), max) else {
            return Err(ApiError::TooMany {
                code: airlock_api::ErrorCode::TooManyWaits,
                message: format!(
                    "{} already has {max} waits open on this node; wait for one to end",
                    caller.user
                ),
                retry_after_seconds: None,
            });
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return self.load_visible_with(caller, id, move |_| decisions).await;
            }
            let (req, seen) = self
                .load_visible_with(caller, id, move |s| {
                    decisions && s != RequestStatus::Pending
                })
                .await?;
            if req.status != RequestStatus::Pending {
                return Ok((req, seen));
            }
        }
    }

    /// Requests the caller may see, newest first: their own and those they
    /// may review (everything for enforcers and admins), one page of at
    /// most `limit` after `after`.
    pub async fn list_requests(
        &self,
        caller: &Caller,
        statuses: Vec<RequestStatus>,
        limit: u32,
        after: Option<Cursor>,
    ) -> Result<RequestPage, ApiError> {
        let everything = caller.is_admin() || caller.is_enforcer();
        self.list_visible(caller, statuses, !everything, true, limit, after)
            .await
    }

    /// Pending requests the caller may review now (never their own), newest
    /// first: a reviewer's inbox, whatever their role.
    pub async fn inbox(
        &self,
        caller: &Caller,
        limit: u32,
        after: Option<Cursor>,
    ) -> Result<RequestPage, ApiError> {
        let mut page = self
            .list_visible(
                caller,
                vec![RequestStatus::Pending],
                true,
                false,
                limit,
                after,
            )
            .await?;
        let loaded = self.loaded.load();
        page.requests
            .retain(|r| r.eligible_reviewer(&caller.user, |u, g| loaded.directory.is_member(u, g)));
        Ok(page)
    }

    /// What the console's inbox lists for `caller`: pending requests they
    /// may review, every pending request for auditors (`[web]
    /// auditor_groups`), the requests they reviewed, or the decided ones
    /// they may see. Pending ones soonest to expire first.
    pub async fn console_inbox(
        &self,
        caller: &Caller,
        show: InboxShow,
        limit: u32,
        after: Option<Cursor>,
    ) -> Result<RequestPage, ApiError> {
        let everything = self.may_oversee(caller);
        let first_page = after.is_none();
        let mut page = match show {
            InboxShow::Waiting if !everything => self.inbox(caller, limit, after).await?,
            InboxShow::Waiting => {
                self.list_visible(
                    caller,
                    vec![RequestStatus::Pending],
                    false,
                    false,
                    limit,
                    after,
                )
                .await?
            }
            InboxShow::Reviewed | InboxShow::Decided => {
                let statuses = match show {
                    InboxShow::Decided => RequestStatus::ALL
                        .iter()
                        .copied()
                        .filter(|s| *s != RequestStatus::Pending)
                        .collect(),
                    _ => Vec::new(),
                };
                let mut page = self
                    .list_visible(caller, statuses, !everything, false, limit, after)
                    .await?;
                if show == InboxShow::Reviewed {
                    page.requests
                        .retain(|r| r.reviews.iter().any(|rv| rv.reviewer == caller.user));
                }
                page
            }
        };
        if show == InboxShow::Waiting {
            page.requests.sort_by_key(|r| r.expires_at);
            // Break-glass uses waiting for the viewer's review after the
            // fact come first, whatever page this is.
            if first_page {
                let decided: Vec<RequestStatus> = RequestStatus::ALL
                    .iter()
                    .copied()
                    .filter(|s| *s != RequestStatus::Pending)
                    .collect();
                let recent = self
                    .list_visible(caller, decided, false, false, limit, None)
                    .await?;
                let mut first: Vec<Request> = recent
                    .requests
                    .into_iter()
                    .filter(|r| {
                        r.reviews.len() < super::breakglass::REVIEWS_AFTER
                            && self.may_review_breakglass(caller, r)
                            && !r.reviews.iter().any(|rv| rv.reviewer == caller.user)
                    })
                    .collect();
                first.append(&mut page.requests);
                page.requests = first;
            }
        }
        Ok(page)
    }

    /// Whether `caller` has enrolled a TOTP authenticator.
    pub async fn totp_enrolled(&self, caller: &Caller) -> Result<bool, ApiError> {
        let user = caller.user.clone();
        Ok(self
            .store
            .read(move |r| r.totp_secret(&user))
            .await?
            .is_some())
    }

    /// Enrols a fresh TOTP secret for `caller` and returns its otpauth URI
    /// (to be shown once). Replacing an enrolment needs a current code from
    /// the old one, so a stolen session cannot swap in its own
    /// authenticator.
    pub async fn enroll_totp(
        &self,
        caller: &Caller,
        current: Option<String>,
    ) -> Result<String, ApiError> {
        let user = caller.user.clone();
        let secret = airlock_auth::totp::new_secret();
        let uri = airlock_auth::totp::uri(&secret, user.as_str())
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let sealed = self.secrets.seal(&secret, user.as_str());
        let secrets = self.secrets.clone();
        let page = format!("{}/account", self.public_url());
        let about = json!({"method": "totp", "enrolment": "replace", "channel": "web"});
        self.store
            .write(move |tx| {
                let t = now();
                if tx.totp_secret(&user)?.is_some() {
                    // Said as what it is: replacing the enrolment, not an
                    // approval, asks for a code.
                    if current.as_deref().is_none_or(|c| c.trim().is_empty()) {
                        return Err(ApiError::Forbidden {
                            code: airlock_api::ErrorCode::StepUpRequired,
                            message: "replacing your authenticator needs a current code from the one enrolled now: type it in the field beside the button".into(),
                        });
                    }
                    if let Err(e) = step_up_totp(tx, &secrets, &user, current.as_deref(), &page, t)
                    {
                        return wrong_code_counted(tx, &user, about, e, t);
                    }
                }
                tx.set_totp_secret(&user, &sealed, t)?;
                tx.append_audit(
                    NewAuditRecord {
                        kind: AuditKind::TotpEnrolled,
                        actor: user.to_string(),
                        subject: user.to_string(),
                        details: json!({"user": user.as_str(), "channel": "web"}).into(),
                    },
                    t,
                )?;
                Ok::<_, ApiError>(Ok(()))
            })
            .await??;
        Ok(uri)
    }

    /// How many pending requests (of the oldest `limit`) have a threshold
    /// nobody can meet: fewer people may approve than its quorum. For
    /// `/metrics`, so admins are alerted to requests that will only expire.
    pub async fn unapprovable_pending(&self, limit: u32) -> Result<usize, ApiError> {
        let filter = StatusFilter {
            statuses: vec![RequestStatus::Pending],
            ..Default::default()
        };
        let pending = self
            .store
            .read(move |r| r.list_requests(&filter, limit))
            .await?;
        let loaded = self.loaded.load();
        Ok(pending
            .iter()
            .filter(|req| {
                req.requirement.thresholds.iter().any(|t| {
                    !super::view::threshold_view(&loaded.directory, t, 0, &req.action.principal)
                        .can_be_met()
                })
            })
            .count())
    }

    /// The filter runs in the store's query, before the limit, so requests
    /// the caller may not see (however many) cannot crowd out those they
    /// may: a flood by one principal reaches only its own approvers.
    async fn list_visible(
        &self,
        caller: &Caller,
        statuses: Vec<RequestStatus>,
        filtered: bool,
        own: bool,
        limit: u32,
        after: Option<Cursor>,
    ) -> Result<RequestPage, ApiError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let visible_to = filtered.then(|| {
            let loaded = self.loaded.load();
            Viewer {
                user: caller.user.clone(),
                groups: loaded
                    .directory
                    .groups(&caller.user)
                    .map(|gs| gs.iter().cloned().collect())
                    .unwrap_or_default(),
                own,
            }
        });
        let filter = StatusFilter {
            statuses,
            principal: None,
            visible_to,
            after,
        };
        // One more than asked, to know whether another page follows.
        let mut found = self
            .store
            .read(move |r| r.list_requests(&filter, limit + 1))
            .await?;
        let next = if found.len() > limit as usize {
            found.truncate(limit as usize);
            found.last().map(Cursor::after)
        } else {
            None
        };
        // The query already applied the rule; this keeps one place (may_see)
        // the final word on what leaves the service.
        found.retain(|r| self.may_see(caller, r));
        Ok(RequestPage {
            requests: found,
            next,
        })
    }

    /// Records a verdict. Self-review and ineligible reviewers are refused
    /// (admins included); the request must be pending; one verdict per
    /// reviewer; one eligible deny ends it; the last needed approval issues
    /// the grant, in the same transaction as the audit records.
    pub async fn review(
        &self,
        caller: &Caller,
        id: RequestId,
        verdict: Verdict,
        reason: Option<String>,
        channel: &str,
        proof: StepUp,
    ) -> Result<Request, ApiError> {
        self.count_action(caller, "review")?;
        let reason = reason.filter(|r| !airlock_core::display::is_blank(r));
        if reason.as_ref().is_some_and(|r| r.len() > MAX_REVIEW_REASON) {
            return Err(ApiError::BadRequest(format!(
                "reason is longer than {MAX_REVIEW_REASON} bytes"
            )));
        }
        let loaded = self.loaded.load_full();
        let reviewer = caller.user.clone();
        let channel = channel.to_owned();
        let hooks = self.hooks();
        let mail = self.mail();
        let secrets = self.secrets.clone();
        let console = self.public_url();
        let breakglass_groups = self.config.load().breakglass.groups.clone();
        let about = json!({"method": "totp", "request": id.to_string(), "channel": channel});
        let req = self
            .store
            .write(move |tx| {
                let t = now();
                let Some(req) = tx.get_request(&id)? else {
                    return Err(ApiError::NotFound(format!("no request {id}")));
                };
                let refused = |tx: &mut dyn WriteTx, e: ApiError| review_refused(tx, &reviewer, id, (verdict, &channel), e, t);
                if req.action.principal == reviewer {
                    return refused(tx, ApiError::Forbidden {
                        code: airlock_api::ErrorCode::SelfReview,
                        message: "nobody may review their own request".into(),
                    });
                }
                if req.requirement.breakglass {
                    // After the fact: approvers of the request or members
                    // of the break-glass groups say whether it was right.
                    let eligible = req.eligible_reviewer(&reviewer, |u, g| loaded.directory.is_member(u, g))
                        || breakglass_groups.iter().any(|g| loaded.directory.is_member(&reviewer, g));
                    if !eligible {
                        return refused(tx, ApiError::Forbidden {
                            code: airlock_api::ErrorCode::NotEligible,
                            message: format!("{reviewer} may not review this break-glass use (approvers of it and [breakglass] groups may)"),
                        });
                    }
                    // Saying a use of a step-up action was right asks the
                    // same step-up as approving it would have: a session
                    // alone (a borrowed browser) cannot clear it (found by
                    // a black-box pass).
                    let step_up = match pass_step_up(tx, &secrets, &console, &req, &reviewer, verdict, &proof, about, t)? {
                        Ok(passed) => passed,
                        Err(refusal) => return Ok(Err(refusal)),
                    };
                    return review_after_the_fact(tx, &req, &reviewer, (verdict, step_up), reason.clone(), &channel, &hooks, t).map(Ok);
                }
                if !req.eligible_reviewer(&reviewer, |u, g| loaded.directory.is_member(u, g)) {
                    return refused(tx, ApiError::Forbidden {
                        code: airlock_api::ErrorCode::NotEligible,
                        message: format!("{reviewer} is not in an approver group of this request"),
                    });
                }
                if req.status != RequestStatus::Pending {
                    return Err(ApiError::wrong_state(format!("request is {}, not pending", req.status)));
                }
                if req.expires_at <= t {
                    // Past its TTL but the timer has not fired yet: it is
                    // expired, whatever the reviewer says.
                    return Err(ApiError::wrong_state("request has expired"));
                }
                // Step-up guards approving only: a deny lowers the risk.
                // The step-up passed is kept with the review: only such
                // approvals count where one is asked (also later, at
                // consumption or after the requirement was raised).
                let step_up = match pass_step_up(tx, &secrets, &console, &req, &reviewer, verdict, &proof, about, t)? {
                    Ok(passed) => passed,
                    Err(refusal) => return Ok(Err(refusal)),
                };
                let review = Review { reviewer: reviewer.clone(), verdict, reason: reason.clone(), channel: channel.clone(), at: t, step_up };
                // An approval that no longer counts (the request was raised
                // to a step-up it did not pass) is replaced by one that
                // passed it, or by a deny (the console offers both again);
                // any other second verdict is refused.
                let replaces = verdict == Verdict::Deny || review.passed(req.requirement.step_up.as_deref());
                let weaker = req
                    .reviews
                    .iter()
                    .find(|r| r.reviewer == reviewer)
                    .filter(|_| replaces && req.standing_review(&reviewer).is_none());
                let recorded = match weaker {
                    Some(old) => tx.strengthen_review(&id, old.step_up.as_deref(), &review)?,
                    None => tx.insert_review(&id, &review)?,
                };
                if !recorded {
                    return Err(ApiError::Conflict {
                        code: airlock_api::ErrorCode::AlreadyReviewed,
                        message: format!("{reviewer} already reviewed this request"),
                    });
                }
                tx.changed(id);
                tx.append_audit(
                    NewAuditRecord {
                        kind: AuditKind::Review,
                        actor: reviewer.to_string(),
                        subject: id.to_string(),
                        details: json!({"verdict": verdict.as_str(), "reason": reason, "channel": channel, "step_up": review.step_up}).into(),
                    },
                    t,
                )?;
                let req = tx.get_request(&id)?.ok_or_else(|| ApiError::NotFound(format!("no request {id}")))?;
                match verdict {
                    Verdict::Deny => {
                        transition(tx, &req, RequestStatus::Denied, &reviewer.to_string(), json!({"by": reviewer.as_str()}))?;
                        // The event carries the reviewer's reason: why it was denied.
                        let mut data = notify::RequestEventData::new(&req, RequestStatus::Denied, Some(reviewer.as_str()));
                        data.reason = reason.clone();
                        notify::emit(tx, &hooks, "request.decided", notify::event_data(data))?;
                        mail.to_requester(tx, &req, "denied", Some(reviewer.as_str()))?;
                    }
                    Verdict::Approve if req.thresholds_met(|u, g| loaded.directory.is_member(u, g)) => {
                        issue_grant(tx, &req, &loaded.directory)?;
                        notify::emit(tx, &hooks, "request.decided", notify::request_data(&req, RequestStatus::Approved, Some(reviewer.as_str())))?;
                        mail.to_requester(tx, &req, "approved", Some(reviewer.as_str()))?;
                    }
                    Verdict::Approve => {
                        notify::emit(tx, &hooks, "request.reviewed", notify::request_data(&req, RequestStatus::Pending, Some(reviewer.as_str())))?;
                    }
                }
                Ok(Ok(tx.get_request(&id)?.unwrap_or(req)))
            })
            .await??;
        self.after_change(&req);
        Ok(req)
    }

    /// Whether `caller` may review `id` now (for channels that ask for more
    /// before recording a verdict, like Slack's deny dialog). The review
    /// itself checks again.
    pub async fn may_review(&self, caller: &Caller, id: RequestId) -> Result<(), ApiError> {
        let req = self.store.read(move |r| r.get_request(&id)).await?;
        let Some(req) = req else {
            return Err(ApiError::NotFound(format!("no request {id}")));
        };
        if req.action.principal == caller.user {
            return Err(ApiError::Forbidden {
                code: airlock_api::ErrorCode::SelfReview,
                message: "nobody may review their own request".into(),
            });
        }
        let loaded = self.loaded.load();
        if !req.eligible_reviewer(&caller.user, |u, g| loaded.directory.is_member(u, g)) {
            return Err(ApiError::Forbidden {
                code: airlock_api::ErrorCode::NotEligible,
                message: format!(
                    "{} is not in an approver group of this request",
                    caller.user
                ),
            });
        }
        if req.status != RequestStatus::Pending {
            return Err(ApiError::wrong_state(format!(
                "request is {}, not pending",
                req.status
            )));
        }
        Ok(())
    }

    /// The requester withdraws a pending request.
    pub async fn cancel(&self, caller: &Caller, id: RequestId) -> Result<Request, ApiError> {
        self.must_see(caller, id).await?;
        let user = caller.user.clone();
        let hooks = self.hooks();
        let req = self
            .store
            .write(move |tx| {
                let Some(req) = tx.get_request(&id)? else {
                    return Err(ApiError::NotFound(format!("no request {id}")));
                };
                if req.action.principal != user {
                    return Err(ApiError::forbidden(
                        "only the requester may cancel a request",
                    ));
                }
                transition(tx, &req, RequestStatus::Cancelled, user.as_str(), json!({}))?;
                notify::emit(
                    tx,
                    &hooks,
                    "request.cancelled",
                    notify::request_data(&req, RequestStatus::Cancelled, Some(user.as_str())),
                )?;
                Ok(tx.get_request(&id)?.unwrap_or(req))
            })
            .await?;
        self.after_change(&req);
        Ok(req)
    }

    /// An approver or admin kills an approved request's grant at once.
    pub async fn revoke(
        &self,
        caller: &Caller,
        id: RequestId,
        reason: Option<String>,
    ) -> Result<Request, ApiError> {
        self.must_see(caller, id).await?;
        let loaded = self.loaded.load_full();
        let caller = caller.clone();
        let hooks = self.hooks();
        let req = self
            .store
            .write(move |tx| {
                let Some(req) = tx.get_request(&id)? else {
                    return Err(ApiError::NotFound(format!("no request {id}")));
                };
                let approver = req.requirement.thresholds.iter().any(|t| {
                    t.groups
                        .iter()
                        .any(|g| loaded.directory.is_member(&caller.user, g))
                });
                if !(caller.is_admin() || approver) {
                    return Err(ApiError::forbidden(
                        "only an approver of this request or an admin may revoke it",
                    ));
                }
                transition(
                    tx,
                    &req,
                    RequestStatus::Revoked,
                    caller.user.as_str(),
                    json!({"reason": reason}),
                )?;
                if let Some(g) = &req.grant {
                    tx.revoke_grant(&g.grant_id)?;
                }
                notify::emit(
                    tx,
                    &hooks,
                    "request.revoked",
                    notify::request_data(&req, RequestStatus::Revoked, Some(caller.user.as_str())),
                )?;
                Ok(tx.get_request(&id)?.unwrap_or(req))
            })
            .await?;
        self.after_change(&req);
        Ok(req)
    }

    /// Expires a request whose deadline passed: a pending one at its TTL,
    /// an approved one when its grant expired unused. Conditional, so it
    /// happens once however many timers fire.
    pub async fn expire(&self, id: RequestId) -> Result<Option<Request>, ApiError> {
        let mail = self.mail();
        let hooks = self.hooks();
        let req = self
            .store
            .write(move |tx| {
                let t = now();
                let Some(req) = tx.get_request(&id)? else {
                    return Ok(None);
                };
                let due = match (req.status, &req.grant) {
                    (RequestStatus::Pending, _) => req.expires_at <= t,
                    (RequestStatus::Approved, Some(g)) => g.expires_at <= t,
                    _ => false,
                };
                if !due {
                    return Ok(None);
                }
                transition(tx, &req, RequestStatus::Expired, "system", json!({}))?;
                notify::emit(
                    tx,
                    &hooks,
                    "request.expired",
                    notify::request_data(&req, RequestStatus::Expired, None),
                )?;
                mail.to_requester(tx, &req, "expired", None)?;
                Ok::<_, ApiError>(tx.get_request(&id)?)
            })
            .await?;
        if let Some(r) = &req {
            self.after_change(r);
        }
        Ok(req)
    }

    fn after_change(&self, req: &Request) {
        if let Some(g) = &req.grant {
            if req.status == RequestStatus::Approved {
                let _ = self.timers.send((g.expires_at, req.id));
            }
        }
    }
}

/// Moves a request to `to` and records it; 409 if the state machine forbids.
pub(crate) fn transition(
    tx: &mut dyn WriteTx,
    req: &Request,
    to: RequestStatus,
    actor: &str,
    details: serde_json::Value,
) -> Result<(), ApiError> {
    let t = now();
    if !tx.set_status(&req.id, req.status, to, t)? {
        return Err(ApiError::wrong_state(format!(
            "request is {}; it cannot become {to}",
            req.status
        )));
    }
    tx.changed(req.id);
    let mut d = json!({"from": req.status.as_str(), "to": to.as_str()});
    if let (Some(o), serde_json::Value::Object(extra)) = (d.as_object_mut(), details) {
        o.extend(extra);
    }
    tx.append_audit(
        NewAuditRecord {
            kind: AuditKind::RequestState,
            actor: actor.to_owned(),
            subject: req.id.to_string(),
            details: d.into(),
        },
        t,
    )?;
    Ok(())
}

pub(crate) fn issue_grant(
    tx: &mut dyn WriteTx,
    req: &Request,
    directory: &Directory,
) -> Result<(), ApiError> {
    let t = now();
    let approvals = req.approvals(|u, g| directory.is_member(u, g));
    transition(
        tx,
        req,
        RequestStatus::Approved,
        "system",
        json!({"approvals": approvals}),
    )?;
    let grant = GrantRecord {
        grant_id: GrantId::new(),
        expires_at: t + req.requirement.grant_ttl.as_chrono(),
        max_uses: req.requirement.max_uses.get(),
        uses: 0,
        revoked: false,
        outcome: None,
    };
    tx.insert_grant(&req.id, &req.fingerprint, &grant)?;
    tx.append_audit(
        NewAuditRecord {
            kind: AuditKind::GrantIssued,
            actor: "system".into(),
            subject: grant.grant_id.to_string(),
            details: json!({
                "request": req.id.to_string(),
                "fingerprint": req.fingerprint.to_string(),
                "expires_at": fmt(grant.expires_at),
                "max_uses": grant.max_uses,
            })
            .into(),
        },
        t,
    )?;
    Ok(())
}

/// A review of a break-glass use after the fact: `approve` says it was
/// right, `deny` flags it and revokes its grant if still live. Each is on
/// record and alerted like any review.
#[allow(clippy::too_many_arguments)]
fn review_after_the_fact(
    tx: &mut dyn WriteTx,
    req: &Request,
    reviewer: &UserName,
    (verdict, step_up): (Verdict, Option<String>),
    reason: Option<String>,
    channel: &str,
    hooks: &notify::Notifier,
    t: DateTime<Utc>,
) -> Result<Request, ApiError> {
    if verdict == Verdict::Deny && reason.is_none() {
        return Err(ApiError::BadRequest(
            "say why you flag this break-glass use".into(),
        ));
    }
    let review = Review {
        reviewer: reviewer.clone(),
        verdict,
        reason: reason.clone(),
        channel: channel.to_owned(),
        at: t,
        step_up,
    };
    if !tx.insert_review(&req.id, &review)? {
        return Err(ApiError::Conflict {
            code: airlock_api::ErrorCode::AlreadyReviewed,
            message: format!("{reviewer} already reviewed this break-glass use"),
        });
    }
    tx.changed(req.id);
    tx.append_audit(
        NewAuditRecord {
            kind: AuditKind::Review,
            actor: reviewer.to_string(),
            subject: req.id.to_string(),
            details: json!({"verdict": verdict.as_str(), "reason": reason, "channel": channel, "after_the_fact": true}).into(),
        },
        t,
    )?;
    if verdict == Verdict::Deny && req.status == RequestStatus::Approved {
        transition(
            tx,
            req,
            RequestStatus::Revoked,
            reviewer.as_str(),
            json!({"reason": reason, "breakglass_flagged": true}),
        )?;
        // As a revoke does: the grant shows revoked, not only the request.
        if let Some(g) = &req.grant {
            tx.revoke_grant(&g.grant_id)?;
        }
    }
    let req = tx
        .get_request(&req.id)?
        .ok_or_else(|| ApiError::NotFound(format!("no request {}", req.id)))?;
    notify::emit(
        tx,
        hooks,
        "request.reviewed",
        notify::request_data(&req, req.status, Some(reviewer.as_str())),
    )?;
    Ok(req)
}

/// A review refused for who its reviewer is (their own request, or not
/// eligible): recorded with the request in the transaction that refused
/// it, which then commits holding nothing else, so an attempt to get
/// around an approval leaves a trace.
fn review_refused<R>(
    tx: &mut dyn WriteTx,
    reviewer: &UserName,
    id: RequestId,
    (verdict, channel): (Verdict, &str),
    refusal: ApiError,
    t: DateTime<Utc>,
) -> Result<Result<R, ApiError>, ApiError> {
    tx.append_audit(
        NewAuditRecord {
            kind: AuditKind::ReviewRefused,
            actor: reviewer.to_string(),
            subject: id.to_string(),
            details: json!({"code": refusal.code(), "message": refusal.to_string(), "verdict": verdict.as_str(), "channel": channel}).into(),
        },
        t,
    )?;
    Ok(Err(refusal))
}

/// A refused step-up: a wrong code is recorded in the same transaction
/// that checked it, which then commits (holding nothing else), and the
/// refusal is the answer. In the same transaction because the next check
/// counts these records: written after, in a write of its own, parallel
/// guesses all read a count of zero and the limit held for none of them.
/// Any other refusal rolls the transaction back as usual.
/// The step-up an approval of `req` asks, checked: the one passed (kept
/// with the review), `Ok(Err(_))` for a wrong code (counted toward the
/// lockout and on record). Step-up guards approving only: a deny lowers
/// the risk. A step-up this release does not know fails closed.
#[allow(clippy::too_many_arguments)]
fn pass_step_up(
    tx: &mut dyn WriteTx,
    secrets: &airlock_keys::SecretBox,
    console: &str,
    req: &Request,
    reviewer: &UserName,
    verdict: Verdict,
    proof: &StepUp,
    about: serde_json::Value,
    t: DateTime<Utc>,
) -> Result<Result<Option<String>, ApiError>, ApiError> {
    if verdict != Verdict::Approve {
        return Ok(Ok(None));
    }
    let page = format!("{console}/requests/{}", req.id);
    match req.requirement.step_up.as_deref() {
        None => {}
        Some("totp") => {
            if let Err(e) = step_up_totp(tx, secrets, reviewer, proof.totp.as_deref(), &page, t) {
                return wrong_code_counted(tx, reviewer, about, e, t);
            }
        }
        Some("webauthn") => {
            let rp = super::webauthn::approval_relying_party(console)?;
            super::webauthn::step_up_webauthn(
                tx,
                &rp,
                secrets,
                reviewer,
                req.id,
                proof.webauthn.as_ref(),
                &page,
            )?;
        }
        Some(other) => return Err(ApiError::forbidden(format!("unknown step-up {other:?}"))),
    }
    Ok(Ok(req.requirement.step_up.clone()))
}

fn wrong_code_counted<R>(
    tx: &mut dyn WriteTx,
    who: &UserName,
    about: serde_json::Value,
    refusal: ApiError,
    t: DateTime<Utc>,
) -> Result<Result<R, ApiError>, ApiError> {
    let ApiError::StepUpFailed(_) = &refusal else {
        return Err(refusal);
    };
    tx.append_audit(
        NewAuditRecord {
            kind: AuditKind::StepUpFailed,
            actor: who.to_string(),
            subject: who.to_string(),
            details: about.into(),
        },
        t,
    )?;
    Ok(Err(refusal))
}

/// Wrong step-up codes for one user within [`STEP_UP_LOCKOUT`] after which
/// no code of theirs is checked until the oldest is out of the window.
pub const MAX_STEP_UP_FAILURES: usize = 5;
/// The window [`MAX_STEP_UP_FAILURES`] counts in.
const STEP_UP_LOCKOUT: chrono::Duration = chrono::Duration::minutes(15);

/// Checks a TOTP code for `reviewer`'s approval and spends it: a code is
/// accepted once, on any node (its time step is recorded in the same
/// transaction as the review). Every failure refuses the approval and says
/// what to do; a secret that cannot be opened refuses too.
fn step_up_totp<T: WriteTx + ?Sized>(
    tx: &mut T,
    secrets: &airlock_keys::SecretBox,
    reviewer: &UserName,
    code: Option<&str>,
    page: &str,
    t: DateTime<Utc>,
) -> Result<(), ApiError> {
    let refuse = |message: String| ApiError::Forbidden {
        code: airlock_api::ErrorCode::StepUpRequired,
        message,
    };
    let Some(sealed) = tx.totp_secret(reviewer)? else {
        return Err(refuse(format!(
            "this approval needs a TOTP code and {reviewer} has not enrolled an authenticator: \
             enrol on the console's Account page, or ask an admin to run \
             `airlock users totp enroll --user {reviewer}`"
        )));
    };
    let Some(code) = code.map(str::trim).filter(|c| !c.is_empty()) else {
        return Err(refuse(format!(
            "this approval needs a fresh TOTP code from your authenticator: send \"totp\" with \
             the review (API), answer the prompt (CLI), or approve in the console: {page}"
        )));
    };
    let secret = secrets.open(&sealed, reviewer.as_str()).map_err(|_| {
        refuse(format!(
            "{reviewer}'s TOTP enrolment cannot be read on this node (its secrets.key differs \
             from the one that sealed it); enrol again"
        ))
    })?;
    // Three codes are live at any time (the step before, now, after): a
    // guesser needs about 330,000 tries, so a few wrong codes stop all
    // codes for a while, on every node (the count is in the audit log).
    let recent = AuditFilter {
        kind: Some(AuditKind::StepUpFailed.as_str().into()),
        subject: Some(reviewer.to_string()),
        since: Some(fmt(t - STEP_UP_LOCKOUT)),
        ..AuditFilter::default()
    };
    let failures = tx.audit_search(&recent, MAX_STEP_UP_FAILURES as u32)?;
    if failures.len() >= MAX_STEP_UP_FAILURES {
        // Newest first: codes are checked again once the oldest of these
        // leaves the window.
        let ends = failures
            .last()
            .and_then(|f| DateTime::parse_from_rfc3339(&f.ts).ok())
            .map(|at| at.with_timezone(&Utc) + STEP_UP_LOCKOUT);
        let retry_after_seconds = ends.map(|e| {
            let ms = (e - t).num_milliseconds().max(1000);
            u64::try_from(ms).unwrap_or(1000).div_ceil(1000)
        });
        return Err(ApiError::TooMany {
            retry_after_seconds,
            code: airlock_api::ErrorCode::TooManyAttempts,
            message: format!(
                "{MAX_STEP_UP_FAILURES} wrong TOTP codes for {reviewer} in the last {} minutes: \
                 no code is checked until then",
                STEP_UP_LOCKOUT.num_minutes()
            ),
        });
    }
    let unix = u64::try_from(t.timestamp()).unwrap_or(0);
    let Some(step) = airlock_auth::totp::step_of(&secret, reviewer.as_str(), code, unix) else {
        return Err(ApiError::StepUpFailed(
            "the TOTP code is wrong or expired; enter the current one".into(),
        ));
    };
    if !tx.first_seen("totp", &format!("{reviewer}:{step}"), t)? {
        return Err(refuse(
            "that TOTP code was already used; wait for the next one".into(),
        ));
    }
    // Nor is a code from before it taken later (RFC 6238 5.2): the window
    // still holds the step before, so a code seen over a shoulder stayed
    // good after the next one was used (found by a black-box pass). The
    // steps the window could still accept are marked used with this one.
    for earlier in step.saturating_sub(2)..step {
        tx.first_seen("totp", &format!("{reviewer}:{earlier}"), t)?;
    }
    Ok(())
}

/// The newest `HISTORY` records filed under request `id` (of `kind`, if
/// given), oldest first: by the request column, which only request records
/// fill, so nothing a caller types can join it.
fn filed_under(
    r: &mut dyn airlock_store::ReadTx,
    id: RequestId,
    kind: Option<AuditKind>,
) -> Result<Vec<AuditRecord>, airlock_store::StoreError> {
    let filter = airlock_store::AuditFilter {
        request: Some(id.to_string()),
        kind: kind.map(|k| k.as_str().to_owned()),
        ..Default::default()
    };
    let mut records = r.audit_search(&filter, HISTORY)?;
    records.reverse();
    Ok(records)
}

/// Every decision that led to a request (the newest `HISTORY`), oldest
/// first, each with the context it was decided on: a check that found the
/// request pending adds its own, so approvers see every description of the
/// action, not only the first.
fn decision_views(records: Vec<AuditRecord>) -> Vec<DecisionView> {
    records
        .into_iter()
        .map(|a| {
            let d = a.details.value();
            DecisionView {
                seq: a.seq,
                at: a.ts,
                by: a.actor,
                outcome: d["outcome"].clone(),
                policies: d["policies"].clone(),
                context: plain(d["context"].clone()),
            }
        })
        .collect()
}

/// A recorded context as the request's own `context` shows it: Cedar's
/// escape for an extension value (`{"__extn": {"fn": "ip", "arg": "…"}}`,
/// how `source_ip` is recorded) becomes its text, so approvers read
/// `"source_ip": "10.0.0.7"` (found by a black-box pass). The record keeps
/// the form it was decided and hashed in.
fn plain(v: Value) -> Value {
    match v {
        Value::Object(mut o) => {
            let arg = match o.get("__extn") {
                Some(Value::Object(call)) if o.len() == 1 => call.get("arg").cloned(),
                _ => None,
            };
            if let Some(arg @ Value::String(_)) = arg {
                return arg;
            }
            for (_, x) in o.iter_mut() {
                *x = plain(x.take());
            }
            Value::Object(o)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(plain).collect()),
        other => other,
    }
}
