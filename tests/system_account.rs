//! SystemAccount controller end to end: the real controller against the Kubernetes API stand-in
//! and the Konnect simulator.
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use konnect_sa_operator::api::SystemAccount;
use konnect_sa_operator::konnect::{ClientConfig, KonnectClient};
use konnect_sa_operator::sim::Faults;
use serde_json::Value;
use support::metrics::poke_held_back;
use support::{NS, TestEnv, delete, eventually, merge_patch, ready_of, wait_for};

const T: Duration = Duration::from_secs(30);

fn is_ready(a: &SystemAccount) -> bool {
    let s = a.status.clone().unwrap_or_default();
    ready_of(&s.conditions).is_some_and(|(st, _, _)| st == "True")
        && s.observed_generation == a.metadata.generation
}

fn reason(a: &SystemAccount) -> Option<String> {
    ready_of(&a.status.clone().unwrap_or_default().conditions).map(|(_, r, _)| r)
}

fn ready_message(a: &SystemAccount) -> String {
    ready_of(&a.status.clone().unwrap_or_default().conditions)
        .map(|(_, _, m)| m)
        .unwrap_or_default()
}

/// Ready=False with this reason, for the current generation.
fn failed_with(reason_: &'static str) -> impl Fn(&SystemAccount) -> bool {
    move |a| {
        let s = a.status.clone().unwrap_or_default();
        reason(a).as_deref() == Some(reason_)
            && ready_of(&s.conditions).is_some_and(|(st, _, _)| st == "False")
            && s.observed_generation == a.metadata.generation
    }
}

/// Someone working in Konnect directly (the UI, another tool): the simulator's admin token.
fn konnect_admin(env: &TestEnv) -> KonnectClient {
    KonnectClient::new(ClientConfig::new(env.sim.base_url(), env.sim.admin_token())).unwrap()
}

/// (type, reason, note) of the Events about the named object.
fn events_for(env: &TestEnv, name: &str) -> Vec<(String, String, String)> {
    env.kube
        .events()
        .into_iter()
        .filter(|e| {
            e.pointer("/regarding/name")
                .or(e.pointer("/involvedObject/name"))
                == Some(&Value::from(name))
        })
        .map(|e| {
            let s = |p: &str| {
                e.pointer(p)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let note = if e.get("note").is_some() {
                s("/note")
            } else {
                s("/message")
            };
            (s("/type"), s("/reason"), note)
        })
        .collect()
}

fn has_event(env: &TestEnv, name: &str, type_: &str, reason_: &str) -> bool {
    events_for(env, name)
        .iter()
        .any(|(t, r, _)| t == type_ && r == reason_)
}

/// Requests other than reads sent for the Konnect object `id`.
fn writes_touching(env: &TestEnv, id: &str) -> Vec<String> {
    support::journal::touching(&env.sim, id)
        .into_iter()
        .filter(|r| !r.starts_with("GET "))
        .collect()
}

fn gone(env: &TestEnv, name: &str) -> bool {
    env.kube
        .get("konnect-sa.dev", "v1alpha1", "systemaccounts", NS, name)
        .is_none()
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

    // Events tell the story: created, updated, and a Warning for the conflict.
    assert!(
        eventually(T, || has_event(&env, "ci-bot", "Normal", "Created")
            && has_event(&env, "ci-bot", "Normal", "Updated")
            && has_event(&env, "ci-bot", "Warning", "Conflict"))
        .await,
        "events: {:#?}",
        events_for(&env, "ci-bot")
    );

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_existing_name_is_refused_untouched_or_adopted_on_request() {
    let mut env = TestEnv::start().await;
    let legacy = env.sim.seed_account("legacy-ci", "created by hand", false);
    env.start_operator(&[]).await;
    env.apply(
        r#"
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: legacy-ci}
spec: {description: managed now}
"#,
    );
    let api = env.api::<SystemAccount>();
    let sa = wait_for(&api, "legacy-ci", T, failed_with("Conflict")).await;
    let msg = ready_message(&sa);
    assert!(
        msg.contains("legacy-ci") && msg.contains("Adopt"),
        "says what to do: {msg}"
    );
    assert!(sa.status.as_ref().unwrap().id.is_none());
    assert!(
        eventually(T, || has_event(&env, "legacy-ci", "Warning", "Conflict")).await,
        "a Warning event on Conflict"
    );
    // Refused means untouched: not patched, not deleted, nor tried, even when the object is woken again.
    poke_held_back(env.metrics(), &api, "legacy-ci", "SystemAccount").await;
    let state = env.sim.state();
    let account = &state.account_by_name("legacy-ci").unwrap().account;
    assert_eq!(account, &legacy, "the refused account is not patched");
    assert_eq!(state.accounts.len(), 1);
    assert_eq!(writes_touching(&env, &legacy.id), Vec::<String>::new());

    // Adopt: the same account, now ours, description converged.
    merge_patch(
        &api,
        "legacy-ci",
        serde_json::json!({"spec": {"adoption": "Adopt"}}),
    )
    .await;
    let sa = wait_for(&api, "legacy-ci", T, is_ready).await;
    let status = sa.status.unwrap();
    assert_eq!(status.id.as_deref(), Some(legacy.id.as_str()));
    assert_eq!(status.adopted, Some(true));
    let state = env.sim.state();
    assert_eq!(state.accounts.len(), 1, "adopted, not duplicated");
    assert_eq!(
        state
            .account_by_name("legacy-ci")
            .unwrap()
            .account
            .description,
        "managed now"
    );
    assert!(has_event(&env, "legacy-ci", "Normal", "Adopted"));

    // An adopted account existed before this object: deleting the CR leaves it in Konnect (API.md: the
    // operator deletes only what it created), and says so.
    delete(&api, "legacy-ci").await;
    assert!(eventually(T, || gone(&env, "legacy-ci")).await);
    assert!(
        env.sim
            .state()
            .accounts
            .iter()
            .any(|a| a.account.id == legacy.id),
        "adopted account kept"
    );
    assert!(has_event(&env, "legacy-ci", "Normal", "Kept"));
    env.stop_operator().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletion_policy_orphan_keeps_the_account() {
    let mut env = TestEnv::start().await;
    let legacy = env.sim.seed_account("kept", "old", false);
    env.start_operator(&[]).await;
    env.apply(
        r#"
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: kept}
spec: {description: new, adoption: Adopt, deletionPolicy: Orphan}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: fresh}
spec: {description: created by us, deletionPolicy: Orphan}
"#,
    );
    let api = env.api::<SystemAccount>();
    let kept = wait_for(&api, "kept", T, is_ready).await;
    assert_eq!(kept.status.unwrap().id.as_deref(), Some(legacy.id.as_str()));
    let fresh = wait_for(&api, "fresh", T, is_ready).await;
    let fresh_id = fresh.status.unwrap().id.unwrap();
    delete(&api, "kept").await;
    delete(&api, "fresh").await;
    assert!(eventually(T, || gone(&env, "kept") && gone(&env, "fresh")).await);
    let state = env.sim.state();
    assert_eq!(
        state.accounts.len(),
        2,
        "both accounts orphaned: {state:#?}"
    );
    assert_eq!(
        state.account_by_name("kept").unwrap().account.description,
        "new"
    );
    assert_eq!(state.account_by_name("fresh").unwrap().account.id, fresh_id);
    env.stop_operator().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drift_in_konnect_is_repaired_and_foreign_memberships_are_left_alone() {
    let mut env = TestEnv::start().await;
    let platform = env.sim.seed_team("Platform");
    let ops = env.sim.seed_team("Ops");
    let other = env.sim.seed_team("Other");
    env.start_operator(&[]).await;
    env.apply(
        r#"
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: drift}
spec:
  teams: [{name: Platform}, {name: Ops}]
"#,
    );
    let api = env.api::<SystemAccount>();
    let sa = wait_for(&api, "drift", T, is_ready).await;
    let first_id = sa.status.unwrap().id.unwrap();
    let konnect = konnect_admin(&env);

    // Deleted behind our back: recreated on the next resync (3 s here; generous timeout on a loaded machine),
    // with a new id and its memberships.
    konnect.delete_system_account(&first_id).await.unwrap();
    let started = Instant::now();
    let sa = wait_for(&api, "drift", T, |a| {
        is_ready(a) && a.status.as_ref().unwrap().id.as_deref() != Some(first_id.as_str())
    })
    .await;
    eprintln!("recreated after {:?}", started.elapsed());
    let new_id = sa.status.unwrap().id.unwrap();
    let state = env.sim.state();
    let account = state.account_by_name("drift").expect("recreated");
    assert_eq!(account.account.id, new_id);
    let teams: BTreeSet<_> = account.team_ids.iter().cloned().collect();
    assert_eq!(teams, BTreeSet::from([platform.id.clone(), ops.id.clone()]));
    assert!(has_event(&env, "drift", "Normal", "Recreated"));

    // A membership removed in Konnect is re-added; one added by someone else stays.
    konnect.remove_team_member(&ops.id, &new_id).await.unwrap();
    konnect.add_team_member(&other.id, &new_id).await.unwrap();
    let members = || -> BTreeSet<String> {
        env.sim
            .state()
            .account_by_name("drift")
            .map(|a| a.team_ids.iter().cloned().collect())
            .unwrap_or_default()
    };
    let all3 = BTreeSet::from([platform.id.clone(), ops.id.clone(), other.id.clone()]);
    assert!(
        eventually(T, || members() == all3).await,
        "membership re-added, foreign one kept: {:?}",
        members()
    );

    // Dropping Ops from the spec removes only our membership.
    merge_patch(
        &api,
        "drift",
        serde_json::json!({"spec": {"teams": [{"name": "Platform"}]}}),
    )
    .await;
    wait_for(&api, "drift", T, |a| {
        is_ready(a) && a.metadata.generation == Some(2)
    })
    .await;
    assert_eq!(
        members(),
        BTreeSet::from([platform.id.clone(), other.id.clone()])
    );
    // And it stays that way across resyncs (two more drift checks: the first finished, writes included).
    env.metrics().two_more_drift_checks("SystemAccount").await;
    assert_eq!(
        members(),
        BTreeSet::from([platform.id.clone(), other.id.clone()])
    );
    env.stop_operator().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_or_ambiguous_teams_are_invalid_spec_and_create_nothing() {
    let mut env = TestEnv::start().await;
    env.sim.seed_team("Dup");
    env.sim.seed_team("Dup");
    env.start_operator(&[]).await;
    env.apply(
        r#"
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: unknown-team}
spec:
  teams: [{name: Nope}]
---
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: dup-team}
spec:
  teams: [{name: Dup}]
"#,
    );
    let api = env.api::<SystemAccount>();
    let sa = wait_for(&api, "unknown-team", T, failed_with("InvalidSpec")).await;
    let msg = ready_message(&sa);
    assert!(
        msg.contains("'Nope'") && msg.contains("spec.teams"),
        "{msg}"
    );
    let sa = wait_for(&api, "dup-team", T, failed_with("InvalidSpec")).await;
    let msg = ready_message(&sa);
    assert!(
        msg.contains("'Dup'") && msg.contains("by id"),
        "says to refer by id: {msg}"
    );
    assert!(
        env.sim.state().accounts.is_empty(),
        "a spec error leaves nothing behind in Konnect"
    );
    // Both can still be deleted (nothing to clean up).
    delete(&api, "unknown-team").await;
    delete(&api, "dup-team").await;
    assert!(eventually(T, || gone(&env, "unknown-team") && gone(&env, "dup-team")).await);
    env.stop_operator().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn konnect_managed_accounts_are_never_adopted_patched_or_deleted() {
    let mut env = TestEnv::start().await;
    let managed = env.sim.seed_account("mesh-zone", "Konnect's own", true);
    env.start_operator(&[]).await;
    env.apply(
        r#"
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: mesh-adopt}
spec: {name: mesh-zone, description: mine now, adoption: Adopt}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: mesh-refuse}
spec: {name: mesh-zone, description: mine now}
"#,
    );
    let api = env.api::<SystemAccount>();
    for name in ["mesh-adopt", "mesh-refuse"] {
        let sa = wait_for(&api, name, T, failed_with("InvalidSpec")).await;
        let msg = ready_message(&sa);
        assert!(
            msg.contains("konnect_managed") && msg.contains("spec.name"),
            "{name}: {msg}"
        );
        assert!(sa.status.unwrap().id.is_none());
        poke_held_back(env.metrics(), &api, name, "SystemAccount").await;
    }
    delete(&api, "mesh-adopt").await;
    delete(&api, "mesh-refuse").await;
    assert!(eventually(T, || gone(&env, "mesh-adopt") && gone(&env, "mesh-refuse")).await);
    let state = env.sim.state();
    assert_eq!(state.accounts.len(), 1);
    assert_eq!(
        state.accounts[0].account, managed,
        "never patched nor deleted"
    );
    // Nor was it tried: the simulator would refuse either with 400, so only the journal can tell.
    let writes = writes_touching(&env, &managed.id);
    assert!(
        writes.is_empty(),
        "writes sent for a konnect_managed account: {writes:?}"
    );
    env.stop_operator().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rejected_token_backs_off_and_recovers_when_the_secret_is_fixed() {
    let mut env = TestEnv::start().await;
    env.start_operator(&[]).await;
    let wrong = "kpat_wrongwrongwrongwrongwrongwrongwrongwrongwrongwr";
    env.apply(&format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: konnect-auth}}
stringData: {{token: {wrong}}}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {{name: authy}}
spec:
  konnect: {{authSecretRef: {{name: konnect-auth}}}}
"#
    ));
    let api = env.api::<SystemAccount>();
    let sa = wait_for(&api, "authy", T, failed_with("AuthFailed")).await;
    let msg = ready_message(&sa);
    assert!(msg.contains("token"), "{msg}");
    support::leak::assert_clean(&[wrong.to_string()], &msg, "the Ready message");

    // Backoff, not a hot loop: a wake during the backoff runs nothing; the next attempt is the backoff's
    // retry, one request (401 is not retried by the client).
    env.sim.reset_counts();
    let errors = "konnect_sa_reconcile_errors_total";
    let failed = env
        .metrics()
        .value(errors, &[("kind", "SystemAccount")])
        .await;
    poke_held_back(env.metrics(), &api, "authy", "SystemAccount").await;
    let retried = env
        .metrics()
        .wait_at_least(errors, &[("kind", "SystemAccount")], failed + 1)
        .await;
    let calls = env.sim.counts_detail().total;
    eprintln!(
        "{calls} requests for {} failed reconciles",
        retried - failed
    );
    // (Plus, at most, the minute's readiness check of the operator-wide connection.)
    assert!(
        calls <= retried - failed + 1,
        "one request per attempt: {calls} for {}",
        retried - failed
    );

    // Fix the Secret: Ready without a restart.
    env.apply(&format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: konnect-auth}}
stringData: {{token: {}}}
"#,
        env.sim.admin_token().expose()
    ));
    let sa = wait_for(&api, "authy", Duration::from_secs(60), is_ready).await;
    assert!(env.sim.state().account_by_name("authy").is_some());
    assert!(sa.status.unwrap().id.is_some());
    let mut values = env.token_values();
    values.push(wrong.to_string());
    for (_, _, note) in events_for(&env, "authy") {
        support::leak::assert_clean(&values, &note, "an Event");
    }
    env.stop_operator().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_accounts_converge_under_faults_without_duplicates() {
    let mut env = TestEnv::start().await;
    // A 30 s resync: with 3 s, the resyncs of the accounts already Ready (two calls each, 30% of them
    // waiting out a 429) keep the 4 workers busy, and kube-runtime picks the next object from a set
    // in no fair order, so some new objects could wait indefinitely. Convergence is what this test is about.
    env.start_operator(&["--resync-period", "30s"]).await;
    env.set_faults(Faults {
        rate_429: 0.3,
        rate_5xx: 0.1,
        rate_lost: 0.05,
        retry_after_secs: 1,
        ..Faults::default()
    });
    let manifest: String = (0..50)
        .map(|i| {
            format!(
                "---\napiVersion: konnect-sa.dev/v1alpha1\nkind: SystemAccount\nmetadata: {{name: bot-{i:02}}}\nspec: {{description: bot {i}}}\n"
            )
        })
        .collect();
    env.apply(&manifest);
    let api = env.api::<SystemAccount>();
    let started = Instant::now();
    let all_ready = || async {
        let list = api.list(&Default::default()).await.unwrap();
        list.items.len() == 50 && list.items.iter().all(is_ready)
    };
    while !all_ready().await {
        if started.elapsed() > Duration::from_secs(90) {
            let list = api.list(&Default::default()).await.unwrap();
            let not: Vec<_> = list
                .items
                .iter()
                .filter(|a| !is_ready(a))
                .map(|a| (a.metadata.name.clone(), ready_message(a)))
                .collect();
            panic!("not all Ready after 90 s: {not:#?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("50 accounts Ready after {:?}", started.elapsed());
    let state = env.sim.state();
    let names: BTreeSet<_> = state
        .accounts
        .iter()
        .map(|a| a.account.name.clone())
        .collect();
    assert_eq!(state.accounts.len(), 50, "no duplicates");
    assert_eq!(names.len(), 50);
    // Nor a duplicate create sent (the simulator would answer it 409): no POST of a name once one was
    // delivered as created.
    let again = support::journal::creates_after_success(&env.sim, "post-system-accounts", |e| {
        e.request_body
            .as_ref()
            .and_then(|b| b["name"].as_str())
            .unwrap_or_default()
            .to_string()
    });
    assert!(
        again.is_empty(),
        "creates sent again after a 201: {again:?}"
    );
    let list = api.list(&Default::default()).await.unwrap();
    for a in list.items {
        let id = a.status.clone().unwrap().id.unwrap();
        let name = a.metadata.name.unwrap();
        assert_eq!(state.account_by_name(&name).unwrap().account.id, id);
        // Its own account, recovered after a lost create, is never refused nor reported as adopted.
        assert_ne!(a.status.as_ref().unwrap().adopted, Some(true), "{name}");
        assert!(
            !has_event(&env, &name, "Warning", "Conflict"),
            "{name} refused its own account: {:#?}",
            events_for(&env, &name)
        );
    }
    env.stop_operator().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_konnect_gets_a_bounded_number_of_calls() {
    let mut env = TestEnv::start().await;
    env.start_operator(&[]).await;
    // Let the operator start (its token check) before Konnect goes down.
    env.metrics()
        .wait_at_least(
            "konnect_sa_konnect_requests_total",
            &[("operation", "get-organizations-me"), ("code", "200")],
            1,
        )
        .await;
    let errors = "konnect_sa_reconcile_errors_total";
    let failed = env
        .metrics()
        .value(errors, &[("kind", "SystemAccount")])
        .await;
    env.set_faults(Faults {
        rate_5xx: 1.0,
        ..Faults::default()
    });
    env.sim.reset_counts();
    let manifest: String = (0..10)
        .map(|i| {
            format!(
                "---\napiVersion: konnect-sa.dev/v1alpha1\nkind: SystemAccount\nmetadata: {{name: down-{i}}}\nspec: {{}}\n"
            )
        })
        .collect();
    env.apply(&manifest);
    let api = env.api::<SystemAccount>();
    for i in 0..10 {
        wait_for(&api, &format!("down-{i}"), T, failed_with("KonnectError")).await;
    }
    // Woken during its backoff (as our own status writes wake it), a failing object runs nothing.
    poke_held_back(env.metrics(), &api, "down-0", "SystemAccount").await;
    // Two rounds of failures (the first, and the backoff's retries): each failed reconcile made one
    // Konnect call, sent at most 5 times (client max_attempts), and each object may have one more
    // reconcile in flight. (The held-back wake above is what rules out a loop on every wake.)
    let rounds = env
        .metrics()
        .wait_at_least(errors, &[("kind", "SystemAccount")], failed + 20)
        .await
        - failed;
    let calls = env.sim.counts_detail().total;
    eprintln!("{calls} requests for {rounds} failed reconciles with every call failing");
    assert!(
        calls <= 5 * (rounds + 10),
        "{calls} requests for {rounds} failed reconciles"
    );
    let sa = api.get("down-0").await.unwrap();
    assert!(
        ready_message(&sa).contains("Retrying"),
        "{}",
        ready_message(&sa)
    );
    env.stop_operator().await;
}

/// Issue (many clusters): a pending-create marker left behind must never make someone else's account look
/// like ours. An account that already existed when the marker was recorded (created by hand, or by another
/// cluster) is not adopted under `adoption: Refuse`, and deleting the object leaves it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_account_older_than_the_pending_marker_is_neither_adopted_nor_deleted() {
    let mut env = TestEnv::start().await;
    env.apply(
        r#"
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: ci-bot}
spec: {description: CI}
"#,
    );
    // Someone else's account, created before our (unfinished) create was recorded.
    let theirs = env.sim.seed_account("ci-bot", "made by hand", false);
    let later = k8s_openapi::jiff::Timestamp::now()
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(600))
        .unwrap();
    let later = k8s_openapi::jiff::Timestamp::from_second(later.as_second()).unwrap();
    let api = env.api::<SystemAccount>();
    api.patch_status(
        "ci-bot",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({
            "status": {"pendingCreate": "ci-bot", "pendingCreateSince": later.to_string()}
        })),
    )
    .await
    .unwrap();
    env.start_operator(&[]).await;
    let sa = wait_for(&api, "ci-bot", T, |a| {
        let s = a.status.clone().unwrap_or_default();
        ready_of(&s.conditions).is_some_and(|(_, r, _)| r == "Conflict")
    })
    .await;
    assert_eq!(sa.status.unwrap().id, None, "not adopted");
    let account = env
        .sim
        .state()
        .accounts
        .into_iter()
        .find(|a| a.account.id == theirs.id)
        .expect("their account is there");
    assert_eq!(account.account.description, "made by hand", "not edited");

    delete(&api, "ci-bot").await;
    assert!(
        eventually(T, || env
            .kube
            .get("konnect-sa.dev", "v1alpha1", "systemaccounts", NS, "ci-bot")
            .is_none())
        .await,
        "deleted"
    );
    assert!(
        env.sim
            .state()
            .accounts
            .iter()
            .any(|a| a.account.id == theirs.id),
        "their account survives the deletion of ours"
    );
    env.stop_operator().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_committed_before_a_crash_is_recognised_as_our_own() {
    let mut env = TestEnv::start().await;
    env.apply(
        r#"
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: crashy}
spec: {description: CI}
"#,
    );
    // The state a crash between "record the create" and "record the id" leaves behind: the account exists in
    // Konnect, status.pendingCreate names it, status.id is empty.
    let api = env.api::<SystemAccount>();
    api.patch_status(
        "crashy",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({"status": {"pendingCreate": "crashy"}})),
    )
    .await
    .unwrap();
    let sa = api.get_status("crashy").await.unwrap();
    assert_eq!(
        sa.status.unwrap().pending_create.as_deref(),
        Some("crashy"),
        "the CRD keeps status.pendingCreate"
    );
    let ours = env.sim.seed_account("crashy", "CI", false);
    env.start_operator(&[]).await;
    let sa = wait_for(&api, "crashy", T, is_ready).await;
    let status = sa.status.unwrap();
    assert_eq!(status.id.as_deref(), Some(ours.id.as_str()));
    assert_eq!(status.pending_create, None);
    assert_ne!(status.adopted, Some(true), "created by us, not adopted");
    assert_eq!(env.sim.state().accounts.len(), 1, "not created twice");
    assert!(!has_event(&env, "crashy", "Warning", "Conflict"));
    env.stop_operator().await;
}

/// Issue (many clusters): `status.teams` claimed memberships the operator did not add. After adopting an
/// account that a person had already put in a team, naming that team in the spec and then dropping it
/// again must leave the person's membership alone; a membership the operator added itself is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_membership_that_existed_before_is_never_claimed_or_removed() {
    let mut env = TestEnv::start().await;
    let ops = env.sim.seed_team("ops");
    let dev = env.sim.seed_team("dev");
    let theirs = env.sim.seed_account("handmade", "by a person", false);
    env.sim.seed_membership(&ops.id, &theirs.id);
    env.start_operator(&[]).await;
    env.apply(
        r#"
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: handmade}
spec: {description: by a person, adoption: Adopt, teams: [{name: ops}, {name: dev}]}
"#,
    );
    let api = env.api::<SystemAccount>();
    let sa = wait_for(&api, "handmade", T, is_ready).await;
    let owned: Vec<String> = sa
        .status
        .unwrap()
        .teams
        .iter()
        .map(|t| t.name.clone())
        .collect();
    assert_eq!(
        owned,
        vec!["dev".to_string()],
        "only the membership it added is its own"
    );

    merge_patch(&api, "handmade", serde_json::json!({"spec": {"teams": []}})).await;
    let members = || {
        env.sim
            .state()
            .accounts
            .into_iter()
            .find(|a| a.account.id == theirs.id)
            .map(|a| a.team_ids)
            .unwrap_or_default()
    };
    assert!(
        eventually(T, || !members().contains(&dev.id)).await,
        "the membership it added is removed"
    );
    wait_for(&api, "handmade", T, is_ready).await;
    assert!(members().contains(&ops.id), "the person's membership stays");
    env.stop_operator().await;
}

/// A new account's first create is recorded with its finalizer, in one patch (the
/// `konnect-sa.dev/pending-create` annotation): a crash between that patch and the id's status
/// write leaves the account in Konnect and the annotation behind, and it is recognised as ours
/// (created, not adopted, not refused as a taken name), and deleted with the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_first_create_recorded_with_the_finalizer_is_recognised_as_our_own() {
    let mut env = TestEnv::start().await;
    let since =
        k8s_openapi::jiff::Timestamp::from_second(k8s_openapi::jiff::Timestamp::now().as_second())
            .unwrap();
    let marker = serde_json::json!({"name": "crashy", "since": since.to_string()}).to_string();
    env.apply(&format!(
        r#"
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata:
  name: crashy
  finalizers: [{}]
  annotations: {{konnect-sa.dev/pending-create: '{marker}'}}
spec: {{description: CI}}
"#,
        konnect_sa_operator::api::common::FINALIZER
    ));
    let ours = env.sim.seed_account("crashy", "CI", false);
    env.start_operator(&[]).await;
    let api = env.api::<SystemAccount>();
    let sa = wait_for(&api, "crashy", T, is_ready).await;
    let status = sa.status.unwrap();
    assert_eq!(status.id.as_deref(), Some(ours.id.as_str()));
    assert_ne!(status.adopted, Some(true), "created by us, not adopted");
    assert_eq!(env.sim.state().accounts.len(), 1, "not created twice");
    assert!(!has_event(&env, "crashy", "Warning", "Conflict"));

    delete(&api, "crashy").await;
    assert!(
        eventually(T, || env.sim.state().accounts.is_empty()).await,
        "ours, so deleted with the object"
    );
    env.stop_operator().await;
}

/// README (`DeletionBlocked`): a cleanup that fails in Konnect keeps the object, Ready=False with reason
/// `DeletionBlocked`; the way out is `spec.deletionPolicy: Orphan` on the object being deleted, after which
/// the deletion completes and nothing is deleted in Konnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blocked_deletion_completes_once_switched_to_orphan_and_deletes_nothing() {
    let mut env = TestEnv::start().await;
    env.start_operator(&[]).await;
    let auth = |token: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: leaving-auth}}\nstringData: {{token: {token}}}\n"
        )
    };
    env.apply(&auth(env.sim.admin_token().expose()));
    env.apply(
        r#"
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: leaving}
spec:
  konnect: {authSecretRef: {name: leaving-auth}}
"#,
    );
    let api = env.api::<SystemAccount>();
    let sa = wait_for(&api, "leaving", T, is_ready).await;
    let id = sa.status.unwrap().id.unwrap();

    // Its connection's token stops working, then the object is deleted: the cleanup is refused.
    let revoked = "kpat_revokedrevokedrevokedrevokedrevokedrevokedre";
    env.apply(&auth(revoked));
    delete(&api, "leaving").await;
    let blocked = wait_for(&api, "leaving", T, |a| {
        reason(a).as_deref() == Some("DeletionBlocked")
    })
    .await;
    assert_eq!(
        ready_of(&blocked.status.clone().unwrap().conditions)
            .unwrap()
            .0,
        "False"
    );
    assert!(
        blocked
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == "konnect-sa.dev/cleanup"),
        "the finalizer stays"
    );
    support::leak::assert_clean(
        &[revoked.to_string()],
        &ready_message(&blocked),
        "the message",
    );
    assert!(env.sim.state().account_by_name("leaving").is_some());

    // The way out: give up on the Konnect side.
    let switched_at = env.sim.journal().len();
    merge_patch(
        &api,
        "leaving",
        serde_json::json!({"spec": {"deletionPolicy": "Orphan"}}),
    )
    .await;
    assert!(
        eventually(T, || gone(&env, "leaving")).await,
        "the deletion completes"
    );
    assert_eq!(
        env.sim
            .state()
            .account_by_name("leaving")
            .map(|a| a.account.id.clone()),
        Some(id.clone()),
        "the account stays in Konnect"
    );
    let journal = env.sim.journal();
    let deletes: Vec<_> = journal
        .iter()
        .filter(|e| e.method == "DELETE" && e.path.contains(&id))
        .collect();
    assert!(
        deletes.iter().all(|e| e.status == 401),
        "only refused deletes were sent: {deletes:?}"
    );
    let after: Vec<_> = journal[switched_at..]
        .iter()
        .filter(|e| e.path.contains(&id) && e.method != "GET")
        .collect();
    assert!(
        after.is_empty(),
        "sent after the switch to Orphan: {after:?}"
    );
    env.stop_operator().await;
}
