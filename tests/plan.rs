//! `validate` and `plan` against the Konnect simulator (and, for plans that compare with the cluster,
//! the Kubernetes API stand-in after the real operator applied the set): every kind of plan line, a
//! plan that matches what the operator did is empty, and plan never writes to Konnect.
mod support;

use std::time::Duration;

use konnect_sa_operator::api::{RoleBinding, SystemAccount, SystemAccountToken};
use konnect_sa_operator::cli::manifests;
use konnect_sa_operator::cli::plan::{self, Action, Plan};
use konnect_sa_operator::cli::validate::{self, ManifestSet, Severity};
use konnect_sa_operator::konnect::{ClientConfig, KonnectClient};
use konnect_sa_operator::sim::SimConfig;
use serde_json::Value;
use support::{NS, TestEnv, ready_of, wait_for};

const T: Duration = Duration::from_secs(30);

fn set_of(yaml: &str) -> ManifestSet {
    let mut docs = Vec::new();
    manifests::parse_into("set.yaml", yaml, &mut docs).unwrap();
    let (findings, set) = validate::check(&docs, NS);
    assert!(
        findings.iter().all(|f| f.severity != Severity::Error),
        "{findings:?}"
    );
    set
}

async fn plan_of(env: &TestEnv, yaml: &str, with_cluster: bool) -> Plan {
    let set = set_of(yaml);
    let applied = if with_cluster {
        let kubeconfig = env.dir.path().join("kubeconfig");
        env.kube.write_kubeconfig(&kubeconfig).unwrap();
        Some(
            plan::load_applied(&kubeconfig, Some(NS), &set)
                .await
                .unwrap(),
        )
    } else {
        None
    };
    let k = plan::read_only_client(&env.sim.base_url(), env.sim.admin_token()).unwrap();
    plan::plan_set(&set, applied.as_ref(), &k, "")
        .await
        .unwrap()
}

/// (action, object name, Konnect target) of every line, sorted.
fn lines(plan: &Plan) -> Vec<(Action, String, String)> {
    let mut l: Vec<_> = plan
        .changes
        .iter()
        .map(|c| (c.action, c.name.clone(), c.target.clone()))
        .collect();
    l.sort();
    l
}

/// Expected lines, in the order `lines` gives.
fn sorted(mut v: Vec<(Action, String, String)>) -> Vec<(Action, String, String)> {
    v.sort();
    v
}

fn line(action: Action, name: &str, target: &str) -> (Action, String, String) {
    (action, name.to_string(), target.to_string())
}

/// Every request the simulator received after the first `since` was a read.
fn only_reads(env: &TestEnv, since: usize) {
    let journal = env.sim.journal();
    assert!(journal.len() > since, "the plan read Konnect");
    let writes: Vec<String> = journal[since..]
        .iter()
        .filter(|e| e.method != "GET")
        .map(|e| format!("{} {}", e.method, e.path))
        .collect();
    assert!(writes.is_empty(), "plan wrote to Konnect: {writes:?}");
}

async fn start() -> TestEnv {
    let env = TestEnv::start_with(SimConfig {
        journal: true,
        ..Default::default()
    })
    .await;
    env.sim.seed_team("Platform");
    env.sim.seed_team("Ops");
    env
}

const BASE: &str = r#"
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: ci}
spec: {name: ci-bot, description: CI, teams: [{name: Platform}]}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: old}
spec: {description: old}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: kept}
spec: {description: kept, deletionPolicy: Orphan}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccountToken
metadata: {name: ci-token}
spec: {systemAccountRef: {name: ci}}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccountToken
metadata: {name: gone-token}
spec: {systemAccountRef: {name: ci}}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: RoleBinding
metadata: {name: ci-viewer}
spec: {systemAccountRef: {name: ci}, roleName: Viewer, entityTypeName: Control Planes}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: RoleBinding
metadata: {name: gone-rb}
spec: {systemAccountRef: {name: ci}, roleName: Viewer, entityTypeName: API Products}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: RoleBinding
metadata: {name: orphan-rb}
spec: {systemAccountRef: {name: ci}, roleName: Admin, entityTypeName: Audit Logs, deletionPolicy: Orphan}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: other}
spec: {description: other}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: RoleBinding
metadata: {name: mover}
spec: {systemAccountRef: {name: ci}, roleName: Viewer, entityTypeName: API Products, entityRegion: eu}
"#;

/// The set after a pull request: `ci` renamed, described anew, moved from Platform to Ops; its viewer
/// binding now grants Admin; its token lives 720h; `mover` moves to account `other`; `old`, `kept`, `gone-token` and `gone-rb` removed.
const CHANGED: &str = r#"
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: ci}
spec: {name: ci-bot-2, description: CI 2, teams: [{name: Ops}]}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccountToken
metadata: {name: ci-token}
spec: {systemAccountRef: {name: ci}, duration: 720h}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: RoleBinding
metadata: {name: ci-viewer}
spec: {systemAccountRef: {name: ci}, roleName: Admin, entityTypeName: Control Planes}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: other}
spec: {description: other}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: RoleBinding
metadata: {name: mover}
spec: {systemAccountRef: {name: other}, roleName: Viewer, entityTypeName: API Products, entityRegion: eu}
"#;

#[tokio::test]
async fn a_new_set_plans_creates_memberships_assignments_and_tokens_without_writing() {
    let env = start().await;
    let mark = env.sim.journal().len();
    let plan = plan_of(&env, BASE, false).await;
    assert_eq!(
        lines(&plan),
        sorted(vec![
            line(Action::Create, "ci", "account 'ci-bot'"),
            line(Action::Create, "kept", "account 'kept'"),
            line(Action::Create, "old", "account 'old'"),
            line(Action::Create, "other", "account 'other'"),
            line(Action::JoinTeam, "ci", "team 'Platform'"),
            line(
                Action::AssignRole,
                "ci-viewer",
                "role Viewer on Control Planes * (*)"
            ),
            line(
                Action::AssignRole,
                "gone-rb",
                "role Viewer on API Products * (*)"
            ),
            line(
                Action::AssignRole,
                "orphan-rb",
                "role Admin on Audit Logs * (*)"
            ),
            line(
                Action::AssignRole,
                "mover",
                "role Viewer on API Products * (eu)"
            ),
            line(Action::IssueToken, "ci-token", "token in Secret ci-token"),
            line(
                Action::IssueToken,
                "gone-token",
                "token in Secret gone-token"
            ),
        ])
    );
    assert_eq!(plan.exit_code(), 2);
    only_reads(&env, mark);
    assert!(
        env.sim.state().accounts.is_empty(),
        "Konnect holds no account after the plan"
    );
}

fn is_ready<K: kube::Resource>(
    conditions: impl Fn(&K) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
) -> impl Fn(&K) -> bool {
    move |o| ready_of(&conditions(o)).is_some_and(|(s, _, _)| s == "True")
}

#[tokio::test]
async fn against_the_cluster_an_applied_set_plans_nothing_and_a_pull_request_shows_every_change() {
    let mut env = start().await;
    env.apply(BASE);
    env.start_operator(&[]).await;
    let accounts = env.api::<SystemAccount>();
    let tokens = env.api::<SystemAccountToken>();
    let bindings = env.api::<RoleBinding>();
    let account_ready =
        is_ready(|a: &SystemAccount| a.status.clone().unwrap_or_default().conditions);
    let token_ready =
        is_ready(|t: &SystemAccountToken| t.status.clone().unwrap_or_default().conditions);
    let binding_ready = is_ready(|b: &RoleBinding| b.status.clone().unwrap_or_default().conditions);
    for name in ["ci", "old", "kept", "other"] {
        wait_for(&accounts, name, T, &account_ready).await;
    }
    let ci_token = wait_for(&tokens, "ci-token", T, &token_ready).await;
    wait_for(&tokens, "gone-token", T, &token_ready).await;
    for name in ["ci-viewer", "gone-rb", "orphan-rb", "mover"] {
        wait_for(&bindings, name, T, &binding_ready).await;
    }
    env.stop_operator().await;

    // What the operator did is what the plan wanted: nothing left to change.
    let plan = plan_of(&env, BASE, true).await;
    assert_eq!(lines(&plan), vec![], "{}", plan.table());
    assert_eq!(plan.exit_code(), 0);

    let mark = env.sim.journal().len();
    let plan = plan_of(&env, CHANGED, true).await;
    assert_eq!(
        lines(&plan),
        sorted(vec![
            line(Action::Rename, "ci", "account 'ci-bot-2'"),
            line(Action::UpdateDescription, "ci", "account 'ci-bot-2'"),
            line(Action::JoinTeam, "ci", "team 'Ops'"),
            line(Action::LeaveTeam, "ci", "team 'Platform'"),
            line(
                Action::AssignRole,
                "ci-viewer",
                "role Admin on Control Planes * (*)"
            ),
            line(
                Action::DeleteAssignment,
                "ci-viewer",
                "role Viewer on Control Planes * (*)"
            ),
            line(
                Action::DeleteAssignment,
                "gone-rb",
                "role Viewer on API Products * (*)"
            ),
            line(
                Action::AssignRole,
                "mover",
                "role Viewer on API Products * (eu)"
            ),
            line(
                Action::DeleteAssignment,
                "mover",
                "role Viewer on API Products * (eu)"
            ),
            line(Action::IssueToken, "ci-token", "token in Secret ci-token"),
            line(
                Action::RevokeTokens,
                "gone-token",
                "token in Secret gone-token"
            ),
            line(Action::DeleteAccount, "old", "account 'old'"),
            line(Action::Keep, "kept", "account 'kept'"),
            line(Action::Keep, "orphan-rb", "role Admin on Audit Logs * (*)"),
        ]),
        "{}",
        plan.table()
    );
    let reissue = plan.changes.iter().find(|c| c.name == "ci-token").unwrap();
    assert!(reissue.detail.starts_with("DurationChanged"), "{reissue:?}");
    let moved = plan
        .changes
        .iter()
        .find(|c| c.name == "mover" && c.action == Action::DeleteAssignment)
        .unwrap();
    assert!(moved.detail.contains("previous account"), "{moved:?}");
    assert_eq!(plan.exit_code(), 2);
    only_reads(&env, mark);

    // A token revoked in Konnect behind the operator's back is reissued.
    let st = ci_token.status.clone().unwrap();
    let admin =
        KonnectClient::new(ClientConfig::new(env.sim.base_url(), env.sim.admin_token())).unwrap();
    admin
        .delete_access_token(
            st.account_id.as_deref().unwrap(),
            st.token_id.as_deref().unwrap(),
        )
        .await
        .unwrap();
    let plan = plan_of(&env, BASE, true).await;
    assert_eq!(
        lines(&plan),
        vec![line(
            Action::IssueToken,
            "ci-token",
            "token in Secret ci-token"
        )]
    );
    assert!(
        plan.changes[0].detail.starts_with("TokenRevoked"),
        "{:?}",
        plan.changes[0]
    );
}

#[tokio::test]
async fn refusals_invalid_specs_adoption_and_other_connections_are_planned_as_the_operator_decides()
{
    let env = start().await;
    env.sim.seed_account("taken", "someone else's", false);
    env.sim.seed_account("managed", "Konnect's", true);
    let adoptable = env.sim.seed_account("adoptme", "old text", false);
    let yaml = r#"
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: taken}
spec: {description: mine}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: managed}
spec: {description: mine, adoption: Adopt}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: adoptme}
spec: {description: new text, adoption: Adopt}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: no-team}
spec: {teams: [{name: Nope}]}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: elsewhere}
spec: {konnect: {authSecretRef: {name: other-org}}}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: RoleBinding
metadata: {name: typo}
spec: {systemAccountRef: {name: adoptme}, roleName: Viewr, entityTypeName: Control Planes}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: RoleBinding
metadata: {name: on-taken}
spec: {systemAccountRef: {name: taken}, roleName: Viewer, entityTypeName: Control Planes}
"#;
    let mark = env.sim.journal().len();
    let plan = plan_of(&env, yaml, false).await;
    assert_eq!(
        lines(&plan),
        vec![
            line(Action::Adopt, "adoptme", "account 'adoptme'"),
            line(Action::UpdateDescription, "adoptme", "account 'adoptme'"),
            line(Action::Refuse, "managed", "account 'managed'"),
            line(Action::Refuse, "taken", "account 'taken'"),
            line(Action::Invalid, "no-team", "account 'no-team'"),
            line(
                Action::Invalid,
                "typo",
                "role Viewr on Control Planes * (*)"
            ),
            line(Action::Unknown, "elsewhere", "account 'elsewhere'"),
            line(
                Action::Unknown,
                "on-taken",
                "role Viewer on Control Planes * (*)"
            ),
        ],
        "{}",
        plan.table()
    );
    let adopt = plan
        .changes
        .iter()
        .find(|c| c.action == Action::Adopt)
        .unwrap();
    assert!(adopt.detail.contains(&adoptable.id), "{adopt:?}");
    let taken = plan.changes.iter().find(|c| c.name == "taken").unwrap();
    assert!(
        taken.detail.contains("spec.adoption is Refuse"),
        "{taken:?}"
    );
    let typo = plan.changes.iter().find(|c| c.name == "typo").unwrap();
    assert!(typo.detail.contains("valid roles"), "{typo:?}");
    assert_eq!(plan.exit_code(), 1, "the operator would refuse: CI fails");
    only_reads(&env, mark);

    // Only what cannot be planned: Konnect may change, so not "no change".
    let elsewhere = &yaml[yaml
        .find(
            "apiVersion: konnect-sa.dev/v1alpha1\nkind: SystemAccount\nmetadata: {name: elsewhere}",
        )
        .unwrap()..];
    let elsewhere = &elsewhere[..elsewhere.find("---").unwrap()];
    let plan = plan_of(&env, elsewhere, false).await;
    assert_eq!(
        lines(&plan),
        vec![line(Action::Unknown, "elsewhere", "account 'elsewhere'")]
    );
    assert_eq!(plan.exit_code(), 2);
}

fn bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_konnect-sa-operator"))
}

#[tokio::test]
async fn the_binary_exits_0_or_2_prints_json_and_never_a_token_value() {
    let mut env = start().await;
    let dir = env.dir.path().to_path_buf();
    std::fs::write(dir.join("set.yaml"), BASE).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    env.kube.write_kubeconfig(&kubeconfig).unwrap();
    let token_file = dir.join("konnect-token");
    std::fs::write(&token_file, env.sim.admin_token().expose()).unwrap();
    let url = env.sim.base_url();
    // The simulator runs in this test's runtime: the binary is awaited, never blocked on.
    let run = |extra: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_konnect-sa-operator"));
        cmd.args(["plan", "-f"])
            .arg(dir.join("set.yaml"))
            .args([
                "--konnect-url",
                &url,
                "--namespace",
                NS,
                "--konnect-token-file",
            ])
            .arg(&token_file)
            .args(extra)
            .env_remove("KONNECT_TOKEN")
            .env_remove("KUBECONFIG");
        async move {
            let out = cmd.output().await.unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        }
    };
    let (code, stdout) = run(&["--output", "json"]).await;
    assert_eq!(code, Some(2), "{stdout}");
    let json: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["summary"]["changes"], 11);
    assert_eq!(json["changes"][0]["action"], "create");

    env.apply(BASE);
    env.start_operator(&[]).await;
    let accounts = env.api::<SystemAccount>();
    let account_ready =
        is_ready(|a: &SystemAccount| a.status.clone().unwrap_or_default().conditions);
    for name in ["ci", "old", "kept", "other"] {
        wait_for(&accounts, name, T, &account_ready).await;
    }
    let tokens = env.api::<SystemAccountToken>();
    let token_ready =
        is_ready(|t: &SystemAccountToken| t.status.clone().unwrap_or_default().conditions);
    let bindings = env.api::<RoleBinding>();
    let binding_ready = is_ready(|b: &RoleBinding| b.status.clone().unwrap_or_default().conditions);
    for name in ["ci-token", "gone-token"] {
        wait_for(&tokens, name, T, &token_ready).await;
    }
    for name in ["ci-viewer", "gone-rb", "orphan-rb", "mover"] {
        wait_for(&bindings, name, T, &binding_ready).await;
    }
    env.stop_operator().await;
    let kc = kubeconfig.to_str().unwrap();
    let (code, stdout) = run(&["--kubeconfig", kc]).await;
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("No changes"), "{stdout}");

    std::fs::write(dir.join("set.yaml"), CHANGED).unwrap();
    for output in ["table", "json"] {
        let (code, stdout) = run(&["--kubeconfig", kc, "--output", output]).await;
        assert_eq!(code, Some(2), "{stdout}");
        assert!(stdout.contains("revoke-tokens"), "{stdout}");
        assert!(
            !stdout.contains("spat_") && !stdout.contains("kpat_"),
            "a token value in the plan: {stdout}"
        );
    }
}

#[test]
fn validate_prints_one_line_per_finding_with_file_object_and_field_and_exits_1_on_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        r#"
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: ci, namespace: team-a}
spec: {name: shared-name}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccountToken
metadata: {name: t, namespace: team-a}
spec: {systemAccountRef: {name: nowhere}, secretName: creds}
---
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: team-a}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored, namespace: team-a}
spec: {whatever: true}
"#,
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(
        dir.path().join("sub/b.yml"),
        r#"
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: ci2, namespace: team-a}
spec: {name: shared-name, adoption: Sometimes}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: ci3, namespace: team-a}
spec: {name: shared-name}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccountToken
metadata: {name: t2, namespace: team-a}
spec: {systemAccountRef: {name: ci}, secretName: creds, renewBefore: 3000h}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: RoleBinding
metadata: {name: rb1, namespace: team-a}
spec: {systemAccountRef: {name: ci}, roleName: Viewer, entityTypeName: Control Planes}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: RoleBinding
metadata: {name: rb2, namespace: team-a}
spec: {systemAccountRef: {name: ci}, roleName: Viewer, entityTypeName: Control Planes, entityId: "*"}
"#,
    )
    .unwrap();
    let out = bin()
        .args(["validate", "-f"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let a = dir.path().join("a.yaml").display().to_string();
    let b = dir.path().join("sub/b.yml").display().to_string();
    let mut got: Vec<&str> = stdout.lines().collect();
    got.sort();
    let mut want = vec![
        format!(
            "{a}: error: SystemAccountToken team-a/t: spec.secretName: Secret team-a/creds is also defined as a manifest in {a}: the operator never overwrites a Secret it does not own (SecretConflict), and your GitOps tool would fight over it"
        ),
        format!(
            "{a}: warning: SystemAccountToken team-a/t: spec.systemAccountRef.name: SystemAccount team-a/nowhere is not in this set (it may exist in the cluster)"
        ),
        format!(
            "{b}: error: SystemAccount team-a/ci2: spec.adoption: Unsupported value: \"Sometimes\": supported values: \"Refuse\", \"Adopt\""
        ),
        format!(
            "{b}: error: SystemAccount team-a/ci3: spec.name: Konnect name 'shared-name' is also used by SystemAccount team-a/ci: one of them would be refused (Conflict)"
        ),
        format!(
            "{b}: error: SystemAccountToken team-a/t2: spec.renewBefore: renewBefore must be shorter than duration (default 2160h)"
        ),
        format!(
            "{b}: warning: RoleBinding team-a/rb2: spec: RoleBinding team-a/rb1 asks for the same role assignment: one assignment serves both, and stays until both are deleted"
        ),
    ];
    want.sort();
    assert_eq!(got, want, "{stdout}");
    assert_eq!(out.status.code(), Some(1));

    // Warnings only: exit 0. From stdin, as `kustomize build | konnect-sa-operator validate -f -`.
    let mut child = bin()
        .args(["validate", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"apiVersion: konnect-sa.dev/v1alpha1\nkind: RoleBinding\nmetadata: {name: rb}\nspec: {systemAccountRef: {name: x}, roleName: Viewer, entityTypeName: Control Planes}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .starts_with("-: warning: RoleBinding default/rb: spec.systemAccountRef.name:")
    );
}

#[test]
fn the_shipped_samples_validate_clean() {
    let dir = support::env::crate_dir().join("config/samples");
    let docs = manifests::load(&[dir]).unwrap();
    let (findings, set) = validate::check(&docs, NS);
    assert_eq!(findings, vec![]);
    assert_eq!(
        (set.accounts.len(), set.tokens.len(), set.bindings.len()),
        (1, 1, 2)
    );
}
