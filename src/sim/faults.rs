//! Fault injection: decisions only (the middleware applies them). Seedable, clock passed in.
use k8s_openapi::jiff::Timestamp;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Fault settings (`--fault-*` flags, `PUT /_sim/faults`). Rates are probabilities in 0..=1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Probability of a 429 (Kong's JSON body, `Retry-After: retry_after_secs`).
    pub rate_429: f64,
    /// Probability of a 503 problem+json before the operation runs.
    pub rate_5xx: f64,
    /// Probability that the operation commits but the caller gets a 502, a 503 or a dropped connection.
    pub rate_lost: f64,
    pub retry_after_secs: u64,
    /// Added to every API request.
    pub latency_ms: u64,
    /// Requests admitted per wall-clock minute (None: unlimited); beyond it, 429 until the next minute.
    pub requests_per_minute: Option<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            rate_429: 0.0,
            rate_5xx: 0.0,
            rate_lost: 0.0,
            retry_after_secs: 1,
            latency_ms: 0,
            requests_per_minute: None,
        }
    }
}

impl Faults {
    /// Rejects rates outside 0..=1 (a typo like `5` for 5% would otherwise fail every request).
    pub fn validate(&self) -> Result<(), String> {
        for (name, r) in [
            ("rate_429", self.rate_429),
            ("rate_5xx", self.rate_5xx),
            ("rate_lost", self.rate_lost),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("{name} must be between 0 and 1, got {r}"));
            }
        }
        Ok(())
    }
}

/// What happens to a request before the operation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Before {
    Proceed,
    /// 429; `retry_after` seconds; `limit` is set when the per-minute limit caused it.
    RateLimited {
        retry_after: u64,
        limit: Option<u64>,
    },
    Unavailable,
}

/// How a committed operation's response is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    BadGateway,
    Unavailable,
    DropConnection,
}

pub struct FaultEngine {
    faults: Faults,
    rng: StdRng,
    minute: i64,
    admitted_this_minute: u64,
}

impl FaultEngine {
    pub fn new(faults: Faults, seed: Option<u64>) -> Self {
        Self {
            faults,
            rng: match seed {
                // A different stream than the store's, same seed.
                Some(s) => StdRng::seed_from_u64(s ^ 0x5eed_fa17),
                None => StdRng::from_os_rng(),
            },
            minute: i64::MIN,
            admitted_this_minute: 0,
        }
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    pub fn set(&mut self, faults: Faults) {
        self.faults = faults;
    }

    pub fn latency_ms(&self) -> u64 {
        self.faults.latency_ms
    }

    fn hit(&mut self, rate: f64) -> bool {
        rate > 0.0 && self.rng.random::<f64>() < rate
    }

    pub fn before(&mut self, now: Timestamp) -> Before {
        if let Some(limit) = self.faults.requests_per_minute {
            let secs = now.as_second();
            let minute = secs.div_euclid(60);
            if minute != self.minute {
                self.minute = minute;
                self.admitted_this_minute = 0;
            }
            if self.admitted_this_minute >= limit {
                let to_next = 60 - secs.rem_euclid(60);
                return Before::RateLimited {
                    retry_after: u64::try_from(to_next).unwrap_or(1).max(1),
                    limit: Some(limit),
                };
            }
        }
        if self.hit(self.faults.rate_429) {
            return Before::RateLimited {
                retry_after: self.faults.retry_after_secs,
                limit: None,
            };
        }
        if self.hit(self.faults.rate_5xx) {
            return Before::Unavailable;
        }
        self.admitted_this_minute += 1;
        Before::Proceed
    }

    pub fn after(&mut self) -> Option<Lost> {
        if !self.hit(self.faults.rate_lost) {
            return None;
        }
        Some(match self.rng.random_range(0..3) {
            0 => Lost::BadGateway,
            1 => Lost::Unavailable,
            _ => Lost::DropConnection,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn no_faults_by_default() {
        let mut e = FaultEngine::new(Faults::default(), Some(1));
        for _ in 0..1000 {
            assert_eq!(e.before(at("2026-01-01T00:00:00Z")), Before::Proceed);
            assert_eq!(e.after(), None);
        }
    }

    #[test]
    fn per_minute_limit_resets_on_the_next_minute() {
        let f = Faults {
            requests_per_minute: Some(2),
            ..Faults::default()
        };
        let mut e = FaultEngine::new(f, Some(1));
        let t = at("2026-01-01T00:00:45Z");
        assert_eq!(e.before(t), Before::Proceed);
        assert_eq!(e.before(t), Before::Proceed);
        assert_eq!(
            e.before(t),
            Before::RateLimited {
                retry_after: 15,
                limit: Some(2)
            }
        );
        assert_eq!(e.before(at("2026-01-01T00:01:00Z")), Before::Proceed);
    }

    #[test]
    fn rates_are_roughly_honoured_and_seeded() {
        let f = Faults {
            rate_429: 0.2,
            rate_5xx: 0.2,
            rate_lost: 0.3,
            retry_after_secs: 7,
            ..Faults::default()
        };
        let run = |seed| {
            let mut e = FaultEngine::new(f.clone(), Some(seed));
            (0..2000)
                .map(|_| (e.before(at("2026-01-01T00:00:00Z")), e.after()))
                .collect::<Vec<_>>()
        };
        let a = run(3);
        assert_eq!(a, run(3), "same seed, same faults");
        let n429 = a
            .iter()
            .filter(|(b, _)| matches!(b, Before::RateLimited { retry_after: 7, .. }))
            .count();
        let n5xx = a.iter().filter(|(b, _)| *b == Before::Unavailable).count();
        let drops = a
            .iter()
            .filter(|(_, l)| *l == Some(Lost::DropConnection))
            .count();
        let lost = a.iter().filter(|(_, l)| l.is_some()).count();
        assert!((300..500).contains(&n429), "{n429}");
        assert!((220..420).contains(&n5xx), "{n5xx}");
        assert!((500..700).contains(&lost), "{lost}");
        assert!(drops > 100 && drops < lost, "{drops}");
    }

    #[test]
    fn rates_outside_zero_one_are_rejected() {
        assert!(
            Faults {
                rate_5xx: 5.0,
                ..Faults::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            Faults {
                rate_lost: 1.0,
                ..Faults::default()
            }
            .validate()
            .is_ok()
        );
    }
}
