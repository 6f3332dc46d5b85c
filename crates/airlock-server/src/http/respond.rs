//! Where every API error becomes a response: the one place that turns a
//! [`ApiError`] into a status, the contract's JSON error body and headers,
//! and every rejection of a JSON body or a query string into an
//! [`ApiError`].

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;

use crate::ApiError;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(code = %self.code(), error = %self, "request failed");
        }
        let mut res = (status, Json(self.body())).into_response();
        let retry_after = match self {
            ApiError::RateLimited {
                retry_after_seconds,
            } => Some(retry_after_seconds),
            ApiError::TooMany {
                retry_after_seconds,
                ..
            } => retry_after_seconds,
            _ => None,
        };
        if let Some(seconds) = retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        res
    }
}

/// A JSON body whose every rejection (syntax, fields, size, type) is an
/// [`ApiError`], so clients always get the contract's error shape.
pub(super) struct ApiJson<T>(pub(super) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !plainly_json(req.headers()) && !labelled_loosely(req.headers()) {
            return Json::<T>::from_request(req, state)
                .await
                .map(|Json(v)| ApiJson(v))
                .map_err(rejected);
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| rejected(JsonRejection::from(e)))?;
        // A body that reads is read once, without the field-path tracking
        // axum's extractor adds to every value (5% of a check's CPU on the
        // allow path); a body that does not is read again by axum, so its
        // error names the field exactly as before.
        match serde_json::from_slice::<T>(&bytes) {
            Ok(v) => Ok(ApiJson(v)),
            Err(_) => Json::<T>::from_bytes(&bytes)
                .map(|Json(v)| ApiJson(v))
                .map_err(rejected),
        }
    }
}

/// No `Content-Type`, or the one `curl -d` sends by default
/// (`application/x-www-form-urlencoded`), or `text/plain`: the body is read
/// as the JSON it must be. The API authenticates by bearer key only, which
/// a browser never adds by itself, so a loose label opens no cross-site
/// request; clients that leave it out were refused with a 400 that named a
/// header the contract never asks for (found by a black-box pass).
fn labelled_loosely(headers: &HeaderMap) -> bool {
    match headers.get(header::CONTENT_TYPE) {
        None => true,
        Some(v) => v.to_str().is_ok_and(|v| {
            let essence = v.split(';').next().unwrap_or("").trim();
            essence.eq_ignore_ascii_case("application/x-www-form-urlencoded")
                || essence.eq_ignore_ascii_case("text/plain")
        }),
    }
}

/// `Content-Type: application/json`, alone or with `charset=utf-8`, as
/// clients send it: a narrower test than axum's, so a body it passes axum
/// would take too, and anything else goes to axum to accept or refuse.
fn plainly_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.eq_ignore_ascii_case("application/json")
                || v.eq_ignore_ascii_case("application/json; charset=utf-8")
        })
}

/// A query string whose every rejection (a value that does not parse, an
/// unknown parameter) is an [`ApiError`], as [`ApiJson`] is for bodies.
pub(super) struct ApiQuery<T>(pub(super) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

fn rejected(e: JsonRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge
    } else {
        ApiError::BadRequest(e.body_text())
    }
}
