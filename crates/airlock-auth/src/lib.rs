//! Airlock's authentication: who is calling, and how they proved it.
//!
//! `api_keys` makes, lists, revokes and checks API keys; `sessions` starts,
//! finds and ends web console sessions; `password` checks a password and
//! keeps guessing slow (per-address limits, per-name lockout); `oidc` is
//! single sign-on with OpenID Connect; `tokens` holds the random secrets
//! and their comparison; `limits` the per-node limiters sign-in uses.
//! `totp` is step-up: a fresh one-time code before an approval that asks
//! for it.
//!
//! Nothing here speaks HTTP: the server's console turns these into
//! cookies, redirects and pages, and its API turns [`AuthError`] into
//! responses.
#![forbid(unsafe_code)]

pub mod api_keys;
pub mod limits;
pub mod oidc;
pub mod password;
pub mod sessions;
pub mod tokens;
pub mod totp;

use airlock_store::StoreError;

/// Why someone was not let in, or could not be.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No key, or a key nobody knows.
    #[error("missing or invalid API key")]
    Unauthenticated,
    /// A known key, but revoked or expired; says which.
    #[error("{0}")]
    KeyRefused(String),
    /// Too many sign-in attempts from one address; try later.
    #[error("too many sign-in attempts from this address; try again later")]
    TooManyAttempts,
    /// Refused, with why (a locked user name, a flow that does not verify,
    /// an email the provider has not verified, …).
    #[error("{0}")]
    Refused(String),
    /// The single sign-on provider failed or answered nonsense.
    #[error("{0}")]
    Upstream(String),
    /// Storage failed; nobody was let in.
    #[error("storage unavailable: {0}")]
    Storage(#[from] StoreError),
    /// The audit record could not be written, so nobody was let in.
    #[error("audit log unavailable: {0}")]
    Audit(StoreError),
}
