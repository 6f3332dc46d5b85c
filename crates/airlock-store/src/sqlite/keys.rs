//! API keys and signing keys: SQLite's SQL and row reading.

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Row};

use super::{opt_time, Tx};
use crate::logic::{ApiKeyRow, KeyRows};
use crate::model::ApiKeyRecord;
use crate::time::{fmt, parse};
use crate::StoreError;

const API_KEY_COLS: &str =
    "id, hash, user_name, role, created_at, expires_at, revoked_at, last_used_at, scram";

fn api_key_row(r: &Row<'_>) -> Result<ApiKeyRow, StoreError> {
    Ok(ApiKeyRow {
        id: r.get(0)?,
        hash: r.get(1)?,
        user: r.get(2)?,
        role: r.get(3)?,
        created_at: parse(&r.get::<_, String>(4)?)?,
        expires_at: opt_time(r.get(5)?)?,
        revoked_at: opt_time(r.get(6)?)?,
        last_used_at: opt_time(r.get(7)?)?,
        scram: r.get(8)?,
    })
}

impl KeyRows for Tx<'_> {
    fn api_key_row(&mut self, hash: &str) -> Result<Option<ApiKeyRow>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {API_KEY_COLS} FROM api_keys WHERE hash = ?1"
        ))?;
        let mut rows = st.query([hash])?;
        rows.next()?.map(api_key_row).transpose()
    }

    fn api_key_rows(&mut self) -> Result<Vec<ApiKeyRow>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {API_KEY_COLS} FROM api_keys ORDER BY created_at, id"
        ))?;
        let mut rows = st.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(api_key_row(row)?);
        }
        Ok(out)
    }

    fn api_key_rows_of(&mut self, user: &str) -> Result<Vec<ApiKeyRow>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {API_KEY_COLS} FROM api_keys WHERE user_name = ?1 ORDER BY created_at, id"
        ))?;
        let mut rows = st.query([user])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(api_key_row(row)?);
        }
        Ok(out)
    }

    fn insert_api_key(&mut self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO api_keys (id, hash, user_name, role, created_at, expires_at, revoked_at, last_used_at, scram)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                key.id,
                key.hash,
                key.user.as_str(),
                key.role.as_str(),
                fmt(key.created_at),
                key.expires_at.map(fmt),
                key.revoked_at.map(fmt),
                key.last_used_at.map(fmt),
                key.scram,
            ])?;
        Ok(())
    }

    fn mark_key_revoked(&mut self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        // Announced before the change, so no process keeps the key live
        // from here on (see `crate::keycache`); a revocation that cannot
        // be announced is not made.
        self.revocations
            .ok_or_else(|| StoreError::Db("a key revoked outside the writer".into()))?
            .begin()?;
        let n = self
            .conn
            .prepare_cached(
                "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            )?
            .execute(params![id, fmt(at)])?;
        Ok(n == 1)
    }

    fn key_revoked_at(&mut self, id: &str) -> Result<Option<Option<DateTime<Utc>>>, StoreError> {
        let before: Option<Option<String>> = self
            .conn
            .prepare_cached("SELECT revoked_at FROM api_keys WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?;
        before.map(opt_time).transpose()
    }

    fn touch_api_keys(&mut self, ids: &[String], at: DateTime<Utc>) -> Result<(), StoreError> {
        let mut st = self.conn.prepare_cached(
            "UPDATE api_keys SET last_used_at = ?2
             WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
        )?;
        let at = fmt(at);
        for id in ids {
            st.execute(params![id, at])?;
        }
        Ok(())
    }

    fn signing_key(&mut self, purpose: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT public_key FROM signing_keys WHERE purpose = ?1")?
            .query_row([purpose], |r| r.get(0))
            .optional()?)
    }

    fn replace_signing_key(
        &mut self,
        purpose: &str,
        public: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO signing_keys (purpose, public_key, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (purpose) DO UPDATE SET public_key = excluded.public_key, created_at = excluded.created_at",
            )?
            .execute(params![purpose, public, fmt(at)])?;
        Ok(())
    }

    fn insert_signing_key(
        &mut self,
        purpose: &str,
        public: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO signing_keys (purpose, public_key, created_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![purpose, public, fmt(at)])?;
        Ok(())
    }
}
