//! Requests, their reviews and who may see them: PostgreSQL's SQL and row reading.

use airlock_core::{Fingerprint, GroupName, RequestId, RequestStatus, Review, UserName};
use chrono::{DateTime, Utc};
use postgres::Row;

use super::Tx;
use crate::logic::{Listing, RequestRow, RequestRows, ReviewRow};
use crate::StoreError;

macro_rules! request_query {
    ($tail:literal) => {
        concat!(
            "SELECT id, status, action_json, fingerprint, requirement_json, policies_json, reason, created_at, expires_at FROM requests ",
            $tail
        )
    };
}

fn request_row(r: &Row) -> Result<RequestRow, StoreError> {
    Ok(RequestRow {
        id: r.try_get(0)?,
        status: r.try_get(1)?,
        action_json: r.try_get(2)?,
        fingerprint: r.try_get(3)?,
        requirement_json: r.try_get(4)?,
        policies_json: r.try_get(5)?,
        reason: r.try_get(6)?,
        created_at: r.try_get(7)?,
        expires_at: r.try_get(8)?,
    })
}

impl RequestRows for Tx<'_> {
    fn request_row(&mut self, id: &RequestId) -> Result<Option<RequestRow>, StoreError> {
        let row = self.query_opt(request_query!("WHERE id = $1"), &[&id.to_string()])?;
        row.as_ref().map(request_row).transpose()
    }

    fn request_rows(&mut self, l: &Listing<'_>) -> Result<Vec<RequestRow>, StoreError> {
        let rows = self.query(
            request_query!(
                "WHERE (cardinality($1::text[]) = 0 OR status = ANY($1))
                 AND ($2::text IS NULL OR principal = $2)
                 AND ($3::text IS NULL
                      OR ($5::bool AND principal = $3)
                      OR (principal <> $3 AND EXISTS (
                            SELECT 1 FROM request_groups g
                            WHERE g.request_id = requests.id AND g.group_name = ANY($4::text[]))))
                 AND ($6::timestamptz IS NULL OR created_at < $6
                      OR (created_at = $6 AND id < $7::text))
                 ORDER BY created_at DESC, id DESC LIMIT $8"
            ),
            &[
                &l.statuses,
                &l.principal,
                &l.viewer,
                &l.groups,
                &l.own,
                &l.after.as_ref().map(|(at, _)| *at),
                &l.after.as_ref().map(|(_, id)| id.as_str()),
                &i64::from(l.limit),
            ],
        )?;
        rows.iter().map(request_row).collect()
    }

    fn review_rows(&mut self, id: &RequestId) -> Result<Vec<ReviewRow>, StoreError> {
        let rows = self.query(
            "SELECT reviewer, verdict, reason, channel, at, step_up FROM reviews WHERE request_id = $1 ORDER BY at, reviewer",
            &[&id.to_string()],
        )?;
        rows.iter()
            .map(|r| {
                Ok(ReviewRow {
                    reviewer: r.try_get(0)?,
                    verdict: r.try_get(1)?,
                    reason: r.try_get(2)?,
                    channel: r.try_get(3)?,
                    at: r.try_get(4)?,
                    step_up: r.try_get(5)?,
                })
            })
            .collect()
    }

    fn pending_id(
        &mut self,
        principal: &UserName,
        fp: &Fingerprint,
    ) -> Result<Option<String>, StoreError> {
        let row = self.query_opt(
            "SELECT id FROM requests WHERE principal = $1 AND fingerprint = $2 AND status = 'pending'",
            &[&principal.as_str(), &fp.to_string()],
        )?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    fn expiry_rows(&mut self) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        let rows = self.query(
            "SELECT id, expires_at FROM requests WHERE status = 'pending'
             UNION ALL
             SELECT g.request_id, g.expires_at FROM grants g JOIN requests r ON r.id = g.request_id
             WHERE r.status = 'approved'",
            &[],
        )?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    fn count_status(&mut self, status: RequestStatus) -> Result<i64, StoreError> {
        Ok(self
            .query_one(
                "SELECT COUNT(*) FROM requests WHERE status = $1",
                &[&status.as_str()],
            )?
            .try_get(0)?)
    }

    fn count_pending(&mut self, principal: &UserName) -> Result<i64, StoreError> {
        Ok(self
            .query_one(
                "SELECT COUNT(*) FROM requests WHERE principal = $1 AND status = 'pending'",
                &[&principal.as_str()],
            )?
            .try_get(0)?)
    }

    fn count_requests_since(
        &mut self,
        principal: &UserName,
        since: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        Ok(self
            .query_one(
                "SELECT COUNT(*) FROM requests WHERE principal = $1 AND created_at >= $2",
                &[&principal.as_str(), &since],
            )?
            .try_get(0)?)
    }

    fn insert_request_row(
        &mut self,
        row: &RequestRow,
        principal: &UserName,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO requests (id, status, principal, action_json, fingerprint, requirement_json,
             policies_json, reason, created_at, expires_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $9)",
            &[
                &row.id,
                &row.status,
                &principal.as_str(),
                &row.action_json,
                &row.fingerprint,
                &row.requirement_json,
                &row.policies_json,
                &row.reason,
                &row.created_at,
                &row.expires_at,
            ],
        )?;
        Ok(())
    }

    fn insert_request_group(
        &mut self,
        id: &RequestId,
        group: &GroupName,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO request_groups (request_id, group_name) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
            &[&id.to_string(), &group.as_str()],
        )?;
        Ok(())
    }

    fn update_status(
        &mut self,
        id: &RequestId,
        from: RequestStatus,
        to: RequestStatus,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let n = self.execute(
            "UPDATE requests SET status = $3, updated_at = $4 WHERE id = $1 AND status = $2",
            &[&id.to_string(), &from.as_str(), &to.as_str(), &at],
        )?;
        Ok(n == 1)
    }

    fn update_requirement(
        &mut self,
        id: &RequestId,
        requirement_json: &str,
        policies_json: &str,
    ) -> Result<bool, StoreError> {
        let n = self.execute(
            "UPDATE requests SET requirement_json = $2, policies_json = $3
             WHERE id = $1 AND status = 'pending'",
            &[&id.to_string(), &requirement_json, &policies_json],
        )?;
        Ok(n == 1)
    }

    fn insert_review(&mut self, id: &RequestId, review: &Review) -> Result<bool, StoreError> {
        let n = self.execute(
            "INSERT INTO reviews (request_id, reviewer, verdict, reason, channel, at, step_up)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            &[
                &id.to_string(),
                &review.reviewer.as_str(),
                &review.verdict.as_str(),
                &review.reason,
                &review.channel,
                &review.at,
                &review.step_up,
            ],
        )?;
        Ok(n == 1)
    }

    fn strengthen_review(
        &mut self,
        id: &RequestId,
        old: Option<&str>,
        review: &Review,
    ) -> Result<bool, StoreError> {
        let n = self.execute(
            "UPDATE reviews SET reason = $3, channel = $4, at = $5, step_up = $6, verdict = $8
             WHERE request_id = $1 AND reviewer = $2 AND verdict = 'approve'
               AND step_up IS NOT DISTINCT FROM $7",
            &[
                &id.to_string(),
                &review.reviewer.as_str(),
                &review.reason,
                &review.channel,
                &review.at,
                &review.step_up,
                &old,
                &review.verdict.as_str(),
            ],
        )?;
        Ok(n == 1)
    }
}
