//! What the two backends share beyond their SQL, written once: deciding
//! from stored rows (why a grant cannot be consumed, what revoking a key
//! found), linking audit records to the chain head a batch keeps, and
//! turning rows into domain values. Each backend's transaction supplies the
//! row-level primitives of every area (one trait per area: SQL and column
//! reading only); [`ReadTx`] and [`WriteTx`] are implemented here, once,
//! for any transaction that supplies them all.

mod audit;
mod chat;
mod grants;
mod keys;
mod outbox;
mod requests;
mod sessions;

use airlock_core::request::GrantRecord;
use airlock_core::{
    AuditRecord, ChainHash, Fingerprint, GrantId, GroupName, NewAuditRecord, Request, RequestId,
    RequestStatus, Requirement, Review, UserName,
};
use airlock_keys::Checkpoint;
use chrono::{DateTime, Utc};

pub(crate) use audit::{AuditRow, AuditRows, CheckpointRow};
pub(crate) use chat::ChatRows;
pub(crate) use grants::{GrantBinding, GrantRecordRow, GrantRows, GrantState};
pub(crate) use keys::{ApiKeyRow, KeyRows};
pub(crate) use outbox::OutboxRows;
pub(crate) use requests::{Listing, RequestRow, RequestRows, ReviewRow};
pub(crate) use sessions::{SessionRow, SessionRows};

use crate::batch::Effects;
use crate::model::{
    ApiKeyRecord, AuditFilter, ConsumeOutcome, GrantRow, KeyRevocation, OutboxMessage,
    SessionRecord, StatusFilter,
};
use crate::{ReadTx, StoreError, WriteTx};

/// A stored value that does not read back: corruption or tampering.
pub(crate) fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// A backend's transaction: the primitives of every area, and the batch it
/// writes in.
pub(crate) trait Rows:
    RequestRows + GrantRows + AuditRows + KeyRows + SessionRows + OutboxRows + ChatRows
{
    /// The batch this transaction writes in; `None` when it only reads.
    fn effects(&mut self) -> Option<&mut Effects>;
    /// Rewrites the schema version row with its own value: a write that
    /// changes nothing.
    fn probe_write(&mut self) -> Result<(), StoreError>;
}

/// Methods that are one backend query each, forwarded as they are to the
/// area trait that declares them.
macro_rules! forward {
    ($($area:ident::$name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(fn $name(&mut self, $($arg: $ty),*) -> Result<$ret, StoreError> {
            $area::$name(self, $($arg),*)
        })*
    };
}

impl<T: Rows> ReadTx for T {
    forward! {
        OutboxRows::outbox_list(status: Option<&str>, limit: u32) -> Vec<OutboxMessage>;
        ChatRows::chat_messages(request: &RequestId, provider: &str) -> Vec<(String, String)>;
        SessionRows::password_hash(user: &UserName) -> Option<String>;
        SessionRows::totp_secret(user: &UserName) -> Option<String>;
        SessionRows::webauthn_keys(user: &UserName) -> Option<String>;
        RequestRows::count_status(status: RequestStatus) -> i64;
        RequestRows::count_pending(principal: &UserName) -> i64;
        RequestRows::count_requests_since(principal: &UserName, since: DateTime<Utc>) -> i64;
        KeyRows::signing_key(purpose: &str) -> Option<String>;
        GrantRows::granted_before(principal: &UserName, action: &str, resource_type: &str, resource_id: &str) -> bool;
    }

    fn get_request(&mut self, id: &RequestId) -> Result<Option<Request>, StoreError> {
        requests::get(self, id)
    }

    fn list_requests(
        &mut self,
        filter: &StatusFilter,
        limit: u32,
    ) -> Result<Vec<Request>, StoreError> {
        requests::list(self, filter, limit)
    }

    fn find_pending(
        &mut self,
        principal: &UserName,
        fp: &Fingerprint,
    ) -> Result<Option<RequestId>, StoreError> {
        requests::find_pending(self, principal, fp)
    }

    fn pending_expiries(&mut self) -> Result<Vec<(RequestId, DateTime<Utc>)>, StoreError> {
        requests::expiries(self)
    }

    fn get_grant(&mut self, id: &GrantId) -> Result<Option<GrantRow>, StoreError> {
        grants::get(self, id)
    }

    fn audit_after(&mut self, after: i64, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        audit::records(self.audit_rows_after(after, limit)?)
    }

    fn audit_filing_after(
        &mut self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, Option<String>)>, StoreError> {
        self.filing_rows_after(after, limit)
    }

    fn audit_about(&mut self, subject: &str, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        audit::records(self.audit_rows_about(subject, limit)?)
    }

    fn audit_search(
        &mut self,
        filter: &AuditFilter,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        audit::records(self.audit_rows_matching(filter, limit)?)
    }

    fn checkpoints(&mut self) -> Result<Vec<Checkpoint>, StoreError> {
        audit::checkpoints(self)
    }

    fn audit_head(&mut self) -> Result<(i64, ChainHash), StoreError> {
        audit::head(self)
    }

    fn api_key_by_hash(&mut self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        keys::by_hash(self, hash)
    }

    fn list_api_keys(&mut self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        keys::list(self)
    }

    fn api_keys_of(&mut self, user: &UserName) -> Result<Vec<ApiKeyRecord>, StoreError> {
        keys::of_user(self, user)
    }

    fn audit_tree_node(
        &mut self,
        level: u32,
        index: u64,
    ) -> Result<Option<airlock_core::merkle::Hash>, StoreError> {
        audit::tree_node(self, level, index)
    }

    fn audit_tree_size(&mut self) -> Result<u64, StoreError> {
        self.tree_leaves()
    }

    fn audit_notes(&mut self) -> Result<Vec<(i64, String)>, StoreError> {
        self.note_rows()
    }

    fn session(&mut self, id_hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        sessions::get(self, id_hash)
    }

    fn synced_groups(&mut self) -> Result<Vec<(UserName, Vec<GroupName>)>, StoreError> {
        sessions::synced_groups(self)
    }
}

impl<T: Rows> WriteTx for T {
    fn probe_write(&mut self) -> Result<(), StoreError> {
        Rows::probe_write(self)
    }

    forward! {
        RequestRows::insert_review(id: &RequestId, review: &Review) -> bool;
        RequestRows::strengthen_review(id: &RequestId, old: Option<&str>, review: &Review) -> bool;
        GrantRows::complete_grant(id: &GrantId, outcome: &str) -> bool;
        GrantRows::revoke_grant(id: &GrantId) -> ();
        KeyRows::insert_api_key(key: &ApiKeyRecord) -> ();
        KeyRows::touch_api_keys(ids: &[String], at: DateTime<Utc>) -> ();
        KeyRows::insert_signing_key(purpose: &str, public: &str, at: DateTime<Utc>) -> ();
        KeyRows::replace_signing_key(purpose: &str, public: &str, at: DateTime<Utc>) -> ();
        SessionRows::set_password_hash(user: &UserName, hash: &str, at: DateTime<Utc>) -> ();
        SessionRows::set_totp_secret(user: &UserName, sealed: &str, at: DateTime<Utc>) -> ();
        SessionRows::set_webauthn_keys(user: &UserName, passkeys: &str, at: DateTime<Utc>) -> ();
        SessionRows::delete_session(id_hash: &str) -> bool;
        AuditRows::insert_checkpoint(cp: &Checkpoint) -> ();
        AuditRows::insert_audit_note(size: i64, note: &str) -> ();
        AuditRows::cosign_audit_note(size: i64, lines: &str) -> ();
        ChatRows::save_chat_message(request: &RequestId, provider: &str, channel: &str, ts: &str) -> ();
        ChatRows::first_seen(source: &str, id: &str, at: DateTime<Utc>) -> bool;
        OutboxRows::enqueue(msg: &OutboxMessage) -> ();
        OutboxRows::outbox_delivered(id: &str, at: DateTime<Utc>, claim: &str) -> bool;
        OutboxRows::outbox_attempt_failed(id: &str, error: &str, next: DateTime<Utc>, give_up: bool, claim: &str) -> bool;
        OutboxRows::outbox_retry(id: &str, now: DateTime<Utc>) -> bool;
    }

    fn append_audit(
        &mut self,
        rec: NewAuditRecord,
        ts: DateTime<Utc>,
    ) -> Result<AuditRecord, StoreError> {
        audit::append(self, rec, ts)
    }

    fn insert_request(&mut self, req: &Request) -> Result<(), StoreError> {
        requests::insert(self, req)
    }

    fn set_status(
        &mut self,
        id: &RequestId,
        from: RequestStatus,
        to: RequestStatus,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        requests::set_status(self, id, from, to, at)
    }

    fn raise_requirement(
        &mut self,
        id: &RequestId,
        requirement: &Requirement,
        policies: &[String],
    ) -> Result<bool, StoreError> {
        requests::raise_requirement(self, id, requirement, policies)
    }

    fn insert_grant(
        &mut self,
        id: &RequestId,
        fp: &Fingerprint,
        grant: &GrantRecord,
    ) -> Result<(), StoreError> {
        requests::insert_grant(self, id, fp, grant)
    }

    fn consume_grant(
        &mut self,
        id: &GrantId,
        now: DateTime<Utc>,
        by_enforcer: bool,
    ) -> Result<ConsumeOutcome, StoreError> {
        grants::consume(self, id, now, by_enforcer)
    }

    fn revoke_api_key(&mut self, id: &str, at: DateTime<Utc>) -> Result<KeyRevocation, StoreError> {
        keys::revoke(self, id, at)
    }

    fn insert_session(&mut self, s: &SessionRecord, now: DateTime<Utc>) -> Result<(), StoreError> {
        sessions::insert(self, s, now)
    }

    fn set_synced_groups(
        &mut self,
        user: &UserName,
        groups: &[GroupName],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sessions::set_synced_groups(self, user, groups, at)
    }

    fn directory_changed(&mut self) {
        if let Some(e) = self.effects() {
            e.announced.directory = true;
        }
    }

    fn claim_outbox(
        &mut self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
        claim: &str,
        busy: &[String],
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        outbox::claim(self, now, lease_until, limit, claim, busy)
    }

    fn changed(&mut self, id: RequestId) {
        if let Some(e) = self.effects() {
            e.announced.requests.push(id);
        }
    }
}
