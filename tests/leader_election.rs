//! High availability: two real operator processes against the stand-in and the simulator, each
//! talking through its own proxies (tests/support/proxy.rs), so every request is attributed to a
//! replica and one replica can be cut off. The promises:
//! - the standby is ready (a rolling update with maxUnavailable 0 completes) and says it is not
//!   the leader (`konnect_sa_leader 0`);
//! - whatever ends the leader (kill -9, SIGTERM, no answers from the API server, a Lease renewal
//!   that hangs) the standby takes over: a released Lease at once, any other after it expired (as
//!   the standby records it; the durations are printed, not asserted: on a loaded 2-core machine
//!   they are the scheduler's);
//! - the old leader makes no write, to Kubernetes or to Konnect, after the new one made its first;
//! - no revoked token in a Secret, no token issued twice or left behind.
//!
//! And `LeaderElector` itself, on a frozen clock so that each boundary is exact: one winner, the
//! fence closing at the renew deadline, expiry judged by local observation (not renewTime).
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use konnect_sa_operator::api::SystemAccountToken;
use konnect_sa_operator::clock::Clock;
use konnect_sa_operator::leader::{LeaderElector, LeaseConfig};
use kube::Api;
use kube::api::PostParams;
use support::env::{free_port, metric_total};
use support::proxy::{Mode, Net, Proxy, Seen, write_kubeconfig};
use support::{NS, TestEnv, eventually, ready_of, wait_for};
use tokio::time::Instant;

const T: Duration = Duration::from_secs(40);
const LEASE: &str = "konnect-sa-operator";
const LEASE_DURATION: Duration = Duration::from_secs(3);

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

/// One operator process with its own proxies in front of the stand-in and the simulator.
struct Replica {
    name: String,
    child: tokio::process::Child,
    kube: Proxy,
    _konnect: Proxy,
    metrics: String,
    log: std::path::PathBuf,
}

impl Replica {
    async fn start(env: &TestEnv, net: &Net, name: &str) -> Self {
        let kube = net.proxy(name, "kube", &env.kube.url()).await;
        let konnect = net.proxy(name, "konnect", &env.sim.base_url()).await;
        let kubeconfig = env.dir.path().join(format!("{name}.kubeconfig"));
        write_kubeconfig(&kubeconfig, &kube.url);
        let metrics = format!("127.0.0.1:{}", free_port());
        let log = env.dir.path().join(format!("{name}.log"));
        let duration = format!("{}s", LEASE_DURATION.as_secs());
        let child = env.spawn_operator_env(
            &[
                "--leader-elect",
                "--leader-election-namespace",
                NS,
                "--leader-lease-duration",
                &duration,
                "--konnect-url",
                &konnect.url,
                "--metrics-addr",
                &metrics,
            ],
            &[
                ("POD_NAME", name),
                ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ],
            &log,
        );
        Self {
            name: name.to_string(),
            child,
            kube,
            _konnect: konnect,
            metrics,
            log,
        }
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let r = reqwest::get(format!("http://{}{path}", self.metrics))
            .await
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.text().await.ok()?))
    }

    /// `/readyz` answers 200 (polled: the server starts after the start-up checks).
    async fn wait_ready(&self) {
        let deadline = Instant::now() + T;
        loop {
            if let Some((200, _)) = self.get("/readyz").await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never became ready",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn leader_metric(&self) -> u64 {
        let (_, text) = self.get("/metrics").await.expect("metrics answer");
        metric_total(&text, |l| l.starts_with("konnect_sa_leader "))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// How the leader is taken out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Kill,
    Term,
    /// The API server stops answering the leader (Konnect still does).
    CutOff,
    /// The leader's Lease calls never answer; everything else it sends still does.
    RenewalHangs,
}

/// Every token is Ready, its Secret holds a token Konnect accepts, and its account has no other
/// live token (nothing leaked by a handover in the middle of an issue).
async fn assert_token_invariants(env: &TestEnv, n: usize) {
    let tokens = env.api::<SystemAccountToken>();
    let secrets = env.api::<Secret>();
    for i in 0..n {
        let t = wait_for(&tokens, &format!("bot-{i}-token"), T, token_ready).await;
        let st = t.status.unwrap();
        let account = st.account_id.expect("status.accountId");
        let secret = secrets.get(&format!("bot-{i}-token")).await.unwrap();
        let id = secret
            .metadata
            .annotations
            .unwrap_or_default()
            .get("konnect-sa.dev/token-id")
            .cloned();
        let live = env.sim.live_tokens(&account);
        assert_eq!(
            live.iter().map(|l| Some(l.id.clone())).collect::<Vec<_>>(),
            vec![id.clone()],
            "bot-{i}: the Secret's token ({id:?}) is the one live token"
        );
        assert_eq!(st.token_id, id, "bot-{i}: status and Secret agree");
    }
}

async fn takeover(failure: Failure) {
    let env = TestEnv::start().await;
    let net = Net::new();
    let replicas = [
        Replica::start(&env, &net, "op-a").await,
        Replica::start(&env, &net, "op-b").await,
    ];
    let leases: Api<Lease> = env.api();
    let lease = wait_for(&leases, LEASE, T, |l| holder(l).is_some()).await;
    let leader_name = holder(&lease).unwrap();
    let [a, b] = replicas;
    let (mut leader, standby) = if leader_name == a.name {
        (a, b)
    } else {
        (b, a)
    };

    // Both are ready: the standby without being the leader; the metric tells them apart.
    standby.wait_ready().await;
    leader.wait_ready().await;
    assert_eq!(
        standby.leader_metric().await,
        0,
        "standby reports it is not the leader"
    );
    assert_eq!(leader.leader_metric().await, 1, "leader reports it is");
    // (Readiness does not wait for the election, so the line may follow the first 200 by a moment.)
    assert!(
        eventually(T, || standby.log_text().contains("standing by")).await,
        "{}",
        standby.log_text()
    );

    // Work arrives all the time: a new account and token every 250 ms.
    let done = AtomicBool::new(false);
    let created = std::sync::atomic::AtomicUsize::new(0);
    let churn = async {
        let mut i = 0;
        while !done.load(Ordering::SeqCst) {
            env.apply(&account_and_token(i));
            i += 1;
            created.store(i, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let scenario = async {
        wait_for(
            &env.api::<SystemAccountToken>(),
            "bot-0-token",
            T,
            token_ready,
        )
        .await;
        assert!(!net.writes_of(&leader.name).is_empty(), "the leader writes");
        assert!(
            net.writes_of(&standby.name).is_empty(),
            "the standby never wrote"
        );

        let failed = Instant::now();
        match failure {
            Failure::Kill => leader.child.start_kill().expect("SIGKILL sent"),
            Failure::Term => {
                let pid = leader.child.id().unwrap().to_string();
                let term = std::process::Command::new("kill")
                    .args(["-TERM", &pid])
                    .status()
                    .unwrap();
                assert!(term.success());
            }
            Failure::CutOff => leader.kube.set_mode(Mode::Cut),
            Failure::RenewalHangs => leader.kube.set_mode(Mode::HangLeases),
        }

        wait_for(&leases, LEASE, T, |l| {
            holder(l).as_deref() == Some(standby.name.as_str())
        })
        .await;
        let took_lease = failed.elapsed();
        let first: Seen = loop {
            if let Some(w) = net.writes_of(&standby.name).into_iter().next() {
                break w;
            }
            assert!(failed.elapsed() < T, "the new leader never wrote");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The durations are reported, not asserted: on a loaded machine they are the scheduler's.
        // What is asserted is what the replicas recorded: how the standby took the Lease.
        let first_write = first.at.duration_since(failed);
        eprintln!(
            "{failure:?}: {} took the Lease after {took_lease:?}, wrote first after {first_write:?} \
             (lease {LEASE_DURATION:?})",
            standby.name
        );
        let (how, not) = match failure {
            // A clean shutdown releases the Lease: taken at once, without waiting for expiry.
            Failure::Term => ("took over a released Lease", "took over an expired Lease"),
            _ => ("took over an expired Lease", "took over a released Lease"),
        };
        assert!(
            eventually(T, || standby.log_text().contains(how)).await,
            "{failure:?}: the standby should have {how}:\n{}",
            standby.log_text()
        );
        assert!(!standby.log_text().contains(not), "{}", standby.log_text());
        let lease = leases.get(LEASE).await.unwrap();
        let spec = lease.spec.unwrap();
        assert_eq!(spec.lease_transitions, Some(1), "one handover: {spec:?}");
        assert!(
            spec.acquire_time.is_some()
                && spec.acquire_time.as_ref().map(|t| t.0) <= spec.renew_time.as_ref().map(|t| t.0),
            "{spec:?}"
        );

        // The old leader ends: at once, or (cut off, renewal hung) when it can no longer vouch
        // for its Lease, with an error (the Deployment restarts it as a standby).
        let exit = tokio::time::timeout(T, leader.child.wait())
            .await
            .expect("the old leader exits")
            .unwrap();
        match failure {
            Failure::Term => assert!(exit.success(), "clean exit on SIGTERM: {exit:?}"),
            Failure::CutOff | Failure::RenewalHangs => {
                assert!(!exit.success(), "exit with LostLease: {exit:?}");
                let log = leader.log_text();
                assert!(log.contains("lost the leader lease"), "{log}");
            }
            Failure::Kill => {}
        }
        // Give a straggler every chance to show up: the new leader works on for a while.
        let settle = net.writes_of(&standby.name).len() + 20;
        let deadline = Instant::now() + T;
        while net.writes_of(&standby.name).len() < settle && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let late: Vec<Seen> = net
            .writes_of(&leader.name)
            .into_iter()
            .filter(|w| w.seq > first.seq)
            .collect();
        assert!(
            late.is_empty(),
            "{failure:?}: the old leader wrote after the new leader's first write {first:?}: {late:#?}"
        );
        assert_eq!(standby.leader_metric().await, 1);
        done.store(true, Ordering::SeqCst);
    };
    tokio::join!(churn, scenario);
    leader.kube.set_mode(Mode::Pass);
    assert_token_invariants(&env, created.load(Ordering::SeqCst)).await;
    let values = env.token_values();
    for r in [&leader, &standby] {
        support::leak::assert_clean(&values, &r.log_text(), "a replica's log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_leader_a_standby_takes_over_after_the_lease_expires() {
    takeover(Failure::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_of_the_leader_releases_the_lease_and_the_standby_takes_over_at_once() {
    takeover(Failure::Term).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_the_api_server_stops_writing_before_the_standby_starts() {
    takeover(Failure::CutOff).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_renewal_hangs_stops_writing_before_the_standby_starts() {
    takeover(Failure::RenewalHangs).await;
}

/// A token with a rotation every 7-15 s (renewal 75 s before a 90 s expiry, up to 10% earlier).
fn rotating(i: usize) -> String {
    format!(
        "{}  duration: 90s\n  renewBefore: 75s\n  previousTokenRetention: 10s\n",
        account_and_token(i)
    )
}

/// Each token's Secret holds a token Konnect accepts (never a revoked one).
async fn secrets_hold_live_tokens(env: &TestEnv, n: usize) -> Result<(), String> {
    let secrets = env.api::<Secret>();
    let tokens = env.api::<SystemAccountToken>();
    for i in 0..n {
        let Ok(Some(secret)) = secrets.get_opt(&format!("bot-{i}-token")).await else {
            continue;
        };
        let annotations = secret.metadata.annotations.unwrap_or_default();
        let (Some(id), Some(account)) = (
            annotations.get("konnect-sa.dev/token-id"),
            annotations.get("konnect-sa.dev/account-id"),
        ) else {
            continue;
        };
        if !env.sim.live_tokens(account).iter().any(|t| &t.id == id) {
            let t = tokens.get(&format!("bot-{i}-token")).await.ok();
            return Err(format!(
                "bot-{i}: the Secret holds token {id}, which Konnect no longer accepts; CR: {:?}",
                t.and_then(|t| t.status)
            ));
        }
    }
    Ok(())
}

/// 50 handovers (SIGTERM, and kill -9 every fifth) while 8 tokens rotate every few seconds: no
/// Secret ever holds a revoked token, every replica's writes end before its successor's begin,
/// and once things settle each account has exactly the one live token its Secret holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_handovers_with_rotations_in_flight_keep_the_token_invariants() {
    const N: usize = 8;
    const HANDOVERS: usize = 50;
    let env = TestEnv::start().await;
    let net = Net::new();
    let leases: Api<Lease> = env.api();
    let docs: Vec<String> = (0..N).map(rotating).collect();
    env.apply(&docs.join("---\n"));
    let mut standby = Replica::start(&env, &net, "op-0").await;
    let mut leader = Replica::start(&env, &net, "op-1").await;
    let lease = wait_for(&leases, LEASE, T, |l| holder(l).is_some()).await;
    if holder(&lease).as_deref() == Some(standby.name.as_str()) {
        std::mem::swap(&mut leader, &mut standby);
    }
    let mut leaders = vec![leader.name.clone()];
    let checked = std::sync::Mutex::new(0usize);
    let done = AtomicBool::new(false);
    // Sample the invariant all along, not only at the end.
    let watcher = async {
        while !done.load(Ordering::SeqCst) {
            if let Err(e) = secrets_hold_live_tokens(&env, N).await {
                panic!("{e}");
            }
            *checked.lock().unwrap() += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let handovers = async {
        let started = Instant::now();
        for i in 0..HANDOVERS {
            // Let the leader get to work (a write), then take it out in the middle of it.
            let deadline = Instant::now() + T;
            while net.writes_of(&leader.name).is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(rand_ms(i))).await;
            standby.wait_ready().await;
            if i % 5 == 4 {
                leader.child.start_kill().unwrap();
            } else {
                let pid = leader.child.id().unwrap().to_string();
                std::process::Command::new("kill")
                    .args(["-TERM", &pid])
                    .status()
                    .unwrap();
            }
            let _ = tokio::time::timeout(T, leader.child.wait()).await;
            wait_for(&leases, LEASE, T, |l| {
                holder(l).as_deref() == Some(standby.name.as_str())
            })
            .await;
            leaders.push(standby.name.clone());
            let next = Replica::start(&env, &net, &format!("op-{}", i + 2)).await;
            leader = std::mem::replace(&mut standby, next);
        }
        eprintln!("{HANDOVERS} handovers in {:?}", started.elapsed());
        done.store(true, Ordering::SeqCst);
    };
    tokio::join!(watcher, handovers);
    assert!(*checked.lock().unwrap() > 50, "the invariant was sampled");

    // Writes of consecutive leaders never overlap.
    for pair in leaders.windows(2) {
        let (old, new) = (&pair[0], &pair[1]);
        let last_old = net.writes_of(old).last().map(|w| w.seq);
        let first_new = net.writes_of(new).first().map(|w| w.seq);
        if let (Some(last_old), Some(first_new)) = (last_old, first_new) {
            assert!(
                last_old < first_new,
                "{old} wrote (#{last_old}) after its successor {new} (#{first_new})"
            );
        }
    }
    let rotations: usize = (0..N)
        .map(|i| {
            env.kube
                .get(
                    "konnect-sa.dev",
                    "v1alpha1",
                    "systemaccounttokens",
                    NS,
                    &format!("bot-{i}-token"),
                )
                .and_then(|t| t.pointer("/status/revision").and_then(|r| r.as_u64()))
                .unwrap_or(0) as usize
        })
        .sum();
    eprintln!("{rotations} tokens issued across {HANDOVERS} handovers");
    assert!(
        rotations >= 2 * N,
        "rotations happened during the handovers: {rotations}"
    );

    // Settled (the retention of the last rotation passed): one live token per account, the
    // Secret's. Renewals go on, so look between two of them.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        secrets_hold_live_tokens(&env, N).await.unwrap();
        let mut leaked = Vec::new();
        for i in 0..N {
            let t = env
                .api::<SystemAccountToken>()
                .get(&format!("bot-{i}-token"))
                .await
                .unwrap();
            let st = t.status.unwrap_or_default();
            let account = st.account_id.clone().unwrap_or_default();
            let live: Vec<String> = env
                .sim
                .live_tokens(&account)
                .into_iter()
                .map(|t| t.id)
                .collect();
            let expected: Vec<String> = st
                .token_id
                .iter()
                .cloned()
                .chain(st.previous_tokens.iter().map(|p| p.id.clone()))
                .collect();
            if live.iter().any(|id| !expected.contains(id)) {
                leaked.push(format!("bot-{i}: live {live:?}, known {expected:?}"));
            }
        }
        if leaked.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tokens nobody knows of stay live: {leaked:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A spread of pauses (0-280 ms) without a random number generator: reproducible.
fn rand_ms(i: usize) -> u64 {
    ((i * 37) % 8) as u64 * 40
}

fn elector(env: &TestEnv, identity: &str, lease: &str, clock: &Clock) -> LeaderElector {
    LeaderElector::new(
        env.client(),
        LeaseConfig {
            retry_period: Duration::from_millis(200),
            clock: clock.clone(),
            ..LeaseConfig::new(NS, lease, identity, UNIT_LEASE)
        },
    )
}

/// The in-process electors' lease. Their clock is frozen: only the test moves time, so every
/// boundary is checked to the millisecond and nothing waits.
const UNIT_LEASE: Duration = Duration::from_secs(30);
const MS: Duration = Duration::from_millis(1);

#[tokio::test]
async fn lease_elector_one_winner_expiry_and_release() {
    let env = TestEnv::start().await;
    let clock = Clock::frozen();
    let a = elector(&env, "a", "unit-lease", &clock);
    let b = elector(&env, "b", "unit-lease", &clock);
    let renew_deadline = a.config().renew_deadline;
    assert_eq!(renew_deadline, Duration::from_secs(20));

    // Both race for a free Lease: exactly one wins, repeatedly.
    let (ra, rb) = tokio::join!(a.try_acquire_or_renew(), b.try_acquire_or_renew());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra ^ rb, "exactly one winner: a={ra} b={rb}");
    let (winner, loser, loser_id) = if ra { (&a, &b, "b") } else { (&b, &a, "a") };
    assert!(winner.fence().check().is_ok(), "the winner may write");
    assert!(loser.fence().check().is_err(), "the other may not");
    for _ in 0..3 {
        clock.advance(Duration::from_secs(5));
        let (w, l) = tokio::join!(winner.try_acquire_or_renew(), loser.try_acquire_or_renew());
        assert!(w.unwrap(), "the holder renews");
        assert!(!l.unwrap(), "the other waits while the lease is valid");
    }

    // The winner renews one last time, the other sees that record, then the winner stops.
    assert!(winner.try_acquire_or_renew().await.unwrap());
    assert!(!loser.try_acquire_or_renew().await.unwrap());
    // Its fence closes by itself at the renew deadline (2/3 of the lease)...
    clock.advance(renew_deadline - MS);
    assert!(
        winner.fence().check().is_ok(),
        "open until the renew deadline"
    );
    clock.advance(MS);
    assert!(
        winner.fence().check().is_err(),
        "closed at the renew deadline"
    );
    // ...a third of a lease before the other may take over: only once the record has stood
    // unchanged for a whole lease duration by its own observation.
    clock.advance(UNIT_LEASE - renew_deadline - MS);
    assert!(
        !loser.try_acquire_or_renew().await.unwrap(),
        "not a millisecond before the lease expired"
    );
    clock.advance(MS);
    assert!(
        loser.try_acquire_or_renew().await.unwrap(),
        "the other candidate takes over at expiry"
    );
    let leases: Api<Lease> = env.api();
    let lease = leases.get("unit-lease").await.unwrap();
    assert_eq!(holder(&lease).as_deref(), Some(loser_id));
    assert_eq!(lease.spec.unwrap().lease_transitions, Some(1));
    assert!(
        !winner.try_acquire_or_renew().await.unwrap(),
        "the old holder has lost it"
    );

    // release() hands over at once: the next attempt, with no time passed, wins.
    loser.release().await;
    assert!(loser.fence().check().is_err(), "released: no more writes");
    assert!(
        winner.try_acquire_or_renew().await.unwrap(),
        "a released lease is free at once"
    );
    let lease = leases.get("unit-lease").await.unwrap();
    assert_ne!(holder(&lease).as_deref(), Some(loser_id));
}

#[tokio::test]
async fn a_renew_time_from_a_skewed_clock_does_not_let_a_standby_take_a_live_lease() {
    let env = TestEnv::start().await;
    let leases: Api<Lease> = env.api();
    let clock = Clock::frozen();
    // The holder's clock is an hour behind ours: by renewTime its lease expired long ago.
    let skewed = clock.now() - k8s_openapi::jiff::SignedDuration::from_hours(1);
    let lease_seconds = i32::try_from(UNIT_LEASE.as_secs()).unwrap();
    let mut lease = leases
        .create(
            &PostParams::default(),
            &Lease {
                metadata: ObjectMeta {
                    name: Some("skew-lease".into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some("other".into()),
                    lease_duration_seconds: Some(lease_seconds),
                    renew_time: Some(MicroTime(skewed)),
                    ..Default::default()
                }),
            },
        )
        .await
        .unwrap();
    let me = elector(&env, "me", "skew-lease", &clock);
    assert!(
        !me.try_acquire_or_renew().await.unwrap(),
        "a live holder is respected"
    );

    // The holder keeps renewing (with its skewed clock) every 10 s for two lease durations.
    let period = Duration::from_secs(10);
    for _ in 0..6 {
        clock.advance(period);
        let spec = lease.spec.as_mut().unwrap();
        let t = spec.renew_time.as_ref().unwrap().0;
        spec.renew_time = Some(MicroTime(
            t + k8s_openapi::jiff::SignedDuration::try_from(period).unwrap(),
        ));
        lease = leases
            .replace("skew-lease", &PostParams::default(), &lease)
            .await
            .unwrap();
        assert!(
            !me.try_acquire_or_renew().await.unwrap(),
            "the record changes, so the holder is alive"
        );
    }
    // It stops: the standby takes over a lease duration after it first saw the last record.
    clock.advance(UNIT_LEASE - MS);
    assert!(!me.try_acquire_or_renew().await.unwrap(), "not before");
    clock.advance(MS);
    assert!(
        me.try_acquire_or_renew().await.unwrap(),
        "takes over once the record stood still for a lease duration"
    );
    let lease = leases.get("skew-lease").await.unwrap();
    assert_eq!(holder(&lease).as_deref(), Some("me"));
}

/// The Deployment controller's rolling update, reduced to what decides whether it completes: pods
/// are created while `total < replicas + max_surge`, an old pod is deleted while the ready pods
/// stay at least `replicas - max_unavailable`. One pod leads; a new pod is ready when it leads, or
/// when a standby counts as ready. Returns whether every old pod was replaced.
fn rollout_completes(
    replicas: u32,
    max_surge: u32,
    max_unavailable: u32,
    standby_ready: bool,
) -> bool {
    let (mut old, mut new, mut new_leads) = (replicas, 0u32, false);
    for _ in 0..100 {
        if old == 0 && new == replicas {
            return true;
        }
        let new_ready = if standby_ready {
            new
        } else {
            u32::from(new_leads && new > 0)
        };
        let ready = old + new_ready;
        if old + new < replicas + max_surge && new < replicas {
            new += 1;
        } else if old > 0 && ready > replicas.saturating_sub(max_unavailable) {
            old -= 1;
            // The leader among the old pods stops last or first; either way, once no old pod is
            // left to lead, a new pod takes the Lease (it released, or expired).
            if old == 0 {
                new_leads = true;
            }
        } else {
            return false;
        }
    }
    false
}

#[test]
fn the_manifests_strategy_completes_a_rolling_update_with_one_replica_and_with_two() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let chart: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("charts/konnect-sa-operator/values.yaml")).unwrap(),
    )
    .unwrap();
    let manager: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("config/manager/manager.yaml")).unwrap(),
    )
    .unwrap();
    let template =
        std::fs::read_to_string(root.join("charts/konnect-sa-operator/templates/deployment.yaml"))
            .unwrap();
    assert!(
        template.contains(".Values.strategy"),
        "the chart's Deployment uses the strategy value"
    );
    for (source, strategy) in [
        ("chart", &chart["strategy"]),
        ("config/", &manager["spec"]["strategy"]),
    ] {
        assert_eq!(strategy["type"].as_str(), Some("RollingUpdate"), "{source}");
        let surge = strategy["rollingUpdate"]["maxSurge"].as_u64().unwrap() as u32;
        let unavailable = strategy["rollingUpdate"]["maxUnavailable"]
            .as_u64()
            .unwrap() as u32;
        for replicas in [1, 2] {
            assert!(
                rollout_completes(replicas, surge, unavailable, true),
                "{source}: a rolling update of {replicas} replica(s) completes"
            );
            // What it was before a standby was ready: the update never completed.
            assert!(
                !rollout_completes(replicas, surge, unavailable, false),
                "{source}: the model shows the old deadlock too"
            );
        }
    }
}

/// The fence itself, on both clients: closed, a write is refused before it leaves the process (the
/// stand-in and the simulator never see it) and a read goes through; open, both go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_closed_fence_refuses_kubernetes_and_konnect_writes_and_lets_reads_through() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use konnect_sa_operator::fence::{Fence, fenced_client};
    use konnect_sa_operator::konnect::{
        AccountFilter, ClientConfig, CreateSystemAccount, KonnectClient,
    };

    let env = TestEnv::start().await;
    let fence = Fence::closed();
    let maps: Api<ConfigMap> = Api::namespaced(fenced_client(env.client(), fence.clone()), NS);
    let mut config = ClientConfig::new(env.sim.base_url(), env.sim.admin_token());
    config.write_gate = Some(std::sync::Arc::new(fence.clone()));
    let konnect = KonnectClient::new(config).unwrap();
    let map = ConfigMap {
        metadata: ObjectMeta {
            name: Some("fenced".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let account = CreateSystemAccount {
        name: "fenced".into(),
        description: "fence test".into(),
        konnect_managed: None,
    };
    env.kube.reset_request_counts();
    env.sim.reset_counts();

    let refused = maps.create(&PostParams::default(), &map).await;
    assert!(refused.is_err(), "a Kubernetes write with the fence closed");
    assert_eq!(env.kube.request_count("create"), 0, "never sent");
    assert!(maps.list(&Default::default()).await.is_ok(), "reads pass");
    let refused = konnect.create_system_account(&account).await;
    assert!(
        matches!(
            refused,
            Err(konnect_sa_operator::konnect::KonnectError::Fenced(_))
        ),
        "{refused:?}"
    );
    assert_eq!(
        env.sim.counts().get("post-system-accounts"),
        None,
        "never sent"
    );
    assert!(
        konnect
            .list_system_accounts(&AccountFilter::default())
            .await
            .is_ok()
    );

    fence.extend_to(Instant::now() + Duration::from_secs(60));
    maps.create(&PostParams::default(), &map).await.unwrap();
    konnect.create_system_account(&account).await.unwrap();
    assert_eq!(env.kube.request_count("create"), 1);
    assert_eq!(env.sim.counts().get("post-system-accounts"), Some(&1));
}
