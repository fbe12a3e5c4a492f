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

pub async fn resolve(
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
            let cached = ctx.accounts.get(&ObjectRef::new(name).within(namespace));
            let ready = cached
                .as_deref()
                .and_then(|a| ready_account_id(a).map(|id| (id, a.spec.konnect.clone())));
            // Our wake-up comes from another watch than the one filling the cache: when the cache
            // still says "not ready", ask the API server before waiting.
            let ready = match ready {
                Some(r) => Some(r),
                None => {
                    let api: Api<SystemAccount> = Api::namespaced(ctx.kube.clone(), namespace);
                    let fresh = api
                        .get_opt(name)
                        .await
                        .map_err(ReconcileError::kube(format!(
                            "reading SystemAccount {namespace}/{name}"
                        )))?;
                    match fresh {
                        None => {
                            return Err(ReconcileError::WaitingForSystemAccount(format!(
                                "SystemAccount {namespace}/{name} does not exist yet; this resumes when it is Ready"
                            )));
                        }
                        Some(a) => ready_account_id(&a).map(|id| (id, a.spec.konnect.clone())),
                    }
                }
            };
            let (id, konnect) = ready.ok_or_else(|| {
                ReconcileError::WaitingForSystemAccount(format!(
                    "SystemAccount {namespace}/{name} is not Ready yet; this resumes when it is"
                ))
            })?;
            Ok(ResolvedAccount { id, konnect })
        }
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
