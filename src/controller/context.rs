//! What every reconcile shares: clients, caches, metrics, the per-object failure count.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::k8s::events::Publisher;
use kube::runtime::reflector::Store;

use super::backoff::Backoffs;
use super::budget::DriftBudget;
use super::connections::Connections;
use super::konnect_cache::KonnectCache;
use super::snapshot::Snapshot;
use crate::api::{RoleBinding, SystemAccount};
use crate::telemetry::Metrics;

/// The cache's copy of an object against the newest version we know of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheCopy {
    /// The newest we know of (or newer than our last write).
    Latest,
    /// Older than our own last write: its watch event is on its way and wakes the object again.
    Older,
    /// Another version that cannot be ordered: read the object to know.
    Unknown,
}

/// Tunables of the controllers (from `run`'s flags).
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// How often every object is checked against Konnect when nothing else happens.
    pub resync: Duration,
    /// Upper bound of the error backoff.
    pub max_backoff: Duration,
    /// Konnect requests per minute for background drift checks (0: unlimited).
    pub konnect_budget: u32,
    /// `--cluster-name`: goes into the names given to Konnect objects (empty: none).
    pub cluster_name: String,
    /// How long an unfinished token issue is left to its writer before it is healed.
    pub pending_settle: Duration,
    /// `--konnect-token-secret`: (namespace, name) of the Secret holding the operator's own token.
    pub own_token_secret: Option<(String, String)>,
    /// The clock of token renewal, retention and the error backoff's hold (real; a test runs it ahead).
    pub clock: crate::clock::Clock,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(300),
            max_backoff: Duration::from_secs(300),
            konnect_budget: 300,
            cluster_name: String::new(),
            pending_settle: Duration::from_secs(10),
            own_token_secret: None,
            clock: Default::default(),
        }
    }
}

pub struct Context {
    pub kube: kube::Client,
    pub connections: Arc<Connections>,
    pub metrics: Arc<Metrics>,
    pub events: Publisher,
    pub config: ControllerConfig,
    /// The SystemAccount cache: tokens and bindings read their account's state from it.
    pub accounts: Store<SystemAccount>,
    /// The RoleBinding cache: a binding keeps an assignment another binding still wants.
    pub bindings: Store<RoleBinding>,
    pub cache: KonnectCache,
    /// Shared Konnect view for drift checks.
    pub snapshot: Snapshot,
    /// Paces drift checks of unchanged objects.
    pub budget: DriftBudget,
    /// `config.clock`: token renewal, retention and the backoff's hold read the time here.
    pub clock: crate::clock::Clock,
    /// Objects whose Konnect state was confirmed recently: key -> (what was confirmed, when).
    verified: Mutex<HashMap<String, (String, std::time::Instant)>>,
    /// The newest resourceVersion we know of per object uid (our own writes, fresh reads).
    versions: Mutex<HashMap<String, String>>,
    /// Failures in a row per object, and the backoff they hold.
    pub backoffs: Arc<Backoffs>,
    /// One lock per (account, role tuple): a RoleBinding's assign-or-adopt and another's cleanup of
    /// the same assignment never interleave.
    tuple_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Context {
    pub fn new(
        kube: kube::Client,
        connections: Arc<Connections>,
        metrics: Arc<Metrics>,
        events: Publisher,
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
            events,
            accounts,
            bindings,
            cache: KonnectCache::new(Duration::from_secs(600), assignments_ttl),
            snapshot: Snapshot::new(config.resync.mul_f64(0.9)),
            budget: DriftBudget::new(config.konnect_budget),
            clock: config.clock.clone(),
            verified: Mutex::new(HashMap::new()),
            versions: Mutex::new(HashMap::new()),
            config,
            backoffs: Arc::default(),
            tuple_locks: Mutex::new(HashMap::new()),
        }
    }

    /// The failure bookkeeping shared with a watch that ends holds (a token's Secret deleted).
    pub fn with_backoffs(mut self, backoffs: Arc<Backoffs>) -> Self {
        self.backoffs = backoffs;
        self
    }

    /// Holds the lock of one (account, role tuple) until the guard is dropped.
    pub async fn lock_tuple(&self, key: String) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.tuple_locks.lock().unwrap_or_else(|p| p.into_inner());
            // Forget locks nobody holds (the map stays as small as the tuples in flight).
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks.entry(key).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Records the version of an object we wrote or read fresh.
    pub fn note_version<K: kube::Resource>(&self, obj: &K) {
        if let (Some(uid), Some(rv)) = (obj.meta().uid.clone(), obj.meta().resource_version.clone())
        {
            self.versions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(uid, rv);
        }
    }

    /// False when we know of another version than the cache's copy `obj` (the cache lags our writes).
    pub fn is_latest_known<K: kube::Resource>(&self, obj: &K) -> bool {
        self.cache_copy(obj) == CacheCopy::Latest
    }

    /// How the cache's copy `obj` compares with the newest version we know of. Resource versions
    /// of one object are increasing integers (comparable since Kubernetes 1.35, KEP-5504); one
    /// that does not parse can only be compared for equality.
    pub fn cache_copy<K: kube::Resource>(&self, obj: &K) -> CacheCopy {
        let (Some(uid), Some(rv)) = (
            obj.meta().uid.as_ref(),
            obj.meta().resource_version.as_ref(),
        ) else {
            return CacheCopy::Unknown;
        };
        let versions = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        let Some(known) = versions.get(uid) else {
            return CacheCopy::Latest;
        };
        if known == rv {
            return CacheCopy::Latest;
        }
        match (rv.parse::<u64>(), known.parse::<u64>()) {
            (Ok(cached), Ok(known)) if cached < known => CacheCopy::Older,
            (Ok(_), Ok(_)) => CacheCopy::Latest,
            _ => CacheCopy::Unknown,
        }
    }

    /// Writes the status subresource (resourceVersion-guarded) and remembers the new version.
    pub async fn write_status<K>(&self, api: &kube::Api<K>, obj: &K) -> Result<K, kube::Error>
    where
        K: kube::Resource
            + Clone
            + serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let written = crate::k8s::status::replace(api, obj).await?;
        self.note_version(&written);
        Ok(written)
    }

    /// True when `what` was confirmed in Konnect for `key` less than a resync period ago: events
    /// between sweeps (our own status writes, watches of related objects) then cost no Konnect call.
    pub fn recently_verified(&self, key: &str, what: &str) -> bool {
        let v = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        v.get(key)
            .is_some_and(|(w, at)| w == what && at.elapsed() < self.config.resync)
    }

    pub fn mark_verified(&self, key: &str, what: &str) {
        let mut v = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        v.insert(
            key.to_string(),
            (what.to_string(), std::time::Instant::now()),
        );
    }

    /// Drops what we remember about a deleted object (so the maps do not grow with churn).
    pub fn forget_object<K: kube::Resource>(&self, obj: &K, verified_key: &str) {
        if let Some(uid) = obj.meta().uid.as_deref() {
            self.versions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(uid);
        }
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(verified_key);
    }

    /// The resync period with up to 10% jitter, so objects created together spread out.
    pub fn resync_with_jitter(&self) -> Duration {
        let jitter: f64 = rand::random::<f64>() * 0.1;
        self.config.resync + self.config.resync.mul_f64(jitter)
    }
}
