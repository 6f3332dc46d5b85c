//! The outbox: SQLite's SQL and row reading.

use chrono::{DateTime, Utc};
use rusqlite::{params, Row};

use super::{opt_time, Tx};
use crate::logic::OutboxRows;
use crate::model::OutboxMessage;
use crate::time::{fmt, parse};
use crate::StoreError;

const OUTBOX_COLS: &str = "id, target, event, payload, status, attempts, last_error, next_attempt_at, created_at, delivered_at";

fn outbox_from_row(r: &Row<'_>) -> Result<OutboxMessage, StoreError> {
    Ok(OutboxMessage {
        id: r.get(0)?,
        target: r.get(1)?,
        event: r.get(2)?,
        payload: r.get(3)?,
        status: r.get(4)?,
        attempts: r.get(5)?,
        last_error: r.get(6)?,
        next_attempt_at: parse(&r.get::<_, String>(7)?)?,
        created_at: parse(&r.get::<_, String>(8)?)?,
        delivered_at: opt_time(r.get(9)?)?,
    })
}

impl OutboxRows for Tx<'_> {
    fn outbox_list(
        &mut self,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {OUTBOX_COLS} FROM outbox WHERE (?1 IS NULL OR status = ?1)
             ORDER BY created_at DESC, id DESC LIMIT ?2"
        ))?;
        let mut rows = st.query(params![status, limit])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(outbox_from_row(row)?);
        }
        Ok(out)
    }

    fn enqueue(&mut self, m: &OutboxMessage) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(&format!(
                "INSERT INTO outbox ({OUTBOX_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ))?
            .execute(params![
                m.id,
                m.target,
                m.event,
                m.payload,
                m.status,
                m.attempts,
                m.last_error,
                fmt(m.next_attempt_at),
                fmt(m.created_at),
                m.delivered_at.map(fmt),
            ])?;
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
        // The batch holds the write lock: no other process claims meanwhile.
        let mut st = self.conn.prepare_cached(&format!(
            "UPDATE outbox SET next_attempt_at = ?2, claim = ?4 WHERE id IN (
                 SELECT id FROM outbox WHERE status = 'pending' AND next_attempt_at <= ?1
                 AND (CASE WHEN substr(target, 1, 6) = 'slack:' THEN 'slack'
                           WHEN substr(target, 1, 8) = 'discord:' THEN 'discord'
                           ELSE target END) NOT IN (SELECT value FROM json_each(?5))
                 ORDER BY created_at, id LIMIT ?3)
             RETURNING {OUTBOX_COLS}"
        ))?;
        let busy = serde_json::to_string(busy)?;
        let mut rows = st.query(params![fmt(now), fmt(lease_until), limit, claim, busy])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(outbox_from_row(row)?);
        }
        Ok(out)
    }

    fn outbox_delivered(
        &mut self,
        id: &str,
        at: DateTime<Utc>,
        claim: &str,
    ) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE outbox SET status = 'delivered', delivered_at = ?2, attempts = attempts + 1,
                 last_error = NULL WHERE id = ?1 AND claim = ?3",
            )?
            .execute(params![id, fmt(at), claim])?
            == 1)
    }

    fn outbox_attempt_failed(
        &mut self,
        id: &str,
        error: &str,
        next: DateTime<Utc>,
        give_up: bool,
        claim: &str,
    ) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, next_attempt_at = ?3,
                 status = CASE WHEN ?4 THEN 'failed' ELSE status END WHERE id = ?1 AND claim = ?5",
            )?
            .execute(params![id, error, fmt(next), give_up, claim])?
            == 1)
    }

    fn outbox_retry(&mut self, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = ?2, claim = NULL
                 WHERE id = ?1 AND status = 'failed'",
            )?
            .execute(params![id, fmt(now)])?
            == 1)
    }
}
