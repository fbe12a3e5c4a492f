//! Leader election on a coordination.k8s.io Lease, as client-go does it: read the Lease, take it
//! when free or expired, renew it, all with resourceVersion-guarded replaces so two candidates
//! can never both win. Only the leader runs the controllers; losing the lease ends the process
//! (the Deployment restarts it as a standby), so a partitioned old leader stops writing.
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a lease is valid without renewal; a standby takes over after this.
    pub lease_duration: Duration,
    /// How often the leader renews (and a candidate retries).
    pub retry_period: Duration,
}

/// What a candidate should do with the Lease it read (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseDecision {
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it.
    Acquire,
    /// Someone else holds a valid lease.
    Wait,
}

pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> LeaseDecision {
    let Some(spec) = spec else {
        return LeaseDecision::Acquire;
    };
    match spec.holder_identity.as_deref() {
        Some(h) if h == identity => LeaseDecision::Renew,
        None | Some("") => LeaseDecision::Acquire,
        Some(_) => {
            let renewed = spec.renew_time.as_ref().map(|t| t.0);
            let duration =
                SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
            match renewed.and_then(|r| r.checked_add(duration).ok()) {
                Some(valid_until) if valid_until > now => LeaseDecision::Wait,
                _ => LeaseDecision::Acquire,
            }
        }
    }
}

pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
}

impl LeaderElector {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
        }
    }

    /// One attempt to acquire or renew. Ok(true): we hold the lease now.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let existing = self.api.get_opt(&self.config.name).await?;
        let decision = decide(
            existing.as_ref().and_then(|l| l.spec.as_ref()),
            &self.config.identity,
            now,
        );
        let seconds = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(15);
        match (decision, existing) {
            (LeaseDecision::Wait, _) => Ok(false),
            (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.config.identity.clone()),
                        lease_duration_seconds: Some(seconds),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                conflict_is_loss(self.api.create(&PostParams::default(), &lease).await)
            }
            (decision, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(Default::default);
                if decision == LeaseDecision::Acquire {
                    spec.holder_identity = Some(self.config.identity.clone());
                    spec.acquire_time = Some(MicroTime(now));
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.lease_duration_seconds = Some(seconds);
                spec.renew_time = Some(MicroTime(now));
                // resourceVersion from the read: a concurrent writer makes this 409, and we lose.
                conflict_is_loss(
                    self.api
                        .replace(&self.config.name, &PostParams::default(), &lease)
                        .await,
                )
            }
        }
    }

    /// Waits until this candidate holds the lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(lease = %self.config.name, identity = %self.config.identity, "became leader");
                    return;
                }
                Ok(false) => tracing::debug!("lease held by another replica; standing by"),
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: could not read or write the Lease")
                }
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Renews until renewal fails for longer than the lease duration (or another holder shows
    /// up); then returns, and the caller must stop writing.
    pub async fn hold(&self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!("lost the leader lease to another replica");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "could not renew the leader lease"),
            }
            // Stop before the lease could expire for the others: renew deadline = 2/3 of the duration.
            if last_ok.elapsed() > self.config.lease_duration.mul_f64(2.0 / 3.0) {
                tracing::error!("could not renew the leader lease in time");
                return;
            }
        }
    }

    /// Gives the lease up on clean shutdown so a standby takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() == Some(self.config.identity.as_str()) {
                spec.holder_identity = None;
                spec.renew_time = None;
                let _ = self
                    .api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await;
            }
        }
    }
}

fn conflict_is_loss(r: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match r {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: i64, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            lease_duration_seconds: Some(secs),
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_lease_of_another_holder_is_respected_until_it_expires() {
        let now = |s| Timestamp::from_second(s).unwrap();
        assert_eq!(decide(None, "me", now(0)), LeaseDecision::Acquire);
        assert_eq!(
            decide(Some(&spec("me", 0, 15)), "me", now(5)),
            LeaseDecision::Renew
        );
        assert_eq!(
            decide(Some(&spec("other", 100, 15)), "me", now(110)),
            LeaseDecision::Wait
        );
        assert_eq!(
            decide(Some(&spec("other", 100, 15)), "me", now(116)),
            LeaseDecision::Acquire
        );
        assert_eq!(
            decide(Some(&LeaseSpec::default()), "me", now(0)),
            LeaseDecision::Acquire
        );
    }
}
