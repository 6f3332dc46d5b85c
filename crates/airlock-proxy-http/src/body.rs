//! Request bodies, read whole (each is bound by its SHA-256) within a
//! memory budget all of a listener's requests share: without one, a single
//! HTTP/2 connection held 200 streams of 16 MiB each (a black-box pass saw
//! 1 GiB taken in two seconds), past any connection limit.

use std::sync::Arc;
use std::time::Duration;

use airlock_api::ErrorCode;
use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use hyper::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::respond::Refusal;

/// The budget counts in KiB: a permit per KiB begun.
const UNIT: usize = 1024;

/// A listener's budget.
#[derive(Debug, Clone)]
pub(crate) struct Budget(Arc<Semaphore>);

impl Budget {
    /// A budget of `bytes` (`max_buffered_body_bytes`).
    pub fn new(bytes: u64) -> Self {
        let units = usize::try_from(bytes / UNIT as u64)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Self(Arc::new(Semaphore::new(units)))
    }
}

/// A body read, and its share of the budget, given back when dropped.
#[derive(Debug)]
pub(crate) struct Body {
    pub bytes: Bytes,
    _share: Option<OwnedSemaphorePermit>,
}

impl Budget {
    /// Reads `body` whole: at most `max` bytes, within `timeout`, taking
    /// its share of the budget as it arrives.
    pub async fn read(&self, body: Incoming, max: u64, timeout: Duration) -> Result<Body, Refusal> {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        match tokio::time::timeout(timeout, self.collect(body, max)).await {
            Ok(read) => read,
            Err(_) => Err(Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::BadRequest,
                "the request body did not arrive in time",
            )),
        }
    }

    async fn collect(&self, mut body: Incoming, max: usize) -> Result<Body, Refusal> {
        // A declared length past the limit is refused before any of it is
        // waited for.
        let declared = hyper::body::Body::size_hint(&body).lower();
        if usize::try_from(declared).unwrap_or(usize::MAX) > max {
            return Err(too_large(max));
        }
        let mut buf = bytes::BytesMut::new();
        let mut share: Option<OwnedSemaphorePermit> = None;
        let mut units = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| {
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadRequest,
                    "the request body could not be read",
                )
            })?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers: not forwarded
            };
            if buf.len() + data.len() > max {
                return Err(too_large(max));
            }
            let need = (buf.len() + data.len()).div_ceil(UNIT) - units;
            if need > 0 {
                let more = u32::try_from(need)
                    .ok()
                    .and_then(|n| self.0.clone().try_acquire_many_owned(n).ok())
                    .ok_or_else(|| {
                        Refusal::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            ErrorCode::RateLimited,
                            "this listener holds as many request bodies as it may; try again shortly",
                        )
                    })?;
                units += need;
                match &mut share {
                    Some(s) => s.merge(more),
                    None => share = Some(more),
                }
            }
            buf.extend_from_slice(&data);
        }
        Ok(Body {
            bytes: buf.freeze(),
            _share: share,
        })
    }
}

fn too_large(max: usize) -> Refusal {
    Refusal::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::PayloadTooLarge,
        format!("request bodies are limited to {max} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_counted_in_whole_units() {
        assert_eq!(Budget::new(256 << 20).0.available_permits(), 256 * 1024);
        // Never past what a semaphore holds (which would panic).
        assert!(Budget::new(u64::MAX).0.available_permits() <= Semaphore::MAX_PERMITS);
    }
}
