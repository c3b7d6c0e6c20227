//! The request rate limit per principal: a token bucket per caller, refilled
//! at `requests_per_second_max` and holding at most `request_burst_max`
//! requests. A request over it is answered 429 `rate_limited` with
//! `Retry-After` (whole seconds, rounded up) before its body is read or any
//! handler runs, so it changes nothing; the refusal log records it like any
//! other refusal.
//!
//! The key is the authenticated principal's name (so the middleware runs
//! after `principal::authenticate`; a call without a valid token is answered
//! 401 first and spends no bucket). With auth off (`baton dev`, loopback
//! only, every caller trusted) there is no sound key and the limit does not
//! apply: the body's `agent` is self-declared (a caller would dodge the limit
//! by changing it, and a submit has none) and every peer is the same
//! loopback address, so any key would be one server-wide bucket, which would
//! cap `baton dev` (and the HTTP benchmark over it) below what the server
//! sustains. The open routes (`/v1`, `/healthz`, `/readyz`, `/openapi.json`,
//! `/docs`, and unknown paths) are exempt.
//!
//! Each bucket is a GCRA cell (the "theoretical arrival time" form of a token
//! bucket): one number per caller, the time at which its bucket would be full
//! again. Time is the injected `Clock`, so tests step it by hand; a clock
//! that jumps back leaves a bucket at worst empty, never locked for the
//! length of the jump. Memory is bounded by `rate_limit_buckets_max`: past
//! it, full (idle) buckets are dropped, which changes no answer, and if every
//! bucket is still in use the one nearest to full is dropped.

use crate::http::error::ApiError;
use crate::http::principal::{self, Caller};
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use baton_core::Millis;
use std::collections::HashMap;
use std::sync::Mutex;

const NANOS_PER_MS: i128 = 1_000_000;
const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// The buckets of every caller seen lately.
#[derive(Debug, Default)]
pub struct RateLimiter {
    /// Per caller, when its bucket is full again (ns since the Unix epoch).
    full_at: Mutex<HashMap<String, i128>>,
}

/// The limit's settings, from `Options`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per second a bucket refills at; 0 turns the limit off.
    pub per_second: u64,
    /// Requests a full bucket holds; 0 turns the limit off.
    pub burst: u64,
    /// Buckets kept at most (at least one).
    pub buckets_max: usize,
}

/// A request over the limit: how long until one more would be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after_ms: u64,
}

impl RateLimiter {
    /// Takes one request from `key`'s bucket at `now_ms`, or says how long to wait.
    pub fn take(&self, limit: RateLimit, key: &str, now_ms: Millis) -> Result<(), Limited> {
        if limit.per_second == 0 || limit.burst == 0 {
            return Ok(());
        }
        let now = i128::from(now_ms) * NANOS_PER_MS;
        let interval = (NANOS_PER_SECOND / i128::from(limit.per_second)).max(1);
        let capacity = interval * i128::from(limit.burst);
        let mut buckets = self.full_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let full_at = match buckets.get_mut(key) {
            Some(slot) => {
                // A clock that went back leaves the bucket empty, not locked.
                *slot = (*slot).min(now + capacity);
                (*slot).max(now)
            }
            None => now,
        };
        let next = full_at + interval;
        if next - now > capacity {
            let wait_ns = next - now - capacity;
            let retry_after_ms =
                u64::try_from((wait_ns + NANOS_PER_MS - 1) / NANOS_PER_MS).unwrap_or(u64::MAX);
            return Err(Limited { retry_after_ms });
        }
        if let Some(slot) = buckets.get_mut(key) {
            *slot = next;
        } else {
            let buckets_max = limit.buckets_max.max(1);
            if buckets.len() >= buckets_max {
                // A full bucket is the same as none: dropping it changes nothing.
                buckets.retain(|_, full_at| *full_at > now);
            }
            if buckets.len() >= buckets_max
                && let Some(nearest) =
                    buckets.iter().min_by_key(|(_, full_at)| **full_at).map(|(k, _)| k.clone())
            {
                buckets.remove(&nearest);
            }
            buckets.insert(key.to_owned(), next);
        }
        Ok(())
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.full_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Middleware: refuses a principal's request over its rate with 429
/// `rate_limited` and `Retry-After`. Runs after `authenticate`; with auth
/// off it lets every request through.
pub async fn limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let options = state.options();
    let limit = RateLimit {
        per_second: options.requests_per_second_max,
        burst: options.request_burst_max,
        buckets_max: options.rate_limit_buckets_max,
    };
    if limit.per_second == 0 || limit.burst == 0 || principal::is_open(&request) {
        return next.run(request).await;
    }
    // Auth off: no principal to key by (see the module's text). Auth on but
    // no principal: a route the handler's extractor authenticates, and refuses.
    let Some(Caller(principal, _)) = request.extensions().get::<Caller>() else {
        return next.run(request).await;
    };
    let key = principal.name.as_str();
    match state.rate_limiter().take(limit, key, state.clock().now()) {
        Ok(()) => next.run(request).await,
        Err(limited) => {
            // `ApiError` turns `retry_after_ms` into `Retry-After` (whole seconds, rounded up).
            ApiError::rate_limited(limit.per_second, limit.burst, limited.retry_after_ms).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit { per_second: 2, burst: 3, buckets_max: 2 };
    const T0: Millis = 1_700_000_000_000;

    #[test]
    fn a_burst_then_the_refill_rate() {
        let limiter = RateLimiter::default();
        for _ in 0..3 {
            assert_eq!(limiter.take(LIMIT, "a", T0), Ok(()));
        }
        assert_eq!(limiter.take(LIMIT, "a", T0), Err(Limited { retry_after_ms: 500 }));
        assert_eq!(limiter.take(LIMIT, "a", T0 + 499), Err(Limited { retry_after_ms: 1 }));
        assert_eq!(limiter.take(LIMIT, "a", T0 + 500), Ok(()));
        assert_eq!(limiter.take(LIMIT, "a", T0 + 500), Err(Limited { retry_after_ms: 500 }));
        // Long idle: a full bucket, never more.
        for _ in 0..3 {
            assert_eq!(limiter.take(LIMIT, "a", T0 + 60_000), Ok(()));
        }
        assert!(limiter.take(LIMIT, "a", T0 + 60_000).is_err());
    }

    #[test]
    fn callers_have_their_own_buckets() {
        let limiter = RateLimiter::default();
        for _ in 0..3 {
            limiter.take(LIMIT, "a", T0).unwrap();
        }
        assert!(limiter.take(LIMIT, "a", T0).is_err());
        assert_eq!(limiter.take(LIMIT, "b", T0), Ok(()));
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let limiter = RateLimiter::default();
        for limit in [RateLimit { per_second: 0, ..LIMIT }, RateLimit { burst: 0, ..LIMIT }] {
            for _ in 0..100 {
                assert_eq!(limiter.take(limit, "a", T0), Ok(()));
            }
        }
        assert!(limiter.is_empty());
    }

    #[test]
    fn a_clock_that_jumps_back_leaves_the_bucket_empty_not_locked() {
        let limiter = RateLimiter::default();
        for _ in 0..3 {
            limiter.take(LIMIT, "a", T0).unwrap();
        }
        let back = T0 - 3_600_000;
        assert_eq!(limiter.take(LIMIT, "a", back), Err(Limited { retry_after_ms: 500 }));
        assert_eq!(limiter.take(LIMIT, "a", back + 500), Ok(()));
    }

    #[test]
    fn buckets_are_bounded_idle_ones_go_first() {
        let limiter = RateLimiter::default();
        limiter.take(LIMIT, "idle", T0).unwrap();
        for _ in 0..3 {
            limiter.take(LIMIT, "busy", T0 + 400).unwrap();
        }
        // At T0 + 600 "idle" is full again (dropping it changes nothing); "busy" is not.
        limiter.take(LIMIT, "new", T0 + 600).unwrap();
        assert_eq!(limiter.len(), 2);
        assert!(limiter.take(LIMIT, "busy", T0 + 600).is_err(), "the busy bucket was kept");
        // All in use: the one nearest to full goes ("new" is fuller than "busy").
        limiter.take(LIMIT, "third", T0 + 600).unwrap();
        assert_eq!(limiter.len(), 2);
        assert!(limiter.take(LIMIT, "busy", T0 + 600).is_err(), "the busy bucket was kept");
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        for (ms, seconds) in [(1, 1), (0, 1), (1_000, 1), (1_001, 2)] {
            assert_eq!(ApiError::rate_limited(10, 5, ms).retry_after_s(), Some(seconds), "{ms} ms");
        }
    }
}
