//! The CRDs a cluster gets: generated files match the Rust types, schemas are structural, and every CEL rule
//! compiles and says what API.md says (evaluated with kube-cel, the library behind kube's `cel` feature).
//!
//! Regenerate the YAML after changing a type: `UPDATE_CRDS=1 cargo test --test crds`.

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use konnect_sa_operator::api::{self, crd_file_name, crd_yaml, crds};
use kube_cel::{ScopeContext, Validator, WarningKind, analyze_rule, compile_schema};
use serde_json::{Value, json};

/// Every place that holds a copy of the CRDs: `crds/` is the source for `kubectl apply -f crds/`, the chart and
/// kustomize need their own copies (Helm only installs CRDs from the chart's crds/, kustomize refuses files
/// outside its root).
const CRD_DIRS: [&str; 3] = [
    "crds",
    "charts/konnect-sa-operator/crds",
    "config/crd/bases",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn crd_files_match_the_rust_types() {
    let update = std::env::var_os("UPDATE_CRDS").is_some_and(|v| v == "1");
    let mut drift = Vec::new();
    for dir in CRD_DIRS {
        let dir = root().join(dir);
        if update {
            std::fs::create_dir_all(&dir).unwrap();
        }
        let mut expected_files = Vec::new();
        for crd in crds() {
            let file = dir.join(crd_file_name(&crd));
            let want = crd_yaml(&crd);
            expected_files.push(crd_file_name(&crd));
            if update {
                std::fs::write(&file, &want).unwrap();
            } else if std::fs::read_to_string(&file).ok().as_deref() != Some(want.as_str()) {
                drift.push(file.display().to_string());
            }
        }
        // A CRD file for a kind that no longer exists is drift too.
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".yaml")
                && name != "kustomization.yaml"
                && !expected_files.contains(&name)
            {
                if update {
                    std::fs::remove_file(entry.path()).unwrap();
                } else {
                    drift.push(format!("{} (stale)", entry.path().display()));
                }
            }
        }
    }
    assert!(
        drift.is_empty(),
        "CRD YAML is out of date with src/api: {drift:?}\nregenerate with: UPDATE_CRDS=1 cargo test --test crds"
    );
}

#[test]
fn crds_yaml_is_the_three_files_as_one_stream() {
    let stream = api::crds_yaml();
    let docs: Vec<CustomResourceDefinition> = stream
        .split("\n---\n")
        .map(|doc| serde_yaml::from_str(doc.trim_start_matches("---\n")).unwrap())
        .collect();
    assert_eq!(docs, crds());
    let names: Vec<_> = crds().iter().map(crd_file_name).collect();
    assert_eq!(
        names,
        [
            "systemaccounts.konnect-sa.dev.yaml",
            "systemaccounttokens.konnect-sa.dev.yaml",
            "rolebindings.konnect-sa.dev.yaml"
        ]
    );
}

fn crd(kind: &str) -> CustomResourceDefinition {
    crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap()
}

fn schema(kind: &str) -> Value {
    let crd = crd(kind);
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn names_scope_columns_and_subresources_follow_api_md() {
    let cases = [
        (
            "SystemAccount",
            "systemaccounts",
            "ksa",
            vec!["Konnect Name", "Ready", "ID", "Age"],
        ),
        (
            "SystemAccountToken",
            "systemaccounttokens",
            "ksat",
            vec!["Account", "Ready", "Expires", "Renewal", "Secret", "Age"],
        ),
        (
            "RoleBinding",
            "rolebindings",
            "ksarb",
            vec!["Account", "Role", "Entity Type", "Region", "Ready", "Age"],
        ),
    ];
    for (kind, plural, short, columns) in cases {
        let crd = crd(kind);
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some(format!("{plural}.konnect-sa.dev").as_str())
        );
        assert_eq!(crd.spec.group, "konnect-sa.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.plural, plural);
        assert_eq!(crd.spec.names.short_names, Some(vec![short.to_string()]));
        assert_eq!(crd.spec.names.categories, Some(vec!["konnect".to_string()]));
        assert_eq!(crd.spec.versions.len(), 1);
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        assert!(
            version.subresources.as_ref().unwrap().status.is_some(),
            "{kind} has a status subresource"
        );
        let got: Vec<_> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(got, columns, "{kind} printer columns");
        let ready = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.name == "Ready")
            .unwrap();
        assert_eq!(
            ready.json_path,
            ".status.conditions[?(@.type==\"Ready\")].status"
        );
    }
}

/// The API server's structural-schema rules that schemars output can break: every node has a type (except the
/// few Kubernetes escape hatches), no `$ref`, and anyOf/oneOf/allOf branches only restate validation.
fn check_structural(path: &str, node: &Value, problems: &mut Vec<String>) {
    let Some(obj) = node.as_object() else { return };
    if obj.contains_key("$ref") {
        problems.push(format!("{path}: $ref"));
    }
    let escape_hatch = obj.contains_key("x-kubernetes-int-or-string")
        || obj.contains_key("x-kubernetes-preserve-unknown-fields");
    if !obj.contains_key("type") && !escape_hatch {
        problems.push(format!("{path}: no type"));
    }
    for combinator in ["anyOf", "oneOf", "allOf"] {
        if obj.contains_key(combinator) {
            problems.push(format!(
                "{path}: {combinator} (not structural unless every branch is type-free)"
            ));
        }
    }
    if obj.get("type").and_then(Value::as_str) == Some("array") && !obj.contains_key("items") {
        problems.push(format!("{path}: array without items"));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            check_structural(&format!("{path}.{name}"), child, problems);
        }
    }
    if let Some(items) = obj.get("items") {
        check_structural(&format!("{path}[]"), items, problems);
    }
    if let Some(extra) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        check_structural(&format!("{path}{{}}"), extra, problems);
    }
}

#[test]
fn schemas_are_structural() {
    for kind in ["SystemAccount", "SystemAccountToken", "RoleBinding"] {
        let mut problems = Vec::new();
        check_structural(kind, &schema(kind), &mut problems);
        assert!(problems.is_empty(), "{problems:#?}");
    }
}

fn rules(node: &Value, out: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::Array(list)) = map.get("x-kubernetes-validations") {
                out.extend(list.iter().map(|r| r["rule"].as_str().unwrap().to_string()));
            }
            map.values().for_each(|v| rules(v, out));
        }
        Value::Array(list) => list.iter().for_each(|v| rules(v, out)),
        _ => {}
    }
}

#[test]
fn every_cel_rule_compiles_and_stays_within_the_cost_budget() {
    let mut total = 0;
    for kind in ["SystemAccount", "SystemAccountToken", "RoleBinding"] {
        let schema = schema(kind);
        let compiled = compile_schema(&schema);
        let mut all = Vec::new();
        rules(&schema, &mut all);
        total += all.len();
        // Errors can sit anywhere in the tree: walk it through the public fields.
        fn errors(node: &kube_cel::CompiledSchema, out: &mut Vec<String>) {
            out.extend(node.compilation_errors().iter().map(|e| e.to_string()));
            node.properties.values().for_each(|c| errors(c, out));
            if let Some(items) = &node.items {
                errors(items, out);
            }
        }
        let mut errs = Vec::new();
        errors(&compiled, &mut errs);
        assert!(errs.is_empty(), "{kind}: {errs:#?}");
        for rule in &all {
            // kube-cel's scope check counts a macro's own variable (`self.all(key, ...)`) as a
            // reference: a variable the rule binds itself is in scope.
            let bound = |w: &kube_cel::AnalysisWarning| {
                w.message.split('\'').nth(1).is_some_and(|var| {
                    ["all", "exists", "exists_one", "map", "filter"]
                        .iter()
                        .any(|m| rule.contains(&format!("{m}({var},")))
                })
            };
            let warnings: Vec<_> = analyze_rule(rule, &compiled, ScopeContext::CrdValidation)
                .into_iter()
                .filter(|w| matches!(w.kind, WarningKind::WrongScope | WarningKind::CostExceeded))
                .filter(|w| !(w.kind == WarningKind::WrongScope && bound(w)))
                .collect();
            assert!(warnings.is_empty(), "{kind}: {warnings:?}");
        }
    }
    assert!(
        total >= 15,
        "expected the CEL rules of API.md, found {total}"
    );
}

/// Validate a whole object as the API server would (CEL part: schema defaults applied first).
fn cel_errors(kind: &str, object: Value) -> Vec<String> {
    match Validator::new().validate(&schema(kind), &object, None) {
        Ok(()) => vec![],
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

fn token(spec: Value) -> Value {
    json!({"apiVersion": "konnect-sa.dev/v1alpha1", "kind": "SystemAccountToken",
           "metadata": {"name": "t", "namespace": "ns"}, "spec": spec})
}

fn binding(spec: Value) -> Value {
    json!({"apiVersion": "konnect-sa.dev/v1alpha1", "kind": "RoleBinding",
           "metadata": {"name": "b", "namespace": "ns"}, "spec": spec})
}

fn account(spec: Value) -> Value {
    json!({"apiVersion": "konnect-sa.dev/v1alpha1", "kind": "SystemAccount",
           "metadata": {"name": "a", "namespace": "ns"}, "spec": spec})
}

const UUID: &str = "497f6eca-6276-4993-bfeb-53cbbbba6f08";

#[test]
fn cel_accepts_valid_specs() {
    let ok = [
        ("SystemAccount", account(json!({}))),
        (
            "SystemAccount",
            account(json!({"teams": [{"name": "Platform"}, {"id": UUID}]})),
        ),
        (
            "SystemAccountToken",
            token(json!({"systemAccountRef": {"name": "ci-bot"}})),
        ),
        (
            "SystemAccountToken",
            token(json!({"systemAccountRef": {"id": UUID}, "duration": "8760h"})),
        ),
        (
            "SystemAccountToken",
            token(
                json!({"systemAccountRef": {"name": "ci-bot"}, "duration": "2160h", "renewBefore": "720h",
                         "previousTokenRetention": "0s", "secretName": "ci-bot.token", "secretKey": "SPAT_token-1",
                         "rolloutRestartTargets": [{"kind": "Deployment", "name": "ci-runner"}]}),
            ),
        ),
        (
            "SystemAccountToken",
            token(
                json!({"systemAccountRef": {"name": "a"}, "duration": "5m", "renewBeforePercentage": 50}),
            ),
        ),
        (
            "SystemAccountToken",
            token(json!({"systemAccountRef": {"name": "a"}, "renewBefore": "2159h59m"})),
        ),
        (
            "SystemAccountToken",
            token(
                json!({"systemAccountRef": {"name": "a"}, "duration": "1h30m", "renewBefore": "1500ms"}),
            ),
        ),
        (
            "RoleBinding",
            binding(
                json!({"systemAccountRef": {"name": "ci-bot"}, "roleName": "Viewer", "entityTypeName": "Control Planes"}),
            ),
        ),
        (
            "RoleBinding",
            binding(
                json!({"systemAccountRef": {"name": "ci-bot"}, "roleName": "Viewer", "entityTypeName": "Control Planes",
                           "entityId": UUID, "entityRegion": "eu"}),
            ),
        ),
    ];
    for (kind, object) in ok {
        assert_eq!(
            cel_errors(kind, object.clone()),
            Vec::<String>::new(),
            "{kind} {object}"
        );
    }
}

#[test]
fn cel_rejects_what_api_md_forbids_with_a_helpful_message() {
    let a = || json!({"name": "ci-bot"});
    let cases = [
        (
            "SystemAccountToken",
            token(json!({"systemAccountRef": {}})),
            "exactly one of name or id",
        ),
        (
            "SystemAccountToken",
            token(json!({"systemAccountRef": {"name": "a", "id": UUID}})),
            "exactly one of name or id",
        ),
        (
            "SystemAccountToken",
            token(json!({"systemAccountRef": {"id": "not-a-uuid"}})),
            "must be a uuid",
        ),
        (
            "SystemAccountToken",
            token(json!({"systemAccountRef": {"name": "Ci_Bot"}})),
            "Kubernetes object name",
        ),
        (
            "SystemAccount",
            account(json!({"teams": [{"name": "a", "id": UUID}]})),
            "exactly one of name or id",
        ),
        (
            "SystemAccount",
            account(json!({"teams": [{}]})),
            "exactly one of name or id",
        ),
        (
            "SystemAccountToken",
            token(json!({"systemAccountRef": a(), "duration": "0s"})),
            "more than 0s",
        ),
        (
            "SystemAccountToken",
            token(json!({"systemAccountRef": a(), "duration": "8761h"})),
            "at most 8760h",
        ),
        (
            "SystemAccountToken",
            token(json!({"systemAccountRef": a(), "renewBefore": "0s"})),
            "renewBefore must be more than 0s",
        ),
        (
            "SystemAccountToken",
            token(
                json!({"systemAccountRef": a(), "renewBefore": "1h", "renewBeforePercentage": 10}),
            ),
            "at most one of renewBefore and renewBeforePercentage",
        ),
        (
            "SystemAccountToken",
            token(json!({"systemAccountRef": a(), "duration": "24h", "renewBefore": "24h"})),
            "shorter than duration",
        ),
        // The default duration (2160h) counts when duration is unset.
        (
            "SystemAccountToken",
            token(json!({"systemAccountRef": a(), "renewBefore": "3000h"})),
            "shorter than duration",
        ),
        (
            "SystemAccountToken",
            token(json!({"systemAccountRef": a(), "previousTokenRetention": "9000h"})),
            "from 0s to 8760h",
        ),
        (
            "SystemAccountToken",
            token(json!({"systemAccountRef": a(), "secretName": "My_Secret"})),
            "secretName",
        ),
        (
            "SystemAccountToken",
            token(json!({"systemAccountRef": a(), "secretKey": "a/b"})),
            "secretKey",
        ),
        (
            "SystemAccountToken",
            token(
                json!({"systemAccountRef": a(), "rolloutRestartTargets": [{"kind": "Deployment", "name": "Bad Name"}]}),
            ),
            "Kubernetes object name",
        ),
        (
            "RoleBinding",
            binding(
                json!({"systemAccountRef": a(), "roleName": "Viewer", "entityTypeName": "Control Planes", "entityId": "cp1"}),
            ),
            "entityId must be a uuid or \"*\"",
        ),
        (
            "RoleBinding",
            binding(
                json!({"systemAccountRef": a(), "roleName": "Viewer", "entityTypeName": "Control Planes", "entityRegion": "EU"}),
            ),
            "entityRegion must be one of",
        ),
    ];
    for (kind, object, want) in cases {
        let errors = cel_errors(kind, object.clone());
        assert!(
            errors.iter().any(|e| e.contains(want)),
            "{kind} {object}: want {want:?}, got {errors:?}"
        );
    }
}

#[test]
fn duration_pattern_agrees_with_the_parser() {
    // The OpenAPI `pattern` is checked by the API server (not by kube-cel): check it here with a regex engine.
    let pattern =
        schema("SystemAccountToken")["properties"]["spec"]["properties"]["duration"]["pattern"]
            .as_str()
            .unwrap()
            .to_string();
    let re = regex::Regex::new(&pattern).unwrap();
    for s in [
        "2160h",
        "90s",
        "1h30m",
        "500ms",
        "1.5h",
        "0",
        "0s",
        "10us",
        "10µs",
        "2h45m30.5s",
    ] {
        assert!(re.is_match(s), "pattern refuses {s}");
        assert!(api::duration::parse(s).is_ok(), "parser refuses {s}");
    }
    for s in ["", "2d", "h", "10", "-1h", "1 h", "1H", "P1D", "1h-"] {
        assert!(!re.is_match(s), "pattern accepts {s}");
        assert!(api::duration::parse(s).is_err(), "parser accepts {s}");
    }
}

#[test]
fn entity_defaults_are_in_the_schema_so_printer_columns_show_them() {
    let spec = &schema("RoleBinding")["properties"]["spec"]["properties"];
    assert_eq!(spec["entityId"]["default"], "*");
    assert_eq!(spec["entityRegion"]["default"], "*");
}

#[test]
fn samples_pass_the_schema_rules() {
    let dir = root().join("config/samples");
    let mut seen = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "yaml") || path.ends_with("kustomization.yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let object: Value = serde::Deserialize::deserialize(doc).unwrap();
            if object.is_null() {
                continue;
            }
            let kind = object["kind"].as_str().unwrap().to_string();
            assert_eq!(
                object["apiVersion"],
                "konnect-sa.dev/v1alpha1",
                "{}",
                path.display()
            );
            assert_eq!(
                cel_errors(&kind, object.clone()),
                Vec::<String>::new(),
                "{}",
                path.display()
            );
            check_types(&kind, &object, &path);
            seen.insert(kind);
        }
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["RoleBinding", "SystemAccount", "SystemAccountToken"]
    );
}

/// A sample must also deserialize into the Rust type (unknown fields would be pruned by the API server) and pass
/// the in-code validation the controllers run.
fn check_types(kind: &str, object: &Value, path: &Path) {
    fn parse<T: serde::de::DeserializeOwned>(object: &Value) -> Result<T, String> {
        serde_json::from_value(object.clone()).map_err(|e| e.to_string())
    }
    let result = match kind {
        "SystemAccount" => parse::<api::SystemAccount>(object).map(|_| ()),
        "SystemAccountToken" => {
            parse::<api::SystemAccountToken>(object).and_then(|o| o.spec.validate())
        }
        "RoleBinding" => parse::<api::RoleBinding>(object).and_then(|o| o.spec.validate()),
        other => Err(format!("unknown kind {other}")),
    };
    if let Err(e) = result {
        panic!("{}: {e}", path.display());
    }
}

/// `secretTemplate` keys: the CRD's CEL refuses exactly what the operator's own check refuses (the check
/// that catches objects admitted before the rule existed), and what the API server would refuse on the
/// Secret. Label values: the schema pattern and the operator agree.
#[test]
fn secret_template_keys_are_refused_at_apply_time_like_the_operator_refuses_them() {
    use konnect_sa_operator::api::SystemAccountTokenSpec;
    let keys = [
        ("konghq.com/credential", true),
        ("app", true),
        ("reloader.stakater.com/match", true),
        ("A_b.c-D", true),
        ("bad key", false),
        ("-lead", false),
        ("Example.com/upper-prefix", false),
        ("a/b/c", false),
        ("konnect-sa.dev/revision", false),
        ("x/", false),
        ("", false),
    ];
    for (field, key_ok) in keys
        .iter()
        .flat_map(|k| [("labels", *k), ("annotations", *k)])
    {
        let (key, ok) = key_ok;
        let spec =
            json!({"systemAccountRef": {"name": "a"}, "secretTemplate": {field: {key: "v"}}});
        let cel = cel_errors("SystemAccountToken", token(spec.clone()));
        assert_eq!(cel.is_empty(), ok, "CEL on {field} key {key:?}: {cel:?}");
        if !ok {
            assert!(
                cel.iter().any(|e| e.contains("keys")),
                "the message names the keys: {cel:?}"
            );
        }
        let parsed: SystemAccountTokenSpec = serde_json::from_value(spec).unwrap();
        assert_eq!(
            parsed.validate().is_ok(),
            ok,
            "operator on {field} key {key:?}"
        );
    }
    let schema = schema("SystemAccountToken");
    let labels =
        &schema["properties"]["spec"]["properties"]["secretTemplate"]["properties"]["labels"];
    assert_eq!(labels["maxProperties"], 8);
    let values = &labels["additionalProperties"];
    assert_eq!(values["maxLength"], 63);
    let pattern = regex::Regex::new(values["pattern"].as_str().unwrap()).unwrap();
    for value in ["", "konnect", "v1.2_3-x", "has space", "-x", "x-", "a!"] {
        let spec: SystemAccountTokenSpec = serde_json::from_value(json!({
            "systemAccountRef": {"name": "a"},
            "secretTemplate": {"labels": {"k": value}}
        }))
        .unwrap();
        assert_eq!(
            pattern.is_match(value),
            spec.validate().is_ok(),
            "label value {value:?}"
        );
    }
}
