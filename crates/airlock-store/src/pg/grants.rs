//! Grants: PostgreSQL's SQL and row reading.

use airlock_core::request::GrantRecord;
use airlock_core::{Action, Fingerprint, GrantId, RequestId, UserName};
use chrono::{DateTime, Utc};

use super::{count, Tx};
use crate::logic::{GrantBinding, GrantRecordRow, GrantRows, GrantState};
use crate::StoreError;

impl GrantRows for Tx<'_> {
    fn grant_row(&mut self, request: &RequestId) -> Result<Option<GrantRecordRow>, StoreError> {
        let row = self.query_opt(
            "SELECT id, expires_at, max_uses, uses, revoked, outcome FROM grants WHERE request_id = $1",
            &[&request.to_string()],
        )?;
        row.map(|r| {
            Ok(GrantRecordRow {
                id: r.try_get(0)?,
                expires_at: r.try_get(1)?,
                max_uses: count(r.try_get(2)?)?,
                uses: count(r.try_get(3)?)?,
                revoked: r.try_get(4)?,
                outcome: r.try_get(5)?,
            })
        })
        .transpose()
    }

    fn grant_binding(&mut self, id: &GrantId) -> Result<Option<GrantBinding>, StoreError> {
        let row = self.query_opt(
            "SELECT request_id, principal, fingerprint, completed, enforced FROM grants WHERE id = $1",
            &[&id.to_string()],
        )?;
        row.map(|r| {
            Ok(GrantBinding {
                request_id: r.try_get(0)?,
                principal: r.try_get(1)?,
                fingerprint: r.try_get(2)?,
                completed: r.try_get(3)?,
                enforced: r.try_get(4)?,
            })
        })
        .transpose()
    }

    fn spend_use(
        &mut self,
        id: &GrantId,
        now: DateTime<Utc>,
        by_enforcer: bool,
    ) -> Result<Option<(u32, u32)>, StoreError> {
        let spent = self.query_opt(
            "UPDATE grants SET uses = uses + 1, enforced = enforced OR $3
             WHERE id = $1 AND NOT revoked AND NOT completed AND uses < max_uses AND expires_at > $2
             RETURNING uses, max_uses",
            &[&id.to_string(), &now, &by_enforcer],
        )?;
        spent
            .map(|r| Ok((count(r.try_get(0)?)?, count(r.try_get(1)?)?)))
            .transpose()
    }

    fn grant_state(&mut self, id: &GrantId) -> Result<Option<GrantState>, StoreError> {
        let row = self.query_opt(
            "SELECT revoked, completed, uses, max_uses FROM grants WHERE id = $1",
            &[&id.to_string()],
        )?;
        row.map(|r| {
            Ok(GrantState {
                revoked: r.try_get(0)?,
                completed: r.try_get(1)?,
                uses: i64::from(r.try_get::<_, i32>(2)?),
                max_uses: i64::from(r.try_get::<_, i32>(3)?),
            })
        })
        .transpose()
    }

    fn insert_grant_row(
        &mut self,
        id: &RequestId,
        fp: &Fingerprint,
        grant: &GrantRecord,
        action: &Action,
    ) -> Result<(), StoreError> {
        let max_uses = i32::try_from(grant.max_uses)
            .map_err(|_| StoreError::Db(format!("max_uses {} is too large", grant.max_uses)))?;
        self.execute(
            "INSERT INTO grants (id, request_id, principal, action, resource_type, resource_id,
             fingerprint, expires_at, max_uses) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &grant.grant_id.to_string(),
                &id.to_string(),
                &action.principal.as_str(),
                &action.action.as_str(),
                &action.resource.kind.as_str(),
                &action.resource.id.as_str(),
                &fp.to_string(),
                &grant.expires_at,
                &max_uses,
            ],
        )?;
        Ok(())
    }

    fn complete_grant(&mut self, id: &GrantId, outcome: &str) -> Result<bool, StoreError> {
        let n = self.execute(
            // Each consumed use reports once; the grant closes when its
            // last use has. (The right-hand sides read the row before the
            // update.)
            "UPDATE grants SET outcome = $2, completions = completions + 1,
             completed = (completions + 1 >= max_uses)
             WHERE id = $1 AND completions < uses AND NOT completed",
            &[&id.to_string(), &outcome],
        )?;
        Ok(n == 1)
    }

    fn revoke_grant(&mut self, id: &GrantId) -> Result<(), StoreError> {
        self.execute(
            "UPDATE grants SET revoked = true WHERE id = $1",
            &[&id.to_string()],
        )?;
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
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM grants WHERE principal = $1 AND action = $2
                 AND resource_type = $3 AND resource_id = $4)",
                &[&principal.as_str(), &action, &resource_type, &resource_id],
            )?
            .try_get(0)?)
    }
}
