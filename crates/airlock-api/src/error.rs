//! The error body of every failed call, `{"error": {"code", "message"}}`,
//! with the machine-readable codes as one closed list.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Every code the server answers with. Clients match on these, so a
/// variant's wire name never changes; new ones are only added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: malformed or incomplete input.
    BadRequest,
    /// 400: a policy requires a reason and none was given.
    ReasonRequired,
    /// 400: a `user` key stated a fact only enforcers may state.
    UntrustedContext,
    /// 401: no key, an unknown key, or a revoked or expired one.
    Unauthenticated,
    /// 403: known caller, not allowed.
    Forbidden,
    /// 403: requesters may not review their own requests.
    SelfReview,
    /// 403: the reviewer is in no group the request asks.
    NotEligible,
    /// 403: this approval needs a fresh step-up proof (a TOTP code): none
    /// was given, it was wrong or already used, or the reviewer has not
    /// enrolled. The message says which and what to do.
    StepUpRequired,
    /// 403: the grant has expired.
    GrantExpired,
    /// 403: every use of the grant is spent.
    GrantSpent,
    /// 403: the grant was revoked, or its approvals no longer count.
    GrantRevoked,
    /// 403: the grant was approved for another action.
    ActionMismatch,
    /// 403: not a grant token this server issued.
    InvalidGrant,
    /// 404: no such thing, or not visible to the caller.
    NotFound,
    /// 405: the endpoint exists and takes other methods (`Allow` says
    /// which).
    MethodNotAllowed,
    /// 409: not in a state that allows this.
    WrongState,
    /// 409: this reviewer already reviewed the request.
    AlreadyReviewed,
    /// 413: the body is larger than the server accepts.
    PayloadTooLarge,
    /// 429: the principal has as many pending requests as allowed.
    TooManyPending,
    /// 429: too many checks with this key; see `Retry-After`.
    RateLimited,
    /// 429: too many waits or live streams open for this user.
    TooManyWaits,
    /// 429: too many sign-in attempts, or wrong step-up codes.
    TooManyAttempts,
    /// 503: storage failed; nothing was done.
    StorageUnavailable,
    /// 503: the audit record could not be written, so nothing was decided.
    AuditUnavailable,
    /// 502: a service Airlock relies on failed.
    UpstreamUnavailable,
    /// A code this client does not know (a newer server's), or none at all.
    /// Never sent by the server.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Every code, in the order above.
    pub const ALL: [ErrorCode; 26] = [
        Self::BadRequest,
        Self::ReasonRequired,
        Self::UntrustedContext,
        Self::Unauthenticated,
        Self::Forbidden,
        Self::SelfReview,
        Self::NotEligible,
        Self::StepUpRequired,
        Self::GrantExpired,
        Self::GrantSpent,
        Self::GrantRevoked,
        Self::ActionMismatch,
        Self::InvalidGrant,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::WrongState,
        Self::AlreadyReviewed,
        Self::PayloadTooLarge,
        Self::TooManyPending,
        Self::RateLimited,
        Self::TooManyWaits,
        Self::TooManyAttempts,
        Self::StorageUnavailable,
        Self::AuditUnavailable,
        Self::UpstreamUnavailable,
        Self::Unknown,
    ];

    /// The HTTP status the code is always sent with: the one place that
    /// says so, for the server's responses and for the API document.
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest | Self::ReasonRequired | Self::UntrustedContext => 400,
            Self::Unauthenticated => 401,
            Self::Forbidden
            | Self::SelfReview
            | Self::NotEligible
            | Self::StepUpRequired
            | Self::GrantExpired
            | Self::GrantSpent
            | Self::GrantRevoked
            | Self::ActionMismatch
            | Self::InvalidGrant => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::WrongState | Self::AlreadyReviewed => 409,
            Self::PayloadTooLarge => 413,
            Self::TooManyPending
            | Self::RateLimited
            | Self::TooManyWaits
            | Self::TooManyAttempts => 429,
            Self::UpstreamUnavailable => 502,
            Self::StorageUnavailable | Self::AuditUnavailable => 503,
            Self::Unknown => 500,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::ReasonRequired => "reason_required",
            Self::UntrustedContext => "untrusted_context",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::SelfReview => "self_review",
            Self::NotEligible => "not_eligible",
            Self::StepUpRequired => "step_up_required",
            Self::GrantExpired => "grant_expired",
            Self::GrantSpent => "grant_spent",
            Self::GrantRevoked => "grant_revoked",
            Self::ActionMismatch => "action_mismatch",
            Self::InvalidGrant => "invalid_grant",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::WrongState => "wrong_state",
            Self::AlreadyReviewed => "already_reviewed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::TooManyPending => "too_many_pending",
            Self::RateLimited => "rate_limited",
            Self::TooManyWaits => "too_many_waits",
            Self::TooManyAttempts => "too_many_attempts",
            Self::StorageUnavailable => "storage_unavailable",
            Self::AuditUnavailable => "audit_unavailable",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::Unknown => "unknown",
        }
    }
}

/// The codes the server sends (not `unknown`, which only clients make).
impl utoipa::PartialSchema for ErrorCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "Machine-readable; each code is always sent with the same status. \
                 New codes may be added: treat one you do not know by its status.",
            ))
            .enum_values(Some(
                Self::ALL
                    .iter()
                    .filter(|c| **c != Self::Unknown)
                    .map(|c| c.as_str()),
            ))
            .into()
    }
}

impl utoipa::ToSchema for ErrorCode {}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The code for programs, the message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable.
    pub code: ErrorCode,
    /// For people; may quote what a requester wrote, so show it inert.
    pub message: String,
}

impl ErrorBody {
    /// An error body.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code,
                message: message.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_the_serde_names() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, code.as_str(), "{code:?}");
            let back: ErrorCode = serde_json::from_value(json).unwrap();
            assert_eq!(back, code);
        }
    }

    #[test]
    fn body_shape_and_unknown_codes() {
        let body = ErrorBody::new(ErrorCode::GrantSpent, "spent");
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"error":{"code":"grant_spent","message":"spent"}}"#
        );
        let newer: ErrorBody =
            serde_json::from_str(r#"{"error":{"code":"from_the_future","message":"m"}}"#).unwrap();
        assert_eq!(newer.error.code, ErrorCode::Unknown);
    }
}
