//! Per-object failure bookkeeping: how often an object failed in a row, and until when triggers that
//! change nothing the user controls are held back. Our own status writes wake the object through its
//! watch; without the hold, a failing step would run again on each of them instead of on the backoff.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Backoffs {
    objects: Mutex<HashMap<String, Object>>,
}

/// An object from the start of a reconcile until its next success.
#[derive(Default)]
struct Object {
    /// Holds lifted so far ([`Backoffs::lift_hold`]).
    lifts: u64,
    /// `lifts` when its latest reconcile began.
    lifts_at_start: u64,
    failing: Option<Failing>,
}

struct Failing {
    count: u32,
    /// No retry before this, unless `fingerprint` changed or a lift came after the failed reconcile began.
    until: Instant,
    /// What the user controls of the object when it failed (see `reconciler::fingerprint`).
    fingerprint: u64,
    /// `lifts_at_start` of the reconcile that failed: a lift since then (even during it) ends the hold.
    lifts_seen: u64,
}

impl Backoffs {
    fn objects(&self) -> std::sync::MutexGuard<'_, HashMap<String, Object>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A reconcile of `key` passed the hold and begins: lifts from now on count for its outcome.
    pub fn begin(&self, key: &str) {
        let mut objects = self.objects();
        let o = objects.entry(key.to_string()).or_default();
        o.lifts_at_start = o.lifts;
    }

    /// Counts one more failure in a row for `key`, holds it back for `delay(failures before)` when
    /// `hold`, and returns that delay. Without `hold` the failure is counted but any trigger retries
    /// (waiting for an account: its watch is the signal to look again).
    pub fn record_failure(
        &self,
        key: &str,
        fingerprint: u64,
        hold: bool,
        now: Instant,
        delay: impl FnOnce(u32) -> Duration,
    ) -> Duration {
        let mut objects = self.objects();
        let o = objects.entry(key.to_string()).or_default();
        let count = o.failing.as_ref().map_or(0, |f| f.count);
        let wait = delay(count);
        o.failing = Some(Failing {
            count: count.saturating_add(1),
            until: if hold { now + wait } else { now },
            fingerprint,
            lifts_seen: o.lifts_at_start,
        });
        wait
    }

    /// How long `key` is still held back, if its fingerprint is the one it failed with and no lift
    /// came since the failed reconcile began.
    pub fn held_back(&self, key: &str, fingerprint: u64, now: Instant) -> Option<Duration> {
        let objects = self.objects();
        let o = objects.get(key)?;
        let failing = o
            .failing
            .as_ref()
            .filter(|f| f.fingerprint == fingerprint && f.lifts_seen == o.lifts)?;
        let left = failing.until.saturating_duration_since(now);
        (!left.is_zero()).then_some(left)
    }

    /// Ends `key`'s hold (the count stays, so the next failure backs off further): something the
    /// user did outside the object, such as deleting its Secret, is worth a look at once.
    /// Objects never reconciled (or gone since their last success) are not remembered.
    pub fn lift_hold(&self, key: &str) {
        if let Some(o) = self.objects().get_mut(key) {
            o.lifts += 1;
        }
    }

    /// Whether the last reconcile of `key` failed.
    pub fn failed_last_time(&self, key: &str) -> bool {
        self.objects().get(key).is_some_and(|o| o.failing.is_some())
    }

    pub fn record_success(&self, key: &str) {
        self.objects().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_failure_holds_back_triggers_that_change_nothing_until_its_delay_passed() {
        let b = Backoffs::default();
        let t0 = Instant::now();
        let seen = std::cell::Cell::new(u32::MAX);
        let d = b.record_failure("k", 7, true, t0, |n| {
            seen.set(n);
            5 * S
        });
        assert_eq!((d, seen.get()), (5 * S, 0));
        // Our own status write wakes it 1 s later: held for the 4 s left.
        assert_eq!(b.held_back("k", 7, t0 + S), Some(4 * S));
        // An edit (another fingerprint) goes through; so does anything after the delay.
        assert_eq!(b.held_back("k", 8, t0 + S), None);
        assert_eq!(b.held_back("k", 7, t0 + 5 * S), None);
        assert!(b.failed_last_time("k"));
        // The second failure in a row sees one failure before it.
        b.record_failure("k", 7, true, t0 + 5 * S, |n| {
            seen.set(n);
            10 * S
        });
        assert_eq!(seen.get(), 1);
        assert_eq!(b.held_back("k", 7, t0 + 6 * S), Some(9 * S));
        b.record_success("k");
        assert_eq!(b.held_back("k", 7, t0 + 6 * S), None);
        assert!(!b.failed_last_time("k"));
    }

    #[test]
    fn a_failure_without_hold_is_counted_but_holds_nothing() {
        let b = Backoffs::default();
        let t0 = Instant::now();
        b.record_failure("k", 1, false, t0, |_| 30 * S);
        assert_eq!(b.held_back("k", 1, t0), None);
        assert!(b.failed_last_time("k"));
        assert_eq!(b.held_back("other", 1, t0), None);
    }

    #[test]
    fn a_lifted_hold_lets_the_next_trigger_through_and_the_next_failure_backs_off_further() {
        let b = Backoffs::default();
        let t0 = Instant::now();
        // Each failure comes from a reconcile that began (as the reconciler calls them).
        b.begin("k");
        b.record_failure("k", 1, true, t0, |_| 30 * S);
        b.lift_hold("absent");
        assert_eq!(b.held_back("k", 1, t0 + S), Some(29 * S));
        b.lift_hold("k");
        assert_eq!(b.held_back("k", 1, t0 + S), None);
        let seen = std::cell::Cell::new(0);
        b.begin("k");
        b.record_failure("k", 1, true, t0 + S, |n| {
            seen.set(n);
            60 * S
        });
        assert_eq!(seen.get(), 1, "the count survived the lift");
        assert_eq!(b.held_back("k", 1, t0 + 2 * S), Some(59 * S), "held again");
    }

    #[test]
    fn a_lift_during_the_failing_reconcile_is_not_lost() {
        let b = Backoffs::default();
        let t0 = Instant::now();
        // The user deletes the Secret while the reconcile that will fail is running.
        b.begin("k");
        b.lift_hold("k");
        b.record_failure("k", 1, true, t0, |_| 30 * S);
        assert_eq!(
            b.held_back("k", 1, t0 + S),
            None,
            "the deletion's trigger goes through"
        );
        // That retry fails again with no new lift: held.
        b.begin("k");
        b.record_failure("k", 1, true, t0 + S, |_| 60 * S);
        assert_eq!(b.held_back("k", 1, t0 + 2 * S), Some(59 * S));
        // Success forgets the object; a later lift of it remembers nothing.
        b.record_success("k");
        b.lift_hold("k");
        assert!(b.objects().is_empty());
    }
}
