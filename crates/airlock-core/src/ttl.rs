//! Durations that bound how long a request waits or a grant lives.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ParseError;

/// The longest any request or grant may live: a week. Longer would be
/// standing access by another name.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A time-to-live between one second and [`MAX_TTL`], written like `90s`,
/// `10m` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ttl(Duration);

impl Ttl {
    /// Parses a human duration (`10m`, `1h 30m`, `45s`).
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let d = humantime::parse_duration(s.trim())
            .map_err(|e| ParseError::new("duration", format!("{s:?}: {e}")))?;
        Self::from_duration(d)
    }

    /// Checks the bounds of an already computed duration.
    pub fn from_duration(d: Duration) -> Result<Self, ParseError> {
        if d < Duration::from_secs(1) {
            return Err(ParseError::new("duration", "must be at least 1s"));
        }
        if d > MAX_TTL {
            return Err(ParseError::new("duration", "must be at most 7 days"));
        }
        Ok(Self(d))
    }

    /// Whole seconds, the unit the store keeps.
    pub fn seconds(self) -> i64 {
        // Bounded by MAX_TTL, so this cannot overflow.
        self.0.as_secs() as i64
    }

    /// As a standard duration.
    pub fn as_duration(self) -> Duration {
        self.0
    }

    /// As a chrono duration, for adding to timestamps.
    pub fn as_chrono(self) -> chrono::Duration {
        chrono::Duration::seconds(self.seconds())
    }

    /// Shorthand for a whole number of minutes known to be in range.
    pub const fn minutes(m: u64) -> Self {
        Self(Duration::from_secs(m * 60))
    }
}

impl TryFrom<String> for Ttl {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        Self::parse(&s)
    }
}

impl From<Ttl> for String {
    fn from(t: Ttl) -> String {
        t.to_string()
    }
}

impl fmt::Display for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// The longest an API key may be made to live with `--expires-in`: ten
/// years. Keys meant to last longer are made without an expiry.
pub const MAX_KEY_LIFETIME: Duration = Duration::from_secs(3650 * 24 * 3600);

/// How long a new API key lives: between one second and
/// [`MAX_KEY_LIFETIME`], written like `12h` or `30d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyLifetime(Duration);

impl KeyLifetime {
    /// Parses a human duration (`30d`, `12h`, `90s`).
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let d = humantime::parse_duration(s.trim())
            .map_err(|e| ParseError::new("duration", format!("{s:?}: {e}")))?;
        if d < Duration::from_secs(1) {
            return Err(ParseError::new("duration", "must be at least 1s"));
        }
        if d > MAX_KEY_LIFETIME {
            return Err(ParseError::new("duration", "must be at most 10 years"));
        }
        Ok(Self(d))
    }

    /// As a chrono duration, for adding to timestamps.
    pub fn as_chrono(self) -> chrono::Duration {
        // Bounded by MAX_KEY_LIFETIME, so whole milliseconds fit an i64.
        chrono::Duration::milliseconds(self.0.as_millis() as i64)
    }
}

impl fmt::Display for KeyLifetime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_bounds() {
        assert_eq!(Ttl::parse("10m").unwrap().seconds(), 600);
        assert_eq!(Ttl::parse("1h").unwrap().seconds(), 3600);
        assert!(Ttl::parse("0s").is_err());
        assert!(Ttl::parse("30d").is_err());
        assert!(Ttl::parse("ten minutes").is_err());
        assert!(Ttl::parse("").is_err());
    }

    #[test]
    fn key_lifetimes_parse_and_are_bounded() {
        assert_eq!(
            KeyLifetime::parse("30d").unwrap().as_chrono(),
            chrono::Duration::days(30)
        );
        assert_eq!(
            KeyLifetime::parse("1s").unwrap().as_chrono(),
            chrono::Duration::seconds(1)
        );
        assert!(KeyLifetime::parse("0s").is_err());
        assert!(KeyLifetime::parse("11years").is_err());
        assert!(KeyLifetime::parse("soon").is_err());
    }
}
