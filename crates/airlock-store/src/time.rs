//! The one timestamp format the store writes: RFC 3339, UTC, milliseconds,
//! fixed width, so text order is time order.

use chrono::{DateTime, SecondsFormat, Utc};

use crate::StoreError;

/// Formats a time for storage and for audit records.
pub fn fmt(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses a stored time.
pub fn parse(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("time {s:?}: {e}")))
}

/// Now, truncated to what the store keeps, so a value read back equals the
/// value written.
pub fn now() -> DateTime<Utc> {
    let t = Utc::now();
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}
