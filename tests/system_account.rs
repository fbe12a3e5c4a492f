//! SystemAccount controller end to end: the real controller against the Kubernetes API stand-in
//! and the Konnect simulator.
mod support;

use std::time::Duration;

use konnect_sa_operator::api::SystemAccount;
use support::{NS, TestEnv, delete, eventually, merge_patch, ready_of, wait_for};

const T: Duration = Duration::from_secs(20);

fn is_ready(a: &SystemAccount) -> bool {
    let s = a.status.clone().unwrap_or_default();
    ready_of(&s.conditions).is_some_and(|(st, _, _)| st == "True")
        && s.observed_generation == a.metadata.generation
}

fn reason(a: &SystemAccount) -> Option<String> {
    ready_of(&a.status.clone().unwrap_or_default().conditions).map(|(_, r, _)| r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn account_with_two_teams_becomes_ready_and_exists_in_konnect() {
    let mut env = TestEnv::start().await;
    let platform = env.sim.seed_team("Platform");
    let ops = env.sim.seed_team("Ops");
    env.start_operator(&[]).await;
    env.apply(&format!(
        r#"
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {{name: ci-bot}}
spec:
  description: CI automation
  teams: [{{name: Platform}}, {{id: {}}}]
"#,
        ops.id
    ));
    let api = env.api::<SystemAccount>();
    let sa = wait_for(&api, "ci-bot", T, is_ready).await;
    let status = sa.status.unwrap();
    let state = env.sim.state();
    let konnect = state
        .account_by_name("ci-bot")
        .expect("account exists in Konnect");
    assert_eq!(status.id.as_deref(), Some(konnect.account.id.as_str()));
    assert_eq!(konnect.account.description, "CI automation");
    let mut teams = konnect.team_ids.clone();
    teams.sort();
    let mut want = vec![platform.id.clone(), ops.id.clone()];
    want.sort();
    assert_eq!(teams, want);
    assert_eq!(status.teams.len(), 2);
    assert!(
        sa.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"konnect-sa.dev/cleanup".to_string())
    );

    // Edit the description and rename: patched in place, observedGeneration follows.
    merge_patch(
        &api,
        "ci-bot",
        serde_json::json!({"spec": {"name": "ci-robot", "description": "CI v2"}}),
    )
    .await;
    let sa = wait_for(&api, "ci-bot", T, |a| {
        is_ready(a) && a.metadata.generation == Some(2)
    })
    .await;
    let state = env.sim.state();
    let renamed = state
        .account_by_name("ci-robot")
        .expect("renamed in Konnect");
    assert_eq!(
        renamed.account.id,
        sa.status.as_ref().unwrap().id.clone().unwrap(),
        "same account, not a new one"
    );
    assert_eq!(renamed.account.description, "CI v2");
    assert_eq!(state.accounts.len(), 1);

    // Rename onto a taken name: Conflict, nothing else changed.
    let other = env.sim.seed_account("taken", "someone else's", false);
    merge_patch(
        &api,
        "ci-bot",
        serde_json::json!({"spec": {"name": "taken", "description": "CI v3"}}),
    )
    .await;
    let sa = wait_for(&api, "ci-bot", T, |a| {
        reason(a).as_deref() == Some("Conflict")
    })
    .await;
    let (_, _, msg) = ready_of(&sa.status.unwrap().conditions).unwrap();
    assert!(msg.contains("taken"), "{msg}");
    let state = env.sim.state();
    assert_eq!(
        state
            .account_by_name("ci-robot")
            .unwrap()
            .account
            .description,
        "CI v2"
    );
    assert_eq!(state.account_by_name("taken").unwrap().account.id, other.id);

    // Delete: account gone from Konnect, finalizer removed.
    merge_patch(
        &api,
        "ci-bot",
        serde_json::json!({"spec": {"name": "ci-robot"}}),
    )
    .await;
    wait_for(&api, "ci-bot", T, is_ready).await;
    delete(&api, "ci-bot").await;
    assert!(
        eventually(T, || env
            .kube
            .get("konnect-sa.dev", "v1alpha1", "systemaccounts", NS, "ci-bot")
            .is_none())
        .await,
        "finalizer removed and object gone"
    );
    assert!(
        env.sim.state().account_by_name("ci-robot").is_none(),
        "account deleted in Konnect"
    );
    assert!(
        env.sim.state().account_by_name("taken").is_some(),
        "the other account is untouched"
    );
    env.stop_operator().await;
}
