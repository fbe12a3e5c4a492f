//! The Konnect simulator (`konnect-sa-operator sim`): the Identity v3 paths the operator uses (and the v2
//! system-accounts paths of the Konnect docs' examples), in memory, with Bearer auth, the spec's 404/409
//! rules, pagination, filters, problem+json errors and fault injection.
//!
//! Authorisation: the admin token and personal tokens (`kpat_`) may do everything; a `spat_` may
//! call the identity endpoints only when its account holds the Identity Admin role (directly, or
//! as a member of the Organization Admin team), else 403, like Konnect. Not modelled: other roles'
//! permissions, team role assignments, users. `.ci/sim-conformance.py` holds it to the official spec.
//!
//! Admin endpoints (admin token only, never faulted): `GET|PUT /_sim/faults`, `GET /_sim/state`,
//! `GET /_sim/counts`, `POST /_sim/counts/reset`, `POST /_sim/reset`, `POST /_sim/teams`,
//! `POST /_sim/system-accounts`, `POST /_sim/system-accounts/{id}/access-tokens/{id}/expire`,
//! `POST /_sim/personal-access-tokens` (`{"name"}`: a person's `kpat_`, value in the reply),
//! `DELETE /_sim/personal-access-tokens/{id}`.
mod admin;
mod auth;
mod conn;
pub mod faults;
mod handlers;
mod labels;
mod pipeline;
pub mod problem;
pub mod query;
mod state;
pub mod stats;
pub mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use k8s_openapi::jiff::Timestamp;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use faults::Faults;
pub use handlers::OPERATIONS;
pub use stats::{Counts, JournalEntry, MinuteCount};
pub use store::{
    AccountState, Membership, SeedAccount, SeedData, SeedTeam, StateDump, TeamUpdate, TokenInfo,
};

use crate::konnect::models::{AssignedRole, RoleTuple, SystemAccount, Team, TokenValue};
use conn::{ConnKill, SimListener};
use problem::ApiError;
use state::{Shared, lock};

fn parse_token(s: &str) -> Result<TokenValue, String> {
    if s.trim().is_empty() {
        return Err("the admin token must not be empty".into());
    }
    Ok(TokenValue::new(s.trim()))
}

/// Command-line flags of `konnect-sa-operator sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Bearer token accepted as the organisation admin (e.g. a `kpat_...`).
    #[arg(long, env = "KONNECT_SIM_ADMIN_TOKEN", value_parser = parse_token, hide_env_values = true)]
    pub admin_token: TokenValue,
    /// YAML file with teams and pre-existing system accounts (see `SeedData`).
    #[arg(long)]
    pub seed_file: Option<PathBuf>,
    /// Seed of the random number generator (ids, token values, faults); random when absent.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Probability (0..1) of a 429 with Retry-After.
    #[arg(long = "fault-429", default_value_t = 0.0)]
    pub fault_429: f64,
    /// Probability (0..1) of a 503 before the operation runs.
    #[arg(long = "fault-5xx", default_value_t = 0.0)]
    pub fault_5xx: f64,
    /// Probability (0..1) that an operation commits but its response is lost (502, 503 or dropped connection).
    #[arg(long = "fault-lost", default_value_t = 0.0)]
    pub fault_lost: f64,
    /// Retry-After seconds of injected 429s.
    #[arg(long, default_value_t = 1)]
    pub retry_after_secs: u64,
    /// Latency added to every API request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Requests admitted per minute; beyond it 429 until the next minute.
    #[arg(long)]
    pub requests_per_minute: Option<u64>,
}

/// In-process configuration (tests, benchmarks).
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub admin_token: TokenValue,
    pub faults: Faults,
    pub seed: Option<u64>,
    /// Record every API request with its bodies (memory only; read with `RunningSim::journal`).
    pub journal: bool,
    pub seed_data: SeedData,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            admin_token: TokenValue::new("kpat_simulatoradmintoken0000000000000000000000000000"),
            faults: Faults::default(),
            seed: None,
            journal: false,
            seed_data: SeedData::default(),
        }
    }
}

impl SimConfig {
    pub fn from_args(args: &SimArgs) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let seed_data = match &args.seed_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read seed file {}: {e}", path.display()))?;
                serde_yaml::from_str(&text)
                    .map_err(|e| format!("invalid seed file {}: {e}", path.display()))?
            }
            None => SeedData::default(),
        };
        let faults = Faults {
            rate_429: args.fault_429,
            rate_5xx: args.fault_5xx,
            rate_lost: args.fault_lost,
            retry_after_secs: args.retry_after_secs,
            latency_ms: args.latency_ms,
            requests_per_minute: args.requests_per_minute,
        };
        faults.validate()?;
        Ok(Self {
            admin_token: args.admin_token.clone(),
            faults,
            seed: args.seed,
            journal: false,
            seed_data,
        })
    }
}

pub struct Simulator;

impl Simulator {
    /// Starts on 127.0.0.1 with a free port.
    pub async fn start(config: SimConfig) -> std::io::Result<RunningSim> {
        Self::start_on(config, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(config: SimConfig, addr: SocketAddr) -> std::io::Result<RunningSim> {
        let now = Timestamp::now();
        let mut store = store::Store::new(config.seed, now);
        store.seed(now, &config.seed_data).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("invalid seed data: {}", e.detail),
            )
        })?;
        let shared = Arc::new(Shared {
            admin_token: config.admin_token,
            store: Mutex::new(store),
            faults: Mutex::new(faults::FaultEngine::new(config.faults, config.seed)),
            stats: Mutex::new(stats::Stats::default()),
            journal: config.journal.then(|| Mutex::new(Vec::new())),
            seed: config.seed,
            seed_data: config.seed_data,
        });
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = router(shared.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(
                SimListener(listener),
                app.into_make_service_with_connect_info::<ConnKill>(),
            )
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
        });
        Ok(RunningSim {
            addr,
            shared,
            stop: Some(tx),
            task: Some(task),
        })
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let api = handlers::api_router()
        .route_layer(from_fn_with_state(shared.clone(), auth::require_token))
        .route_layer(from_fn_with_state(shared.clone(), pipeline::api_pipeline));
    let admin =
        admin::admin_router().route_layer(from_fn_with_state(shared.clone(), auth::require_admin));
    api.merge(admin)
        .fallback(|method: axum::http::Method, uri: axum::http::Uri| async move {
            tracing::info!(method = %method, path = %uri.path(), status = 404u16, "unknown path");
            ApiError::not_found("Not found").into_response()
        })
        .with_state(shared)
}

/// A simulator serving in the background. Dropping it stops the server.
pub struct RunningSim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl std::fmt::Debug for RunningSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningSim")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl RunningSim {
    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn admin_token(&self) -> TokenValue {
        self.shared.admin_token.clone()
    }
    pub fn faults(&self) -> Faults {
        self.shared.faults().faults().clone()
    }
    pub fn set_faults(&self, faults: Faults) {
        self.shared.faults().set(faults);
    }
    pub fn state(&self) -> StateDump {
        self.shared.store().dump(Timestamp::now())
    }
    /// Requests by operationId.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.shared.stats().snapshot().operations
    }
    /// Counts with the per-minute histogram.
    pub fn counts_detail(&self) -> Counts {
        self.shared.stats().snapshot()
    }
    pub fn reset_counts(&self) {
        self.shared.reset_counts();
    }
    /// Back to the seed data; counts and journal cleared.
    pub fn reset(&self) {
        let _ = self.shared.reset();
    }
    /// The unexpired tokens of an account (empty when the account does not exist).
    pub fn live_tokens(&self, account_id: &str) -> Vec<TokenInfo> {
        self.state()
            .accounts
            .into_iter()
            .find(|a| a.account.id == account_id)
            .map(|a| a.tokens.into_iter().filter(|t| t.live).collect())
            .unwrap_or_default()
    }
    /// Every API request so far (empty unless `SimConfig::journal`).
    pub fn journal(&self) -> Vec<JournalEntry> {
        self.shared
            .journal
            .as_ref()
            .map(|j| lock(j).clone())
            .unwrap_or_default()
    }
    pub fn seed_team(&self, name: &str) -> Team {
        self.shared
            .store()
            .create_team(Timestamp::now(), name, None, Default::default())
            .unwrap_or_else(|e| panic!("seed_team({name}): {}", e.detail))
    }
    /// Panics on a duplicate name (a test setup error).
    pub fn seed_account(
        &self,
        name: &str,
        description: &str,
        konnect_managed: bool,
    ) -> SystemAccount {
        self.shared
            .store()
            .create_account(Timestamp::now(), name, description, konnect_managed)
            .unwrap_or_else(|e| panic!("seed_account({name}): {}", e.detail))
    }
    /// Assigns a role to an account directly, as a person (or another cluster) would. Panics on a
    /// duplicate or an unknown account (a test setup error).
    pub fn seed_assignment(&self, account_id: &str, role: RoleTuple) -> AssignedRole {
        self.shared
            .store()
            .assign_role(account_id, role)
            .unwrap_or_else(|e| panic!("seed_assignment({account_id}): {}", e.detail))
    }
    /// Adds an account to a team directly, as a person would. Panics on an unknown team or account.
    pub fn seed_membership(&self, team_id: &str, account_id: &str) {
        self.shared
            .store()
            .add_member(team_id, account_id)
            .unwrap_or_else(|e| panic!("seed_membership({team_id}, {account_id}): {}", e.detail))
    }
    /// A person's `kpat_` with full access: (id, value).
    pub fn create_personal_token(&self, name: &str) -> (String, TokenValue) {
        let created = self.shared.store().create_personal_token(name);
        (created.id, created.token)
    }
    /// Revokes a person's token; false when it does not exist.
    pub fn revoke_personal_token(&self, id: &str) -> bool {
        self.shared.store().revoke_personal_token(id).is_ok()
    }
    /// Makes a token expire now; false when it does not exist.
    pub fn expire_token_now(&self, account_id: &str, token_id: &str) -> bool {
        self.shared
            .store()
            .expire_token_now(Timestamp::now(), account_id, token_id)
            .is_ok()
    }
    /// Stops accepting, lets in-flight requests finish (at most 10 s).
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Runs the simulator until SIGINT/SIGTERM.
pub async fn run(args: SimArgs) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let config = SimConfig::from_args(&args)?;
    let sim = Simulator::start_on(config, args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    tracing::info!(url = %sim.base_url(), "Konnect simulator listening");
    shutdown_signal().await;
    tracing::info!("shutting down");
    sim.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
