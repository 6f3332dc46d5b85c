//! Reading the audit log and the notification outbox, and retrying a
//! failed notification: one rule for who may, whichever channel asks.

use airlock_core::{AuditKind, AuditRecord, NewAuditRecord, Request};
use airlock_store::{AuditFilter, OutboxMessage, StatusFilter, Verification};
use serde_json::json;

use super::{Airlock, Caller};
use crate::ApiError;

impl Airlock {
    /// Who may read the audit log and the outbox, and retry notifications:
    /// admin keys, and members of `[web] auditor_groups` (from the console
    /// or with their own `user` key; never an enforcer key). The API and the console used to disagree.
    pub fn may_oversee(&self, caller: &Caller) -> bool {
        if caller.is_admin() {
            return true;
        }
        // An enforcer key acts for others (a proxy, a gateway): its user
        // being in an auditor group must not open the whole log to it.
        if caller.role != airlock_store::Role::User {
            return false;
        }
        let loaded = self.loaded.load();
        self.config
            .load()
            .web
            .auditor_groups
            .iter()
            .any(|g| loaded.directory.is_member(&caller.user, g))
    }

    fn oversee(&self, caller: &Caller) -> Result<(), ApiError> {
        if self.may_oversee(caller) {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "the audit log and notifications are for admin keys and members of [web] auditor_groups",
            ))
        }
    }

    /// Records after `after`, oldest first.
    pub async fn audit_after(
        &self,
        caller: &Caller,
        after: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, ApiError> {
        self.oversee(caller)?;
        Ok(self
            .store
            .read(move |r| r.audit_after(after, limit))
            .await?)
    }

    /// Records matching `filter`, newest first, and (when `verify`) how
    /// far the whole chain verifies.
    pub async fn audit_search(
        &self,
        caller: &Caller,
        filter: AuditFilter,
        limit: u32,
        verify: bool,
    ) -> Result<(Vec<AuditRecord>, Option<Verification>), ApiError> {
        self.oversee(caller)?;
        let key = self.public_keys().audit;
        Ok(self
            .store
            .read(move |r| {
                let records = r.audit_search(&filter, limit)?;
                let found = if verify {
                    Some(airlock_store::verify_chain(r, &key)?)
                } else {
                    None
                };
                Ok((records, found))
            })
            .await?)
    }

    /// Outbox messages, by status.
    pub async fn outbox_list(
        &self,
        caller: &Caller,
        status: Option<String>,
        limit: u32,
    ) -> Result<Vec<OutboxMessage>, ApiError> {
        self.oversee(caller)?;
        Ok(self
            .store
            .read(move |r| r.outbox_list(status.as_deref(), limit))
            .await?)
    }

    /// Puts a failed notification back in line, on record.
    pub async fn retry_outbox(&self, caller: &Caller, id: String) -> Result<(), ApiError> {
        self.oversee(caller)?;
        let actor = caller.user.to_string();
        let key = caller.key_id.clone();
        self.store
            .write(move |tx| {
                let t = airlock_store::time::now();
                if !tx.outbox_retry(&id, t)? {
                    return Ok(Err(ApiError::wrong_state(format!(
                        "{id} is not a failed notification"
                    ))));
                }
                tx.append_audit(
                    NewAuditRecord {
                        kind: AuditKind::NotificationRetried,
                        actor,
                        subject: id,
                        details: json!({"key": key}),
                    },
                    t,
                )?;
                Ok::<_, airlock_store::StoreError>(Ok(()))
            })
            .await
            .map_err(ApiError::Audit)?
    }

    /// The requests the overview's figures count: everyone's for those who
    /// may oversee, else the caller's own (counts across users say who is
    /// doing what). The flag says which.
    pub async fn overview_requests(
        &self,
        caller: &Caller,
        limit: u32,
    ) -> Result<(Vec<Request>, bool), ApiError> {
        let everyone = self.may_oversee(caller);
        let filter = StatusFilter {
            principal: (!everyone).then(|| caller.user.clone()),
            ..Default::default()
        };
        let all = self
            .store
            .read(move |r| r.list_requests(&filter, limit))
            .await?;
        Ok((all, everyone))
    }

    /// The latest policy load or failed reload on record (not sensitive:
    /// every signed-in user sees which policies are in force).
    pub async fn last_policy_load(&self) -> Result<Option<AuditRecord>, ApiError> {
        Ok(self
            .store
            .read(|r| {
                let mut found = Vec::new();
                for kind in [AuditKind::PolicyLoaded, AuditKind::PolicyReloadFailed] {
                    let f = AuditFilter {
                        kind: Some(kind.as_str().into()),
                        ..AuditFilter::default()
                    };
                    found.extend(r.audit_search(&f, 1)?);
                }
                Ok(found.into_iter().max_by_key(|a| a.seq))
            })
            .await?)
    }
}
