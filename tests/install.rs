//! Install artefacts agree with the code: RBAC in config/ and in the Helm chart is exactly `api::rbac`, the
//! manifests pass the flags and mounts the operator expects, the chart's values validate against its schema,
//! (where kubectl is installed) both kustomize trees render, the release version is the same everywhere, and the
//! Dockerfile builds: its COPY and RUN steps are replayed on the host from the context .dockerignore leaves.
//!
//! No helm binary here: chart templates are checked as text (rules blocks parsed out of `_helpers.tpl`, template
//! blocks balanced), not rendered.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
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
    // Secrets: delete is granted for one case only (a token Secret the spec moved away from, once its
    // token is revoked: src/k8s/secret.rs delete_unless_holding, preconditioned on uid and resourceVersion);
    // garbage collection does the rest. Nothing is granted on "*".
    assert!(g.contains(&("".into(), "secrets".into(), "delete".into())));
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

/// Where the release version is written, as (file, pattern whose group 1 is the version written there, fewest
/// matches). The crate version is the one source: `UPDATE_VERSION=1 cargo test --test install version` writes it
/// everywhere else.
const VERSION_PLACES: &[(&str, &str, usize)] = &[
    (
        "charts/konnect-sa-operator/Chart.yaml",
        r#"(?m)^version: *"?([^\s"]+)"#,
        1,
    ),
    (
        "charts/konnect-sa-operator/Chart.yaml",
        r#"(?m)^appVersion: *"?([^\s"]+)"#,
        1,
    ),
    ("config/manager/manager.yaml", IMAGE_TAG, 1),
    ("README.md", IMAGE_TAG, 0),
    ("README.md", RELEASE_ASSET, 1),
    ("README.md", CHART_OCI, 1),
    ("charts/konnect-sa-operator/README.md", CHART_OCI, 0),
    ("Dockerfile", IMAGE_TAG, 0),
];
const IMAGE_TAG: &str = r"ghcr\.io/konnect-sa-operator/konnect-sa-operator:([0-9][^\s`'\x22@]*)";
const RELEASE_ASSET: &str = r"konnect-sa-operator/releases/download/v([0-9][^/\s]*)/";
const CHART_OCI: &str = r"oci://ghcr\.io/konnect-sa-operator/charts/konnect-sa-operator\s+(?:\\\s+)?--version[ =]([0-9][^\s`]*)";

#[test]
fn the_version_is_the_same_everywhere() {
    let version = env!("CARGO_PKG_VERSION");
    let update = std::env::var_os("UPDATE_VERSION").is_some();
    let mut wrong = Vec::new();
    for (file, pattern, fewest) in VERSION_PLACES {
        let mut text = read(file);
        let re = regex::Regex::new(pattern).unwrap();
        let found: Vec<_> = re
            .captures_iter(&text)
            .map(|c| c.get(1).unwrap())
            .map(|m| (m.range(), m.as_str().to_string()))
            .collect();
        assert!(
            found.len() >= *fewest,
            "{file} no longer names the version ({pattern})"
        );
        for (range, found) in found.iter().rev() {
            if found != version {
                let line = text[..range.start].lines().count().max(1);
                wrong.push(format!("{file}:{line}: {found}"));
                text.replace_range(range.clone(), version);
            }
        }
        if update && !found.iter().all(|(_, v)| v == version) {
            std::fs::write(root().join(file), &text).unwrap();
        }
    }
    assert!(
        update || wrong.is_empty(),
        "the crate version is {version}, but: {wrong:#?}\n(UPDATE_VERSION=1 cargo test --test install version \
         writes it there)"
    );
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
        Some(
            format!(
                "ghcr.io/konnect-sa-operator/konnect-sa-operator:{}",
                env!("CARGO_PKG_VERSION")
            )
            .as_str()
        )
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
        "- --konnect-url={{ include \"konnect-sa-operator.konnectUrl\" . }}",
        "- --konnect-token-file=/var/run/konnect/token",
        "- --metrics-addr=0.0.0.0:{{ .Values.metrics.port }}",
        "- --leader-elect",
        "- --namespaces={{ join \",\" . }}",
        "- --konnect-token-secret={{ .Release.Namespace }}/{{ include \"konnect-sa-operator.tokenSecretName\" . }}",
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
        "--konnect-token-secret",
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
    let mut self_managed = default_values();
    self_managed["konnect"]["token"]["selfManaged"] = serde_json::json!(true);
    assert_eq!(values_errors(&self_managed), Vec::<String>::new());
    self_managed["konnect"]["token"]["selfManaged"] = serde_json::json!("yes");
    assert!(!values_errors(&self_managed).is_empty());
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

// The Dockerfile, replayed without a Docker engine: the build context is rebuilt from .dockerignore, and every
// COPY and RUN of the build stages runs in a folder per stage, with the host's toolchain instead of the image's.

/// One Dockerfile instruction, continuation lines joined.
struct Instruction {
    line: usize,
    keyword: String,
    args: String,
}

fn instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut pending: Option<Instruction> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        // Comment lines end nothing, even inside a continued instruction (Docker drops them).
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (body, continues) = match trimmed.strip_suffix('\\') {
            Some(body) => (body, true),
            None => (trimmed, false),
        };
        match pending.as_mut() {
            Some(p) => {
                p.args.push(' ');
                p.args.push_str(body.trim());
            }
            None => {
                let (keyword, args) = body.split_once(char::is_whitespace).unwrap_or((body, ""));
                pending = Some(Instruction {
                    line: i + 1,
                    keyword: keyword.to_ascii_uppercase(),
                    args: args.trim().to_string(),
                });
            }
        }
        if !continues {
            out.extend(pending.take());
        }
    }
    out.extend(pending);
    out
}

struct Stage {
    name: String,
    image: String,
    steps: Vec<Instruction>,
}

fn stages(text: &str) -> Vec<Stage> {
    let mut out: Vec<Stage> = Vec::new();
    for ins in instructions(text) {
        if ins.keyword == "FROM" {
            let words: Vec<&str> = ins
                .args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.to_string(),
                _ => out.len().to_string(),
            };
            out.push(Stage {
                name,
                image: words[0].to_string(),
                steps: Vec::new(),
            });
        } else {
            out.last_mut()
                .expect("an instruction before the first FROM")
                .steps
                .push(ins);
        }
    }
    out
}

/// `.dockerignore` as Docker reads it: patterns relative to the context root, `*` `?` `[..]` within one path
/// element, `**` across elements, `!` re-includes, the last matching line wins, and a match on a folder covers
/// everything in it.
struct IgnoreRule {
    negate: bool,
    pattern: Vec<String>,
}

fn ignore_rules(text: &str) -> Vec<IgnoreRule> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (negate, pattern) = match l.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, l),
            };
            let pattern = pattern
                .split('/')
                .filter(|p| !p.is_empty() && *p != ".")
                .map(String::from)
                .collect();
            IgnoreRule { negate, pattern }
        })
        .collect()
}

fn glob_element(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|skip| go(&p[1..], &n[skip..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') => {
                let Some(end) = p.iter().position(|c| *c == ']') else {
                    return n.first() == Some(&'[') && go(&p[1..], &n[1..]);
                };
                let Some(c) = n.first() else { return false };
                let (negated, set) = match p[1..end].split_first() {
                    Some(('^' | '!', rest)) => (true, rest),
                    _ => (false, &p[1..end]),
                };
                let mut hit = false;
                let mut i = 0;
                while i < set.len() {
                    if i + 2 < set.len() && set[i + 1] == '-' {
                        hit |= (set[i]..=set[i + 2]).contains(c);
                        i += 3;
                    } else {
                        hit |= set[i] == *c;
                        i += 1;
                    }
                }
                hit != negated && go(&p[end + 1..], &n[1..])
            }
            Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && go(&p[2..], &n[1..]),
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

fn glob_path(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == "**" => (0..=path.len()).any(|skip| glob_path(rest, &path[skip..])),
        Some((p, rest)) => {
            !path.is_empty() && glob_element(p, path[0]) && glob_path(rest, &path[1..])
        }
    }
}

fn ignored(rules: &[IgnoreRule], path: &[&str]) -> bool {
    let mut out = false;
    for rule in rules {
        if (1..=path.len()).any(|n| glob_path(&rule.pattern, &path[..n])) {
            out = !rule.negate;
        }
    }
    out
}

/// Whether a `!` rule could re-include something below the ignored folder `dir` (if not, it is not walked).
fn reincluded_below(rules: &[IgnoreRule], dir: &[&str]) -> bool {
    rules.iter().filter(|r| r.negate).any(|r| {
        for (i, element) in dir.iter().enumerate() {
            match r.pattern.get(i) {
                Some(p) if p == "**" => return true,
                Some(p) if glob_element(p, element) => {}
                _ => return false,
            }
        }
        r.pattern.len() > dir.len()
    })
}

/// Copies a file or a tree, keeping modification times as Docker's COPY does (cargo decides freshness by them).
fn copy_keeping_mtimes(from: &Path, to: &Path) -> std::io::Result<u64> {
    let meta = std::fs::symlink_metadata(from)?;
    if meta.is_dir() {
        std::fs::create_dir_all(to)?;
        let mut bytes = 0;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            bytes += copy_keeping_mtimes(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(bytes)
    } else if meta.file_type().is_symlink() {
        let _ = std::fs::remove_file(to);
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)?;
        Ok(0)
    } else {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let bytes = std::fs::copy(from, to)?;
        std::fs::File::options()
            .write(true)
            .open(to)?
            .set_modified(meta.modified()?)?;
        Ok(bytes)
    }
}

/// The build context `docker build .` sends: the project folder less what .dockerignore leaves out.
fn build_context(root: &Path, rules: &[IgnoreRule], into: &Path) -> u64 {
    fn walk(root: &Path, rel: &mut Vec<String>, rules: &[IgnoreRule], into: &Path) -> u64 {
        let dir = rel.iter().fold(root.to_path_buf(), |p, e| p.join(e));
        let mut bytes = 0;
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            rel.push(entry.file_name().to_string_lossy().into_owned());
            let path: Vec<&str> = rel.iter().map(String::as_str).collect();
            let is_dir = entry.file_type().unwrap().is_dir();
            if is_dir && (!ignored(rules, &path) || reincluded_below(rules, &path)) {
                bytes += walk(root, rel, rules, into);
            } else if !is_dir && !ignored(rules, &path) {
                let to = rel.iter().fold(into.to_path_buf(), |p, e| p.join(e));
                bytes += copy_keeping_mtimes(&entry.path(), &to).unwrap();
            }
            rel.pop();
        }
        bytes
    }
    std::fs::create_dir_all(into).unwrap();
    walk(root, &mut Vec::new(), rules, into)
}

/// Where a path of a stage's filesystem lives in the replay: absolute paths under the stage's root, relative ones
/// under its working directory.
fn in_stage(root: &Path, workdir: &Path, path: &str) -> PathBuf {
    match path.strip_prefix('/') {
        Some(abs) => root.join(abs),
        None => workdir.join(path),
    }
}

/// Replays one COPY: sources from the context or from an earlier stage (`--from`), Docker's rules for folders
/// (their contents are copied) and for the destination (a folder when it ends in `/` or takes several sources).
fn replay_copy(
    args: &str,
    context: &Path,
    root: &Path,
    workdir: &Path,
    replayed: &[(String, PathBuf)],
) -> Result<(), String> {
    let mut from = None;
    let mut words = Vec::new();
    let list: Vec<String> = if args.starts_with('[') {
        serde_json::from_str(args).map_err(|e| format!("COPY {args}: {e}"))?
    } else {
        args.split_whitespace().map(String::from).collect()
    };
    for word in list {
        match word.strip_prefix("--") {
            Some(flag) => {
                if let Some(stage) = flag.strip_prefix("from=") {
                    from = Some(stage.to_string());
                }
            }
            None => words.push(word),
        }
    }
    let (dest, sources) = words.split_last().ok_or("COPY without a destination")?;
    let base = match &from {
        Some(stage) => {
            let (_, stage_root) =
                replayed
                    .iter()
                    .find(|(name, _)| name == stage)
                    .ok_or_else(|| {
                        format!("--from={stage} is not an earlier stage of this Dockerfile")
                    })?;
            stage_root.clone()
        }
        None => context.to_path_buf(),
    };
    let into_folder = dest.ends_with('/') || sources.len() > 1;
    let dest = in_stage(root, workdir, dest);
    for source in sources {
        let path = base.join(source.trim_start_matches('/'));
        let mut matches = Vec::new();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        match name {
            Some(name) if name.contains(['*', '?', '[']) => {
                let parent = path.parent().unwrap();
                for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
                    if glob_element(&name, &entry.file_name().to_string_lossy()) {
                        matches.push(entry.path());
                    }
                }
            }
            _ if path.exists() => matches.push(path.clone()),
            _ => {}
        }
        if matches.is_empty() {
            let place = from
                .as_deref()
                .map_or("the build context".to_string(), |s| format!("stage {s}"));
            return Err(format!("\"{source}\": not found in {place}"));
        }
        let many = into_folder || matches.len() > 1;
        for m in matches {
            let to = if m.is_dir() {
                dest.clone()
            } else if many || dest.is_dir() {
                dest.join(m.file_name().unwrap())
            } else {
                dest.clone()
            };
            copy_keeping_mtimes(&m, &to).map_err(|e| format!("copy {}: {e}", m.display()))?;
        }
    }
    Ok(())
}

/// OS package installs set up the image's toolchain; the host brings its own, so they are the only RUNs skipped.
fn installs_os_packages(command: &str) -> bool {
    ["apk ", "apt-get ", "apt "]
        .iter()
        .any(|p| command.trim_start().starts_with(p))
}

#[test]
fn the_dockerfile_builds_when_its_steps_are_replayed() {
    let dockerfile = read("Dockerfile");
    let stages = stages(&dockerfile);
    let (runtime, build_stages) = stages.split_last().expect("a Dockerfile with a FROM");

    // The image a user runs: static, non-root, the bare binary as entrypoint.
    assert_eq!(runtime.image, "gcr.io/distroless/static-debian12:nonroot");
    assert!(
        runtime
            .steps
            .iter()
            .any(|s| s.keyword == "USER" && s.args == "65532:65532"),
        "the image runs as the numeric non-root user (runAsNonRoot can verify it)"
    );
    for stage in build_stages {
        assert!(
            stage.image.starts_with("rust:") && stage.image.contains("-alpine"),
            "stage {}: the binary is built on musl (static, runs on distroless static)",
            stage.name
        );
    }

    // One work area, kept between runs (cargo's target folder makes a second run incremental) and locked against
    // a concurrent run; the stage folders are new each time.
    let area = Path::new(env!("CARGO_TARGET_TMPDIR")).join("docker-replay");
    std::fs::create_dir_all(&area).unwrap();
    // Canonical, so that the paths cargo reports (which the planner strips $PWD from) match the working folder.
    let area = area.canonicalize().unwrap();
    let lock = std::fs::File::create(area.join(".lock")).unwrap();
    lock.lock().unwrap();
    let work = area.join("run");
    let _ = std::fs::remove_dir_all(&work);
    let context = work.join("context");
    let rules = ignore_rules(&read(".dockerignore"));
    let bytes = build_context(&root(), &rules, &context);
    assert!(
        bytes < 16 << 20,
        "the build context is {bytes} bytes: .dockerignore should leave out target/ and .git"
    );
    let cargo_target = area.join("target");
    std::fs::create_dir_all(&cargo_target).unwrap();

    // The host toolchain builds for the host (glibc) instead of musl, which only the image has. A `--release` step
    // runs with the release profile's optimisation turned off: the steps, files and flags are the Dockerfile's, so
    // what can fail here (the manifest, missing files, the lock file, a stand-in that does not compile, the real
    // sources reaching the final binary) fails the same way, for a fraction of the build time.
    let mut env: Vec<(String, String)> = [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
    .collect();
    for (k, v) in [
        ("CARGO_TERM_COLOR", "never"),
        ("CARGO_PROFILE_RELEASE_OPT_LEVEL", "0"),
        ("CARGO_PROFILE_RELEASE_LTO", "false"),
        ("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "256"),
    ] {
        env.push((k.into(), v.into()));
    }

    let absolute = regex::Regex::new(r#"(^|[\s'"=>;&|(])/[A-Za-z]"#).unwrap();
    let mut replayed: Vec<(String, PathBuf)> = Vec::new();
    let mut skipped = Vec::new();
    let mut cargo_runs = 0;
    for stage in &stages {
        let root = work.join("stages").join(&stage.name);
        let mut workdir = root.clone();
        let mut stage_env = env.clone();
        std::fs::create_dir_all(&root).unwrap();
        for step in &stage.steps {
            let what = format!(
                "Dockerfile:{} (stage {}) {} {}",
                step.line, stage.name, step.keyword, step.args
            );
            match step.keyword.as_str() {
                "WORKDIR" => {
                    workdir = in_stage(&root, &workdir, &step.args);
                    std::fs::create_dir_all(&workdir).unwrap();
                    // cargo's default target folder, shared by the runs of this test.
                    let target = workdir.join("target");
                    if !target.exists() {
                        std::os::unix::fs::symlink(&cargo_target, &target).unwrap();
                    }
                }
                "ENV" => {
                    for pair in step.args.split_whitespace() {
                        let (k, v) = pair
                            .split_once('=')
                            .unwrap_or_else(|| panic!("{what}: KEY=value"));
                        assert!(
                            !v.starts_with('/'),
                            "{what}: an absolute path cannot be replayed"
                        );
                        stage_env.push((k.into(), v.trim_matches('"').into()));
                    }
                }
                "COPY" | "ADD" => {
                    if let Err(e) = replay_copy(&step.args, &context, &root, &workdir, &replayed) {
                        panic!("{what}\nfails: {e}");
                    }
                }
                "RUN" => {
                    if installs_os_packages(&step.args) {
                        skipped.push(what);
                        continue;
                    }
                    // The replay maps the stage's root, not the host's: a RUN naming an absolute path would
                    // write outside it.
                    assert!(
                        !absolute.is_match(&step.args),
                        "{what}: uses an absolute path, which this replay cannot map; use paths relative to WORKDIR"
                    );
                    let started = std::time::Instant::now();
                    let out = Command::new("sh")
                        .args(["-c", &step.args])
                        .current_dir(&workdir)
                        .env_clear()
                        .envs(stage_env.iter().map(|(k, v)| (k, v)))
                        .env("PWD", &workdir)
                        .output()
                        .unwrap();
                    eprintln!("{what}: {:.1?}", started.elapsed());
                    assert!(
                        out.status.success(),
                        "{what}\nfails ({}):\n{}\n{}",
                        out.status,
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                    if step.args.contains("cargo build") {
                        cargo_runs += 1;
                    }
                }
                _ => {}
            }
        }
        replayed.push((stage.name.clone(), root));
    }
    eprintln!("skipped (the host has its own toolchain): {skipped:#?}");
    assert!(cargo_runs > 0, "no `cargo build` step was replayed");

    // The binary that lands in the image is the operator built from the real sources (not a stand-in left by the
    // dependency layer): it reports the crate's version and accepts the Deployment's command line.
    let entrypoint = runtime
        .steps
        .iter()
        .find(|s| s.keyword == "ENTRYPOINT")
        .expect("an ENTRYPOINT");
    let entrypoint: Vec<String> = serde_json::from_str(&entrypoint.args)
        .expect("ENTRYPOINT in exec form (signals reach the operator, not a shell)");
    let (_, runtime_root) = replayed.last().unwrap();
    let binary = in_stage(runtime_root, runtime_root, &entrypoint[0]);
    let version = Command::new(&binary)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("the image's entrypoint {}: {e}", binary.display()));
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("konnect-sa-operator {}", env!("CARGO_PKG_VERSION")),
        "the image's binary"
    );
    // The entrypoint's own arguments, then the Deployment's (which name the subcommand: an entrypoint that said
    // `run` would start `konnect-sa-operator run run ...`). `--help` makes the CLI parse them all and exit.
    let d = deployment(&read("config/manager/manager.yaml"));
    let args = d.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert_eq!(args[0], "run", "the Deployment's args name the subcommand");
    let mut argv = entrypoint[1..].to_vec();
    argv.extend(args);
    argv.push("--help".into());
    let out = Command::new(&binary).args(&argv).output().unwrap();
    assert!(
        out.status.success(),
        "the container's command line {argv:?} is rejected: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dockerignore_matching_follows_docker() {
    let rules = ignore_rules("target\n*.md\n!KEEP.md\ndocs/**/*.png\n# comment\n/.git\n");
    let is = |p: &str| ignored(&rules, &p.split('/').collect::<Vec<_>>());
    assert!(is("target") && is("target/debug/x") && is(".git/HEAD"));
    assert!(is("README.md") && !is("KEEP.md") && !is("src/README.md"));
    assert!(is("docs/a/b/c.png") && is("docs/c.png") && !is("docs/c.svg"));
    assert!(!is("src/main.rs") && !is("benches/scale.rs") && !is("targets"));
    let rules = ignore_rules("tests\n!tests/fixtures\n");
    assert!(reincluded_below(&rules, &["tests"]));
    assert!(!reincluded_below(&rules, &["tests", "support"]));
    assert!(!ignored(&rules, &["tests", "fixtures", "a.json"]));
    assert!(glob_element("[a-c]?.rs", "b1.rs") && !glob_element("[!a-c]?.rs", "b1.rs"));
}
