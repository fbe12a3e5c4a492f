//! Leader election on a coordination.k8s.io Lease, with the [`Fence`] every write passes.
//!
//! How a takeover stays safe (the same rules as client-go's leaderelection):
//! - **Expiry is judged by local observation time.** A standby never compares the holder's
//!   `renewTime` with its own clock (clock skew would let it take a live Lease). It remembers the
//!   Lease record it last saw and the local instant it first saw it; the Lease is expired when the
//!   record has not changed for `leaseDurationSeconds` of local time.
//! - **The leader's writes are fenced by time, not by a loop that may be stuck.** A renewal that
//!   started at local instant `t0` and succeeded opens the fence until `t0 + renew_deadline`
//!   (2/3 of the lease duration). The standby can only observe that renewal at or after `t0`, so
//!   it takes over at `t0 + lease_duration` at the earliest: the leader's writes stop a third of a
//!   lease duration before. The fence is checked before every Kubernetes and Konnect write
//!   ([`crate::fence`]), so a renewal that hangs, an API server that stops answering or a write
//!   waiting out a 429 cannot outlive the lease.
//! - **Every call to the Lease is bounded** (`attempt_timeout`, and never past the fence deadline).
//! - Acquire and renew are resourceVersion-guarded replaces: of two candidates one gets 409.
//!
//! Why not a crate: kube-lease-manager 0.13 (kube 5) computes expiry as `renewTime + duration`
//! against the local wall clock, has no timeout on its Lease calls, and reports leadership through
//! a flag that stays `true` while a call hangs; kubert and kube-leader-election lag behind kube 5.
//! The README's "High availability" section has the comparison.
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::time::Instant;

use crate::clock::Clock;
pub use crate::fence::Fence;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a lease is valid without renewal; a standby takes over after this.
    pub lease_duration: Duration,
    /// The leader stops writing this long after the start of its last successful renewal.
    pub renew_deadline: Duration,
    /// How often the leader renews (and a candidate retries).
    pub retry_period: Duration,
    /// The local time expiry and the fence deadline are judged by (real; tests freeze it).
    pub clock: Clock,
}

impl LeaseConfig {
    /// The client-go proportions: renew deadline 2/3 and retry period 1/5 of the lease duration.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
        lease_duration: Duration,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration,
            renew_deadline: lease_duration.mul_f64(2.0 / 3.0),
            retry_period: lease_duration / 5,
            clock: Clock::default(),
        }
    }

    /// Upper bound of one read-and-write of the Lease: a retry period (at least a second, so a
    /// slow API server is not mistaken for a dead one), and at most half the renew deadline, so a
    /// hung call leaves time for another attempt.
    pub fn attempt_timeout(&self) -> Duration {
        self.retry_period
            .max(Duration::from_secs(1))
            .min(self.renew_deadline / 2)
    }
}

/// What a candidate should do with the Lease it read (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseDecision {
    /// We hold it: renew.
    Renew,
    /// Free, or unchanged for a whole lease duration of local time: take it.
    Acquire,
    /// Someone else holds a lease that has not expired by our observation.
    Wait,
}

/// `spec` as read, first seen unchanged at local instant `seen_at`; `now` is local too. The
/// holder's `renewTime` is deliberately not used: it is another machine's clock.
pub fn decide(spec: &LeaseSpec, seen_at: Instant, identity: &str, now: Instant) -> LeaseDecision {
    match spec.holder_identity.as_deref() {
        None | Some("") => LeaseDecision::Acquire,
        Some(h) if h == identity => LeaseDecision::Renew,
        Some(_) => {
            let secs = spec.lease_duration_seconds.unwrap_or(15).max(1);
            let duration = Duration::from_secs(u64::try_from(secs).unwrap_or(15));
            if now.saturating_duration_since(seen_at) >= duration {
                LeaseDecision::Acquire
            } else {
                LeaseDecision::Wait
            }
        }
    }
}

/// When the record changed since the last read, it is first seen `now`; else when it was first seen.
pub fn first_seen(
    previous: Option<&(LeaseSpec, Instant)>,
    spec: &LeaseSpec,
    now: Instant,
) -> Instant {
    match previous {
        Some((old, at)) if old == spec => *at,
        _ => now,
    }
}

/// Why a leader stopped leading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LostLease {
    #[error("another replica holds the Lease")]
    TakenOver,
    #[error("no renewal succeeded within the renew deadline")]
    RenewDeadline,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("{0}")]
    Kube(#[from] kube::Error),
    #[error("the Lease call did not answer within {0:?}")]
    TimedOut(Duration),
}

pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    fence: Fence,
    /// The record last read and the local instant it was first seen unchanged.
    observed: Mutex<Option<(LeaseSpec, Instant)>>,
    /// The holder last logged (a standby logs each new leader once).
    logged_holder: Mutex<Option<String>>,
    /// Set when an attempt decided to take the Lease: from whom (None: nobody held it). Logged once we
    /// hold it, even when that attempt's reply was lost and a later one found us the holder.
    taking_from: Mutex<Option<Option<String>>>,
}

impl LeaderElector {
    /// `client` must not be fenced: the Lease calls are how the fence is opened.
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            fence: Fence::closed_on(config.clock.clone()),
            config,
            observed: Mutex::new(None),
            logged_holder: Mutex::new(None),
            taking_from: Mutex::new(None),
        }
    }

    /// Open while this candidate holds the Lease; wrap the controllers' clients with it.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// One bounded attempt to acquire or renew. Ok(true): we hold the Lease, and the fence is open
    /// until the start of this attempt plus the renew deadline.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, LeaseError> {
        let limit = self.config.attempt_timeout();
        let started = self.config.clock.instant();
        match tokio::time::timeout(limit, self.attempt()).await {
            Ok(Ok(true)) => {
                self.fence.extend_to(started + self.config.renew_deadline);
                Ok(true)
            }
            Ok(other) => other,
            Err(_) => Err(LeaseError::TimedOut(limit)),
        }
    }

    async fn attempt(&self) -> Result<bool, LeaseError> {
        let existing = self.api.get_opt(&self.config.name).await?;
        let now = self.config.clock.instant();
        let wall = self.config.clock.now();
        let seconds = i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(15);
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(wall)),
                    renew_time: Some(MicroTime(wall)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return conflict_is_loss(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let seen_at = {
            let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
            let at = first_seen(observed.as_ref(), &spec, now);
            *observed = Some((spec.clone(), at));
            at
        };
        let decision = decide(&spec, seen_at, &self.config.identity, now);
        if decision == LeaseDecision::Wait {
            self.log_holder(spec.holder_identity.as_deref());
            return Ok(false);
        }
        let spec = lease.spec.get_or_insert_with(Default::default);
        if decision == LeaseDecision::Acquire {
            // Whom we take it from: nobody (released or new), or a holder silent for a lease duration.
            let previous = spec.holder_identity.clone().filter(|h| !h.is_empty());
            *self.taking_from.lock().unwrap_or_else(|p| p.into_inner()) = Some(previous);
            spec.holder_identity = Some(self.config.identity.clone());
            spec.acquire_time = Some(MicroTime(wall));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(MicroTime(wall));
        // resourceVersion from the read: a concurrent writer makes this 409, and we lose.
        conflict_is_loss(
            self.api
                .replace(&self.config.name, &PostParams::default(), &lease)
                .await,
        )
    }

    /// Says once how the Lease came to us (the operator's log tells a clean handover from an expiry).
    fn log_taking(&self) {
        let taken = self
            .taking_from
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match taken {
            Some(Some(holder)) => tracing::info!(
                lease = %self.config.name,
                previous = %holder,
                "took over an expired Lease: its record stood unchanged for a lease duration"
            ),
            Some(None) => tracing::info!(lease = %self.config.name, "took over a released Lease"),
            None => {}
        }
    }

    fn log_holder(&self, holder: Option<&str>) {
        let mut logged = self.logged_holder.lock().unwrap_or_else(|p| p.into_inner());
        if logged.as_deref() != holder {
            tracing::info!(
                lease = %self.config.name,
                leader = holder.unwrap_or_default(),
                identity = %self.config.identity,
                "standing by: another replica is the leader"
            );
            *logged = holder.map(String::from);
        }
    }

    /// Waits until this candidate holds the Lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    self.log_taking();
                    tracing::info!(lease = %self.config.name, identity = %self.config.identity, "became leader");
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: could not read or write the Lease")
                }
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Renews until the Lease is lost; then the fence is closed and the reason returned. Returns
    /// at the fence deadline at the latest, whatever a hung call does. (The wait is a real timer
    /// measured by the clock's reading: the same in production; a test that runs the clock ahead
    /// closes the fence at once, and this returns at the real deadline.)
    pub async fn hold(&self) -> LostLease {
        // After a success wait a retry period; after a failure try again sooner.
        let mut pause = self.config.retry_period;
        loop {
            // Past the deadline already: a zero timeout, which ends below as any missed deadline does.
            let remaining = self.fence.remaining().unwrap_or_default();
            let renewed = async {
                tokio::time::sleep(pause).await;
                self.try_acquire_or_renew().await
            };
            match tokio::time::timeout(remaining, renewed).await {
                Err(_) => {
                    self.fence.close();
                    tracing::error!(lease = %self.config.name, "could not renew the leader lease in time");
                    return LostLease::RenewDeadline;
                }
                Ok(Ok(true)) => pause = self.config.retry_period,
                Ok(Ok(false)) => {
                    self.fence.close();
                    tracing::error!(lease = %self.config.name, "lost the leader lease to another replica");
                    return LostLease::TakenOver;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not renew the leader lease");
                    pause = self.config.retry_period / 4;
                }
            }
        }
    }

    /// Closes the fence and gives the Lease up, so a standby takes over at once (clean shutdown;
    /// call it after the controllers stopped).
    pub async fn release(&self) {
        self.fence.close();
        let release = async {
            let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
                return;
            };
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() == Some(self.config.identity.as_str()) {
                spec.holder_identity = None;
                spec.renew_time = None;
                let _ = self
                    .api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await;
                tracing::info!(lease = %self.config.name, "released the leader lease");
            }
        };
        let _ = tokio::time::timeout(self.config.attempt_timeout(), release).await;
    }
}

fn conflict_is_loss(r: Result<Lease, kube::Error>) -> Result<bool, LeaseError> {
    match r {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn spec(holder: &str, renewed: i64, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            lease_duration_seconds: Some(secs),
            ..Default::default()
        }
    }

    #[test]
    fn expiry_is_judged_by_when_the_record_last_changed_here() {
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        // renewTime far in the past by our clock (skew): still valid until 15 s after we saw it.
        let skewed = spec("other", 0, 15);
        assert_eq!(decide(&skewed, t0, "me", s(14)), LeaseDecision::Wait);
        assert_eq!(decide(&skewed, t0, "me", s(15)), LeaseDecision::Acquire);
        // renewTime far in the future (skew the other way) does not extend it either.
        let future = spec("other", 4_000_000_000, 15);
        assert_eq!(decide(&future, t0, "me", s(15)), LeaseDecision::Acquire);
        assert_eq!(
            decide(&spec("me", 0, 15), t0, "me", s(100)),
            LeaseDecision::Renew
        );
        assert_eq!(
            decide(&LeaseSpec::default(), t0, "me", t0),
            LeaseDecision::Acquire
        );
        let released = LeaseSpec {
            holder_identity: Some(String::new()),
            ..spec("x", 0, 15)
        };
        assert_eq!(decide(&released, t0, "me", t0), LeaseDecision::Acquire);
    }

    #[test]
    fn a_changed_record_restarts_the_clock_an_unchanged_one_does_not() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(10);
        let a = spec("other", 100, 15);
        let renewed = spec("other", 103, 15);
        assert_eq!(first_seen(None, &a, t0), t0);
        assert_eq!(first_seen(Some(&(a.clone(), t0)), &a, later), t0);
        assert_eq!(first_seen(Some(&(a, t0)), &renewed, later), later);
    }

    #[test]
    fn the_leader_stops_a_third_of_a_lease_before_a_standby_may_take_over() {
        let c = LeaseConfig::new("ns", "l", "me", Duration::from_secs(15));
        assert_eq!(c.renew_deadline, Duration::from_secs(10));
        assert_eq!(c.retry_period, Duration::from_secs(3));
        // A hung call leaves room for at least two more attempts before the deadline.
        assert_eq!(c.attempt_timeout(), Duration::from_secs(3));
        let short = LeaseConfig::new("ns", "l", "me", Duration::from_secs(3));
        assert_eq!(short.attempt_timeout(), Duration::from_secs(1));
    }
}
