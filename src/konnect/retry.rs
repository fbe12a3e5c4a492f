//! When and how long to wait before another attempt.
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};

/// Wait after a 429 without a usable `Retry-After` (kong-operator uses the same fallback).
pub const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(15);
const BACKOFF_BASE: Duration = Duration::from_millis(200);
pub const BACKOFF_CAP: Duration = Duration::from_secs(3);

/// Which failures an operation may be re-sent after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryPolicy {
    /// 429, 5xx, timeouts and connection errors (reads, deletes, patches, and creates whose duplicate is
    /// detected by a 409 and recovered).
    Transient,
    /// Only 429: a rate-limited request was not executed, while a 5xx or a lost response may have created
    /// something that a repeat would duplicate (or whose one-time value would be lost).
    RateLimitOnly,
}

/// Parses `Retry-After`: delay-seconds or an HTTP date (a date in the past means "now").
/// `None` when absent or unreadable.
pub fn parse_retry_after(value: Option<&str>, now: SystemTime) -> Option<Duration> {
    let value = value?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // Some proxies send fractional seconds.
    if let Ok(secs) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Delays between attempts after 5xx and transport errors: exponential from 200 ms, capped at 3 s, each with
/// up to 100% added jitter so that many clients failing together do not retry together.
pub fn backoff_delays(max_attempts: u32) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(BACKOFF_BASE)
        .with_max_delay(BACKOFF_CAP)
        .with_factor(2.0)
        .with_jitter()
        // backon seeds its jitter with a constant unless its `std` feature is on: seed it here.
        .with_jitter_seed(rand::random())
        .with_max_times(max_attempts as usize)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds() {
        let now = SystemTime::now();
        assert_eq!(
            parse_retry_after(Some("7"), now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(parse_retry_after(Some(" 0 "), now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(Some("1.5"), now),
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn retry_after_http_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse_retry_after(Some("Sun, 06 Nov 1994 08:50:07 GMT"), now),
            Some(Duration::from_secs(30))
        );
        // In the past: retry now.
        assert_eq!(
            parse_retry_after(Some("Sun, 06 Nov 1994 08:00:00 GMT"), now),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_absent_or_garbage() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after(None, now), None);
        assert_eq!(parse_retry_after(Some("soon"), now), None);
        assert_eq!(parse_retry_after(Some("-3"), now), None);
        assert_eq!(parse_retry_after(Some(""), now), None);
    }

    #[test]
    fn backoff_grows_is_capped_and_bounded() {
        let delays: Vec<Duration> = backoff_delays(8).collect();
        assert_eq!(delays.len(), 8);
        // Base 200 ms with up to 100% jitter.
        assert!(delays[0] >= BACKOFF_BASE && delays[0] <= 2 * BACKOFF_BASE);
        for d in &delays {
            assert!(*d <= 2 * BACKOFF_CAP, "{d:?}");
        }
        assert!(delays[7] >= BACKOFF_CAP);
    }

    #[test]
    fn backoff_jitter_differs_between_runs() {
        let runs: Vec<Vec<Duration>> = (0..5).map(|_| backoff_delays(4).collect()).collect();
        assert!(runs.iter().any(|r| r != &runs[0]), "jitter is not random");
    }
}
