//! Web sessions, password hashes and synced groups: PostgreSQL's SQL and row
//! reading.

use airlock_core::UserName;
use chrono::{DateTime, Utc};

use super::Tx;
use crate::logic::{SessionRow, SessionRows};
use crate::model::SessionRecord;
use crate::StoreError;

impl SessionRows for Tx<'_> {
    fn session_row(&mut self, id_hash: &str) -> Result<Option<SessionRow>, StoreError> {
        let row = self.query_opt(
            "SELECT id_hash, user_name, csrf, method, created_at, expires_at FROM sessions WHERE id_hash = $1",
            &[&id_hash],
        )?;
        row.map(|r| {
            Ok(SessionRow {
                id_hash: r.try_get(0)?,
                user: r.try_get(1)?,
                csrf: r.try_get(2)?,
                method: r.try_get(3)?,
                created_at: r.try_get(4)?,
                expires_at: r.try_get(5)?,
            })
        })
        .transpose()
    }

    fn delete_expired_sessions(&mut self, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.execute("DELETE FROM sessions WHERE expires_at <= $1", &[&now])?;
        Ok(())
    }

    fn insert_session_row(&mut self, s: &SessionRecord) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO sessions (id_hash, user_name, csrf, method, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &s.id_hash,
                &s.user.as_str(),
                &s.csrf,
                &s.method,
                &s.created_at,
                &s.expires_at,
            ],
        )?;
        Ok(())
    }

    fn delete_session(&mut self, id_hash: &str) -> Result<bool, StoreError> {
        Ok(self.execute("DELETE FROM sessions WHERE id_hash = $1", &[&id_hash])? == 1)
    }

    fn password_hash(&mut self, user: &UserName) -> Result<Option<String>, StoreError> {
        let row = self.query_opt(
            "SELECT hash FROM passwords WHERE user_name = $1",
            &[&user.as_str()],
        )?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    fn set_password_hash(
        &mut self,
        user: &UserName,
        hash: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO passwords (user_name, hash, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (user_name) DO UPDATE SET hash = excluded.hash, updated_at = excluded.updated_at",
            &[&user.as_str(), &hash, &at],
        )?;
        self.execute(
            "DELETE FROM sessions WHERE user_name = $1",
            &[&user.as_str()],
        )?;
        Ok(())
    }

    fn totp_secret(&mut self, user: &UserName) -> Result<Option<String>, StoreError> {
        let row = self.query_opt(
            "SELECT sealed FROM totp_secrets WHERE user_name = $1",
            &[&user.as_str()],
        )?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    fn set_totp_secret(
        &mut self,
        user: &UserName,
        sealed: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO totp_secrets (user_name, sealed, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (user_name) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at",
            &[&user.as_str(), &sealed, &at],
        )?;
        Ok(())
    }

    fn webauthn_keys(&mut self, user: &UserName) -> Result<Option<String>, StoreError> {
        let row = self.query_opt(
            "SELECT passkeys FROM webauthn_keys WHERE user_name = $1",
            &[&user.as_str()],
        )?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    fn set_webauthn_keys(
        &mut self,
        user: &UserName,
        passkeys: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO webauthn_keys (user_name, passkeys, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (user_name) DO UPDATE SET passkeys = excluded.passkeys, updated_at = excluded.updated_at",
            &[&user.as_str(), &passkeys, &at],
        )?;
        Ok(())
    }

    fn synced_group_rows(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self.query(
            "SELECT user_name, groups_json FROM synced_groups ORDER BY user_name",
            &[],
        )?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    fn upsert_synced_groups(
        &mut self,
        user: &UserName,
        groups_json: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO synced_groups (user_name, groups_json, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (user_name) DO UPDATE SET groups_json = excluded.groups_json, updated_at = excluded.updated_at",
            &[&user.as_str(), &groups_json, &at],
        )?;
        Ok(())
    }
}
