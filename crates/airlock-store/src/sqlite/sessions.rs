//! Web sessions, password hashes and synced groups: SQLite's SQL and row
//! reading.

use airlock_core::UserName;
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

use super::Tx;
use crate::logic::{SessionRow, SessionRows};
use crate::model::SessionRecord;
use crate::time::{fmt, parse};
use crate::StoreError;

impl SessionRows for Tx<'_> {
    fn session_row(&mut self, id_hash: &str) -> Result<Option<SessionRow>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT id_hash, user_name, csrf, method, created_at, expires_at FROM sessions WHERE id_hash = ?1",
        )?;
        let mut rows = st.query([id_hash])?;
        rows.next()?
            .map(|r| {
                Ok(SessionRow {
                    id_hash: r.get(0)?,
                    user: r.get(1)?,
                    csrf: r.get(2)?,
                    method: r.get(3)?,
                    created_at: parse(&r.get::<_, String>(4)?)?,
                    expires_at: parse(&r.get::<_, String>(5)?)?,
                })
            })
            .transpose()
    }

    fn delete_expired_sessions(&mut self, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM sessions WHERE expires_at <= ?1")?
            .execute([fmt(now)])?;
        Ok(())
    }

    fn insert_session_row(&mut self, s: &SessionRecord) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO sessions (id_hash, user_name, csrf, method, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                s.id_hash,
                s.user.as_str(),
                s.csrf,
                s.method,
                fmt(s.created_at),
                fmt(s.expires_at)
            ])?;
        Ok(())
    }

    fn delete_session(&mut self, id_hash: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM sessions WHERE id_hash = ?1")?
            .execute([id_hash])?
            == 1)
    }

    fn password_hash(&mut self, user: &UserName) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT hash FROM passwords WHERE user_name = ?1")?
            .query_row([user.as_str()], |r| r.get(0))
            .optional()?)
    }

    fn set_password_hash(
        &mut self,
        user: &UserName,
        hash: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO passwords (user_name, hash, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_name) DO UPDATE SET hash = excluded.hash, updated_at = excluded.updated_at",
            )?
            .execute(params![user.as_str(), hash, fmt(at)])?;
        self.conn
            .prepare_cached("DELETE FROM sessions WHERE user_name = ?1")?
            .execute([user.as_str()])?;
        Ok(())
    }

    fn totp_secret(&mut self, user: &UserName) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT sealed FROM totp_secrets WHERE user_name = ?1")?
            .query_row([user.as_str()], |r| r.get(0))
            .optional()?)
    }

    fn set_totp_secret(
        &mut self,
        user: &UserName,
        sealed: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO totp_secrets (user_name, sealed, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_name) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at",
            )?
            .execute(params![user.as_str(), sealed, fmt(at)])?;
        Ok(())
    }

    fn webauthn_keys(&mut self, user: &UserName) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT passkeys FROM webauthn_keys WHERE user_name = ?1")?
            .query_row([user.as_str()], |r| r.get(0))
            .optional()?)
    }

    fn set_webauthn_keys(
        &mut self,
        user: &UserName,
        passkeys: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO webauthn_keys (user_name, passkeys, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_name) DO UPDATE SET passkeys = excluded.passkeys, updated_at = excluded.updated_at",
            )?
            .execute(params![user.as_str(), passkeys, fmt(at)])?;
        Ok(())
    }

    fn synced_group_rows(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT user_name, groups_json FROM synced_groups ORDER BY user_name",
        )?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn upsert_synced_groups(
        &mut self,
        user: &UserName,
        groups_json: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO synced_groups (user_name, groups_json, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_name) DO UPDATE SET groups_json = excluded.groups_json, updated_at = excluded.updated_at",
            )?
            .execute(params![user.as_str(), groups_json, fmt(at)])?;
        Ok(())
    }
}
