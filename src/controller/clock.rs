//! The controllers' wall clock for token renewal and retention. Real by default; a test runs it ahead to
//! reach a renewal or the end of a retention without waiting real lifetimes. The pure planners take
//! `now` as a parameter; this is where the effectful side reads it.
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// Real time plus an offset that only moves forward. Clones share the offset.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    ahead_ms: Arc<AtomicI64>,
}

impl Clock {
    pub fn now(&self) -> Timestamp {
        let real = Timestamp::now();
        let ahead = SignedDuration::from_millis(self.ahead_ms.load(Ordering::SeqCst));
        real.checked_add(ahead).unwrap_or(real)
    }

    /// Runs this clock, and every clone of it, ahead by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.ahead_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_advanced_clock_is_ahead_in_every_clone() {
        let clock = Clock::default();
        let other = clock.clone();
        clock.advance(std::time::Duration::from_secs(3600));
        let ahead = other.now().duration_since(Timestamp::now());
        assert!(ahead >= SignedDuration::from_secs(3599), "{ahead:?}");
        assert!(ahead <= SignedDuration::from_secs(3601), "{ahead:?}");
    }
}
