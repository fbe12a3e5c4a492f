//! The operator on a system account it manages itself, end to end on the stand-in and the
//! simulator: bootstrap from a personal token, the personal token revoked, many self-rotations,
//! and SIGKILL at random points of self-rotations. At every step the token the operator reads
//! (the mounted file, mirrored from its Secret as the kubelet does) is one Konnect accepts for
//! identity work, and what the operator manages keeps converging.
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use konnect_sa_operator::api::{SystemAccount, SystemAccountToken};
use konnect_sa_operator::bootstrap::{self, BootstrapArgs};
use konnect_sa_operator::konnect::TokenValue;
use rand::Rng;
use serde_json::json;
use support::env::{free_port, metric_total};
use support::kubelet::{Mirror, mirror_secret};
use support::{NS, TestEnv, eventually, merge_patch, ready_of, wait_for};

const T: Duration = Duration::from_secs(60);
const NAME: &str = "konnect-sa-operator";
const SECRET: &str = "operator-token";

fn args(env: &TestEnv) -> BootstrapArgs {
    BootstrapArgs {
        konnect_url: env.sim.base_url(),
        personal_token_file: None,
        namespace: NS.into(),
        name: NAME.into(),
        secret_name: SECRET.into(),
        secret_key: "token".into(),
        token_duration: "1h".into(),
        timeout: T,
    }
}

fn operator_flags(file: &Path, metrics: &str) -> Vec<String> {
    vec![
        "--konnect-token-file".into(),
        file.display().to_string(),
        "--konnect-token-secret".into(),
        format!("{NS}/{SECRET}"),
        "--metrics-addr".into(),
        metrics.into(),
    ]
}

fn status(t: &SystemAccountToken) -> konnect_sa_operator::api::SystemAccountTokenStatus {
    t.status.clone().unwrap_or_default()
}

fn condition(t: &SystemAccountToken, type_: &str) -> Option<(String, String)> {
    status(t)
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

fn in_use(t: &SystemAccountToken) -> bool {
    condition(t, "OperatorCredential") == Some(("True".into(), "InUse".into()))
        && ready_of(&status(t).conditions).is_some_and(|(s, _, _)| s == "True")
}

fn ready(a: &SystemAccount) -> bool {
    ready_of(&a.status.clone().unwrap_or_default().conditions).is_some_and(|(s, _, _)| s == "True")
}

/// What Konnect says of a token: 200 when it may manage identities.
async fn identity_status(env: &TestEnv, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/v3/system-accounts", env.sim.base_url()))
        .bearer_auth(token)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

fn read_file(file: &Path) -> Option<String> {
    std::fs::read_to_string(file)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Watches, until dropped, that the mounted token file always holds a token Konnect accepts for
/// identity work; counts checks and failures.
struct Watchdog {
    stop: Arc<AtomicBool>,
    checks: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Watchdog {
    fn start(base: String, file: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let checks = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let (s, c, f) = (stop.clone(), checks.clone(), failures.clone());
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            while !s.load(Ordering::SeqCst) {
                if let Some(token) = read_file(&file) {
                    let code = http
                        .get(format!("{base}/v3/system-accounts"))
                        .bearer_auth(&token)
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    c.fetch_add(1, Ordering::SeqCst);
                    if code != 200 {
                        f.fetch_add(1, Ordering::SeqCst);
                        eprintln!(
                            "the mounted token got {code} at {}",
                            k8s_openapi::jiff::Timestamp::now()
                        );
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self {
            stop,
            checks,
            failures,
            task,
        }
    }
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        (
            self.checks.load(Ordering::SeqCst),
            self.failures.load(Ordering::SeqCst),
        )
    }
}

/// Runs bootstrap in the background (as the person would, once); returns its task.
fn spawn_bootstrap(
    env: &TestEnv,
    personal: TokenValue,
) -> tokio::task::JoinHandle<(Result<(), String>, Vec<String>)> {
    let (client, args) = (env.client(), args(env));
    tokio::spawn(async move {
        let mut lines = Vec::new();
        let r = bootstrap::run_with(client, personal, &args, &mut |l| lines.push(l))
            .await
            .map_err(|e| e.to_string());
        (r, lines)
    })
}

/// Bootstrap from a personal token, begun: the kubelet mirrors the Secret into a mount, and the
/// personal token is in the file once this returns (start the operator on it, then `finish`).
struct Bootstrapping {
    mirror: Mirror,
    file: PathBuf,
    personal_id: String,
    personal: TokenValue,
    job: tokio::task::JoinHandle<(Result<(), String>, Vec<String>)>,
}

async fn begin(env: &TestEnv) -> Bootstrapping {
    let (personal_id, personal) = env.sim.create_personal_token("alice");
    let mount = env.dir.path().join("konnect-token");
    let mirror = mirror_secret(
        env.api::<Secret>(),
        SECRET,
        mount.clone(),
        Duration::from_millis(200),
    );
    let file = mount.join("token");
    let job = spawn_bootstrap(env, personal.clone());
    assert!(
        eventually(T, || read_file(&file).is_some()).await,
        "bootstrap put the personal token into the operator's Secret"
    );
    assert_eq!(read_file(&file).as_deref(), Some(personal.expose()));
    Bootstrapping {
        mirror,
        file,
        personal_id,
        personal,
        job,
    }
}

/// Waits for bootstrap to report success; returns the mirror, the token file, the personal token's id.
async fn finish(b: Bootstrapping) -> (Mirror, PathBuf, String) {
    let (result, lines) = b.job.await.unwrap();
    let text = lines.join("\n");
    assert!(result.is_ok(), "{result:?}\n{text}");
    assert!(
        text.contains("personal token is no longer needed") && text.contains("revoke"),
        "{text}"
    );
    assert!(
        !text.contains(b.personal.expose()) && !text.contains("spat_"),
        "{text}"
    );
    let own = read_file(&b.file).unwrap();
    assert!(
        own.starts_with("spat_"),
        "the operator's file now holds its own spat_"
    );
    (b.mirror, b.file, b.personal_id)
}

async fn metrics(addr: &str) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn account_converges(env: &TestEnv, name: &str) {
    env.apply(&format!(
        "apiVersion: konnect-sa.dev/v1alpha1\nkind: SystemAccount\nmetadata: {{name: {name}}}\nspec: {{}}\n"
    ));
    wait_for(&env.api::<SystemAccount>(), name, T, ready).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bootstrap_then_twenty_self_rotations_never_lock_the_operator_out() {
    let mut env = TestEnv::start().await;
    let addr = format!("127.0.0.1:{}", free_port());
    let b = begin(&env).await;
    let flags = operator_flags(&b.file, &addr);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // The file's token wins over the one given here.
    env.start_operator_with_token(&flags, TokenValue::new("kpat_unused"))
        .await;
    let (_mirror, file, personal_id) = finish(b).await;
    let tokens = env.api::<SystemAccountToken>();
    let own = tokens.get(NAME).await.unwrap();
    let account_id = status(&own).account_id.clone().unwrap();
    // The account holds Identity Admin through the RoleBinding bootstrap made.
    assert!(
        env.sim
            .state()
            .accounts
            .iter()
            .find(|a| a.account.id == account_id)
            .unwrap()
            .roles
            .iter()
            .any(|r| r.role.role_name == "Admin" && r.role.entity_type_name == "Identity")
    );

    // The person's token goes; the operator does not notice.
    assert!(env.sim.revoke_personal_token(&personal_id));
    account_converges(&env, "after-revoke").await;

    // Running bootstrap again is harmless: nothing changes, not even the token.
    let before = env.api::<Secret>().get(SECRET).await.unwrap();
    let (result, lines) = spawn_bootstrap(&env, TokenValue::new("kpat_revokedalready"))
        .await
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(lines.join("\n").contains("nothing to do"), "{lines:?}");
    let after = env.api::<Secret>().get(SECRET).await.unwrap();
    assert_eq!(before.data, after.data);

    // Self-rotations with a short lifetime, the old token revoked as soon as allowed.
    let watchdog = Watchdog::start(env.sim.base_url(), file.clone());
    merge_patch(
        &tokens,
        NAME,
        json!({"spec": {"duration": "12s", "renewBefore": "9s", "previousTokenRetention": "0s"}}),
    )
    .await;
    let start = status(&tokens.get(NAME).await.unwrap()).revision.unwrap();
    let mut seen = start;
    while seen < start + 20 {
        let t = wait_for(&tokens, NAME, T, |t| {
            status(t).revision.unwrap() > seen && in_use(t)
        })
        .await;
        seen = status(&t).revision.unwrap();
        // Only the token in use is left: the previous one was revoked once it was not.
        let value = read_file(&file).unwrap();
        assert_eq!(identity_status(&env, &value).await, 200);
        if seen % 5 == 0 {
            account_converges(&env, &format!("during-{seen}")).await;
        }
    }
    let (checks, failures) = watchdog.finish().await;
    eprintln!(
        "{} self-rotations; mounted token checked {checks} times",
        seen - start
    );
    assert!(checks > 20, "the watchdog ran: {checks}");
    assert_eq!(failures, 0, "the mounted token always worked");

    let text = metrics(&addr).await;
    assert_eq!(
        metric_total(&text, |l| l
            .starts_with("konnect_sa_konnect_requests_total")
            && l.contains("code=\"401\"")),
        0,
        "the operator never sent a token Konnect had revoked:\n{text}"
    );
    // A held revoke is looked at again every few seconds, not in a hot loop.
    let token_reconciles = metric_total(&text, |l| {
        l.starts_with("konnect_sa_reconciles_total") && l.contains("kind=\"SystemAccountToken\"")
    });
    let rotations = seen - start;
    eprintln!("{token_reconciles} SystemAccountToken reconciles for {rotations} rotations");
    assert!(
        token_reconciles < 30 * rotations as u64 + 100,
        "{token_reconciles} token reconciles for {rotations} rotations"
    );
    let expiry = text
        .lines()
        .find(|l| l.starts_with("konnect_sa_operator_token_expiration_timestamp_seconds "))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .expect("the gauge is exported");
    let now = k8s_openapi::jiff::Timestamp::now().as_second() as f64;
    assert!(
        expiry > now && expiry <= now + 13.0,
        "expiry {expiry}, now {now}"
    );
    for a in env
        .api::<SystemAccount>()
        .list(&Default::default())
        .await
        .unwrap()
    {
        assert!(ready(&a), "{} stays Ready", a.metadata.name.unwrap());
    }
    env.stop_operator().await;
}

/// SIGKILL at random points while the operator rotates its own token: after every restart it
/// starts (a rejected token would make it exit), and the mounted token always works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_self_rotation_never_leaves_a_dead_token() {
    const KILLS: usize = 20;
    let env = TestEnv::start().await;
    let log = env.dir.path().join("operator.log");
    let addr = format!("127.0.0.1:{}", free_port());
    let b = begin(&env).await;
    let flags = operator_flags(&b.file, &addr);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut child = env.spawn_operator(&flags, &log);
    let (_mirror, file, personal_id) = finish(b).await;
    assert!(env.sim.revoke_personal_token(&personal_id));
    let tokens = env.api::<SystemAccountToken>();
    merge_patch(
        &tokens,
        NAME,
        // A lifetime well above the worst recovery (restart plus the 10 s left to an unfinished issue
        // of a killed process), rotating every few seconds.
        json!({"spec": {"duration": "60s", "renewBefore": "56s", "previousTokenRetention": "0s"}}),
    )
    .await;
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed} (CHAOS_SEED={seed} replays the kill times)");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let watchdog = Watchdog::start(env.sim.base_url(), file.clone());
    let first = status(&tokens.get(NAME).await.unwrap()).revision.unwrap();
    for kill in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..4000))).await;
        child.start_kill().unwrap();
        let _ = child.wait().await;
        // What a restarted operator starts on: the mounted file, once the kubelet caught up.
        let secret_value = env
            .api::<Secret>()
            .get(SECRET)
            .await
            .unwrap()
            .data
            .and_then(|d| d.get("token").cloned())
            .map(|v| String::from_utf8(v.0).unwrap())
            .unwrap();
        assert_eq!(
            identity_status(&env, &secret_value).await,
            200,
            "seed {seed}, kill {kill}: the Secret holds a working token"
        );
        assert!(
            eventually(T, || read_file(&file).as_deref()
                == Some(secret_value.as_str()))
            .await
        );
        let flags = operator_flags(&file, &addr);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        child = env.spawn_operator(&flags, &log);
    }
    // Converges after the last restart: on its own token, rotated meanwhile, managing others.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let t = loop {
        if let Ok(t) = tokens.get(NAME).await
            && in_use(&t)
        {
            break t;
        }
        if tokio::time::Instant::now() > deadline {
            let _ = std::fs::copy(&log, "/tmp/wt15-chaos-fail.log");
            panic!("seed {seed}: not back on its own token after the last restart");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "{KILLS} kills; revisions {first}..{}",
        status(&t).revision.unwrap()
    );
    account_converges(&env, "after-chaos").await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the operator is running"
    );
    let (checks, failures) = watchdog.finish().await;
    if failures > 0 {
        let _ = std::fs::copy(&log, "/tmp/wt15-chaos-fail.log");
    }
    assert!(checks > 20, "{checks}");
    assert_eq!(failures, 0, "seed {seed}: the mounted token always worked");
    let output = std::fs::read_to_string(&log).unwrap();
    assert!(
        !output.contains("kpat_") && !output.contains("spat_"),
        "no token value logged"
    );
    assert!(
        !output.contains("rejected the token"),
        "never started on a dead token"
    );
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
