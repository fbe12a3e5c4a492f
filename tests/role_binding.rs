//! RoleBinding controller end to end: the real controller against the Kubernetes API stand-in
//! and the Konnect simulator.
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use konnect_sa_operator::api::{RoleBinding, SystemAccount};
use konnect_sa_operator::konnect::{ClientConfig, KonnectClient, RoleTuple};
use konnect_sa_operator::sim::{Faults, SimConfig};
use support::env::{free_port, metric_total};
use support::{NS, TestEnv, delete, eventually, merge_patch, ready_of, wait_for};

const T: Duration = Duration::from_secs(30);
/// The example of Konnect's "assign a role to a system account" docs.
const DOCS_CP: &str = "817d0422-45c9-4d88-8d64-45aef05c1ae7";

fn account_yaml(name: &str) -> String {
    format!(
        "apiVersion: konnect-sa.dev/v1alpha1\nkind: SystemAccount\nmetadata: {{name: {name}}}\nspec: {{description: test}}\n"
    )
}

fn binding_yaml(name: &str, account: &str, role: &str, entity_type: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: konnect-sa.dev/v1alpha1
kind: RoleBinding
metadata: {{name: {name}}}
spec:
  systemAccountRef: {{name: {account}}}
  roleName: {role}
  entityTypeName: {entity_type}
{extra}"#
    )
}

fn docs_binding(name: &str, account: &str, role: &str, extra: &str) -> String {
    binding_yaml(
        name,
        account,
        role,
        "Control Planes",
        &format!("  entityId: {DOCS_CP}\n  entityRegion: eu\n{extra}"),
    )
}

fn docs_tuple(role: &str) -> RoleTuple {
    RoleTuple {
        role_name: role.into(),
        entity_type_name: "Control Planes".into(),
        entity_id: DOCS_CP.into(),
        entity_region: "eu".into(),
    }
}

fn is_ready(b: &RoleBinding) -> bool {
    let s = b.status.clone().unwrap_or_default();
    ready_of(&s.conditions).is_some_and(|(st, _, _)| st == "True")
        && s.observed_generation == b.metadata.generation
}

fn account_ready(a: &SystemAccount) -> bool {
    let s = a.status.clone().unwrap_or_default();
    ready_of(&s.conditions).is_some_and(|(st, _, _)| st == "True")
}

fn reason(b: &RoleBinding) -> Option<String> {
    ready_of(&b.status.clone().unwrap_or_default().conditions).map(|(_, r, _)| r)
}

fn assigned_id(b: &RoleBinding) -> String {
    b.status
        .as_ref()
        .and_then(|s| s.assigned_role_id.clone())
        .expect("status.assignedRoleId")
}

/// The assignments Konnect (the simulator) holds for the account named `account`.
fn konnect_roles(env: &TestEnv, account: &str) -> Vec<konnect_sa_operator::konnect::AssignedRole> {
    env.sim
        .state()
        .account_by_name(account)
        .map(|a| a.roles.clone())
        .unwrap_or_default()
}

/// Reasons of the Events about the RoleBinding `name`.
fn event_reasons(env: &TestEnv, name: &str) -> Vec<String> {
    env.kube
        .events()
        .iter()
        .filter(|e| {
            let about = e.get("regarding").or_else(|| e.get("involvedObject"));
            about.and_then(|r| r["name"].as_str()) == Some(name)
                && about.and_then(|r| r["kind"].as_str()) == Some("RoleBinding")
        })
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect()
}

/// The assignment writes sent for an account, in order: `METHOD path body -> status`.
fn role_writes(env: &TestEnv, account_id: &str) -> Vec<String> {
    env.sim
        .journal()
        .into_iter()
        .filter(|e| {
            e.path.contains(account_id) && e.path.contains("assigned-roles") && e.method != "GET"
        })
        .map(|e| {
            format!(
                "{} {} {} -> {}",
                e.method,
                e.path,
                e.request_body.map(|b| b.to_string()).unwrap_or_default(),
                e.status
            )
        })
        .collect()
}

async fn wait_gone(env: &TestEnv, name: &str) {
    assert!(
        eventually(T, || env
            .kube
            .get("konnect-sa.dev", "v1alpha1", "rolebindings", NS, name)
            .is_none())
        .await,
        "{name}: finalizer removed and object gone"
    );
}

/// Account created after its binding; the documented tuple; a role change without an access gap;
/// delete and Orphan. `--resync-period 10m`: only watches can explain the progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn binding_lifecycle_with_the_documented_tuple() {
    let mut env = TestEnv::start().await;
    env.start_operator(&["--resync-period", "10m"]).await;
    let api = env.api::<RoleBinding>();

    env.apply(&docs_binding("ci-viewer", "ci-bot", "Viewer", ""));
    let b = wait_for(&api, "ci-viewer", T, |b| {
        reason(b).as_deref() == Some("WaitingForSystemAccount")
    })
    .await;
    let (status, _, msg) = ready_of(&b.status.unwrap().conditions).unwrap();
    assert_eq!(status, "False");
    assert!(msg.contains("ci-bot"), "{msg}");

    env.apply(&account_yaml("ci-bot"));
    let accounts = env.api::<SystemAccount>();
    let sa = wait_for(&accounts, "ci-bot", T, account_ready).await;
    let account_id = sa.status.unwrap().id.unwrap();
    // The wait's retry is 30 s away and the resync 10 min: only the account watch can wake it now.
    let b = wait_for(&api, "ci-viewer", Duration::from_secs(20), is_ready).await;
    let roles = konnect_roles(&env, "ci-bot");
    assert_eq!(roles.len(), 1, "{roles:?}");
    assert_eq!(roles[0].role, docs_tuple("Viewer"));
    let st = b.status.clone().unwrap();
    assert_eq!(st.assigned_role_id.as_deref(), Some(roles[0].id.as_str()));
    assert_eq!(st.system_account_id.as_deref(), Some(account_id.as_str()));
    assert!(
        b.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"konnect-sa.dev/cleanup".to_string())
    );
    assert!(event_reasons(&env, "ci-viewer").contains(&"Assigned".to_string()));

    // Viewer -> Admin without an access gap: Konnect has no update, so the new assignment must be
    // created (201) before the old one is deleted, in the order the simulator's journal recorded them.
    let old_id = roles[0].id.clone();
    merge_patch(
        &api,
        "ci-viewer",
        serde_json::json!({"spec": {"roleName": "Admin"}}),
    )
    .await;
    let b = wait_for(&api, "ci-viewer", T, |b| {
        is_ready(b) && b.metadata.generation == Some(2)
    })
    .await;
    assert!(
        eventually(T, || konnect_roles(&env, "ci-bot").len() == 1).await,
        "the old assignment goes"
    );
    let order = role_writes(&env, &account_id);
    let created = order
        .iter()
        .position(|w| w.starts_with("POST") && w.contains("\"Admin\"") && w.ends_with("201"));
    let deleted = order
        .iter()
        .position(|w| w.starts_with("DELETE") && w.contains(&old_id));
    assert!(
        matches!((created, deleted), (Some(c), Some(d)) if c < d),
        "the new assignment is created before the old one is deleted: {order:#?}"
    );
    let roles = konnect_roles(&env, "ci-bot");
    assert_eq!(roles.len(), 1, "the old assignment is gone: {roles:?}");
    assert_eq!(roles[0].role, docs_tuple("Admin"));
    assert_ne!(roles[0].id, old_id);
    assert_eq!(assigned_id(&b), roles[0].id);
    assert!(event_reasons(&env, "ci-viewer").contains(&"Changed".to_string()));

    // Delete: the assignment goes, then the finalizer.
    delete(&api, "ci-viewer").await;
    wait_gone(&env, "ci-viewer").await;
    assert!(konnect_roles(&env, "ci-bot").is_empty());
    assert!(event_reasons(&env, "ci-viewer").contains(&"Removed".to_string()));

    // deletionPolicy Orphan: the assignment stays.
    env.apply(&docs_binding(
        "kept",
        "ci-bot",
        "Viewer",
        "  deletionPolicy: Orphan\n",
    ));
    let b = wait_for(&api, "kept", T, is_ready).await;
    let id = assigned_id(&b);
    delete(&api, "kept").await;
    wait_gone(&env, "kept").await;
    let roles = konnect_roles(&env, "ci-bot");
    assert_eq!(roles.len(), 1, "{roles:?}");
    assert_eq!(roles[0].id, id);
    env.stop_operator().await;
}

/// An assignment removed in Konnect behind the operator's back comes back at the next resync; a
/// binding moved to another account takes its assignment along.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn assignment_is_restored_and_follows_its_account() {
    let mut env = TestEnv::start().await;
    env.start_operator(&["--resync-period", "3s"]).await;
    env.apply(&account_yaml("ci-bot"));
    env.apply(&docs_binding("ci-viewer", "ci-bot", "Viewer", ""));
    let api = env.api::<RoleBinding>();
    let b = wait_for(&api, "ci-viewer", T, is_ready).await;
    let old = assigned_id(&b);
    let account_id = b.status.unwrap().system_account_id.unwrap();

    let admin =
        KonnectClient::new(ClientConfig::new(env.sim.base_url(), env.sim.admin_token())).unwrap();
    admin
        .delete_assigned_role(&account_id, &old)
        .await
        .expect("removed in Konnect");
    assert!(konnect_roles(&env, "ci-bot").is_empty());
    let removed = Instant::now();
    let b = wait_for(&api, "ci-viewer", T, |b| {
        b.status
            .as_ref()
            .and_then(|s| s.assigned_role_id.as_deref())
            != Some(old.as_str())
            && is_ready(b)
    })
    .await;
    let roles = konnect_roles(&env, "ci-bot");
    assert_eq!(roles.len(), 1, "{roles:?}");
    assert_eq!(roles[0].role, docs_tuple("Viewer"));
    assert_eq!(assigned_id(&b), roles[0].id);
    eprintln!("restored after {:?}", removed.elapsed());

    // Pointing the binding at another account moves the assignment: created on the new account,
    // then removed from the old one (nothing left behind).
    env.apply(&account_yaml("other-bot"));
    merge_patch(
        &api,
        "ci-viewer",
        serde_json::json!({"spec": {"systemAccountRef": {"name": "other-bot"}}}),
    )
    .await;
    let b = wait_for(&api, "ci-viewer", T, |b| {
        is_ready(b) && b.metadata.generation == Some(2)
    })
    .await;
    let moved = konnect_roles(&env, "other-bot");
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0].role, docs_tuple("Viewer"));
    assert_eq!(assigned_id(&b), moved[0].id);
    let st = b.status.unwrap();
    assert_eq!(
        st.system_account_id.as_deref(),
        Some(
            env.sim
                .state()
                .account_by_name("other-bot")
                .unwrap()
                .account
                .id
                .as_str()
        )
    );
    assert!(
        konnect_roles(&env, "ci-bot").is_empty(),
        "left behind on the old account: {:?}",
        konnect_roles(&env, "ci-bot")
    );
    env.stop_operator().await;
}

/// A typo in the role of a known entity type is refused with the valid names (and nothing is
/// sent to Konnect); an entity type the reference does not list passes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_roles_are_refused_and_unlisted_entity_types_pass() {
    let mut env = TestEnv::start().await;
    env.start_operator(&[]).await;
    env.apply(&account_yaml("ci-bot"));
    env.apply(&binding_yaml(
        "typo",
        "ci-bot",
        "Viewr",
        "Control Planes",
        "",
    ));
    env.apply(&binding_yaml(
        "gateways",
        "ci-bot",
        "Admin",
        "Event Gateways",
        "",
    ));
    let api = env.api::<RoleBinding>();
    let b = wait_for(&api, "typo", T, |b| {
        reason(b).as_deref() == Some("InvalidSpec")
    })
    .await;
    let (status, _, msg) = ready_of(&b.status.unwrap().conditions).unwrap();
    assert_eq!(status, "False");
    assert!(msg.contains("Viewr"), "{msg}");
    for valid in ["Admin", "Viewer", "Deployer", "Creator"] {
        assert!(msg.contains(valid), "valid role {valid} listed: {msg}");
    }

    let b = wait_for(&api, "gateways", T, is_ready).await;
    let roles = konnect_roles(&env, "ci-bot");
    assert_eq!(
        roles.len(),
        1,
        "only the unlisted type was assigned: {roles:?}"
    );
    assert_eq!(roles[0].role.entity_type_name, "Event Gateways");
    assert_eq!(roles[0].role.entity_id, "*");
    assert_eq!(roles[0].role.entity_region, "*");
    assert_eq!(assigned_id(&b), roles[0].id);

    // Fixing the typo is picked up at once (the error retry is 30 s away).
    merge_patch(
        &api,
        "typo",
        serde_json::json!({"spec": {"roleName": "Viewer"}}),
    )
    .await;
    wait_for(&api, "typo", Duration::from_secs(20), is_ready).await;
    assert_eq!(konnect_roles(&env, "ci-bot").len(), 2);
    env.stop_operator().await;
}

/// Two bindings on one tuple share one assignment; it goes with the last of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_bindings_share_one_assignment() {
    let mut env = TestEnv::start().await;
    env.start_operator(&[]).await;
    env.apply(&account_yaml("ci-bot"));
    env.apply(&format!(
        "{}---\n{}",
        docs_binding("first", "ci-bot", "Viewer", ""),
        docs_binding("second", "ci-bot", "Viewer", "")
    ));
    let api = env.api::<RoleBinding>();
    let a = wait_for(&api, "first", T, is_ready).await;
    let b = wait_for(&api, "second", T, is_ready).await;
    let roles = konnect_roles(&env, "ci-bot");
    assert_eq!(roles.len(), 1, "{roles:?}");
    assert_eq!(assigned_id(&a), roles[0].id);
    assert_eq!(assigned_id(&b), roles[0].id);
    // What was sent, not only what Konnect kept: at most one create per binding (no retry loop), one of
    // them created; a binding that lost the race got 409 and adopted (Konnect's documented pattern).
    let statuses: Vec<u16> =
        support::journal::of(&env.sim, "post-system-accounts-accountId-assigned-roles")
            .iter()
            .map(|e| e.status)
            .collect();
    assert!(statuses.len() <= 2, "creates sent: {statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{statuses:?}"
    );

    delete(&api, "first").await;
    wait_gone(&env, "first").await;
    let roles = konnect_roles(&env, "ci-bot");
    assert_eq!(
        roles.len(),
        1,
        "still wanted by the other binding: {roles:?}"
    );
    assert_eq!(assigned_id(&b), roles[0].id);
    // And the survivor stays Ready on it, across two more drift checks (its list of assigned roles).
    env.metrics().two_more_drift_checks("RoleBinding").await;
    let b = api.get("second").await.unwrap();
    assert!(is_ready(&b));
    assert_eq!(assigned_id(&b), roles[0].id);

    delete(&api, "second").await;
    wait_gone(&env, "second").await;
    assert!(konnect_roles(&env, "ci-bot").is_empty());
    env.stop_operator().await;
}

/// The ten roles of "Control Planes" the sim lists first: ten distinct tuples per account.
const CP_ROLES: [&str; 10] = [
    "Admin",
    "Certificate Admin",
    "Consumer Admin",
    "Creator",
    "Debug Session Creator",
    "Deployer",
    "Gateway Service Admin",
    "Plugin Admin",
    "Route Admin",
    "Viewer",
];

fn reconciles_of(metrics: &str, kind: &str) -> u64 {
    metric_total(metrics, |l| {
        l.starts_with("konnect_sa_reconciles_total") && l.contains(&format!("kind=\"{kind}\""))
    })
}

/// Ten bindings of one account share the account's assigned-roles list: far fewer list calls
/// than reconciles.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bindings_of_one_account_share_the_assigned_roles_list() {
    let mut env = TestEnv::start().await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    env.start_operator(&["--resync-period", "10m", "--metrics-addr", &addr])
        .await;
    env.apply(&account_yaml("ci-bot"));
    wait_for(&env.api::<SystemAccount>(), "ci-bot", T, account_ready).await;
    env.sim.reset_counts();
    let docs: Vec<String> = CP_ROLES
        .iter()
        .enumerate()
        .map(|(i, r)| docs_binding(&format!("b{i}"), "ci-bot", &format!("\"{r}\""), ""))
        .collect();
    env.apply(&docs.join("---\n"));
    let api = env.api::<RoleBinding>();
    for i in 0..CP_ROLES.len() {
        wait_for(&api, &format!("b{i}"), T, is_ready).await;
    }
    // Every binding's reconcile has finished and been counted (the counter follows the status write).
    env.metrics()
        .wait_at_least(
            "konnect_sa_reconciles_total",
            &[("kind", "RoleBinding")],
            CP_ROLES.len() as u64,
        )
        .await;
    let lists = env
        .sim
        .counts()
        .get("get-system-accounts-accountId-assigned-roles")
        .copied()
        .unwrap_or(0);
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let reconciles = reconciles_of(&metrics, "RoleBinding");
    eprintln!("assigned-roles list calls: {lists}; RoleBinding reconciles: {reconciles}");
    assert_eq!(konnect_roles(&env, "ci-bot").len(), 10);
    assert!(reconciles >= 10, "metrics scraped: {reconciles}");
    assert!(
        lists * 5 <= reconciles,
        "{lists} list calls for {reconciles} reconciles: the list is not shared"
    );
    env.stop_operator().await;
}

/// 100 bindings over 10 accounts converge while Konnect answers 30% of calls with 429, and no
/// assignment is made twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_bindings_converge_under_rate_limiting() {
    let mut env = TestEnv::start_with(SimConfig {
        faults: Faults {
            rate_429: 0.3,
            retry_after_secs: 1,
            ..Faults::default()
        },
        seed: Some(7),
        ..SimConfig::default()
    })
    .await;
    env.start_operator(&[]).await;
    let mut docs = Vec::new();
    for a in 0..10 {
        docs.push(account_yaml(&format!("acct-{a}")));
        for (r, role) in CP_ROLES.iter().enumerate() {
            docs.push(binding_yaml(
                &format!("acct-{a}-r{r}"),
                &format!("acct-{a}"),
                &format!("\"{role}\""),
                "Control Planes",
                "  entityRegion: eu\n",
            ));
        }
    }
    env.apply(&docs.join("---\n"));
    let api = env.api::<RoleBinding>();
    let started = Instant::now();
    let converged = async {
        loop {
            let list = api.list(&Default::default()).await.unwrap();
            if list.items.len() == 100 && list.items.iter().all(is_ready) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(90), converged)
        .await
        .is_err()
    {
        let list = api.list(&Default::default()).await.unwrap();
        let stuck: Vec<_> = list
            .items
            .iter()
            .filter(|b| !is_ready(b))
            .map(|b| (b.metadata.name.clone(), reason(b)))
            .collect();
        panic!("not converged: {stuck:?}");
    }
    eprintln!("100 bindings converged in {:?}", started.elapsed());
    let state = env.sim.state();
    for a in 0..10 {
        let name = format!("acct-{a}");
        let acct = state.account_by_name(&name).expect("account exists");
        let got: Vec<(String, String, String, String)> = acct
            .roles
            .iter()
            .map(|x| {
                (
                    x.role.role_name.clone(),
                    x.role.entity_type_name.clone(),
                    x.role.entity_id.clone(),
                    x.role.entity_region.clone(),
                )
            })
            .collect();
        let distinct: BTreeSet<_> = got.iter().cloned().collect();
        assert_eq!(
            got.len(),
            10,
            "{name}: exactly its ten assignments: {got:?}"
        );
        assert_eq!(distinct.len(), 10, "{name}: no duplicates: {got:?}");
        let want: BTreeSet<_> = CP_ROLES
            .iter()
            .map(|r| {
                (
                    r.to_string(),
                    "Control Planes".to_string(),
                    "*".to_string(),
                    "eu".to_string(),
                )
            })
            .collect();
        assert_eq!(distinct, want, "{name}");
    }
    // No create sent again once one was delivered as created (Konnect would refuse it 409).
    let again = support::journal::creates_after_success(
        &env.sim,
        "post-system-accounts-accountId-assigned-roles",
        support::journal::assignment_key,
    );
    assert!(
        again.is_empty(),
        "assignment creates sent again after a 201: {again:?}"
    );
    let throttled = env.sim.counts_detail().total;
    eprintln!("simulator requests: {throttled}");
    env.stop_operator().await;
}

/// Issue (many clusters): a RoleBinding that adopted an assignment that existed before (made by hand, or
/// by a RoleBinding in another cluster on the same organisation) never removes it: not when deleted, not
/// when its account moves. Only what this cluster made is removed; the Event says why it was kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_assignment_that_existed_before_is_adopted_and_never_removed() {
    let mut env = TestEnv::start().await;
    env.start_operator(&[]).await;
    env.apply(&account_yaml("shared-bot"));
    let sa = wait_for(&env.api::<SystemAccount>(), "shared-bot", T, account_ready).await;
    let account_id = sa.status.unwrap().id.unwrap();
    // Another cluster (or a person) assigned the role first.
    let theirs = env.sim.seed_assignment(&account_id, docs_tuple("Viewer"));

    env.apply(&docs_binding("ours", "shared-bot", "Viewer", ""));
    let api = env.api::<RoleBinding>();
    let b = wait_for(&api, "ours", T, is_ready).await;
    assert_eq!(assigned_id(&b), theirs.id);
    assert_eq!(b.status.clone().unwrap().adopted, Some(true));

    delete(&api, "ours").await;
    wait_gone(&env, "ours").await;
    let roles = konnect_roles(&env, "shared-bot");
    assert_eq!(
        roles.len(),
        1,
        "the other cluster's assignment survives: {roles:?}"
    );
    assert_eq!(roles[0].id, theirs.id);
    assert!(event_reasons(&env, "ours").contains(&"Kept".to_string()));

    // What this cluster made itself is still removed on deletion.
    env.apply(&docs_binding("made-here", "shared-bot", "Admin", ""));
    let b = wait_for(&api, "made-here", T, is_ready).await;
    assert_eq!(b.status.clone().unwrap().adopted, None);
    delete(&api, "made-here").await;
    wait_gone(&env, "made-here").await;
    let roles = konnect_roles(&env, "shared-bot");
    assert_eq!(roles.len(), 1, "{roles:?}");
    assert_eq!(roles[0].id, theirs.id);
    env.stop_operator().await;
}

/// Issue (many clusters, point 4): a GitOps rename creates the new RoleBinding and prunes the old one at
/// once. The old one's cleanup must see that the new one (by its spec, before it has any status) wants the
/// same assignment: nothing is deleted in Konnect, and the new binding ends up Ready on the assignment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gitops_rename_never_deletes_the_shared_assignment() {
    let mut env = TestEnv::start().await;
    env.start_operator(&[]).await;
    env.apply(&account_yaml("renamed-bot"));
    env.apply(&docs_binding("old-name", "renamed-bot", "Viewer", ""));
    let api = env.api::<RoleBinding>();
    let old = wait_for(&api, "old-name", T, is_ready).await;
    let id = assigned_id(&old);
    env.sim.reset_counts();

    // The sync: the new object and the prune of the old one, back to back.
    env.apply(&docs_binding("new-name", "renamed-bot", "Viewer", ""));
    delete(&api, "old-name").await;
    wait_gone(&env, "old-name").await;
    let new = wait_for(&api, "new-name", T, is_ready).await;
    assert_eq!(assigned_id(&new), id, "the same assignment, kept");
    assert_eq!(
        new.status.unwrap().adopted,
        None,
        "shared within the cluster, not adopted"
    );
    let deletes = env
        .sim
        .counts()
        .get("delete-system-accounts-accountId-assigned-roles-roleId")
        .copied()
        .unwrap_or(0);
    assert_eq!(
        deletes,
        0,
        "no DELETE reached Konnect: {:?}",
        env.sim.counts()
    );
    let roles = konnect_roles(&env, "renamed-bot");
    assert_eq!(roles.len(), 1);
    assert_eq!(roles[0].id, id);

    // The last binding that wants it removes it.
    delete(&api, "new-name").await;
    wait_gone(&env, "new-name").await;
    assert!(konnect_roles(&env, "renamed-bot").is_empty());
    env.stop_operator().await;
}

/// Two bindings share one assignment and one of them changes role: the other keeps the shared assignment
/// (never deleted, so it has no gap either), the changed one gets an assignment of its own, created before
/// anything of the shared one is touched; deleting the changed binding then removes only its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_of_two_bindings_sharing_an_assignment_changes_role() {
    let mut env = TestEnv::start().await;
    env.start_operator(&[]).await;
    env.apply(&account_yaml("ci-bot"));
    env.apply(&format!(
        "{}---\n{}",
        docs_binding("first", "ci-bot", "Viewer", ""),
        docs_binding("second", "ci-bot", "Viewer", "")
    ));
    let api = env.api::<RoleBinding>();
    let sa = wait_for(&env.api::<SystemAccount>(), "ci-bot", T, account_ready).await;
    let account_id = sa.status.unwrap().id.unwrap();
    wait_for(&api, "first", T, is_ready).await;
    let second = wait_for(&api, "second", T, is_ready).await;
    let shared = assigned_id(&second);

    merge_patch(
        &api,
        "second",
        serde_json::json!({"spec": {"roleName": "Admin"}}),
    )
    .await;
    let second = wait_for(&api, "second", T, |b| {
        is_ready(b) && b.metadata.generation == Some(2)
    })
    .await;
    assert_ne!(assigned_id(&second), shared, "an assignment of its own");
    let first = wait_for(&api, "first", T, is_ready).await;
    assert_eq!(
        assigned_id(&first),
        shared,
        "the other keeps the shared one"
    );
    let mut roles: Vec<String> = konnect_roles(&env, "ci-bot")
        .iter()
        .map(|r| r.role.role_name.clone())
        .collect();
    roles.sort();
    assert_eq!(roles, ["Admin", "Viewer"]);
    let writes = role_writes(&env, &account_id);
    assert!(
        !writes
            .iter()
            .any(|w| w.starts_with("DELETE") && w.contains(&shared)),
        "the shared assignment was never deleted: {writes:#?}"
    );

    delete(&api, "second").await;
    wait_gone(&env, "second").await;
    let roles = konnect_roles(&env, "ci-bot");
    assert_eq!(roles.len(), 1, "{roles:?}");
    assert_eq!(roles[0].id, shared);
    env.stop_operator().await;
}

/// README (per-object connection): a RoleBinding with no `spec.konnect` inherits the `authSecretRef` of the
/// SystemAccount it names, and that Secret's `serverURL` picks the organisation: the assignment is made,
/// recorded and removed there, and the operator-wide organisation never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_binding_inherits_its_accounts_connection_and_server_url() {
    use konnect_sa_operator::sim::Simulator;
    let mut env = TestEnv::start().await;
    let org_b = Simulator::start(SimConfig {
        admin_token: konnect_sa_operator::konnect::TokenValue::new(
            "kpat_organisationbadmintoken00000000000000000000000",
        ),
        journal: true,
        ..Default::default()
    })
    .await
    .unwrap();
    env.start_operator(&[]).await;
    env.apply(&format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: org-b-auth}}
stringData: {{token: {}, serverURL: "{}"}}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {{name: in-b}}
spec: {{konnect: {{authSecretRef: {{name: org-b-auth}}}}}}
"#,
        org_b.admin_token().expose(),
        org_b.base_url()
    ));
    wait_for(&env.api::<SystemAccount>(), "in-b", T, account_ready).await;
    env.apply(&docs_binding("b-viewer", "in-b", "Viewer", ""));
    let api = env.api::<RoleBinding>();
    let b = wait_for(&api, "b-viewer", T, is_ready).await;
    let status = b.status.clone().unwrap();
    assert_eq!(status.konnect_auth_secret.as_deref(), Some("org-b-auth"));
    let roles = org_b
        .state()
        .account_by_name("in-b")
        .map(|a| a.roles.clone())
        .unwrap_or_default();
    assert_eq!(roles.len(), 1, "assigned in organisation B: {roles:?}");
    assert_eq!(roles[0].id, assigned_id(&b));
    assert!(
        env.sim.state().accounts.is_empty(),
        "the operator-wide organisation holds nothing"
    );
    let sent_to_a: Vec<_> = env
        .sim
        .journal()
        .into_iter()
        .filter(|e| e.path.contains("assigned-roles"))
        .collect();
    assert!(sent_to_a.is_empty(), "{sent_to_a:?}");

    delete(&api, "b-viewer").await;
    wait_gone(&env, "b-viewer").await;
    assert!(
        org_b
            .state()
            .account_by_name("in-b")
            .unwrap()
            .roles
            .is_empty(),
        "removed in organisation B, through the inherited connection"
    );
    env.stop_operator().await;
}
