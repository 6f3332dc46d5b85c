//! Requests, their reviews and who may see them: SQLite's SQL and row reading.

use airlock_core::{Fingerprint, GroupName, RequestId, RequestStatus, Review, UserName};
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Row};

use super::Tx;
use crate::logic::{Listing, RequestRow, RequestRows, ReviewRow};
use crate::time::{fmt, parse};
use crate::StoreError;

const REQUEST_COLS: &str = "id, status, action_json, fingerprint, requirement_json, policies_json, reason, created_at, expires_at";

fn request_row(r: &Row<'_>) -> Result<RequestRow, StoreError> {
    Ok(RequestRow {
        id: r.get(0)?,
        status: r.get(1)?,
        action_json: r.get(2)?,
        fingerprint: r.get(3)?,
        requirement_json: r.get(4)?,
        policies_json: r.get(5)?,
        reason: r.get(6)?,
        created_at: parse(&r.get::<_, String>(7)?)?,
        expires_at: parse(&r.get::<_, String>(8)?)?,
    })
}

impl RequestRows for Tx<'_> {
    fn request_row(&mut self, id: &RequestId) -> Result<Option<RequestRow>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {REQUEST_COLS} FROM requests WHERE id = ?1"
        ))?;
        let mut rows = st.query([id.to_string()])?;
        rows.next()?.map(request_row).transpose()
    }

    fn request_rows(&mut self, l: &Listing<'_>) -> Result<Vec<RequestRow>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {REQUEST_COLS} FROM requests
             WHERE (?1 = '[]' OR status IN (SELECT value FROM json_each(?1)))
               AND (?2 IS NULL OR principal = ?2)
               AND (?3 IS NULL
                    OR (?5 AND principal = ?3)
                    OR (principal <> ?3 AND EXISTS (
                          SELECT 1 FROM request_groups g
                          WHERE g.request_id = requests.id
                            AND g.group_name IN (SELECT value FROM json_each(?4)))))
               AND (?6 IS NULL OR created_at < ?6 OR (created_at = ?6 AND id < ?7))
             ORDER BY created_at DESC, id DESC LIMIT ?8"
        ))?;
        let mut rows = st.query(params![
            serde_json::to_string(&l.statuses)?,
            l.principal,
            l.viewer,
            serde_json::to_string(&l.groups)?,
            l.own,
            l.after.as_ref().map(|(at, _)| fmt(*at)),
            l.after.as_ref().map(|(_, id)| id),
            l.limit
        ])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(request_row(row)?);
        }
        Ok(out)
    }

    fn review_rows(&mut self, id: &RequestId) -> Result<Vec<ReviewRow>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT reviewer, verdict, reason, channel, at, step_up FROM reviews WHERE request_id = ?1 ORDER BY at, reviewer",
        )?;
        let mut rows = st.query([id.to_string()])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(ReviewRow {
                reviewer: r.get(0)?,
                verdict: r.get(1)?,
                reason: r.get(2)?,
                channel: r.get(3)?,
                at: parse(&r.get::<_, String>(4)?)?,
                step_up: r.get(5)?,
            });
        }
        Ok(out)
    }

    fn pending_id(
        &mut self,
        principal: &UserName,
        fp: &Fingerprint,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT id FROM requests WHERE principal = ?1 AND fingerprint = ?2 AND status = 'pending'",
            )?
            .query_row([principal.as_str(), &fp.to_string()], |r| r.get(0))
            .optional()?)
    }

    fn expiry_rows(&mut self) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        // Pending requests expire at their own TTL; approved ones when their
        // grant does.
        let mut st = self.conn.prepare_cached(
            "SELECT id, expires_at FROM requests WHERE status = 'pending'
             UNION ALL
             SELECT g.request_id, g.expires_at FROM grants g JOIN requests r ON r.id = g.request_id
             WHERE r.status = 'approved'",
        )?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at) = row?;
            out.push((id, parse(&at)?));
        }
        Ok(out)
    }

    fn count_status(&mut self, status: RequestStatus) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM requests WHERE status = ?1")?
            .query_row([status.as_str()], |r| r.get(0))?)
    }

    fn count_pending(&mut self, principal: &UserName) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM requests WHERE principal = ?1 AND status = 'pending'",
            )?
            .query_row([principal.as_str()], |r| r.get(0))?)
    }

    fn count_requests_since(
        &mut self,
        principal: &UserName,
        since: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM requests WHERE principal = ?1 AND created_at >= ?2",
            )?
            .query_row(params![principal.as_str(), fmt(since)], |r| r.get(0))?)
    }

    fn insert_request_row(
        &mut self,
        row: &RequestRow,
        principal: &UserName,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO requests (id, status, principal, action_json, fingerprint, requirement_json,
                 policies_json, reason, created_at, expires_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?9)",
            )?
            .execute(params![
                row.id,
                row.status,
                principal.as_str(),
                row.action_json,
                row.fingerprint,
                row.requirement_json,
                row.policies_json,
                row.reason,
                fmt(row.created_at),
                fmt(row.expires_at),
            ])?;
        Ok(())
    }

    fn insert_request_group(
        &mut self,
        id: &RequestId,
        group: &GroupName,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT OR IGNORE INTO request_groups (request_id, group_name) VALUES (?1, ?2)",
            )?
            .execute(params![id.to_string(), group.as_str()])?;
        Ok(())
    }

    fn update_status(
        &mut self,
        id: &RequestId,
        from: RequestStatus,
        to: RequestStatus,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE requests SET status = ?3, updated_at = ?4 WHERE id = ?1 AND status = ?2",
            )?
            .execute(params![id.to_string(), from.as_str(), to.as_str(), fmt(at)])?;
        Ok(n == 1)
    }

    fn update_requirement(
        &mut self,
        id: &RequestId,
        requirement_json: &str,
        policies_json: &str,
    ) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE requests SET requirement_json = ?2, policies_json = ?3
                 WHERE id = ?1 AND status = 'pending'",
            )?
            .execute(params![id.to_string(), requirement_json, policies_json])?;
        Ok(n == 1)
    }

    fn insert_review(&mut self, id: &RequestId, review: &Review) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "INSERT OR IGNORE INTO reviews (request_id, reviewer, verdict, reason, channel, at, step_up)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                id.to_string(),
                review.reviewer.as_str(),
                review.verdict.as_str(),
                review.reason,
                review.channel,
                fmt(review.at),
                review.step_up,
            ])?;
        Ok(n == 1)
    }

    fn strengthen_review(
        &mut self,
        id: &RequestId,
        old: Option<&str>,
        review: &Review,
    ) -> Result<bool, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE reviews SET reason = ?3, channel = ?4, at = ?5, step_up = ?6, verdict = ?8
                 WHERE request_id = ?1 AND reviewer = ?2 AND verdict = 'approve'
                   AND step_up IS ?7",
            )?
            .execute(params![
                id.to_string(),
                review.reviewer.as_str(),
                review.reason,
                review.channel,
                fmt(review.at),
                review.step_up,
                old,
                review.verdict.as_str(),
            ])?;
        Ok(n == 1)
    }
}
