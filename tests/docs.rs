//! What the README promises. config/samples, applied to a cluster whose operator talks to the simulator seeded with
//! docs/sim-seed.yaml, all become Ready; the Secret holds a token Konnect accepts, labelled for kong-operator; the
//! restart target is restarted. The token lifecycle rules it states for spec edits hold. And it does not drift from
//! the code: every flag, CRD field, condition reason and metric is named in it.
mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use konnect_sa_operator::api::{self, RoleBinding, SystemAccount, SystemAccountToken};
use konnect_sa_operator::sim::{SeedData, SimConfig};
use support::env::crate_dir;
use support::{NS, TestEnv, merge_patch, ready_of, wait_for};

const T: Duration = Duration::from_secs(45);

fn read(rel: &str) -> String {
    let path = crate_dir().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The files config/samples/kustomization.yaml lists, in its order.
fn samples() -> Vec<(String, String)> {
    let kustomization: serde_json::Value =
        serde_yaml::from_str(&read("config/samples/kustomization.yaml")).unwrap();
    assert_eq!(
        kustomization["namespace"], NS,
        "the README's commands use namespace {NS}"
    );
    kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| {
            let file = r.as_str().unwrap().to_string();
            let text = read(&Path::new("config/samples").join(&file).to_string_lossy());
            (file, text)
        })
        .collect()
}

fn ready(conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> bool {
    ready_of(conditions).is_some_and(|(status, _, _)| status == "True")
}

fn account_ready(a: &SystemAccount) -> bool {
    let s = a.status.clone().unwrap_or_default();
    ready(&s.conditions) && s.observed_generation == a.metadata.generation
}

fn token_ready(t: &SystemAccountToken) -> bool {
    let s = t.status.clone().unwrap_or_default();
    ready(&s.conditions) && s.observed_generation == t.metadata.generation
}

fn binding_ready(b: &RoleBinding) -> bool {
    let s = b.status.clone().unwrap_or_default();
    ready(&s.conditions) && s.observed_generation == b.metadata.generation
}

fn ts(s: &Option<String>) -> Timestamp {
    s.as_deref().expect("timestamp set").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_samples_become_ready_against_the_seeded_simulator() {
    let seed: SeedData =
        serde_yaml::from_str(&read("docs/sim-seed.yaml")).expect("seed file parses");
    let mut env = TestEnv::start_with(SimConfig {
        seed_data: seed,
        ..SimConfig::default()
    })
    .await;
    // The workload the token sample restarts after each rotation.
    env.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: deck-sync}
spec:
  selector: {matchLabels: {app: deck-sync}}
  template:
    metadata: {labels: {app: deck-sync}}
    spec: {containers: [{name: deck, image: kong/deck}]}
"#,
    );
    env.start_operator(&[]).await;
    let mut kinds = Vec::new();
    for (file, text) in samples() {
        for doc in text.split("\n---") {
            let v: serde_json::Value = serde_yaml::from_str(doc).unwrap();
            if !v.is_null() {
                kinds.push(v["kind"].as_str().unwrap_or_default().to_string());
            }
        }
        env.kube
            .apply_manifest(&text, NS)
            .unwrap_or_else(|e| panic!("{file} does not apply: {e:?}"));
    }
    for kind in ["SystemAccount", "SystemAccountToken", "RoleBinding"] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "config/samples has no {kind}"
        );
    }

    let sa = wait_for(
        &env.api::<SystemAccount>(),
        "kong-gateway",
        T,
        account_ready,
    )
    .await;
    let token = wait_for(
        &env.api::<SystemAccountToken>(),
        "kong-gateway-token",
        T,
        token_ready,
    )
    .await;
    let bindings = env.api::<RoleBinding>();
    for name in [
        "kong-gateway-cp-viewer",
        "kong-gateway-api-products-publisher",
    ] {
        wait_for(&bindings, name, T, binding_ready).await;
    }

    // Konnect has what the samples describe.
    let state = env.sim.state();
    let account = state
        .account_by_name("kong-gateway-prod")
        .expect("spec.name is the Konnect name");
    let account_id = account.account.id.clone();
    assert_eq!(
        sa.status.as_ref().unwrap().id.as_deref(),
        Some(account_id.as_str())
    );
    assert_eq!(
        account.account.description,
        "Used by kong-operator in the prod cluster"
    );
    let mut team_names: Vec<String> = account
        .team_ids
        .iter()
        .map(|id| {
            state
                .teams
                .iter()
                .find(|t| &t.id == id)
                .map(|t| t.name.clone())
                .unwrap()
        })
        .collect();
    team_names.sort();
    assert_eq!(team_names, ["Gateway Operators", "Platform"]);
    let mut roles: Vec<(String, String, String, String)> = account
        .roles
        .iter()
        .map(|r| {
            (
                r.role.role_name.clone(),
                r.role.entity_type_name.clone(),
                r.role.entity_id.clone(),
                r.role.entity_region.clone(),
            )
        })
        .collect();
    roles.sort();
    assert_eq!(
        roles,
        [
            (
                "Publisher".into(),
                "API Products".into(),
                "*".into(),
                "*".into()
            ),
            (
                "Viewer".into(),
                "Control Planes".into(),
                "*".into(),
                "eu".into()
            ),
        ]
    );

    // The Secret: where kong-operator looks, and the token in it works.
    let secret = env.api::<Secret>().get("kong-konnect-token").await.unwrap();
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels["konghq.com/credential"], "konnect");
    assert_eq!(
        labels["app.kubernetes.io/managed-by"],
        "konnect-sa-operator"
    );
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    let status = token.status.clone().unwrap();
    assert_eq!(
        annotations.get("konnect-sa.dev/token-id"),
        status.token_id.as_ref()
    );
    let value = String::from_utf8(secret.data.unwrap()["token"].0.clone()).unwrap();
    assert!(value.starts_with("spat_"), "a system account token");
    let me = reqwest::Client::new()
        .get(format!("{}/v3/organizations/me", env.sim.base_url()))
        .bearer_auth(&value)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200, "Konnect accepts the token in the Secret");
    // The README's schedule: 90 days, rotated 30 days (plus at most 5 min of jitter) before expiry.
    let lifetime = ts(&status.expires_at).duration_since(ts(&status.last_rotation_time));
    assert_eq!(lifetime, SignedDuration::from_hours(2160));
    let ahead = ts(&status.expires_at).duration_since(ts(&status.renewal_time));
    assert!(
        ahead >= SignedDuration::from_hours(720)
            && ahead <= SignedDuration::from_hours(720) + SignedDuration::from_mins(5),
        "renewal {ahead:?} before expiry"
    );

    // The restart target got the annotation of this revision.
    let restarted = support::eventually(T, || {
        env.kube
            .get("apps", "v1", "deployments", NS, "deck-sync")
            .and_then(|d| {
                d["spec"]["template"]["metadata"]["annotations"]["konnect-sa.dev/restartedAt"]
                    .as_str()
                    .map(str::to_string)
            })
            .is_some()
    })
    .await;
    assert!(restarted, "deck-sync restarted after the first issue");

    // The value is nowhere but the Secret.
    let everything = serde_json::to_string(&(
        env.kube.events(),
        env.kube
            .list("konnect-sa.dev", "v1alpha1", "systemaccounttokens", None),
        env.kube
            .list("konnect-sa.dev", "v1alpha1", "systemaccounts", None),
        env.kube
            .list("konnect-sa.dev", "v1alpha1", "rolebindings", None),
    ))
    .unwrap();
    assert!(!everything.contains(&value), "token value leaked");
    env.stop_operator().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spec_edits_move_the_schedule_and_an_account_change_keeps_the_overlap() {
    let mut env = TestEnv::start().await;
    env.start_operator(&[]).await;
    env.apply(
        r#"
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: bot-a}
spec: {}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: bot-b}
spec: {}
---
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccountToken
metadata: {name: bot-token}
spec:
  systemAccountRef: {name: bot-a}
  duration: 2160h
  renewBefore: 720h
"#,
    );
    let accounts = env.api::<SystemAccount>();
    let b = wait_for(&accounts, "bot-b", T, account_ready).await;
    let b_id = b.status.unwrap().id.unwrap();
    let tokens = env.api::<SystemAccountToken>();
    let t = wait_for(&tokens, "bot-token", T, token_ready).await;
    let first = t.status.unwrap();
    assert_eq!(first.revision, Some(1));

    // renewBefore applies to the current token: the renewal time moves, no new token.
    merge_patch(
        &tokens,
        "bot-token",
        serde_json::json!({"spec": {"renewBefore": "1000h"}}),
    )
    .await;
    let t = wait_for(&tokens, "bot-token", T, |t| {
        token_ready(t) && t.metadata.generation == Some(2)
    })
    .await;
    let st = t.status.unwrap();
    assert_eq!(st.revision, Some(1), "no rotation for a renewBefore edit");
    assert_eq!(st.token_id, first.token_id);
    let ahead = ts(&st.expires_at).duration_since(ts(&st.renewal_time));
    assert!(
        ahead >= SignedDuration::from_hours(1000)
            && ahead <= SignedDuration::from_hours(1000) + SignedDuration::from_mins(5),
        "renewal {ahead:?} before expiry after the edit"
    );

    // Another account: a new token for it, and the old one keeps working for previousTokenRetention (1h), since
    // consumers still hold it until they reload.
    merge_patch(
        &tokens,
        "bot-token",
        serde_json::json!({"spec": {"systemAccountRef": {"name": "bot-b"}}}),
    )
    .await;
    let t = wait_for(&tokens, "bot-token", T, |t| {
        token_ready(t)
            && t.metadata.generation == Some(3)
            && t.status.as_ref().and_then(|s| s.account_id.as_deref()) == Some(b_id.as_str())
    })
    .await;
    let st = t.status.unwrap();
    assert_eq!(st.revision, Some(2));
    let old = st
        .previous_tokens
        .iter()
        .find(|p| Some(&p.id) == first.token_id.as_ref())
        .expect("the old token waits for its revocation");
    let revoke_in = old
        .revoke_at
        .parse::<Timestamp>()
        .unwrap()
        .duration_since(Timestamp::now());
    assert!(
        revoke_in > SignedDuration::from_mins(50),
        "revoked in {revoke_in:?}, not after the 1h retention"
    );
    let a_id = first.account_id.unwrap();
    assert!(
        env.sim
            .live_tokens(&a_id)
            .iter()
            .any(|t| Some(&t.id) == first.token_id.as_ref()),
        "the old token still works in Konnect"
    );
    env.stop_operator().await;
}

/// The `--flags` a subcommand's `--help` lists.
fn flags_of(subcommand: &str) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_konnect-sa-operator"))
        .args([subcommand, "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{subcommand} --help");
    String::from_utf8_lossy(&out.stdout)
        .split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == ']')
        .filter(|w| w.starts_with("--") && w.len() > 2 && w != &"--help")
        .map(str::to_string)
        .collect()
}

#[test]
fn the_readme_names_every_flag_field_reason_and_metric() {
    let readme = read("README.md");
    let mut missing = Vec::new();
    for sub in ["run", "sim", "bootstrap", "plan"] {
        let flags = flags_of(sub);
        assert!(flags.len() > 5, "{sub} --help lists its flags: {flags:?}");
        for flag in flags {
            if !readme.contains(&format!("`{flag}`")) {
                missing.push(format!("{sub} {flag}"));
            }
        }
    }
    // Every spec and status field of every kind, as `spec.<field>` / `status.<field>`.
    for crd in api::crds() {
        let kind = crd.spec.names.kind.clone();
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
        let root = &schema["openAPIV3Schema"]["properties"];
        for part in ["spec", "status"] {
            let props = root[part]["properties"].as_object().expect("properties");
            for field in props.keys() {
                if !readme.contains(&format!("`{part}.{field}"))
                    && !readme.contains(&format!(", `{part}.{field}`"))
                {
                    missing.push(format!("{kind} {part}.{field}"));
                }
            }
        }
        if !readme.contains(&format!("### {kind}")) {
            missing.push(format!("section ### {kind}"));
        }
    }
    for reason in api::reason::ALL {
        if !readme.contains(&format!("| `{reason}` |")) {
            missing.push(format!("reason {reason}"));
        }
    }
    // Metric names as Prometheus exposes them (counters with _total).
    let metrics = konnect_sa_operator::telemetry::Metrics::new().encode();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (name, kind) = (words.next().unwrap(), words.next().unwrap());
        let exposed = if kind == "counter" {
            format!("{name}_total")
        } else {
            name.to_string()
        };
        if !readme.contains(&format!("`{exposed}`")) {
            missing.push(format!("metric {exposed}"));
        }
    }
    assert!(
        missing.is_empty(),
        "README.md does not mention: {missing:#?}"
    );
}

/// The rows of the first Markdown table after `heading` (cells trimmed, header and rule left out).
fn table_after(readme: &str, heading: &str) -> Vec<Vec<String>> {
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has {heading}"));
    readme[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            // `\|` inside a cell is a literal bar.
            let l = l.replace("\\|", "\u{1}");
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().replace('\u{1}', "|"))
                .collect()
        })
        .collect()
}

/// The `--flags` of a table's first column (`--admin-token` (env ...) too).
fn flag_of(cell: &str) -> Option<String> {
    let flag = cell.trim_start_matches('`').split('`').next()?;
    flag.starts_with("--").then(|| flag.to_string())
}

/// README drift, the other way and deeper than `the_readme_names_every_flag_field_reason_and_metric`:
/// every flag the README lists exists with the env variable and default it states; every field path in
/// the API reference exists in the CRDs and every nested field is named in its row; every metric's type
/// and labels are as documented and every documented metric exists; every `konnect-sa.dev/` key the
/// operator writes is documented and every documented one exists.
#[test]
fn the_readme_and_the_code_agree_both_ways() {
    use clap::Args;
    let readme = read("README.md");
    let mut wrong = Vec::new();

    // Flags: env and default of `run`, existence and default of `sim`.
    let run = konnect_sa_operator::run::RunArgs::augment_args(clap::Command::new("run"));
    let sim = konnect_sa_operator::sim::SimArgs::augment_args(clap::Command::new("sim"));
    for (cmd, heading, default_col) in [
        (&run, "### `konnect-sa-operator run`", 2),
        (&sim, "## The Konnect simulator", 1),
    ] {
        for row in table_after(&readme, heading) {
            let Some(flag) = flag_of(&row[0]) else {
                continue;
            };
            let Some(arg) = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(&flag[2..]))
            else {
                wrong.push(format!(
                    "{} {flag}: documented, no such flag",
                    cmd.get_name()
                ));
                continue;
            };
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|d| d.to_string_lossy().into_owned())
                .filter(|d| !d.is_empty())
                .collect();
            for d in defaults {
                if !row[default_col].contains(&format!("`{d}`")) {
                    wrong.push(format!(
                        "{flag}: default `{d}`, README says {}",
                        row[default_col]
                    ));
                }
            }
            if let Some(env) = arg.get_env() {
                let env = env.to_string_lossy();
                if !row.iter().any(|c| c.contains(&format!("`{env}`"))) {
                    wrong.push(format!("{flag}: env {env} not in its row"));
                }
            }
        }
    }

    // Fields: every documented path exists; every nested field is named in its row.
    for crd in api::crds() {
        let kind = crd.spec.names.kind.clone();
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
        let root = schema["openAPIV3Schema"].clone();
        let rows = table_after(&readme, &format!("### {kind}"));
        let documented: Vec<(String, String)> = rows
            .iter()
            .flat_map(|row| {
                row[0]
                    .split('`')
                    .filter(|p| p.starts_with("spec.") || p.starts_with("status."))
                    .map(|p| (p.to_string(), row.join(" | ")))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (path, _) in &documented {
            let mut node = &root;
            for part in path.split('.') {
                let name = part.trim_end_matches("[]");
                node = &node["properties"][name];
                if part.ends_with("[]") {
                    node = &node["items"];
                }
            }
            if node.is_null() {
                wrong.push(format!("{kind} {path}: documented, not in the CRD"));
            }
        }
        // Nested fields, one level below a documented path: named in that path's row.
        for (path, row) in &documented {
            let mut node = &root;
            for part in path.split('.') {
                node = &node["properties"][part.trim_end_matches("[]")];
                if part.ends_with("[]") {
                    node = &node["items"];
                }
            }
            let inner = node["properties"]
                .as_object()
                .map(|m| m.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default();
            for field in inner {
                let named = documented
                    .iter()
                    .any(|(p, _)| p.starts_with(&format!("{path}.")))
                    || row.contains(&format!("`{field}`"))
                    || row.contains(&format!(".{field}`"))
                    || row.contains(&format!("{{{field}"))
                    || row.contains(&format!(" {field},"))
                    || row.contains(&format!(" {field}}}"))
                    || row.contains(&format!("{field}:"));
                if !named {
                    wrong.push(format!("{kind} {path}.{field}: not named in its row"));
                }
            }
        }
    }

    // Metrics: type and labels as documented, nothing documented that is not exported.
    let metrics = konnect_sa_operator::telemetry::Metrics::new();
    let kind = konnect_sa_operator::telemetry::KindLabels { kind: "x".into() };
    metrics.reconciles.get_or_create(&kind).inc();
    metrics
        .reconcile_errors
        .get_or_create(&konnect_sa_operator::telemetry::ErrorLabels {
            kind: "x".into(),
            category: "x".into(),
        })
        .inc();
    metrics.reconcile_duration.get_or_create(&kind).observe(1.0);
    metrics
        .konnect_requests
        .get_or_create(&konnect_sa_operator::telemetry::RequestLabels {
            operation: "x".into(),
            code: "x".into(),
        })
        .inc();
    let token = konnect_sa_operator::telemetry::TokenLabels {
        namespace: "x".into(),
        name: "x".into(),
    };
    metrics.token_expiration.get_or_create(&token).set(1.0);
    metrics.token_renewal.get_or_create(&token).set(1.0);
    metrics
        .token_rotations
        .get_or_create(&konnect_sa_operator::telemetry::ReasonLabels { reason: "x".into() })
        .inc();
    metrics.drift_checks.get_or_create(&kind).inc();
    metrics.drift_checks_deferred.get_or_create(&kind).inc();
    metrics.held_back.get_or_create(&kind).inc();
    let text = metrics.encode();
    let mut exported = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut w = rest.split_whitespace();
            let (name, kind) = (w.next().unwrap(), w.next().unwrap());
            let name = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            exported.insert(name, (kind.to_string(), BTreeSet::<String>::new()));
        }
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, _) = line.split_once(' ').unwrap_or((line, ""));
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| exported.contains_key(*b)))
            .unwrap_or(name);
        if let Some((_, set)) = exported.get_mut(base) {
            for pair in labels
                .trim_end_matches('}')
                .split(',')
                .filter(|p| !p.is_empty())
            {
                let key = pair.split('=').next().unwrap();
                if key != "le" {
                    set.insert(key.to_string());
                }
            }
        }
    }
    let rows = table_after(&readme, "## Metrics and health");
    let mut documented = BTreeSet::new();
    for row in &rows {
        let name = row[0].trim_matches('`').to_string();
        documented.insert(name.clone());
        let Some((kind, labels)) = exported.get(&name) else {
            wrong.push(format!("metric {name}: documented, not exported"));
            continue;
        };
        if &row[1] != kind {
            wrong.push(format!(
                "metric {name}: type {kind}, README says {}",
                row[1]
            ));
        }
        let doc_labels: BTreeSet<String> = row[2]
            .split(',')
            .map(|l| l.trim().trim_matches('`').to_string())
            .filter(|l| !l.is_empty())
            .collect();
        if &doc_labels != labels {
            wrong.push(format!(
                "metric {name}: labels {labels:?}, README says {doc_labels:?}"
            ));
        }
    }
    for name in exported.keys() {
        if !documented.contains(name) {
            wrong.push(format!(
                "metric {name}: exported, not in the README's table"
            ));
        }
    }

    // `konnect-sa.dev/` keys: what the code writes is documented, what is documented exists.
    // Keys, not resource names (`systemaccount.konnect-sa.dev/name` in kubectl output).
    let key = regex::Regex::new(r"(?:^|[^A-Za-z.])konnect-sa\.dev/([A-Za-z-]+)").unwrap();
    let mut in_code = BTreeSet::new();
    let mut stack = vec![crate_dir().join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                in_code.extend(key.captures_iter(&text).map(|c| c[1].to_string()));
            }
        }
    }
    let in_readme: BTreeSet<String> = key
        .captures_iter(&readme)
        .map(|c| c[1].to_string())
        .collect();
    for k in &in_code {
        // The README lists the Secret annotations once in full and then by their short names.
        if !in_readme.contains(k) && !readme.contains(&format!("`{k}`")) {
            wrong.push(format!(
                "konnect-sa.dev/{k}: used by the operator, not documented"
            ));
        }
    }
    for k in &in_readme {
        if !in_code.contains(k) {
            wrong.push(format!(
                "konnect-sa.dev/{k}: documented, not used by the operator"
            ));
        }
    }

    assert!(wrong.is_empty(), "README and code disagree: {wrong:#?}");
}
