//! Chat messages posted about requests and the interactions already
//! handled: plain rows, with no logic beyond each backend's SQL.

use airlock_core::RequestId;
use chrono::{DateTime, Utc};

use crate::StoreError;

/// What a backend does with chat rows.
pub(crate) trait ChatRows {
    /// See [`crate::ReadTx::chat_messages`].
    fn chat_messages(
        &mut self,
        request: &RequestId,
        provider: &str,
    ) -> Result<Vec<(String, String)>, StoreError>;
    /// See [`crate::WriteTx::save_chat_message`].
    fn save_chat_message(
        &mut self,
        request: &RequestId,
        provider: &str,
        channel: &str,
        ts: &str,
    ) -> Result<(), StoreError>;
    /// See [`crate::WriteTx::first_seen`].
    fn first_seen(&mut self, source: &str, id: &str, at: DateTime<Utc>)
        -> Result<bool, StoreError>;
}
