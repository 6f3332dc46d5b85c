//! Grants on either backend: their rows read back, and what a consumption
//! attempt found, decided once from what the row says.

use airlock_core::request::GrantRecord;
use airlock_core::{Action, Fingerprint, GrantId, RequestId, UserName};
use chrono::{DateTime, Utc};

use super::corrupt;
use crate::model::{ConsumeOutcome, GrantRow};
use crate::StoreError;

/// A grant's row, as its request's view shows it.
pub(crate) struct GrantRecordRow {
    pub(crate) id: String,
    pub(crate) expires_at: DateTime<Utc>,
    pub(crate) max_uses: u32,
    pub(crate) uses: u32,
    pub(crate) revoked: bool,
    pub(crate) outcome: Option<String>,
}

/// What a grant was issued for, by its id.
pub(crate) struct GrantBinding {
    pub(crate) request_id: String,
    pub(crate) principal: String,
    pub(crate) fingerprint: String,
    pub(crate) completed: bool,
    pub(crate) enforced: bool,
}

/// A grant's state, read when a consumption spent nothing, to say why.
pub(crate) struct GrantState {
    pub(crate) revoked: bool,
    pub(crate) completed: bool,
    pub(crate) uses: i64,
    pub(crate) max_uses: i64,
}

impl GrantState {
    /// Why a grant in this state could not be consumed. It is read in the
    /// same transaction as the conditional update that failed, so the
    /// update's conditions (not revoked, not completed, a use left, not
    /// expired) are what failed: if neither of the first three did, expiry
    /// did.
    fn refusal(&self) -> ConsumeOutcome {
        if self.revoked {
            ConsumeOutcome::Revoked
        } else if self.completed || self.uses >= self.max_uses {
            ConsumeOutcome::Spent
        } else {
            ConsumeOutcome::Expired
        }
    }
}

/// What a backend does with grant rows: SQL and column reading only.
pub(crate) trait GrantRows {
    /// The grant of a request.
    fn grant_row(&mut self, request: &RequestId) -> Result<Option<GrantRecordRow>, StoreError>;
    /// What the grant with this id was issued for.
    fn grant_binding(&mut self, id: &GrantId) -> Result<Option<GrantBinding>, StoreError>;
    /// Spends one use if the grant is live (not revoked, not completed, a
    /// use left, not expired at `now`), in one conditional update: the
    /// `(uses, max_uses)` after it, or `None` if nothing was spent. A use
    /// spent `by_enforcer` marks the grant enforced.
    fn spend_use(
        &mut self,
        id: &GrantId,
        now: DateTime<Utc>,
        by_enforcer: bool,
    ) -> Result<Option<(u32, u32)>, StoreError>;
    /// The grant's state, if there is one with this id.
    fn grant_state(&mut self, id: &GrantId) -> Result<Option<GrantState>, StoreError>;
    /// Stores the grant of request `id`, issued for `action`.
    fn insert_grant_row(
        &mut self,
        id: &RequestId,
        fp: &Fingerprint,
        grant: &GrantRecord,
        action: &Action,
    ) -> Result<(), StoreError>;
    /// See [`crate::WriteTx::complete_grant`].
    fn complete_grant(&mut self, id: &GrantId, outcome: &str) -> Result<bool, StoreError>;
    /// See [`crate::WriteTx::revoke_grant`].
    fn revoke_grant(&mut self, id: &GrantId) -> Result<(), StoreError>;
    /// See [`crate::ReadTx::granted_before`].
    fn granted_before(
        &mut self,
        principal: &UserName,
        action: &str,
        resource_type: &str,
        resource_id: &str,
    ) -> Result<bool, StoreError>;
}

/// The grant of a request, if it has one.
pub(crate) fn record_of<T: GrantRows + ?Sized>(
    tx: &mut T,
    request: &RequestId,
) -> Result<Option<GrantRecord>, StoreError> {
    tx.grant_row(request)?
        .map(|g| {
            Ok(GrantRecord {
                grant_id: GrantId::parse(&g.id).map_err(corrupt)?,
                expires_at: g.expires_at,
                max_uses: g.max_uses,
                uses: g.uses,
                revoked: g.revoked,
                outcome: g.outcome,
            })
        })
        .transpose()
}

pub(crate) fn get<T: GrantRows + ?Sized>(
    tx: &mut T,
    id: &GrantId,
) -> Result<Option<GrantRow>, StoreError> {
    let Some(b) = tx.grant_binding(id)? else {
        return Ok(None);
    };
    let request_id = RequestId::parse(&b.request_id).map_err(corrupt)?;
    let grant =
        record_of(tx, &request_id)?.ok_or_else(|| StoreError::Corrupt("grant vanished".into()))?;
    Ok(Some(GrantRow {
        grant,
        request_id,
        principal: UserName::parse(&b.principal).map_err(corrupt)?,
        fingerprint: Fingerprint::parse(&b.fingerprint).map_err(corrupt)?,
        completed: b.completed,
        enforced: b.enforced,
    }))
}

pub(crate) fn consume<T: GrantRows + ?Sized>(
    tx: &mut T,
    id: &GrantId,
    now: DateTime<Utc>,
    by_enforcer: bool,
) -> Result<ConsumeOutcome, StoreError> {
    if let Some((uses, max)) = tx.spend_use(id, now, by_enforcer)? {
        return Ok(ConsumeOutcome::Consumed {
            uses_left: max.saturating_sub(uses),
        });
    }
    // Nothing spent: say why, from the same transaction's view.
    Ok(match tx.grant_state(id)? {
        None => ConsumeOutcome::Unknown,
        Some(state) => state.refusal(),
    })
}
