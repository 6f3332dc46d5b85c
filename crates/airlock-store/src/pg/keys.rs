//! API keys and signing keys: PostgreSQL's SQL and row reading.

use chrono::{DateTime, Utc};
use postgres::Row;

use super::Tx;
use crate::logic::{ApiKeyRow, KeyRows};
use crate::model::ApiKeyRecord;
use crate::StoreError;

pub(super) fn api_key_row(r: &Row) -> Result<ApiKeyRow, StoreError> {
    Ok(ApiKeyRow {
        id: r.try_get(0)?,
        hash: r.try_get(1)?,
        user: r.try_get(2)?,
        role: r.try_get(3)?,
        created_at: r.try_get(4)?,
        expires_at: r.try_get(5)?,
        revoked_at: r.try_get(6)?,
        last_used_at: r.try_get(7)?,
        scram: r.try_get(8)?,
    })
}

/// The columns [`api_key_row`] reads, as a literal (statements are cached
/// by `&'static str`).
macro_rules! api_key_cols {
    () => {
        "id, hash, user_name, role, created_at, expires_at, revoked_at, last_used_at, scram"
    };
}

/// A key by its hash: what authentication asks on every request (here,
/// and on the async connections of [`super::lookup`]).
pub(super) const BY_HASH: &str =
    concat!("SELECT ", api_key_cols!(), " FROM api_keys WHERE hash = $1");

impl KeyRows for Tx<'_> {
    fn api_key_row(&mut self, hash: &str) -> Result<Option<ApiKeyRow>, StoreError> {
        let row = self.query_opt(BY_HASH, &[&hash])?;
        row.as_ref().map(api_key_row).transpose()
    }

    fn api_key_rows(&mut self) -> Result<Vec<ApiKeyRow>, StoreError> {
        let rows = self.query(
            concat!(
                "SELECT ",
                api_key_cols!(),
                " FROM api_keys ORDER BY created_at, id"
            ),
            &[],
        )?;
        rows.iter().map(api_key_row).collect()
    }

    fn api_key_rows_of(&mut self, user: &str) -> Result<Vec<ApiKeyRow>, StoreError> {
        let rows = self.query(
            concat!(
                "SELECT ",
                api_key_cols!(),
                " FROM api_keys WHERE user_name = $1 ORDER BY created_at, id"
            ),
            &[&user],
        )?;
        rows.iter().map(api_key_row).collect()
    }

    fn insert_api_key(&mut self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO api_keys (id, hash, user_name, role, created_at, expires_at, revoked_at, last_used_at, scram)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &key.id,
                &key.hash,
                &key.user.as_str(),
                &key.role.as_str(),
                &key.created_at,
                &key.expires_at,
                &key.revoked_at,
                &key.last_used_at,
                &key.scram,
            ],
        )?;
        Ok(())
    }

    fn mark_key_revoked(&mut self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let n = self.execute(
            "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            &[&id, &at],
        )?;
        Ok(n == 1)
    }

    fn key_revoked_at(&mut self, id: &str) -> Result<Option<Option<DateTime<Utc>>>, StoreError> {
        let row = self.query_opt("SELECT revoked_at FROM api_keys WHERE id = $1", &[&id])?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    fn touch_api_keys(&mut self, ids: &[String], at: DateTime<Utc>) -> Result<(), StoreError> {
        self.execute(
            "UPDATE api_keys SET last_used_at = $2
             WHERE id = ANY($1) AND (last_used_at IS NULL OR last_used_at < $2)",
            &[&ids, &at],
        )?;
        Ok(())
    }

    fn signing_key(&mut self, purpose: &str) -> Result<Option<String>, StoreError> {
        let row = self.query_opt(
            "SELECT public_key FROM signing_keys WHERE purpose = $1",
            &[&purpose],
        )?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    fn replace_signing_key(
        &mut self,
        purpose: &str,
        public: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO signing_keys (purpose, public_key, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (purpose) DO UPDATE SET public_key = excluded.public_key, created_at = excluded.created_at",
            &[&purpose, &public, &at],
        )?;
        Ok(())
    }

    fn insert_signing_key(
        &mut self,
        purpose: &str,
        public: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO signing_keys (purpose, public_key, created_at) VALUES ($1, $2, $3)",
            &[&purpose, &public, &at],
        )?;
        Ok(())
    }
}
