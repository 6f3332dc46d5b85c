//! Web sessions and what signing in needs (password hashes, groups from
//! single sign-on) on either backend.

use airlock_core::{GroupName, UserName};
use chrono::{DateTime, Utc};

use super::corrupt;
use crate::model::SessionRecord;
use crate::StoreError;

/// A session's row, as stored.
pub(crate) struct SessionRow {
    pub(crate) id_hash: String,
    pub(crate) user: String,
    pub(crate) csrf: String,
    pub(crate) method: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) expires_at: DateTime<Utc>,
}

/// What a backend does with session and user rows: SQL and column
/// reading only.
pub(crate) trait SessionRows {
    /// The session whose cookie hashes to `id_hash`.
    fn session_row(&mut self, id_hash: &str) -> Result<Option<SessionRow>, StoreError>;
    /// Drops sessions expired at `now`.
    fn delete_expired_sessions(&mut self, now: DateTime<Utc>) -> Result<(), StoreError>;
    /// Stores a session.
    fn insert_session_row(&mut self, s: &SessionRecord) -> Result<(), StoreError>;
    /// See [`crate::WriteTx::delete_session`].
    fn delete_session(&mut self, id_hash: &str) -> Result<bool, StoreError>;
    /// See [`crate::ReadTx::password_hash`].
    fn password_hash(&mut self, user: &UserName) -> Result<Option<String>, StoreError>;
    /// See [`crate::WriteTx::set_password_hash`].
    fn set_password_hash(
        &mut self,
        user: &UserName,
        hash: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// See [`crate::ReadTx::totp_secret`].
    fn totp_secret(&mut self, user: &UserName) -> Result<Option<String>, StoreError>;
    /// See [`crate::WriteTx::set_totp_secret`].
    fn set_totp_secret(
        &mut self,
        user: &UserName,
        sealed: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// See [`crate::ReadTx::webauthn_keys`].
    fn webauthn_keys(&mut self, user: &UserName) -> Result<Option<String>, StoreError>;
    /// See [`crate::WriteTx::set_webauthn_keys`].
    fn set_webauthn_keys(
        &mut self,
        user: &UserName,
        passkeys: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Every user's synced groups, as `(user, JSON list)`, by user.
    fn synced_group_rows(&mut self) -> Result<Vec<(String, String)>, StoreError>;
    /// Stores a user's synced groups (a JSON list), replacing theirs.
    fn upsert_synced_groups(
        &mut self,
        user: &UserName,
        groups_json: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
}

pub(crate) fn get<T: SessionRows + ?Sized>(
    tx: &mut T,
    id_hash: &str,
) -> Result<Option<SessionRecord>, StoreError> {
    tx.session_row(id_hash)?
        .map(|r| {
            Ok(SessionRecord {
                id_hash: r.id_hash,
                user: UserName::parse(&r.user).map_err(corrupt)?,
                csrf: r.csrf,
                method: r.method,
                created_at: r.created_at,
                expires_at: r.expires_at,
            })
        })
        .transpose()
}

pub(crate) fn insert<T: SessionRows + ?Sized>(
    tx: &mut T,
    s: &SessionRecord,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.delete_expired_sessions(now)?;
    tx.insert_session_row(s)
}

pub(crate) fn synced_groups<T: SessionRows + ?Sized>(
    tx: &mut T,
) -> Result<Vec<(UserName, Vec<GroupName>)>, StoreError> {
    tx.synced_group_rows()?
        .into_iter()
        .map(|(user, groups)| {
            Ok((
                UserName::parse(&user).map_err(corrupt)?,
                serde_json::from_str(&groups)?,
            ))
        })
        .collect()
}

pub(crate) fn set_synced_groups<T: SessionRows + ?Sized>(
    tx: &mut T,
    user: &UserName,
    groups: &[GroupName],
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.upsert_synced_groups(user, &serde_json::to_string(groups)?, at)
}
