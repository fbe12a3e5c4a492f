//! The shape every controller shares: finalizer, apply/cleanup, metrics, a `Ready=False` status
//! and a Warning Event on failure, and the error backoff.
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Error as FinalizerError, Event as FinalizerEvent, finalizer};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::context::Context;
use super::error::{ReconcileError, retry_delay};
use crate::k8s::conditions::{self, READY, Reason};
use crate::k8s::{events, status};

/// The finalizer every kind carries while it owns something in Konnect.
pub const FINALIZER: &str = "konnect-sa.dev/cleanup";

/// A custom resource this operator reconciles.
pub trait Managed:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    const KIND: &'static str;
    fn conditions(&self) -> &[Condition];
    /// Creates the status when absent.
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
    fn set_observed_generation(&mut self, generation: Option<i64>);
}

fn object_key<K: Managed>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::KIND,
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

/// Runs `apply` (or `cleanup` once the object is being deleted) under the finalizer, in a span
/// carrying the object's namespace/name and a trace id that every log line of this reconcile shares.
pub async fn reconcile_with<K, A, AF, C, CF>(
    obj: Arc<K>,
    ctx: Arc<Context>,
    apply: A,
    cleanup: C,
) -> Result<Action, ReconcileError>
where
    K: Managed,
    A: FnOnce(Arc<K>, Arc<Context>) -> AF,
    AF: Future<Output = Result<Action, ReconcileError>>,
    C: FnOnce(Arc<K>, Arc<Context>) -> CF,
    CF: Future<Output = Result<Action, ReconcileError>>,
{
    let span = tracing::info_span!(
        "reconcile",
        kind = K::KIND,
        namespace = %obj.namespace().unwrap_or_default(),
        name = %obj.name_any(),
        trace_id = %uuid::Uuid::new_v4().simple(),
    );
    tracing::Instrument::instrument(reconcile_inner(obj, ctx, apply, cleanup), span).await
}

async fn reconcile_inner<K, A, AF, C, CF>(
    obj: Arc<K>,
    ctx: Arc<Context>,
    apply: A,
    cleanup: C,
) -> Result<Action, ReconcileError>
where
    K: Managed,
    A: FnOnce(Arc<K>, Arc<Context>) -> AF,
    AF: Future<Output = Result<Action, ReconcileError>>,
    C: FnOnce(Arc<K>, Arc<Context>) -> CF,
    CF: Future<Output = Result<Action, ReconcileError>>,
{
    let started = Instant::now();
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.kube.clone(), &ns);
    // The cache can lag our own writes (a trigger from an older event runs after we wrote): act
    // on the object as the API server has it now, so no decision is made on a stale status.
    let obj = match api.get_opt(&obj.name_any()).await {
        Ok(Some(fresh)) => Arc::new(fresh),
        Ok(None) => return Ok(Action::await_change()),
        Err(e) => return Err(ReconcileError::kube("reading the object")(e)),
    };
    let inner_ctx = ctx.clone();
    let result = finalizer(&api, FINALIZER, obj.clone(), |event| async move {
        match event {
            FinalizerEvent::Apply(o) => apply(o, inner_ctx).await,
            FinalizerEvent::Cleanup(o) => cleanup(o, inner_ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        FinalizerError::ApplyFailed(e) | FinalizerError::CleanupFailed(e) => e,
        FinalizerError::AddFinalizer(source) | FinalizerError::RemoveFinalizer(source) => {
            ReconcileError::Kube {
                context: "updating finalizers".into(),
                source,
            }
        }
        other => ReconcileError::InvalidSpec(other.to_string()),
    });
    // Waiting for an account is a state, not an error.
    let category = result
        .as_ref()
        .err()
        .filter(|e| !matches!(e, ReconcileError::WaitingForSystemAccount(_)))
        .map(|e| e.category());
    ctx.metrics
        .observe_reconcile(K::KIND, started.elapsed(), category);
    match &result {
        Ok(_) => ctx.record_success(&object_key(&*obj)),
        Err(e) if e.is_write_conflict() => {
            tracing::debug!(error = %e, "stale object; retrying with fresh data")
        }
        Err(e) => {
            tracing::warn!(error = %e, reason = %e.reason(), "reconcile failed");
            report_failure(&api, &obj, e, &ctx).await;
        }
    }
    result
}

/// Writes `Ready=False` with the error's reason and message, and a Warning Event when either
/// changed (so a persistent failure does not flood Events).
async fn report_failure<K: Managed>(api: &Api<K>, obj: &K, err: &ReconcileError, ctx: &Context) {
    let Ok(mut fresh) = api.get_status(&obj.name_any()).await else {
        return;
    };
    let deleting = fresh.meta().deletion_timestamp.is_some();
    let reason = if deleting {
        Reason::DeletionBlocked
    } else {
        err.reason()
    };
    let message = if deleting {
        format!(
            "cleanup in Konnect failed, the finalizer stays until it succeeds: {}",
            err.message()
        )
    } else {
        err.message()
    };
    let unchanged = conditions::get(fresh.conditions(), READY).is_some_and(|c| {
        c.status == "False" && c.reason == reason.as_str() && c.message == message
    });
    if unchanged {
        return;
    }
    let generation = fresh.meta().generation;
    conditions::set(
        fresh.conditions_mut(),
        READY,
        false,
        reason,
        message.clone(),
        generation,
        Timestamp::now(),
    );
    fresh.set_observed_generation(generation);
    if let Err(e) = status::replace(api, &fresh).await {
        tracing::debug!(error = %e, "could not write failure status");
    }
    events::publish(
        &ctx.recorder,
        &fresh,
        true,
        reason.as_str(),
        "Reconcile",
        message,
    )
    .await;
}

/// Backoff per object: grows with consecutive failures, honours Retry-After, never a hot loop.
pub fn error_policy<K: Managed>(obj: Arc<K>, err: &ReconcileError, ctx: Arc<Context>) -> Action {
    let failures = ctx.record_failure(&object_key(&*obj));
    Action::requeue(retry_delay(
        err,
        failures,
        ctx.config.max_backoff,
        rand::random::<f64>(),
    ))
}

/// Sets `Ready` and `observedGeneration` on a status-bearing object (success path).
pub fn mark_ready<K: Managed>(obj: &mut K, message: impl Into<String>) {
    let generation = obj.meta().generation;
    conditions::set(
        obj.conditions_mut(),
        READY,
        true,
        Reason::Reconciled,
        message,
        generation,
        Timestamp::now(),
    );
    obj.set_observed_generation(generation);
}

/// Sets `Ready=False` with a non-error reason (waiting, pending) on the success path.
pub fn mark_not_ready<K: Managed>(obj: &mut K, reason: Reason, message: impl Into<String>) {
    let generation = obj.meta().generation;
    conditions::set(
        obj.conditions_mut(),
        READY,
        false,
        reason,
        message,
        generation,
        Timestamp::now(),
    );
    obj.set_observed_generation(generation);
}
