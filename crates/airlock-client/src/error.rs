//! What can go wrong asking Airlock: its refusal (with the API's code),
//! not reaching it, or an answer that is not API v1.

use airlock_api::ErrorCode;
use airlock_core::display::visible;

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Airlock answered with an error. The message can quote what a
    /// requester wrote, so it is shown inert.
    #[error("{} ({code}, HTTP {status})", visible(message))]
    Api {
        /// The HTTP status.
        status: u16,
        /// The machine-readable code.
        code: ErrorCode,
        /// For people.
        message: String,
    },
    /// No answer: connection refused, timed out, TLS failed.
    #[error("cannot reach Airlock at {url}")]
    Unreachable {
        /// The server's base URL.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// An answer, but not the one API v1 promises.
    #[error("Airlock at {url} sent an answer this client cannot read: {detail}")]
    Decode {
        /// The server's base URL.
        url: String,
        /// What did not fit.
        detail: String,
    },
    /// The client cannot be set up as given.
    #[error("{0}")]
    Config(String),
    /// The request was approved, but its grant token was not shown to this
    /// key (only the requester and enforcer keys see it).
    #[error("approved, but no grant token was shown to this key")]
    NoToken,
}

impl ClientError {
    /// The API's code, when Airlock refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}
