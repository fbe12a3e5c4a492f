//! State the controllers must share, and work the drift budget must not hold up:
//! - `--namespaces a,b` runs one set of controllers over both namespaces: one binding cache (two
//!   RoleBindings in different namespaces sharing an assignment see each other), one Konnect
//!   snapshot per connection (one list of accounts per sweep, not one per namespace);
//! - with the budget spent and one reconcile slot per kind, a new object and a due renewal go
//!   through at once: a background check without a permit is put off, it does not wait in a slot.
mod support;

use std::time::Duration;

use konnect_sa_operator::api::{RoleBinding, SystemAccount, SystemAccountToken};
use kube::Api;
use support::env::{free_port, metric_total};
use support::{TestEnv, delete, eventually, ready_of, wait_for};
use tokio::time::Instant;

const T: Duration = Duration::from_secs(30);
const CP: &str = "817d0422-45c9-4d88-8d64-45aef05c1ae7";

fn ready(conditions: Option<&[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]>) -> bool {
    ready_of(conditions.unwrap_or_default()).is_some_and(|(s, _, _)| s == "True")
}

fn account_ready(a: &SystemAccount) -> bool {
    ready(a.status.as_ref().map(|s| s.conditions.as_slice()))
}

fn binding_ready(b: &RoleBinding) -> bool {
    ready(b.status.as_ref().map(|s| s.conditions.as_slice()))
}

fn token_ready(t: &SystemAccountToken) -> bool {
    ready(t.status.as_ref().map(|s| s.conditions.as_slice()))
}

fn account(ns: &str, name: &str) -> String {
    format!(
        "apiVersion: konnect-sa.dev/v1alpha1\nkind: SystemAccount\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{description: test}}\n"
    )
}

fn binding(ns: &str, name: &str, account_ref: &str) -> String {
    format!(
        r#"apiVersion: konnect-sa.dev/v1alpha1
kind: RoleBinding
metadata: {{name: {name}, namespace: {ns}}}
spec:
  systemAccountRef: {account_ref}
  roleName: Viewer
  entityTypeName: Control Planes
  entityId: {CP}
  entityRegion: eu
"#
    )
}

fn token(ns: &str, name: &str, account: &str, extra: &str) -> String {
    format!(
        "apiVersion: konnect-sa.dev/v1alpha1\nkind: SystemAccountToken\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  systemAccountRef: {{name: {account}}}\n{extra}"
    )
}

async fn metrics(addr: &str) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn assigned(b: &RoleBinding) -> Option<String> {
    b.status.as_ref().and_then(|s| s.assigned_role_id.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn namespaced_mode_shares_one_binding_cache_and_one_snapshot() {
    let mut env = TestEnv::start().await;
    let addr = format!("127.0.0.1:{}", free_port());
    env.start_operator(&[
        "--namespaces",
        "team-a,team-b",
        "--resync-period",
        "2s",
        "--metrics-addr",
        &addr,
    ])
    .await;
    let (a, b) = ("team-a", "team-b");
    let accounts_a: Api<SystemAccount> = Api::namespaced(env.client(), a);
    let accounts_b: Api<SystemAccount> = Api::namespaced(env.client(), b);
    let bindings_a: Api<RoleBinding> = Api::namespaced(env.client(), a);
    let bindings_b: Api<RoleBinding> = Api::namespaced(env.client(), b);

    // One account in team-a; its role bound from team-a by name and from team-b by id.
    env.apply(&account(a, "bot"));
    let bot = wait_for(&accounts_a, "bot", T, account_ready).await;
    let id = bot.status.unwrap().id.unwrap();
    env.apply(&binding(a, "viewer", "{name: bot}"));
    env.apply(&binding(b, "viewer", &format!("{{id: {id}}}")));
    let rb_a = wait_for(&bindings_a, "viewer", T, binding_ready).await;
    let rb_b = wait_for(&bindings_b, "viewer", T, binding_ready).await;
    let roles = |env: &TestEnv| {
        env.sim
            .state()
            .account_by_name("bot")
            .map(|a| a.roles.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        roles(&env).len(),
        1,
        "one assignment shared: {:?}",
        roles(&env)
    );
    assert_eq!(assigned(&rb_a), assigned(&rb_b));

    // Deleting the team-a binding keeps the role team-b still wants.
    delete(&bindings_a, "viewer").await;
    assert!(
        eventually(T, || env
            .kube
            .get("konnect-sa.dev", "v1alpha1", "rolebindings", a, "viewer")
            .is_none())
        .await
    );
    // Across two more drift checks of the remaining binding (its account's assigned roles, read again).
    env.metrics().two_more_drift_checks("RoleBinding").await;
    assert_eq!(
        roles(&env)
            .iter()
            .map(|r| Some(r.id.clone()))
            .collect::<Vec<_>>(),
        vec![assigned(&rb_b)],
        "team-b's binding keeps its role"
    );
    let rb_b = bindings_b.get("viewer").await.unwrap();
    assert!(binding_ready(&rb_b));

    // One snapshot: three accounts in each namespace, their drift checks (every 2 s) share one
    // list of accounts per sweep; one snapshot per namespace would list twice per sweep.
    for i in 0..3 {
        env.apply(&account(a, &format!("a{i}")));
        env.apply(&account(b, &format!("b{i}")));
    }
    for i in 0..3 {
        wait_for(&accounts_a, &format!("a{i}"), T, account_ready).await;
        wait_for(&accounts_b, &format!("b{i}"), T, account_ready).await;
    }
    let drift = |m: &str| {
        metric_total(m, |l| {
            l.starts_with("konnect_sa_drift_checks_total") && l.contains("SystemAccount")
        })
    };
    let before = drift(&metrics(&addr).await);
    env.sim.reset_counts();
    // Until the operator has recorded three sweeps' worth of checks (7 accounts), not for a fixed time.
    let deadline = Instant::now() + T;
    let checks = loop {
        let checks = drift(&metrics(&addr).await) - before;
        if checks >= 21 {
            break checks;
        }
        assert!(Instant::now() < deadline, "drift checks ran: {checks}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lists = env
        .sim
        .counts()
        .get("get-system-accounts")
        .copied()
        .unwrap_or(0);
    eprintln!("{checks} account drift checks, {lists} account lists");
    assert!(checks >= 14, "drift checks ran: {checks}");
    assert!(
        lists * 4 <= checks,
        "{lists} lists for {checks} checks of 7 accounts in two namespaces: not one shared snapshot"
    );
    env.stop_operator().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spent_drift_budget_delays_neither_new_objects_nor_due_renewals() {
    let mut env = TestEnv::start().await;
    let addr = format!("127.0.0.1:{}", free_port());
    // One permit a minute, one reconcile slot per kind, drift checks due every second.
    env.start_operator(&[
        "--konnect-budget",
        "2",
        "--max-concurrent-reconciles",
        "1",
        "--resync-period",
        "1s",
        "--metrics-addr",
        &addr,
    ])
    .await;
    let ns = support::NS;
    let tokens = env.api::<SystemAccountToken>();
    for i in 0..4 {
        env.apply(&account(ns, &format!("bot-{i}")));
        env.apply(&token(
            ns,
            &format!("bot-{i}-token"),
            &format!("bot-{i}"),
            "",
        ));
    }
    // One token renews soon: renewal due 10 s after issue at the latest.
    env.apply(&account(ns, "rotor"));
    env.apply(&token(
        ns,
        "rotor-token",
        "rotor",
        "  duration: 90s\n  renewBefore: 80s\n",
    ));
    for i in 0..4 {
        wait_for(&tokens, &format!("bot-{i}-token"), T, token_ready).await;
    }
    let rotor = wait_for(&tokens, "rotor-token", T, token_ready).await;
    let renewal: k8s_openapi::jiff::Timestamp = rotor
        .status
        .as_ref()
        .and_then(|s| s.renewal_time.clone())
        .unwrap()
        .parse()
        .unwrap();

    // Drift checks now find the budget spent.
    let deferred = |m: &str| {
        metric_total(m, |l| {
            l.starts_with("konnect_sa_drift_checks_deferred_total")
        })
    };
    let deadline = Instant::now() + T;
    while deferred(&metrics(&addr).await) < 4 {
        assert!(
            Instant::now() < deadline,
            "drift checks never ran out of permits"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A new object is not queued behind them.
    let created = Instant::now();
    env.apply(&account(ns, "late"));
    env.apply(&token(ns, "late-token", "late", ""));
    wait_for(&tokens, "late-token", T, token_ready).await;
    let took = created.elapsed();
    eprintln!("a new account and token were Ready after {took:?} with the budget spent");
    assert!(took < Duration::from_secs(8), "{took:?}");

    // Nor is a due renewal.
    let rotated = wait_for(&tokens, "rotor-token", Duration::from_secs(40), |t| {
        t.status.as_ref().and_then(|s| s.revision) >= Some(2)
    })
    .await;
    let late = k8s_openapi::jiff::Timestamp::now().duration_since(renewal);
    eprintln!(
        "renewal due at {renewal}, done {late:?} later (revision {:?})",
        rotated.status.unwrap().revision
    );
    assert!(
        late < k8s_openapi::jiff::SignedDuration::from_secs(8),
        "the renewal waited {late:?}"
    );
    env.stop_operator().await;
}

/// `--namespaces team-a,team-b` (the README's namespaced install: one Role per watched namespace, no
/// ClusterRole): objects in a third namespace are never touched, and the operator makes no cluster-scoped
/// request at all (a real API server would refuse it 403).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn namespaced_mode_leaves_other_namespaces_alone_and_asks_nothing_cluster_wide() {
    let mut env = TestEnv::start().await;
    let addr = format!("127.0.0.1:{}", free_port());
    // The third namespace's objects exist before the operator starts: watched, they would be seen at once.
    for ns in ["team-a", "team-b", "team-c"] {
        // Konnect names are one space: a name per namespace.
        env.apply(&account(ns, &format!("bot-{ns}")));
        env.apply(&token(ns, "ci", &format!("bot-{ns}"), ""));
    }
    env.start_operator(&[
        "--namespaces",
        "team-a,team-b",
        "--resync-period",
        "2s",
        "--metrics-addr",
        &addr,
    ])
    .await;
    for ns in ["team-a", "team-b"] {
        let accounts: Api<SystemAccount> = Api::namespaced(env.client(), ns);
        let tokens: Api<SystemAccountToken> = Api::namespaced(env.client(), ns);
        wait_for(&accounts, &format!("bot-{ns}"), T, account_ready).await;
        wait_for(&tokens, "ci", T, token_ready).await;
    }
    // Two full drift sweeps after that (each watched account checked again): time enough for any
    // object the operator saw to be acted on.
    let drift = |m: &str| {
        metric_total(m, |l| {
            l.starts_with("konnect_sa_drift_checks_total") && l.contains("SystemAccount")
        })
    };
    let start = drift(&metrics(&addr).await);
    let deadline = Instant::now() + T;
    while drift(&metrics(&addr).await) < start + 4 {
        assert!(Instant::now() < deadline, "drift checks ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let c_account = env
        .kube
        .get(
            "konnect-sa.dev",
            "v1alpha1",
            "systemaccounts",
            "team-c",
            "bot-team-c",
        )
        .unwrap();
    let c_token = env
        .kube
        .get(
            "konnect-sa.dev",
            "v1alpha1",
            "systemaccounttokens",
            "team-c",
            "ci",
        )
        .unwrap();
    for obj in [&c_account, &c_token] {
        assert!(obj.get("status").is_none(), "untouched: {obj}");
        assert!(
            obj.pointer("/metadata/finalizers").is_none(),
            "untouched: {obj}"
        );
        assert_eq!(
            obj.pointer("/metadata/generation"),
            Some(&serde_json::json!(1))
        );
    }
    assert!(
        env.kube
            .list("", "v1", "secrets", Some("team-c"))
            .is_empty()
    );
    let names: Vec<String> = env
        .sim
        .state()
        .accounts
        .iter()
        .map(|a| a.account.name.clone())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "one account per watched namespace: {names:?}"
    );

    let operator_requests: Vec<_> = env
        .kube
        .requests()
        .into_iter()
        .filter(|r| r.user.is_some())
        .collect();
    assert!(!operator_requests.is_empty());
    let outside: Vec<String> = operator_requests
        .iter()
        .filter(|r| !matches!(r.namespace.as_deref(), Some("team-a" | "team-b")))
        .map(|r| format!("{} {} in {:?}", r.verb, r.plural, r.namespace))
        .collect();
    assert!(
        outside.is_empty(),
        "requests outside team-a and team-b: {outside:?}"
    );
    env.stop_operator().await;
}
