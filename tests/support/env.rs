//! One test world: the Kubernetes API stand-in (serving crds/), the Konnect simulator, and the
//! operator, either in-process (`start_operator`) or as the real binary (`spawn_operator`).
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use clap::Parser;
use konnect_sa_operator::konnect::TokenValue;
use konnect_sa_operator::run::RunArgs;
use konnect_sa_operator::sim::{Faults, RunningSim, SimConfig, Simulator};
use kube::Resource;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

use base64::Engine;

use super::FakeKube;
use super::leak;
use super::operator::{InProcess, check_operators};
use super::rbac::{self, Grant};

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
    operator: Option<InProcess>,
    /// The `/metrics` of the operator `start_operator` started.
    metrics: Option<super::metrics::Scrape>,
    pub dir: tempfile::TempDir,
    /// What each operator started here may do (`rbac.rs`), checked against its requests when the env ends.
    grants: Mutex<Vec<Grant>>,
    /// Log files of the operator binaries started here, read by the leak check.
    log_files: Mutex<Vec<PathBuf>>,
}

pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl TestEnv {
    pub async fn start() -> Self {
        Self::start_with(SimConfig::default()).await
    }

    /// The simulator's journal is always on: the leak check reads the token values it issued there.
    pub async fn start_with(mut sim_config: SimConfig) -> Self {
        sim_config.journal = true;
        let _ = rustls::crypto::ring::default_provider().install_default();
        super::logs::capture();
        let kube = FakeKube::start(&crate_dir().join("crds")).await;
        // The test namespace, and the operator's own (its Leases) as an install creates it.
        kube.create_namespace(NS);
        kube.create_namespace("konnect-sa-system");
        let sim = Simulator::start(sim_config)
            .await
            .expect("simulator starts");
        Self {
            kube,
            sim,
            operator: None,
            metrics: None,
            dir: tempfile::tempdir().unwrap(),
            grants: Mutex::new(Vec::new()),
            log_files: Mutex::new(Vec::new()),
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
        let mut extra = extra.to_vec();
        let addr = match extra.iter().position(|f| *f == "--metrics-addr") {
            Some(i) => extra[i + 1].to_string(),
            None => format!("127.0.0.1:{}", free_port()),
        };
        if !extra.contains(&"--metrics-addr") {
            extra.extend(["--metrics-addr", &addr]);
        }
        let args = self.run_args(&extra);
        self.metrics = Some(super::metrics::Scrape::at(&addr));
        self.operator = Some(self.spawn_in_process(token, args));
    }

    /// An operator in this process with `args`, under an identity of its own whose requests the end of the
    /// env checks against the RBAC rules (several may run at once).
    pub fn spawn_in_process(&self, token: TokenValue, args: RunArgs) -> InProcess {
        let client = self.kube.client_as(&self.grant(&args));
        InProcess::spawn(client, token, args)
    }

    /// Registers a new operator identity with the permissions the manifests give for `args`; returns its name.
    fn grant(&self, args: &RunArgs) -> String {
        let mut grants = self.grants.lock().unwrap();
        let user = format!("operator-{}", grants.len() + 1);
        grants.push(Grant::for_args(&user, args));
        user
    }

    /// The `/metrics` of the operator `start_operator` started.
    pub fn metrics(&self) -> &super::metrics::Scrape {
        self.metrics.as_ref().expect("start_operator first")
    }

    pub async fn stop_operator(&mut self) {
        if let Some(op) = self.operator.take() {
            op.stop().await;
        }
    }

    /// Panics listing every request an operator of this env made that its RBAC rules do not allow.
    pub fn assert_requests_allowed(&self) {
        let grants = self.grants.lock().unwrap().clone();
        let denied = rbac::unauthorised(&grants, &self.kube.requests());
        assert!(
            denied.is_empty(),
            "requests the operator's RBAC (src/api/rbac.rs) does not allow, the real API server would answer \
             403:\n{}",
            denied.join("\n")
        );
    }

    /// Every token value of this world: issued by the simulator, its admin token, and any held in a Secret.
    pub fn token_values(&self) -> Vec<String> {
        let mut values = leak::issued_values(&self.sim);
        for secret in self.kube.list("", "v1", "secrets", None) {
            for v in secret["data"]
                .as_object()
                .into_iter()
                .flat_map(|d| d.values())
            {
                let decoded = v
                    .as_str()
                    .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                    .and_then(|b| String::from_utf8(b).ok());
                if let Some(d) =
                    decoded.filter(|d| d.starts_with("spat_") || d.starts_with("kpat_"))
                {
                    values.push(d.trim().to_string());
                }
            }
        }
        values.sort();
        values.dedup();
        values
    }

    /// Panics if a token value shows in a captured log (the in-process operators', text and JSON at trace
    /// level; the binaries' log files), an Event, or any object other than a Secret's data.
    pub fn assert_no_token_leak(&self) {
        let leaks = leak::Detector::new(&self.token_values());
        leaks.assert_clean(&super::logs::captured(), "the in-process log");
        for path in self.log_files.lock().unwrap().iter() {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            leaks.assert_clean(&text, &format!("the log {}", path.display()));
        }
        let kinds = [
            ("", "v1", "secrets"),
            ("", "v1", "configmaps"),
            ("", "v1", "events"),
            ("events.k8s.io", "v1", "events"),
            ("konnect-sa.dev", "v1alpha1", "systemaccounts"),
            ("konnect-sa.dev", "v1alpha1", "systemaccounttokens"),
            ("konnect-sa.dev", "v1alpha1", "rolebindings"),
            ("apps", "v1", "deployments"),
        ];
        for (group, version, plural) in kinds {
            for obj in self.kube.list(group, version, plural, None) {
                let shown = leak::visible(&obj).to_string();
                leaks.assert_clean(&shown, &format!("a {plural} object"));
            }
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
        let args = self.run_args(extra);
        let user = self.grant(&args);
        let kubeconfig = self.dir.path().join(format!("kubeconfig-{user}"));
        self.kube
            .write_kubeconfig_as(&kubeconfig, Some(&user))
            .unwrap();
        // A kubeconfig of the caller's (e.g. through a proxy) gets this identity's token too.
        if let Some((_, own)) = envs.iter().find(|(k, _)| *k == "KUBECONFIG") {
            let text = std::fs::read_to_string(own).expect("the caller's kubeconfig");
            let text = text.replace("  user: {}\n", &format!("  user: {{token: {user}}}\n"));
            std::fs::write(own, text).unwrap();
        }
        self.log_files.lock().unwrap().push(log.to_path_buf());
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
            // Trace for the operator, debug for its client libraries: the leak check reads this log (the
            // in-process capture covers kube and reqwest at trace; here they would only slow the binary).
            .env(
                "RUST_LOG",
                "info,konnect_sa_operator=trace,kube=debug,kube_client=debug,kube_runtime=debug,reqwest=debug",
            )
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

impl Drop for TestEnv {
    /// The end of every test world: its operators made only requests their RBAC allows, showed no token
    /// value anywhere, and did not fail unnoticed.
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        if let Some(op) = &self.operator {
            op.fate().raise();
        }
        self.assert_requests_allowed();
        self.assert_no_token_leak();
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
        check_operators();
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
        check_operators();
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
