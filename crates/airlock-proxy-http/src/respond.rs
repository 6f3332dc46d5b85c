//! Refusals and how they read on the wire: one [`Refusal`] per failure,
//! turned into a JSON error response in one place.

use airlock_api::{ErrorBody, ErrorCode};
use airlock_client::ClientError;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response a proxy or an authorization endpoint sends.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Why a request is not let through, as the end user is told.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// The API's error body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.code, self.message.clone())
    }

    pub fn into_response(self) -> Response<Body> {
        refuse(self.status, self.code, self.message)
    }
}

pub(crate) fn refuse(
    status: StatusCode,
    code: ErrorCode,
    message: impl Into<String>,
) -> Response<Body> {
    json_response(status, &ErrorBody::new(code, message))
}

pub(crate) fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(body).unwrap_or_default();
    let mut res = Response::new(full(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

pub(crate) fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

/// A gate's refusal as the end user sees it: the API's 4xx refusals pass
/// through (action_mismatch, grant_spent, …); the proxy's own key being
/// refused, or Airlock failing or unreachable, is 503 — never a forward.
pub(crate) fn gate_error(e: ClientError) -> Refusal {
    match e {
        ClientError::Api {
            status,
            code,
            message,
        } if (400..500).contains(&status) && status != 401 => Refusal::new(
            StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN),
            code,
            message,
        ),
        ClientError::NoToken => Refusal::new(
            StatusCode::FORBIDDEN,
            ErrorCode::GrantSpent,
            "this request's grant is no longer available",
        ),
        other => {
            tracing::warn!(error = %other, "proxy: asking Airlock failed");
            Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::UpstreamUnavailable,
                "Airlock could not decide this request; it was not forwarded",
            )
        }
    }
}
