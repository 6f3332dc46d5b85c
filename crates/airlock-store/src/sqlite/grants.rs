//! Grants: SQLite's SQL and row reading.

use airlock_core::request::GrantRecord;
use airlock_core::{Action, Fingerprint, GrantId, RequestId, UserName};
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

use super::Tx;
use crate::logic::{GrantBinding, GrantRecordRow, GrantRows, GrantState};
use crate::time::{fmt, parse};
use crate::StoreError;

impl GrantRows for Tx<'_> {
    fn grant_row(&mut self, request: &RequestId) -> Result<Option<GrantRecordRow>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, expires_at, max_uses, uses, revoked, outcome FROM grants WHERE request_id = ?1",
        )?;
        let mut rows = st.query([request.to_string()])?;
        rows.next()?
            .map(|r| {
                Ok(GrantRecordRow {
                    id: r.get(0)?,
                    expires_at: parse(&r.get::<_, String>(1)?)?,
                    max_uses: r.get(2)?,
                    uses: r.get(3)?,
                    revoked: r.get(4)?,
                    outcome: r.get(5)?,
                })
            })
            .transpose()
    }

    fn grant_binding(&mut self, id: &GrantId) -> Result<Option<GrantBinding>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT request_id, principal, fingerprint, completed, enforced FROM grants WHERE id = ?1",
            )?
            .query_row([id.to_string()], |r| {
                Ok(GrantBinding {
                    request_id: r.get(0)?,
                    principal: r.get(1)?,
                    fingerprint: r.get(2)?,
                    completed: r.get(3)?,
                    enforced: r.get(4)?,
                })
            })
            .optional()?)
    }

    fn spend_use(
        &mut self,
        id: &GrantId,
        now: DateTime<Utc>,
        by_enforcer: bool,
    ) -> Result<Option<(u32, u32)>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE grants SET uses = uses + 1, enforced = MAX(enforced, ?3)
                 WHERE id = ?1 AND revoked = 0 AND completed = 0 AND uses < max_uses AND expires_at > ?2
                 RETURNING uses, max_uses",
            )?
            .query_row(params![id.to_string(), fmt(now), by_enforcer], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?)
    }

    fn grant_state(&mut self, id: &GrantId) -> Result<Option<GrantState>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT revoked, completed, uses, max_uses FROM grants WHERE id = ?1")?
            .query_row([id.to_string()], |r| {
                Ok(GrantState {
                    revoked: r.get(0)?,
                    completed: r.get(1)?,
                    uses: r.get(2)?,
                    max_uses: r.get(3)?,
                })
            })
            .optional()?)
    }

    fn insert_grant_row(
        &mut self,
        id: &RequestId,
        fp: &Fingerprint,
        grant: &GrantRecord,
        action: &Action,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO grants (id, request_id, principal, action, resource_type, resource_id,
                 fingerprint, expires_at, max_uses) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                grant.grant_id.to_string(),
                id.to_string(),
                action.principal.as_str(),
                action.action.as_str(),
                action.resource.kind.as_str(),
                action.resource.id.as_str(),
                fp.to_string(),
                fmt(grant.expires_at),
                grant.max_uses,
            ])?;
        Ok(())
    }

    fn complete_grant(&mut self, id: &GrantId, outcome: &str) -> Result<bool, StoreError> {
        // Each consumed use reports once; the grant closes when its last
        // use has. (The right-hand sides read the row before the update.)
        let n = self
            .conn
            .prepare_cached(
                "UPDATE grants SET outcome = ?2, completions = completions + 1,
                 completed = CASE WHEN completions + 1 >= max_uses THEN 1 ELSE 0 END
                 WHERE id = ?1 AND completions < uses AND completed = 0",
            )?
            .execute(params![id.to_string(), outcome])?;
        Ok(n == 1)
    }

    fn revoke_grant(&mut self, id: &GrantId) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE grants SET revoked = 1 WHERE id = ?1")?
            .execute([id.to_string()])?;
        Ok(())
    }

    fn granted_before(
        &mut self,
        principal: &UserName,
        action: &str,
        resource_type: &str,
        resource_id: &str,
    ) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM grants WHERE principal = ?1 AND action = ?2
                 AND resource_type = ?3 AND resource_id = ?4)",
            )?
            .query_row(
                params![principal.as_str(), action, resource_type, resource_id],
                |r| r.get(0),
            )?)
    }
}
