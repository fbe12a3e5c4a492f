//! SystemAccountToken invariants under crashes (API.md "Invariants"): the real operator binary is
//! killed with SIGKILL at random moments while tokens are issued and rotated, with lost responses
//! and 429s from Konnect. After every restart and convergence: the Secret holds a token Konnect
//! accepts (no lost token), and at most current + previous-within-retention + one pending token
//! are live per CR (no leaked token). At the end nothing but the current tokens is live, and no
//! token value was ever logged.
//!
//! The run is seeded: the seed is printed, and `CHAOS_SEED=<n>` replays a run.
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use konnect_sa_operator::api::{SystemAccount, SystemAccountToken};
use konnect_sa_operator::sim::{Faults, SimConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use support::{NS, TestEnv, delete, eventually, merge_patch, ready_of, wait_for};

const CRS: [&str; 3] = ["chaos-a", "chaos-b", "chaos-c"];
const KILLS: usize = 60;
/// Kills between two convergence checks.
const ROUND: usize = 5;
const RETENTION_SECS: i64 = 5;

fn faults_on() -> Faults {
    Faults {
        rate_lost: 0.1,
        rate_429: 0.2,
        retry_after_secs: 1,
        ..Faults::default()
    }
}

fn status(t: &SystemAccountToken) -> konnect_sa_operator::api::SystemAccountTokenStatus {
    t.status.clone().unwrap_or_default()
}

fn annotation(s: &Secret, key: &str) -> Option<String> {
    s.metadata.annotations.as_ref()?.get(key).cloned()
}

fn value_of(s: &Secret) -> Option<String> {
    let v = s.data.as_ref()?.get("token")?;
    String::from_utf8(v.0.clone()).ok()
}

/// A CR is converged when Ready for its generation, nothing is pending, its manual rotation is
/// done, and its Secret holds the token its status names.
async fn converged(env: &TestEnv, name: &str) -> bool {
    let Ok(Some(t)) = env.api::<SystemAccountToken>().get_opt(name).await else {
        return false;
    };
    let st = status(&t);
    // Ready for the token the status records (a checkpoint records an issued token before the
    // reconcile's last steps, its revokes, and the Ready condition that names it).
    let ready = ready_of(&st.conditions).is_some_and(|(s, _, msg)| {
        s == "True"
            && st
                .token_name
                .as_deref()
                .is_some_and(|n| msg.contains(&format!("Token {n} ")))
    }) && st.observed_generation == t.metadata.generation
        && st.pending_token_name.is_none()
        && st.token_id.is_some();
    let wanted = t
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("konnect-sa.dev/rotate"))
        .cloned();
    if !ready || (wanted.is_some() && st.last_rotate_annotation != wanted) {
        return false;
    }
    let Ok(Some(s)) = env.api::<Secret>().get_opt(name).await else {
        return false;
    };
    annotation(&s, "konnect-sa.dev/token-id") == st.token_id
}

async fn wait_converged(env: &TestEnv, seed: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut all = true;
        for name in CRS {
            all &= converged(env, name).await;
        }
        if all {
            return;
        }
        if Instant::now() > deadline {
            let objs: Vec<_> = env
                .kube
                .list(
                    "konnect-sa.dev",
                    "v1alpha1",
                    "systemaccounttokens",
                    Some(NS),
                )
                .into_iter()
                .map(|o| o["status"].clone())
                .collect();
            panic!("seed {seed}: not converged after {timeout:?}: {objs:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /v3/organizations/me` with the token until Konnect gives a verdict (faults may be on).
async fn accepted(env: &TestEnv, token: &str) -> bool {
    let http = reqwest::Client::new();
    for _ in 0..100 {
        let resp = http
            .get(format!("{}/v3/organizations/me", env.sim.base_url()))
            .bearer_auth(token)
            .send()
            .await;
        match resp.map(|r| r.status().as_u16()) {
            Ok(200) => return true,
            Ok(401) => return false,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("Konnect gave no verdict on a token");
}

async fn statuses(env: &TestEnv) -> Vec<konnect_sa_operator::api::SystemAccountTokenStatus> {
    let mut out = Vec::new();
    for name in CRS {
        let t = env
            .api::<SystemAccountToken>()
            .get(name)
            .await
            .expect("CR exists");
        out.push(status(&t));
    }
    out
}

/// Invariants 1 and 2 for every CR, checked while the operator runs and has converged.
async fn check_invariants(env: &TestEnv, account_id: &str, seed: u64, seen: &mut BTreeSet<String>) {
    // The operator keeps rotating: take Konnect's view between two identical reads of the statuses.
    let (statuses, live) = loop {
        let before = statuses(env).await;
        let live = env.sim.live_tokens(account_id);
        if statuses(env).await == before {
            break (before, live);
        }
    };
    let now = Timestamp::now();
    for (name, st) in CRS.into_iter().zip(statuses) {
        let s = env.api::<Secret>().get(name).await.expect("Secret exists");
        let value = value_of(&s).expect("Secret holds a value");
        seen.insert(value.clone());
        assert!(
            accepted(env, &value).await,
            "seed {seed}: {name}: the Secret's token is not accepted by Konnect"
        );
        // Previous tokens still within their retention (5 s slack: a revoke may wait out a 429).
        let kept: BTreeSet<String> = st
            .previous_tokens
            .iter()
            .filter(|p| {
                p.revoke_at
                    .parse::<Timestamp>()
                    .is_ok_and(|at| at.checked_add(Duration::from_secs(5)).unwrap() > now)
            })
            .map(|p| p.id.clone())
            .collect();
        let prefix = format!("{NS}.{name}.");
        let mine: Vec<_> = live
            .iter()
            .filter(|t| t.name.starts_with(&prefix))
            .collect();
        let unexplained: Vec<_> = mine
            .iter()
            .filter(|t| Some(&t.id) != st.token_id.as_ref() && !kept.contains(&t.id))
            .collect();
        assert!(
            mine.iter().any(|t| Some(&t.id) == st.token_id.as_ref()),
            "seed {seed}: {name}: the current token is not live"
        );
        assert!(
            unexplained.len() <= 1,
            "seed {seed}: {name}: leaked tokens {unexplained:?}; status {st:?}"
        );
    }
}

/// Right after a kill (nobody revokes anything now): each CR's Secret still holds an accepted token
/// once one was issued, and every live token of a CR is its current one, one it records as
/// previous, or the single one a crash left pending. Returns how many CRs were caught mid-issue.
async fn check_after_kill(
    env: &TestEnv,
    account_id: &str,
    seed: u64,
    kill: usize,
    seen: &mut BTreeSet<String>,
) -> usize {
    let live = env.sim.live_tokens(account_id);
    let mut mid_issue = 0;
    for name in CRS {
        let t = env
            .api::<SystemAccountToken>()
            .get(name)
            .await
            .expect("CR exists");
        let st = status(&t);
        mid_issue += usize::from(st.pending_token_name.is_some());
        if let Ok(Some(s)) = env.api::<Secret>().get_opt(name).await
            && let Some(value) = value_of(&s)
        {
            seen.insert(value.clone());
            assert!(
                accepted(env, &value).await,
                "seed {seed}, kill {kill}: {name}: the Secret's token is not accepted"
            );
        }
        let prefix = format!("{NS}.{name}.");
        let known: BTreeSet<&String> = st
            .token_id
            .iter()
            .chain(st.previous_tokens.iter().map(|p| &p.id))
            .collect();
        let unknown: Vec<_> = live
            .iter()
            .filter(|t| t.name.starts_with(&prefix) && !known.contains(&t.id))
            .collect();
        assert!(
            unknown.len() <= 1,
            "seed {seed}, kill {kill}: {name}: tokens nobody records: {unknown:?}; status {st:?}"
        );
    }
    mid_issue
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_survive_kill_9_with_lost_responses_and_429s() {
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Timestamp::now().as_nanosecond() as u64);
    println!("chaos seed: {seed} (replay with CHAOS_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let env = TestEnv::start_with(SimConfig {
        seed: Some(seed),
        ..SimConfig::default()
    })
    .await;
    let log = env.dir.path().join("operator.log");
    let started = Instant::now();

    // Setup without faults: the account, then the token CRs.
    let mut op = env.spawn_operator(&[], &log);
    env.apply(
        r#"
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: chaos-bot}
spec: {description: chaos}
"#,
    );
    let sa = wait_for(
        &env.api::<SystemAccount>(),
        "chaos-bot",
        Duration::from_secs(30),
        |a| a.status.as_ref().is_some_and(|s| s.id.is_some()),
    )
    .await;
    let account_id = sa.status.unwrap().id.unwrap();
    for name in CRS {
        env.apply(&format!(
            r#"
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccountToken
metadata: {{name: {name}}}
spec:
  systemAccountRef: {{name: chaos-bot}}
  duration: 40s
  renewBefore: 30s
  previousTokenRetention: {RETENTION_SECS}s
"#
        ));
    }
    env.set_faults(faults_on());

    let mut seen = BTreeSet::new();
    let mut manual = 0u32;
    let mut checks = 0;
    let mut mid_issue = 0;
    for kill in 1..=KILLS {
        // Half the time, ask for a rotation now so kills land in issuing.
        if rng.random_bool(0.5) {
            manual += 1;
            let name = CRS[rng.random_range(0..CRS.len())];
            merge_patch(
                &env.api::<SystemAccountToken>(),
                name,
                json!({"metadata": {"annotations": {"konnect-sa.dev/rotate": format!("m{manual}")}}}),
            )
            .await;
        }
        if kill > 1 {
            op = env.spawn_operator(&[], &log);
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..=800))).await;
        op.start_kill().expect("kill -9");
        let _ = op.wait().await;
        mid_issue += check_after_kill(&env, &account_id, seed, kill, &mut seen).await;

        if kill % ROUND == 0 {
            // Restart, let it converge (faults still on), check the invariants, crash again.
            op = env.spawn_operator(&[], &log);
            wait_converged(&env, seed, Duration::from_secs(60)).await;
            check_invariants(&env, &account_id, seed, &mut seen).await;
            checks += 1;
            op.start_kill().expect("kill -9");
            let _ = op.wait().await;
        }
    }
    assert!(checks >= KILLS / ROUND);

    // The end: faults off, long lifetimes (one last rotation), retention passed: only the
    // current tokens are live.
    env.set_faults(Faults::default());
    let mut op = env.spawn_operator(&[], &log);
    for name in CRS {
        merge_patch(
            &env.api::<SystemAccountToken>(),
            name,
            json!({"spec": {"duration": "1h", "renewBefore": "20m"}}),
        )
        .await;
    }
    wait_converged(&env, seed, Duration::from_secs(60)).await;
    check_invariants(&env, &account_id, seed, &mut seen).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut live, mut current) = (BTreeSet::new(), BTreeSet::new());
    while Instant::now() < deadline {
        current.clear();
        for name in CRS {
            let t = env.api::<SystemAccountToken>().get(name).await.unwrap();
            current.extend(status(&t).token_id);
        }
        live = env
            .sim
            .live_tokens(&account_id)
            .into_iter()
            .map(|t| t.id)
            .collect();
        if live == current {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        live, current,
        "seed {seed}: only the current tokens are live at the end"
    );
    assert_eq!(current.len(), CRS.len());
    for name in CRS {
        let s = env.api::<Secret>().get(name).await.unwrap();
        let value = value_of(&s).unwrap();
        assert!(accepted(&env, &value).await, "seed {seed}: {name}");
        seen.insert(value);
    }
    // Deleting the CRs after all that revokes every token they created.
    for name in CRS {
        delete(&env.api::<SystemAccountToken>(), name).await;
    }
    let gone = eventually(Duration::from_secs(30), || {
        env.kube
            .list(
                "konnect-sa.dev",
                "v1alpha1",
                "systemaccounttokens",
                Some(NS),
            )
            .is_empty()
    })
    .await;
    assert!(gone, "seed {seed}: finalizers removed");
    assert!(
        env.sim.live_tokens(&account_id).is_empty(),
        "seed {seed}: every token revoked on delete: {:?}",
        env.sim.live_tokens(&account_id)
    );
    op.start_kill().expect("kill");
    let _ = op.wait().await;

    // Invariant 3: no token value in the binary's output (trace level), Events or objects.
    let output = std::fs::read_to_string(&log).unwrap();
    assert!(output.contains("token issued"), "the log captured the run");
    let mut values = env.token_values();
    values.extend(seen.iter().cloned());
    support::leak::assert_clean(
        &values,
        &output,
        &format!("seed {seed}: the operator's log"),
    );
    env.assert_no_token_leak();
    let rotations = env
        .sim
        .counts()
        .get("post-system-accounts-id-access-tokens")
        .copied()
        .unwrap_or(0);
    println!(
        "seed {seed}: {KILLS} kills ({mid_issue} CRs caught mid-issue), {checks} checks, {manual} manual rotations, {rotations} token creates, {:?}",
        started.elapsed()
    );
}
