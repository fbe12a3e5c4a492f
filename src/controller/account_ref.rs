//! Resolving `systemAccountRef` for tokens and role bindings, and waking them when the account changes.
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};

use super::account::ready_account_id;
use super::context::Context;
use super::error::ReconcileError;
use crate::api::{KonnectOverride, RefTarget, SystemAccount, SystemAccountRef};

/// The Konnect account id a reference points at, once that account is usable.
pub struct ResolvedAccount {
    pub id: String,
    /// The referenced SystemAccount's connection override, inherited when the dependent sets none.
    pub konnect: Option<KonnectOverride>,
}

fn resolve_cached(
    ctx: &Context,
    namespace: &str,
    r: &SystemAccountRef,
) -> Result<ResolvedAccount, ReconcileError> {
    match r.target().map_err(ReconcileError::InvalidSpec)? {
        RefTarget::Id(id) => Ok(ResolvedAccount {
            id: id.to_string(),
            konnect: None,
        }),
        RefTarget::Name(name) => {
            let account = ctx.accounts.get(&ObjectRef::new(name).within(namespace));
            from_account(namespace, name, account.as_deref())
        }
    }
}

/// Resolves a reference from the account cache; an account the cache does not show as Ready yet
/// is read from the API server before giving up: the SystemAccount watch that wakes a dependent is
/// not the one that fills the account cache, and can run ahead of it. Giving up then would wait
/// out the retry.
pub async fn resolve(
    ctx: &Context,
    namespace: &str,
    r: &SystemAccountRef,
) -> Result<ResolvedAccount, ReconcileError> {
    let cached = resolve_cached(ctx, namespace, r);
    let (Err(ReconcileError::WaitingForSystemAccount(_)), Ok(RefTarget::Name(name))) =
        (&cached, r.target())
    else {
        return cached;
    };
    let api: Api<SystemAccount> = Api::namespaced(ctx.kube.clone(), namespace);
    match api.get_opt(name).await {
        Ok(account) => from_account(namespace, name, account.as_ref()),
        Err(e) => {
            tracing::debug!(error = %e, "could not read the SystemAccount; using the cache");
            cached
        }
    }
}

fn from_account(
    namespace: &str,
    name: &str,
    account: Option<&SystemAccount>,
) -> Result<ResolvedAccount, ReconcileError> {
    let account = account.ok_or_else(|| {
        ReconcileError::WaitingForSystemAccount(format!(
            "SystemAccount {namespace}/{name} does not exist yet; this resumes when it is Ready"
        ))
    })?;
    let id = ready_account_id(account).ok_or_else(|| {
        ReconcileError::WaitingForSystemAccount(format!(
            "SystemAccount {namespace}/{name} is not Ready yet; this resumes when it is"
        ))
    })?;
    Ok(ResolvedAccount {
        id,
        konnect: account.spec.konnect.clone(),
    })
}

/// The auth Secret name for a dependent: its own override, else its account's.
pub fn auth_secret<'a>(
    own: Option<&'a KonnectOverride>,
    account: Option<&'a KonnectOverride>,
) -> Option<&'a str> {
    own.or(account)?
        .auth_secret_ref
        .as_ref()
        .map(|r| r.name.as_str())
}

/// Dependents in `store` whose reference names `account` (same namespace): the watch mapping
/// that wakes them when the account changes, instead of polling.
pub fn dependents_of<K>(
    store: &Store<K>,
    account: &SystemAccount,
    account_ref: impl Fn(&K) -> &SystemAccountRef,
) -> Vec<ObjectRef<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let ns = account.namespace();
    let name = account.name_any();
    store
        .state()
        .iter()
        .filter(|d| d.namespace() == ns && account_ref(d).name.as_deref() == Some(name.as_str()))
        .map(|d| ObjectRef::from_obj(&**d))
        .collect()
}
