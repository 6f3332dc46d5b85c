//! Requests on either backend: stored rows joined with their reviews and
//! grant into [`Request`]s, a listing's filter as a query binds it, and the
//! groups a request's thresholds name (who may see it in listings).

use airlock_core::{
    Fingerprint, GroupName, Request, RequestId, RequestStatus, Requirement, Review, UserName,
    Verdict,
};
use chrono::{DateTime, Utc};

use super::{corrupt, grants, GrantRows};
use crate::model::StatusFilter;
use crate::StoreError;

/// A request's own row, as stored: its reviews and grant are rows of their
/// own.
pub(crate) struct RequestRow {
    pub(crate) id: String,
    pub(crate) status: String,
    pub(crate) action_json: String,
    pub(crate) fingerprint: String,
    pub(crate) requirement_json: String,
    pub(crate) policies_json: String,
    pub(crate) reason: Option<String>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) expires_at: DateTime<Utc>,
}

impl RequestRow {
    /// The row that stores `req`.
    fn of(req: &Request) -> Result<Self, StoreError> {
        Ok(Self {
            id: req.id.to_string(),
            status: req.status.as_str().to_owned(),
            action_json: serde_json::to_string(&req.action)?,
            fingerprint: req.fingerprint.to_string(),
            requirement_json: serde_json::to_string(&req.requirement)?,
            policies_json: serde_json::to_string(&req.policies)?,
            reason: req.reason.clone(),
            created_at: req.created_at,
            expires_at: req.expires_at,
        })
    }
}

/// A review's row, as stored.
pub(crate) struct ReviewRow {
    pub(crate) reviewer: String,
    pub(crate) verdict: String,
    pub(crate) reason: Option<String>,
    pub(crate) channel: String,
    pub(crate) at: DateTime<Utc>,
    pub(crate) step_up: Option<String>,
}

impl ReviewRow {
    fn into_review(self) -> Result<Review, StoreError> {
        Ok(Review {
            reviewer: UserName::parse(&self.reviewer).map_err(corrupt)?,
            verdict: Verdict::parse(&self.verdict).map_err(corrupt)?,
            reason: self.reason,
            channel: self.channel,
            step_up: self.step_up,
            at: self.at,
        })
    }
}

/// A listing's filter, as the query binds it: every part is optional in
/// the SQL (an empty list or `None` matches everything).
pub(crate) struct Listing<'a> {
    /// Only these states (all when empty).
    pub(crate) statuses: Vec<&'static str>,
    /// Only this principal's.
    pub(crate) principal: Option<&'a str>,
    /// The viewer, when filtered by visibility.
    pub(crate) viewer: Option<&'a str>,
    /// The viewer's groups: requests whose thresholds name one are visible.
    pub(crate) groups: Vec<&'a str>,
    /// Whether the viewer's own requests are listed too.
    pub(crate) own: bool,
    /// Only those strictly after this `(created_at, id)` in the
    /// newest-first order.
    pub(crate) after: Option<(DateTime<Utc>, String)>,
    /// At most this many.
    pub(crate) limit: u32,
}

impl<'a> Listing<'a> {
    fn of(filter: &'a StatusFilter, limit: u32) -> Self {
        let viewer = filter.visible_to.as_ref();
        Self {
            statuses: filter.statuses.iter().map(|s| s.as_str()).collect(),
            principal: filter.principal.as_ref().map(UserName::as_str),
            viewer: viewer.map(|v| v.user.as_str()),
            groups: viewer
                .map(|v| v.groups.iter().map(GroupName::as_str).collect())
                .unwrap_or_default(),
            own: viewer.is_some_and(|v| v.own),
            after: filter.after.map(|c| (c.created_at, c.id.to_string())),
            limit,
        }
    }
}

/// What a backend does with request rows: SQL and column reading only.
pub(crate) trait RequestRows {
    /// The request row with this id.
    fn request_row(&mut self, id: &RequestId) -> Result<Option<RequestRow>, StoreError>;
    /// The rows a listing matches, newest first.
    fn request_rows(&mut self, listing: &Listing<'_>) -> Result<Vec<RequestRow>, StoreError>;
    /// A request's reviews, oldest first.
    fn review_rows(&mut self, id: &RequestId) -> Result<Vec<ReviewRow>, StoreError>;
    /// The id of this principal's pending request for this fingerprint.
    fn pending_id(
        &mut self,
        principal: &UserName,
        fp: &Fingerprint,
    ) -> Result<Option<String>, StoreError>;
    /// Pending requests' ids and expiries, and approved ones' with their
    /// grant's expiry.
    fn expiry_rows(&mut self) -> Result<Vec<(String, DateTime<Utc>)>, StoreError>;
    /// See [`crate::ReadTx::count_status`].
    fn count_status(&mut self, status: RequestStatus) -> Result<i64, StoreError>;
    /// See [`crate::ReadTx::count_pending`].
    fn count_pending(&mut self, principal: &UserName) -> Result<i64, StoreError>;
    /// See [`crate::ReadTx::count_requests_since`].
    fn count_requests_since(
        &mut self,
        principal: &UserName,
        since: DateTime<Utc>,
    ) -> Result<i64, StoreError>;
    /// Stores a request's row.
    fn insert_request_row(
        &mut self,
        row: &RequestRow,
        principal: &UserName,
    ) -> Result<(), StoreError>;
    /// Records that `group` is asked to review the request (nothing if it
    /// already was).
    fn insert_request_group(&mut self, id: &RequestId, group: &GroupName)
        -> Result<(), StoreError>;
    /// Moves the request from `from` to `to`; false if it was not in `from`.
    fn update_status(
        &mut self,
        id: &RequestId,
        from: RequestStatus,
        to: RequestStatus,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Replaces a pending request's requirement and policies; false if it
    /// is not pending.
    fn update_requirement(
        &mut self,
        id: &RequestId,
        requirement_json: &str,
        policies_json: &str,
    ) -> Result<bool, StoreError>;
    /// See [`crate::WriteTx::insert_review`].
    fn insert_review(&mut self, id: &RequestId, review: &Review) -> Result<bool, StoreError>;
    /// See [`crate::WriteTx::strengthen_review`].
    fn strengthen_review(
        &mut self,
        id: &RequestId,
        old: Option<&str>,
        review: &Review,
    ) -> Result<bool, StoreError>;
}

/// Joins a request row with its reviews and grant.
fn assemble<T: RequestRows + GrantRows + ?Sized>(
    tx: &mut T,
    row: RequestRow,
) -> Result<Request, StoreError> {
    let id = RequestId::parse(&row.id).map_err(corrupt)?;
    let reviews = tx
        .review_rows(&id)?
        .into_iter()
        .map(ReviewRow::into_review)
        .collect::<Result<_, _>>()?;
    Ok(Request {
        id,
        status: RequestStatus::parse(&row.status).map_err(corrupt)?,
        action: airlock_core::Action::from_stored_json(&row.action_json)?,
        fingerprint: Fingerprint::parse(&row.fingerprint).map_err(corrupt)?,
        requirement: serde_json::from_str(&row.requirement_json)?,
        policies: serde_json::from_str(&row.policies_json)?,
        reason: row.reason,
        created_at: row.created_at,
        expires_at: row.expires_at,
        reviews,
        grant: grants::record_of(tx, &id)?,
    })
}

pub(crate) fn get<T: RequestRows + GrantRows + ?Sized>(
    tx: &mut T,
    id: &RequestId,
) -> Result<Option<Request>, StoreError> {
    tx.request_row(id)?.map(|row| assemble(tx, row)).transpose()
}

pub(crate) fn list<T: RequestRows + GrantRows + ?Sized>(
    tx: &mut T,
    filter: &StatusFilter,
    limit: u32,
) -> Result<Vec<Request>, StoreError> {
    let rows = tx.request_rows(&Listing::of(filter, limit))?;
    rows.into_iter().map(|row| assemble(tx, row)).collect()
}

pub(crate) fn find_pending<T: RequestRows + ?Sized>(
    tx: &mut T,
    principal: &UserName,
    fp: &Fingerprint,
) -> Result<Option<RequestId>, StoreError> {
    tx.pending_id(principal, fp)?
        .map(|id| RequestId::parse(&id).map_err(corrupt))
        .transpose()
}

pub(crate) fn expiries<T: RequestRows + ?Sized>(
    tx: &mut T,
) -> Result<Vec<(RequestId, DateTime<Utc>)>, StoreError> {
    tx.expiry_rows()?
        .into_iter()
        .map(|(id, at)| Ok((RequestId::parse(&id).map_err(corrupt)?, at)))
        .collect()
}

pub(crate) fn insert<T: RequestRows + ?Sized>(tx: &mut T, req: &Request) -> Result<(), StoreError> {
    tx.insert_request_row(&RequestRow::of(req)?, &req.action.principal)?;
    open_to_reviewers(tx, &req.id, &req.requirement)
}

/// Lets the groups `requirement` asks see the request in their listings.
fn open_to_reviewers<T: RequestRows + ?Sized>(
    tx: &mut T,
    id: &RequestId,
    requirement: &Requirement,
) -> Result<(), StoreError> {
    for t in &requirement.thresholds {
        for g in &t.groups {
            tx.insert_request_group(id, g)?;
        }
    }
    Ok(())
}

pub(crate) fn set_status<T: RequestRows + ?Sized>(
    tx: &mut T,
    id: &RequestId,
    from: RequestStatus,
    to: RequestStatus,
    at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    if !from.can_become(to) {
        return Ok(false);
    }
    tx.update_status(id, from, to, at)
}

pub(crate) fn raise_requirement<T: RequestRows + ?Sized>(
    tx: &mut T,
    id: &RequestId,
    requirement: &Requirement,
    policies: &[String],
) -> Result<bool, StoreError> {
    let raised = tx.update_requirement(
        id,
        &serde_json::to_string(requirement)?,
        &serde_json::to_string(policies)?,
    )?;
    // The groups now asked may see it in their lists; a request that was
    // not raised (no longer pending) stays as it was.
    if raised {
        open_to_reviewers(tx, id, requirement)?;
    }
    Ok(raised)
}

/// Issues the grant of a request: the grant row carries the request's
/// action, read in the same transaction.
pub(crate) fn insert_grant<T: RequestRows + GrantRows + ?Sized>(
    tx: &mut T,
    id: &RequestId,
    fp: &Fingerprint,
    grant: &airlock_core::request::GrantRecord,
) -> Result<(), StoreError> {
    let req = get(tx, id)?.ok_or_else(|| StoreError::Db(format!("no request {id}")))?;
    tx.insert_grant_row(id, fp, grant, &req.action)
}
