//! Scale benchmark: N SystemAccounts (one team each), N SystemAccountTokens and N RoleBindings
//! against the Kubernetes API stand-in and the Konnect simulator (with latency), with the real
//! operator binary. Prints a table and, last, one JSON line. Also times a new account and token from apply
//! to Ready on the idle operator and, every 5 s, during the drift window (the budget must not delay it).
//!
//!   cargo bench --bench scale -- --accounts 1000 --latency-ms 20 --concurrency 16 --resync 30
//!   cargo bench --bench scale -- --curve            (N = 100, 1000, 3000)
//!
//! No timing is asserted anywhere: these are measurements for the README.
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use konnect_sa_operator::sim::{Faults, SimConfig};
use serde_json::Value;
use serde_json::json;
use support::env::{free_port, metric_total};
use support::kube_api::RequestRecord;
use support::kube_api::cost::CostModel;
use support::kube_api::store::{EventType, WatchRecord};
use support::{NS, TestEnv};
use tokio::sync::broadcast;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// SystemAccounts (and as many tokens and bindings).
    #[arg(long, default_value_t = 1000)]
    accounts: usize,
    /// Latency the simulator adds to every Konnect call.
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    /// Konnect requests in flight at once (operator --konnect-max-concurrency; reconciles per kind: 2C).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Resync period in seconds (one drift sweep).
    #[arg(long, default_value_t = 30)]
    resync: u64,
    /// Drift sweeps to measure after convergence.
    #[arg(long, default_value_t = 3)]
    sweeps: u32,
    /// Background drift budget (requests per minute), passed as --konnect-budget when the operator has it.
    #[arg(long)]
    budget: Option<u64>,
    /// Run N = 100, 1000, 3000 and print how time and memory grow.
    #[arg(long)]
    curve: bool,
    /// Teams the accounts are spread over.
    #[arg(long, default_value_t = 10)]
    teams: usize,
    /// Kubernetes API stand-in: latency of every request (0: none). Defaults: the calibrated
    /// model of a real API server (tests/kube-standin/src/cost.rs).
    #[arg(long, default_value_t = 1.0)]
    kube_latency_ms: f64,
    /// Kubernetes API stand-in: writes committed per second, one at a time (0: no limit).
    #[arg(long, default_value_t = 300.0)]
    kube_writes_per_s: f64,
    /// Kubernetes API stand-in: APF seats (0: no limit, no 429s).
    #[arg(long, default_value_t = 245)]
    kube_seats: usize,
    // `cargo bench` passes --bench; accept and ignore it.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
struct Figures {
    n: usize,
    converge_s: f64,
    lower_bound_s: f64,
    ratio: f64,
    min_calls: u64,
    converge_calls: u64,
    /// Requests the operator sent to the Kubernetes API while converging.
    kube_requests: u64,
    /// Of those: stored writes (create, update, patch, delete), and gets and lists; per object (3N).
    kube_writes: u64,
    kube_reads: u64,
    kube_writes_per_object: f64,
    kube_reads_per_object: f64,
    /// Requests the stand-in answered 429 (API Priority and Fairness model).
    kube_429s: u64,
    /// Konnect bound (min calls x L / C) and Kubernetes bound (min writes / writes per second);
    /// `lower_bound_s` is the larger, `ratio` is against it.
    konnect_lower_bound_s: f64,
    kube_lower_bound_s: f64,
    min_kube_writes: u64,
    steady_calls_per_object_sweep: f64,
    /// Kubernetes writes to the N objects during the drift sweeps (0: quiet sweeps write nothing).
    steady_kube_writes: u64,
    max_calls_per_minute: u64,
    budget_per_minute: Option<u64>,
    rss_mib: f64,
    cpu_s: f64,
    /// The operator's CPU over the drift window (sweeps, the probes' new objects and the time
    /// between), in % of one core: an upper bound of its idle CPU between sweeps.
    steady_cpu_pct: f64,
    /// The operator's CPU, in % of one core, over a window right after convergence in which no
    /// drift check ran (between sweeps: needs a resync period longer than convergence and the
    /// window); NaN when a check ran in it.
    idle_cpu_pct: f64,
    /// CPU of this process (the Kubernetes API stand-in and the simulator) over the whole run.
    harness_cpu_s: f64,
    binary_mib: f64,
    ready_s: f64,
    errors: u64,
    /// A new account, its token and a binding, from apply to all three Ready: on the idle operator
    /// (before the N objects; the median of five, the first apart: it pays one-time costs such as
    /// the first Konnect connection), and the median and worst of several during the drift window.
    new_object_idle_s: f64,
    new_object_first_s: f64,
    /// Its own lower bound: its critical-path Konnect calls x L + its minimum writes x write cost.
    new_object_idle_bound_s: f64,
    new_object_idle_ratio: f64,
    new_object_busy_median_s: f64,
    new_object_busy_max_s: f64,
}

fn proc_status(pid: u32, key: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse::<f64>().ok()
}

fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

async fn http_status(url: &str) -> Option<u16> {
    reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

async fn metric_sum(url: &str, name: &str) -> u64 {
    let Ok(resp) = reqwest::Client::new().get(url).send().await else {
        return 0;
    };
    metric_total(&resp.text().await.unwrap_or_default(), |l| {
        l.starts_with(name)
    })
}

/// Applies a new account, its token and a role binding `probe-{k}` and returns the seconds until
/// all three are Ready.
async fn new_object_latency(env: &TestEnv, k: usize) -> f64 {
    let t0 = Instant::now();
    env.apply(&format!(
        "apiVersion: konnect-sa.dev/v1alpha1\nkind: SystemAccount\nmetadata: {{name: probe-{k}}}\nspec: {{}}\n---\n\
         apiVersion: konnect-sa.dev/v1alpha1\nkind: SystemAccountToken\nmetadata: {{name: probe-{k}-token}}\nspec:\n  systemAccountRef: {{name: probe-{k}}}\n---\n\
         apiVersion: konnect-sa.dev/v1alpha1\nkind: RoleBinding\nmetadata: {{name: probe-{k}-binding}}\nspec:\n  systemAccountRef: {{name: probe-{k}}}\n  roleName: Viewer\n  entityTypeName: Control Planes\n  entityRegion: eu\n"
    ));
    let objects = [
        ("systemaccounts", format!("probe-{k}")),
        ("systemaccounttokens", format!("probe-{k}-token")),
        ("rolebindings", format!("probe-{k}-binding")),
    ];
    loop {
        let ready = objects.iter().all(|(plural, name)| {
            env.kube
                .get("konnect-sa.dev", "v1alpha1", plural, NS, name)
                .is_some_and(|o| is_ready(&o))
        });
        if ready {
            return t0.elapsed().as_secs_f64();
        }
        if t0.elapsed() > Duration::from_secs(120) {
            return f64::NAN;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Kubernetes API traffic of the operator: writes (stored, not dry runs) and reads (get, list;
/// watches apart), and the writes by resource and verb.
struct KubeTraffic {
    writes: u64,
    reads: u64,
    writes_by: std::collections::BTreeMap<String, u64>,
}

fn kube_traffic(requests: &[RequestRecord]) -> KubeTraffic {
    let mut writes_by = std::collections::BTreeMap::new();
    for r in requests.iter().filter(|r| r.is_write()) {
        let what = match &r.subresource {
            Some(sub) => format!("{}/{sub} {}", r.plural, r.verb),
            None => format!("{} {}", r.plural, r.verb),
        };
        *writes_by.entry(what).or_insert(0) += 1;
    }
    KubeTraffic {
        writes: requests.iter().filter(|r| r.is_write()).count() as u64,
        reads: requests.iter().filter(|r| r.is_read()).count() as u64,
        writes_by,
    }
}

/// The fewest Kubernetes writes one account + token + binding converge with, by this design
/// (README "Kubernetes API traffic"): the account's finalizer with the write-ahead marker of its
/// create (one patch), its Ready status and its Created Event (3); the token's finalizer with the
/// write-ahead marker of its first issue (one patch), its Secret, its Ready status and its Issued
/// Event (4); the binding's finalizer, its Ready status and its Assigned Event (3).
const MIN_KUBE_WRITES_PER_TRIPLE: u64 = 10;

/// The window after convergence in which the idle CPU is measured (`idle_cpu_pct`; at most half
/// the resync period).
const IDLE_WINDOW: Duration = Duration::from_secs(10);

/// New objects timed on the idle operator after the first (their median is reported).
const IDLE_PROBES: usize = 5;

/// Konnect calls on the critical path of one account + token + binding: the name check and the
/// create of the account, then the token's create and the role assignment side by side.
const MIN_CALLS_ONE_TRIPLE: u64 = 3;

/// Ready=True for the object's current generation.
fn is_ready(o: &Value) -> bool {
    let generation = o["metadata"]["generation"].as_i64();
    o["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter().any(|c| {
            c["type"] == "Ready"
                && c["status"] == "True"
                && c["observedGeneration"].as_i64() == generation
        })
    })
}

/// Ready objects of the workload (the `probe-` objects of the latency probes not counted).
fn ready_count(env: &TestEnv, plural: &str) -> usize {
    env.kube
        .count("konnect-sa.dev", "v1alpha1", plural, Some(NS), |o| {
            is_ready(o) && !is_probe(o)
        })
}

fn is_probe(o: &Value) -> bool {
    o["metadata"]["name"]
        .as_str()
        .is_some_and(|n| n.starts_with("probe-"))
}

fn all_ready(env: &TestEnv) -> usize {
    ["systemaccounts", "systemaccounttokens", "rolebindings"]
        .iter()
        .map(|p| ready_count(env, p))
        .sum()
}

/// Follows the stand-in's change feed and counts the custom resources that are Ready, so the
/// harness never scans the store (under its lock) while the operator works against it.
fn track_ready(env: &TestEnv) -> Arc<AtomicUsize> {
    let mut changes = env.kube.changes();
    let count = Arc::new(AtomicUsize::new(0));
    let out = count.clone();
    tokio::spawn(async move {
        let mut ready = HashSet::new();
        loop {
            let record = match changes.recv().await {
                Ok(r) => r,
                // Only a hint: the final count is always a scan.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let WatchRecord::Change { event, object, .. } = &*record else {
                continue;
            };
            if !object["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("konnect-sa.dev/"))
                || is_probe(object)
            {
                continue;
            }
            let key = (
                object["kind"].as_str().unwrap_or_default().to_string(),
                object["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
            if *event != EventType::Deleted && is_ready(object) {
                ready.insert(key);
            } else {
                ready.remove(&key);
            }
            out.store(ready.len(), Ordering::Relaxed);
        }
    });
    count
}

async fn run_once(args: &Args) -> Figures {
    let n = args.accounts;
    let env = TestEnv::start_with(SimConfig {
        faults: Faults {
            latency_ms: args.latency_ms,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let cost = CostModel {
        latency: Duration::from_secs_f64(args.kube_latency_ms / 1000.0),
        writes_per_second: args.kube_writes_per_s,
        seats: args.kube_seats,
        ..CostModel::calibrated()
    };
    env.kube.set_cost(cost.clone());
    let teams: Vec<_> = (0..args.teams)
        .map(|i| env.sim.seed_team(&format!("team-{i}")))
        .collect();
    let port = free_port();
    let log = env.dir.path().join("operator.log");
    let conc = args.concurrency.to_string();
    // Twice as many reconciles per kind as Konnect slots, as the operator's defaults (16, 32).
    let rec = (2 * args.concurrency).to_string();
    let resync = format!("{}s", args.resync);
    let addr = format!("127.0.0.1:{port}");
    let budget = args.budget.map(|b| b.to_string());
    let mut flags: Vec<&str> = vec![
        "--metrics-addr",
        &addr,
        "--konnect-max-concurrency",
        &conc,
        "--max-concurrent-reconciles",
        &rec,
        "--resync-period",
        &resync,
        "--log-format",
        "json",
    ];
    if let Some(b) = &budget {
        flags.extend(["--konnect-budget", b.as_str()]);
    }
    let started = Instant::now();
    let mut child = env.spawn_operator_env(&flags, &[("RUST_LOG", "info")], &log);
    let pid = child.id().expect("operator pid");
    let readyz = format!("http://{addr}/readyz");
    let metrics = format!("http://{addr}/metrics");
    let ready_s = loop {
        let code = http_status(&readyz).await;
        if code == Some(200) {
            break started.elapsed().as_secs_f64();
        }
        if started.elapsed() > Duration::from_secs(30) {
            let out = std::fs::read_to_string(&log).unwrap_or_default();
            panic!(
                "operator not ready after 30 s (readyz: {code:?}); kube requests {:?}; log:\n{out}",
                env.kube.request_counts()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // A new object on the idle operator (its own objects are not counted below).
    env.sim.reset_counts();
    env.kube.reset_request_counts();
    let new_object_first_s = new_object_latency(&env, 0).await;
    let mut idle = Vec::new();
    for k in 1..=IDLE_PROBES {
        tokio::time::sleep(Duration::from_millis(500)).await;
        idle.push(new_object_latency(&env, 1000 + k).await);
    }
    idle.sort_by(|a, b| a.total_cmp(b));
    let new_object_idle_s = idle[idle.len() / 2];
    let new_object_idle_bound_s = MIN_CALLS_ONE_TRIPLE as f64 * args.latency_ms as f64 / 1000.0
        + MIN_KUBE_WRITES_PER_TRIPLE as f64 * cost.write_cost().as_secs_f64();
    {
        let probe = kube_traffic(&env.kube.requests());
        println!(
            "idle probes (first, then {IDLE_PROBES}): {} Kubernetes writes, {} reads, {} Konnect calls",
            probe.writes,
            probe.reads,
            env.sim.counts().values().sum::<u64>()
        );
        for (what, c) in &probe.writes_by {
            println!("  {what:<55} {c:>8}");
        }
    }
    env.sim.reset_counts();
    env.kube.reset_request_counts();

    let tracked = track_ready(&env);
    // Apply everything at once, as a GitOps sync would.
    let t0 = Instant::now();
    for i in 0..n {
        let team = &teams[i % teams.len()].name;
        env.apply(&format!(
            "apiVersion: konnect-sa.dev/v1alpha1\nkind: SystemAccount\nmetadata: {{name: sa-{i}}}\nspec:\n  teams: [{{name: {team}}}]\n---\n\
             apiVersion: konnect-sa.dev/v1alpha1\nkind: SystemAccountToken\nmetadata: {{name: tok-{i}}}\nspec:\n  systemAccountRef: {{name: sa-{i}}}\n---\n\
             apiVersion: konnect-sa.dev/v1alpha1\nkind: RoleBinding\nmetadata: {{name: rb-{i}}}\nspec:\n  systemAccountRef: {{name: sa-{i}}}\n  roleName: Viewer\n  entityTypeName: Control Planes\n  entityRegion: eu\n"
        ));
    }
    let deadline = Duration::from_secs(120 + (n as u64) / 2);
    let converge_s = loop {
        // The feed says when; a scan confirms.
        let done = if tracked.load(Ordering::Relaxed) >= 3 * n {
            all_ready(&env)
        } else {
            0
        };
        if done >= 3 * n {
            break t0.elapsed().as_secs_f64();
        }
        if t0.elapsed() > deadline {
            let done = all_ready(&env);
            eprintln!("not converged after {deadline:?}: {done}/{} Ready", 3 * n);
            for plural in ["systemaccounts", "systemaccounttokens", "rolebindings"] {
                for o in env
                    .kube
                    .list("konnect-sa.dev", "v1alpha1", plural, Some(NS))
                    .iter()
                    .take(3 * n)
                {
                    let conds = &o["status"]["conditions"];
                    let ready = conds
                        .as_array()
                        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned());
                    if ready.as_ref().is_none_or(|c| c["status"] != "True") {
                        eprintln!("  {plural}/{}: {}", o["metadata"]["name"], conds);
                    }
                }
            }
            break f64::NAN;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let converge_counts = env.sim.counts();
    let converge_calls: u64 = converge_counts.values().sum();
    let requests = env.kube.requests();
    let kube_requests = requests.len() as u64;
    let traffic = kube_traffic(&requests);
    drop(requests);
    let kube_429s = env.kube.rejected_requests();
    // The work itself: check each account name is free (the adoption rule needs it), create the
    // account, add it to its team, issue its token, assign its role; resolve each team and read
    // the roles reference once.
    let min_calls = 5 * n as u64 + args.teams as u64 + 1;
    let konnect_lower_bound_s =
        min_calls as f64 * args.latency_ms as f64 / 1000.0 / args.concurrency as f64;
    // Writes are committed one at a time: their count times the cost of one is a floor too.
    let min_kube_writes = MIN_KUBE_WRITES_PER_TRIPLE * n as u64;
    let kube_lower_bound_s = min_kube_writes as f64 * cost.write_cost().as_secs_f64();
    let lower_bound_s = konnect_lower_bound_s.max(kube_lower_bound_s);
    println!("\nKubernetes writes while converging, per account + token + binding (N = {n}):");
    for (what, c) in &traffic.writes_by {
        println!("  {what:<55} {:>8.2}", *c as f64 / n as f64);
    }

    // Steady state: a sweep checks every object once (one resync period, or longer when the
    // drift budget stretches it). Sweeps are counted from the operator's drift-check counters.
    let checks = |kind: &'static str| {
        let url = metrics.clone();
        async move {
            metric_sum(
                &url,
                &format!("konnect_sa_drift_checks_total{{kind=\"{kind}\"}}"),
            )
            .await
        }
    };
    // Idle between sweeps: the operator's CPU while nothing is due, shown by the drift-check
    // counters standing still over the window (read only at its ends: a scrape costs CPU too).
    let all_checks = || async {
        checks("SystemAccount").await
            + checks("SystemAccountToken").await
            + checks("RoleBinding").await
    };
    let idle_from = all_checks().await;
    let idle_cpu_start = cpu_seconds(pid);
    let idle_start = Instant::now();
    tokio::time::sleep(IDLE_WINDOW.min(Duration::from_secs(args.resync) / 2)).await;
    let idle_cpu = cpu_seconds(pid) - idle_cpu_start;
    let idle_elapsed = idle_start.elapsed().as_secs_f64();
    let idle_cpu_pct = if all_checks().await == idle_from {
        100.0 * idle_cpu / idle_elapsed
    } else {
        f64::NAN
    };
    let before = checks("SystemAccountToken").await + checks("RoleBinding").await;
    env.sim.reset_counts();
    env.kube.reset_request_counts();
    // New objects arrive during the drift window (every ~5 s), while sweeps run and the budget
    // puts checks off: each must not wait behind them.
    let window = Duration::from_secs(args.resync * u64::from(args.sweeps) + args.resync / 2);
    let window_start = Instant::now();
    let window_cpu_start = cpu_seconds(pid);
    let mut busy = Vec::new();
    while window_start.elapsed() + Duration::from_secs(5) < window {
        tokio::time::sleep(Duration::from_secs(5)).await;
        busy.push(new_object_latency(&env, busy.len() + 1).await);
    }
    tokio::time::sleep(window.saturating_sub(window_start.elapsed())).await;
    let steady_cpu_pct =
        100.0 * (cpu_seconds(pid) - window_cpu_start) / window_start.elapsed().as_secs_f64();
    busy.sort_by(|a, b| a.total_cmp(b));
    let new_object_busy_median_s = busy.get(busy.len() / 2).copied().unwrap_or(f64::NAN);
    let new_object_busy_max_s = busy.last().copied().unwrap_or(f64::NAN);
    let steady = env.sim.counts_detail();
    // Writes to the N objects (and their Secrets) during the sweeps; the probes' own are not
    // counted (a create names no object in its path, and a quiet sweep creates nothing).
    let steady_kube_writes = env
        .kube
        .requests()
        .iter()
        .filter(|r| r.is_write())
        .filter(|r| r.name.as_deref().is_some_and(|n| !n.starts_with("probe-")))
        .count() as u64;
    let after = checks("SystemAccountToken").await + checks("RoleBinding").await;
    let sweeps = (after - before) as f64 / (2.0 * n as f64);
    let steady_calls_per_object_sweep =
        steady.total as f64 / (3.0 * n as f64) / sweeps.max(f64::MIN_POSITIVE);
    println!(
        "steady state: {} Konnect calls over {sweeps:.2} sweeps",
        steady.total
    );
    for (op, c) in &steady.operations {
        println!("  {op:<55} {c:>8}");
    }
    let max_calls_per_minute = steady.per_minute.iter().map(|m| m.count).max().unwrap_or(0);

    let errors = metric_sum(&metrics, "konnect_sa_reconcile_errors_total").await
        + (3 * n - all_ready(&env)) as u64;
    if let Ok(resp) = reqwest::Client::new().get(&metrics).send().await {
        for l in resp
            .text()
            .await
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("konnect_sa_reconcile_errors_total"))
        {
            println!("  {l}");
        }
    }
    if errors > 0 {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        for l in log.lines().filter(|l| l.contains("WARN")).take(8) {
            println!("  {}", &l[..l.len().min(400)]);
        }
    }
    let rss_mib = proc_status(pid, "VmHWM:").unwrap_or(0.0) / 1024.0;
    let cpu_s = cpu_seconds(pid);
    let harness_cpu_s = cpu_seconds(std::process::id());
    let binary_mib = std::fs::metadata(env!("CARGO_BIN_EXE_konnect-sa-operator"))
        .map(|m| m.len() as f64 / 1048576.0)
        .unwrap_or(0.0);
    let _ = child.start_kill();
    let _ = child.wait().await;

    println!("\nKonnect calls during convergence (N = {n}):");
    for (op, c) in &converge_counts {
        println!("  {op:<55} {c:>8}");
    }
    Figures {
        n,
        converge_s,
        lower_bound_s,
        ratio: converge_s / lower_bound_s,
        min_calls,
        converge_calls,
        kube_requests,
        kube_writes: traffic.writes,
        kube_reads: traffic.reads,
        kube_writes_per_object: traffic.writes as f64 / (3 * n) as f64,
        kube_reads_per_object: traffic.reads as f64 / (3 * n) as f64,
        kube_429s,
        konnect_lower_bound_s,
        kube_lower_bound_s,
        min_kube_writes,
        steady_calls_per_object_sweep,
        steady_kube_writes,
        max_calls_per_minute,
        budget_per_minute: args.budget,
        rss_mib,
        cpu_s,
        steady_cpu_pct,
        idle_cpu_pct,
        harness_cpu_s,
        binary_mib,
        ready_s,
        errors,
        new_object_idle_s,
        new_object_first_s,
        new_object_idle_bound_s,
        new_object_idle_ratio: new_object_idle_s / new_object_idle_bound_s,
        new_object_busy_median_s,
        new_object_busy_max_s,
    }
}

fn table(f: &Figures) {
    println!("\n{:<44} {:>12}", "figure", "value");
    let rows: Vec<(&str, String)> = vec![
        ("objects (3N)", format!("{}", 3 * f.n)),
        ("convergence wall time (s)", format!("{:.2}", f.converge_s)),
        (
            "Konnect bound: min calls x L / C (s)",
            format!("{:.2}", f.konnect_lower_bound_s),
        ),
        (
            "Kubernetes bound: min writes x write cost (s)",
            format!("{:.2}", f.kube_lower_bound_s),
        ),
        ("ratio to the larger bound", format!("{:.2}", f.ratio)),
        (
            "Konnect calls to converge / minimum",
            format!("{} / {}", f.converge_calls, f.min_calls),
        ),
        (
            "Kubernetes API requests to converge",
            format!("{}", f.kube_requests),
        ),
        (
            "Kubernetes writes per object / minimum",
            format!(
                "{:.2} / {:.2}",
                f.kube_writes_per_object,
                f.min_kube_writes as f64 / (3 * f.n) as f64
            ),
        ),
        (
            "Kubernetes reads per object",
            format!("{:.2}", f.kube_reads_per_object),
        ),
        ("Kubernetes 429s (APF)", format!("{}", f.kube_429s)),
        (
            "steady calls per object per sweep",
            format!("{:.3}", f.steady_calls_per_object_sweep),
        ),
        (
            "Kubernetes writes during the sweeps",
            format!("{}", f.steady_kube_writes),
        ),
        (
            "max Konnect calls in one minute",
            format!("{}", f.max_calls_per_minute),
        ),
        ("peak RSS (MiB)", format!("{:.1}", f.rss_mib)),
        ("CPU seconds", format!("{:.2}", f.cpu_s)),
        (
            "CPU during the drift window (% of a core)",
            format!("{:.2}", f.steady_cpu_pct),
        ),
        (
            "CPU idle between sweeps (% of a core; NaN: a sweep ran)",
            format!("{:.2}", f.idle_cpu_pct),
        ),
        (
            "harness CPU seconds (stand-in + simulator)",
            format!("{:.2}", f.harness_cpu_s),
        ),
        ("binary size (MiB)", format!("{:.1}", f.binary_mib)),
        ("start to /readyz 200 (s)", format!("{:.3}", f.ready_s)),
        (
            "new account+token+binding to Ready, idle (s)",
            format!("{:.3}", f.new_object_idle_s),
        ),
        (
            "  the first one after start-up (s)",
            format!("{:.3}", f.new_object_first_s),
        ),
        (
            "  its lower bound (s) / ratio",
            format!(
                "{:.3} / {:.2}",
                f.new_object_idle_bound_s, f.new_object_idle_ratio
            ),
        ),
        (
            "new object to Ready during sweeps, median/max (s)",
            format!(
                "{:.3} / {:.3}",
                f.new_object_busy_median_s, f.new_object_busy_max_s
            ),
        ),
        ("errors", format!("{}", f.errors)),
    ];
    for (k, v) in rows {
        println!("{k:<44} {v:>12}");
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = Args::parse();
    // `cargo test --all-targets` runs this main too, without `--bench` and in a debug build: the smoke size
    // (what CI's benchmark step runs), not N = 1000.
    if !args.bench && std::env::args().len() == 1 {
        eprintln!(
            "not run by `cargo bench`: the N = 20 smoke (cargo bench --bench scale for the real run)"
        );
        args.accounts = 20;
        args.resync = 3;
        args.sweeps = 1;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if args.curve {
            let mut rows = Vec::new();
            for n in [100, 1000, 3000] {
                let f = run_once(&Args {
                    accounts: n,
                    ..args.clone()
                })
                .await;
                table(&f);
                rows.push(f);
            }
            // Growth against the previous row: linear means time and memory grow no faster than N.
            println!(
                "\ncurve:     N   converge_s  bound_s  ratio  writes/obj  rss_mib  xN  x_time  x_rss"
            );
            for (i, f) in rows.iter().enumerate() {
                let prev = i.checked_sub(1).map(|p| &rows[p]);
                let grow =
                    |a: f64, b: f64| prev.map_or("-".to_string(), |_| format!("{:.1}", a / b));
                let p = prev.unwrap_or(f);
                println!(
                    "      {:>6} {:>11.2} {:>8.2} {:>6.2} {:>11.2} {:>8.1} {:>3} {:>7} {:>6}",
                    f.n,
                    f.converge_s,
                    f.lower_bound_s,
                    f.ratio,
                    f.kube_writes_per_object,
                    f.rss_mib,
                    grow(f.n as f64, p.n as f64),
                    grow(f.converge_s, p.converge_s),
                    grow(f.rss_mib, p.rss_mib),
                );
            }
            println!("{}", json!({"curve": rows}));
        } else {
            let f = run_once(&args).await;
            table(&f);
            println!("{}", serde_json::to_string(&f).unwrap());
            if f.converge_s.is_nan() {
                eprintln!("the objects did not converge");
                std::process::exit(1);
            }
        }
    });
}
