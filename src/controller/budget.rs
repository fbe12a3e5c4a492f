//! The background drift budget (`--konnect-budget`, requests per minute). Drift checks of objects
//! nobody changed take a permit per Konnect call and wait when there is none, so sweeps stretch
//! instead of eating the organisation's rate limit. Work caused by a change never asks.
use std::time::Duration;

use tokio::sync::Mutex;
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

    /// Takes `n` permits, waiting as long as needed.
    pub async fn acquire(&self, n: u32) {
        if self.per_minute <= 0.0 || n == 0 {
            return;
        }
        let need = f64::from(n);
        loop {
            let wait = {
                let mut s = self.state.lock().await;
                let now = Instant::now();
                let refill = now.duration_since(s.1).as_secs_f64() * self.per_minute / 60.0;
                s.0 = (s.0 + refill).min(self.burst.max(need));
                s.1 = now;
                if s.0 >= need {
                    s.0 -= need;
                    return;
                }
                Duration::from_secs_f64((need - s.0) * 60.0 / self.per_minute)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn permits_beyond_the_burst_wait_for_the_rate() {
        let b = DriftBudget::new(6000); // ~100 per second, burst 100
        let start = Instant::now();
        for _ in 0..150 {
            b.acquire(1).await;
        }
        // A lower bound only: a slow machine can take longer, never shorter.
        assert!(
            start.elapsed() >= Duration::from_millis(450),
            "50 permits past the burst take ~0.5 s"
        );
    }

    #[tokio::test]
    async fn zero_means_unlimited() {
        let b = DriftBudget::new(0);
        let start = Instant::now();
        for _ in 0..10_000 {
            b.acquire(1).await;
        }
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}
