//! The outbox: PostgreSQL's SQL and row reading.

use chrono::{DateTime, Utc};
use postgres::Row;

use super::{count, Tx};
use crate::logic::OutboxRows;
use crate::model::OutboxMessage;
use crate::StoreError;

fn outbox_from_row(r: &Row) -> Result<OutboxMessage, StoreError> {
    Ok(OutboxMessage {
        id: r.try_get(0)?,
        target: r.try_get(1)?,
        event: r.try_get(2)?,
        payload: r.try_get(3)?,
        status: r.try_get(4)?,
        attempts: count(r.try_get(5)?)?,
        last_error: r.try_get(6)?,
        next_attempt_at: r.try_get(7)?,
        created_at: r.try_get(8)?,
        delivered_at: r.try_get(9)?,
    })
}

impl OutboxRows for Tx<'_> {
    fn outbox_list(
        &mut self,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let rows = self.query(
            "SELECT id, target, event, payload, status, attempts, last_error, next_attempt_at, created_at, delivered_at
             FROM outbox WHERE ($1::text IS NULL OR status = $1)
             ORDER BY created_at DESC, id DESC LIMIT $2",
            &[&status, &i64::from(limit)],
        )?;
        rows.iter().map(outbox_from_row).collect()
    }

    fn enqueue(&mut self, m: &OutboxMessage) -> Result<(), StoreError> {
        let attempts = i32::try_from(m.attempts).unwrap_or(i32::MAX);
        self.execute(
            "INSERT INTO outbox (id, target, event, payload, status, attempts, last_error, next_attempt_at, created_at, delivered_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &m.id,
                &m.target,
                &m.event,
                &m.payload,
                &m.status,
                &attempts,
                &m.last_error,
                &m.next_attempt_at,
                &m.created_at,
                &m.delivered_at,
            ],
        )?;
        Ok(())
    }

    fn lease_due(
        &mut self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
        claim: &str,
        busy: &[String],
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        // The batch holds the write lock: no other node claims meanwhile.
        let rows = self.query(
            "UPDATE outbox SET next_attempt_at = $2, claim = $4 WHERE id IN (
                 SELECT id FROM outbox WHERE status = 'pending' AND next_attempt_at <= $1
                 AND NOT ((CASE WHEN substr(target, 1, 6) = 'slack:' THEN 'slack'
                                WHEN substr(target, 1, 8) = 'discord:' THEN 'discord'
                                ELSE target END) = ANY($5))
                 ORDER BY created_at, id LIMIT $3)
             RETURNING id, target, event, payload, status, attempts, last_error, next_attempt_at, created_at, delivered_at",
            &[&now, &lease_until, &i64::from(limit), &claim, &busy],
        )?;
        rows.iter().map(outbox_from_row).collect()
    }

    fn outbox_delivered(
        &mut self,
        id: &str,
        at: DateTime<Utc>,
        claim: &str,
    ) -> Result<bool, StoreError> {
        Ok(self.execute(
            "UPDATE outbox SET status = 'delivered', delivered_at = $2, attempts = attempts + 1,
             last_error = NULL WHERE id = $1 AND claim = $3",
            &[&id, &at, &claim],
        )? == 1)
    }

    fn outbox_attempt_failed(
        &mut self,
        id: &str,
        error: &str,
        next: DateTime<Utc>,
        give_up: bool,
        claim: &str,
    ) -> Result<bool, StoreError> {
        Ok(self.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $2, next_attempt_at = $3,
             status = CASE WHEN $4 THEN 'failed' ELSE status END WHERE id = $1 AND claim = $5",
            &[&id, &error, &next, &give_up, &claim],
        )? == 1)
    }

    fn outbox_retry(&mut self, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        Ok(self.execute(
            "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = $2, claim = NULL
             WHERE id = $1 AND status = 'failed'",
            &[&id, &now],
        )? == 1)
    }
}
