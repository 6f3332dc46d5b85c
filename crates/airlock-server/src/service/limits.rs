//! Per-key rate limits on checks, so one busy or hostile key cannot take
//! the service from everyone else.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::ApiError;

/// Above this many remembered keys, forget the ones that are full again.
const RETAIN_ABOVE: usize = 10_000;

struct Limiter {
    rate: NonZeroU32,
    burst: NonZeroU32,
    keyed: DefaultKeyedRateLimiter<String>,
}

/// The check limiter; rebuilt when a reload changes the configured rate.
#[derive(Default)]
pub(crate) struct CheckLimiter {
    current: Mutex<Option<Arc<Limiter>>>,
}

impl CheckLimiter {
    /// Counts one check by `key`; `RateLimited` when it is over its rate.
    pub(crate) fn check(
        &self,
        key: &str,
        rate: NonZeroU32,
        burst: NonZeroU32,
    ) -> Result<(), ApiError> {
        let limiter = {
            // A poisoned lock only means another check panicked mid-swap;
            // the Option inside is still whole.
            let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
            match cur.as_ref() {
                Some(l) if l.rate == rate && l.burst == burst => l.clone(),
                _ => {
                    let l = Arc::new(Limiter {
                        rate,
                        burst,
                        keyed: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
                    });
                    *cur = Some(l.clone());
                    l
                }
            }
        };
        if limiter.keyed.len() > RETAIN_ABOVE {
            limiter.keyed.retain_recent();
        }
        match limiter.keyed.check_key(&key.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(limiter.keyed.clock().now());
                Err(ApiError::RateLimited {
                    retry_after_seconds: wait.as_secs_f64().ceil().max(1.0) as u64,
                })
            }
        }
    }
}
