//! The controllers: one per kind, each a short pipeline (observe -> plan -> act -> status),
//! sharing a [`context::Context`].
pub mod account;
pub mod account_plan;
pub mod account_ref;
pub mod backoff;
pub mod binding;
pub mod binding_plan;
pub mod budget;
pub mod connections;
pub mod context;
pub mod error;
pub mod konnect_cache;
pub mod own_token;
pub mod reconciler;
pub mod scopes;
pub mod snapshot;
pub mod token;
#[cfg(test)]
mod token_model;
pub mod token_plan;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Config as ControllerRunConfig;
use kube::runtime::events::Reporter;
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};

use crate::api::{RoleBinding, SystemAccount, SystemAccountToken};
use crate::k8s::secret::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::telemetry::{Health, Metrics};
use connections::Connections;
use context::{Context, ControllerConfig};

/// SystemAccount changes a subscriber may lag behind before the shared watch waits for it.
const SHARED_EVENTS_BUFFER: usize = 1024;

/// Everything `run` needs to start the controllers.
pub struct Runtime {
    pub kube: kube::Client,
    pub connections: Arc<Connections>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub config: ControllerConfig,
    pub max_concurrent_reconciles: u16,
    /// Empty: all namespaces.
    pub namespaces: Vec<String>,
    /// Reporter identity for Events (pod name).
    pub instance: Option<String>,
}

/// Runs the three controllers until `shutdown` resolves (then in-flight reconciles finish).
/// Everything runs inside the returned future: dropping it cancels every reconcile at once (how a
/// lost Lease stops the writes). With a namespace list, each kind has one watch per namespace
/// (namespaced, so a Role per namespace suffices), merged into one cache; every namespace shares
/// one Context: one drift budget, one Konnect snapshot, one account and binding cache.
pub async fn run(rt: Runtime, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
    let Runtime {
        kube,
        connections,
        metrics,
        health,
        config,
        max_concurrent_reconciles,
        namespaces,
        instance,
    } = rt;
    health.set_controllers_started();
    let run_config = ControllerRunConfig::default().concurrency(max_concurrent_reconciles);
    let wc = watcher::Config::default();
    let ns = namespaces.as_slice();

    // One SystemAccount watch feeds the account controller, the account cache that tokens and
    // bindings resolve their reference against, and the triggers that wake them. The store is
    // written before a subscriber hears of the change, so a dependent woken by its account
    // always finds that account in the cache; and one watch costs a third of three.
    let (account_store, account_writer) =
        reflector::store_shared::<SystemAccount>(SHARED_EVENTS_BUFFER);
    let subscribe = || {
        account_writer
            .subscribe()
            .expect("a shared store has subscribers")
    };
    let (account_events, token_wakes, binding_wakes) = (subscribe(), subscribe(), subscribe());
    let account_watch = scopes::watch::<SystemAccount>(&kube, ns, wc.clone())
        .reflect_shared(account_writer)
        .for_each(|event| async move {
            if let Err(e) = event {
                tracing::warn!(error = %e, "SystemAccount watch failed; retrying");
            }
        });

    let (token_store, token_writer) = reflector::store::<SystemAccountToken>();
    let (binding_store, binding_writer) = reflector::store::<RoleBinding>();
    let token_stream = scopes::watch::<SystemAccountToken>(&kube, ns, wc.clone())
        .reflect(token_writer)
        .applied_objects();
    let binding_stream = scopes::watch::<RoleBinding>(&kube, ns, wc.clone())
        .reflect(binding_writer)
        .applied_objects();

    let accounts = Controller::for_shared_stream(account_events, account_store.clone())
        .with_config(run_config.clone());
    let tokens =
        Controller::for_stream(token_stream, token_store.clone()).with_config(run_config.clone());
    let bindings =
        Controller::for_stream(binding_stream, binding_store.clone()).with_config(run_config);

    let managed_secrets =
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"));
    // Deleting a token's Secret is the way out of some failures (an immutable Secret): it ends the
    // token's backoff hold, so the Secret's event below gets the token looked at at once.
    let backoffs = Arc::new(backoff::Backoffs::default());
    let lift = {
        let backoffs = backoffs.clone();
        move |s: &kube::core::PartialObjectMeta<Secret>| {
            if let Some(token) = owner_token(s) {
                let ns = token.namespace.as_deref().unwrap_or_default();
                backoffs.lift_hold(&reconciler::key_of::<SystemAccountToken>(ns, &token.name));
            }
        }
    };
    let tokens = tokens
        // A managed Secret wakes its token: by its controller ownerReference, or by the owner
        // annotation of a Secret kept free of ownerReferences (deletionPolicy: Orphan).
        .watches_stream(
            scopes::touched::<Secret>(&kube, ns, managed_secrets, lift),
            |s: kube::core::PartialObjectMeta<Secret>| owner_token(&s),
        )
        .watches_shared_stream(token_wakes, move |sa| {
            account_ref::dependents_of(&token_store, &sa, |t: &SystemAccountToken| {
                &t.spec.system_account_ref
            })
        });
    let binding_store_for_map = binding_store.clone();
    let bindings = bindings.watches_shared_stream(binding_wakes, move |sa| {
        account_ref::dependents_of(&binding_store_for_map, &sa, |b: &RoleBinding| {
            &b.spec.system_account_ref
        })
    });

    let reporter = Reporter {
        controller: "konnect-sa-operator".into(),
        instance,
    };
    let events = crate::k8s::events::Publisher::new(kube.clone(), reporter);
    let ctx = Arc::new(
        Context::new(
            kube,
            connections,
            metrics,
            events,
            config,
            account_store.clone(),
            binding_store.clone(),
        )
        .with_backoffs(backoffs),
    );

    // Ready once the account and binding caches have synced (with a namespace list: every
    // namespace has listed once).
    let readiness = async move {
        // Poll with a short timeout: kube-runtime's store readiness wakes one waiter (the
        // controller's own), so a second waiter must look again to notice.
        while tokio::time::timeout(Duration::from_millis(100), account_store.wait_until_ready())
            .await
            .is_err()
        {}
        while tokio::time::timeout(Duration::from_millis(100), binding_store.wait_until_ready())
            .await
            .is_err()
        {}
        tracing::info!("caches synced; ready");
        health.set_caches_synced(true);
        futures::future::pending::<()>().await
    };

    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mk_stop = |tx: &tokio::sync::broadcast::Sender<()>| {
        let mut rx = tx.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };
    let a = accounts
        .graceful_shutdown_on(mk_stop(&stop_tx))
        .run(account::reconcile, reconciler::error_policy, ctx.clone())
        .for_each(|_| async {});
    let t = tokens
        .graceful_shutdown_on(mk_stop(&stop_tx))
        .run(token::reconcile, reconciler::error_policy, ctx.clone())
        .for_each(|_| async {});
    let b = bindings
        .graceful_shutdown_on(mk_stop(&stop_tx))
        .run(binding::reconcile, reconciler::error_policy, ctx)
        .for_each(|_| async {});
    let stopper = async move {
        shutdown.await;
        let _ = stop_tx.send(());
    };
    let scope = if namespaces.is_empty() {
        "<all>".to_string()
    } else {
        namespaces.join(",")
    };
    tracing::info!(namespaces = %scope, "controllers started");
    // The shared watch and the readiness check run until the controllers have stopped.
    tokio::select! {
        _ = async { futures::join!(a, t, b, stopper) } => {}
        _ = account_watch => tracing::warn!("the SystemAccount watch ended"),
        _ = readiness => {}
    }
}

/// The token a managed Secret belongs to (same namespace).
fn owner_token(
    s: &kube::core::PartialObjectMeta<Secret>,
) -> Option<reflector::ObjectRef<SystemAccountToken>> {
    let ns = s.metadata.namespace.as_deref().unwrap_or_default();
    crate::k8s::secret::owner_name(&s.metadata)
        .map(|name| reflector::ObjectRef::new(&name).within(ns))
}
