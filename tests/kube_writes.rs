//! Kubernetes writes per object, counted from the API stand-in's request records (counts, not
//! times): what converging one account, its token and a role binding costs the API server, and
//! that a quiet drift sweep costs it nothing. README "Kubernetes API traffic" says what each
//! remaining write is for.
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use support::kube_api::RequestRecord;
use support::{NS, TestEnv, eventually};

const T: Duration = Duration::from_secs(30);
const GROUP: &str = "konnect-sa.dev";

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

fn ready(env: &TestEnv, plural: &str, name: &str) -> bool {
    env.kube
        .get(GROUP, "v1alpha1", plural, NS, name)
        .is_some_and(|o| is_ready(&o))
}

/// Stored writes by "plural[/status] verb".
fn writes(requests: &[RequestRecord]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in requests.iter().filter(|r| r.is_write()) {
        let what = match &r.subresource {
            Some(sub) => format!("{}/{sub} {}", r.plural, r.verb),
            None => format!("{} {}", r.plural, r.verb),
        };
        *out.entry(what).or_insert(0) += 1;
    }
    out
}

/// Events about objects of `kind`, by reason.
fn events_about(env: &TestEnv, kind: &str) -> Vec<String> {
    let mut reasons: Vec<String> = env
        .kube
        .events()
        .iter()
        .filter(|e| {
            let about = e.get("regarding").or_else(|| e.get("involvedObject"));
            about.and_then(|r| r["kind"].as_str()) == Some(kind)
        })
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect();
    reasons.sort();
    reasons
}

fn count(w: &BTreeMap<String, usize>, what: &str) -> usize {
    w.get(what).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converging_costs_the_fewest_writes_and_a_quiet_sweep_costs_none() {
    let mut env = TestEnv::start().await;
    let team = env.sim.seed_team("platform-team");
    env.start_operator(&[]).await;

    // The account first, then its dependents once the operator has seen it (so they wait for its
    // create in the cache, as in a GitOps sync where the account comes first).
    env.apply(&format!(
        "apiVersion: konnect-sa.dev/v1alpha1\nkind: SystemAccount\nmetadata: {{name: ci-bot}}\nspec:\n  teams: [{{name: {}}}]\n",
        team.name
    ));
    assert!(
        eventually(T, || {
            env.kube
                .get(GROUP, "v1alpha1", "systemaccounts", NS, "ci-bot")
                .is_some_and(|o| o["metadata"]["finalizers"].is_array())
        })
        .await
    );
    env.apply(
        "apiVersion: konnect-sa.dev/v1alpha1\nkind: SystemAccountToken\nmetadata: {name: ci-bot-token}\nspec:\n  systemAccountRef: {name: ci-bot}\n---\n\
         apiVersion: konnect-sa.dev/v1alpha1\nkind: RoleBinding\nmetadata: {name: ci-bot-viewer}\nspec:\n  systemAccountRef: {name: ci-bot}\n  roleName: Viewer\n  entityTypeName: Control Planes\n  entityRegion: eu\n",
    );
    assert!(
        eventually(T, || {
            ready(&env, "systemaccounts", "ci-bot")
                && ready(&env, "systemaccounttokens", "ci-bot-token")
                && ready(&env, "rolebindings", "ci-bot-viewer")
        })
        .await,
        "all three Ready"
    );

    let requests = env.kube.requests();
    let w = writes(&requests);
    // SystemAccount: the finalizer with the write-ahead marker of its create (one patch), Ready.
    assert_eq!(count(&w, "systemaccounts patch"), 1, "{w:#?}");
    assert_eq!(count(&w, "systemaccounts/status update"), 1, "{w:#?}");
    assert_eq!(events_about(&env, "SystemAccount"), ["Created"]);
    // Token: the finalizer with the write-ahead marker of its first issue (one patch), the Secret,
    // Ready (the issued token is recorded with it).
    assert_eq!(count(&w, "systemaccounttokens patch"), 1, "{w:#?}");
    assert_eq!(count(&w, "systemaccounttokens/status update"), 1, "{w:#?}");
    assert_eq!(count(&w, "secrets create"), 1, "{w:#?}");
    assert_eq!(events_about(&env, "SystemAccountToken"), ["Issued"]);
    // RoleBinding: the finalizer and Ready (no Waiting status while its account was created).
    assert_eq!(count(&w, "rolebindings patch"), 1, "{w:#?}");
    assert_eq!(count(&w, "rolebindings/status update"), 1, "{w:#?}");
    assert_eq!(events_about(&env, "RoleBinding"), ["Assigned"]);
    // Nothing else: 10 writes for the three objects.
    assert_eq!(w.values().sum::<usize>(), 10, "{w:#?}");
    // No GET of what the watch caches hold (the token's Secret is read: its cache holds metadata only).
    let gets: Vec<&RequestRecord> = requests
        .iter()
        .filter(|r| r.verb == "get" && r.group == GROUP)
        .collect();
    assert!(gets.is_empty(), "{gets:#?}");

    // Drift sweeps of the unchanged objects: Konnect is asked, Kubernetes is not written to.
    env.kube.reset_request_counts();
    env.sim.reset_counts();
    assert!(
        eventually(T, || {
            let c = env.sim.counts();
            let n = |op: &str| c.get(op).copied().unwrap_or(0);
            n("get-system-accounts") >= 2
                && n("get-system-accounts-accountId-assigned-roles") >= 2
                && n("get-system-accounts-id-access-tokens-id") >= 2
        })
        .await,
        "two drift sweeps: {:?}",
        env.sim.counts()
    );
    let w = writes(&env.kube.requests());
    assert!(w.is_empty(), "a quiet sweep wrote: {w:#?}");
    env.stop_operator().await;
}

/// An API server shedding load (API Priority and Fairness: one seat, no queue) answers 429 with
/// `Retry-After: 1`: the operator (kube's client retry layer) asks again no sooner than that, and
/// the objects still converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_waits_out_retry_after_when_the_api_server_sheds_load() {
    use support::kube_api::cost::CostModel;
    let mut env = TestEnv::start().await;
    env.kube.set_cost(CostModel {
        latency: Duration::from_millis(20),
        seats: 1,
        queue: 0,
        retry_after_s: 1,
        ..CostModel::calibrated()
    });
    env.start_operator(&[]).await;
    env.apply(
        "apiVersion: konnect-sa.dev/v1alpha1\nkind: SystemAccount\nmetadata: {name: shed}\nspec: {}\n---\n\
         apiVersion: konnect-sa.dev/v1alpha1\nkind: SystemAccountToken\nmetadata: {name: shed-token}\nspec:\n  systemAccountRef: {name: shed}\n",
    );
    assert!(
        eventually(Duration::from_secs(90), || {
            ready(&env, "systemaccounts", "shed")
                && ready(&env, "systemaccounttokens", "shed-token")
        })
        .await,
        "converged while the API server shed load"
    );
    let log = env.kube.cost_log();
    let ours = |a: &support::kube_api::cost::Arrival| a.request.contains(GROUP);
    let refused: Vec<_> = log.iter().filter(|a| a.rejected && ours(a)).collect();
    assert!(
        !refused.is_empty(),
        "the API server shed some of the operator's requests"
    );
    for r in refused {
        // The next time the same request arrives is the retry: at least Retry-After later.
        if let Some(next) = log
            .iter()
            .filter(|a| a.request == r.request && a.at > r.at)
            .map(|a| a.at)
            .min()
        {
            assert!(
                next.duration_since(r.at) >= Duration::from_secs(1),
                "{} retried {:?} after a 429 with Retry-After: 1",
                r.request,
                next.duration_since(r.at)
            );
        }
    }
    env.stop_operator().await;
}
