//! The operator's clock: wall time for token renewal and retention, monotonic time for leader election and
//! its write fence. Real by default. A test runs it ahead to reach a renewal, the end of a retention or a
//! lease expiry without waiting for it, or freezes it so that only its own steps move time. The pure
//! planners take `now` as a parameter; this is where the effectful side reads it.
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use tokio::time::Instant;

/// Real (or frozen) time plus an offset that only moves forward. Clones share the offset.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    ahead_ms: Arc<AtomicI64>,
    /// Frozen: the wall and monotonic times it stands at, before the offset.
    frozen: Option<(Timestamp, Instant)>,
}

impl Clock {
    /// A clock that stands still: only [`Clock::advance`] moves it (tests).
    pub fn frozen() -> Self {
        Self {
            ahead_ms: Arc::default(),
            frozen: Some((Timestamp::now(), Instant::now())),
        }
    }

    fn ahead(&self) -> i64 {
        self.ahead_ms.load(Ordering::SeqCst)
    }

    /// Wall time.
    pub fn now(&self) -> Timestamp {
        let base = self.frozen.map_or_else(Timestamp::now, |(wall, _)| wall);
        base.checked_add(SignedDuration::from_millis(self.ahead()))
            .unwrap_or(base)
    }

    /// Monotonic time (for deadlines measured on this machine only).
    pub fn instant(&self) -> Instant {
        let base = self.frozen.map_or_else(Instant::now, |(_, mono)| mono);
        base + std::time::Duration::from_millis(u64::try_from(self.ahead()).unwrap_or(0))
    }

    /// Runs this clock, and every clone of it, ahead by `by` (in whole milliseconds; saturating).
    pub fn advance(&self, by: std::time::Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        let _ = self
            .ahead_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |ahead| {
                Some(ahead.saturating_add(ms))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_advanced_clock_is_ahead_in_every_clone() {
        let clock = Clock::default();
        let other = clock.clone();
        let mono = Instant::now();
        clock.advance(Duration::from_secs(3600));
        let ahead = other.now().duration_since(Timestamp::now());
        assert!(ahead >= SignedDuration::from_secs(3599), "{ahead:?}");
        assert!(ahead <= SignedDuration::from_secs(3601), "{ahead:?}");
        let mono_ahead = other.instant().duration_since(mono);
        assert!(mono_ahead >= Duration::from_secs(3600), "{mono_ahead:?}");
    }

    #[test]
    fn a_frozen_clock_moves_only_when_advanced() {
        let clock = Clock::frozen();
        let (wall, mono) = (clock.now(), clock.instant());
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!((clock.now(), clock.instant()), (wall, mono));
        clock.clone().advance(Duration::from_millis(1500));
        assert_eq!(
            clock.now().duration_since(wall),
            SignedDuration::from_millis(1500)
        );
        assert_eq!(clock.instant() - mono, Duration::from_millis(1500));
    }
}
