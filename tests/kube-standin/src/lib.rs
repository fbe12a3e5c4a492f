//! A Kubernetes API stand-in for controller integration tests: real HTTP on 127.0.0.1 (random port), real
//! watch streams, and the write semantics controllers depend on.
//!
//! ```ignore
//! let _ = rustls::crypto::ring::default_provider().install_default();
//! let kube = FakeKube::start(Path::new(env!("CARGO_MANIFEST_DIR")).join("crds").as_path()).await;
//! let client = kube.client();                      // or kube.write_kubeconfig(path) for the real binary
//! // ... run controllers with `client` ...
//! assert!(kube.get("", "v1", "secrets", "ns", "name").is_some());
//! kube.shutdown().await;
//! ```
//!
//! Served: the CRDs of a directory; core v1 namespaces, secrets, configmaps, events; events.k8s.io/v1 events;
//! coordination.k8s.io/v1 leases; apps/v1 deployments, statefulsets, daemonsets. Verbs: get, list (label and
//! field selectors, limit/continue), watch, create, update (PUT), patch (merge, JSON, strategic, apply),
//! delete, deletecollection, and the `/status` subresource; minimal discovery (`/api`, `/apis`, `/version`).
//!
//! Semantics kept (see `store.rs`): one global resourceVersion bumped by every write; 409 Conflict on a stale
//! resourceVersion (PUT, or a patch carrying one); no-op writes change nothing; uid, creationTimestamp,
//! generation (spec changes only when there is a status subresource; also when deletion starts); namespace
//! from the URL; `/status` changes only `.status` and the main resource never does; finalizers hold a deletion
//! with deletionTimestamp (new finalizers then refused with 422); ownerReference garbage collection
//! (asynchronous, 50-100 ms after the change, honouring propagationPolicy Background, Orphan and Foreground
//! with blockOwnerDeletion); namespaces must exist (404) and a terminating one refuses new objects (403), is
//! emptied, then removed; empty or null metadata lists and maps (and nulls in built-in kinds) are not stored;
//! a PUT naming another uid is refused (409); CRD schema pruning, defaults and validation (string `format`s
//! included), then its CEL rules
//! (kube-cel; ratcheting on an unchanged `spec`, see `schema.rs`; `without_cel_rules` admits what an older
//! CRD would);
//! Secret `stringData` folded into `data`, data keys and base64 validated (`fidelity.rs`); watch from a
//! resourceVersion with a bounded history, 410 Expired when it is too old or after `compact()`, bookmarks,
//! `sendInitialEvents`, `timeoutSeconds`; paged lists are one snapshot at the first page's resourceVersion.
//! Each request records the bearer token it carried (`RequestRecord::user`, see `client_as`).
//!
//! Approximations: lists serve the latest state (resourceVersion/resourceVersionMatch accepted and ignored);
//! server-side apply has no managedFields and no conflicts (see `patch.rs`); strategic merge patch merges only
//! `metadata.finalizers` lists; no admission, RBAC, defaults of built-in kinds (except Secret
//! `type` and apps/v1 workloads' defaults and validation, see `builtin.rs`), or conversion between CRD versions; core and events.k8s.io Events are one store served in both shapes (`events.rs`);
//! Metadata-only requests (`Accept: ...;as=PartialObjectMetadata...`) get PartialObjectMetadata objects, lists
//! and watch events, as from a real server.
//! `dryRun` runs the checks of create and update (PUT) and stores nothing, and is refused with 400 elsewhere.
//! Label and annotation syntax and size, and events.k8s.io Event `type`, `eventTime` and note length (1024),
//! are refused with 422 like the real server does.
//!
//! Cost: free unless `set_cost` turns it on (the benchmark does): latency per request, writes committed one at
//! a time at a set rate, API Priority and Fairness seats and queue with 429 + Retry-After (`cost.rs`).

pub mod builtin;
pub mod cost;
pub mod crd;
pub mod events;
pub mod fidelity;
pub mod http;
pub mod patch;
pub mod schema;
pub mod selector;
pub mod store;
pub mod types;
pub mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub use self::crd::load_crds;
use self::http::Shared;
pub use self::http::{Fault, RequestRecord};
pub use self::patch::PatchKind;
use self::selector::{FieldSelector, LabelSelector};
pub use self::store::{ApiError, DeleteOutcome, Preconditions, ResourceType, Store, Target};

/// The running stand-in. Dropping it without `shutdown()` leaves the server task running until the runtime ends.
pub struct FakeKube {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl FakeKube {
    /// Starts the stand-in with the built-in kinds plus the CRDs in `crd_dir` (which may be empty or absent).
    /// Panics if a CRD file cannot be parsed: a broken fixture should fail the test loudly.
    pub async fn start(crd_dir: &Path) -> FakeKube {
        let crds = load_crds(crd_dir)
            .unwrap_or_else(|e| panic!("loading CRDs from {}: {e}", crd_dir.display()));
        Self::start_with_types(crds).await
    }

    /// Starts the stand-in with the built-in kinds plus the CRDs in each of `dirs`.
    pub async fn start_with_crd_dirs(dirs: &[&Path]) -> FakeKube {
        let mut types = Vec::new();
        for dir in dirs {
            types.extend(
                load_crds(dir)
                    .unwrap_or_else(|e| panic!("loading CRDs from {}: {e}", dir.display())),
            );
        }
        Self::start_with_types(types).await
    }

    /// Starts the stand-in with the built-in kinds plus `extra` types.
    pub async fn start_with_types(extra: Vec<ResourceType>) -> FakeKube {
        let mut store = Store::new(store::builtin_types());
        for t in extra {
            store.add_type(t);
        }
        // What every cluster has; other namespaces are created by the test (or its harness writes).
        for ns in ["default", "kube-system", "kube-public"] {
            store.ensure_namespace(ns);
        }
        store.deferred_gc = true;
        let (shutdown, _) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared {
            store: Arc::new(Mutex::new(store)),
            requests: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            bookmark_interval_ms: AtomicU64::new(1_000),
            max_watch_ms: AtomicU64::new(3_600_000),
            shutdown,
            cost: Mutex::new(cost::Cost::new(cost::CostModel::default())),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let app = http::router(shared.clone());
        let mut stop = shared.shutdown.subscribe();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await;
        });
        tokio::spawn(garbage_collector(
            Arc::downgrade(&shared.store),
            shared.shutdown.subscribe(),
        ));
        FakeKube {
            addr,
            shared,
            server: Some(server),
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client without auth pointing at the stand-in (install the rustls ring provider first).
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().expect("valid URL"));
        kube::Client::try_from(config).expect("kube client")
    }

    /// A kube client that sends `user` as its bearer token; the stand-in records it with each request
    /// (`RequestRecord::user`), so a test can tell the operator's requests from its own.
    pub fn client_as(&self, user: &str) -> kube::Client {
        let mut config = kube::Config::new(self.url().parse().expect("valid URL"));
        config.auth_info.token = Some(user.to_string().into());
        kube::Client::try_from(config).expect("kube client")
    }

    /// Writes a kubeconfig that points at the stand-in (default namespace `default`), for the real binary.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        self.write_kubeconfig_as(path, None)
    }

    /// `write_kubeconfig` for a client that sends `user` as its bearer token (see `client_as`).
    pub fn write_kubeconfig_as(&self, path: &Path, user: Option<&str>) -> std::io::Result<()> {
        let user = user.map_or("{}".to_string(), |u| format!("{{token: {u}}}"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {}\n\
             contexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin\n    namespace: default\n\
             current-context: standin\nusers:\n- name: standin\n  user: {}\n",
            self.url(),
            user
        );
        std::fs::write(path, text)
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.shared.store.lock().expect("store lock")
    }

    fn type_of(store: &Store, group: &str, version: &str, plural: &str) -> store::TypeId {
        store
            .type_id(group, version, plural)
            .unwrap_or_else(|| panic!("the stand-in does not serve {group}/{version} {plural}"))
    }

    /// One object as the API would return it, or None. `ns` is ignored for cluster-scoped kinds.
    pub fn get(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        ns: &str,
        name: &str,
    ) -> Option<Value> {
        let store = self.store();
        let t = Self::type_of(&store, group, version, plural);
        store
            .get(t, ns, name)
            .ok()
            .map(|o| store.render_as(t, group, version, &o))
    }

    /// Objects of a kind in `ns` (None: all namespaces), sorted by namespace and name.
    pub fn list(&self, group: &str, version: &str, plural: &str, ns: Option<&str>) -> Vec<Value> {
        self.list_selected(group, version, plural, ns, "")
    }

    /// The change feed from now on: every create, update and delete, with the object.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<Arc<store::WatchRecord>> {
        self.store().subscribe()
    }

    /// How many objects `pred` accepts (nothing is copied).
    pub fn count(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        ns: Option<&str>,
        pred: impl Fn(&Value) -> bool,
    ) -> usize {
        let store = self.store();
        let t = Self::type_of(&store, group, version, plural);
        store.count(t, ns, pred)
    }

    /// Like `list`, filtered by a label selector (`a=b,c!=d,e,!f`). Panics on a malformed selector.
    pub fn list_selected(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        ns: Option<&str>,
        label_selector: &str,
    ) -> Vec<Value> {
        let labels = LabelSelector::parse(label_selector).expect("valid label selector");
        let store = self.store();
        let t = Self::type_of(&store, group, version, plural);
        store
            .list(t, ns, &labels, &FieldSelector::default())
            .iter()
            .map(|o| store.render_as(t, group, version, o))
            .collect()
    }

    /// All Events, written through core v1 or events.k8s.io/v1 (one resource, as in a real cluster),
    /// in the events.k8s.io shape the operator writes (`note`, `regarding`).
    pub fn events(&self) -> Vec<Value> {
        self.list(events::GROUP, "v1", "events", None)
    }

    /// Gives a custom resource another schema, as applying an older or newer CRD does: stored
    /// objects stay as they are, and writes are checked with it (CEL rules ratchet on an unchanged
    /// `spec`).
    pub fn replace_schema(&self, group: &str, version: &str, plural: &str, schema: Value) {
        let mut store = self.store();
        let t = Self::type_of(&store, group, version, plural);
        store.replace_schema(t, schema);
    }

    /// A custom resource's schema (`openAPIV3Schema`).
    pub fn schema(&self, group: &str, version: &str, plural: &str) -> Option<Value> {
        let store = self.store();
        let t = Self::type_of(&store, group, version, plural);
        store.resource_type(t).schema.clone()
    }

    /// Runs `f` with the custom resource's CEL rules removed, as an older CRD without them would
    /// admit what `f` writes; the rules are back afterwards (and ratchet on those objects).
    pub fn without_cel_rules<T>(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        f: impl FnOnce() -> T,
    ) -> T {
        let with_rules = self
            .schema(group, version, plural)
            .expect("a custom resource");
        self.replace_schema(group, version, plural, schema::without_rules(&with_rules));
        let out = f();
        self.replace_schema(group, version, plural, with_rules);
        out
    }

    /// Creates an object directly (same path as POST, watches see it). `ns` comes from the object if None.
    pub fn create_raw(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        obj: Value,
    ) -> Result<Value, ApiError> {
        let mut store = self.store();
        let t = Self::type_of(&store, group, version, plural);
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(String::from);
        if store.resource_type(t).namespaced {
            store.ensure_namespace(ns.as_deref().unwrap_or("default"));
        }
        store
            .create(t, ns.as_deref(), obj)
            .map(|o| store.render(t, version, &o))
    }

    /// Changes an object like `kubectl edit` would (same path as an unconditional PUT, watches see it).
    /// Changes to `.status` are ignored for kinds with a status subresource; use `modify_status_raw`.
    pub fn modify_raw(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        ns: &str,
        name: &str,
        edit: impl FnOnce(&mut Value),
    ) -> Result<Value, ApiError> {
        self.modify(group, version, plural, ns, name, Target::Main, edit)
    }

    /// Changes an object's `.status` (same path as PUT on /status).
    pub fn modify_status_raw(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        ns: &str,
        name: &str,
        edit: impl FnOnce(&mut Value),
    ) -> Result<Value, ApiError> {
        self.modify(group, version, plural, ns, name, Target::Status, edit)
    }

    #[allow(clippy::too_many_arguments)]
    fn modify(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        ns: &str,
        name: &str,
        target: Target,
        edit: impl FnOnce(&mut Value),
    ) -> Result<Value, ApiError> {
        let mut store = self.store();
        let t = Self::type_of(&store, group, version, plural);
        let mut obj = store.get(t, ns, name)?;
        edit(&mut obj);
        // Keeps the current resourceVersion, so the write is unconditional.
        let current = store.get(t, ns, name)?;
        if let (Some(m), Some(rv)) = (
            obj.get_mut("metadata").and_then(Value::as_object_mut),
            current.pointer("/metadata/resourceVersion").cloned(),
        ) {
            m.insert("resourceVersion".into(), rv);
        }
        store
            .replace(t, ns, name, obj, target)
            .map(|o| store.render(t, version, &o))
    }

    /// Patches an object directly (same path as PATCH; watches see it). `body` is the patch document
    /// (for `PatchKind::Json`, the array of operations). Apply uses the field manager "kubectl".
    #[allow(clippy::too_many_arguments)]
    pub fn patch_raw(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        ns: &str,
        name: &str,
        kind: PatchKind,
        body: &Value,
    ) -> Result<Value, ApiError> {
        let mut store = self.store();
        let t = Self::type_of(&store, group, version, plural);
        let bytes = body.to_string();
        store
            .patch(
                t,
                ns,
                name,
                kind,
                bytes.as_bytes(),
                Target::Main,
                Some("kubectl"),
            )
            .map(|o| store.render(t, version, &o))
    }

    /// Like `kubectl apply --server-side -f`: every document of a (multi-document) YAML manifest is applied
    /// with field manager "kubectl", created when absent. Namespaced objects without a namespace go to
    /// `default_ns`. Documents of kinds the stand-in does not serve fail with 404.
    pub fn apply_manifest(&self, yaml: &str, default_ns: &str) -> Result<Vec<Value>, ApiError> {
        let mut applied = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let obj = <Value as serde::Deserialize>::deserialize(doc)
                .map_err(|e| ApiError::bad_request(format!("manifest is not YAML: {e}")))?;
            if obj.is_null() {
                continue;
            }
            let api_version = obj["apiVersion"].as_str().unwrap_or_default();
            let kind = obj["kind"].as_str().unwrap_or_default();
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let mut store = self.store();
            let t = store
                .types()
                .iter()
                .position(|t| {
                    t.group == group && t.kind == kind && t.versions.iter().any(|v| v == version)
                })
                .ok_or_else(|| {
                    ApiError::new(
                        404,
                        "NotFound",
                        format!("no {kind} in {api_version} is served"),
                    )
                })?;
            let ns = obj
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or(default_ns)
                .to_string();
            if store.resource_type(t).namespaced {
                store.ensure_namespace(&ns);
            }
            let bytes = obj.to_string();
            let out = store.patch(
                t,
                &ns,
                name,
                PatchKind::Apply,
                bytes.as_bytes(),
                Target::Main,
                Some("kubectl"),
            )?;
            applied.push(store.render(t, version, &out));
        }
        Ok(applied)
    }

    /// Deletes an object like `kubectl delete` (finalizers hold it with a deletionTimestamp; watches see it).
    pub fn delete_raw(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        ns: &str,
        name: &str,
    ) -> Result<DeleteOutcome, ApiError> {
        let mut store = self.store();
        let t = Self::type_of(&store, group, version, plural);
        store.delete(t, ns, name, &Preconditions::default())
    }

    /// Removes an object whatever its finalizers say (like deleting it from etcd); dependents are collected.
    pub fn purge_raw(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        ns: &str,
        name: &str,
    ) -> Option<Value> {
        let mut store = self.store();
        let t = Self::type_of(&store, group, version, plural);
        store.purge(t, ns, name)
    }

    /// Creates a namespace if it does not exist (`kubectl create namespace`). Objects can only be created in
    /// an existing namespace; the harness writes (`create_raw`, `apply_manifest`) create theirs themselves.
    pub fn create_namespace(&self, name: &str) {
        self.store().ensure_namespace(name);
    }

    /// Forgets the watch history and ends every open watch with 410 Gone: watchers must relist.
    pub fn compact(&self) {
        self.store().compact();
    }

    /// How many changes the watch history keeps (default 20 000); a watch from further back gets 410 Gone.
    pub fn set_history_limit(&self, changes: usize) {
        self.store().set_history_limit(changes);
    }

    /// The current (global) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.store().resource_version()
    }

    /// How often watches that asked for bookmarks get one (default 1 s).
    pub fn set_bookmark_interval(&self, every: Duration) {
        self.shared
            .bookmark_interval_ms
            .store(every.as_millis() as u64, Ordering::Relaxed);
    }

    /// Ends every watch after at most `d` (default 1 h), whatever its timeoutSeconds; watchers reconnect.
    pub fn set_max_watch_duration(&self, d: Duration) {
        self.shared
            .max_watch_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// Sets what requests cost from now on (see `cost.rs`; `CostModel::default()` is free).
    pub fn set_cost(&self, model: cost::CostModel) {
        *self.shared.cost.lock().expect("cost lock") = cost::Cost::new(model);
    }

    /// Requests answered 429 by the APF model since it was last set.
    pub fn rejected_requests(&self) -> u64 {
        self.shared
            .cost
            .lock()
            .expect("cost lock")
            .rejected
            .load(Ordering::Relaxed)
    }

    /// The requests the cost model saw since it was last set (none while it is free).
    pub fn cost_log(&self) -> Vec<cost::Arrival> {
        let cost = self.shared.cost.lock().expect("cost lock").clone();
        cost.log.lock().expect("cost log").clone()
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.requests.lock().expect("requests lock").clone()
    }

    /// Requests so far with this verb (get, list, watch, create, update, patch, delete, deletecollection).
    pub fn request_count(&self, verb: &str) -> usize {
        self.requests().iter().filter(|r| r.verb == verb).count()
    }

    /// Requests so far with this verb on this resource (plural, e.g. "secrets").
    pub fn request_count_for(&self, verb: &str, plural: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.verb == verb && r.plural == plural)
            .count()
    }

    /// Request counts by verb.
    pub fn request_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for r in self.requests() {
            *counts.entry(r.verb).or_insert(0) += 1;
        }
        counts
    }

    pub fn reset_request_counts(&self) {
        self.shared.requests.lock().expect("requests lock").clear();
    }

    /// Makes the next `times` requests with `verb` on `plural` ("*" matches any) fail with HTTP `code`
    /// (a Status with reason InternalError) before they reach the store.
    pub fn inject_failure(&self, verb: &str, plural: &str, times: u32, code: u16) {
        self.shared.faults.lock().expect("faults lock").push(Fault {
            verb: verb.into(),
            plural: plural.into(),
            remaining: times,
            code,
            message: None,
        });
    }

    /// Makes the next `times` requests with `verb` on `plural` be refused with HTTP `code` and `message`
    /// (reason Forbidden), as an admission webhook or a policy engine refuses a write; dry runs included.
    pub fn inject_refusal(&self, verb: &str, plural: &str, times: u32, code: u16, message: &str) {
        self.shared.faults.lock().expect("faults lock").push(Fault {
            verb: verb.into(),
            plural: plural.into(),
            remaining: times,
            code,
            message: Some(message.into()),
        });
    }

    /// Lifts every injected failure and refusal that is still pending.
    pub fn clear_faults(&self) {
        self.shared.faults.lock().expect("faults lock").clear();
    }

    /// Polls `check` every 20 ms until it returns true or `timeout` passes; returns the last result.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&FakeKube) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if check(self) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Ends all watches and stops the server.
    pub async fn shutdown(mut self) {
        let _ = self.shared.shutdown.send(true);
        if let Some(server) = self.server.take() {
            let abort = server.abort_handle();
            if tokio::time::timeout(Duration::from_secs(3), server)
                .await
                .is_err()
            {
                tracing::warn!("stand-in did not stop within 3 s; aborting it");
                abort.abort();
            }
        }
    }
}

/// The garbage collector and namespace controller of the stand-in: like a real cluster's, they act some
/// 50-100 ms after the change that gave them work, not within the request.
async fn garbage_collector(
    store: std::sync::Weak<Mutex<Store>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut due: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            _ = stop.changed() => return,
        }
        let Some(store) = store.upgrade() else {
            return;
        };
        let mut store = store.lock().expect("store lock");
        match due {
            None if store.garbage_collection_due() => {
                due = Some(tokio::time::Instant::now() + Duration::from_millis(50));
            }
            Some(at) if tokio::time::Instant::now() >= at => {
                store.run_garbage_collector();
                due = None;
            }
            _ => {}
        }
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        // Ends watches so test runtimes do not wait on open streams.
        let _ = self.shared.shutdown.send(true);
    }
}
