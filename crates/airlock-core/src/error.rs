//! The one error type for values that fail to parse into a domain type.

/// A value was not a valid instance of the domain type it was parsed into.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {reason}")]
pub struct ParseError {
    /// Which kind of value was being parsed (e.g. "group name").
    pub what: &'static str,
    /// Why it was refused, in words a user can act on.
    pub reason: String,
}

impl ParseError {
    pub(crate) fn new(what: &'static str, reason: impl Into<String>) -> Self {
        Self {
            what,
            reason: reason.into(),
        }
    }
}
