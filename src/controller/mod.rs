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
pub mod reconciler;
pub mod snapshot;
pub mod token;
pub mod token_plan;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
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

/// Where the controllers look: every namespace, or one.
fn api<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

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

/// Runs the three controllers until `shutdown` resolves. With a namespace list, one set of
/// controllers per namespace (each with namespaced watches, so a Role per namespace suffices).
pub async fn run(rt: Runtime, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
    let scopes: Vec<Option<String>> = if rt.namespaces.is_empty() {
        vec![None]
    } else {
        rt.namespaces.iter().cloned().map(Some).collect()
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    let synced = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let total_stores = scopes.len() * 2;
    for scope in scopes {
        let mut rx = rx.clone();
        let stop = async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        tasks.push(tokio::spawn(run_scope(
            scope,
            rt.kube.clone(),
            rt.connections.clone(),
            rt.metrics.clone(),
            rt.health.clone(),
            rt.config.clone(),
            rt.max_concurrent_reconciles,
            rt.instance.clone(),
            synced.clone(),
            total_stores,
            stop,
        )));
    }
    shutdown.await;
    let _ = tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_scope(
    scope: Option<String>,
    kube: kube::Client,
    connections: Arc<Connections>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    config: ControllerConfig,
    concurrency: u16,
    instance: Option<String>,
    synced: Arc<std::sync::atomic::AtomicUsize>,
    total_stores: usize,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let ns = scope.as_deref();
    let run_config = ControllerRunConfig::default().concurrency(concurrency);
    let wc = watcher::Config::default();

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
    let account_watch = watcher(api::<SystemAccount>(&kube, ns), wc.clone())
        .default_backoff()
        .reflect_shared(account_writer)
        .for_each(|event| async move {
            if let Err(e) = event {
                tracing::warn!(error = %e, "SystemAccount watch failed; retrying");
            }
        });

    let accounts = Controller::for_shared_stream(account_events, account_store.clone())
        .with_config(run_config.clone());
    let tokens = Controller::new(api::<SystemAccountToken>(&kube, ns), wc.clone())
        .with_config(run_config.clone());
    let bindings =
        Controller::new(api::<RoleBinding>(&kube, ns), wc.clone()).with_config(run_config);

    let token_store = tokens.store();
    let binding_store = bindings.store();
    let tokens = tokens
        .owns(
            api::<Secret>(&kube, ns),
            watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")),
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
    let ctx = Arc::new(Context::new(
        kube,
        connections,
        metrics,
        events,
        config,
        account_store.clone(),
        binding_store.clone(),
    ));

    // Ready once every scope's account and binding caches have synced.
    let readiness = {
        let health = health.clone();
        async move {
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
            let done = synced.fetch_add(2, std::sync::atomic::Ordering::SeqCst) + 2;
            if done >= total_stores {
                tracing::info!("caches synced; ready");
                health.set_caches_synced(true);
            }
        }
    };
    tokio::spawn(readiness);

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
        stop.await;
        let _ = stop_tx.send(());
    };
    tracing::info!(namespace = ns.unwrap_or("<all>"), "controllers started");
    // The shared watch runs until the controllers have stopped (it ends with them).
    tokio::select! {
        _ = async { futures::join!(a, t, b, stopper) } => {}
        _ = account_watch => tracing::warn!("the SystemAccount watch ended"),
    }
}
