//! The background drift budget (`--konnect-budget`, requests per minute). Drift checks of objects
//! nobody changed take a permit per Konnect call. A check that finds none is not waited for (a
//! waiting check would hold one of the `--max-concurrent-reconciles` slots that changes, deleted
//! Secrets and due renewals need): it gets a reservation, the next free slot of the budget's
//! schedule, and its object requeues for that moment, when the permit is its own. Reservations
//! follow each other at the budget's rate, so sweeps stretch evenly instead of eating the
//! organisation's rate limit, and nobody asks twice for the same turn. Work caused by a change,
//! and a due renewal, never asks.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub struct DriftBudget {
    /// Time per permit (None: unlimited).
    interval: Option<Duration>,
    /// How far the schedule may run ahead of now: the burst.
    tolerance: Duration,
    state: Mutex<State>,
}

struct State {
    /// The theoretical arrival time of the schedule (GCRA): permits are spent up to here.
    tat: Instant,
    /// Reserved turns by key (an object, or a shared list).
    reservations: HashMap<String, Instant>,
    admitted: u64,
}

impl DriftBudget {
    /// `per_minute` = 0 disables the limit.
    pub fn new(per_minute: u32) -> Self {
        let budget = f64::from(per_minute);
        // One second's worth may go at once. The rate leaves room for that burst and for the
        // once-a-minute readiness probe, so no wall-clock minute sees more than the budget (a list
        // of n pages, read at once after the n turns it was paid with, may add n - 1).
        let burst = (budget / 60.0).floor().max(1.0);
        let rate = (budget - burst - 1.0).max(1.0);
        let interval = (per_minute > 0).then(|| Duration::from_secs_f64(60.0 / rate));
        Self {
            interval,
            tolerance: interval.map_or(Duration::ZERO, |i| i.mul_f64(burst)),
            state: Mutex::new(State {
                tat: Instant::now(),
                reservations: HashMap::new(),
                admitted: 0,
            }),
        }
    }

    /// `n` permits for `key`: Ok to go now (a reservation of `key` that has come due, or free
    /// permits); else `key` holds the next free turn, this long from now (asking again before
    /// then answers the same turn).
    pub fn admit(&self, key: &str, n: u32) -> Result<(), Duration> {
        self.admit_at(key, n, Instant::now())
    }

    /// [`Self::admit`] at the instant `now` (instants given in order).
    fn admit_at(&self, key: &str, n: u32, now: Instant) -> Result<(), Duration> {
        let Some(interval) = self.interval.filter(|_| n > 0) else {
            return Ok(());
        };
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.admitted += 1;
        if s.admitted.is_multiple_of(1024) {
            // Turns of objects deleted before they came.
            let stale = now.checked_sub(Duration::from_secs(3600)).unwrap_or(now);
            s.reservations.retain(|_, at| *at > stale);
        }
        if let Some(at) = s.reservations.get(key).copied() {
            if at <= now {
                s.reservations.remove(key);
                return Ok(());
            }
            return Err(at - now);
        }
        let tat = s.tat.max(now) + interval * n;
        s.tat = tat;
        let at = tat.checked_sub(self.tolerance).unwrap_or(now);
        if at <= now {
            return Ok(());
        }
        s.reservations.insert(key.to_string(), at);
        Err(at - now)
    }

    /// How long until `key`'s reserved turn (None: it holds none): when to look again.
    pub fn reserved_in(&self, key: &str) -> Option<Duration> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let at = *s.reservations.get(key)?;
        Some(at.saturating_duration_since(Instant::now()))
    }
}

/// A background read that may be put off by the budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Paced<T> {
    Done(T),
    /// No permit now: the turn reserved for it comes this long from now; requeue for then.
    Later(Duration),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn beyond_the_burst_checks_get_turns_spaced_at_the_rate_and_never_wait() {
        let b = DriftBudget::new(6000); // burst 100, ~98 per second: a turn every ~10 ms
        for i in 0..100 {
            assert_eq!(b.admit(&format!("o{i}"), 1), Ok(()), "the burst");
        }
        let turns: Vec<Duration> = (100..110)
            .map(|i| b.admit(&format!("o{i}"), 1).expect_err("refused at once"))
            .collect();
        for pair in turns.windows(2) {
            let gap = pair[1].saturating_sub(pair[0]);
            assert!(
                gap >= Duration::from_millis(9) && gap <= Duration::from_millis(12),
                "turns follow each other at the rate: {turns:?}"
            );
        }
        // Asking again before the turn gets the same turn (and spends nothing more).
        let again = b.admit("o105", 1).unwrap_err();
        assert!(again <= turns[5] && again + Duration::from_millis(5) >= turns[5]);
        assert_eq!(b.reserved_in("o105").map(|d| d <= turns[5]), Some(true));
        assert_eq!(b.reserved_in("o1"), None);
        tokio::time::sleep(turns[9]).await;
        assert_eq!(b.admit("o109", 1), Ok(()), "its turn has come");
        assert_eq!(b.reserved_in("o109"), None, "a turn is used once");
    }

    /// The property the budget exists for, in simulated time: whatever the mix of objects, permits per
    /// check and arrival times (a sweep of everything at once, checks returning a resync later,
    /// put-off checks coming back at their turn or a little after), no 60-second window sees more
    /// Konnect calls than the budget less one (the readiness probe's), plus the pages of one list
    /// beyond its first (a list's pages are read at once, after the turns they were paid with: a
    /// window can hold those turns' calls and its own), and every check is served.
    #[test]
    fn no_minute_sees_more_calls_than_the_budget() {
        const MAX_PAGES: u32 = 3;
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;

        for seed in 0..30u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let per_minute = [60u32, 300, 1200][(seed % 3) as usize];
            let b = DriftBudget::new(per_minute);
            let start = Instant::now();
            let objects = rng.random_range(50..400usize);
            let resync = Duration::from_secs(rng.random_range(10..60));
            // (when it asks, object, permits its check needs)
            let first_n: Vec<u32> = (0..objects)
                .map(|_| rng.random_range(1..=MAX_PAGES))
                .collect();
            let mut queue: BinaryHeap<Reverse<(Instant, usize, u32)>> = first_n
                .iter()
                .enumerate()
                .map(|(o, n)| Reverse((start, o, *n)))
                .collect();
            let mut served = std::collections::HashSet::new();
            let mut calls: Vec<(Instant, u32)> = Vec::new();
            let end = start + Duration::from_secs(600);
            while let Some(Reverse((at, o, n))) = queue.pop() {
                if at > end {
                    break;
                }
                match b.admit_at(&format!("o{o}"), n, at) {
                    Ok(()) => {
                        calls.push((at, n));
                        served.insert(o);
                        let jitter = Duration::from_millis(rng.random_range(0..2000));
                        queue.push(Reverse((at + resync + jitter, o, n)));
                    }
                    Err(wait) => {
                        // Back at its turn, or up to 50 ms late (a busy reconcile queue).
                        let late = Duration::from_millis(rng.random_range(0..50));
                        queue.push(Reverse((at + wait + late, o, n)));
                    }
                }
            }
            for (i, (t, _)) in calls.iter().enumerate() {
                let window: u32 = calls[i..]
                    .iter()
                    .take_while(|(u, _)| *u < *t + Duration::from_secs(60))
                    .map(|(_, n)| n)
                    .sum();
                assert!(
                    window <= per_minute - 1 + (MAX_PAGES - 1),
                    "seed {seed}: {window} calls in the minute from {:?} (budget {per_minute}, {objects} objects, resync {resync:?})",
                    *t - start
                );
            }
            // Served: when one sweep fits in nine minutes at the budget's rate, every object's check
            // went through at least once (nothing starves behind the turns of others).
            let permits: u32 = first_n.iter().sum();
            let rate =
                f64::from(per_minute) - (f64::from(per_minute) / 60.0).floor().max(1.0) - 1.0;
            if f64::from(permits) / rate <= 9.0 {
                assert_eq!(
                    served.len(),
                    objects,
                    "seed {seed}: a sweep of {permits} permits at {rate}/min left objects unserved"
                );
            }
        }
    }

    #[test]
    fn zero_means_unlimited() {
        let b = DriftBudget::new(0);
        for i in 0..10_000 {
            assert_eq!(b.admit(&format!("o{i}"), 1), Ok(()));
        }
    }
}
