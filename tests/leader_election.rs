//! Leader election: two real operator processes against the stand-in (only the Lease holder
//! reconciles; a killed leader is replaced within the lease duration), and `LeaderElector` itself.
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use konnect_sa_operator::api::SystemAccountToken;
use konnect_sa_operator::leader::{LeaderElector, LeaseConfig};
use kube::Api;
use support::{NS, TestEnv, ready_of, wait_for};

const T: Duration = Duration::from_secs(30);
const LEASE: &str = "konnect-sa-operator";

fn holder(l: &Lease) -> Option<String> {
    l.spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty())
}

fn token_ready(t: &SystemAccountToken) -> bool {
    let s = t.status.clone().unwrap_or_default();
    ready_of(&s.conditions).is_some_and(|(st, _, _)| st == "True")
}

fn account_and_token(i: usize) -> String {
    format!(
        r#"apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {{name: bot-{i}}}
spec: {{description: leader test}}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccountToken
metadata: {{name: bot-{i}-token}}
spec:
  systemAccountRef: {{name: bot-{i}}}
"#
    )
}

/// Every token CR was issued exactly once: revision 1 and one live token in Konnect.
async fn assert_issued_once(env: &TestEnv, n: usize) {
    let api = env.api::<SystemAccountToken>();
    for i in 0..n {
        let t = wait_for(&api, &format!("bot-{i}-token"), T, token_ready).await;
        let st = t.status.unwrap();
        assert_eq!(st.revision, Some(1), "bot-{i}-token issued once");
        let account = st.account_id.expect("status.accountId");
        let live = env.sim.live_tokens(&account);
        assert_eq!(
            live.len(),
            1,
            "bot-{i}: one live token in Konnect: {live:?}"
        );
        assert_eq!(Some(live[0].id.clone()), st.token_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_leader_reconciles_and_a_standby_takes_over_after_a_kill() {
    let env = TestEnv::start().await;
    let flags = [
        "--leader-elect",
        "--leader-election-namespace",
        NS,
        "--leader-lease-duration",
        "4s",
    ];
    let logs: BTreeMap<&str, _> = [
        ("op-a", env.dir.path().join("op-a.log")),
        ("op-b", env.dir.path().join("op-b.log")),
    ]
    .into();
    let mut children: BTreeMap<&str, _> = logs
        .iter()
        .map(|(id, log)| {
            (
                *id,
                env.spawn_operator_env(&flags, &[("POD_NAME", id)], log),
            )
        })
        .collect();
    let leases: Api<Lease> = env.api();
    let lease = wait_for(&leases, LEASE, T, |l| holder(l).is_some()).await;
    let leader = holder(&lease).unwrap();
    assert!(
        children.contains_key(leader.as_str()),
        "the Lease names one of the replicas: {leader}"
    );

    let docs: Vec<String> = (0..5).map(account_and_token).collect();
    env.apply(&docs.join("---\n"));
    assert_issued_once(&env, 5).await;
    let creates = |env: &TestEnv| {
        env.sim
            .counts()
            .get("post-system-accounts-id-access-tokens")
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(
        creates(&env),
        5,
        "one create call per token, by one replica"
    );
    let lease = leases.get(LEASE).await.unwrap();
    assert_eq!(
        holder(&lease).as_deref(),
        Some(leader.as_str()),
        "still the leader"
    );
    let standby = *children.keys().find(|id| **id != leader.as_str()).unwrap();
    let leader_log = std::fs::read_to_string(&logs[leader.as_str()]).unwrap();
    assert!(
        leader_log.contains("became leader") && leader_log.contains("controllers started"),
        "{leader_log}"
    );
    // The standby never started its controllers.
    let standby_log = std::fs::read_to_string(&logs[standby]).unwrap();
    assert!(
        !standby_log.contains("controllers started"),
        "standby {standby} must not run controllers:\n{standby_log}"
    );

    // kill -9 the leader: no release, the standby must wait the lease out and take over.
    let mut dead = children.remove(leader.as_str()).unwrap();
    dead.start_kill().expect("SIGKILL sent");
    dead.wait().await.unwrap();
    let killed = Instant::now();
    env.apply(&account_and_token(5));
    wait_for(
        &env.api::<SystemAccountToken>(),
        "bot-5-token",
        Duration::from_secs(40),
        token_ready,
    )
    .await;
    let took_over = killed.elapsed();
    eprintln!("standby {standby} issued a new token {took_over:?} after the leader was killed");
    let lease = leases.get(LEASE).await.unwrap();
    assert_eq!(
        holder(&lease).as_deref(),
        Some(standby),
        "the Lease names the new leader"
    );
    assert!(
        lease
            .spec
            .as_ref()
            .and_then(|s| s.lease_transitions)
            .unwrap_or(0)
            >= 1
    );
    // The new leader looked at the old tokens again and issued none of them twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_issued_once(&env, 6).await;
    assert_eq!(creates(&env), 6, "no double issue after the takeover");
    let standby_log = std::fs::read_to_string(&logs[standby]).unwrap();
    assert!(standby_log.contains("controllers started"), "{standby_log}");
    for log in logs.values() {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(!text.contains("spat_"), "a token value in a log line");
    }

    // A clean stop (SIGTERM) releases the Lease on the way out, so a standby need not wait it out.
    let mut leader_proc = children.remove(standby).unwrap();
    let pid = leader_proc.id().unwrap().to_string();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(term.success());
    let exit = tokio::time::timeout(T, leader_proc.wait())
        .await
        .expect("stops on SIGTERM")
        .unwrap();
    assert!(exit.success(), "clean exit: {exit:?}");
    let lease = leases.get(LEASE).await.unwrap();
    assert_eq!(holder(&lease), None, "released on shutdown: {lease:?}");
}

fn elector(env: &TestEnv, identity: &str, lease: &str, duration: Duration) -> LeaderElector {
    LeaderElector::new(
        env.client(),
        LeaseConfig {
            namespace: NS.into(),
            name: lease.into(),
            identity: identity.into(),
            lease_duration: duration,
            retry_period: Duration::from_millis(200),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_elector_one_winner_expiry_and_release() {
    let env = TestEnv::start().await;
    let duration = Duration::from_secs(3);
    let a = elector(&env, "a", "unit-lease", duration);
    let b = elector(&env, "b", "unit-lease", duration);

    // Both race for a free Lease: exactly one wins, repeatedly.
    let (ra, rb) = tokio::join!(a.try_acquire_or_renew(), b.try_acquire_or_renew());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra ^ rb, "exactly one winner: a={ra} b={rb}");
    let (winner, loser, loser_id) = if ra { (&a, &b, "b") } else { (&b, &a, "a") };
    for _ in 0..3 {
        let (w, l) = tokio::join!(winner.try_acquire_or_renew(), loser.try_acquire_or_renew());
        assert!(w.unwrap(), "the holder renews");
        assert!(!l.unwrap(), "the other waits while the lease is valid");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The winner stops renewing: the other wins only after the lease has expired.
    let stopped = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), loser.acquire())
        .await
        .expect("the other candidate takes over after expiry");
    let waited = stopped.elapsed();
    assert!(
        waited >= duration - Duration::from_millis(500),
        "took over after {waited:?}, before the {duration:?} lease expired"
    );
    let leases: Api<Lease> = env.api();
    let lease = leases.get("unit-lease").await.unwrap();
    assert_eq!(holder(&lease).as_deref(), Some(loser_id));
    assert!(
        !winner.try_acquire_or_renew().await.unwrap(),
        "the old holder has lost it"
    );

    // release() hands over at once.
    loser.release().await;
    let released = Instant::now();
    assert!(
        winner.try_acquire_or_renew().await.unwrap(),
        "a released lease is free at once"
    );
    assert!(released.elapsed() < duration);
    let lease = leases.get("unit-lease").await.unwrap();
    assert_ne!(holder(&lease).as_deref(), Some(loser_id));
}
