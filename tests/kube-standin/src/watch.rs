//! Watch streams: newline-delimited JSON `WatchEvent`s (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR).
//!
//! A watch replays what it must (current objects, or the history after a resourceVersion), then follows the
//! store's broadcast feed. It ends at `timeoutSeconds`, on shutdown, when the client goes away, or with a 410
//! Expired ERROR event when the history was compacted or the watch fell too far behind.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use futures::Stream;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::selector::{FieldSelector, LabelSelector};
use super::store::{ApiError, EventType, Store, TypeId, WatchRecord};

/// What a watch request asked for.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    pub type_id: TypeId,
    pub version: String,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// None or 0: start with the current objects; otherwise replay the changes after it.
    pub from: Option<u64>,
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout: Duration,
    pub bookmark_interval: Duration,
}

impl WatchRequest {
    fn selects(&self, obj: &Value) -> bool {
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("");
        self.namespace.as_deref().is_none_or(|want| want == ns)
            && self.labels.matches(obj)
            && self.fields.matches(obj)
    }

    /// What this watcher sees of a change: selector watches see an object leaving the selection as DELETED
    /// and one entering it as ADDED, like the real watch cache.
    fn translate<'a>(&self, record: &'a WatchRecord) -> Option<(EventType, &'a Value)> {
        let WatchRecord::Change {
            type_id,
            event,
            object,
            previous,
            ..
        } = record
        else {
            return None;
        };
        if *type_id != self.type_id {
            return None;
        }
        let now = self.selects(object);
        match event {
            EventType::Modified => {
                let before = previous.as_ref().is_some_and(|p| self.selects(p));
                match (before, now) {
                    (true, true) => Some((EventType::Modified, object)),
                    (false, true) => Some((EventType::Added, object)),
                    (true, false) => Some((EventType::Deleted, object)),
                    (false, false) => None,
                }
            }
            other => now.then_some((*other, object)),
        }
    }
}

fn line(value: &Value) -> Bytes {
    let mut text = value.to_string();
    text.push('\n');
    Bytes::from(text)
}

/// A change as a watch event line, with the object shown in the watched version.
fn event_line(event: EventType, object: &Value, api_version: &str) -> Bytes {
    let mut object = object.clone();
    object["apiVersion"] = Value::String(api_version.to_string());
    line(&json!({"type": event.as_str(), "object": object}))
}

fn error_line(err: &ApiError) -> Bytes {
    line(&json!({"type": "ERROR", "object": err.to_status()}))
}

/// Starts a watch and returns its body stream; an expired resourceVersion yields a single 410 ERROR event.
pub fn start(
    store: Arc<Mutex<Store>>,
    req: WatchRequest,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let begun = {
        let guard = store.lock().expect("store lock");
        let rt = guard.resource_type(req.type_id).clone();
        let api_version = rt.api_version(&req.version);
        guard.start_watch(req.type_id, req.from).map(|start| {
            let replay: Vec<Bytes> = start
                .replay
                .iter()
                .filter_map(|r| req.translate(r))
                .map(|(ev, o)| event_line(ev, o, &api_version))
                .collect();
            (start.rx, start.rv, replay, rt)
        })
    };
    tokio::spawn(async move {
        let (mut feed, start_rv, replay, rt) = match begun {
            Ok(b) => b,
            Err(e) => {
                let _ = tx.send(error_line(&e)).await;
                return;
            }
        };
        let api_version = rt.api_version(&req.version);
        let bookmark = |rv: u64, initial_end: bool| {
            let mut metadata = json!({"resourceVersion": rv.to_string()});
            if initial_end {
                metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            line(
                &json!({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": api_version, "metadata": metadata}}),
            )
        };
        for l in replay {
            if tx.send(l).await.is_err() {
                return;
            }
        }
        if req.send_initial_events && req.bookmarks && req.from.is_none_or(|rv| rv == 0) {
            let _ = tx.send(bookmark(start_rv, true)).await;
        }
        let mut last_rv = start_rv;
        let deadline = tokio::time::sleep(req.timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(req.bookmark_interval);
        ticker.tick().await;
        loop {
            let out = tokio::select! {
                _ = &mut deadline => break,
                _ = shutdown.changed() => break,
                _ = tx.closed() => break,
                _ = ticker.tick(), if req.bookmarks => bookmark(last_rv, false),
                received = feed.recv() => match received {
                    Ok(record) => match &*record {
                        WatchRecord::Compacted => {
                            let _ = tx.send(error_line(&ApiError::gone("too old resource version: compacted"))).await;
                            break;
                        }
                        WatchRecord::Change { rv, .. } if *rv <= start_rv => continue,
                        WatchRecord::Change { rv, .. } => {
                            last_rv = *rv;
                            match req.translate(&record) {
                                Some((ev, o)) => event_line(ev, o, &api_version),
                                None => continue,
                            }
                        }
                    },
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(error_line(&ApiError::gone("watch fell behind"))).await;
                        break;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            };
            if tx.send(out).await.is_err() {
                break;
            }
        }
    });
    futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|b| (Ok(b), rx)) },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(labels: &str) -> WatchRequest {
        WatchRequest {
            type_id: 0,
            version: "v1".into(),
            namespace: Some("ns".into()),
            labels: LabelSelector::parse(labels).unwrap(),
            fields: FieldSelector::default(),
            from: None,
            bookmarks: false,
            send_initial_events: false,
            timeout: Duration::from_secs(1),
            bookmark_interval: Duration::from_secs(1),
        }
    }

    fn modified(before: &str, after: &str) -> WatchRecord {
        let obj = |app: &str| json!({"metadata": {"name": "a", "namespace": "ns", "labels": {"app": app}}});
        WatchRecord::Change {
            rv: 1,
            type_id: 0,
            event: EventType::Modified,
            object: obj(after),
            previous: Some(obj(before)),
        }
    }

    #[test]
    fn selector_watches_see_objects_enter_and_leave() {
        let req = request("app=web");
        let kind = |r: &WatchRecord| req.translate(r).map(|(e, _)| e);
        assert_eq!(kind(&modified("web", "web")), Some(EventType::Modified));
        assert_eq!(kind(&modified("db", "web")), Some(EventType::Added));
        assert_eq!(kind(&modified("web", "db")), Some(EventType::Deleted));
        assert_eq!(kind(&modified("db", "db")), None);
        let other_type = WatchRecord::Change {
            rv: 1,
            type_id: 1,
            event: EventType::Added,
            object: json!({}),
            previous: None,
        };
        assert_eq!(kind(&other_type), None);
        let other_ns =
            json!({"metadata": {"name": "a", "namespace": "x", "labels": {"app": "web"}}});
        assert!(!req.selects(&other_ns));
    }
}
