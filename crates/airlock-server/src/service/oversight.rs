//! Reading the audit log and the notification outbox, and retrying a
//! failed notification: one rule for who may, whichever channel asks.

use airlock_api::{ConsistencyProof, InclusionProof};
use airlock_core::{merkle, AuditKind, AuditRecord, NewAuditRecord, Request};
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

    /// The newest signed tree checkpoint (a C2SP note), if any. Any key
    /// may read it: it says only how long the log is and its root.
    pub async fn audit_checkpoint(&self) -> Result<Option<String>, ApiError> {
        let notes = self.store.read(|r| r.audit_notes()).await?;
        Ok(notes.into_iter().last().map(|(_, n)| n))
    }

    /// An inclusion proof of record `seq` in the tree of `size` records
    /// (default: the newest checkpoint's size).
    pub async fn audit_inclusion(
        &self,
        caller: &Caller,
        seq: u64,
        size: Option<u64>,
    ) -> Result<InclusionProof, ApiError> {
        self.oversee(caller)?;
        let out = self
            .store
            .read(move |r| {
                let size = match size {
                    Some(s) => s,
                    None => latest_size(r)?,
                };
                let have = r.audit_tree_size()?;
                if seq == 0 || seq > size || size > have {
                    return Ok(Err(format!(
                        "need 1 <= seq <= size <= {have}; got seq {seq}, size {size}"
                    )));
                }
                let mut nodes = |l: u32, i: u64| r.audit_tree_node(l, i).ok().flatten();
                let proof = merkle::inclusion_proof(&mut nodes, seq - 1, size);
                let root = merkle::root(&mut nodes, size);
                let leaf = nodes(0, seq - 1);
                Ok(match (proof, root, leaf) {
                    (Ok(p), Ok(root), Some(leaf)) => Ok(InclusionProof {
                        seq,
                        size,
                        leaf_index: seq - 1,
                        leaf_hash: b64(&leaf),
                        root: b64(&root),
                        proof: p.iter().map(|h| b64(h)).collect(),
                    }),
                    _ => Err("the tree is incomplete".to_owned()),
                })
            })
            .await?;
        out.map_err(ApiError::BadRequest)
    }

    /// A consistency proof between the trees of `from` and `to` records.
    pub async fn audit_consistency(
        &self,
        caller: &Caller,
        from: u64,
        to: Option<u64>,
    ) -> Result<ConsistencyProof, ApiError> {
        self.oversee(caller)?;
        let out = self
            .store
            .read(move |r| {
                let to = match to {
                    Some(t) => t,
                    None => latest_size(r)?,
                };
                let have = r.audit_tree_size()?;
                if from == 0 || from > to || to > have {
                    return Ok(Err(format!(
                        "need 1 <= from <= to <= {have}; got from {from}, to {to}"
                    )));
                }
                let mut nodes = |l: u32, i: u64| r.audit_tree_node(l, i).ok().flatten();
                let proof = merkle::consistency_proof(&mut nodes, from, to);
                let old = merkle::root(&mut nodes, from);
                let new = merkle::root(&mut nodes, to);
                Ok(match (proof, old, new) {
                    (Ok(p), Ok(old), Ok(new)) => Ok(ConsistencyProof {
                        from,
                        to,
                        from_root: b64(&old),
                        to_root: b64(&new),
                        proof: p.iter().map(|h| b64(h)).collect(),
                    }),
                    _ => Err("the tree is incomplete".to_owned()),
                })
            })
            .await?;
        out.map_err(ApiError::BadRequest)
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
        // The current audit key and those it replaced (checkpoints signed
        // before a rotation); the current one alone if the folder cannot
        // be read.
        let dir = self.config.load().data_dir().join("keys");
        let keys = airlock_keys::Keyring::audit_keys(&dir)
            .unwrap_or_else(|_| vec![self.public_keys().audit]);
        Ok(self
            .store
            .read(move |r| {
                let records = r.audit_search(&filter, limit)?;
                let found = if verify {
                    Some(airlock_store::verify_chain(r, &keys)?)
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
                        details: json!({"key": key}).into(),
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

fn b64(h: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(h)
}

/// The newest checkpoint's size, or the whole tree when none is signed yet.
fn latest_size(r: &mut dyn airlock_store::ReadTx) -> Result<u64, airlock_store::StoreError> {
    match r.audit_notes()?.last() {
        Some((s, _)) => Ok(u64::try_from(*s).unwrap_or(0)),
        None => r.audit_tree_size(),
    }
}
