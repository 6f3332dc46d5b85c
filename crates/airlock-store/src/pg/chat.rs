//! Chat messages and interactions already seen: PostgreSQL's SQL.

use airlock_core::RequestId;
use chrono::{DateTime, Utc};

use super::Tx;
use crate::logic::ChatRows;
use crate::StoreError;

impl ChatRows for Tx<'_> {
    fn chat_messages(
        &mut self,
        request: &RequestId,
        provider: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows = self.query(
            "SELECT channel, ts FROM chat_messages WHERE request_id = $1 AND provider = $2 ORDER BY channel",
            &[&request.to_string(), &provider],
        )?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    fn save_chat_message(
        &mut self,
        request: &RequestId,
        provider: &str,
        channel: &str,
        ts: &str,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO chat_messages (request_id, provider, channel, ts) VALUES ($1, $2, $3, $4)
             ON CONFLICT (request_id, provider, channel) DO UPDATE SET ts = excluded.ts",
            &[&request.to_string(), &provider, &channel, &ts],
        )?;
        Ok(())
    }

    fn first_seen(
        &mut self,
        source: &str,
        id: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        Ok(self.execute(
            "INSERT INTO interactions_seen (source, id, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&source, &id, &at],
        )? == 1)
    }
}
