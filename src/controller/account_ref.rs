//! Resolving `systemAccountRef` for tokens and role bindings, and waking them when the account changes.
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};

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

/// The Konnect account id a reference points at, once that account is Ready, from the shared
/// account cache (the same watch that wakes dependents fills it first, so no API read is needed).
pub fn resolve(
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

/// The Konnect account id a token's reference points at. A token needs the account's id, not its
/// Ready condition: an account that is not Ready for a reason unrelated to its identity (a team
/// name matching two teams, a transient Konnect error on its drift check, an edit in flight) keeps
/// its id, and its tokens keep rotating and revoking on schedule. Only an account without an id
/// (not created yet) or being deleted is waited for.
pub fn resolve_identity(
    ctx: &Context,
    namespace: &str,
    r: &SystemAccountRef,
) -> Result<ResolvedAccount, ReconcileError> {
    let RefTarget::Name(name) = r.target().map_err(ReconcileError::InvalidSpec)? else {
        return resolve(ctx, namespace, r);
    };
    let account = ctx.accounts.get(&ObjectRef::new(name).within(namespace));
    match account.as_deref() {
        Some(a) if a.meta().deletion_timestamp.is_none() => {
            match a.status.as_ref().and_then(|s| s.id.clone()) {
                Some(id) => Ok(ResolvedAccount {
                    id,
                    konnect: a.spec.konnect.clone(),
                }),
                None => from_account(namespace, name, Some(a)),
            }
        }
        other => from_account(namespace, name, other),
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
        let message =
            format!("SystemAccount {namespace}/{name} is not Ready yet; this resumes when it is");
        if being_created(account) {
            ReconcileError::SystemAccountInProgress(message)
        } else {
            ReconcileError::WaitingForSystemAccount(message)
        }
    })?;
    Ok(ResolvedAccount {
        id,
        konnect: account.spec.konnect.clone(),
    })
}

/// An account on its way to its first Ready: not being deleted, never given an id, and no failure
/// reported (no Ready condition yet, or `Pending`).
fn being_created(account: &SystemAccount) -> bool {
    let status = account.status.clone().unwrap_or_default();
    account.metadata.deletion_timestamp.is_none()
        && status.id.is_none()
        && crate::k8s::conditions::get(&status.conditions, crate::k8s::conditions::READY)
            .is_none_or(|c| c.reason == crate::k8s::conditions::Reason::Pending.as_str())
}

/// The auth Secret to clean up with: the one recorded when the Konnect state was made (`Some("")`:
/// the operator-wide connection), else (recorded by an older version) what the spec resolves to now.
pub fn cleanup_auth_secret<'a>(
    recorded: Option<&'a str>,
    own: Option<&'a KonnectOverride>,
    account: Option<&'a KonnectOverride>,
) -> Option<&'a str> {
    match recorded {
        Some("") => None,
        Some(name) => Some(name),
        None => auth_secret(own, account),
    }
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
/// that wakes them when the account is Ready or being deleted, instead of polling. The steps of
/// an account's creation (finalizer, pending marker) wake nobody: a dependent could only find it
/// still not Ready, at the cost of a reconcile and its API calls each.
pub fn dependents_of<K>(
    store: &Store<K>,
    account: &SystemAccount,
    account_ref: impl Fn(&K) -> &SystemAccountRef,
) -> Vec<ObjectRef<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    if ready_account_id(account).is_none() && account.meta().deletion_timestamp.is_none() {
        return Vec::new();
    }
    // Runs for every SystemAccount event over every dependent: compare borrowed fields, no copies.
    let ns = account.meta().namespace.as_deref();
    let name = account.meta().name.as_deref();
    store
        .state()
        .iter()
        .filter(|d| d.meta().namespace.as_deref() == ns && account_ref(d).name.as_deref() == name)
        .map(|d| ObjectRef::from_obj(&**d))
        .collect()
}
