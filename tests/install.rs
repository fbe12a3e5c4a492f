//! Install artefacts agree with the code: RBAC in config/ and in the Helm chart is exactly `api::rbac`, the
//! manifests pass the flags and mounts the operator expects, the chart's values validate against its schema, and
//! (where kubectl is installed) both kustomize trees render.
//!
//! No helm binary here: chart templates are checked as text (rules blocks parsed out of `_helpers.tpl`, template
//! blocks balanced), not rendered.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding};
use konnect_sa_operator::api::rbac::{leader_election_rules, required_rules};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// All documents of a YAML stream as JSON values (empty documents dropped).
fn docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// Rules as a set of (group, resource, verb) grants: order and grouping do not matter, extra grants do.
fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for r in rules {
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    out.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
        assert!(
            r.non_resource_urls.is_none() && r.resource_names.is_none(),
            "unexpected rule shape {r:?}"
        );
    }
    out
}

fn rules_of(doc: &Value) -> Vec<PolicyRule> {
    serde_json::from_value(doc["rules"].clone()).unwrap()
}

#[test]
fn the_canonical_rules_are_least_privilege() {
    let g = grants(&required_rules());
    // Secrets are never deleted (ownerReference garbage collection does it) and nothing is granted on "*".
    assert!(
        !g.iter()
            .any(|(_, res, v)| res == "secrets" && v == "delete")
    );
    assert!(
        !g.iter()
            .any(|(grp, res, v)| grp == "*" || res == "*" || v == "*")
    );
    // Events are created once, never patched (src/k8s/events.rs).
    assert!(g.contains(&("events.k8s.io".into(), "events".into(), "create".into())));
    assert!(!g.contains(&("events.k8s.io".into(), "events".into(), "patch".into())));
    for kind in ["systemaccounts", "systemaccounttokens", "rolebindings"] {
        assert!(g.contains(&(
            "konnect-sa.dev".into(),
            format!("{kind}/finalizers"),
            "update".into()
        )));
        // Status is written with a resourceVersion-guarded replace (src/k8s/status.rs): PUT, verb update.
        assert!(g.contains(&(
            "konnect-sa.dev".into(),
            format!("{kind}/status"),
            "update".into()
        )));
        assert!(!g.contains(&("konnect-sa.dev".into(), kind.into(), "delete".into())));
    }
}

#[test]
fn kustomize_rbac_matches_the_canonical_rules() {
    let cluster_role = &docs(&read("config/rbac/cluster_role.yaml"))[0];
    assert_eq!(cluster_role["kind"], "ClusterRole");
    assert_eq!(grants(&rules_of(cluster_role)), grants(&required_rules()));

    let leader = &docs(&read("config/rbac/leader_election_role.yaml"))[0];
    assert_eq!(leader["kind"], "Role");
    assert_eq!(leader["metadata"]["namespace"], "konnect-sa-system");
    assert_eq!(grants(&rules_of(leader)), grants(&leader_election_rules()));

    let namespaced = docs(&read("config/namespaced/watched_namespace_roles.yaml"));
    let roles = of_kind(&namespaced, "Role");
    let namespaces: Vec<_> = roles
        .iter()
        .map(|r| r["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(namespaces, ["team-a", "team-b"]);
    for role in roles {
        let _: Role = serde_json::from_value(role.clone()).unwrap();
        assert_eq!(grants(&rules_of(role)), grants(&required_rules()));
    }
    for binding in of_kind(&namespaced, "RoleBinding") {
        let b: RoleBinding = serde_json::from_value(binding.clone()).unwrap();
        assert_eq!(b.role_ref.kind, "Role");
        let subject = &b.subjects.unwrap()[0];
        assert_eq!(
            (subject.name.as_str(), subject.namespace.as_deref()),
            ("konnect-sa-operator", Some("konnect-sa-system"))
        );
    }
}

/// The YAML inside `{{- define "NAME" -}} ... {{- end }}` of the chart's helpers.
fn helper_block(name: &str) -> String {
    let text = read("charts/konnect-sa-operator/templates/_helpers.tpl");
    let start_tag = format!("{{{{- define \"{name}\" -}}}}");
    let start = text
        .find(&start_tag)
        .unwrap_or_else(|| panic!("no define {name}"))
        + start_tag.len();
    let len = text[start..].find("{{- end }}").unwrap();
    let block = &text[start..start + len];
    assert!(
        !block.contains("{{"),
        "the rules block {name} must be plain YAML"
    );
    block.to_string()
}

#[test]
fn chart_rbac_matches_the_canonical_rules() {
    let rules: Value = serde_yaml::from_str(&helper_block("konnect-sa-operator.rules")).unwrap();
    assert_eq!(grants(&rules_of(&rules)), grants(&required_rules()));
    let leader: Value =
        serde_yaml::from_str(&helper_block("konnect-sa-operator.leaderElectionRules")).unwrap();
    assert_eq!(grants(&rules_of(&leader)), grants(&leader_election_rules()));

    // Every Role/ClusterRole in the templates takes its rules from those two blocks, and nothing else grants.
    let templates = root().join("charts/konnect-sa-operator/templates");
    for entry in std::fs::read_dir(templates).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(entry.path()).unwrap();
        if name == "_helpers.tpl" {
            continue;
        }
        assert!(
            !text.contains("rules:"),
            "{name}: rules belong in _helpers.tpl"
        );
        let roles =
            text.matches("\nkind: Role\n").count() + text.matches("\nkind: ClusterRole\n").count();
        let includes = text
            .matches("{{ include \"konnect-sa-operator.rules\"")
            .count()
            + text
                .matches("{{ include \"konnect-sa-operator.leaderElectionRules\"")
                .count();
        assert_eq!(
            roles, includes,
            "{name}: each Role/ClusterRole includes a rules block"
        );
    }
    let rbac = read("charts/konnect-sa-operator/templates/rbac.yaml");
    assert!(
        rbac.contains("{{- range .Values.watchNamespaces }}") && rbac.contains("kind: ClusterRole")
    );
}

#[test]
fn chart_templates_are_balanced() {
    let dir = root().join("charts/konnect-sa-operator/templates");
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(entry.path()).unwrap();
        assert_eq!(
            text.matches("{{").count(),
            text.matches("}}").count(),
            "{name}: unbalanced braces"
        );
        let mut depth: i32 = 0;
        for action in text.split("{{").skip(1) {
            let action = action
                .split("}}")
                .next()
                .unwrap()
                .trim_start_matches('-')
                .trim();
            let word = action.split_whitespace().next().unwrap_or("");
            match word {
                "if" | "range" | "with" | "define" => depth += 1,
                "end" => depth -= 1,
                _ => {}
            }
            assert!(depth >= 0, "{name}: `end` without a block");
        }
        assert_eq!(depth, 0, "{name}: a block is not closed");
    }
}

#[test]
fn chart_crds_and_versions_match() {
    let chart: Value =
        serde_yaml::from_str(&read("charts/konnect-sa-operator/Chart.yaml")).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(chart["appVersion"], version);
    assert_eq!(chart["version"], version);
    let manager = read("config/manager/manager.yaml");
    assert!(manager.contains(&format!(
        "image: ghcr.io/konnect-sa-operator/konnect-sa-operator:{version}"
    )));
    // CRD copies are checked byte for byte by tests/crds.rs.
}

fn deployment(text: &str) -> Deployment {
    let doc = docs(text)
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap();
    serde_json::from_value(doc).unwrap()
}

#[test]
fn kustomize_deployment_runs_the_operator_hardened() {
    let d = deployment(&read("config/manager/manager.yaml"));
    assert_eq!(d.metadata.namespace.as_deref(), Some("konnect-sa-system"));
    let pod = d.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("konnect-sa-operator")
    );
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some("ghcr.io/konnect-sa-operator/konnect-sa-operator:0.1.0")
    );
    let args = c.args.clone().unwrap();
    assert_eq!(args[0], "run");
    for want in [
        "--konnect-url=https://global.api.konghq.com",
        "--konnect-token-file=/var/run/konnect/token",
        "--metrics-addr=0.0.0.0:8080",
        "--leader-elect",
    ] {
        assert!(args.iter().any(|a| a == want), "missing {want} in {args:?}");
    }
    let env = c.env.clone().unwrap();
    assert!(
        env.iter().any(|e| e.name == "POD_NAMESPACE"),
        "leader election needs POD_NAMESPACE"
    );
    assert!(
        !env.iter().any(|e| e.name == "KONNECT_TOKEN"),
        "the token comes from a file, not the environment"
    );

    let sc = c.security_context.clone().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
    assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    let psc = pod.security_context.unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(65532));

    assert_eq!(
        c.liveness_probe
            .clone()
            .unwrap()
            .http_get
            .unwrap()
            .path
            .as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        c.readiness_probe
            .clone()
            .unwrap()
            .http_get
            .unwrap()
            .path
            .as_deref(),
        Some("/readyz")
    );
    assert_eq!(c.ports.clone().unwrap()[0].container_port, 8080);
    assert!(c.resources.clone().unwrap().limits.is_some());

    // The token file: Secret konnect-sa-operator-token, key token, mounted read-only at /var/run/konnect/token.
    let mount = &c.volume_mounts.clone().unwrap()[0];
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        ("/var/run/konnect", Some(true))
    );
    let secret = pod.volumes.unwrap()[0].secret.clone().unwrap();
    assert_eq!(
        secret.secret_name.as_deref(),
        Some("konnect-sa-operator-token")
    );
    let item = &secret.items.unwrap()[0];
    assert_eq!((item.key.as_str(), item.path.as_str()), ("token", "token"));
    assert_eq!(secret.default_mode, Some(0o440));
}

#[test]
fn chart_deployment_passes_the_same_flags() {
    let text = read("charts/konnect-sa-operator/templates/deployment.yaml");
    for want in [
        "- run",
        "- --konnect-url={{ .Values.konnect.url }}",
        "- --konnect-token-file=/var/run/konnect/token",
        "- --metrics-addr=0.0.0.0:{{ .Values.metrics.port }}",
        "- --leader-elect",
        "- --namespaces={{ join \",\" . }}",
        "path: /healthz",
        "path: /readyz",
        "mountPath: /var/run/konnect",
        "fieldPath: metadata.namespace",
    ] {
        assert!(text.contains(want), "chart deployment lacks {want:?}");
    }
}

/// The flags the manifests pass must exist in the operator's CLI. Before the `run` subcommand exists this test
/// says so and checks nothing.
#[test]
fn manifest_flags_exist_in_the_cli() {
    let out = Command::new(env!("CARGO_BIN_EXE_konnect-sa-operator"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!("skipped: `konnect-sa-operator run --help` failed (no run subcommand yet)");
        return;
    }
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--konnect-url",
        "--konnect-token-file",
        "--namespaces",
        "--resync-period",
        "--max-concurrent-reconciles",
        "--log-format",
        "--metrics-addr",
        "--leader-elect",
    ] {
        assert!(help.contains(flag), "`run --help` has no {flag}");
    }
}

/// A small JSON Schema (draft-07 subset) validator: the keywords values.schema.json uses.
fn validate(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(s) = schema.as_object() else { return };
    if let Some(t) = s.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            other => panic!("{path}: schema type {other} not supported here"),
        };
        if !ok {
            errors.push(format!("{path}: not a {t}"));
            return;
        }
    }
    if let Some(options) = s.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        errors.push(format!("{path}: {value} not one of {options:?}"));
    }
    if let Some(text) = value.as_str() {
        let chars = text.chars().count() as u64;
        if s.get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| chars < m)
        {
            errors.push(format!("{path}: too short"));
        }
        if s.get("maxLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| chars > m)
        {
            errors.push(format!("{path}: too long"));
        }
        if let Some(p) = s.get("pattern").and_then(Value::as_str)
            && !regex::Regex::new(p).unwrap().is_match(text)
        {
            errors.push(format!("{path}: {text:?} does not match {p}"));
        }
    }
    if let Some(n) = value.as_f64() {
        if s.get("minimum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n < m)
        {
            errors.push(format!("{path}: below minimum"));
        }
        if s.get("maximum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n > m)
        {
            errors.push(format!("{path}: above maximum"));
        }
    }
    if let Some(obj) = value.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        for req in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !obj.contains_key(req.as_str().unwrap()) {
                errors.push(format!("{path}: missing {req}"));
            }
        }
        for (k, v) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(sub) => validate(sub, v, &format!("{path}.{k}"), errors),
                None => match s.get("additionalProperties") {
                    Some(Value::Bool(false)) => errors.push(format!("{path}: unknown key {k}")),
                    Some(sub @ Value::Object(_)) => {
                        validate(sub, v, &format!("{path}.{k}"), errors)
                    }
                    _ => {}
                },
            }
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(sub) = s.get("items") {
            for (i, v) in items.iter().enumerate() {
                validate(sub, v, &format!("{path}[{i}]"), errors);
            }
        }
        if s.get("uniqueItems") == Some(&Value::Bool(true)) {
            let set: BTreeSet<String> = items.iter().map(Value::to_string).collect();
            if set.len() != items.len() {
                errors.push(format!("{path}: duplicate items"));
            }
        }
    }
    if let Some(branches) = s.get("anyOf").and_then(Value::as_array)
        && !branches.iter().any(|b| {
            let mut e = Vec::new();
            validate(b, value, path, &mut e);
            e.is_empty()
        })
    {
        errors.push(format!("{path}: matches none of anyOf"));
    }
}

fn values_errors(values: &Value) -> Vec<String> {
    let schema: Value =
        serde_json::from_str(&read("charts/konnect-sa-operator/values.schema.json")).unwrap();
    let mut errors = Vec::new();
    validate(&schema, values, "values", &mut errors);
    errors
}

fn default_values() -> Value {
    serde_yaml::from_str(&read("charts/konnect-sa-operator/values.yaml")).unwrap()
}

#[test]
fn chart_values_validate_against_the_schema() {
    assert_eq!(values_errors(&default_values()), Vec::<String>::new());

    let mut namespaced = default_values();
    namespaced["watchNamespaces"] = serde_json::json!(["team-a", "team-b"]);
    namespaced["konnect"]["token"] =
        serde_json::json!({"existingSecret": "", "existingSecretKey": "token", "value": "kpat_x"});
    namespaced["resyncPeriod"] = "5m".into();
    assert_eq!(values_errors(&namespaced), Vec::<String>::new());

    let bad = [
        ("logFormat", serde_json::json!("xml"), "not one of"),
        (
            "watchNamespaces",
            serde_json::json!(["Team_A"]),
            "does not match",
        ),
        (
            "resyncPeriod",
            serde_json::json!("5 minutes"),
            "does not match",
        ),
        ("replicaCount", serde_json::json!("2"), "not a integer"),
        ("replicas", serde_json::json!(2), "unknown key replicas"),
    ];
    for (key, value, want) in bad {
        let mut v = default_values();
        v[key] = value;
        let errors = values_errors(&v);
        assert!(
            errors.iter().any(|e| e.contains(want)),
            "{key}: want {want:?}, got {errors:?}"
        );
    }
    let mut no_token = default_values();
    no_token["konnect"]["token"] =
        serde_json::json!({"existingSecret": "", "existingSecretKey": "token", "value": ""});
    assert!(
        values_errors(&no_token).iter().any(|e| e.contains("anyOf")),
        "a token source is required"
    );
}

fn kubectl_kustomize(dir: &str) -> Option<Vec<Value>> {
    let out = match Command::new("kubectl")
        .args(["kustomize", &root().join(dir).display().to_string()])
        .output()
    {
        Ok(out) => out,
        Err(_) => {
            eprintln!("skipped: kubectl not installed");
            return None;
        }
    };
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(docs(&String::from_utf8(out.stdout).unwrap()))
}

#[test]
fn kustomize_default_renders_a_cluster_wide_install() {
    let Some(docs) = kubectl_kustomize("config/default") else {
        return;
    };
    assert_eq!(of_kind(&docs, "CustomResourceDefinition").len(), 3);
    assert_eq!(
        of_kind(&docs, "Namespace")[0]["metadata"]["name"],
        "konnect-sa-system"
    );
    let cluster_role = of_kind(&docs, "ClusterRole");
    assert_eq!(
        grants(&rules_of(cluster_role[0])),
        grants(&required_rules())
    );
    let d: Deployment = serde_json::from_value(of_kind(&docs, "Deployment")[0].clone()).unwrap();
    let args = d.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(!args.iter().any(|a| a.starts_with("--namespaces")));
}

#[test]
fn kustomize_namespaced_renders_roles_in_the_watched_namespaces_only() {
    let Some(docs) = kubectl_kustomize("config/namespaced") else {
        return;
    };
    assert!(
        of_kind(&docs, "ClusterRole").is_empty() && of_kind(&docs, "ClusterRoleBinding").is_empty()
    );
    let mut role_namespaces: Vec<_> = of_kind(&docs, "Role")
        .iter()
        .map(|r| r["metadata"]["namespace"].as_str().unwrap().to_string())
        .collect();
    role_namespaces.sort();
    assert_eq!(role_namespaces, ["konnect-sa-system", "team-a", "team-b"]);
    let d: Deployment = serde_json::from_value(of_kind(&docs, "Deployment")[0].clone()).unwrap();
    let args = d.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(
        args.contains(&"--namespaces=team-a,team-b".to_string()),
        "{args:?}"
    );
}

#[test]
fn dockerfile_builds_a_static_nonroot_image() {
    let text = read("Dockerfile");
    assert!(text.contains("FROM rust:1.95-alpine AS builder"));
    assert!(text.contains("musl-dev"));
    assert!(text.contains("FROM gcr.io/distroless/static-debian12:nonroot"));
    assert!(text.contains("USER 65532:65532"));
    // The entrypoint is the bare binary: the manifests' args start with the subcommand (`run`), so an entrypoint
    // that already said `run` would start `konnect-sa-operator run run ...`, which the CLI rejects.
    assert!(text.contains(r#"ENTRYPOINT ["/konnect-sa-operator"]"#));
    let d = deployment(&read("config/manager/manager.yaml"));
    let args = d.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert_eq!(args[0], "run", "the Deployment's args name the subcommand");
    // What the container really runs: the entrypoint's arguments, then the Deployment's. `--help` at the end makes
    // the CLI parse everything before it and exit without starting.
    let entrypoint = text
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .unwrap();
    let entrypoint: Vec<String> = serde_json::from_str(entrypoint).unwrap();
    let mut argv = entrypoint[1..].to_vec();
    argv.extend(args);
    argv.push("--help".into());
    let out = Command::new(env!("CARGO_BIN_EXE_konnect-sa-operator"))
        .args(&argv)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the container's command line {argv:?} is rejected: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        ".dockerignore keeps target/ out of the context"
    );
}
