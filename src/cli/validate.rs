//! `konnect-sa-operator validate`: every `konnect-sa.dev` object of a manifest set checked offline as
//! the API server would (schema and CEL of the generated CRDs), as the operator would (the same spec
//! checks that set Ready=False, reason InvalidSpec), and across objects (what no single object shows).
use std::collections::BTreeMap;
use std::path::PathBuf;

use kube::ResourceExt;
use serde::Serialize;
use serde_json::Value;

use super::manifests::{self, Doc};
use super::schema;
use crate::api::common::VERSION;
use crate::api::{RefTarget, RoleBinding, SystemAccount, SystemAccountToken, crds};

#[derive(clap::Args, Debug, Clone)]
pub struct ValidateArgs {
    /// Manifest files or directories (walked for .yaml, .yml, .json); `-` reads stdin (e.g. `kustomize build . |`).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Namespace of objects that set none (as `kubectl apply -n`).
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One line of `validate`'s output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub file: String,
    /// `Kind namespace/name`.
    pub object: String,
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}: {severity}: {}: {}: {}",
            self.file,
            self.object,
            if self.field.is_empty() {
                "-"
            } else {
                &self.field
            },
            self.message
        )
    }
}

/// A `konnect-sa.dev` object of the set that passed the API server's checks, typed.
#[derive(Debug, Clone)]
pub struct Item<K> {
    pub file: String,
    pub namespace: String,
    pub object: K,
}

impl<K: kube::Resource> Item<K> {
    pub fn name(&self) -> String {
        self.object.meta().name.clone().unwrap_or_default()
    }
}

/// The objects of a manifest set that `plan` works on; other kinds only matter for Secret names.
#[derive(Debug, Clone, Default)]
pub struct ManifestSet {
    pub accounts: Vec<Item<SystemAccount>>,
    pub tokens: Vec<Item<SystemAccountToken>>,
    pub bindings: Vec<Item<RoleBinding>>,
    /// (namespace, name) -> file of every Secret the set defines.
    pub secrets: BTreeMap<(String, String), String>,
}

pub fn run(args: ValidateArgs) -> Result<std::process::ExitCode, String> {
    let docs = manifests::load(&args.files)?;
    let (findings, _) = check(&docs, &args.namespace);
    for f in &findings {
        println!("{f}");
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings.len() - errors;
    let ours = docs.iter().filter(|d| d.is_ours()).count();
    eprintln!("{ours} konnect-sa.dev object(s) checked: {errors} error(s), {warnings} warning(s)");
    Ok(if errors > 0 {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}

fn object_label(kind: &str, ns: &str, name: &str) -> String {
    format!(
        "{kind} {ns}/{}",
        if name.is_empty() { "<no name>" } else { name }
    )
}

/// All findings of the set, sorted by file, and the objects that passed the API server's checks.
pub fn check(docs: &[Doc], default_ns: &str) -> (Vec<Finding>, ManifestSet) {
    let schemas: BTreeMap<String, (Vec<String>, Value)> = crds()
        .into_iter()
        .map(|crd| {
            let versions = crd.spec.versions.iter().map(|v| v.name.clone()).collect();
            let schema = crd.spec.versions[0]
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .map(|s| serde_json::to_value(s).unwrap_or_default())
                .unwrap_or_default();
            (crd.spec.names.kind.clone(), (versions, schema))
        })
        .collect();
    let mut findings = Vec::new();
    let mut set = ManifestSet::default();
    let mut seen: BTreeMap<(String, String, String), String> = BTreeMap::new();
    for doc in docs {
        let ns = doc.namespace(default_ns).to_string();
        if doc.kind() == "Secret" && doc.api_version() == "v1" {
            set.secrets
                .insert((ns.clone(), doc.name().to_string()), doc.file.clone());
        }
        if !doc.is_ours() {
            continue;
        }
        let label = object_label(doc.kind(), &ns, doc.name());
        let mut error = |field: &str, message: String| {
            findings.push(Finding {
                severity: Severity::Error,
                file: doc.file.clone(),
                object: label.clone(),
                field: field.to_string(),
                message,
            })
        };
        let Some((versions, schema)) = schemas.get(doc.kind()) else {
            error(
                "kind",
                format!(
                    "no kind {:?} in konnect-sa.dev (SystemAccount, SystemAccountToken, RoleBinding)",
                    doc.kind()
                ),
            );
            continue;
        };
        let version = doc.api_version().split('/').nth(1).unwrap_or("");
        if !versions.iter().any(|v| v == version) {
            error(
                "apiVersion",
                format!("version {version:?} is not served; use konnect-sa.dev/{VERSION}"),
            );
            continue;
        }
        if let Some(first) = seen.insert(
            (doc.kind().to_string(), ns.clone(), doc.name().to_string()),
            doc.file.clone(),
        ) {
            error(
                "metadata.name",
                format!("defined twice (also in {first}): the later one replaces the first"),
            );
        }
        let errors = schema::check(schema, &doc.value);
        let valid = errors.is_empty();
        for e in errors {
            error(&e.field, e.message);
        }
        if !valid {
            continue;
        }
        // The API server accepted it; now what the operator itself refuses (Ready=False, InvalidSpec).
        let mut value = doc.value.clone();
        if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("namespace".into(), Value::String(ns.clone()));
        }
        let operator_check = match doc.kind() {
            "SystemAccount" => typed(value, |a: SystemAccount| {
                let blank = a.spec.konnect_name(&a.name_any()).trim().is_empty();
                let problem = if blank {
                    Some("spec.name must not be blank".to_string())
                } else {
                    a.spec.teams.iter().find_map(|t| t.target().err())
                };
                set.accounts.push(Item {
                    file: doc.file.clone(),
                    namespace: ns.clone(),
                    object: a,
                });
                problem
            }),
            "SystemAccountToken" => typed(value, |t: SystemAccountToken| {
                let problem = t.spec.validate().err();
                set.tokens.push(Item {
                    file: doc.file.clone(),
                    namespace: ns.clone(),
                    object: t,
                });
                problem
            }),
            _ => typed(value, |b: RoleBinding| {
                let problem = b.spec.validate().err();
                set.bindings.push(Item {
                    file: doc.file.clone(),
                    namespace: ns.clone(),
                    object: b,
                });
                problem
            }),
        };
        if let Some(message) = operator_check {
            error("spec", message);
        }
    }
    cross_object(&set, &mut findings);
    findings.sort_by(|a, b| (&a.file, &a.object).cmp(&(&b.file, &b.object)));
    (findings, set)
}

fn typed<K: serde::de::DeserializeOwned>(
    value: Value,
    f: impl FnOnce(K) -> Option<String>,
) -> Option<String> {
    match serde_json::from_value::<K>(value) {
        Ok(k) => f(k),
        Err(e) => Some(format!("cannot be read as this kind: {e}")),
    }
}

/// What the API server cannot see: references, duplicates and Secret names across the set.
fn cross_object(set: &ManifestSet, findings: &mut Vec<Finding>) {
    let mut finding = |severity, file: &str, object: String, field: &str, message: String| {
        findings.push(Finding {
            severity,
            file: file.to_string(),
            object,
            field: field.to_string(),
            message,
        })
    };
    let account_here = |ns: &str, name: &str| {
        set.accounts
            .iter()
            .any(|a| a.namespace == ns && a.name() == name)
    };
    // Two SystemAccounts, one Konnect name (on one connection): the second is refused (Conflict).
    let mut names: BTreeMap<(String, String), String> = BTreeMap::new();
    for a in &set.accounts {
        let konnect_name = a.object.spec.konnect_name(&a.name());
        let connection = connection_key(&a.namespace, a.object.spec.konnect.as_ref());
        let label = object_label("SystemAccount", &a.namespace, &a.name());
        if let Some(first) = names.insert((connection, konnect_name.clone()), label.clone()) {
            finding(
                Severity::Error,
                &a.file,
                label,
                "spec.name",
                format!(
                    "Konnect name '{konnect_name}' is also used by {first}: one of them would be refused (Conflict)"
                ),
            );
        }
    }
    let mut assignments: BTreeMap<String, String> = BTreeMap::new();
    for b in &set.bindings {
        let label = object_label("RoleBinding", &b.namespace, &b.name());
        let spec = &b.object.spec;
        let account = match spec.system_account_ref.target() {
            Ok(RefTarget::Name(name)) => {
                if !account_here(&b.namespace, name) {
                    finding(
                        Severity::Warning,
                        &b.file,
                        label.clone(),
                        "spec.systemAccountRef.name",
                        format!(
                            "SystemAccount {}/{name} is not in this set (it may exist in the cluster)",
                            b.namespace
                        ),
                    );
                }
                format!("{}/{name}", b.namespace)
            }
            Ok(RefTarget::Id(id)) => id.to_string(),
            Err(_) => continue,
        };
        let key = format!(
            "{account}|{}|{}|{}|{}",
            spec.role_name,
            spec.entity_type_name,
            spec.entity_id(),
            spec.entity_region()
        );
        if let Some(first) = assignments.insert(key, label.clone()) {
            finding(
                Severity::Warning,
                &b.file,
                label,
                "spec",
                format!(
                    "{first} asks for the same role assignment: one assignment serves both, and stays until both are deleted"
                ),
            );
        }
    }
    let mut secrets: BTreeMap<(String, String), String> = BTreeMap::new();
    for t in &set.tokens {
        let label = object_label("SystemAccountToken", &t.namespace, &t.name());
        if let Ok(RefTarget::Name(name)) = t.object.spec.system_account_ref.target()
            && !account_here(&t.namespace, name)
        {
            finding(
                Severity::Warning,
                &t.file,
                label.clone(),
                "spec.systemAccountRef.name",
                format!(
                    "SystemAccount {}/{name} is not in this set (it may exist in the cluster)",
                    t.namespace
                ),
            );
        }
        let secret = t.object.spec.secret_name(&t.name());
        let key = (t.namespace.clone(), secret.clone());
        if let Some(first) = secrets.insert(key.clone(), label.clone()) {
            finding(
                Severity::Error,
                &t.file,
                label.clone(),
                "spec.secretName",
                format!(
                    "Secret '{secret}' is also the Secret of {first}: the second token would be refused (SecretConflict)"
                ),
            );
        }
        if let Some(file) = set.secrets.get(&key) {
            finding(
                Severity::Error,
                &t.file,
                label,
                "spec.secretName",
                format!(
                    "Secret {}/{secret} is also defined as a manifest in {file}: the operator never overwrites a Secret it does not own (SecretConflict), and your GitOps tool would fight over it",
                    t.namespace
                ),
            );
        }
    }
}

/// Objects with the same connection talk to the same Konnect organisation.
pub fn connection_key(ns: &str, konnect: Option<&crate::api::KonnectOverride>) -> String {
    match konnect.and_then(|k| k.auth_secret_ref.as_ref()) {
        Some(s) => format!("{ns}/{}", s.name),
        None => String::new(),
    }
}
