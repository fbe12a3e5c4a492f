//! What every reconcile shares: clients, caches, metrics, the per-object failure count.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;

use super::connections::Connections;
use super::konnect_cache::KonnectCache;
use crate::api::{RoleBinding, SystemAccount};
use crate::telemetry::Metrics;

/// Tunables of the controllers (from `run`'s flags).
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// How often every object is checked against Konnect when nothing else happens.
    pub resync: Duration,
    /// Upper bound of the error backoff.
    pub max_backoff: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(300),
            max_backoff: Duration::from_secs(300),
        }
    }
}

pub struct Context {
    pub kube: kube::Client,
    pub connections: Arc<Connections>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub config: ControllerConfig,
    /// The SystemAccount cache: tokens and bindings read their account's state from it.
    pub accounts: Store<SystemAccount>,
    /// The RoleBinding cache: a binding keeps an assignment another binding still wants.
    pub bindings: Store<RoleBinding>,
    pub cache: KonnectCache,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        kube: kube::Client,
        connections: Arc<Connections>,
        metrics: Arc<Metrics>,
        recorder: Recorder,
        config: ControllerConfig,
        accounts: Store<SystemAccount>,
        bindings: Store<RoleBinding>,
    ) -> Self {
        // Shorter than the resync, so a resync sees Konnect's list, not our last read of it.
        let assignments_ttl = Duration::from_secs(5).min(config.resync / 2);
        Self {
            kube,
            connections,
            metrics,
            recorder,
            config,
            accounts,
            bindings,
            cache: KonnectCache::new(Duration::from_secs(600), assignments_ttl),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one more failure in a row for `key` and returns the count before it.
    pub fn record_failure(&self, key: &str) -> u32 {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(key.to_string()).or_insert(0);
        let before = *n;
        *n = n.saturating_add(1);
        before
    }

    pub fn record_success(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// The resync period with up to 10% jitter, so objects created together spread out.
    pub fn resync_with_jitter(&self) -> Duration {
        let jitter: f64 = rand::random::<f64>() * 0.1;
        self.config.resync + self.config.resync.mul_f64(jitter)
    }
}
