//! The shape every controller shares: finalizer, apply/cleanup, metrics, a `Ready=False` status
//! and a Warning Event on failure, and the error backoff.
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::context::{CacheCopy, Context};
use super::error::{ReconcileError, retry_delay};
use crate::k8s::conditions::{self, READY, Reason};
use crate::k8s::events;

/// The finalizer every kind carries while it owns something in Konnect.
pub use crate::api::common::FINALIZER;

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
    /// The kind adds the finalizer itself, with [`add_finalizer`], right before its first change
    /// in Konnect, together with its write-ahead marker (one write where there would be two).
    const OWN_FINALIZER: bool = false;
}

/// Where a kind that adds its own finalizer records its first Konnect create before making it,
/// in the finalizer's patch (see [`Managed::OWN_FINALIZER`]). Its meaning belongs to the kind.
pub const WRITE_AHEAD_ANNOTATION: &str = "konnect-sa.dev/pending-create";

/// Implements [`Managed`] for a kind whose status has `conditions` and `observed_generation`.
#[macro_export]
macro_rules! impl_managed {
    ($kind:ty, $name:literal) => {
        $crate::impl_managed!($kind, $name, {});
    };
    ($kind:ty, $name:literal, own_finalizer) => {
        $crate::impl_managed!($kind, $name, {
            const OWN_FINALIZER: bool = true;
        });
    };
    ($kind:ty, $name:literal, { $($extra:tt)* }) => {
        impl $crate::controller::reconciler::Managed for $kind {
            const KIND: &'static str = $name;
            fn conditions(&self) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
                self.status
                    .as_ref()
                    .map_or(&[], |s| s.conditions.as_slice())
            }
            fn conditions_mut(
                &mut self,
            ) -> &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
                &mut self.status.get_or_insert_with(Default::default).conditions
            }
            fn set_observed_generation(&mut self, generation: Option<i64>) {
                self.status
                    .get_or_insert_with(Default::default)
                    .observed_generation = generation;
            }
            $($extra)*
        }
    };
}

/// Writes `working`'s status when it differs from `original`'s (no write, no event, when nothing
/// changed), then waits for the next resync.
pub async fn finish<K: Managed>(
    ctx: &Context,
    original: &K,
    working: &K,
) -> Result<Action, ReconcileError> {
    let status_of = |o: &K| serde_json::to_value(o).ok().map(|v| v["status"].clone());
    if status_of(working) != status_of(original) {
        let api: Api<K> =
            Api::namespaced(ctx.kube.clone(), &original.namespace().unwrap_or_default());
        ctx.write_status(&api, working)
            .await
            .map_err(ReconcileError::kube("writing status"))?;
    }
    Ok(Action::requeue(ctx.resync_with_jitter()))
}

pub(crate) fn object_key<K: Managed>(obj: &K) -> String {
    key_of::<K>(&obj.namespace().unwrap_or_default(), &obj.name_any())
}

/// [`object_key`] of the object of kind `K` named `name` in `namespace`.
pub(crate) fn key_of<K: Managed>(namespace: &str, name: &str) -> String {
    format!("{}/{namespace}/{name}", K::KIND)
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
    let body = async move {
        // After a failure, a trigger that changes nothing the user controls (our own status write,
        // a related object's event) waits for the backoff: a failing step never runs in a hot loop.
        if let Some(left) = ctx.backoffs.held_back(
            &object_key(&*obj),
            fingerprint(&*obj),
            ctx.clock.instant().into_std(),
        ) {
            tracing::trace!(?left, "held back after a failure");
            ctx.metrics.held_back(K::KIND);
            return Ok(Action::requeue(left));
        }
        ctx.backoffs.begin(&object_key(&*obj));
        let started = Instant::now();
        let ns = obj.namespace().unwrap_or_default();
        let api: Api<K> = Api::namespaced(ctx.kube.clone(), &ns);
        // The cache can lag our own writes (a trigger from an older event runs after we wrote): no
        // decision is made on a stale status. A copy older than our last write is skipped (the
        // watch event of that write wakes the object again, with no read); one that cannot be
        // ordered is read afresh.
        let obj = match ctx.cache_copy(&*obj) {
            CacheCopy::Latest => obj,
            CacheCopy::Older => {
                tracing::trace!("the cache lags our last write; its watch event wakes us");
                return Ok(Action::await_change());
            }
            CacheCopy::Unknown => match api.get_opt(&obj.name_any()).await {
                Ok(Some(fresh)) => {
                    ctx.note_version(&fresh);
                    Arc::new(fresh)
                }
                Ok(None) => return Ok(Action::await_change()),
                Err(e) => return Err(ReconcileError::kube("reading the object")(e)),
            },
        };
        let mut obj = obj;
        let result = with_finalizer(&api, &mut obj, &ctx, apply, cleanup).await;
        // Waiting for an account is a state, not an error.
        let category = result
            .as_ref()
            .err()
            .filter(|e| !e.is_waiting())
            .map(|e| e.category());
        ctx.metrics
            .observe_reconcile(K::KIND, started.elapsed(), category);
        match &result {
            Ok(_) => ctx.backoffs.record_success(&object_key(&*obj)),
            Err(e) if e.is_write_conflict() => {
                tracing::debug!(error = %e, "stale object; retrying with fresh data")
            }
            Err(e) if e.is_waiting() => {
                tracing::debug!(reason = %e.reason(), "waiting for the SystemAccount");
                report_failure(&api, &obj, e, &ctx).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, reason = %e.reason(), "reconcile failed");
                report_failure(&api, &obj, e, &ctx).await;
            }
        }
        result
    };
    tracing::Instrument::instrument(body, span).await
}

/// The finalizer is added before the first apply (in the same reconcile: no extra round trip), or
/// by a kind that adds its own ([`Managed::OWN_FINALIZER`]) before its first Konnect change, and
/// removed only after cleanup succeeded. JSON patches with a `test` never touch someone else's
/// finalizer, and fail (to be retried) if the list changed meanwhile.
async fn with_finalizer<K, A, AF, C, CF>(
    api: &Api<K>,
    current: &mut Arc<K>,
    ctx: &Arc<Context>,
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
    let obj = current.clone();
    let name = obj.name_any();
    let finalizers = obj.finalizers().to_vec();
    let index = finalizers.iter().position(|f| f == FINALIZER);
    if obj.meta().deletion_timestamp.is_some() {
        let Some(i) = index else {
            return Ok(Action::await_change());
        };
        let action = cleanup(obj.clone(), ctx.clone()).await?;
        let path = format!("/metadata/finalizers/{i}");
        let patch = serde_json::json!([
            {"op": "test", "path": path, "value": FINALIZER},
            {"op": "remove", "path": path},
        ]);
        let patch: json_patch::Patch = serde_json::from_value(patch)
            .map_err(|e| ReconcileError::InvalidSpec(e.to_string()))?;
        api.patch(&name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
            .map_err(finalizer_error)?;
        let verified_key = format!("{}/{}", K::KIND, obj.uid().unwrap_or_default());
        ctx.forget_object(&*obj, &verified_key);
        ctx.backoffs.record_success(&object_key(&*obj));
        return Ok(action);
    }
    let obj = match index {
        Some(_) => obj,
        // Added by the kind itself, with its write-ahead marker, before its first Konnect change.
        None if K::OWN_FINALIZER => obj,
        None => {
            let updated = add_finalizer(api, &obj, ctx, None).await?;
            // The caller reports a failure of `apply` on this version, not the one before.
            *current = Arc::new(updated);
            current.clone()
        }
    };
    apply(obj, ctx.clone()).await
}

/// Adds the finalizer with a JSON patch whose `test` fails (retried like a 409) if the list
/// changed meanwhile, and with it `marker` as [`WRITE_AHEAD_ANNOTATION`]: one write for both.
pub async fn add_finalizer<K: Managed>(
    api: &Api<K>,
    obj: &K,
    ctx: &Context,
    marker: Option<String>,
) -> Result<K, ReconcileError> {
    let finalizers = obj.finalizers().to_vec();
    let mut patch = if obj.meta().finalizers.is_none() {
        serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ])
    } else {
        serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ])
    };
    if let (Some(marker), Some(ops)) = (marker, patch.as_array_mut()) {
        ops.push(if obj.meta().annotations.is_none() {
            serde_json::json!({"op": "add", "path": "/metadata/annotations",
                "value": {WRITE_AHEAD_ANNOTATION: marker}})
        } else {
            let key = WRITE_AHEAD_ANNOTATION.replace('~', "~0").replace('/', "~1");
            serde_json::json!({"op": "add", "path": format!("/metadata/annotations/{key}"),
                "value": marker})
        });
    }
    let patch: json_patch::Patch =
        serde_json::from_value(patch).map_err(|e| ReconcileError::InvalidSpec(e.to_string()))?;
    let updated = api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
        .map_err(finalizer_error)?;
    ctx.note_version(&updated);
    Ok(updated)
}

/// The JSON patch's `test` failing (422) means the list changed under us: a stale copy, retried
/// at once with fresh data like a 409, not a refusal.
fn finalizer_error(source: kube::Error) -> ReconcileError {
    ReconcileError::Kube {
        context: "updating finalizers".into(),
        source: match source {
            kube::Error::Api(s) if s.code == 422 => kube::Error::Api(Box::new(
                kube::core::Status::failure(&s.message, "Conflict").with_code(409),
            )),
            other => other,
        },
    }
}

/// Writes `Ready=False` with the error's reason and message, and a Warning Event when either
/// changed (so a persistent failure does not flood Events). Waiting for the SystemAccount is a
/// state, not a failure: the condition says so, no Event (a GitOps sync that applies an account
/// and its dependents together would otherwise warn about every dependent).
async fn report_failure<K: Managed>(api: &Api<K>, obj: &K, err: &ReconcileError, ctx: &Context) {
    // The watch events of our own writes wake the object again and it fails the same way: when
    // the object in hand (the latest version we know) already says so, there is nothing to read.
    if shows_failure(obj, err) {
        return;
    }
    // A new object whose account is being created, or not seen yet (applied in the same sync):
    // the account's Ready event wakes it in moments, and a status saying so would be one more
    // write per object of a bulk apply. A reference that stays unresolved is reported after
    // the grace (see `error_policy`).
    if quiet_wait(obj, err).is_some() {
        return;
    }
    // The object in hand is the newest we know of unless this reconcile wrote its status before
    // failing: only then is it read again (the write is resourceVersion-guarded either way).
    let mut fresh = if ctx.is_latest_known(obj) {
        obj.clone()
    } else {
        match api.get_status(&obj.name_any()).await {
            Ok(fresh) => fresh,
            Err(_) => return,
        }
    };
    if shows_failure(&fresh, err) {
        return;
    }
    let (reason, message) = failure_text(&fresh, err);
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
    if let Err(e) = ctx.write_status(api, &fresh).await {
        tracing::debug!(error = %crate::k8s::error_summary(&e), "could not write failure status");
    }
    if err.is_waiting() {
        return;
    }
    events::publish(
        &ctx.events,
        &fresh,
        true,
        reason.as_str(),
        "Reconcile",
        message,
    )
    .await;
}

/// The Ready reason and message for `err` on `obj` (a failing cleanup blocks deletion).
fn failure_text<K: Managed>(obj: &K, err: &ReconcileError) -> (Reason, String) {
    if obj.meta().deletion_timestamp.is_some() {
        (
            Reason::DeletionBlocked,
            format!(
                "cleanup in Konnect failed, the finalizer stays until it succeeds: {}",
                err.message()
            ),
        )
    } else {
        (err.reason(), err.message())
    }
}

/// Whether `obj`'s Ready condition already reports `err` for its current generation.
fn shows_failure<K: Managed>(obj: &K, err: &ReconcileError) -> bool {
    let (reason, message) = failure_text(obj, err);
    conditions::get(obj.conditions(), READY).is_some_and(|c| {
        c.status == "False"
            && c.reason == reason.as_str()
            && c.message == message
            && c.observed_generation == obj.meta().generation
    })
}

/// How long a new dependent waits quietly for an account applied in the same sync before it
/// reports it as missing (a GitOps sync applies them together; the account appears in moments).
const NEW_OBJECT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Some(time left of the grace; zero: no end) when waiting for the account writes no status: the
/// object has never reported Ready either way, and its account is being created, or the object
/// is younger than [`NEW_OBJECT_GRACE`].
fn quiet_wait<K: Managed>(obj: &K, err: &ReconcileError) -> Option<std::time::Duration> {
    if !err.is_waiting() || conditions::get(obj.conditions(), READY).is_some() {
        return None;
    }
    if err.is_brief_wait() {
        return Some(std::time::Duration::ZERO);
    }
    let created = obj.meta().creation_timestamp.as_ref()?.0;
    let age = Timestamp::now().duration_since(created).unsigned_abs();
    NEW_OBJECT_GRACE
        .checked_sub(age)
        .filter(|left| !left.is_zero())
}

/// What the user controls of an object and the operator never writes: its spec (through the
/// generation), annotations (a rotate request) and deletion. A change of it ends a backoff at once.
pub(crate) fn fingerprint<K: Managed>(obj: &K) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let meta = obj.meta();
    meta.uid.hash(&mut h);
    meta.generation.hash(&mut h);
    // Our own write-ahead marker is not the user's.
    meta.annotations
        .iter()
        .flatten()
        .filter(|(k, _)| *k != WRITE_AHEAD_ANNOTATION)
        .for_each(|kv| kv.hash(&mut h));
    meta.deletion_timestamp.is_some().hash(&mut h);
    h.finish()
}

/// Backoff per object: grows with consecutive failures, honours Retry-After, never a hot loop.
/// Until it has passed, triggers that change nothing the user controls are held back (see
/// [`Backoffs::held_back`](super::backoff::Backoffs::held_back)); a stale copy (409) is retried at once, and waiting for the account
/// is woken by the account's watch.
pub fn error_policy<K: Managed>(obj: Arc<K>, err: &ReconcileError, ctx: Arc<Context>) -> Action {
    if let Some(left) = quiet_wait(&*obj, err).filter(|left| !left.is_zero()) {
        // Looked at again when the grace ends: then a missing account is reported.
        return Action::requeue(left + std::time::Duration::from_millis(100));
    }
    let hold = !(err.is_waiting() || err.is_write_conflict());
    let delay = ctx.backoffs.record_failure(
        &object_key(&*obj),
        fingerprint(&*obj),
        hold,
        ctx.clock.instant().into_std(),
        |failures| retry_delay(err, failures, ctx.config.max_backoff, rand::random::<f64>()),
    );
    Action::requeue(delay)
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
