//! Logging, Prometheus metrics and the /metrics, /healthz, /readyz server.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::konnect::RequestObserver;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Installs the global tracing subscriber (`RUST_LOG` filters; default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
    pub category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub operation: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Every metric the operator exports (README "Metrics and health" lists them; tests/docs.rs keeps it in step).
pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<KindLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<KindLabels, Histogram>,
    pub konnect_requests: Family<RequestLabels, Counter>,
    pub konnect_rate_limited: Counter,
    pub token_expiration: Family<TokenLabels, Gauge<f64, AtomicU64>>,
    pub token_renewal: Family<TokenLabels, Gauge<f64, AtomicU64>>,
    pub token_rotations: Family<ReasonLabels, Counter>,
    pub token_rotation_failures: Counter,
    pub drift_checks: Family<KindLabels, Counter>,
    pub leader: Gauge,
    pub drift_checks_deferred: Family<KindLabels, Counter>,
    pub held_back: Family<KindLabels, Counter>,
    pub operator_token_expiration: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reconciles = Family::<KindLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        let konnect_requests = Family::<RequestLabels, Counter>::default();
        let konnect_rate_limited = Counter::default();
        let token_expiration = Family::<TokenLabels, Gauge<f64, AtomicU64>>::default();
        let token_renewal = Family::<TokenLabels, Gauge<f64, AtomicU64>>::default();
        let token_rotations = Family::<ReasonLabels, Counter>::default();
        let token_rotation_failures = Counter::default();
        let drift_checks = Family::<KindLabels, Counter>::default();
        let leader = Gauge::default();
        let drift_checks_deferred = Family::<KindLabels, Counter>::default();
        let held_back = Family::<KindLabels, Counter>::default();
        let operator_token_expiration = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "konnect_sa_operator_token_expiration_timestamp_seconds",
            "Expiry of the Konnect token the operator itself runs on (Unix seconds); only when that token is a \
             SystemAccountToken it manages (--konnect-token-secret)",
            operator_token_expiration.clone(),
        );
        registry.register(
            "konnect_sa_leader",
            "1 while this replica runs the controllers (holds the leader Lease, or runs without leader election)",
            leader.clone(),
        );
        registry.register(
            "konnect_sa_drift_checks_deferred",
            "Background checks put off because the drift budget had no permit (requeued, no slot held), by kind",
            drift_checks_deferred.clone(),
        );
        registry.register(
            "konnect_sa_reconciles_held_back",
            "Wake-ups of a failing object during its backoff that ran nothing (our own status write, a label change), by kind",
            held_back.clone(),
        );
        registry.register(
            "konnect_sa_reconciles",
            "Reconciles by kind",
            reconciles.clone(),
        );
        registry.register(
            "konnect_sa_reconcile_errors",
            "Failed reconciles by kind and error category",
            reconcile_errors.clone(),
        );
        registry.register(
            "konnect_sa_reconcile_duration_seconds",
            "Reconcile duration by kind",
            reconcile_duration.clone(),
        );
        registry.register(
            "konnect_sa_konnect_requests",
            "Konnect API requests by operation and HTTP status code (code 0: no response)",
            konnect_requests.clone(),
        );
        registry.register(
            "konnect_sa_konnect_rate_limited",
            "Konnect API responses with status 429",
            konnect_rate_limited.clone(),
        );
        registry.register(
            "konnect_sa_token_expiration_timestamp_seconds",
            "Expiry of the current token of each SystemAccountToken (Unix seconds)",
            token_expiration.clone(),
        );
        registry.register(
            "konnect_sa_token_renewal_timestamp_seconds",
            "Planned rotation time of each SystemAccountToken (Unix seconds)",
            token_renewal.clone(),
        );
        registry.register(
            "konnect_sa_token_rotations",
            "Token rotations by reason",
            token_rotations.clone(),
        );
        registry.register(
            "konnect_sa_token_rotation_failures",
            "Token rotations that failed (retried with backoff)",
            token_rotation_failures.clone(),
        );
        registry.register(
            "konnect_sa_drift_checks",
            "Background checks of unchanged objects against Konnect, by kind",
            drift_checks.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            konnect_requests,
            konnect_rate_limited,
            token_expiration,
            token_renewal,
            token_rotations,
            token_rotation_failures,
            drift_checks,
            leader,
            drift_checks_deferred,
            held_back,
            operator_token_expiration,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn observe_reconcile(&self, kind: &str, elapsed: Duration, error_category: Option<&str>) {
        let labels = KindLabels {
            kind: kind.to_string(),
        };
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if let Some(category) = error_category {
            self.reconcile_errors
                .get_or_create(&ErrorLabels {
                    kind: kind.to_string(),
                    category: category.to_string(),
                })
                .inc();
        }
    }

    pub fn drift_check(&self, kind: &str) {
        self.drift_checks
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    pub fn drift_check_deferred(&self, kind: &str) {
        self.drift_checks_deferred
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    pub fn held_back(&self, kind: &str) {
        self.held_back
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Expiry of the token the operator runs on (its own SystemAccountToken).
    pub fn set_operator_token_expiry(&self, unix_seconds: f64) {
        self.operator_token_expiration.set(unix_seconds);
    }

    pub fn set_token_times(&self, namespace: &str, name: &str, expires: f64, renewal: f64) {
        let labels = TokenLabels {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        self.token_expiration.get_or_create(&labels).set(expires);
        self.token_renewal.get_or_create(&labels).set(renewal);
    }

    pub fn forget_token(&self, namespace: &str, name: &str) {
        let labels = TokenLabels {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        self.token_expiration.remove(&labels);
        self.token_renewal.remove(&labels);
    }
}

impl RequestObserver for Metrics {
    fn observe(&self, operation: &'static str, status: Option<u16>, _elapsed: Duration) {
        let code = status.unwrap_or(0);
        self.konnect_requests
            .get_or_create(&RequestLabels {
                operation: operation.to_string(),
                code: code.to_string(),
            })
            .inc();
        if code == 429 {
            self.konnect_rate_limited.inc();
        }
    }
}

/// Readiness: Konnect reachable, and the caches of the controllers this replica runs synced. A
/// standby runs none, so it is ready without being the leader (rolling updates complete; the
/// leader is reported by the `konnect_sa_leader` metric instead).
#[derive(Debug, Default)]
pub struct Health {
    controllers_started: AtomicBool,
    caches_synced: AtomicBool,
    konnect_ok: AtomicBool,
}

impl Health {
    /// The controllers start (their caches are not synced yet).
    pub fn set_controllers_started(&self) {
        self.controllers_started.store(true, Ordering::Relaxed);
    }
    pub fn set_caches_synced(&self, v: bool) {
        self.caches_synced.store(v, Ordering::Relaxed);
    }
    pub fn set_konnect_ok(&self, v: bool) {
        self.konnect_ok.store(v, Ordering::Relaxed);
    }
    pub fn is_ready(&self) -> bool {
        let controllers = !self.controllers_started.load(Ordering::Relaxed)
            || self.caches_synced.load(Ordering::Relaxed);
        controllers && self.konnect_ok.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct ServerState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// The HTTP routes of the metrics/health server.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz_handler))
        .with_state(ServerState { metrics, health })
}

async fn metrics_handler(State(s): State<ServerState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn readyz_handler(State(s): State<ServerState>) -> impl IntoResponse {
    if s.health.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Binds `addr` and serves until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "metrics and health server listening");
    axum::serve(listener, router(metrics, health))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_encode_with_their_documented_names() {
        let m = Metrics::new();
        m.observe("post-system-accounts", Some(429), Duration::ZERO);
        m.observe_reconcile(
            "SystemAccount",
            Duration::from_millis(5),
            Some("RateLimited"),
        );
        m.set_token_times("ns", "t", 2.0e9, 1.9e9);
        m.token_rotations
            .get_or_create(&ReasonLabels {
                reason: "Renewal".into(),
            })
            .inc();
        let text = m.encode();
        for needle in [
            "konnect_sa_konnect_requests_total{operation=\"post-system-accounts\",code=\"429\"} 1",
            "konnect_sa_konnect_rate_limited_total 1",
            "konnect_sa_reconciles_total{kind=\"SystemAccount\"} 1",
            "konnect_sa_reconcile_errors_total{kind=\"SystemAccount\",category=\"RateLimited\"} 1",
            "konnect_sa_token_expiration_timestamp_seconds{namespace=\"ns\",name=\"t\"} 2000000000",
            "konnect_sa_token_renewal_timestamp_seconds{namespace=\"ns\",name=\"t\"} 1900000000",
            "konnect_sa_token_rotations_total{reason=\"Renewal\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        m.forget_token("ns", "t");
        assert!(!m.encode().contains("name=\"t\""));
    }

    #[test]
    fn ready_needs_konnect_and_the_caches_of_running_controllers() {
        let h = Health::default();
        assert!(!h.is_ready(), "Konnect not checked yet");
        h.set_konnect_ok(true);
        assert!(h.is_ready(), "a standby runs no controllers: ready");
        h.set_controllers_started();
        assert!(!h.is_ready(), "controllers started, caches not synced");
        h.set_caches_synced(true);
        assert!(h.is_ready());
        h.set_konnect_ok(false);
        assert!(!h.is_ready());
    }
}
