//! `konnect-sa-operator run`: the controller manager.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::api::SystemAccount;
use crate::controller::connections::Connections;
use crate::controller::context::ControllerConfig;
use crate::controller::{self, Runtime};
use crate::fence::{Fence, fenced_client};
use crate::konnect::{ClientConfig, KonnectError, TokenFile, TokenValue};
use crate::leader::{LeaderElector, LeaseConfig};
use crate::telemetry::{self, Health, LogFormat, Metrics};

/// Flags of `konnect-sa-operator run` (each with an environment variable).
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Konnect API base URL. Regional hosts (https://eu.api.konghq.com) map to the global host.
    #[arg(
        long,
        env = "KONNECT_URL",
        default_value = "https://global.api.konghq.com"
    )]
    pub konnect_url: String,
    /// File holding the Konnect token (kpat_/spat_) with the Identity Admin role. Alternative: KONNECT_TOKEN.
    /// Watched: a new value (a rotated Secret the kubelet swaps in) is used from the next request on.
    #[arg(long, env = "KONNECT_TOKEN_FILE")]
    pub konnect_token_file: Option<std::path::PathBuf>,
    /// The Secret the token file is mounted from, as namespace/name (or name, in the pod's namespace),
    /// when a SystemAccountToken of this operator writes it (self-managed identity): that token's
    /// previous value is revoked only once the operator runs on the new one.
    #[arg(long, env = "KONNECT_TOKEN_SECRET", default_value = "")]
    pub konnect_token_secret: String,
    /// Namespaces to watch, comma separated. Empty: all namespaces.
    #[arg(
        long,
        env = "WATCH_NAMESPACES",
        value_delimiter = ',',
        default_value = ""
    )]
    pub namespaces: Vec<String>,
    /// How often every object is compared with Konnect when nothing changes (Go duration; 10% jitter added).
    #[arg(long, env = "RESYNC_PERIOD", default_value = "5m", value_parser = parse_duration)]
    pub resync_period: Duration,
    /// How often `/readyz` checks Konnect again (`GET /v3/organizations/me`; Go duration).
    #[arg(long, env = "KONNECT_CHECK_PERIOD", default_value = "1m", value_parser = parse_duration)]
    pub konnect_check_period: Duration,
    /// The clock of token renewal, retention and leader election (no flag: real time; a test runs it ahead).
    #[arg(skip)]
    pub clock: crate::clock::Clock,
    /// Reconciles running at once per kind. Twice the Konnect concurrency by default: a reconcile
    /// spends part of its time on Kubernetes calls, and the spare ones keep Konnect's slots busy
    /// (Konnect calls stay capped by the Konnect concurrency).
    #[arg(long, env = "MAX_CONCURRENT_RECONCILES", default_value_t = 32)]
    pub max_concurrent_reconciles: u16,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Address of the /metrics, /healthz and /readyz server.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Run only while holding the leader Lease (for more than one replica).
    #[arg(long, env = "LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,
    /// Namespace of the leader Lease (default: the pod's namespace from POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE", default_value = "konnect-sa-system")]
    pub leader_election_namespace: String,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "LEADER_ELECTION_ID",
        default_value = "konnect-sa-operator"
    )]
    pub leader_election_id: String,
    /// Lease duration: a standby takes over this long after the leader stops renewing.
    #[arg(long, env = "LEADER_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub leader_lease_duration: Duration,
    /// Konnect requests per minute for background drift checks of unchanged objects (0: unlimited).
    /// Changes are never delayed by it; sweeps stretch instead.
    #[arg(long, env = "KONNECT_BUDGET", default_value_t = 300)]
    pub konnect_budget: u32,
    /// Konnect requests in flight at once, per Konnect connection.
    #[arg(long, env = "KONNECT_MAX_CONCURRENCY", default_value_t = 16)]
    pub konnect_max_concurrency: usize,
    /// Name of this cluster (a lowercase DNS label), put into the names the operator gives Konnect objects
    /// (token names, default account descriptions) so clusters sharing an organisation tell theirs apart.
    #[arg(long, env = "CLUSTER_NAME", default_value = "", value_parser = parse_cluster_name)]
    pub cluster_name: String,
}

fn parse_cluster_name(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let ok = s.is_empty()
        || (b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a lowercase DNS label (at most 63 letters, digits and '-', not starting or ending with '-')"
        ))
    }
}

/// `--konnect-token-secret` as (namespace, name); a bare name is in the pod's namespace.
fn own_token_secret(args: &RunArgs) -> Option<(String, String)> {
    let v = args.konnect_token_secret.trim();
    if v.is_empty() {
        return None;
    }
    Some(match v.split_once('/') {
        Some((ns, name)) => (ns.to_string(), name.to_string()),
        None => (args.leader_election_namespace.clone(), v.to_string()),
    })
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::api::duration::parse(s)
}

/// Why `run` stopped with an error (printed, exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "no Konnect token: pass --konnect-token-file (env KONNECT_TOKEN_FILE) or set KONNECT_TOKEN to a token \
         with the Identity Admin role"
    )]
    MissingToken,
    #[error("cannot read the Konnect token file {path}: {source}")]
    TokenFile {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "Konnect rejected the token at {url} ({source}); check the token and its Identity Admin role"
    )]
    TokenRejected { url: String, source: KonnectError },
    #[error("invalid Konnect URL: {0}")]
    KonnectConfig(KonnectError),
    #[error("cannot reach Kubernetes: {0}. Set KUBECONFIG or run in a cluster")]
    Kubeconfig(String),
    #[error(
        "the Kubernetes API refused to list SystemAccounts ({0}): are the CRDs installed (kubectl apply -k config/crd) and does the operator's RBAC allow it?"
    )]
    Kubernetes(kube::Error),
    #[error("metrics server: {0}")]
    Metrics(std::io::Error),
    #[error("lost the leader lease")]
    LostLease,
}

fn read_token(args: &RunArgs) -> Result<TokenValue, RunError> {
    if let Some(path) = &args.konnect_token_file {
        return crate::konnect::token_file::read(path)
            .map_err(|source| RunError::TokenFile {
                path: path.display().to_string(),
                source,
            })?
            .ok_or(RunError::MissingToken);
    }
    match std::env::var("KONNECT_TOKEN") {
        Ok(v) if !v.trim().is_empty() => Ok(TokenValue::new(v.trim())),
        _ => Err(RunError::MissingToken),
    }
}

/// Starts from the environment's kubeconfig.
pub async fn run(
    args: RunArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let token = read_token(&args)?;
    let kube = kube::Client::try_default()
        .await
        .map_err(|e| RunError::Kubeconfig(e.to_string()))?;
    run_with(kube, token, args, shutdown).await
}

/// Runs the operator against `kube` until `shutdown` resolves (tests call this in-process).
pub async fn run_with(
    kube: kube::Client,
    token: TokenValue,
    args: RunArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let elector = args.leader_elect.then(|| {
        let identity = std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("{}-{}", hostname(), uuid::Uuid::new_v4().simple()));
        Arc::new(LeaderElector::new(
            kube.clone(),
            LeaseConfig {
                clock: args.clock.clone(),
                ..LeaseConfig::new(
                    args.leader_election_namespace.clone(),
                    args.leader_election_id.clone(),
                    identity,
                    args.leader_lease_duration,
                )
            },
        ))
    });
    // With leader election every write the controllers make, to Kubernetes and to Konnect, passes
    // the fence: closed while standing by, and the moment the Lease can no longer be vouched for.
    let fence = elector.as_ref().map_or_else(Fence::always, |e| e.fence());
    let writer = match &elector {
        Some(_) => fenced_client(kube.clone(), fence.clone()),
        None => kube.clone(),
    };
    // With a token file, its current value wins over `token`, and it is watched from here on.
    let token_file = match &args.konnect_token_file {
        Some(path) => {
            let (file, current) =
                TokenFile::open(path.clone()).map_err(|source| RunError::TokenFile {
                    path: path.display().to_string(),
                    source,
                })?;
            Some((Arc::new(file), current))
        }
        None => None,
    };
    let token = token_file
        .as_ref()
        .and_then(|(_, t)| t.clone())
        .unwrap_or(token);
    let mut konnect = ClientConfig::new(args.konnect_url.clone(), token);
    if let Some((file, _)) = &token_file {
        konnect.token_source = Some(file.clone());
    }
    konnect.max_concurrency = args.konnect_max_concurrency;
    konnect.observer = Some(metrics.clone());
    if elector.is_some() {
        konnect.write_gate = Some(Arc::new(fence.clone()));
    }
    let connections =
        Arc::new(Connections::new(writer.clone(), konnect).map_err(RunError::KonnectConfig)?);

    // Fail fast on what no retry fixes: a rejected token, missing CRDs or RBAC.
    let default = connections.default_connection().client.clone();
    let konnect_ok = match default.me().await {
        Ok(org) => {
            tracing::info!(organization = %org.name, url = %default.base_url(), "Konnect token accepted");
            health.set_konnect_ok(true);
            true
        }
        Err(e) if e.is_auth() => {
            return Err(RunError::TokenRejected {
                url: default.base_url().to_string(),
                source: e,
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "Konnect not reachable yet; retrying in the background");
            false
        }
    };
    let probe: kube::Api<SystemAccount> = match args.namespaces.first().filter(|n| !n.is_empty()) {
        Some(ns) => kube::Api::namespaced(kube.clone(), ns),
        None => kube::Api::all(kube.clone()),
    };
    probe
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .map_err(RunError::Kubernetes)?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    };
    let server = tokio::spawn(telemetry::serve(
        args.metrics_addr,
        metrics.clone(),
        health.clone(),
        stopped(),
    ));
    let konnect_probe = tokio::spawn(probe_konnect(
        default.clone(),
        health.clone(),
        args.konnect_check_period,
        konnect_ok,
        stopped(),
    ));
    let token_watch =
        token_file.map(|(file, _)| tokio::spawn(file.watch(default.clone(), stopped())));

    let namespaces: Vec<String> = args
        .namespaces
        .iter()
        .filter(|n| !n.is_empty())
        .cloned()
        .collect();
    let rt = Runtime {
        kube: writer,
        connections,
        metrics: metrics.clone(),
        health,
        config: ControllerConfig {
            resync: args.resync_period,
            konnect_budget: args.konnect_budget,
            cluster_name: args.cluster_name.clone(),
            // A replaced leader's last writes are fenced within the lease duration; twice that
            // is left to an unfinished issue before it is healed (10 s for a single replica: a
            // killed process's requests still in flight).
            pending_settle: if args.leader_elect {
                args.leader_lease_duration * 2
            } else {
                std::time::Duration::from_secs(10)
            },
            own_token_secret: own_token_secret(&args),
            clock: args.clock.clone(),
            ..Default::default()
        },
        max_concurrent_reconciles: args.max_concurrent_reconciles.max(1),
        namespaces,
        instance: std::env::var("POD_NAME").ok(),
    };

    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down");
    };
    let result = match elector {
        None => {
            metrics.set_leader(true);
            controller::run(rt, shutdown).await;
            Ok(())
        }
        Some(elector) => lead(&elector, rt, &metrics, shutdown).await,
    };
    let _ = stop_tx.send(true);
    let _ = konnect_probe.await;
    if let Some(watch) = token_watch {
        let _ = watch.await;
    }
    if let Ok(Err(e)) = server.await {
        return Err(RunError::Metrics(e));
    }
    result
}

/// Stands by until this replica holds the Lease, then runs the controllers while it holds it.
/// Losing it cancels every reconcile at once (the fence has already refused their writes) and
/// ends the process with `LostLease` (the Deployment restarts it as a standby). A clean shutdown
/// lets in-flight reconciles finish (bounded by half a lease duration, renewing meanwhile), then
/// releases the Lease so a standby takes over at once.
async fn lead(
    elector: &LeaderElector,
    rt: Runtime,
    metrics: &Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    metrics.set_leader(false);
    let mut shutdown = Box::pin(shutdown);
    tokio::select! {
        _ = elector.acquire() => {}
        _ = &mut shutdown => return Ok(()),
    }
    metrics.set_leader(true);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controllers = controller::run(rt, async move {
        let _ = stop_rx.await;
    });
    tokio::pin!(controllers);
    let hold = elector.hold();
    tokio::pin!(hold);
    let lost = tokio::select! {
        lost = &mut hold => Some(lost),
        _ = &mut shutdown => None,
        _ = &mut controllers => None,
    };
    if let Some(why) = lost {
        metrics.set_leader(false);
        tracing::error!(reason = %why, "lost the leader lease: every write stopped; exiting");
        return Err(RunError::LostLease);
    }
    let _ = stop_tx.send(());
    let grace = elector.config().lease_duration / 2;
    tokio::select! {
        _ = &mut controllers => {}
        _ = &mut hold => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "reconciles still running at shutdown were cancelled");
        }
    }
    metrics.set_leader(false);
    elector.release().await;
    Ok(())
}

/// Keeps /readyz honest about Konnect: one cheap call per `period` (a minute by default).
async fn probe_konnect(
    client: crate::konnect::KonnectClient,
    health: Arc<Health>,
    period: Duration,
    mut ok: bool,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(next_konnect_probe(period, ok)) => {}
        }
        ok = client.me().await.is_ok();
        health.set_konnect_ok(ok);
    }
}

/// While Konnect is unreachable (e.g. the chart's simulator sidecar still starting), probe soon, so the pod turns
/// ready seconds after it answers rather than a period later.
fn next_konnect_probe(period: Duration, ok: bool) -> Duration {
    if ok {
        period
    } else {
        period.min(Duration::from_secs(5))
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "konnect-sa-operator".into())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_konnect_is_probed_again_sooner() {
        let minute = Duration::from_secs(60);
        assert_eq!(next_konnect_probe(minute, true), minute);
        assert_eq!(next_konnect_probe(minute, false), Duration::from_secs(5));
        let second = Duration::from_secs(1);
        assert_eq!(
            next_konnect_probe(second, false),
            second,
            "never later than the period"
        );
    }
}
