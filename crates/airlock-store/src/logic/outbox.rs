//! The outbox on either backend: claiming due messages under a lease, in
//! the order they were written.

use chrono::{DateTime, Utc};

use crate::model::OutboxMessage;
use crate::StoreError;

/// What a backend does with outbox rows: SQL and column reading only.
pub(crate) trait OutboxRows {
    /// See [`crate::ReadTx::outbox_list`].
    fn outbox_list(
        &mut self,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<OutboxMessage>, StoreError>;
    /// See [`crate::WriteTx::enqueue`].
    fn enqueue(&mut self, msg: &OutboxMessage) -> Result<(), StoreError>;
    /// Leases the oldest `limit` pending messages due at `now` until
    /// `lease_until` under `claim`, and returns them as leased, in any
    /// order; none whose target is in `busy`.
    fn lease_due(
        &mut self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
        claim: &str,
        busy: &[String],
    ) -> Result<Vec<OutboxMessage>, StoreError>;
    /// See [`crate::WriteTx::outbox_delivered`].
    fn outbox_delivered(
        &mut self,
        id: &str,
        at: DateTime<Utc>,
        claim: &str,
    ) -> Result<bool, StoreError>;
    /// See [`crate::WriteTx::outbox_attempt_failed`].
    fn outbox_attempt_failed(
        &mut self,
        id: &str,
        error: &str,
        next: DateTime<Utc>,
        give_up: bool,
        claim: &str,
    ) -> Result<bool, StoreError>;
    /// See [`crate::WriteTx::outbox_retry`].
    fn outbox_retry(&mut self, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError>;
}

pub(crate) fn claim<T: OutboxRows + ?Sized>(
    tx: &mut T,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: u32,
    claim: &str,
    busy: &[String],
) -> Result<Vec<OutboxMessage>, StoreError> {
    let mut due = tx.lease_due(now, lease_until, limit, claim, busy)?;
    // Oldest first, as `claim_outbox` promises: `UPDATE … RETURNING`
    // returns rows in no set order.
    due.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(due)
}
