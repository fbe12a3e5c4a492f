//! SystemAccountToken controller end to end (API.md "SystemAccountToken" and its invariants): the
//! real controller against the Kubernetes API stand-in and the Konnect simulator. Every `spat_`
//! the operator hands out is checked the way a consumer would: by calling Konnect with it.
mod support;

use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use konnect_sa_operator::api::{SystemAccount, SystemAccountToken};
use konnect_sa_operator::clock::Clock;
use konnect_sa_operator::run::RunArgs;
use serde_json::{Value, json};
use support::metrics::{Scrape, poke_held_back};
use support::{NS, TestEnv, delete, eventually, merge_patch, ready_of, wait_for};

const T: Duration = Duration::from_secs(30);

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
}

/// The operator running in this process, with its own flags (the shared helper fixes some); its failure
/// fails the test where it happens (support/operator.rs).
struct Operator {
    process: support::operator::InProcess,
    metrics_port: u16,
}

impl Operator {
    async fn start(env: &TestEnv, resync: &str) -> Operator {
        Self::start_with_clock(env, resync, Clock::default()).await
    }

    /// With the controllers reading the time from `clock` (a test runs it ahead).
    async fn start_with_clock(env: &TestEnv, resync: &str, clock: Clock) -> Operator {
        // A free port for /metrics: bind, read, release.
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let metrics_addr = format!("127.0.0.1:{metrics_port}");
        let mut args = Cli::try_parse_from([
            "run",
            "--konnect-url",
            &env.sim.base_url(),
            "--metrics-addr",
            &metrics_addr,
            "--resync-period",
            resync,
        ])
        .expect("valid flags")
        .run;
        args.clock = clock;
        let process = env.spawn_in_process(env.sim.admin_token(), args);
        Operator {
            process,
            metrics_port,
        }
    }

    async fn stop(self) {
        self.process.stop().await;
    }

    /// Waits until the operator has reconciled SystemAccountTokens twice more (its reconcile counter): a
    /// change the test made has been looked at and a resync has looked again, so a "nothing happened"
    /// check rests on what the operator recorded, not on a fixed sleep (and fails against a dead one).
    async fn settled(&self) {
        let count = |m: &str| {
            support::env::metric_total(m, |l| {
                l.starts_with("konnect_sa_reconciles_total") && l.contains("SystemAccountToken")
            })
        };
        let start = count(&self.metrics().await);
        let deadline = tokio::time::Instant::now() + T;
        loop {
            support::operator::check_operators();
            if count(&self.metrics().await) >= start + 2 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the operator reconciles again"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn scrape(&self) -> Scrape {
        Scrape::at(&format!("127.0.0.1:{}", self.metrics_port))
    }

    /// Wakes the failing token `name` during its backoff and waits until the operator held it back.
    async fn poke(&self, env: &TestEnv, name: &str) {
        let api = env.api::<SystemAccountToken>();
        poke_held_back(&self.scrape(), &api, name, "SystemAccountToken").await;
    }

    /// Wakes the healthy token `name` (a label change) and waits until a reconcile of it has finished: a
    /// look the operator took after the test's last move (e.g. running its clock ahead).
    async fn wake(&self, env: &TestEnv, name: &str) {
        let metric = "konnect_sa_reconciles_total";
        let kind = [("kind", "SystemAccountToken")];
        let before = self.scrape().value(metric, &kind).await;
        let poke = uuid::Uuid::new_v4().simple().to_string();
        merge_patch(
            &env.api::<SystemAccountToken>(),
            name,
            json!({"metadata": {"labels": {"test.konnect-sa.dev/poke": poke}}}),
        )
        .await;
        self.scrape().wait_at_least(metric, &kind, before + 1).await;
    }

    async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        match reqwest::get(&url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }
}

fn account_yaml(name: &str) -> String {
    format!(
        r#"
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {{name: {name}}}
spec: {{description: token tests}}
"#
    )
}

/// A token CR; `extra` is more of its spec, as YAML lines indented by two spaces.
fn token_yaml(name: &str, account: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccountToken
metadata: {{name: {name}}}
spec:
  systemAccountRef: {{name: {account}}}
{extra}
"#
    )
}

fn status(t: &SystemAccountToken) -> konnect_sa_operator::api::SystemAccountTokenStatus {
    t.status.clone().unwrap_or_default()
}

fn ready(t: &SystemAccountToken) -> bool {
    let s = status(t);
    ready_of(&s.conditions).is_some_and(|(st, _, _)| st == "True")
        && s.observed_generation == t.metadata.generation
}

fn ready_at(t: &SystemAccountToken, revision: i64) -> bool {
    ready(t) && status(t).revision == Some(revision)
}

fn reason(t: &SystemAccountToken) -> Option<String> {
    ready_of(&status(t).conditions).map(|(_, r, _)| r)
}

fn account_ready(a: &SystemAccount) -> bool {
    let s = a.status.clone().unwrap_or_default();
    ready_of(&s.conditions).is_some_and(|(st, _, _)| st == "True")
        && s.observed_generation == a.metadata.generation
}

/// Applies an account and waits until it exists in Konnect; returns its Konnect id.
async fn ready_account(env: &TestEnv, name: &str) -> String {
    env.apply(&account_yaml(name));
    let sa = wait_for(&env.api::<SystemAccount>(), name, T, account_ready).await;
    sa.status.unwrap().id.unwrap()
}

/// The token value in a Secret (key `token`).
fn value_of(s: &Secret) -> String {
    let bytes = s
        .data
        .as_ref()
        .and_then(|d| d.get("token"))
        .expect("Secret has key token")
        .0
        .clone();
    String::from_utf8(bytes).unwrap()
}

fn annotation(s: &Secret, key: &str) -> Option<String> {
    s.metadata.annotations.as_ref()?.get(key).cloned()
}

async fn secret(env: &TestEnv, name: &str) -> Option<Secret> {
    env.api::<Secret>().get_opt(name).await.unwrap()
}

/// HTTP status of `GET /v3/organizations/me` with the token: 200 when Konnect accepts it.
async fn auth_status(env: &TestEnv, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/v3/organizations/me", env.sim.base_url()))
        .bearer_auth(token)
        .send()
        .await
        .expect("simulator answers")
        .status()
        .as_u16()
}

async fn eventually_async<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Invariant 3: no token value in any Event or in any of our objects (status included), and
/// every token Konnect knows still has a value nobody printed.
/// No issued value, raw, base64 or as bytes, in a captured log, an Event or an object (support/leak.rs).
fn assert_no_token_value_exposed(env: &TestEnv) {
    // The scan covers the in-process operator's own lines, at trace, in both formats.
    let log = support::logs::captured();
    assert!(
        log.contains("TRACE") && log.contains("\"target\":\"konnect_sa_operator"),
        "the in-process operator's logs are captured (text and JSON)"
    );
    env.assert_no_token_leak();
}

fn parse_ts(s: &Option<String>) -> Timestamp {
    s.as_deref()
        .expect("timestamp set")
        .parse()
        .expect("RFC 3339")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_lands_in_an_owned_secret_and_authenticates() {
    let env = TestEnv::start().await;
    let op = Operator::start(&env, "3s").await;
    let account_id = ready_account(&env, "ci-bot").await;
    env.apply(&token_yaml(
        "ci-bot-token",
        "ci-bot",
        r#"  secretTemplate:
    labels: {konghq.com/credential: konnect}
    annotations: {reloader.stakater.com/match: "true"}"#,
    ));
    let api = env.api::<SystemAccountToken>();
    let tok = wait_for(&api, "ci-bot-token", T, |t| ready_at(t, 1)).await;
    let st = status(&tok);
    let s = secret(&env, "ci-bot-token").await.expect("Secret created");

    // The Secret: Opaque, key token, annotations, label, controller ownerReference, template.
    assert_eq!(s.type_.as_deref(), Some("Opaque"));
    let value = value_of(&s);
    assert!(value.starts_with("spat_"), "a system account token");
    assert_eq!(
        annotation(&s, "konnect-sa.dev/token-id"),
        st.token_id,
        "Secret names the token in status"
    );
    assert_eq!(
        annotation(&s, "konnect-sa.dev/revision").as_deref(),
        Some("1")
    );
    assert_eq!(annotation(&s, "konnect-sa.dev/expires-at"), st.expires_at);
    assert_eq!(
        annotation(&s, "reloader.stakater.com/match").as_deref(),
        Some("true")
    );
    let labels = s.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("konnect-sa-operator")
    );
    assert_eq!(
        labels.get("konghq.com/credential").map(String::as_str),
        Some("konnect")
    );
    let owners = s.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].kind, "SystemAccountToken");
    assert_eq!(owners[0].name, "ci-bot-token");
    assert_eq!(Some(owners[0].uid.clone()), tok.metadata.uid);
    assert_eq!(owners[0].controller, Some(true));

    // The value works against Konnect; it is the one token of this account.
    assert_eq!(auth_status(&env, &value).await, 200);
    assert_eq!(auth_status(&env, "spat_not-a-real-token").await, 401);
    let live = env.sim.live_tokens(&account_id);
    assert_eq!(live.len(), 1);
    assert_eq!(Some(live[0].id.clone()), st.token_id);
    assert_eq!(Some(live[0].name.clone()), st.token_name);
    // <namespace>.<name>.<uid prefix>.r<revision>: unique per object, so another cluster's or a
    // recreated object's token of the same name is never taken for this one's.
    let uid_prefix: String = tok
        .metadata
        .uid
        .clone()
        .unwrap()
        .replace('-', "")
        .chars()
        .take(8)
        .collect();
    assert_eq!(
        st.token_name.clone(),
        Some(format!("platform.ci-bot-token.{uid_prefix}.r1"))
    );

    // Status: id, expiry (default 2160h), renewal before it, revision 1.
    let expires = parse_ts(&st.expires_at);
    let renewal = parse_ts(&st.renewal_time);
    let issued = parse_ts(&st.last_rotation_time);
    assert_eq!(
        expires.duration_since(issued).as_secs(),
        2160 * 3600,
        "default duration"
    );
    assert!(renewal < expires && renewal > issued);
    // Default renewBefore is duration/3 (plus at most 5 min of jitter).
    let ahead = expires.duration_since(renewal).as_secs();
    assert!(
        (720 * 3600..=720 * 3600 + 300).contains(&ahead),
        "renews 720h (+jitter) before expiry, got {ahead}s"
    );
    assert!(
        tok.metadata
            .finalizers
            .clone()
            .unwrap_or_default()
            .contains(&"konnect-sa.dev/cleanup".to_string())
    );

    // Printer columns: Expires and Renewal read the status fields just checked.
    let crd = std::fs::read_to_string(
        support::env::crate_dir().join("crds/systemaccounttokens.konnect-sa.dev.yaml"),
    )
    .unwrap();
    let crd: Value = serde_yaml::from_str(&crd).unwrap();
    let cols = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .expect("printer columns")
        .clone();
    let col = |n: &str| {
        cols.iter()
            .find(|c| c["name"] == n)
            .unwrap_or_else(|| panic!("column {n}"))["jsonPath"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(col("Expires"), ".status.expiresAt");
    assert_eq!(col("Renewal"), ".status.renewalTime");
    let names: Vec<&str> = cols.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(
        names,
        ["Account", "Ready", "Expires", "Renewal", "Secret", "Age"]
    );
    let raw = env
        .kube
        .get(
            "konnect-sa.dev",
            "v1alpha1",
            "systemaccounttokens",
            NS,
            "ci-bot-token",
        )
        .unwrap();
    assert_eq!(
        raw["status"]["expiresAt"].as_str(),
        st.expires_at.as_deref()
    );
    assert_eq!(
        raw["status"]["renewalTime"].as_str(),
        st.renewal_time.as_deref()
    );

    // Metrics: the expiry gauge for this CR, with the status' expiry.
    let want: f64 = expires.as_second() as f64;
    let gauge = |text: &str| {
        text.lines().any(|l| {
            l.starts_with("konnect_sa_token_expiration_timestamp_seconds{")
                && l.contains("name=\"ci-bot-token\"")
                && l.contains(&format!("namespace=\"{NS}\""))
                && l.split_whitespace()
                    .last()
                    .and_then(|v| v.parse::<f64>().ok())
                    == Some(want)
        })
    };
    let deadline = Instant::now() + T;
    let mut last = op.metrics().await;
    while !gauge(&last) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        last = op.metrics().await;
    }
    let found = gauge(&last);
    assert!(found, "expiry gauge for the CR in /metrics:\n{last}");
    support::leak::assert_clean(&env.token_values(), &last, "/metrics");
    assert_no_token_value_exposed(&env);
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotate_annotation_rotates_once_per_new_value() {
    let env = TestEnv::start().await;
    let op = Operator::start(&env, "3s").await;
    let account_id = ready_account(&env, "manual").await;
    env.apply(&token_yaml(
        "manual-token",
        "manual",
        "  previousTokenRetention: 0s",
    ));
    let api = env.api::<SystemAccountToken>();
    wait_for(&api, "manual-token", T, |t| ready_at(t, 1)).await;
    let rotate = |v: &str| json!({"metadata": {"annotations": {"konnect-sa.dev/rotate": v}}});

    merge_patch(&api, "manual-token", rotate("now")).await;
    let tok = wait_for(&api, "manual-token", T, |t| ready_at(t, 2)).await;
    let s = secret(&env, "manual-token").await.unwrap();
    assert_eq!(
        annotation(&s, "konnect-sa.dev/token-id"),
        status(&tok).token_id
    );
    assert_eq!(auth_status(&env, &value_of(&s)).await, 200);
    assert!(
        eventually(T, || env.sim.live_tokens(&account_id).len() == 1).await,
        "retention 0s: the old token is revoked at once"
    );

    // The same value again (a re-apply of the same manifest) does not rotate ...
    merge_patch(&api, "manual-token", rotate("now")).await;
    // ... an unrelated metadata change neither, however often the operator looks again.
    merge_patch(
        &api,
        "manual-token",
        json!({"metadata": {"labels": {"team": "ci"}}}),
    )
    .await;
    op.settled().await;
    let tok = api.get("manual-token").await.unwrap();
    assert_eq!(status(&tok).revision, Some(2), "same value: no rotation");

    // A new value rotates once more.
    merge_patch(&api, "manual-token", rotate("again")).await;
    wait_for(&api, "manual-token", T, |t| ready_at(t, 3)).await;
    op.settled().await;
    let tok = api.get("manual-token").await.unwrap();
    assert_eq!(status(&tok).revision, Some(3), "one rotation per value");
    assert_eq!(env.sim.live_tokens(&account_id).len(), 1);
    assert_no_token_value_exposed(&env);
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleted_secret_gets_a_new_token_and_the_old_one_keeps_its_overlap() {
    let env = TestEnv::start().await;
    let op = Operator::start(&env, "3s").await;
    let account_id = ready_account(&env, "lost").await;
    env.apply(&token_yaml(
        "lost-token",
        "lost",
        "  previousTokenRetention: 6s",
    ));
    let api = env.api::<SystemAccountToken>();
    let tok = wait_for(&api, "lost-token", T, |t| ready_at(t, 1)).await;
    let old = value_of(&secret(&env, "lost-token").await.unwrap());

    delete(&env.api::<Secret>(), "lost-token").await;
    let tok2 = wait_for(&api, "lost-token", T, |t| ready_at(t, 2)).await;
    assert_ne!(status(&tok2).token_id, status(&tok).token_id);
    let s = secret(&env, "lost-token").await.expect("Secret recreated");
    let new = value_of(&s);
    assert_ne!(new, old);
    assert_eq!(
        annotation(&s, "konnect-sa.dev/revision").as_deref(),
        Some("2")
    );
    assert_eq!(auth_status(&env, &new).await, 200);
    // A consumer that read the old value before the Secret went keeps working for the retention
    // (no outage for a deleted or moved Secret), then the old token is revoked.
    assert_eq!(
        auth_status(&env, &old).await,
        200,
        "the old token keeps its overlap"
    );
    let previous = &status(&tok2).previous_tokens;
    assert_eq!(previous.len(), 1);
    assert_eq!(Some(&previous[0].id), status(&tok).token_id.as_ref());
    let revoke_at = previous[0].revoke_at.parse::<Timestamp>().unwrap();
    let rotated = parse_ts(&status(&tok2).last_rotation_time);
    assert!(
        revoke_at.duration_since(rotated).as_secs() >= 5,
        "revokeAt {revoke_at} is the retention after {rotated}"
    );
    assert!(
        eventually(T, || env.sim.live_tokens(&account_id).len() == 1).await,
        "old token revoked after the retention: {:?}",
        env.sim.live_tokens(&account_id)
    );
    assert_eq!(auth_status(&env, &old).await, 401);
    assert_eq!(
        Some(env.sim.live_tokens(&account_id)[0].id.clone()),
        status(&tok2).token_id
    );
    assert_no_token_value_exposed(&env);
    op.stop().await;
}

/// GitOps edits of where the token goes: a `secretKey` move keeps the old key with the old token,
/// a `secretName` move keeps the old Secret with it, both for the retention (pods still on the old
/// place keep working); then the old token is revoked and its key or Secret goes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moving_the_secret_or_its_key_keeps_the_old_place_for_the_retention_then_cleans_it_up() {
    let env = TestEnv::start().await;
    let op = Operator::start(&env, "3s").await;
    let account_id = ready_account(&env, "mover").await;
    env.apply(&token_yaml(
        "move-token",
        "mover",
        "  previousTokenRetention: 4s",
    ));
    let api = env.api::<SystemAccountToken>();
    wait_for(&api, "move-token", T, |t| ready_at(t, 1)).await;
    let first = value_of(&secret(&env, "move-token").await.unwrap());

    // 1. secretKey: token -> api-token.
    merge_patch(
        &api,
        "move-token",
        json!({"spec": {"secretKey": "api-token"}}),
    )
    .await;
    let tok = wait_for(&api, "move-token", T, |t| ready_at(t, 2)).await;
    assert_eq!(status(&tok).secret_key.as_deref(), Some("api-token"));
    let s = secret(&env, "move-token").await.unwrap();
    let data = s.data.clone().unwrap();
    let second = String::from_utf8(data["api-token"].0.clone()).unwrap();
    assert_eq!(
        String::from_utf8(data["token"].0.clone()).unwrap(),
        first,
        "the old key keeps the old token during the retention"
    );
    assert_eq!(auth_status(&env, &first).await, 200);
    assert_eq!(auth_status(&env, &second).await, 200);
    let gone = eventually_async(T, || {
        let env = &env;
        async move {
            secret(env, "move-token")
                .await
                .is_some_and(|s| !s.data.unwrap_or_default().contains_key("token"))
        }
    })
    .await;
    assert!(gone, "the old key is removed once its token is revoked");
    assert_eq!(auth_status(&env, &first).await, 401);
    assert_eq!(auth_status(&env, &second).await, 200);

    // 2. secretName: move-token -> moved-token.
    merge_patch(
        &api,
        "move-token",
        json!({"spec": {"secretName": "moved-token"}}),
    )
    .await;
    let tok = wait_for(&api, "move-token", T, |t| ready_at(t, 3)).await;
    assert_eq!(status(&tok).secret_name.as_deref(), Some("moved-token"));
    let third = value_of_key(&secret(&env, "moved-token").await.unwrap(), "api-token");
    let old = secret(&env, "move-token")
        .await
        .expect("the old Secret stays for the retention");
    assert_eq!(value_of_key(&old, "api-token"), second);
    assert_eq!(auth_status(&env, &second).await, 200);
    let gone = eventually_async(T, || {
        let env = &env;
        async move { secret(env, "move-token").await.is_none() }
    })
    .await;
    assert!(gone, "the old Secret is deleted once its token is revoked");
    assert_eq!(auth_status(&env, &second).await, 401);
    assert_eq!(auth_status(&env, &third).await, 200);
    assert_eq!(
        env.sim
            .live_tokens(&account_id)
            .into_iter()
            .map(|t| Some(t.id))
            .collect::<Vec<_>>(),
        vec![status(&tok).token_id],
        "only the current token is live"
    );
    // Nothing more happens: no rotation from the cleanup.
    let tok = wait_for(&api, "move-token", T, |t| ready_at(t, 3)).await;
    assert!(status(&tok).previous_tokens.is_empty());
    assert_no_token_value_exposed(&env);
    op.stop().await;
}

fn value_of_key(s: &Secret, key: &str) -> String {
    String::from_utf8(s.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn foreign_secret_is_never_overwritten() {
    let env = TestEnv::start().await;
    let op = Operator::start(&env, "3s").await;
    let account_id = ready_account(&env, "clash").await;
    env.apply(
        r#"
apiVersion: v1
kind: Secret
metadata: {name: taken, labels: {app.kubernetes.io/managed-by: konnect-sa-operator}}
stringData: {token: someone-elses}
"#,
    );
    let before = secret(&env, "taken").await.unwrap();
    env.apply(&token_yaml("clash-token", "clash", "  secretName: taken"));
    let api = env.api::<SystemAccountToken>();
    let tok = wait_for(&api, "clash-token", T, |t| {
        reason(t).as_deref() == Some("SecretConflict")
    })
    .await;
    let (st, _, msg) = ready_of(&status(&tok).conditions).unwrap();
    assert_eq!(st, "False");
    assert!(msg.contains("taken"), "{msg}");
    // Woken again during its backoff: still nothing issued, the Secret untouched.
    op.poke(&env, "clash-token").await;
    let after = secret(&env, "taken").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );
    assert_eq!(value_of(&after), "someone-elses");
    assert!(env.sim.live_tokens(&account_id).is_empty());
    assert_eq!(
        env.sim
            .counts()
            .get("post-system-accounts-id-access-tokens")
            .copied()
            .unwrap_or(0),
        0,
        "nothing issued: {:?}",
        env.sim.counts()
    );
    assert_eq!(status(&tok).token_id, None);
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_waits_for_its_account_and_is_woken_by_the_watch() {
    let env = TestEnv::start().await;
    // Resync 10m: only the account watch can explain a prompt issue.
    let op = Operator::start(&env, "10m").await;
    env.apply(&token_yaml("early-token", "early", ""));
    let api = env.api::<SystemAccountToken>();
    let tok = wait_for(&api, "early-token", T, |t| {
        reason(t).as_deref() == Some("WaitingForSystemAccount")
    })
    .await;
    assert_eq!(ready_of(&status(&tok).conditions).unwrap().0, "False");
    assert!(secret(&env, "early-token").await.is_none());

    env.apply(&account_yaml("early"));
    // The error backoff for a missing account is 30 s and the resync 10 m: only the watch of the
    // account can make the token Ready before this wait gives up.
    wait_for(&api, "early-token", Duration::from_secs(20), |t| {
        ready_at(t, 1)
    })
    .await;
    let s = secret(&env, "early-token").await.expect("Secret");
    assert_eq!(auth_status(&env, &value_of(&s)).await, 200);
    // Waiting was a state, not a failure: no Warning Event about it.
    let waiting: Vec<_> = env
        .kube
        .events()
        .into_iter()
        .filter(|e| e["reason"] == "WaitingForSystemAccount")
        .collect();
    assert!(waiting.is_empty(), "{waiting:#?}");
    op.stop().await;
}

fn deployment(env: &TestEnv, name: &str) -> Value {
    env.kube
        .get("apps", "v1", "deployments", NS, name)
        .expect("deployment exists")
}

fn restarted_at(d: &Value) -> Option<String> {
    d["spec"]["template"]["metadata"]["annotations"]["konnect-sa.dev/restartedAt"]
        .as_str()
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn targets_restart_once_per_revision_and_a_missing_target_is_reported() {
    let env = TestEnv::start().await;
    let mut op = Operator::start(&env, "3s").await;
    ready_account(&env, "runner").await;
    env.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: ci-runner}
spec:
  selector: {matchLabels: {app: ci-runner}}
  template:
    metadata: {labels: {app: ci-runner}}
    spec: {containers: [{name: runner, image: busybox}]}
"#,
    );
    env.apply(&token_yaml(
        "runner-token",
        "runner",
        r#"  rolloutRestartTargets:
    - {kind: Deployment, name: ci-runner}
    - {kind: Deployment, name: not-there}"#,
    ));
    let api = env.api::<SystemAccountToken>();
    let tok = wait_for(&api, "runner-token", T, |t| ready_at(t, 1)).await;
    let st = status(&tok);
    let d = deployment(&env, "ci-runner");
    assert_eq!(
        restarted_at(&d),
        Some(format!("{}/r1", st.last_rotation_time.clone().unwrap())),
        "restarted for revision 1"
    );

    // The missing target: a Warning Event and a condition; the token itself is Ready.
    let cond = st
        .conditions
        .iter()
        .find(|c| c.type_ == "RestartTargetsReady")
        .expect("RestartTargetsReady condition");
    assert_eq!(cond.status, "False");
    assert_eq!(cond.reason, "TargetNotFound");
    assert!(cond.message.contains("not-there"), "{}", cond.message);
    let warned = eventually(T, || {
        env.kube.events().iter().any(|e| {
            e["type"] == "Warning"
                && e.to_string().contains("not-there")
                && e.to_string().contains("runner-token")
        })
    })
    .await;
    assert!(warned, "Warning Event: {:#?}", env.kube.events());

    // Revision 2 restarts once more with a new stamp.
    merge_patch(
        &api,
        "runner-token",
        json!({"metadata": {"annotations": {"konnect-sa.dev/rotate": "r2"}}}),
    )
    .await;
    let tok = wait_for(&api, "runner-token", T, |t| ready_at(t, 2)).await;
    let d2 = deployment(&env, "ci-runner");
    assert_eq!(
        restarted_at(&d2),
        Some(format!("{}/r2", status(&tok).last_rotation_time.unwrap())),
        "restarted for revision 2, even within the same second"
    );
    assert_ne!(restarted_at(&d2), restarted_at(&d));
    let generation = d2["metadata"]["generation"].clone();
    let rv = d2["metadata"]["resourceVersion"].clone();

    // An operator restart does not restart the targets again.
    op.stop().await;
    env.kube.reset_request_counts();
    op = Operator::start(&env, "3s").await;
    // Wait until the new operator has reconciled the token (it reads the Secret), then some.
    assert!(
        env.kube
            .wait_until(T, |k| k.request_count_for("get", "secrets") >= 2)
            .await
    );
    op.settled().await;
    let d3 = deployment(&env, "ci-runner");
    assert_eq!(d3["metadata"]["resourceVersion"], rv);
    assert_eq!(d3["metadata"]["generation"], generation);
    assert_eq!(env.kube.request_count_for("patch", "deployments"), 0);
    assert_eq!(
        status(&api.get("runner-token").await.unwrap()).revision,
        Some(2)
    );
    assert_no_token_value_exposed(&env);
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_the_token_revokes_everything_unless_orphaned() {
    let env = TestEnv::start().await;
    let op = Operator::start(&env, "3s").await;
    let account_id = ready_account(&env, "gone").await;
    let api = env.api::<SystemAccountToken>();

    // Delete: current and previous (still within its retention) tokens are revoked.
    env.apply(&token_yaml(
        "doomed",
        "gone",
        "  previousTokenRetention: 1h",
    ));
    wait_for(&api, "doomed", T, |t| ready_at(t, 1)).await;
    merge_patch(
        &api,
        "doomed",
        json!({"metadata": {"annotations": {"konnect-sa.dev/rotate": "x"}}}),
    )
    .await;
    wait_for(&api, "doomed", T, |t| ready_at(t, 2)).await;
    assert_eq!(env.sim.live_tokens(&account_id).len(), 2, "old kept for 1h");
    delete(&api, "doomed").await;
    assert!(
        eventually(T, || env
            .kube
            .get(
                "konnect-sa.dev",
                "v1alpha1",
                "systemaccounttokens",
                NS,
                "doomed"
            )
            .is_none())
        .await,
        "finalizer removed"
    );
    assert_eq!(
        env.sim.live_tokens(&account_id).len(),
        0,
        "every token of the CR revoked"
    );

    // Orphan: the token stays live and the Secret stays, without our ownerReference.
    env.apply(&token_yaml("kept", "gone", "  deletionPolicy: Orphan"));
    let tok = wait_for(&api, "kept", T, |t| ready_at(t, 1)).await;
    delete(&api, "kept").await;
    assert!(
        eventually(T, || env
            .kube
            .get(
                "konnect-sa.dev",
                "v1alpha1",
                "systemaccounttokens",
                NS,
                "kept"
            )
            .is_none())
        .await,
        "finalizer removed"
    );
    let s = secret(&env, "kept").await.expect("Secret kept");
    assert!(
        s.metadata
            .owner_references
            .clone()
            .unwrap_or_default()
            .iter()
            .all(|r| Some(r.uid.clone()) != tok.metadata.uid),
        "ownerReference dropped: {:?}",
        s.metadata.owner_references
    );
    let live = env.sim.live_tokens(&account_id);
    assert_eq!(live.len(), 1);
    assert_eq!(Some(live[0].id.clone()), status(&tok).token_id);
    assert_eq!(auth_status(&env, &value_of(&s)).await, 200);
    assert_no_token_value_exposed(&env);
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn account_recreated_in_konnect_gets_a_new_token() {
    let env = TestEnv::start().await;
    let op = Operator::start(&env, "3s").await;
    let old_account = ready_account(&env, "phoenix").await;
    env.apply(&token_yaml("phoenix-token", "phoenix", ""));
    let api = env.api::<SystemAccountToken>();
    wait_for(&api, "phoenix-token", T, |t| ready_at(t, 1)).await;

    // Someone deletes the account in Konnect (its tokens go with it).
    let resp = reqwest::Client::new()
        .delete(format!(
            "{}/v3/system-accounts/{old_account}",
            env.sim.base_url()
        ))
        .bearer_auth(env.sim.admin_token().expose())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());

    let sa = wait_for(&env.api::<SystemAccount>(), "phoenix", T, |a| {
        account_ready(a) && a.status.as_ref().unwrap().id.as_deref() != Some(&old_account)
    })
    .await;
    let new_account = sa.status.unwrap().id.unwrap();
    let tok = wait_for(&api, "phoenix-token", T, |t| {
        ready(t) && status(t).account_id.as_deref() == Some(new_account.as_str())
    })
    .await;
    assert_eq!(status(&tok).revision, Some(2));
    let s = secret(&env, "phoenix-token").await.unwrap();
    assert_eq!(
        annotation(&s, "konnect-sa.dev/account-id").as_deref(),
        Some(new_account.as_str())
    );
    assert_eq!(auth_status(&env, &value_of(&s)).await, 200);
    let live = env.sim.live_tokens(&new_account);
    assert_eq!(live.len(), 1);
    assert_eq!(Some(live[0].id.clone()), status(&tok).token_id);
    // The old account's previous token is gone with its account: nothing left to revoke.
    let st = status(
        &wait_for(&api, "phoenix-token", T, |t| {
            status(t).previous_tokens.is_empty()
        })
        .await,
    );
    assert!(st.previous_tokens.is_empty());
    assert_no_token_value_exposed(&env);
    op.stop().await;
}

/// Creates a token directly in Konnect (what a create call the operator never saw answered does).
async fn create_in_konnect(
    env: &TestEnv,
    account_id: &str,
    name: &str,
    issued: Timestamp,
) -> (String, String) {
    let expires = issued
        .checked_add(Duration::from_secs(2160 * 3600))
        .unwrap();
    let resp: Value = reqwest::Client::new()
        .post(format!(
            "{}/v3/system-accounts/{account_id}/access-tokens",
            env.sim.base_url()
        ))
        .bearer_auth(env.sim.admin_token().expose())
        .json(&json!({"name": name, "expires_at": expires.to_string()}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        resp["id"].as_str().unwrap().to_string(),
        resp["token"].as_str().unwrap().to_string(),
    )
}

fn set_pending(env: &TestEnv, name: &str, pending: &str) {
    env.kube
        .modify_status_raw(
            "konnect-sa.dev",
            "v1alpha1",
            "systemaccounttokens",
            NS,
            name,
            |o| o["status"]["pendingTokenName"] = json!(pending),
        )
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_points_are_healed_without_leaks_or_double_rotation() {
    let env = TestEnv::start().await;
    let op = Operator::start(&env, "3s").await;
    let account_id = ready_account(&env, "healer").await;
    env.apply(&token_yaml(
        "heal-token",
        "healer",
        "  previousTokenRetention: 3s",
    ));
    let api = env.api::<SystemAccountToken>();
    let tok = wait_for(&api, "heal-token", T, |t| ready_at(t, 1)).await;
    let first = status(&tok).token_id.unwrap();
    op.stop().await;

    // Crash after the create call, before the Secret write: Konnect has r2, only its name is
    // recorded. The restarted operator finds it by name and revokes it; r1 stays.
    set_pending(&env, "heal-token", "platform.heal-token.r2");
    let issued = Timestamp::from_second(Timestamp::now().as_second()).unwrap();
    create_in_konnect(&env, &account_id, "platform.heal-token.r2", issued).await;
    assert_eq!(env.sim.live_tokens(&account_id).len(), 2);
    let op = Operator::start(&env, "3s").await;
    let tok = wait_for(&api, "heal-token", T, |t| {
        ready(t) && status(t).pending_token_name.is_none()
    })
    .await;
    assert_eq!(status(&tok).revision, Some(1));
    assert_eq!(status(&tok).token_id.as_deref(), Some(first.as_str()));
    assert!(
        eventually(T, || env.sim.live_tokens(&account_id).len() == 1).await,
        "the unfinished token is revoked: {:?}",
        env.sim.live_tokens(&account_id)
    );
    assert_eq!(env.sim.live_tokens(&account_id)[0].id, first);
    op.stop().await;

    // Crash after the Secret write, before the status write, during a requested rotation: the
    // Secret has r2, the status still says r1. The restart adopts r2, does not rotate again for
    // the same request, and revokes r1 after the retention.
    merge_patch(
        &api,
        "heal-token",
        json!({"metadata": {"annotations": {"konnect-sa.dev/rotate": "now"}}}),
    )
    .await;
    set_pending(&env, "heal-token", "platform.heal-token.r2");
    let issued = Timestamp::from_second(Timestamp::now().as_second()).unwrap();
    let (id2, value2) =
        create_in_konnect(&env, &account_id, "platform.heal-token.r2", issued).await;
    let secrets = env.api::<Secret>();
    let mut s = secrets.get("heal-token").await.unwrap();
    let expires = issued
        .checked_add(Duration::from_secs(2160 * 3600))
        .unwrap();
    s.data.as_mut().unwrap().insert(
        "token".into(),
        k8s_openapi::ByteString(value2.clone().into_bytes()),
    );
    let ann = s.metadata.annotations.as_mut().unwrap();
    for (k, v) in [
        ("konnect-sa.dev/token-id", id2.clone()),
        ("konnect-sa.dev/token-name", "platform.heal-token.r2".into()),
        ("konnect-sa.dev/revision", "2".into()),
        ("konnect-sa.dev/issued-at", issued.to_string()),
        ("konnect-sa.dev/expires-at", expires.to_string()),
        ("konnect-sa.dev/rotated-for", "now".into()),
    ] {
        ann.insert(k.into(), v);
    }
    secrets
        .replace("heal-token", &Default::default(), &s)
        .await
        .unwrap();
    let op = Operator::start(&env, "3s").await;
    let tok = wait_for(&api, "heal-token", T, |t| ready_at(t, 2)).await;
    let st = status(&tok);
    assert_eq!(st.token_id.as_deref(), Some(id2.as_str()));
    assert_eq!(st.last_rotate_annotation.as_deref(), Some("now"));
    assert_eq!(st.pending_token_name, None);
    assert!(
        eventually(T, || env.sim.live_tokens(&account_id).len() == 1).await,
        "r1 revoked after the retention"
    );
    assert_eq!(env.sim.live_tokens(&account_id)[0].id, id2);
    // Past a couple of resyncs: still r2 (one rotation per request), and it works.
    op.settled().await;
    let tok = api.get("heal-token").await.unwrap();
    assert_eq!(status(&tok).revision, Some(2), "no second rotation");
    let s = secret(&env, "heal-token").await.unwrap();
    assert_eq!(value_of(&s), value2);
    assert_eq!(auth_status(&env, &value2).await, 200);
    assert_no_token_value_exposed(&env);
    op.stop().await;
}

/// Konnect token creates so far (the simulator's count of `POST .../access-tokens`).
fn token_creates(env: &TestEnv) -> u64 {
    env.sim
        .counts()
        .get("post-system-accounts-id-access-tokens")
        .copied()
        .unwrap_or(0)
}

/// Secret writes that reached the API server (creates and updates), and the dry runs among them.
fn secret_writes(env: &TestEnv) -> (usize, usize) {
    let writes: Vec<_> = env
        .kube
        .requests()
        .into_iter()
        .filter(|r| r.plural == "secrets" && matches!(r.verb.as_str(), "create" | "update"))
        .collect();
    let dry = writes.iter().filter(|r| r.dry_run).count();
    (writes.len(), dry)
}

/// The Warning Events about `name` with `reason`.
fn warnings(env: &TestEnv, name: &str, reason: &str) -> Vec<Value> {
    env.kube
        .events()
        .into_iter()
        .filter(|e| {
            e["type"] == "Warning"
                && e["reason"] == reason
                && e["regarding"]["name"].as_str() == Some(name)
        })
        .collect()
}

/// Issue: a Secret write the API server refuses for a lasting reason (here an admission policy, with
/// the long message such policies give) created and revoked Konnect tokens about 50 times a second.
/// Now: one token at most (the first attempt cannot know), then a dry run asks the API server before
/// any other token is created, and attempts follow the backoff (30 s, 60 s, ...), not the watch
/// events of the operator's own status writes. The Warning Event arrives, its note within the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_secret_write_creates_no_token_loop_and_retries_on_the_backoff() {
    let env = TestEnv::start().await;
    let clock = Clock::default();
    let op = Operator::start_with_clock(&env, "10m", clock.clone()).await;
    let account_id = ready_account(&env, "policed").await;
    let policy = format!(
        "admission webhook \"secrets.policy.example.com\" denied the request: {}",
        "Secrets in this namespace must carry the label team=platform. ".repeat(30)
    );
    env.kube
        .inject_refusal("create", "secrets", 10_000, 403, &policy);
    let (writes_before, _) = secret_writes(&env);
    env.apply(&token_yaml("policed-token", "policed", ""));
    let api = env.api::<SystemAccountToken>();
    let tok = wait_for(&api, "policed-token", T, |t| {
        reason(t).as_deref() == Some("InvalidSpec")
    })
    .await;
    let (_, _, msg) = ready_of(&status(&tok).conditions).unwrap();
    assert!(
        msg.contains("denied the request"),
        "the API server's words: {msg}"
    );
    assert!(
        !msg.contains("Status {"),
        "no Debug dump of the Status: {msg}"
    );
    assert!(
        eventually(T, || !warnings(&env, "policed-token", "InvalidSpec")
            .is_empty())
        .await,
        "a Warning Event (the real server refuses notes over 1024 bytes): {:#?}",
        env.kube.events()
    );
    let note = warnings(&env, "policed-token", "InvalidSpec")[0]["note"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        note.len() <= 1024 && note.contains("denied the request"),
        "{note}"
    );

    // Woken during the backoff (30 s at first): no more tokens, no more writes.
    let creates = token_creates(&env);
    let (writes, _) = secret_writes(&env);
    op.poke(&env, "policed-token").await;
    // One token at most: the first attempt cannot know (none when an earlier attempt had already
    // failed for another reason, e.g. a stale copy: then the dry run comes first).
    assert!(creates <= 1, "{creates} tokens created");
    assert_eq!(
        token_creates(&env),
        creates,
        "no token created while backing off"
    );
    assert_eq!(
        secret_writes(&env).0,
        writes,
        "no Secret write while backing off"
    );
    assert_eq!(
        writes - writes_before,
        1,
        "one Secret write (or dry run) so far"
    );
    // The one token issued never reached anyone: revoked.
    assert!(env.sim.live_tokens(&account_id).is_empty());

    // The retry after the backoff asks with a dry run first: still no second token. The
    // operator's clock is run past any backoff (at most 5 minutes, plus 10% jitter) and the
    // object woken, instead of waiting for the requeue in real time.
    clock.advance(Duration::from_secs(360));
    op.wake(&env, "policed-token").await;
    // Well within the real backoff (30 s at least): only the clock can explain a retry now.
    assert!(
        eventually(Duration::from_secs(10), || secret_writes(&env).1 >= 1).await,
        "a dry run after the backoff: {:?}",
        secret_writes(&env)
    );
    assert_eq!(token_creates(&env), creates, "the dry run spared a token");

    // The policy is lifted and the object touched (any annotation): that ends the backoff at once.
    env.kube.clear_faults();
    merge_patch(
        &api,
        "policed-token",
        json!({"metadata": {"annotations": {"example.com/retry": "1"}}}),
    )
    .await;
    let tok = wait_for(&api, "policed-token", T, |t| ready_at(t, 1)).await;
    let value = value_of(&secret(&env, "policed-token").await.unwrap());
    assert_eq!(auth_status(&env, &value).await, 200);
    assert_eq!(status(&tok).pending_token_name, None);
    assert_eq!(token_creates(&env), creates + 1);
    assert_no_token_value_exposed(&env);
    op.stop().await;
}

/// Issue: a `secretTemplate` label the API server refuses. The CRD refuses it at apply time; an object
/// admitted before that rule existed (an older CRD) gets `InvalidSpec` naming the key, and no token
/// is ever created for it. Fixing the spec issues at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_template_label_the_api_server_refuses_never_issues_a_token() {
    let env = TestEnv::start().await;
    let op = Operator::start(&env, "10m").await;
    ready_account(&env, "labelled").await;
    let manifest = token_yaml(
        "labelled-token",
        "labelled",
        "  secretTemplate: {labels: {\"team name\": platform}}",
    );
    let refused = env.kube.apply_manifest(&manifest, NS).unwrap_err();
    assert_eq!(refused.code, 422, "the CRD refuses it: {refused:?}");
    assert!(
        refused.message.contains("secretTemplate.labels"),
        "{}",
        refused.message
    );
    env.kube
        .without_cel_rules("konnect-sa.dev", "v1alpha1", "systemaccounttokens", || {
            env.apply(&manifest)
        });
    let api = env.api::<SystemAccountToken>();
    let tok = wait_for(&api, "labelled-token", T, |t| {
        reason(t).as_deref() == Some("InvalidSpec")
    })
    .await;
    let (_, _, msg) = ready_of(&status(&tok).conditions).unwrap();
    assert!(
        msg.contains("team name") && msg.contains("secretTemplate.labels"),
        "{msg}"
    );
    assert!(
        eventually(T, || !warnings(&env, "labelled-token", "InvalidSpec")
            .is_empty())
        .await,
        "Warning Event"
    );
    let generation_writes = env
        .kube
        .requests()
        .iter()
        .filter(|r| {
            r.user.is_some()
                && r.plural == "systemaccounttokens"
                && r.verb != "get"
                && r.verb != "list"
                && r.verb != "watch"
        })
        .count();
    op.poke(&env, "labelled-token").await;
    assert_eq!(
        token_creates(&env),
        0,
        "no token for a Secret that cannot be written"
    );
    assert_eq!(secret_writes(&env).0, 0);
    let later = env
        .kube
        .requests()
        .iter()
        .filter(|r| {
            r.user.is_some()
                && r.plural == "systemaccounttokens"
                && r.verb != "get"
                && r.verb != "list"
                && r.verb != "watch"
        })
        .count();
    assert_eq!(
        later, generation_writes,
        "no writes to the object while backing off"
    );

    // The fix is an edit: it is acted on at once, not after the backoff.
    merge_patch(
        &api,
        "labelled-token",
        json!({"spec": {"secretTemplate": {"labels": {"team name": null, "team-name": "platform"}}}}),
    )
    .await;
    wait_for(&api, "labelled-token", Duration::from_secs(10), |t| {
        ready_at(t, 1)
    })
    .await;
    let s = secret(&env, "labelled-token").await.unwrap();
    assert_eq!(
        s.metadata
            .labels
            .as_ref()
            .unwrap()
            .get("team-name")
            .map(String::as_str),
        Some("platform")
    );
    assert_eq!(token_creates(&env), 1);
    op.stop().await;
}

/// Issue: an owned Secret marked `immutable: true`, then a rotation. The rotation is refused before any
/// token is created (`SecretConflict`, saying what to do); the current token keeps working. Deleting the
/// Secret, as the message says, gets a new token written at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_immutable_secret_blocks_rotation_without_issuing_and_says_what_to_do() {
    let env = TestEnv::start().await;
    let op = Operator::start(&env, "10m").await;
    let account_id = ready_account(&env, "frozen").await;
    env.apply(&token_yaml("frozen-token", "frozen", ""));
    let api = env.api::<SystemAccountToken>();
    wait_for(&api, "frozen-token", T, |t| ready_at(t, 1)).await;
    let current = value_of(&secret(&env, "frozen-token").await.unwrap());
    merge_patch(
        &env.api::<Secret>(),
        "frozen-token",
        json!({"immutable": true}),
    )
    .await;

    merge_patch(
        &api,
        "frozen-token",
        json!({"metadata": {"annotations": {"konnect-sa.dev/rotate": "now"}}}),
    )
    .await;
    let tok = wait_for(&api, "frozen-token", T, |t| {
        reason(t).as_deref() == Some("SecretConflict")
    })
    .await;
    let (_, _, msg) = ready_of(&status(&tok).conditions).unwrap();
    assert!(
        msg.contains("immutable") && msg.contains("Delete the Secret"),
        "{msg}"
    );
    assert!(
        eventually(T, || !warnings(&env, "frozen-token", "SecretConflict")
            .is_empty())
        .await,
        "Warning Event"
    );
    op.poke(&env, "frozen-token").await;
    assert_eq!(
        token_creates(&env),
        1,
        "no token created for the blocked rotation"
    );
    assert_eq!(env.sim.live_tokens(&account_id).len(), 1);
    assert_eq!(
        auth_status(&env, &current).await,
        200,
        "the current token still works"
    );
    assert_eq!(
        value_of(&secret(&env, "frozen-token").await.unwrap()),
        current
    );

    // The way out the message gives, taken while the token backs off (30 s at least): deleting the
    // Secret ends the hold, and the token gets a new one at once, well within the backoff.
    delete(&env.api::<Secret>(), "frozen-token").await;
    wait_for(&api, "frozen-token", Duration::from_secs(10), |t| {
        ready_at(t, 2)
    })
    .await;
    let fresh = value_of(&secret(&env, "frozen-token").await.unwrap());
    assert_ne!(fresh, current);
    assert_eq!(auth_status(&env, &fresh).await, 200);
    assert_eq!(token_creates(&env), 2);
    assert_no_token_value_exposed(&env);
    op.stop().await;
}

/// Issue: rotation stopped whenever the SystemAccount was not Ready for reasons unrelated to its
/// identity (here: a team name that matches no team). A token needs the account's Konnect id, not its
/// Ready condition: it keeps rotating and stays Ready itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_keeps_rotating_while_its_account_is_not_ready_for_another_reason() {
    let env = TestEnv::start().await;
    let op = Operator::start(&env, "10m").await;
    let account_id = ready_account(&env, "busy").await;
    env.apply(&token_yaml("busy-token", "busy", ""));
    let api = env.api::<SystemAccountToken>();
    wait_for(&api, "busy-token", T, |t| ready_at(t, 1)).await;

    // The account's spec asks for a team that does not exist: it is InvalidSpec, with its id.
    merge_patch(
        &env.api::<SystemAccount>(),
        "busy",
        json!({"spec": {"teams": [{"name": "no-such-team"}]}}),
    )
    .await;
    wait_for(&env.api::<SystemAccount>(), "busy", T, |a| {
        let s = a.status.clone().unwrap_or_default();
        ready_of(&s.conditions).is_some_and(|(st, r, _)| st == "False" && r == "InvalidSpec")
            && s.observed_generation == a.metadata.generation
    })
    .await;

    merge_patch(
        &api,
        "busy-token",
        json!({"metadata": {"annotations": {"konnect-sa.dev/rotate": "now"}}}),
    )
    .await;
    let tok = wait_for(&api, "busy-token", T, |t| ready_at(t, 2)).await;
    let value = value_of(&secret(&env, "busy-token").await.unwrap());
    assert_eq!(auth_status(&env, &value).await, 200);
    assert_eq!(
        status(&tok).account_id.as_deref(),
        Some(account_id.as_str())
    );
    op.stop().await;
}

/// Issue: `secretTemplate` and the Secret's metadata were only written at rotation (up to two months
/// later). Now a template edit reaches the Secret at once, without a rotation; a label another tool put
/// on the Secret survives rotations; a label dropped from the template is removed; a stripped
/// managed-by label comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secret_metadata_follows_the_template_without_rotating_and_keeps_other_tools_keys() {
    let env = TestEnv::start().await;
    let op = Operator::start(&env, "10m").await;
    ready_account(&env, "meta").await;
    env.apply(&token_yaml("meta-token", "meta", ""));
    let api = env.api::<SystemAccountToken>();
    wait_for(&api, "meta-token", T, |t| ready_at(t, 1)).await;
    let secrets = env.api::<Secret>();
    // Another tool labels the Secret.
    merge_patch(
        &secrets,
        "meta-token",
        json!({"metadata": {"labels": {"backup.example.com/include": "true"}}}),
    )
    .await;

    merge_patch(
        &api,
        "meta-token",
        json!({"spec": {"secretTemplate": {"labels": {"konghq.com/credential": "konnect"}}}}),
    )
    .await;
    let label = |s: &Secret, k: &str| {
        s.metadata
            .labels
            .clone()
            .unwrap_or_default()
            .get(k)
            .cloned()
    };
    assert!(
        eventually_async(T, || async {
            secret(&env, "meta-token")
                .await
                .is_some_and(|s| label(&s, "konghq.com/credential").as_deref() == Some("konnect"))
        })
        .await,
        "the template label reaches the Secret"
    );
    let tok = wait_for(&api, "meta-token", T, ready).await;
    assert_eq!(
        status(&tok).revision,
        Some(1),
        "no rotation for a metadata edit"
    );

    // A rotation keeps the other tool's label and the template's.
    merge_patch(
        &api,
        "meta-token",
        json!({"metadata": {"annotations": {"konnect-sa.dev/rotate": "1"}}}),
    )
    .await;
    wait_for(&api, "meta-token", T, |t| ready_at(t, 2)).await;
    let s = secret(&env, "meta-token").await.unwrap();
    assert_eq!(
        label(&s, "backup.example.com/include").as_deref(),
        Some("true")
    );
    assert_eq!(
        label(&s, "konghq.com/credential").as_deref(),
        Some("konnect")
    );

    // Dropped from the template: removed; stripped managed-by: restored. The other tool's stays.
    merge_patch(
        &api,
        "meta-token",
        json!({"spec": {"secretTemplate": null}}),
    )
    .await;
    merge_patch(
        &secrets,
        "meta-token",
        json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": null}}}),
    )
    .await;
    assert!(
        eventually_async(T, || async {
            secret(&env, "meta-token").await.is_some_and(|s| {
                label(&s, "konghq.com/credential").is_none()
                    && label(&s, "app.kubernetes.io/managed-by").as_deref()
                        == Some("konnect-sa-operator")
                    && label(&s, "backup.example.com/include").as_deref() == Some("true")
            })
        })
        .await,
        "{:?}",
        secret(&env, "meta-token").await.map(|s| s.metadata.labels)
    );
    assert_eq!(
        status(&api.get("meta-token").await.unwrap()).revision,
        Some(2)
    );
    op.stop().await;
}

/// Issue: `deletionPolicy: Orphan` was unreliable: with foreground deletion (Argo CD's prune) the garbage
/// collector could delete the Secret before the finalizer released it, and previous tokens were left
/// live. Now the Secret carries no ownerReference for as long as the spec says Orphan (no garbage
/// collection mode can take it), still wakes its token when it changes, and deleting the object revokes
/// the replaced tokens while keeping the current one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orphan_policy_keeps_the_secret_out_of_garbage_collection_and_revokes_replaced_tokens() {
    let env = TestEnv::start().await;
    let op = Operator::start(&env, "10m").await;
    let account_id = ready_account(&env, "orph").await;
    env.apply(&token_yaml(
        "orph-token",
        "orph",
        "  deletionPolicy: Orphan\n  previousTokenRetention: 1h",
    ));
    let api = env.api::<SystemAccountToken>();
    let tok = wait_for(&api, "orph-token", T, |t| ready_at(t, 1)).await;
    let uid = tok.metadata.uid.clone().unwrap();
    let owned_by_us = |s: &Secret| {
        s.metadata
            .owner_references
            .clone()
            .unwrap_or_default()
            .iter()
            .any(|r| r.uid == uid)
    };
    let s = secret(&env, "orph-token").await.unwrap();
    assert!(
        !owned_by_us(&s),
        "no ownerReference under Orphan: {:?}",
        s.metadata.owner_references
    );

    // Still this object's Secret: deleting it wakes the token at once (resync is 10 min).
    delete(&env.api::<Secret>(), "orph-token").await;
    wait_for(&api, "orph-token", T, |t| ready_at(t, 2)).await;
    assert_eq!(
        env.sim.live_tokens(&account_id).len(),
        2,
        "r1 keeps its overlap"
    );

    // Delete -> ownerReference back; Orphan again -> gone again.
    merge_patch(
        &api,
        "orph-token",
        json!({"spec": {"deletionPolicy": "Delete"}}),
    )
    .await;
    assert!(
        eventually_async(T, || async {
            secret(&env, "orph-token")
                .await
                .is_some_and(|s| owned_by_us(&s))
        })
        .await
    );
    merge_patch(
        &api,
        "orph-token",
        json!({"spec": {"deletionPolicy": "Orphan"}}),
    )
    .await;
    assert!(
        eventually_async(T, || async {
            secret(&env, "orph-token")
                .await
                .is_some_and(|s| !owned_by_us(&s))
        })
        .await
    );

    // Deleting the object: the current token and its Secret stay; the replaced r1 is revoked.
    let current = status(&api.get("orph-token").await.unwrap())
        .token_id
        .clone();
    delete(&api, "orph-token").await;
    assert!(
        eventually(T, || env
            .kube
            .get(
                "konnect-sa.dev",
                "v1alpha1",
                "systemaccounttokens",
                NS,
                "orph-token"
            )
            .is_none())
        .await
    );
    let live = env.sim.live_tokens(&account_id);
    assert_eq!(live.len(), 1, "only the current token stays: {live:?}");
    assert_eq!(Some(live[0].id.clone()), current);
    let s = secret(&env, "orph-token").await.expect("Secret kept");
    assert_eq!(auth_status(&env, &value_of(&s)).await, 200);
    assert_no_token_value_exposed(&env);
    op.stop().await;
}

/// Issue: a failed rollout restart was never retried, yet the previous token was still revoked on
/// schedule, so the workload broke at revokeAt. Now the restart is retried (every 30 s) and the previous
/// token is held past its revokeAt until the restart went through, with a condition saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_restart_is_retried_and_holds_back_the_previous_tokens_revocation() {
    let env = TestEnv::start().await;
    let clock = Clock::default();
    let op = Operator::start_with_clock(&env, "10m", clock.clone()).await;
    let account_id = ready_account(&env, "held").await;
    env.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: held-app}
spec:
  selector: {matchLabels: {app: held-app}}
  template:
    metadata: {labels: {app: held-app}}
    spec: {containers: [{name: app, image: busybox}]}
"#,
    );
    env.apply(&token_yaml(
        "held-token",
        "held",
        "  previousTokenRetention: 2s\n  rolloutRestartTargets: [{kind: Deployment, name: held-app}]",
    ));
    let api = env.api::<SystemAccountToken>();
    let tok1 = wait_for(&api, "held-token", T, |t| ready_at(t, 1)).await;
    let old = status(&tok1).token_id.clone().unwrap();

    // Restart patches fail (the API server or an admission webhook says no) until further notice.
    env.kube.inject_failure("patch", "deployments", 10_000, 500);
    merge_patch(
        &api,
        "held-token",
        json!({"metadata": {"annotations": {"konnect-sa.dev/rotate": "1"}}}),
    )
    .await;
    let tok2 = wait_for(&api, "held-token", T, |t| {
        ready_at(t, 2)
            && status(t)
                .conditions
                .iter()
                .any(|c| c.type_ == "RestartTargetsReady" && c.reason == "RestartFailed")
    })
    .await;
    let cond = status(&tok2)
        .conditions
        .into_iter()
        .find(|c| c.type_ == "RestartTargetsReady")
        .unwrap();
    assert!(
        cond.message.contains("previous token is kept"),
        "{}",
        cond.message
    );
    // Past its revokeAt (the operator's clock run a minute beyond it, then a reconcile), the previous
    // token is still live: the app has not restarted.
    let previous = &status(&tok2).previous_tokens;
    assert_eq!(previous.len(), 1, "{previous:?}");
    let revoke_at = parse_ts(&Some(previous[0].revoke_at.clone()));
    run_to(
        &clock,
        revoke_at.checked_add(Duration::from_secs(60)).unwrap(),
    );
    op.wake(&env, "held-token").await;
    assert!(
        env.sim.live_tokens(&account_id).iter().any(|t| t.id == old),
        "held back while the restart is pending"
    );
    assert_eq!(
        restarted_at(&deployment(&env, "held-app")),
        Some(format!("{}/r1", status(&tok1).last_rotation_time.unwrap()))
    );

    // The cause goes away: a retry (at most 30 s later) restarts the app; then the previous token goes.
    env.kube.clear_faults();
    let tok = wait_for(&api, "held-token", Duration::from_secs(60), |t| {
        status(t).last_restart_revision == Some(2)
    })
    .await;
    assert!(restarted_at(&deployment(&env, "held-app")).is_some_and(|s| s.ends_with("/r2")));
    assert!(
        !status(&tok)
            .conditions
            .iter()
            .any(|c| c.type_ == "RestartTargetsReady"),
        "condition cleared"
    );
    assert!(
        eventually(T, || !env
            .sim
            .live_tokens(&account_id)
            .iter()
            .any(|t| t.id == old))
        .await,
        "revoked once the consumers restarted"
    );
    op.stop().await;
}

/// Issue: token values sat in the operator's memory because Secrets were watched as full objects. The
/// operator lists and watches Secrets as metadata only; a token's Secret is read by name when its own
/// reconcile needs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_are_watched_as_metadata_only() {
    let env = TestEnv::start().await;
    let op = Operator::start(&env, "10m").await;
    ready_account(&env, "quiet").await;
    env.apply(&token_yaml("quiet-token", "quiet", ""));
    let api = env.api::<SystemAccountToken>();
    wait_for(&api, "quiet-token", T, |t| ready_at(t, 1)).await;
    let bulk: Vec<_> = env
        .kube
        .requests()
        .into_iter()
        .filter(|r| r.plural == "secrets" && matches!(r.verb.as_str(), "list" | "watch"))
        .collect();
    assert!(!bulk.is_empty(), "the operator watches its Secrets");
    assert!(
        bulk.iter().all(|r| r.metadata_only),
        "every Secret list and watch is metadata only: {bulk:?}"
    );
    // The Secret still wakes its token: deleting it gets a new one at once (resync is 10 min).
    delete(&env.api::<Secret>(), "quiet-token").await;
    wait_for(&api, "quiet-token", T, |t| ready_at(t, 2)).await;
    op.stop().await;
}

/// `--cluster-name` goes into the names the operator gives Konnect objects: token names and default
/// account descriptions, so clusters sharing an organisation can tell theirs apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cluster_name_is_in_token_names_and_default_descriptions() {
    let mut env = TestEnv::start().await;
    env.start_operator(&["--cluster-name", "eu1"]).await;
    env.apply(
        "apiVersion: konnect-sa.dev/v1alpha1\nkind: SystemAccount\nmetadata: {name: named}\nspec: {}\n",
    );
    let sa = wait_for(&env.api::<SystemAccount>(), "named", T, account_ready).await;
    let account_id = sa.status.unwrap().id.unwrap();
    env.apply(&token_yaml("named-token", "named", ""));
    let tok = wait_for(&env.api::<SystemAccountToken>(), "named-token", T, |t| {
        ready_at(t, 1)
    })
    .await;
    let name = status(&tok).token_name.unwrap();
    assert!(name.starts_with("eu1.platform.named-token."), "{name}");
    let account = env
        .sim
        .state()
        .accounts
        .into_iter()
        .find(|a| a.account.id == account_id)
        .unwrap();
    assert_eq!(
        account.account.description,
        "Managed by konnect-sa-operator (eu1: platform/named)"
    );
    env.stop_operator().await;
}

/// Issue (many clusters): two clusters, each with its own operator, manage tokens for one Konnect
/// account (referenced by id) and a RoleBinding on the same role tuple, with the same object names.
/// After 50 rotations on each side, one cluster deletes everything: the other cluster's tokens were
/// never revoked, its role assignment survives, and the account is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_clusters_on_one_organisation_never_touch_each_others_tokens_or_assignments() {
    use konnect_sa_operator::api::RoleBinding;
    let env = TestEnv::start().await;
    let account = env
        .sim
        .seed_account("shared-bot", "owned by nobody here", false);
    let objects = format!(
        r#"apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccountToken
metadata: {{name: ci-token}}
spec:
  systemAccountRef: {{id: {id}}}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: RoleBinding
metadata: {{name: viewer}}
spec:
  systemAccountRef: {{id: {id}}}
  roleName: Viewer
  entityTypeName: Control Planes
  entityId: 7c9e6679-7425-40de-944b-e07fc1f90ae7
  entityRegion: eu
"#,
        id = account.id
    );
    // Cluster A first, so its binding makes the assignment; then cluster B.
    let op_a = Operator::start(&env, "10m").await;
    env.apply(&objects);
    let tokens_a = env.api::<SystemAccountToken>();
    wait_for(&tokens_a, "ci-token", T, |t| ready_at(t, 1)).await;
    let bindings_a = env.api::<RoleBinding>();
    let binding_a = wait_for(&bindings_a, "viewer", T, |b| {
        b.status
            .as_ref()
            .is_some_and(|s| s.assigned_role_id.is_some())
    })
    .await;

    let kube_b = support::FakeKube::start(&support::env::crate_dir().join("crds")).await;
    let client_b = kube_b.client();
    let args = env.run_args(&[
        "--metrics-addr",
        &format!("127.0.0.1:{}", support::env::free_port()),
    ]);
    let token = env.sim.admin_token();
    let (stop_b, rx) = tokio::sync::oneshot::channel::<()>();
    let op_b = tokio::spawn(konnect_sa_operator::run::run_with(
        client_b.clone(),
        token,
        args,
        async move {
            let _ = rx.await;
        },
    ));
    kube_b
        .apply_manifest(&objects, NS)
        .expect("manifest applies in the second cluster");
    let tokens_b: kube::Api<SystemAccountToken> = kube::Api::namespaced(client_b.clone(), NS);
    let bindings_b: kube::Api<RoleBinding> = kube::Api::namespaced(client_b.clone(), NS);
    wait_for(&tokens_b, "ci-token", T, |t| ready_at(t, 1)).await;
    let binding_b = wait_for(&bindings_b, "viewer", T, |b| {
        b.status
            .as_ref()
            .is_some_and(|s| s.assigned_role_id.is_some())
    })
    .await;
    assert_eq!(
        binding_b.status.as_ref().unwrap().assigned_role_id,
        binding_a.status.as_ref().unwrap().assigned_role_id,
        "one assignment, shared across the clusters"
    );
    assert_eq!(
        binding_b.status.unwrap().adopted,
        Some(true),
        "B adopted A's assignment"
    );

    // 50 rotations on each side, interleaved.
    for r in 2..=51 {
        let rotate =
            json!({"metadata": {"annotations": {"konnect-sa.dev/rotate": format!("{r}")}}});
        merge_patch(&tokens_a, "ci-token", rotate.clone()).await;
        merge_patch(&tokens_b, "ci-token", rotate).await;
        wait_for(&tokens_a, "ci-token", T, |t| ready_at(t, r)).await;
        wait_for(&tokens_b, "ci-token", T, |t| ready_at(t, r)).await;
    }
    let a = tokens_a.get("ci-token").await.unwrap();
    let mine_a: Vec<String> = std::iter::once(status(&a).token_id.clone().unwrap())
        .chain(status(&a).previous_tokens.iter().map(|p| p.id.clone()))
        .collect();
    assert_eq!(
        mine_a.len(),
        51,
        "A's current token and its 50 predecessors (1 h retention)"
    );

    // Cluster B deletes everything it has.
    delete(&tokens_b, "ci-token").await;
    delete(&bindings_b, "viewer").await;
    assert!(
        eventually(T, || kube_b
            .get(
                "konnect-sa.dev",
                "v1alpha1",
                "systemaccounttokens",
                NS,
                "ci-token"
            )
            .is_none()
            && kube_b
                .get("konnect-sa.dev", "v1alpha1", "rolebindings", NS, "viewer")
                .is_none())
        .await,
        "B's objects are gone"
    );
    let live: Vec<String> = env
        .sim
        .live_tokens(&account.id)
        .into_iter()
        .map(|t| t.id)
        .collect();
    for id in &mine_a {
        assert!(live.contains(id), "A's token {id} was revoked by B");
    }
    assert_eq!(
        live.len(),
        mine_a.len(),
        "B's tokens are all revoked, A's all live"
    );
    let value = value_of(&secret(&env, "ci-token").await.unwrap());
    assert_eq!(auth_status(&env, &value).await, 200);
    let state = env.sim.state();
    let acc = state
        .accounts
        .iter()
        .find(|a| a.account.id == account.id)
        .expect("the account is untouched");
    assert_eq!(acc.account.description, "owned by nobody here");
    assert_eq!(
        acc.roles.len(),
        1,
        "A's assignment survives B's deletion: {:?}",
        acc.roles
    );
    assert_eq!(
        Some(acc.roles[0].id.clone()),
        binding_a.status.unwrap().assigned_role_id
    );
    let _ = stop_b.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), op_b).await;
    op_a.stop().await;
}

/// Issue (many clusters): cleanup used the operator-wide connection when the token's account could no
/// longer be resolved, so a 404 from the wrong organisation counted as "revoked" and the tokens stayed
/// live in the real one. Now the connection that made them is recorded (`status.konnectAuthSecret`) and
/// used; without that Secret the deletion is blocked with a clear message instead of guessing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cleanup_revokes_in_the_organisation_that_issued_even_after_the_account_is_gone() {
    use konnect_sa_operator::sim::{SimConfig, Simulator};
    let env = TestEnv::start().await;
    // A second organisation, reached through an auth Secret with serverURL.
    let org_b = Simulator::start(SimConfig {
        admin_token: konnect_sa_operator::konnect::TokenValue::new(
            "kpat_organisationbadmintoken00000000000000000000000",
        ),
        ..Default::default()
    })
    .await
    .unwrap();
    let op = Operator::start(&env, "10m").await;
    env.apply(&format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: org-b-auth}}
stringData: {{token: {}, serverURL: "{}"}}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {{name: in-b}}
spec: {{deletionPolicy: Orphan, konnect: {{authSecretRef: {{name: org-b-auth}}}}}}
"#,
        org_b.admin_token().expose(),
        org_b.base_url()
    ));
    let sa = wait_for(&env.api::<SystemAccount>(), "in-b", T, account_ready).await;
    let account_id = sa.status.unwrap().id.unwrap();
    for name in ["b-token", "b-token-2"] {
        env.apply(&token_yaml(name, "in-b", ""));
        let tok = wait_for(&env.api::<SystemAccountToken>(), name, T, |t| {
            ready_at(t, 1)
        })
        .await;
        assert_eq!(
            status(&tok).konnect_auth_secret.as_deref(),
            Some("org-b-auth")
        );
    }
    assert_eq!(
        org_b.live_tokens(&account_id).len(),
        2,
        "issued in organisation B"
    );

    // The account object goes first (Orphan: it stays in B); then a token is deleted.
    delete(&env.api::<SystemAccount>(), "in-b").await;
    assert!(
        eventually(T, || env
            .kube
            .get("konnect-sa.dev", "v1alpha1", "systemaccounts", NS, "in-b")
            .is_none())
        .await
    );
    delete(&env.api::<SystemAccountToken>(), "b-token").await;
    assert!(
        eventually(T, || env
            .kube
            .get(
                "konnect-sa.dev",
                "v1alpha1",
                "systemaccounttokens",
                NS,
                "b-token"
            )
            .is_none())
        .await
    );
    assert_eq!(
        org_b.live_tokens(&account_id).len(),
        1,
        "revoked in organisation B, where it was issued"
    );

    // Without the auth Secret, the deletion waits and says why (no guessing at another organisation).
    delete(&env.api::<Secret>(), "org-b-auth").await;
    delete(&env.api::<SystemAccountToken>(), "b-token-2").await;
    let blocked = wait_for(&env.api::<SystemAccountToken>(), "b-token-2", T, |t| {
        reason(t).as_deref() == Some("DeletionBlocked")
    })
    .await;
    let (_, _, msg) = ready_of(&status(&blocked).conditions).unwrap();
    assert!(msg.contains("org-b-auth"), "{msg}");
    assert_eq!(org_b.live_tokens(&account_id).len(), 1, "nothing guessed");
    op.stop().await;
}

// ---- the stand-in's fault tools aimed at the operator -----------------------------------------------------

/// Operator Secret writes that reached the stand-in (creates and updates, dry runs left out).
fn operator_secret_writes(env: &TestEnv) -> usize {
    env.kube
        .requests()
        .iter()
        .filter(|r| {
            r.user.is_some()
                && !r.dry_run
                && r.plural == "secrets"
                && matches!(r.verb.as_str(), "create" | "update")
        })
        .count()
}

/// The Secret write fails (500) after Konnect issued the token: the write is retried, the Secret ends up
/// holding a working token, and no other token of the account stays live.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secret_write_failing_after_the_issue_leaves_one_working_token() {
    let env = TestEnv::start().await;
    let op = Operator::start(&env, "3s").await;
    let account_id = ready_account(&env, "faulty").await;
    // The dry run passes; the real create fails.
    env.kube.inject_failure("create", "secrets", 1, 500);
    env.apply(&token_yaml(
        "faulty-token",
        "faulty",
        "  previousTokenRetention: 0s",
    ));
    let api = env.api::<SystemAccountToken>();
    let tok = wait_for(&api, "faulty-token", T, ready).await;
    assert!(
        operator_secret_writes(&env) >= 2,
        "the failed write was retried"
    );
    let s = secret(&env, "faulty-token").await.expect("Secret written");
    assert_eq!(auth_status(&env, &value_of(&s)).await, 200);
    assert_eq!(
        annotation(&s, "konnect-sa.dev/token-id"),
        status(&tok).token_id
    );
    assert!(
        eventually(T, || env.sim.live_tokens(&account_id).len() == 1).await,
        "one live token: {:?}",
        env.sim.live_tokens(&account_id)
    );
    assert_no_token_value_exposed(&env);
    op.stop().await;
}

/// A status write answered 409 in the middle of a rotation: the rotation completes once, not twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_status_write_conflict_mid_rotation_rotates_once() {
    let env = TestEnv::start().await;
    let op = Operator::start(&env, "3s").await;
    let account_id = ready_account(&env, "conflicted").await;
    env.apply(&token_yaml(
        "conflicted-token",
        "conflicted",
        "  previousTokenRetention: 0s",
    ));
    let api = env.api::<SystemAccountToken>();
    wait_for(&api, "conflicted-token", T, |t| ready_at(t, 1)).await;
    let issued = token_creates(&env);
    env.kube
        .inject_failure("update", "systemaccounttokens", 1, 409);
    merge_patch(
        &api,
        "conflicted-token",
        json!({"metadata": {"annotations": {"konnect-sa.dev/rotate": "once"}}}),
    )
    .await;
    let tok = wait_for(&api, "conflicted-token", T, |t| ready_at(t, 2)).await;
    let s = secret(&env, "conflicted-token").await.unwrap();
    assert_eq!(
        annotation(&s, "konnect-sa.dev/token-id"),
        status(&tok).token_id
    );
    assert_eq!(auth_status(&env, &value_of(&s)).await, 200);
    assert!(
        eventually(T, || env.sim.live_tokens(&account_id).len() == 1).await,
        "the replaced token is revoked"
    );
    assert_eq!(
        token_creates(&env) - issued,
        1,
        "one token issued for one rotation"
    );
    op.stop().await;
}

/// Every watch ends with 410 Gone mid-run (compaction, a short history, watches cut after 1 s): the
/// operator relists and still sees a new object at once (its resync only revisits known objects).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watches_ending_in_410_mid_run_are_relisted() {
    let env = TestEnv::start().await;
    let op = Operator::start(&env, "10m").await;
    ready_account(&env, "relisted").await;
    env.kube.set_history_limit(1);
    env.kube.set_max_watch_duration(Duration::from_secs(1));
    env.kube.compact();
    let relists = |env: &TestEnv| {
        env.kube
            .requests()
            .iter()
            .filter(|r| r.user.is_some() && r.verb == "list" && r.plural == "systemaccounttokens")
            .count()
    };
    let before = relists(&env);
    assert!(
        eventually(T, || relists(&env) > before).await,
        "the token watcher relisted after 410"
    );
    env.apply(&token_yaml("after-410", "relisted", ""));
    let api = env.api::<SystemAccountToken>();
    wait_for(&api, "after-410", T, ready).await;
    op.stop().await;
}

// ---- README promises (issue 19, point 11) ------------------------------------------------------------------

/// The rotation reasons the README's table promises, each seen where it says: the `reason` label of
/// `konnect_sa_token_rotations_total` and the `Rotated` Event. Along the way: a custom `secretKey`,
/// StatefulSet and DaemonSet restarts, and the template not overriding the operator's own metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readme_rotation_reasons_secret_key_and_statefulset_daemonset_restarts() {
    let env = TestEnv::start().await;
    let op = Operator::start(&env, "3s").await;
    let account_id = ready_account(&env, "promised").await;
    env.apply(
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  selector: {matchLabels: {app: db}}
  serviceName: db
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: db, image: busybox}]}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec: {containers: [{name: agent, image: busybox}]}
"#,
    );
    env.apply(&token_yaml(
        "promised-token",
        "promised",
        r#"  secretKey: api-token
  previousTokenRetention: 0s
  secretTemplate:
    labels: {app.kubernetes.io/managed-by: someone-else}
  rolloutRestartTargets:
    - {kind: StatefulSet, name: db}
    - {kind: DaemonSet, name: agent}"#,
    ));
    let api = env.api::<SystemAccountToken>();
    let tok = wait_for(&api, "promised-token", T, |t| ready_at(t, 1)).await;

    // secretKey: the value under the custom key only; the operator's own label wins over the template's.
    let s = secret(&env, "promised-token").await.unwrap();
    let data = s.data.clone().unwrap_or_default();
    assert!(
        data.contains_key("api-token") && !data.contains_key("token"),
        "{:?}",
        data.keys()
    );
    let value = String::from_utf8(data["api-token"].0.clone()).unwrap();
    assert_eq!(auth_status(&env, &value).await, 200);
    assert_eq!(
        s.metadata
            .labels
            .unwrap_or_default()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("konnect-sa-operator")
    );
    // Both kinds restarted for revision 1.
    let rev1 = format!("{}/r1", status(&tok).last_rotation_time.unwrap());
    for plural in ["statefulsets", "daemonsets"] {
        let target = env.kube.get(
            "apps",
            "v1",
            plural,
            NS,
            if plural == "statefulsets" {
                "db"
            } else {
                "agent"
            },
        );
        assert_eq!(
            restarted_at(&target.unwrap()),
            Some(rev1.clone()),
            "{plural}"
        );
    }

    // TokenRevoked: someone revokes the token in Konnect; a new one is issued.
    let current = status(&tok).token_id.unwrap();
    let admin = konnect_sa_operator::konnect::KonnectClient::new(
        konnect_sa_operator::konnect::ClientConfig::new(env.sim.base_url(), env.sim.admin_token()),
    )
    .unwrap();
    admin
        .delete_access_token(&account_id, &current)
        .await
        .unwrap();
    wait_for(&api, "promised-token", T, |t| ready_at(t, 2)).await;

    // DurationChanged.
    merge_patch(
        &api,
        "promised-token",
        json!({"spec": {"duration": "1000h"}}),
    )
    .await;
    wait_for(&api, "promised-token", T, |t| ready_at(t, 3)).await;

    // SecretLost, by key removal and by a token-id that no longer matches.
    env.kube
        .modify_raw("", "v1", "secrets", NS, "promised-token", |s| {
            s["data"].as_object_mut().unwrap().remove("api-token");
        })
        .unwrap();
    wait_for(&api, "promised-token", T, |t| ready_at(t, 4)).await;
    env.kube
        .modify_raw("", "v1", "secrets", NS, "promised-token", |s| {
            s["metadata"]["annotations"]["konnect-sa.dev/token-id"] = json!("someone-elses-id");
        })
        .unwrap();
    wait_for(&api, "promised-token", T, |t| ready_at(t, 5)).await;

    let metrics = op.metrics().await;
    for reason in ["Initial", "TokenRevoked", "DurationChanged", "SecretLost"] {
        let n = support::env::metric_total(&metrics, |l| {
            l.starts_with("konnect_sa_token_rotations_total")
                && l.contains(&format!("reason=\"{reason}\""))
        });
        assert!(
            n >= 1,
            "rotations with reason {reason} in /metrics:\n{metrics}"
        );
        let noted = env.kube.events().iter().any(|e| {
            e["regarding"]["name"] == "promised-token"
                && matches!(e["reason"].as_str(), Some("Issued" | "Rotated"))
                && e["note"].as_str().is_some_and(|n| n.contains(reason))
        });
        assert!(noted, "an Issued/Rotated Event names {reason}");
    }
    assert_eq!(
        support::env::metric_total(&metrics, |l| l
            .starts_with("konnect_sa_token_rotations_total")
            && l.contains("reason=\"SecretLost\"")),
        2
    );
    assert!(
        eventually(T, || env.sim.live_tokens(&account_id).len() == 1).await,
        "replaced tokens revoked: {:?}",
        env.sim.live_tokens(&account_id)
    );
    op.stop().await;
}

/// A new token's first issue records its marker with the finalizer (annotation
/// `konnect-sa.dev/pending-create`, one patch) instead of in its status. Both crash points of that
/// first issue heal from it: a token created but never written to the Secret is found by name and
/// revoked (and a new one issued); a token that reached the Secret is adopted, not revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_first_issue_marked_with_the_finalizer_heals_both_crash_points() {
    let env = TestEnv::start().await;
    let op = Operator::start(&env, "3s").await;
    let account_id = ready_account(&env, "first").await;
    op.stop().await;
    let api = env.api::<SystemAccountToken>();
    let since = Timestamp::from_second(Timestamp::now().as_second()).unwrap();
    // What the operator's first patch leaves behind when it is killed right after the create call.
    let marked = |name: &str| {
        let marker = json!({
            "name": format!("platform.{name}.r1"), "account_id": account_id,
            "secret_name": name, "since": since.to_string(), "auth_secret": "",
        });
        format!(
            "apiVersion: konnect-sa.dev/v1alpha1\nkind: SystemAccountToken\nmetadata:\n  name: {name}\n  \
             finalizers: [konnect-sa.dev/cleanup]\n  annotations:\n    konnect-sa.dev/pending-create: '{marker}'\n\
             spec:\n  systemAccountRef: {{name: first}}\n"
        )
    };

    // Crash point 1: created in Konnect, the Secret never written.
    env.apply(&marked("lost-token"));
    let (lost_id, _) = create_in_konnect(&env, &account_id, "platform.lost-token.r1", since).await;
    // Crash point 2: created and written to the Secret, the status never written.
    env.apply(&marked("kept-token"));
    let (kept_id, kept_value) =
        create_in_konnect(&env, &account_id, "platform.kept-token.r1", since).await;
    let kept = api.get("kept-token").await.unwrap();
    let expires = since.checked_add(Duration::from_secs(2160 * 3600)).unwrap();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {
            "name": "kept-token",
            "ownerReferences": [{
                "apiVersion": "konnect-sa.dev/v1alpha1", "kind": "SystemAccountToken",
                "name": "kept-token", "uid": kept.metadata.uid, "controller": true,
            }],
            "annotations": {
                "konnect-sa.dev/token-id": kept_id, "konnect-sa.dev/token-name": "platform.kept-token.r1",
                "konnect-sa.dev/account-id": account_id, "konnect-sa.dev/revision": "1",
                "konnect-sa.dev/issued-at": since.to_string(), "konnect-sa.dev/expires-at": expires.to_string(),
            },
        },
        "data": {"token": k8s_openapi::ByteString(kept_value.clone().into_bytes())},
    }))
    .unwrap();
    env.api::<Secret>()
        .create(&Default::default(), &secret)
        .await
        .unwrap();

    let op = Operator::start(&env, "3s").await;
    let lost = wait_for(&api, "lost-token", T, |t| ready_at(t, 1)).await;
    let kept = wait_for(&api, "kept-token", T, |t| ready_at(t, 1)).await;
    // The one that reached its Secret is the current token, unchanged.
    assert_eq!(status(&kept).token_id.as_deref(), Some(kept_id.as_str()));
    let s = env.api::<Secret>().get("kept-token").await.unwrap();
    assert_eq!(value_of(&s), kept_value);
    // The one that reached no one is revoked; a new one took its place.
    let current = status(&lost).token_id.unwrap();
    assert_ne!(current, lost_id);
    assert!(
        eventually(T, || {
            let live: Vec<String> = env
                .sim
                .live_tokens(&account_id)
                .into_iter()
                .map(|t| t.id)
                .collect();
            live.len() == 2 && live.contains(&current) && live.contains(&kept_id)
        })
        .await,
        "only the two current tokens are live: {:?}",
        env.sim.live_tokens(&account_id)
    );
    for t in [&lost, &kept] {
        assert_eq!(status(t).pending_token_name, None);
    }
    assert_no_token_value_exposed(&env);
    op.stop().await;
}

/// Runs `clock` ahead to `t` (never back).
fn run_to(clock: &Clock, t: Timestamp) {
    let ahead = t.duration_since(clock.now());
    if ahead.is_positive() {
        clock.advance(ahead.unsigned_abs());
    }
}

/// `renewBefore` and `previousTokenRetention` in simulated time. The operator's clock is run ahead to shortly
/// before the renewal time: a reconcile then (the test wakes it and waits for it) issues nothing, and the
/// operator's own timer renews at the renewal time with nobody touching the object. The same for the old
/// token's revokeAt: still working shortly before, revoked by the timer at it. A month-long lifetime takes
/// about 20 s, and nothing rests on a sleep.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewal_and_retention_follow_the_operators_clock() {
    let env = TestEnv::start().await;
    let clock = Clock::default();
    let op = Operator::start_with_clock(&env, "10m", clock.clone()).await;
    let account_id = ready_account(&env, "timely").await;
    env.apply(&token_yaml(
        "timely-token",
        "timely",
        "  duration: 720h\n  renewBefore: 240h\n  previousTokenRetention: 1h",
    ));
    let api = env.api::<SystemAccountToken>();
    let first = status(&wait_for(&api, "timely-token", T, |t| ready_at(t, 1)).await);
    let old_value = value_of(&secret(&env, "timely-token").await.unwrap());
    let old_id = first.token_id.clone().unwrap();
    let renewal = parse_ts(&first.renewal_time);
    let ahead = parse_ts(&first.expires_at)
        .duration_since(renewal)
        .as_hours();
    assert!(
        (240..=264).contains(&ahead),
        "renewBefore 240h plus at most 10% jitter, got {ahead}h"
    );
    let shortly = Duration::from_secs(10);

    // Shortly before the renewal time: no new token.
    run_to(&clock, renewal.checked_sub(shortly).unwrap());
    op.wake(&env, "timely-token").await;
    assert_eq!(
        status(&api.get("timely-token").await.unwrap()).revision,
        Some(1)
    );
    assert_eq!(token_creates(&env), 1, "renewed early");

    // At it, by the operator's timer alone: a new token in the Secret; the old one stays live.
    let second = status(&wait_for(&api, "timely-token", T, |t| ready_at(t, 2)).await);
    let rotated = parse_ts(&second.last_rotation_time);
    assert!(
        rotated >= renewal,
        "rotated at {rotated}, renewalTime {renewal}"
    );
    let new_value = value_of(&secret(&env, "timely-token").await.unwrap());
    assert_ne!(new_value, old_value);
    assert_eq!(auth_status(&env, &new_value).await, 200);
    assert_eq!(second.previous_tokens.len(), 1, "{second:?}");
    assert_eq!(second.previous_tokens[0].id, old_id);
    let revoke_at = parse_ts(&Some(second.previous_tokens[0].revoke_at.clone()));
    assert_eq!(
        revoke_at.duration_since(rotated).as_secs(),
        3600,
        "revokeAt is the rotation plus previousTokenRetention"
    );

    // Shortly before revokeAt the old token still works; at it, the timer revokes it.
    run_to(&clock, revoke_at.checked_sub(shortly).unwrap());
    op.wake(&env, "timely-token").await;
    assert_eq!(auth_status(&env, &old_value).await, 200, "revoked early");
    assert!(
        eventually_async(T, || {
            let (env, old) = (&env, old_value.clone());
            async move { auth_status(env, &old).await == 401 }
        })
        .await,
        "the old token is revoked at its revokeAt"
    );
    assert!(clock.now() >= revoke_at);
    let live = env.sim.live_tokens(&account_id);
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(Some(live[0].id.clone()), second.token_id);
    assert_no_token_value_exposed(&env);
    op.stop().await;
}
