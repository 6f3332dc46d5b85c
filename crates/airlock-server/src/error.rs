//! The one error type of the API: every failure the service can answer
//! with, and (in `http`) the one place it becomes a response.

use airlock_api::{ErrorBody, ErrorCode};
use airlock_store::StoreError;

/// A failure, as a client sees it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the input is malformed or incomplete.
    #[error("{0}")]
    BadRequest(String),
    /// 400: a policy requires a reason and none was given.
    #[error("a reason is required for this action (policy {0})")]
    ReasonRequired(String),
    /// 400: a `user` key stated a fact only enforcers may state
    /// (`[policy] trusted_context`).
    #[error("{0}")]
    UntrustedContext(String),
    /// 401: no key, or a key we do not know.
    #[error("missing or invalid API key")]
    Unauthenticated,
    /// 401: a key we know, but revoked or expired; or a chat callback's
    /// signature refused. Says which.
    #[error("{0}")]
    KeyRefused(String),
    /// 403: known caller, not allowed.
    #[error("{message}")]
    Forbidden {
        /// Machine-readable reason (`self_review`, `not_eligible`, `forbidden`, …).
        code: ErrorCode,
        /// For people.
        message: String,
    },
    /// 403: a grant was refused.
    #[error("{message}")]
    Grant {
        /// `grant_expired`, `grant_spent`, `grant_revoked`, `action_mismatch`, `invalid_grant`.
        code: ErrorCode,
        /// For people.
        message: String,
    },
    /// 403 `step_up_required`: a step-up code was given and is wrong;
    /// counted toward [`MAX_STEP_UP_FAILURES`](crate::service::MAX_STEP_UP_FAILURES).
    #[error("{0}")]
    StepUpFailed(String),
    /// 404: no such thing (or not visible to the caller).
    #[error("{0}")]
    NotFound(String),
    /// 409: the thing is not in a state that allows this.
    #[error("{message}")]
    Conflict {
        /// `wrong_state`, `already_reviewed`, …
        code: ErrorCode,
        /// For people.
        message: String,
    },
    /// 429: the caller has too much open or too many attempts; try later.
    #[error("{message}")]
    TooMany {
        /// `too_many_waits`, `too_many_attempts`.
        code: ErrorCode,
        /// For people.
        message: String,
        /// Whole seconds until the attempt would be taken again, where
        /// that is known (sent as `Retry-After`).
        retry_after_seconds: Option<u64>,
    },
    /// 405: the endpoint takes other methods.
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// 413: the body is larger than the limit.
    #[error("request body is larger than this server accepts")]
    TooLarge,
    /// 429: the principal already has as many pending requests as
    /// `server.max_pending_per_principal` allows.
    #[error("{principal} already has {limit} pending requests; wait for some to be decided, or cancel some")]
    TooManyPending {
        /// Whose requests.
        principal: String,
        /// The configured cap.
        limit: u32,
    },
    /// 429: this key made more checks than `server.checks_per_second_per_key`
    /// allows; try again after `retry_after_seconds` (sent as `Retry-After`).
    #[error("too many checks with this key; retry in {retry_after_seconds}s")]
    RateLimited {
        /// Whole seconds until a check will be accepted again (at least 1).
        retry_after_seconds: u64,
    },
    /// 503: storage failed; nothing was done.
    #[error("storage unavailable: {0}")]
    Storage(StoreError),
    /// 502: a service Airlock relies on (the single sign-on provider)
    /// failed or answered nonsense.
    #[error("{0}")]
    Upstream(String),
    /// 503: the audit record could not be written, so nothing was decided.
    #[error("audit log unavailable, refusing to decide: {0}")]
    Audit(StoreError),
}

impl From<airlock_auth::AuthError> for ApiError {
    fn from(e: airlock_auth::AuthError) -> Self {
        use airlock_auth::AuthError;
        match e {
            AuthError::Unauthenticated => ApiError::Unauthenticated,
            AuthError::KeyRefused(m) => ApiError::KeyRefused(m),
            AuthError::TooManyAttempts => ApiError::TooMany {
                code: airlock_api::ErrorCode::TooManyAttempts,
                message: "too many sign-in attempts from this address; try again later".into(),
                retry_after_seconds: None,
            },
            AuthError::Refused(m) => ApiError::forbidden(m),
            AuthError::Upstream(m) => ApiError::Upstream(m),
            AuthError::Storage(e) => ApiError::Storage(e),
            AuthError::Audit(e) => ApiError::Audit(e),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Storage(e)
    }
}

impl ApiError {
    /// The HTTP status: the code's (see [`ErrorCode::status`]).
    pub fn status(&self) -> u16 {
        self.code().status()
    }

    /// The machine-readable code: the one place a failure is given one.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::BadRequest(_) => ErrorCode::BadRequest,
            ApiError::ReasonRequired(_) => ErrorCode::ReasonRequired,
            ApiError::UntrustedContext(_) => ErrorCode::UntrustedContext,
            ApiError::Unauthenticated | ApiError::KeyRefused(_) => ErrorCode::Unauthenticated,
            ApiError::Forbidden { code, .. }
            | ApiError::Grant { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::TooMany { code, .. } => *code,
            ApiError::StepUpFailed(_) => ErrorCode::StepUpRequired,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::TooLarge => ErrorCode::PayloadTooLarge,
            ApiError::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            ApiError::TooManyPending { .. } => ErrorCode::TooManyPending,
            ApiError::RateLimited { .. } => ErrorCode::RateLimited,
            ApiError::Storage(_) => ErrorCode::StorageUnavailable,
            ApiError::Upstream(_) => ErrorCode::UpstreamUnavailable,
            ApiError::Audit(_) => ErrorCode::AuditUnavailable,
        }
    }

    /// The body a client receives.
    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.code(), self.to_string())
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        ApiError::Forbidden {
            code: ErrorCode::Forbidden,
            message: message.into(),
        }
    }

    pub(crate) fn wrong_state(message: impl Into<String>) -> Self {
        ApiError::Conflict {
            code: ErrorCode::WrongState,
            message: message.into(),
        }
    }

    pub(crate) fn grant(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError::Grant {
            code,
            message: message.into(),
        }
    }
}
