//! `konnect-sa-operator bootstrap`: moves the operator from a person's token to a system account
//! it manages itself. Given the personal token once, it creates a SystemAccount for the operator,
//! a RoleBinding giving it Identity Admin, and a SystemAccountToken whose Secret is the operator's
//! token Secret, puts the personal token into that Secret so the operator can start, and waits
//! until the operator runs on its own `spat_` (the token's `OperatorCredential` condition says
//! `InUse`). Objects that already exist are left as they are, so running it again is harmless.
use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::api::{RoleBinding, SystemAccount, SystemAccountToken};
use crate::k8s::conditions::{self, OPERATOR_CREDENTIAL};
use crate::k8s::secret::{ANN_OWNER_NAME, ANN_OWNER_UID, ANN_TOKEN_ID};
use crate::konnect::{AccountFilter, ClientConfig, KonnectClient, TokenValue};

/// Flags of `konnect-sa-operator bootstrap`.
#[derive(Debug, Clone, clap::Args)]
pub struct BootstrapArgs {
    /// Konnect API base URL (as for `run`).
    #[arg(
        long,
        env = "KONNECT_URL",
        default_value = "https://global.api.konghq.com"
    )]
    pub konnect_url: String,
    /// File holding the person's token (kpat_, with Identity Admin). Alternative: KONNECT_PERSONAL_TOKEN.
    /// It only starts the operator: once its own spat_ is in use, the personal token can be revoked.
    #[arg(long, env = "KONNECT_PERSONAL_TOKEN_FILE")]
    pub personal_token_file: Option<std::path::PathBuf>,
    /// Namespace of the operator (its token Secret and the three objects).
    #[arg(long, env = "POD_NAMESPACE", default_value = "konnect-sa-system")]
    pub namespace: String,
    /// Name of the SystemAccount, RoleBinding and SystemAccountToken (and of the Konnect account).
    #[arg(long, default_value = "konnect-sa-operator")]
    pub name: String,
    /// The Secret the operator's token file is mounted from (the chart's konnect.token.existingSecret).
    #[arg(long, default_value = "konnect-sa-operator-token")]
    pub secret_name: String,
    /// Key of the token in that Secret (the chart's konnect.token.existingSecretKey).
    #[arg(long, default_value = "token")]
    pub secret_key: String,
    /// Lifetime of each of the operator's own tokens (rotated a third of it before expiry).
    #[arg(long, default_value = "2160h")]
    pub token_duration: String,
    /// How long to wait for the operator to run on its own token (Go duration).
    #[arg(long, default_value = "10m", value_parser = crate::api::duration::parse)]
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(
        "no personal token: pass --personal-token-file or set KONNECT_PERSONAL_TOKEN to a kpat_ with the Identity Admin role"
    )]
    MissingToken,
    #[error("cannot read {path}: {source}")]
    TokenFile {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Konnect(String),
    #[error("cannot reach Kubernetes: {0}. Set KUBECONFIG or run in a cluster")]
    Kubeconfig(String),
    #[error("Kubernetes refused {what}: {source}")]
    Kubernetes { what: String, source: kube::Error },
    #[error("{0}")]
    Timeout(String),
}

fn read_personal_token(args: &BootstrapArgs) -> Result<TokenValue, BootstrapError> {
    if let Some(path) = &args.personal_token_file {
        return crate::konnect::token_file::read(path)
            .map_err(|source| BootstrapError::TokenFile {
                path: path.display().to_string(),
                source,
            })?
            .ok_or(BootstrapError::MissingToken);
    }
    match std::env::var("KONNECT_PERSONAL_TOKEN") {
        Ok(v) if !v.trim().is_empty() => Ok(TokenValue::new(v.trim())),
        _ => Err(BootstrapError::MissingToken),
    }
}

/// Runs against the environment's kubeconfig, printing progress to stdout.
pub async fn run(args: BootstrapArgs) -> Result<(), BootstrapError> {
    let token = read_personal_token(&args)?;
    let kube = kube::Client::try_default()
        .await
        .map_err(|e| BootstrapError::Kubeconfig(e.to_string()))?;
    run_with(kube, token, &args, &mut |line| println!("{line}")).await
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> BootstrapError {
    let what = what.into();
    move |source| BootstrapError::Kubernetes { what, source }
}

/// Creates `obj` unless an object of that name exists; says which.
async fn create_if_absent<K>(
    api: &Api<K>,
    obj: K,
    say: &mut (dyn FnMut(String) + Send),
) -> Result<K, BootstrapError>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let kind = K::kind(&()).to_string();
    let name = obj.name_any();
    if let Some(existing) = api
        .get_opt(&name)
        .await
        .map_err(kube_err(format!("reading {kind} {name}")))?
    {
        say(format!("{kind} {name} exists: left as it is"));
        return Ok(existing);
    }
    let created = api
        .create(&PostParams::default(), &obj)
        .await
        .map_err(kube_err(format!("creating {kind} {name}")))?;
    say(format!("{kind} {name} created"));
    Ok(created)
}

fn typed<K: serde::de::DeserializeOwned>(v: serde_json::Value) -> K {
    serde_json::from_value(v).expect("a well-formed object")
}

/// The bootstrap with a given client and personal token (tests call this in-process).
pub async fn run_with(
    kube: kube::Client,
    personal: TokenValue,
    args: &BootstrapArgs,
    say: &mut (dyn FnMut(String) + Send),
) -> Result<(), BootstrapError> {
    let ns = args.namespace.as_str();
    let tokens: Api<SystemAccountToken> = Api::namespaced(kube.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), ns);

    // Already done? Then the personal token is not even needed (nor checked).
    if let Some(t) = tokens
        .get_opt(&args.name)
        .await
        .map_err(kube_err("reading the SystemAccountToken"))?
        && runs_on_own_token(&t)
    {
        say(format!(
            "The operator already runs on its own token (SystemAccountToken {ns}/{}): nothing to do.",
            args.name
        ));
        say(revoke_hint());
        return Ok(());
    }

    // Fail fast, before anything is created, on a token that cannot do the job.
    let konnect = KonnectClient::new(ClientConfig::new(
        args.konnect_url.clone(),
        personal.clone(),
    ))
    .map_err(|e| BootstrapError::Konnect(e.to_string()))?;
    konnect.me().await.map_err(|e| {
        BootstrapError::Konnect(format!("Konnect did not accept the personal token: {e}"))
    })?;
    konnect
        .list_system_accounts(&AccountFilter {
            name_eq: Some(args.name.clone()),
            konnect_managed: None,
        })
        .await
        .map_err(|e| {
            BootstrapError::Konnect(format!(
                "the personal token cannot manage system accounts ({e}); it needs the Identity Admin role \
                 (or the Organization Admin team)"
            ))
        })?;

    // Orphan everywhere: deleting one of these objects must never take the operator's own
    // credential away with it.
    let sa: SystemAccount = typed(json!({
        "apiVersion": "konnect-sa.dev/v1alpha1", "kind": "SystemAccount",
        "metadata": {"name": args.name, "namespace": ns},
        "spec": {"description": "The konnect-sa-operator's own identity (made by bootstrap)", "deletionPolicy": "Orphan"},
    }));
    create_if_absent(&Api::namespaced(kube.clone(), ns), sa, say).await?;
    let rb: RoleBinding = typed(json!({
        "apiVersion": "konnect-sa.dev/v1alpha1", "kind": "RoleBinding",
        "metadata": {"name": args.name, "namespace": ns},
        "spec": {"systemAccountRef": {"name": args.name}, "roleName": "Admin",
                 "entityTypeName": "Identity", "deletionPolicy": "Orphan"},
    }));
    create_if_absent(&Api::namespaced(kube.clone(), ns), rb, say).await?;
    let t: SystemAccountToken = typed(json!({
        "apiVersion": "konnect-sa.dev/v1alpha1", "kind": "SystemAccountToken",
        "metadata": {"name": args.name, "namespace": ns},
        "spec": {"systemAccountRef": {"name": args.name}, "secretName": args.secret_name,
                 "secretKey": args.secret_key, "duration": args.token_duration, "deletionPolicy": "Orphan"},
    }));
    let t = create_if_absent(&tokens, t, say).await?;
    let uid = t.uid().unwrap_or_default();

    // The personal token goes into the Secret the operator reads, marked as this token's Secret:
    // the operator starts on it, and its first issue replaces it with the account's own spat_.
    // A Secret that already holds an issued token is never touched.
    let existing = secrets
        .get_opt(&args.secret_name)
        .await
        .map_err(kube_err(format!("reading Secret {}", args.secret_name)))?;
    let issued = existing.as_ref().is_some_and(|s| {
        s.annotations().contains_key(ANN_TOKEN_ID)
            && s.annotations().get(ANN_OWNER_UID) == Some(&uid)
    });
    if issued {
        say(format!(
            "Secret {ns}/{} already holds the operator's own token: left as it is",
            args.secret_name
        ));
    } else {
        let mut secret = existing.unwrap_or_else(|| {
            typed(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": args.secret_name, "namespace": ns}, "type": "Opaque",
            }))
        });
        let ann = secret
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new);
        ann.insert(ANN_OWNER_UID.into(), uid.clone());
        ann.insert(ANN_OWNER_NAME.into(), args.name.clone());
        secret.data.get_or_insert_with(BTreeMap::new).insert(
            args.secret_key.clone(),
            ByteString(personal.expose().as_bytes().to_vec()),
        );
        let what = format!("writing Secret {}", args.secret_name);
        if secret.metadata.resource_version.is_some() {
            secrets
                .replace(&args.secret_name, &PostParams::default(), &secret)
                .await
                .map_err(kube_err(what))?;
        } else {
            secrets
                .create(&PostParams::default(), &secret)
                .await
                .map_err(kube_err(what))?;
        }
        say(format!(
            "Secret {ns}/{} holds the personal token until the operator has issued its own",
            args.secret_name
        ));
    }

    say(format!(
        "Waiting (at most {:?}) for the operator to run on its own token; it must run with \
         --konnect-token-secret={ns}/{} (chart: konnect.token.selfManaged=true)",
        args.timeout, args.secret_name
    ));
    let deadline = tokio::time::Instant::now() + args.timeout;
    loop {
        let t = tokens
            .get_opt(&args.name)
            .await
            .map_err(kube_err("reading the SystemAccountToken"))?;
        if let Some(t) = &t
            && runs_on_own_token(t)
        {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let why = t
                .and_then(|t| t.status)
                .map(|s| {
                    s.conditions
                        .iter()
                        .map(|c| format!("{}={} {}: {}", c.type_, c.status, c.reason, c.message))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_else(|| "no status yet: is the operator running?".into());
            return Err(BootstrapError::Timeout(format!(
                "the operator does not run on its own token after {:?} ({why}). Running bootstrap again \
                 is harmless",
                args.timeout
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    say(format!(
        "Done: the operator runs on the token of system account {} (SystemAccountToken {ns}/{}), and \
         rotates it itself.",
        args.name, args.name
    ));
    say(revoke_hint());
    Ok(())
}

fn revoke_hint() -> String {
    "The personal token is no longer needed by the operator: revoke it in Konnect (your profile, \
     Personal access tokens), and delete any copy of it."
        .into()
}

/// The token is Ready and the operator says it runs on it.
fn runs_on_own_token(t: &SystemAccountToken) -> bool {
    let Some(st) = &t.status else {
        return false;
    };
    conditions::is_ready(&st.conditions, t.metadata.generation)
        && conditions::get(&st.conditions, OPERATOR_CREDENTIAL)
            .is_some_and(|c| c.status == "True" && c.reason == "InUse")
}
