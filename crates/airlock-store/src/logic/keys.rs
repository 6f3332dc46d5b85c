//! API keys and signing keys on either backend: key rows read back, and
//! what revoking a key found.

use airlock_core::UserName;
use chrono::{DateTime, Utc};

use super::corrupt;
use crate::model::{ApiKeyRecord, KeyRevocation, Role};
use crate::StoreError;

/// An API key's row, as stored.
pub(crate) struct ApiKeyRow {
    pub(crate) id: String,
    pub(crate) hash: String,
    pub(crate) user: String,
    pub(crate) role: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) expires_at: Option<DateTime<Utc>>,
    pub(crate) revoked_at: Option<DateTime<Utc>>,
    pub(crate) last_used_at: Option<DateTime<Utc>>,
    pub(crate) scram: Option<String>,
}

impl ApiKeyRow {
    pub(crate) fn into_record(self) -> Result<ApiKeyRecord, StoreError> {
        let role = self.role;
        Ok(ApiKeyRecord {
            id: self.id,
            hash: self.hash,
            user: UserName::parse(&self.user).map_err(corrupt)?,
            role: Role::parse(&role).ok_or_else(|| corrupt(format!("role {role:?}")))?,
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            last_used_at: self.last_used_at,
            scram: self.scram,
        })
    }
}

/// What a backend does with key rows: SQL and column reading only.
pub(crate) trait KeyRows {
    /// The key whose SHA-256 is `hash`.
    fn api_key_row(&mut self, hash: &str) -> Result<Option<ApiKeyRow>, StoreError>;
    /// Every key, oldest first.
    fn api_key_rows(&mut self) -> Result<Vec<ApiKeyRow>, StoreError>;
    /// `user`'s keys, oldest first.
    fn api_key_rows_of(&mut self, user: &str) -> Result<Vec<ApiKeyRow>, StoreError>;
    /// See [`crate::WriteTx::insert_api_key`].
    fn insert_api_key(&mut self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    /// Marks the key revoked at `at` unless it already is; false if
    /// nothing changed.
    fn mark_key_revoked(&mut self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError>;
    /// When the key was revoked (`Some(None)`: it was not), if it exists.
    fn key_revoked_at(&mut self, id: &str) -> Result<Option<Option<DateTime<Utc>>>, StoreError>;
    /// See [`crate::WriteTx::touch_api_keys`].
    fn touch_api_keys(&mut self, ids: &[String], at: DateTime<Utc>) -> Result<(), StoreError>;
    /// See [`crate::ReadTx::signing_key`].
    fn signing_key(&mut self, purpose: &str) -> Result<Option<String>, StoreError>;
    /// See [`crate::WriteTx::replace_signing_key`].
    fn replace_signing_key(
        &mut self,
        purpose: &str,
        public: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// See [`crate::WriteTx::insert_signing_key`].
    fn insert_signing_key(
        &mut self,
        purpose: &str,
        public: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
}

pub(crate) fn by_hash<T: KeyRows + ?Sized>(
    tx: &mut T,
    hash: &str,
) -> Result<Option<ApiKeyRecord>, StoreError> {
    tx.api_key_row(hash)?
        .map(ApiKeyRow::into_record)
        .transpose()
}

pub(crate) fn of_user<T: KeyRows + ?Sized>(
    tx: &mut T,
    user: &UserName,
) -> Result<Vec<ApiKeyRecord>, StoreError> {
    tx.api_key_rows_of(user.as_str())?
        .into_iter()
        .map(ApiKeyRow::into_record)
        .collect()
}

pub(crate) fn list<T: KeyRows + ?Sized>(tx: &mut T) -> Result<Vec<ApiKeyRecord>, StoreError> {
    tx.api_key_rows()?
        .into_iter()
        .map(ApiKeyRow::into_record)
        .collect()
}

pub(crate) fn revoke<T: KeyRows + ?Sized>(
    tx: &mut T,
    id: &str,
    at: DateTime<Utc>,
) -> Result<KeyRevocation, StoreError> {
    if tx.mark_key_revoked(id, at)? {
        return Ok(KeyRevocation::Revoked);
    }
    match tx.key_revoked_at(id)? {
        None => Ok(KeyRevocation::Unknown),
        Some(Some(t)) => Ok(KeyRevocation::AlreadyRevoked(t)),
        // The update spares only revoked keys, so this one should have
        // been: fail rather than report it live.
        Some(None) => Err(StoreError::Corrupt(format!(
            "key {id} is neither revoked nor revocable"
        ))),
    }
}
