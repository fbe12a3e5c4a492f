//! The background drift budget (`--konnect-budget`, requests per minute). Drift checks of objects
//! nobody changed take a permit per Konnect call. Without one the check is put off (the object
//! requeues for its next resync), never waited for: a waiting check would hold one of the
//! `--max-concurrent-reconciles` slots that changes, deleted Secrets and due renewals need. So
//! sweeps stretch instead of eating the organisation's rate limit. Work caused by a change, and a
//! due renewal, never asks.
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub struct DriftBudget {
    per_minute: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl DriftBudget {
    /// `per_minute` = 0 disables the limit.
    pub fn new(per_minute: u32) -> Self {
        let budget = f64::from(per_minute);
        // One second's worth may go at once. The refill leaves room for that burst and for the
        // once-a-minute readiness probe, so no wall-clock minute sees more than the budget.
        let burst = (budget / 60.0).floor().max(1.0);
        let per_minute = if budget > 0.0 {
            (budget - burst - 1.0).max(1.0)
        } else {
            0.0
        };
        Self {
            per_minute,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes `n` permits if there are that many now; otherwise takes none and returns how long
    /// until there would be.
    pub fn try_acquire(&self, n: u32) -> Result<(), Duration> {
        if self.per_minute <= 0.0 || n == 0 {
            return Ok(());
        }
        let need = f64::from(n);
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(s.1).as_secs_f64() * self.per_minute / 60.0;
        s.0 = (s.0 + refill).min(self.burst.max(need));
        s.1 = now;
        if s.0 >= need {
            s.0 -= need;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (need - s.0) * 60.0 / self.per_minute,
            ))
        }
    }
}

/// A background read that may be put off by the budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Paced<T> {
    Done(T),
    /// No permit: skip the check and look again at the next resync.
    NoPermit,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn beyond_the_burst_a_check_is_refused_at_once_until_the_rate_refills() {
        let b = DriftBudget::new(6000); // burst 100, refill ~98 per second
        for _ in 0..100 {
            assert_eq!(b.try_acquire(1), Ok(()));
        }
        let wait = b
            .try_acquire(1)
            .expect_err("the burst is spent: refused, not waited for");
        assert!(
            wait > Duration::ZERO && wait < Duration::from_millis(20),
            "{wait:?}"
        );
        tokio::time::sleep(wait + Duration::from_millis(5)).await;
        assert_eq!(b.try_acquire(1), Ok(()), "one permit refilled");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(b.try_acquire(100), Ok(()), "refills up to the burst");
        assert!(b.try_acquire(50).is_err(), "not beyond it");
    }

    #[test]
    fn zero_means_unlimited() {
        let b = DriftBudget::new(0);
        for _ in 0..10_000 {
            assert_eq!(b.try_acquire(1), Ok(()));
        }
    }
}
