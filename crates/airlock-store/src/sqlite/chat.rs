//! Chat messages and interactions already seen: SQLite's SQL.

use airlock_core::RequestId;
use chrono::{DateTime, Utc};
use rusqlite::params;

use super::Tx;
use crate::logic::ChatRows;
use crate::time::fmt;
use crate::StoreError;

impl ChatRows for Tx<'_> {
    fn chat_messages(
        &mut self,
        request: &RequestId,
        provider: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT channel, ts FROM chat_messages WHERE request_id = ?1 AND provider = ?2 ORDER BY channel",
        )?;
        let rows = st.query_map(params![request.to_string(), provider], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn save_chat_message(
        &mut self,
        request: &RequestId,
        provider: &str,
        channel: &str,
        ts: &str,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO chat_messages (request_id, provider, channel, ts) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (request_id, provider, channel) DO UPDATE SET ts = excluded.ts",
            )?
            .execute(params![request.to_string(), provider, channel, ts])?;
        Ok(())
    }

    fn first_seen(
        &mut self,
        source: &str,
        id: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "INSERT INTO interactions_seen (source, id, at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            )?
            .execute(params![source, id, fmt(at)])?
            == 1)
    }
}
