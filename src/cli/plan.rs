//! `konnect-sa-operator plan`: what applying a manifest set would change in Konnect. Konnect is only
//! read (the client's write gate refuses every write), and every decision is the controllers' own
//! pure function (account_plan, binding_plan, token_plan), so plan and operator cannot disagree.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde::Serialize;

use super::manifests;
pub use super::planner::plan_set;
use super::validate::{self, ManifestSet, Severity};
use crate::api::{RoleBinding, SystemAccount, SystemAccountToken};
use crate::konnect::{ClientConfig, KonnectClient, TokenValue, WriteGate};

#[derive(clap::Args, Debug, Clone)]
pub struct PlanArgs {
    /// Manifest files or directories (walked for .yaml, .yml, .json); `-` reads stdin (e.g. `kustomize build . |`).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Konnect API base URL.
    #[arg(
        long,
        env = "KONNECT_URL",
        default_value = "https://global.api.konghq.com"
    )]
    pub konnect_url: String,
    /// File holding a Konnect token that can list the organisation's system accounts, teams, role assignments and
    /// tokens (plan only reads with it).
    /// Alternative: KONNECT_TOKEN.
    #[arg(long, env = "KONNECT_TOKEN_FILE")]
    pub konnect_token_file: Option<PathBuf>,
    /// Compare with what is applied in this cluster (the objects and their status): objects that the set no
    /// longer has show as deletions. Without it, plan compares with Konnect only, as for a fresh cluster.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of objects that set none and, with --kubeconfig, the one namespace compared. Default: the
    /// namespaces of the set ("default" for objects without one).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The operator's --cluster-name (part of the default account description).
    #[arg(long, env = "CLUSTER_NAME", default_value = "")]
    pub cluster_name: String,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

/// What one plan line does in Konnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Create,
    Adopt,
    Rename,
    UpdateDescription,
    JoinTeam,
    LeaveTeam,
    AssignRole,
    DeleteAssignment,
    IssueToken,
    RevokeTokens,
    DeleteAccount,
    /// The operator would refuse (Ready=False, reason Conflict).
    Refuse,
    /// The operator would refuse the spec (Ready=False, reason InvalidSpec).
    Invalid,
    /// An object leaves the set but its Konnect object stays (Orphan, adopted, Konnect-managed).
    Keep,
    /// Not planned: another connection, or an account that does not exist anywhere yet.
    Unknown,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Adopt => "adopt",
            Self::Rename => "rename",
            Self::UpdateDescription => "update-description",
            Self::JoinTeam => "join-team",
            Self::LeaveTeam => "leave-team",
            Self::AssignRole => "assign-role",
            Self::DeleteAssignment => "delete-assignment",
            Self::IssueToken => "issue-token",
            Self::RevokeTokens => "revoke-tokens",
            Self::DeleteAccount => "delete-account",
            Self::Refuse => "refuse",
            Self::Invalid => "invalid",
            Self::Keep => "keep",
            Self::Unknown => "unknown",
        }
    }
    /// Whether Konnect would change.
    pub fn is_change(self) -> bool {
        !matches!(
            self,
            Self::Refuse | Self::Invalid | Self::Keep | Self::Unknown
        )
    }
    pub fn is_error(self) -> bool {
        matches!(self, Self::Refuse | Self::Invalid)
    }
}

/// One line of the plan. Never holds a token value: tokens are named by object and reason only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub action: Action,
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// The Konnect object: `account 'ci-bot'`, `team 'Platform'`, `role Viewer on Control Planes * (us)`.
    pub target: String,
    pub detail: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    pub changes: Vec<Change>,
}

impl Plan {
    pub fn has_changes(&self) -> bool {
        self.changes.iter().any(|c| c.action.is_change())
    }
    pub fn has_errors(&self) -> bool {
        self.changes.iter().any(|c| c.action.is_error())
    }
    /// 1 when the operator would refuse something; else 2 when Konnect changes, or may (a line that could
    /// not be planned); else 0: nothing changes.
    pub fn exit_code(&self) -> u8 {
        if self.has_errors() {
            1
        } else if self.has_changes() || self.changes.iter().any(|c| c.action == Action::Unknown) {
            2
        } else {
            0
        }
    }
    pub(super) fn push(
        &mut self,
        action: Action,
        kind: &'static str,
        (ns, name): (&str, &str),
        target: impl Into<String>,
        detail: impl Into<String>,
    ) {
        self.changes.push(Change {
            action,
            kind,
            namespace: ns.to_string(),
            name: name.to_string(),
            target: target.into(),
            detail: detail.into(),
        });
    }

    /// `--output json`: the lines, counts and the exit code.
    pub fn json(&self) -> serde_json::Value {
        let count = |f: fn(Action) -> bool| self.changes.iter().filter(|c| f(c.action)).count();
        serde_json::json!({
            "changes": self.changes,
            "summary": {
                "changes": count(Action::is_change),
                "refused": count(Action::is_error),
                "other": count(|a| !a.is_change() && !a.is_error()),
                "exitCode": self.exit_code(),
            }
        })
    }

    pub fn table(&self) -> String {
        if self.changes.is_empty() {
            return "No changes: Konnect matches the manifests.\n".into();
        }
        let header = ["ACTION", "KIND", "OBJECT", "KONNECT", "DETAIL"];
        let rows: Vec<[String; 5]> = self
            .changes
            .iter()
            .map(|c| {
                [
                    c.action.as_str().to_string(),
                    c.kind.to_string(),
                    format!("{}/{}", c.namespace, c.name),
                    c.target.clone(),
                    c.detail.clone(),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let line = |cells: Vec<&str>, out: &mut String| {
            let mut l = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    l.push_str(cell);
                } else {
                    l.push_str(&format!("{cell:<w$}  ", w = widths[i]));
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(header.to_vec(), &mut out);
        for row in &rows {
            line(row.iter().map(String::as_str).collect(), &mut out);
        }
        let count = |f: fn(Action) -> bool| self.changes.iter().filter(|c| f(c.action)).count();
        out.push_str(&format!(
            "\nPlan: {} change(s) in Konnect, {} refused, {} kept or not planned.\n",
            count(Action::is_change),
            count(Action::is_error),
            count(|a| !a.is_change() && !a.is_error())
        ));
        out
    }
}

/// What the cluster holds now (with `--kubeconfig`).
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub accounts: Vec<SystemAccount>,
    pub tokens: Vec<SystemAccountToken>,
    pub bindings: Vec<RoleBinding>,
    /// The Secrets the set's tokens write to, by (namespace, name). Only their annotations, owner and
    /// whether the token key is filled are used (as the controller does); no value is kept or shown.
    pub secrets: BTreeMap<(String, String), Secret>,
    /// The namespaces compared: objects there that the set lacks are removals.
    pub namespaces: Vec<String>,
}

pub(super) fn find<'a, K: kube::Resource>(list: &'a [K], ns: &str, name: &str) -> Option<&'a K> {
    list.iter().find(|o| {
        o.meta().namespace.as_deref() == Some(ns) && o.meta().name.as_deref() == Some(name)
    })
}

/// Refuses every write: `plan` must not change Konnect, whatever a future code path tries.
struct ReadOnly;
impl WriteGate for ReadOnly {
    fn check(&self) -> Result<(), String> {
        Err("plan is read-only: it never writes to Konnect".into())
    }
}

pub async fn run(args: PlanArgs) -> Result<std::process::ExitCode, String> {
    let docs = manifests::load(&args.files)?;
    let default_ns = args.namespace.clone().unwrap_or_else(|| "default".into());
    let (findings, set) = validate::check(&docs, &default_ns);
    for f in &findings {
        eprintln!("{f}");
    }
    if findings.iter().any(|f| f.severity == Severity::Error) {
        return Err("the manifests do not validate (see above); nothing was planned".into());
    }
    let token = read_token(&args)?;
    let client = read_only_client(&args.konnect_url, token)?;
    let applied = match &args.kubeconfig {
        Some(path) => Some(load_applied(path, args.namespace.as_deref(), &set).await?),
        None => None,
    };
    let plan = plan_set(&set, applied.as_ref(), &client, &args.cluster_name)
        .await
        .map_err(|e| format!("reading Konnect: {e}"))?;
    match args.output {
        Output::Table => print!("{}", plan.table()),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&plan.json()).map_err(|e| e.to_string())?
        ),
    }
    Ok(std::process::ExitCode::from(plan.exit_code()))
}

/// A Konnect client that cannot write.
pub fn read_only_client(url: &str, token: TokenValue) -> Result<KonnectClient, String> {
    let mut config = ClientConfig::new(url, token);
    config.write_gate = Some(Arc::new(ReadOnly));
    KonnectClient::new(config).map_err(|e| format!("invalid Konnect URL: {e}"))
}

fn read_token(args: &PlanArgs) -> Result<TokenValue, String> {
    let raw = match &args.konnect_token_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the Konnect token file {}: {e}", path.display()))?,
        None => std::env::var("KONNECT_TOKEN").unwrap_or_default(),
    };
    match raw.trim() {
        "" => Err("no Konnect token: pass --konnect-token-file or set KONNECT_TOKEN".into()),
        t => Ok(TokenValue::new(t)),
    }
}

/// Lists the applied objects in the compared namespaces, and the Secrets the set's tokens write to.
pub async fn load_applied(
    kubeconfig: &std::path::Path,
    namespace: Option<&str>,
    set: &ManifestSet,
) -> Result<Applied, String> {
    let err = |e: &dyn std::fmt::Display| format!("cannot read the cluster: {e}");
    let config = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| err(&e))?;
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
        .await
        .map_err(|e| err(&e))?;
    let client = kube::Client::try_from(config).map_err(|e| err(&e))?;
    let mut namespaces: Vec<String> = match namespace {
        Some(ns) => vec![ns.to_string()],
        None => set
            .accounts
            .iter()
            .map(|i| i.namespace.clone())
            .chain(set.tokens.iter().map(|i| i.namespace.clone()))
            .chain(set.bindings.iter().map(|i| i.namespace.clone()))
            .collect(),
    };
    namespaces.sort();
    namespaces.dedup();
    let mut applied = Applied {
        namespaces: namespaces.clone(),
        ..Default::default()
    };
    let lp = Default::default();
    for ns in &namespaces {
        let accounts: Api<SystemAccount> = Api::namespaced(client.clone(), ns);
        let tokens: Api<SystemAccountToken> = Api::namespaced(client.clone(), ns);
        let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
        applied
            .accounts
            .extend(accounts.list(&lp).await.map_err(|e| err(&e))?.items);
        applied
            .tokens
            .extend(tokens.list(&lp).await.map_err(|e| err(&e))?.items);
        applied
            .bindings
            .extend(bindings.list(&lp).await.map_err(|e| err(&e))?.items);
    }
    for t in &set.tokens {
        let name = t.object.spec.secret_name(&t.name());
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &t.namespace);
        if let Some(s) = secrets.get_opt(&name).await.map_err(|e| err(&e))? {
            applied.secrets.insert((t.namespace.clone(), name), s);
        }
    }
    Ok(applied)
}
