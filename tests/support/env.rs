//! One test world: the Kubernetes API stand-in (serving crds/), the Konnect simulator, and the
//! operator, either in-process (`start_operator`) or as the real binary (`spawn_operator`).
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use konnect_sa_operator::konnect::TokenValue;
use konnect_sa_operator::run::RunArgs;
use konnect_sa_operator::sim::{Faults, RunningSim, SimConfig, Simulator};
use kube::Resource;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::FakeKube;

/// A later flag overrides an earlier one: tests pass e.g. `--resync-period` over the default here.
#[derive(Parser)]
#[command(args_override_self = true)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

pub const NS: &str = "platform";

pub struct TestEnv {
    pub kube: FakeKube,
    pub sim: RunningSim,
    operator: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
    pub dir: tempfile::TempDir,
}

pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl TestEnv {
    pub async fn start() -> Self {
        Self::start_with(SimConfig::default()).await
    }

    pub async fn start_with(sim_config: SimConfig) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kube = FakeKube::start(&crate_dir().join("crds")).await;
        let sim = Simulator::start(sim_config)
            .await
            .expect("simulator starts");
        Self {
            kube,
            sim,
            operator: None,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn client(&self) -> kube::Client {
        self.kube.client()
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        Api::namespaced(self.client(), NS)
    }

    /// Operator flags for this world, plus `extra` (e.g. `["--resync-period", "2s"]`).
    pub fn run_args(&self, extra: &[&str]) -> RunArgs {
        let mut argv = vec!["run".to_string()];
        argv.extend(default_flags(&self.sim.base_url(), extra));
        argv.extend(extra.iter().map(|s| s.to_string()));
        Cli::try_parse_from(argv).expect("valid flags").run
    }

    /// Starts the operator in this process.
    pub async fn start_operator(&mut self, extra: &[&str]) {
        self.start_operator_with_token(extra, self.sim.admin_token())
            .await;
    }

    pub async fn start_operator_with_token(&mut self, extra: &[&str], token: TokenValue) {
        let args = self.run_args(extra);
        let client = self.client();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.await;
            };
            if let Err(e) = konnect_sa_operator::run::run_with(client, token, args, shutdown).await
            {
                panic!("operator stopped with an error: {e}");
            }
        });
        self.operator = Some((tx, handle));
    }

    pub async fn stop_operator(&mut self) {
        if let Some((tx, handle)) = self.operator.take() {
            let _ = tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
        }
    }

    /// The real binary against this world (KUBECONFIG, KONNECT_TOKEN); stderr/stdout go to `log`.
    pub fn spawn_operator(&self, extra: &[&str], log: &Path) -> tokio::process::Child {
        self.spawn_operator_env(extra, &[], log)
    }

    /// `spawn_operator` with extra environment variables (e.g. `POD_NAME` for its Lease identity).
    pub fn spawn_operator_env(
        &self,
        extra: &[&str],
        envs: &[(&str, &str)],
        log: &Path,
    ) -> tokio::process::Child {
        let kubeconfig = self.dir.path().join("kubeconfig");
        self.kube.write_kubeconfig(&kubeconfig).unwrap();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let err = out.try_clone().unwrap();
        tokio::process::Command::new(env!("CARGO_BIN_EXE_konnect-sa-operator"))
            .arg("run")
            .args(default_flags(&self.sim.base_url(), extra))
            .args(extra)
            .env("KUBECONFIG", &kubeconfig)
            .env("KONNECT_TOKEN", self.sim.admin_token().expose())
            .env("RUST_LOG", "info,konnect_sa_operator=debug")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("operator binary starts")
    }

    /// `kubectl apply` of YAML (one or more documents) into the test namespace.
    pub fn apply(&self, yaml: &str) {
        self.kube
            .apply_manifest(yaml, NS)
            .expect("manifest applies");
    }

    pub fn set_faults(&self, f: Faults) {
        self.sim.set_faults(f);
    }
}

/// Flags every test operator gets unless `extra` sets them itself.
fn default_flags(konnect_url: &str, extra: &[&str]) -> Vec<String> {
    let mut flags = Vec::new();
    for (flag, value) in [
        ("--konnect-url", konnect_url),
        ("--metrics-addr", "127.0.0.1:0"),
        ("--resync-period", "3s"),
    ] {
        if !extra.contains(&flag) {
            flags.extend([flag.to_string(), value.to_string()]);
        }
    }
    flags
}

/// Waits until `cond` holds for the named object (polling the API), returning the object.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    cond: impl Fn(&K) -> bool,
) -> K
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Ok(Some(obj)) = api.get_opt(name).await {
            if cond(&obj) {
                return obj;
            }
            last = Some(obj);
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {name}; last seen: {last:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Ready condition of an object as (status, reason, message).
pub fn ready_of(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Option<(String, String, String)> {
    conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Polls until `f` is true or the timeout passes.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deletes an object (the finalizer then runs in the operator).
pub async fn delete<K>(api: &Api<K>, name: &str)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.delete(name, &DeleteParams::default())
        .await
        .expect("delete accepted");
}

/// Merge-patches an object's metadata/spec like `kubectl patch --type merge`.
pub async fn merge_patch<K>(api: &Api<K>, name: &str, patch: serde_json::Value)
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch accepted");
}

/// A free local TCP port (for an operator's --metrics-addr).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The sum of the samples of Prometheus text lines that `keep` accepts.
pub fn metric_total(text: &str, keep: impl Fn(&str) -> bool) -> u64 {
    text.lines()
        .filter(|l| keep(l))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
