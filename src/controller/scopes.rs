//! Where the controllers look: every namespace (one watch per kind), or a list of namespaces
//! (one watch per namespace and kind, merged). A merged stream feeds one reflector store, so with
//! `--namespaces` there is still one cache, one Context, one drift budget and one snapshot.
//!
//! Merging is not interleaving: a store treats `Init .. InitDone` as "replace everything", so a
//! relist of one namespace would wipe the others. [`Merge`] turns each namespace's relist into
//! `Apply` for what it listed and `Delete` for what vanished from that namespace, and emits one
//! `Init .. InitDone` when every namespace has listed once (the store is ready then).
use std::collections::HashMap;
use std::fmt::Debug;

use futures::stream::{BoxStream, SelectAll};
use futures::{StreamExt, TryStreamExt};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

type Events<K> = BoxStream<'static, watcher::Result<watcher::Event<K>>>;

/// The events of `K` in `namespaces` (empty: all namespaces), as one watcher's.
pub fn watch<K>(client: &kube::Client, namespaces: &[String], config: watcher::Config) -> Events<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    let one = |api: Api<K>| {
        watcher(api, config.clone())
            .default_backoff()
            .modify(trim::<K>)
            .boxed()
    };
    match namespaces {
        [] => one(Api::all(client.clone())),
        [ns] => one(Api::namespaced(client.clone(), ns)),
        many => merged(
            many.iter()
                .map(|ns| one(Api::namespaced(client.clone(), ns)))
                .collect(),
        ),
    }
}

/// kubectl's copy of the whole object as last applied (client-side apply).
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What the caches keep of an object: all but the API server's and kubectl's bookkeeping, which
/// the operator never reads and which on a real cluster is often larger than the rest of the
/// object (managedFields: an entry per field manager; `kubectl apply`'s last-applied annotation: a
/// second copy of the object). Dropping them never reaches the server: the operator's metadata
/// writes are JSON patches naming their paths (the annotation map is kept, possibly empty, so a
/// patch adds a key to it rather than replacing it), and its status writes change only `status`
/// (a request without managedFields keeps the stored ones).
pub fn trim<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// The metadata of objects of `K` as they change in `namespaces`, without a store: the Secrets the
/// tokens own are watched this way, so token values never sit in the operator's memory (a token's
/// Secret is read by name in its own reconcile, when needed). `on_delete` hears of each deletion
/// before the object is passed on.
pub fn touched<K>(
    client: &kube::Client,
    namespaces: &[String],
    config: watcher::Config,
    on_delete: impl Fn(&kube::core::PartialObjectMeta<K>) + Clone + Send + Sync + 'static,
) -> BoxStream<'static, watcher::Result<kube::core::PartialObjectMeta<K>>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    // An Api of PartialObjectMeta makes metadata-only list and watch requests.
    let one = |api: Api<kube::core::PartialObjectMeta<K>>| {
        let on_delete = on_delete.clone();
        watcher(api, config.clone())
            .default_backoff()
            .inspect_ok(move |event| {
                if let watcher::Event::Delete(object) = event {
                    on_delete(object);
                }
            })
            .touched_objects()
            .boxed()
    };
    if namespaces.is_empty() {
        return one(Api::all(client.clone()));
    }
    let all: SelectAll<_> = namespaces
        .iter()
        .map(|ns| one(Api::namespaced(client.clone(), ns)))
        .collect();
    all.boxed()
}

/// Several watchers' events as one watcher's (see the module doc).
pub fn merged<K>(sources: Vec<Events<K>>) -> Events<K>
where
    K: Resource + Clone + Send + 'static,
{
    let mut merge = Merge::new(sources.len());
    let all: SelectAll<_> = sources
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.map(move |e| (i, e)).boxed())
        .collect();
    all.flat_map(move |(i, event)| {
        let out: Vec<watcher::Result<watcher::Event<K>>> = match event {
            Ok(e) => merge.on(i, e).into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(out)
    })
    .boxed()
}

/// The pure state machine behind [`merged`].
pub struct Merge<K> {
    /// Per source: the objects the store holds from it (by name).
    known: Vec<HashMap<String, K>>,
    /// Per source: a relist in progress.
    relisting: Vec<Option<Vec<K>>>,
    /// Per source: listed at least once.
    listed: Vec<bool>,
    /// The one `Init .. InitDone` has gone out.
    started: bool,
}

impl<K: Resource + Clone> Merge<K> {
    pub fn new(sources: usize) -> Self {
        Self {
            known: (0..sources).map(|_| HashMap::new()).collect(),
            relisting: vec![None; sources],
            listed: vec![false; sources],
            started: false,
        }
    }

    /// What the store should see after `event` from source `i`.
    pub fn on(&mut self, i: usize, event: watcher::Event<K>) -> Vec<watcher::Event<K>> {
        use watcher::Event::*;
        match event {
            Init => {
                self.relisting[i] = Some(Vec::new());
                vec![]
            }
            InitApply(obj) => {
                self.relisting[i].get_or_insert_with(Vec::new).push(obj);
                vec![]
            }
            InitDone => {
                let listed = self.relisting[i].take().unwrap_or_default();
                let fresh: HashMap<String, K> =
                    listed.into_iter().map(|o| (o.name_any(), o)).collect();
                let old = std::mem::replace(&mut self.known[i], fresh);
                self.listed[i] = true;
                if !self.started {
                    if self.listed.iter().all(|l| *l) {
                        self.started = true;
                        let mut out = vec![Init];
                        out.extend(
                            self.known
                                .iter()
                                .flat_map(|m| m.values().cloned().map(InitApply)),
                        );
                        out.push(InitDone);
                        return out;
                    }
                    return vec![];
                }
                let mut out: Vec<_> = old
                    .into_iter()
                    .filter(|(name, _)| !self.known[i].contains_key(name))
                    .map(|(_, o)| Delete(o))
                    .collect();
                out.extend(self.known[i].values().cloned().map(Apply));
                out
            }
            Apply(obj) => {
                self.known[i].insert(obj.name_any(), obj.clone());
                if self.started {
                    vec![Apply(obj)]
                } else {
                    vec![]
                }
            }
            Delete(obj) => {
                self.known[i].remove(&obj.name_any());
                if self.started {
                    vec![Delete(obj)]
                } else {
                    vec![]
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;
    use watcher::Event::{self, *};

    fn cm(ns: &str, name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn names(events: &[Event<ConfigMap>]) -> Vec<String> {
        let mut v: Vec<String> = events
            .iter()
            .map(|e| match e {
                Init => "init".into(),
                InitDone => "done".into(),
                InitApply(o) => format!("init-apply {}", o.name_any()),
                Apply(o) => format!("apply {}", o.name_any()),
                Delete(o) => format!("delete {}", o.name_any()),
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_cache_keeps_neither_managed_fields_nor_the_last_applied_copy() {
        let mut obj = cm("a", "x");
        obj.metadata.managed_fields = Some(vec![Default::default()]);
        obj.metadata.annotations = Some(
            [
                (
                    LAST_APPLIED.to_string(),
                    "{\"kind\":\"ConfigMap\"}".to_string(),
                ),
                ("team".to_string(), "platform".to_string()),
            ]
            .into(),
        );
        trim(&mut obj);
        assert_eq!(obj.metadata.managed_fields, None);
        assert_eq!(
            obj.metadata.annotations,
            Some([("team".to_string(), "platform".to_string())].into())
        );
        // Emptied, not removed: a JSON patch adding the write-ahead marker then adds one key
        // instead of replacing the map (which on the server still holds the last-applied copy).
        let mut only = cm("a", "y");
        only.metadata.annotations = Some([(LAST_APPLIED.to_string(), "{}".to_string())].into());
        trim(&mut only);
        assert_eq!(only.metadata.annotations, Some(Default::default()));
    }

    #[test]
    fn one_initial_list_when_every_namespace_has_listed() {
        let mut m = Merge::new(2);
        assert!(m.on(0, Init).is_empty());
        assert!(m.on(0, InitApply(cm("a", "x"))).is_empty());
        assert!(m.on(0, InitDone).is_empty(), "b has not listed yet");
        assert!(
            m.on(0, Apply(cm("a", "y"))).is_empty(),
            "held until the store starts"
        );
        assert!(m.on(1, Init).is_empty());
        assert!(m.on(1, InitApply(cm("b", "z"))).is_empty());
        let out = m.on(1, InitDone);
        assert_eq!(
            names(&out),
            [
                "done",
                "init",
                "init-apply x",
                "init-apply y",
                "init-apply z"
            ]
        );
        assert_eq!(names(&m.on(1, Apply(cm("b", "w")))), ["apply w"]);
    }

    #[test]
    fn a_relist_of_one_namespace_leaves_the_others_alone() {
        let mut m = Merge::new(2);
        for (i, ns) in [(0, "a"), (1, "b")] {
            m.on(i, Init);
            m.on(i, InitApply(cm(ns, &format!("{ns}1"))));
            m.on(i, InitApply(cm(ns, &format!("{ns}2"))));
            m.on(i, InitDone);
        }
        // a's watch expired; while it was down a2 was deleted and a3 created.
        m.on(0, Init);
        m.on(0, InitApply(cm("a", "a1")));
        m.on(0, InitApply(cm("a", "a3")));
        let out = m.on(0, InitDone);
        assert_eq!(names(&out), ["apply a1", "apply a3", "delete a2"]);
        assert_eq!(names(&m.on(1, Delete(cm("b", "b1")))), ["delete b1"]);
    }
}
