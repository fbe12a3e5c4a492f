//! Kubernetes Events (best effort: a failed Event never fails a reconcile).
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};

/// Publishes an Event about `obj`. The note must never contain a token value.
pub async fn publish<K: Resource<DynamicType = ()>>(
    recorder: &Recorder,
    obj: &K,
    warning: bool,
    reason: &str,
    action: &str,
    note: impl Into<String>,
) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_string(),
        note: Some(note.into()),
        action: action.to_string(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::debug!(error = %e, reason, "could not publish event");
    }
}
