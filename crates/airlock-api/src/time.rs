//! The API's one timestamp format: RFC 3339, UTC, milliseconds, `Z`
//! (`2025-01-02T03:04:05.678Z`), the format the store and the audit log use.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serializer};

/// Formats a time the way the API shows it.
pub fn fmt(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// For `#[serde(with = "airlock_api::time")]` on a `DateTime<Utc>` field.
pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&fmt(*t))
}

/// Reads any RFC 3339 time, in any offset, as UTC.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let s = String::deserialize(d)?;
    DateTime::parse_from_rfc3339(&s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(serde::de::Error::custom)
}

/// For `#[serde(default, with = "airlock_api::time::option")]` on an
/// `Option<DateTime<Utc>>` field (`null` when none).
pub mod option {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// `null`, or the time as [`super::fmt`] writes it.
    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::fmt(*t)),
            None => s.serialize_none(),
        }
    }

    /// `null` or any RFC 3339 time, as UTC.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| {
                DateTime::parse_from_rfc3339(&s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    #[test]
    fn millis_and_z() {
        let t = chrono::Utc
            .timestamp_millis_opt(1_700_000_000_123)
            .single()
            .unwrap();
        assert_eq!(super::fmt(t), "2023-11-14T22:13:20.123Z");
    }
}
