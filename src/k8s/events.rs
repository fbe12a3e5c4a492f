//! Kubernetes Events (best effort: a failed Event never fails a reconcile).
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// Where Events go: the client and the reporter identity.
///
/// kube's `Recorder` keeps every Event it sent for six minutes, in one unbounded map, to merge
/// repeats into a series; shared by a controller that map held 18 MB at N = 1000 (see the
/// benchmark) and was scanned on every publish. kube means a `Recorder` to be made per
/// reconcile, so one is made per publish here: our Events do not repeat (warnings go out once
/// per change), so there is no series to merge.
#[derive(Clone)]
pub struct Publisher {
    client: kube::Client,
    reporter: Reporter,
}

impl Publisher {
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        Self { client, reporter }
    }
}

/// events.k8s.io refuses an Event whose note is longer than this (bytes).
pub const NOTE_LIMIT: usize = 1024;

/// Publishes an Event about `obj`, its note cut to [`NOTE_LIMIT`]. The note must never contain a token value.
pub async fn publish<K: Resource<DynamicType = ()>>(
    publisher: &Publisher,
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
        note: Some(super::clip(&note.into(), NOTE_LIMIT)),
        action: action.to_string(),
        secondary: None,
    };
    let recorder = Recorder::new(publisher.client.clone(), publisher.reporter.clone());
    if let Err(e) = recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(error = %super::error_summary(&e), reason, "could not publish an Event");
    }
}
