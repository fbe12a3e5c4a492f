//! The object store with the API server's write semantics: resourceVersion, generation, uid, status subresource,
//! finalizers and deletionTimestamp, ownerReference garbage collection, and a bounded watch history.
//!
//! No I/O here: the HTTP layer (`http.rs`) and the test API (`mod.rs`) both call these methods, so a write made by a
//! test "behind the operator's back" is seen by watches exactly like one made over HTTP.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::builtin::{check_builtin, check_metadata};
use super::events;
use super::fidelity::{self, Pages};
use super::patch::{self, PatchKind};
use super::schema;
use super::selector::{FieldSelector, LabelSelector};
pub use super::types::{ApiError, ResourceType, TypeId, builtin_types};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One entry of the change feed.
#[derive(Debug, Clone)]
pub enum WatchRecord {
    Change {
        rv: u64,
        type_id: TypeId,
        event: EventType,
        object: Value,
        /// The object before a MODIFIED, so selector watches can turn it into ADDED/DELETED.
        previous: Option<Value>,
    },
    /// `compact()` was called: every open watch ends with a 410 Expired error.
    Compacted,
}

/// Which part of an object a write targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Main,
    Status,
}

/// DELETE preconditions (`DeleteOptions.preconditions`).
#[derive(Debug, Clone, Default)]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    /// `DeleteOptions.propagationPolicy`: Background (the default), Orphan or Foreground.
    pub propagation_policy: Option<String>,
}

#[derive(Debug, Clone)]
pub enum DeleteOutcome {
    /// The object has finalizers: it now carries a deletionTimestamp.
    Pending(Value),
    /// The object is gone.
    Deleted(Value),
}

/// What a watch starts with: records to send first, then the live feed.
pub struct WatchStart {
    pub replay: Vec<Arc<WatchRecord>>,
    pub rx: broadcast::Receiver<Arc<WatchRecord>>,
    /// The resourceVersion the watch is consistent at (for bookmarks).
    pub rv: u64,
}

type Key = (String, String);

/// Leaf paths each server-side-apply field manager last applied to an object.
type AppliedFields = BTreeMap<String, BTreeSet<Vec<String>>>;

pub struct Store {
    types: Vec<ResourceType>,
    objects: Vec<BTreeMap<Key, Value>>,
    rv: u64,
    history: VecDeque<Arc<WatchRecord>>,
    history_limit: usize,
    /// A watch from a resourceVersion below this has missed events: 410 Gone.
    floor: u64,
    tx: broadcast::Sender<Arc<WatchRecord>>,
    /// Server-side apply bookkeeping, in place of managedFields.
    applied: BTreeMap<(TypeId, Key), AppliedFields>,
    /// uids of the objects that exist, for the garbage collector's owner checks.
    uids: HashSet<String>,
    /// Set for one request with `dryRun=All`: every check runs, nothing is stored.
    pub(crate) dry_run: bool,
    /// Garbage collection and namespace cleanup wait for `run_garbage_collector` (a task of `FakeKube` calls
    /// it, like the real collector some 50-100 ms after the change) instead of running at once.
    pub(crate) deferred_gc: bool,
    gc_pending: bool,
    collecting: bool,
    /// Paged lists in progress (`fidelity::Pages`).
    pub(crate) pages: Pages,
}

/// The garbage collector's finalizers for DELETE with propagationPolicy Orphan and Foreground.
const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";

/// Initial resourceVersion; anything below is "too old" from the start.
const FIRST_RV: u64 = 100;

fn now() -> String {
    let ts = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(ts.as_second())
        .unwrap_or(ts)
        .to_string()
}

fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj).and_then(|m| m.get(field)).and_then(Value::as_str)
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

fn finalizers(obj: &Value) -> Vec<String> {
    meta(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn owner_uids(obj: &Value) -> Vec<String> {
    meta(obj)
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str))
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// DNS-1123 subdomain, as the API server requires for most names.
fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case \
             alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        ))
    }
}

/// Labels and annotations must be string maps, or the API server cannot decode the body.
fn validate_string_maps(obj: &Value) -> Result<(), String> {
    for field in ["labels", "annotations"] {
        match meta(obj).and_then(|m| m.get(field)) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) if m.values().all(Value::is_string) => {}
            Some(_) => return Err(format!("metadata.{field} must be a map of strings")),
        }
    }
    Ok(())
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let id = uuid::Uuid::new_v4();
    id.as_bytes()[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

impl Store {
    pub fn new(types: Vec<ResourceType>) -> Self {
        let (tx, _) = broadcast::channel(65_536);
        let objects = types.iter().map(|_| BTreeMap::new()).collect();
        Self {
            types,
            objects,
            rv: FIRST_RV,
            history: VecDeque::new(),
            history_limit: 20_000,
            floor: FIRST_RV,
            tx,
            applied: BTreeMap::new(),
            uids: HashSet::new(),
            dry_run: false,
            deferred_gc: false,
            gc_pending: false,
            collecting: false,
            pages: Pages::default(),
        }
    }

    /// Adds a served type (a CRD); a type with the same group and plural gains the versions instead.
    pub fn add_type(&mut self, rt: ResourceType) -> TypeId {
        if let Some(id) = self
            .types
            .iter()
            .position(|t| t.group == rt.group && t.plural == rt.plural)
        {
            for v in rt.versions {
                if !self.types[id].versions.contains(&v) {
                    self.types[id].versions.push(v);
                }
            }
            return id;
        }
        self.types.push(rt);
        self.objects.push(BTreeMap::new());
        self.types.len() - 1
    }

    pub fn types(&self) -> &[ResourceType] {
        &self.types
    }

    pub fn type_id(&self, group: &str, version: &str, plural: &str) -> Option<TypeId> {
        // events.k8s.io Events live in the core store (see `events.rs`).
        let (group, version) = if events::is_events_v1(group, plural) && version == "v1" {
            ("", "v1")
        } else {
            (group, version)
        };
        self.types.iter().position(|t| {
            t.group == group && t.plural == plural && t.versions.iter().any(|v| v == version)
        })
    }

    /// A newer CRD's schema (what `kubectl apply` of the CRD does; stored objects stay as they are).
    pub fn replace_schema(&mut self, t: TypeId, schema: Value) {
        self.types[t].schema = Some(schema);
    }

    pub fn resource_type(&self, t: TypeId) -> &ResourceType {
        &self.types[t]
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn set_history_limit(&mut self, limit: usize) {
        self.history_limit = limit.max(1);
    }

    /// The object as served in `version`.
    /// `obj` as the API of `group`/`version` shows it: events.k8s.io Events converted from the
    /// core shape they are stored in.
    pub fn render_as(&self, t: TypeId, group: &str, version: &str, obj: &Value) -> Value {
        if events::is_events_v1(group, &self.types[t].plural) {
            return events::from_core(obj.clone());
        }
        self.render(t, version, obj)
    }

    pub fn render(&self, t: TypeId, version: &str, obj: &Value) -> Value {
        let mut out = obj.clone();
        out["apiVersion"] = Value::String(self.types[t].api_version(version));
        out
    }

    fn key(&self, t: TypeId, ns: &str, name: &str) -> Key {
        let ns = if self.types[t].namespaced { ns } else { "" };
        (ns.to_string(), name.to_string())
    }

    pub fn get(&self, t: TypeId, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.objects[t]
            .get(&self.key(t, ns, name))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&self.types[t], name))
    }

    /// Objects of a type, sorted by namespace and name; `ns` None means all namespaces.
    pub fn list(
        &self,
        t: TypeId,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> Vec<Value> {
        self.objects[t]
            .iter()
            .filter(|((ons, _), _)| ns.is_none_or(|n| !self.types[t].namespaced || n == ons))
            .filter(|(_, o)| labels.matches(o) && fields.matches(o))
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Counts the objects of type `t` (in `ns`, if given) that `pred` accepts, without copying them.
    pub fn count(&self, t: TypeId, ns: Option<&str>, pred: impl Fn(&Value) -> bool) -> usize {
        self.objects[t]
            .iter()
            .filter(|((ons, _), o)| {
                ns.is_none_or(|n| !self.types[t].namespaced || n == ons) && pred(o)
            })
            .count()
    }

    /// Every change from now on, as the watches see them (for a harness that follows progress without
    /// scanning the store).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<WatchRecord>> {
        self.tx.subscribe()
    }

    // ---- writes -------------------------------------------------------------------------------------------

    fn record(&mut self, record: WatchRecord) {
        let record = Arc::new(record);
        self.history.push_back(record.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front()
                && let WatchRecord::Change { rv, .. } = *old
            {
                self.floor = rv;
            }
        }
        // No receivers is fine.
        let _ = self.tx.send(record);
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn commit_put(&mut self, t: TypeId, mut obj: Value, previous: Option<Value>) -> Value {
        let rv = self.next_rv();
        meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
        let key = (
            meta_str(&obj, "namespace").unwrap_or("").to_string(),
            meta_str(&obj, "name").unwrap_or("").to_string(),
        );
        if previous.is_none()
            && let Some(uid) = meta_str(&obj, "uid")
        {
            self.uids.insert(uid.to_string());
        }
        self.objects[t].insert(key, obj.clone());
        let event = if previous.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(WatchRecord::Change {
            rv,
            type_id: t,
            event,
            object: obj.clone(),
            previous,
        });
        obj
    }

    /// Removes the object for good (no finalizer check), then garbage-collects its dependents.
    fn commit_remove(&mut self, t: TypeId, key: &Key) -> Option<Value> {
        let mut obj = self.objects[t].remove(key)?;
        if let Some(uid) = meta_str(&obj, "uid") {
            self.uids.remove(uid);
        }
        self.applied.remove(&(t, key.clone()));
        let rv = self.next_rv();
        meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
        self.record(WatchRecord::Change {
            rv,
            type_id: t,
            event: EventType::Deleted,
            object: obj.clone(),
            previous: None,
        });
        self.gc_soon();
        Some(obj)
    }

    /// Background garbage collection, done at once: an object whose owners are all gone is deleted (through the
    /// normal delete path, so its own finalizers hold it); references to gone owners are dropped from an object
    /// that still has a live owner.
    fn collect_garbage(&mut self) {
        loop {
            let live = self.uids.clone();
            let mut to_delete = Vec::new();
            let mut to_trim = Vec::new();
            for (t, objects) in self.objects.iter().enumerate() {
                for (key, obj) in objects {
                    let owners = owner_uids(obj);
                    if owners.is_empty() || owners.iter().all(|u| live.contains(u)) {
                        continue;
                    }
                    if owners.iter().any(|u| live.contains(u)) {
                        to_trim.push((t, key.clone()));
                    } else if meta(obj).and_then(|m| m.get("deletionTimestamp")).is_none() {
                        to_delete.push((t, key.clone()));
                    }
                }
            }
            if to_delete.is_empty() && to_trim.is_empty() {
                return;
            }
            for (t, key) in to_trim {
                let Some(old) = self.objects[t].get(&key).cloned() else {
                    continue;
                };
                let mut new = old.clone();
                if let Some(refs) = meta_mut(&mut new)
                    .get_mut("ownerReferences")
                    .and_then(Value::as_array_mut)
                {
                    refs.retain(|r| {
                        r.get("uid")
                            .and_then(Value::as_str)
                            .is_some_and(|u| live.contains(u))
                    });
                }
                self.commit_put(t, new, Some(old));
            }
            for (t, key) in to_delete {
                // A dependent with finalizers only gets a deletionTimestamp; it is skipped next round.
                let _ = self.delete_key(t, &key, &Preconditions::default());
            }
        }
    }

    /// Creates namespace `ns` when it does not exist (test setup, like `kubectl create namespace`).
    pub fn ensure_namespace(&mut self, ns: &str) {
        let Some(t) = self.type_id("", "v1", "namespaces") else {
            return;
        };
        if ns.is_empty() || self.objects[t].contains_key(&(String::new(), ns.to_string())) {
            return;
        }
        let _ = self.create(t, None, json!({"metadata": {"name": ns}}));
    }

    /// POST: creates an object. `url_ns` is the namespace from the URL, if any.
    pub fn create(
        &mut self,
        t: TypeId,
        url_ns: Option<&str>,
        mut body: Value,
    ) -> Result<Value, ApiError> {
        let rt = self.types[t].clone();
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        validate_string_maps(&body).map_err(ApiError::bad_request)?;
        let m = meta_mut(&mut body);
        let mut name = m
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            match m.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => name = format!("{prefix}{}", random_suffix()),
                _ => {
                    return Err(ApiError::invalid(
                        &rt,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ));
                }
            }
        }
        validate_name(&name).map_err(|e| ApiError::invalid(&rt, &name, &e))?;
        let ns = if rt.namespaced {
            let body_ns = m
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty());
            match (url_ns, body_ns) {
                (Some(u), Some(b)) if u != b => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                (Some(u), _) => u.to_string(),
                (None, Some(b)) => b.to_string(),
                (None, None) => "default".to_string(),
            }
        } else {
            String::new()
        };
        let key = (ns.clone(), name.clone());
        if self.objects[t].contains_key(&key) {
            return Err(ApiError::already_exists(&rt, &name));
        }
        m.insert("name".into(), Value::String(name));
        if rt.namespaced {
            m.insert("namespace".into(), Value::String(ns.clone()));
        } else {
            m.remove("namespace");
        }
        for server_owned in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "managedFields",
            "selfLink",
        ] {
            m.remove(server_owned);
        }
        m.insert(
            "uid".into(),
            Value::String(uuid::Uuid::new_v4().to_string()),
        );
        m.insert("creationTimestamp".into(), Value::String(now()));
        if rt.has_generation {
            m.insert("generation".into(), json!(1));
        }
        let obj = body.as_object_mut().expect("checked above");
        obj.insert(
            "apiVersion".into(),
            Value::String(rt.api_version(&rt.versions[0])),
        );
        obj.insert("kind".into(), Value::String(rt.kind.clone()));
        if rt.status_subresource {
            if rt.custom {
                obj.remove("status");
            } else if rt.plural == "namespaces" {
                obj.insert("status".into(), json!({"phase": "Active"}));
            } else {
                obj.insert("status".into(), json!({}));
            }
        }
        fidelity::drop_empty(&rt, &mut body);
        check_schema(&rt, &key.1, &mut body, None)?;
        check_builtin(&rt, &key.1, None, &mut body)?;
        fidelity::check_secret_data(&rt, &key.1, &body)?;
        check_metadata(&rt, &key.1, &body)?;
        if rt.namespaced {
            self.check_namespace(&ns)?;
        }
        if self.dry_run {
            return Ok(body);
        }
        let created = self.commit_put(t, body, None);
        // An object created with owners that are all gone is collected, like the real garbage collector would.
        let owners = owner_uids(&created);
        if owners.iter().any(|u| !self.uids.contains(u)) {
            self.gc_soon();
        }
        Ok(created)
    }

    /// PUT: replaces an object (or its status).
    pub fn replace(
        &mut self,
        t: TypeId,
        ns: &str,
        name: &str,
        body: Value,
        target: Target,
    ) -> Result<Value, ApiError> {
        let old = self.get(t, ns, name)?;
        let rt = &self.types[t];
        let has_rv = meta_str(&body, "resourceVersion").is_some_and(|s| !s.is_empty());
        if !has_rv && rt.custom {
            return Err(ApiError::invalid(
                rt,
                name,
                "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
            ));
        }
        self.write_update(t, ns, name, old, body, target)
    }

    /// PATCH: applies a patch to an object (or its status); server-side apply creates a missing object.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        t: TypeId,
        ns: &str,
        name: &str,
        kind: PatchKind,
        body: &[u8],
        target: Target,
        field_manager: Option<&str>,
    ) -> Result<Value, ApiError> {
        let rt = self.types[t].clone();
        if kind == PatchKind::Apply && field_manager.is_none_or(str::is_empty) {
            return Err(ApiError::invalid(
                &rt,
                name,
                "fieldManager: Required value: is required for apply patch",
            ));
        }
        let patch_value = patch::parse_body(kind, body).map_err(ApiError::bad_request)?;
        let old = match self.get(t, ns, name) {
            Ok(old) => old,
            Err(e) if kind == PatchKind::Apply && target == Target::Main && e.code == 404 => {
                let mut new = patch_value.clone();
                if !new.is_object() {
                    return Err(ApiError::bad_request("an apply body must be an object"));
                }
                if meta_str(&new, "name").is_some_and(|n| n != name) {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({}) does not match the name on the URL ({name})",
                        meta_str(&new, "name").unwrap_or_default()
                    )));
                }
                meta_mut(&mut new).insert("name".into(), Value::String(name.into()));
                let url_ns = rt.namespaced.then_some(ns);
                let created = self.create(t, url_ns, new)?;
                self.record_applied(t, &created, field_manager, &patch_value, target);
                return Ok(created);
            }
            Err(e) => return Err(e),
        };
        let mut patched =
            patch::apply(kind, &old, &patch_value).map_err(|e| ApiError::invalid(&rt, name, &e))?;
        if kind == PatchKind::Apply {
            for path in self.released_fields(t, &old, field_manager, &patch_value, target) {
                patch::remove_path(&mut patched, &path);
            }
        }
        let written = self.write_update(t, ns, name, old, patched, target)?;
        if kind == PatchKind::Apply {
            self.record_applied(t, &written, field_manager, &patch_value, target);
        }
        Ok(written)
    }

    /// Whether a field path belongs to the part of the object that `target` writes.
    fn in_target(&self, t: TypeId, path: &[String], target: Target) -> bool {
        let is_status =
            self.types[t].status_subresource && path.first().is_some_and(|p| p == "status");
        is_status == (target == Target::Status)
    }

    fn applied_key(&self, t: TypeId, obj: &Value) -> (TypeId, Key) {
        let ns = meta_str(obj, "namespace").unwrap_or("");
        (t, self.key(t, ns, meta_str(obj, "name").unwrap_or("")))
    }

    /// Fields this manager applied before, leaves out now, and no other manager applied.
    fn released_fields(
        &self,
        t: TypeId,
        obj: &Value,
        manager: Option<&str>,
        applied: &Value,
        target: Target,
    ) -> Vec<Vec<String>> {
        let manager = manager.unwrap_or_default();
        let Some(managers) = self.applied.get(&self.applied_key(t, obj)) else {
            return Vec::new();
        };
        let now: BTreeSet<Vec<String>> = patch::leaf_paths(applied).into_iter().collect();
        let others: BTreeSet<&Vec<String>> = managers
            .iter()
            .filter(|(m, _)| m.as_str() != manager)
            .flat_map(|(_, paths)| paths)
            .collect();
        managers
            .get(manager)
            .into_iter()
            .flatten()
            .filter(|p| self.in_target(t, p, target) && !now.contains(*p) && !others.contains(p))
            .cloned()
            .collect()
    }

    /// Remembers what `manager` applied to `target` (its fields in the other part stay as they were).
    fn record_applied(
        &mut self,
        t: TypeId,
        obj: &Value,
        manager: Option<&str>,
        applied: &Value,
        target: Target,
    ) {
        let key = self.applied_key(t, obj);
        if !self.objects[t].contains_key(&key.1) {
            return;
        }
        let manager = manager.unwrap_or_default();
        let fresh: Vec<Vec<String>> = patch::leaf_paths(applied)
            .into_iter()
            .filter(|p| self.in_target(t, p, target))
            .collect();
        let kept: Vec<Vec<String>> = self
            .applied
            .get(&key)
            .and_then(|m| m.get(manager))
            .into_iter()
            .flatten()
            .filter(|p| !self.in_target(t, p, target))
            .cloned()
            .collect();
        self.applied
            .entry(key)
            .or_default()
            .insert(manager.to_string(), kept.into_iter().chain(fresh).collect());
    }

    /// The common update path of PUT and PATCH.
    fn write_update(
        &mut self,
        t: TypeId,
        ns: &str,
        name: &str,
        old: Value,
        mut new: Value,
        target: Target,
    ) -> Result<Value, ApiError> {
        let rt = self.types[t].clone();
        if !new.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        validate_string_maps(&new).map_err(ApiError::bad_request)?;
        if let Some(rv) = meta_str(&new, "resourceVersion").filter(|s| !s.is_empty())
            && Some(rv) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::stale(&rt, name));
        }
        // A body naming another object (same name, recreated since) is refused, not applied to this one.
        if let Some(uid) = meta_str(&new, "uid").filter(|s| !s.is_empty())
            && Some(uid) != meta_str(&old, "uid")
        {
            return Err(ApiError::conflict(
                &rt,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&old, "uid").unwrap_or_default()
                ),
            ));
        }
        if let Some(body_name) = meta_str(&new, "name").filter(|s| !s.is_empty())
            && body_name != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if rt.namespaced
            && let Some(body_ns) = meta_str(&new, "namespace").filter(|s| !s.is_empty())
            && body_ns != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }

        if target == Target::Status {
            // Only .status changes through /status.
            let status = new.get("status").cloned();
            new = old.clone();
            match status {
                Some(s) if !s.is_null() => new["status"] = s,
                _ => {
                    new.as_object_mut().expect("object").remove("status");
                }
            }
        } else if rt.status_subresource {
            // .status changes only through /status.
            let obj = new.as_object_mut().expect("object");
            match old.get("status") {
                Some(s) => obj.insert("status".into(), s.clone()),
                None => obj.remove("status"),
            };
        }

        // Server-owned fields keep their stored values.
        let old_meta = meta(&old).cloned().unwrap_or_default();
        {
            let obj = new.as_object_mut().expect("object");
            for field in ["apiVersion", "kind"] {
                if let Some(v) = old.get(field) {
                    obj.insert(field.into(), v.clone());
                }
            }
            let m = meta_mut(&mut new);
            for field in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "resourceVersion",
            ] {
                match old_meta.get(field) {
                    Some(v) => m.insert(field.into(), v.clone()),
                    None => m.remove(field),
                };
            }
            m.remove("managedFields");
        }

        let being_deleted = old_meta.contains_key("deletionTimestamp");
        if being_deleted {
            let before = finalizers(&old);
            let added: Vec<String> = finalizers(&new)
                .into_iter()
                .filter(|f| !before.contains(f))
                .collect();
            if !added.is_empty() {
                return Err(ApiError::invalid(
                    &rt,
                    name,
                    &format!(
                        "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being \
                         deleted, found new finalizers {added:?}"
                    ),
                ));
            }
        }

        fidelity::drop_empty(&rt, &mut new);
        check_schema(&rt, name, &mut new, Some(&old))?;
        check_builtin(&rt, name, Some(&old), &mut new)?;
        fidelity::check_secret_data(&rt, name, &new)?;
        check_metadata(&rt, name, &new)?;
        if rt.has_generation && spec_part(&rt, &old) != spec_part(&rt, &new) {
            let generation = old_meta
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut new).insert("generation".into(), json!(generation + 1));
        }

        if new == old {
            // The real API server skips no-op writes: no new resourceVersion, no watch event.
            return Ok(old);
        }
        if self.dry_run {
            return Ok(new);
        }
        if being_deleted && finalizers(&new).is_empty() {
            let key = self.key(t, ns, name);
            self.objects[t].insert(key.clone(), new);
            return Ok(self.commit_remove(t, &key).expect("just inserted"));
        }
        Ok(self.commit_put(t, new, Some(old)))
    }

    /// DELETE: with finalizers the object gets a deletionTimestamp; without, it is removed.
    pub fn delete(
        &mut self,
        t: TypeId,
        ns: &str,
        name: &str,
        pre: &Preconditions,
    ) -> Result<DeleteOutcome, ApiError> {
        let key = self.key(t, ns, name);
        if !self.objects[t].contains_key(&key) {
            return Err(ApiError::not_found(&self.types[t], name));
        }
        self.delete_key(t, &key, pre)
    }

    fn delete_key(
        &mut self,
        t: TypeId,
        key: &Key,
        pre: &Preconditions,
    ) -> Result<DeleteOutcome, ApiError> {
        let rt = self.types[t].clone();
        let old = self.objects[t]
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt, &key.1))?;
        if let Some(uid) = &pre.uid
            && Some(uid.as_str()) != meta_str(&old, "uid")
        {
            return Err(ApiError::conflict(
                &rt,
                &key.1,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&old, "uid").unwrap_or_default()
                ),
            ));
        }
        if let Some(rv) = &pre.resource_version
            && Some(rv.as_str()) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::conflict(
                &rt,
                &key.1,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta_str(&old, "resourceVersion").unwrap_or_default()
                ),
            ));
        }
        if rt.group.is_empty() && rt.plural == "namespaces" {
            return Ok(DeleteOutcome::Pending(
                self.terminate_namespace(t, key, old),
            ));
        }
        let held_by = match pre.propagation_policy.as_deref() {
            Some("Orphan") => Some(ORPHAN),
            Some("Foreground") => Some(FOREGROUND),
            _ => None,
        };
        if let Some(finalizer) = held_by
            && !finalizers(&old).iter().any(|f| f == finalizer)
            && meta(&old).is_some_and(|m| !m.contains_key("deletionTimestamp"))
        {
            return Ok(DeleteOutcome::Pending(
                self.hold_for_collector(t, old, finalizer),
            ));
        }
        if finalizers(&old).is_empty() {
            let gone = self.commit_remove(t, key).expect("present");
            return Ok(DeleteOutcome::Deleted(gone));
        }
        if meta(&old).is_some_and(|m| m.contains_key("deletionTimestamp")) {
            return Ok(DeleteOutcome::Pending(old));
        }
        let mut new = old.clone();
        let m = meta_mut(&mut new);
        m.insert("deletionTimestamp".into(), Value::String(now()));
        m.insert("deletionGracePeriodSeconds".into(), json!(0));
        // Like the real registry: the generation moves when deletion starts.
        if let Some(g) = m.get("generation").and_then(Value::as_i64)
            && g > 0
        {
            m.insert("generation".into(), json!(g + 1));
        }
        Ok(DeleteOutcome::Pending(self.commit_put(t, new, Some(old))))
    }

    /// Removes an object whatever its finalizers say (like deleting it from etcd), then collects garbage.
    pub fn purge(&mut self, t: TypeId, ns: &str, name: &str) -> Option<Value> {
        let key = self.key(t, ns, name);
        self.commit_remove(t, &key)
    }

    // ---- the garbage collector and namespace lifecycle (asynchronous, as in a real cluster) ---------------

    /// Marks collection as due: at once, or on the next `run_garbage_collector` when deferred.
    fn gc_soon(&mut self) {
        self.gc_pending = true;
        if !self.deferred_gc {
            self.run_garbage_collector();
        }
    }

    /// Whether collection is due (a change since the last run left work).
    pub fn garbage_collection_due(&self) -> bool {
        self.gc_pending
    }

    /// One run of the collectors until nothing is left to do: owners gone (background), owners deleted with
    /// propagationPolicy Orphan or Foreground, terminating namespaces.
    pub fn run_garbage_collector(&mut self) {
        if self.collecting {
            return;
        }
        self.collecting = true;
        while std::mem::take(&mut self.gc_pending) {
            self.collect_garbage();
            self.collect_held();
            self.clean_namespaces();
        }
        self.collecting = false;
    }

    /// DELETE with propagationPolicy Orphan or Foreground: the owner stays, with a deletionTimestamp and the
    /// collector's finalizer, until its dependents are orphaned or deleted.
    fn hold_for_collector(&mut self, t: TypeId, old: Value, finalizer: &str) -> Value {
        let mut new = old.clone();
        let m = meta_mut(&mut new);
        m.insert("deletionTimestamp".into(), Value::String(now()));
        m.insert("deletionGracePeriodSeconds".into(), json!(0));
        let mut list = finalizers(&old);
        list.push(finalizer.to_string());
        m.insert("finalizers".into(), json!(list));
        if let Some(g) = m.get("generation").and_then(Value::as_i64)
            && g > 0
        {
            m.insert("generation".into(), json!(g + 1));
        }
        let held = self.commit_put(t, new, Some(old));
        self.gc_soon();
        held
    }

    /// Owners held by `orphan` lose their references from their dependents, then the finalizer; owners held
    /// by `foregroundDeletion` get their dependents deleted and go when no blocking dependent is left.
    fn collect_held(&mut self) {
        let mut held = Vec::new();
        for (t, objects) in self.objects.iter().enumerate() {
            for (key, obj) in objects {
                if meta(obj).is_some_and(|m| m.contains_key("deletionTimestamp")) {
                    for f in finalizers(obj) {
                        if f == ORPHAN || f == FOREGROUND {
                            let uid = meta_str(obj, "uid").unwrap_or_default().to_string();
                            held.push((t, key.clone(), uid, f));
                        }
                    }
                }
            }
        }
        for (t, key, uid, finalizer) in held {
            let uid = uid.as_str();
            let dependents: Vec<(TypeId, Key, bool)> = self
                .objects
                .iter()
                .enumerate()
                .flat_map(|(dt, objects)| {
                    objects.iter().filter_map(move |(dk, d)| {
                        let r = meta(d)?
                            .get("ownerReferences")?
                            .as_array()?
                            .iter()
                            .find(|r| r.get("uid").and_then(Value::as_str) == Some(uid))?;
                        let blocks = r.get("blockOwnerDeletion") == Some(&Value::Bool(true));
                        Some((dt, dk.clone(), blocks))
                    })
                })
                .collect();
            let mut blocked = false;
            for (dt, dk, blocks) in dependents {
                let Some(d) = self.objects[dt].get(&dk).cloned() else {
                    continue;
                };
                if finalizer == ORPHAN {
                    let mut new = d.clone();
                    if let Some(refs) = meta_mut(&mut new)
                        .get_mut("ownerReferences")
                        .and_then(Value::as_array_mut)
                    {
                        refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid));
                    }
                    fidelity::drop_empty(&self.types[dt].clone(), &mut new);
                    self.commit_put(dt, new, Some(d));
                    continue;
                }
                if meta(&d).is_some_and(|m| !m.contains_key("deletionTimestamp")) {
                    let _ = self.delete_key(dt, &dk, &Preconditions::default());
                }
                blocked |= blocks && self.objects[dt].contains_key(&dk);
            }
            if !blocked {
                self.release(t, &key, &finalizer);
            }
        }
    }

    /// Removes one finalizer; the object goes when it was the last.
    fn release(&mut self, t: TypeId, key: &Key, finalizer: &str) {
        let Some(old) = self.objects[t].get(key).cloned() else {
            return;
        };
        let mut new = old.clone();
        let rest: Vec<String> = finalizers(&old)
            .into_iter()
            .filter(|f| f != finalizer)
            .collect();
        meta_mut(&mut new).insert("finalizers".into(), json!(rest));
        fidelity::drop_empty(&self.types[t].clone(), &mut new);
        if rest.is_empty() {
            self.objects[t].insert(key.clone(), new);
            self.commit_remove(t, key);
        } else {
            self.commit_put(t, new, Some(old));
        }
    }

    /// Creating in a namespace needs it to exist (404) and not to be terminating (403).
    fn check_namespace(&self, ns: &str) -> Result<(), ApiError> {
        let Some(t) = self.type_id("", "v1", "namespaces") else {
            return Ok(());
        };
        match self.objects[t].get(&(String::new(), ns.to_string())) {
            None => Err(ApiError::not_found(&self.types[t], ns)),
            Some(n) if meta(n).is_some_and(|m| m.contains_key("deletionTimestamp")) => {
                Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "unable to create new content in namespace {ns} because it is being terminated"
                    ),
                ))
            }
            Some(_) => Ok(()),
        }
    }

    /// DELETE of a namespace: Terminating until the namespace controller has deleted everything in it.
    fn terminate_namespace(&mut self, t: TypeId, key: &Key, old: Value) -> Value {
        if meta(&old).is_some_and(|m| m.contains_key("deletionTimestamp")) {
            return old;
        }
        let mut new = old.clone();
        meta_mut(&mut new).insert("deletionTimestamp".into(), Value::String(now()));
        new["spec"] = json!({"finalizers": ["kubernetes"]});
        new["status"] = json!({"phase": "Terminating"});
        let _ = key;
        let out = self.commit_put(t, new, Some(old));
        self.gc_soon();
        out
    }

    /// The namespace controller: deletes what is in a terminating namespace (finalizers still hold objects),
    /// and removes the namespace once it is empty.
    fn clean_namespaces(&mut self) {
        let Some(nt) = self.type_id("", "v1", "namespaces") else {
            return;
        };
        let terminating: Vec<String> = self.objects[nt]
            .iter()
            .filter(|(_, n)| meta(n).is_some_and(|m| m.contains_key("deletionTimestamp")))
            .map(|(k, _)| k.1.clone())
            .collect();
        for ns in terminating {
            let mut left = false;
            for t in 0..self.types.len() {
                if !self.types[t].namespaced {
                    continue;
                }
                let keys: Vec<Key> = self.objects[t]
                    .keys()
                    .filter(|k| k.0 == ns)
                    .cloned()
                    .collect();
                for k in keys {
                    let pending = self.objects[t].get(&k).is_some_and(|o| {
                        meta(o).is_some_and(|m| m.contains_key("deletionTimestamp"))
                    });
                    if !pending {
                        let _ = self.delete_key(t, &k, &Preconditions::default());
                    }
                    left |= self.objects[t].contains_key(&k);
                }
            }
            if !left {
                self.commit_remove(nt, &(String::new(), ns));
            }
        }
    }

    // ---- watch --------------------------------------------------------------------------------------------

    /// Forgets the watch history: any watch from an older resourceVersion gets 410 Gone, and open watches end
    /// with 410, which makes kube-runtime's watcher relist.
    pub fn compact(&mut self) {
        self.pages.forget();
        self.history.clear();
        self.floor = self.rv;
        let _ = self.tx.send(Arc::new(WatchRecord::Compacted));
    }

    /// Starts a watch on type `t`. `from` None (or 0) starts with the current objects as ADDED records;
    /// `Some(rv)` replays the changes after `rv`, or fails with 410 when they are no longer in the history.
    pub fn start_watch(&self, t: TypeId, from: Option<u64>) -> Result<WatchStart, ApiError> {
        let rx = self.tx.subscribe();
        let replay = match from.filter(|rv| *rv > 0) {
            None => self.objects[t]
                .values()
                .map(|o| {
                    Arc::new(WatchRecord::Change {
                        rv: meta_str(o, "resourceVersion")
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0),
                        type_id: t,
                        event: EventType::Added,
                        object: o.clone(),
                        previous: None,
                    })
                })
                .collect(),
            Some(rv) if rv < self.floor => {
                return Err(ApiError::gone(format!(
                    "too old resource version: {rv} ({})",
                    self.floor
                )));
            }
            Some(rv) => self
                .history
                .iter()
                .filter(|r| matches!(***r, WatchRecord::Change { rv: r_rv, type_id, .. } if r_rv > rv && type_id == t))
                .cloned()
                .collect(),
        };
        Ok(WatchStart {
            replay,
            rx,
            rv: self.rv,
        })
    }
}

/// Prunes, defaults and validates a custom resource against its CRD schema: the structural
/// checks, then (when they pass) its CEL rules (`x-kubernetes-validations`). `old`: the stored
/// object of an update.
fn check_schema(
    rt: &ResourceType,
    name: &str,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let Some(s) = &rt.schema else {
        return Ok(());
    };
    schema::prune_and_default(s, obj);
    let mut errors = schema::validate(s, obj);
    if errors.is_empty() {
        errors = schema::cel_errors(rt, s, obj, old);
    }
    match errors.as_slice() {
        [] => Ok(()),
        [one] => Err(ApiError::invalid(rt, name, one)),
        many => Err(ApiError::invalid(
            rt,
            name,
            &format!("[{}]", many.join(", ")),
        )),
    }
}

/// The part of an object whose change bumps `metadata.generation`.
fn spec_part(rt: &ResourceType, obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(o) = v.as_object_mut() {
        for field in ["metadata", "apiVersion", "kind"] {
            o.remove(field);
        }
        if rt.status_subresource {
            o.remove("status");
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn widget_type() -> ResourceType {
        ResourceType {
            status_subresource: true,
            has_generation: true,
            custom: true,
            ..ResourceType::builtin("example.dev", "v1", "widgets", "Widget", true)
        }
    }

    fn store() -> (Store, TypeId, TypeId) {
        let mut s = Store::new(builtin_types());
        let w = s.add_type(widget_type());
        let secrets = s.type_id("", "v1", "secrets").unwrap();
        for ns in ["ns", "ns1"] {
            s.ensure_namespace(ns);
        }
        (s, w, secrets)
    }

    fn rv(o: &Value) -> String {
        meta_str(o, "resourceVersion").unwrap().to_string()
    }

    #[test]
    fn create_sets_metadata_and_refuses_duplicates_and_missing_names() {
        let (mut s, w, _) = store();
        let o = s
            .create(
                w,
                Some("ns1"),
                json!({"metadata": {"name": "a"}, "spec": {"x": 1}, "status": {"y": 1}}),
            )
            .unwrap();
        assert_eq!(o["metadata"]["generation"], 1);
        assert_eq!(o["metadata"]["namespace"], "ns1");
        assert!(o["metadata"]["uid"].is_string());
        assert!(o["metadata"]["creationTimestamp"].is_string());
        assert!(
            o.get("status").is_none(),
            "status is dropped on create with a status subresource"
        );
        assert_eq!(o["kind"], "Widget");
        let dup = s
            .create(w, Some("ns1"), json!({"metadata": {"name": "a"}}))
            .unwrap_err();
        assert_eq!((dup.code, dup.reason.as_str()), (409, "AlreadyExists"));
        let nameless = s
            .create(w, Some("ns1"), json!({"metadata": {}}))
            .unwrap_err();
        assert_eq!((nameless.code, nameless.reason.as_str()), (422, "Invalid"));
        let upper = s
            .create(w, Some("ns1"), json!({"metadata": {"name": "Bad_Name"}}))
            .unwrap_err();
        assert_eq!(upper.code, 422);
        let generated = s
            .create(w, Some("ns1"), json!({"metadata": {"generateName": "g-"}}))
            .unwrap();
        assert!(meta_str(&generated, "name").unwrap().starts_with("g-"));
        // Namespaces must exist: nothing springs into existence on first write.
        let missing = s
            .create(w, Some("nowhere"), json!({"metadata": {"name": "a"}}))
            .unwrap_err();
        assert_eq!(missing.code, 404, "{missing:?}");
    }

    #[test]
    fn stale_resource_version_conflicts_and_generation_follows_spec() {
        let (mut s, w, _) = store();
        let o = s
            .create(
                w,
                Some("ns"),
                json!({"metadata": {"name": "a"}, "spec": {"x": 1}}),
            )
            .unwrap();
        let mut v2 = o.clone();
        v2["spec"]["x"] = json!(2);
        let o2 = s.replace(w, "ns", "a", v2, Target::Main).unwrap();
        assert_eq!(o2["metadata"]["generation"], 2);
        assert_ne!(rv(&o), rv(&o2));
        let err = s
            .replace(w, "ns", "a", o.clone(), Target::Main)
            .unwrap_err();
        assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
        assert!(err.message.contains("the object has been modified"));

        let mut labelled = o2.clone();
        labelled["metadata"]["labels"] = json!({"l": "v"});
        let o3 = s.replace(w, "ns", "a", labelled, Target::Main).unwrap();
        assert_eq!(
            o3["metadata"]["generation"], 2,
            "metadata changes keep the generation"
        );

        let mut no_rv = o3.clone();
        meta_mut(&mut no_rv).remove("resourceVersion");
        assert_eq!(
            s.replace(w, "ns", "a", no_rv, Target::Main)
                .unwrap_err()
                .code,
            422
        );

        let same = s.replace(w, "ns", "a", o3.clone(), Target::Main).unwrap();
        assert_eq!(
            rv(&same),
            rv(&o3),
            "a no-op write keeps the resourceVersion"
        );
    }

    #[test]
    fn status_subresource_isolation() {
        let (mut s, w, _) = store();
        s.create(
            w,
            Some("ns"),
            json!({"metadata": {"name": "a"}, "spec": {"x": 1}}),
        )
        .unwrap();
        let st = s
            .patch(
                w,
                "ns",
                "a",
                PatchKind::Merge,
                br#"{"status":{"ok":true},"spec":{"x":9}}"#,
                Target::Status,
                None,
            )
            .unwrap();
        assert_eq!(st["status"]["ok"], true);
        assert_eq!(st["spec"]["x"], 1);
        assert_eq!(st["metadata"]["generation"], 1);
        let main = s
            .patch(
                w,
                "ns",
                "a",
                PatchKind::Merge,
                br#"{"status":{"ok":false},"spec":{"x":2}}"#,
                Target::Main,
                None,
            )
            .unwrap();
        assert_eq!(main["status"]["ok"], true);
        assert_eq!(main["spec"]["x"], 2);
        assert_eq!(main["metadata"]["generation"], 2);
    }

    #[test]
    fn apply_removes_fields_its_manager_dropped() {
        let (mut s, w, _) = store();
        let apply = |s: &mut Store, manager: &str, body: &str, target: Target| {
            s.patch(
                w,
                "ns",
                "a",
                PatchKind::Apply,
                body.as_bytes(),
                target,
                Some(manager),
            )
            .unwrap()
        };
        apply(
            &mut s,
            "op",
            r#"{"metadata":{"name":"a"},"spec":{"x":1,"y":{"z":2}}}"#,
            Target::Main,
        );
        apply(
            &mut s,
            "op",
            r#"{"status":{"message":"boom","ready":false}}"#,
            Target::Status,
        );
        apply(&mut s, "other", r#"{"spec":{"x":1}}"#, Target::Main);
        s.patch(
            w,
            "ns",
            "a",
            PatchKind::Merge,
            br#"{"spec":{"manual":true}}"#,
            Target::Main,
            None,
        )
        .unwrap();
        // "op" drops spec.x (still applied by "other") and spec.y; the merge-patched field stays.
        let main = apply(&mut s, "op", r#"{"spec":{"w":0}}"#, Target::Main);
        assert_eq!(main["spec"], json!({"x": 1, "w": 0, "manual": true}));
        assert_eq!(
            main["status"]["message"], "boom",
            "a main apply leaves the status alone"
        );
        let status = apply(&mut s, "op", r#"{"status":{"ready":true}}"#, Target::Status);
        assert_eq!(status["status"], json!({"ready": true}));
        assert_eq!(
            status["spec"]["w"], 0,
            "a status apply leaves the spec alone"
        );
        assert!(
            s.patch(w, "ns", "a", PatchKind::Apply, b"{}", Target::Main, None)
                .is_err()
        );
    }

    #[test]
    fn secrets_fold_string_data_and_default_their_type() {
        let (mut s, _, secrets) = store();
        let created = s
            .create(
                secrets,
                Some("ns"),
                json!({"metadata": {"name": "s"}, "stringData": {"token": "abcd", "e": ""}}),
            )
            .unwrap();
        assert_eq!(created["data"], json!({"token": "YWJjZA==", "e": ""}));
        assert!(created.get("stringData").is_none());
        assert_eq!(created["type"], "Opaque");
        assert_eq!(crate::builtin::base64(b"a"), "YQ==");
        assert_eq!(crate::builtin::base64(b"ab"), "YWI=");
        let retyped = s.patch(
            secrets,
            "ns",
            "s",
            PatchKind::Merge,
            br#"{"type":"kubernetes.io/tls"}"#,
            Target::Main,
            None,
        );
        assert_eq!(retyped.unwrap_err().code, 422);
        s.patch(
            secrets,
            "ns",
            "s",
            PatchKind::Merge,
            br#"{"immutable":true}"#,
            Target::Main,
            None,
        )
        .unwrap();
        let changed = s.patch(
            secrets,
            "ns",
            "s",
            PatchKind::Merge,
            br#"{"stringData":{"token":"x"}}"#,
            Target::Main,
            None,
        );
        assert_eq!(changed.unwrap_err().code, 422);
    }

    #[test]
    fn finalizers_hold_deletion_until_removed() {
        let (mut s, w, _) = store();
        s.create(
            w,
            Some("ns"),
            json!({"metadata": {"name": "a", "finalizers": ["x/y"]}}),
        )
        .unwrap();
        let DeleteOutcome::Pending(p) = s.delete(w, "ns", "a", &Preconditions::default()).unwrap()
        else {
            panic!("expected pending deletion");
        };
        assert!(p["metadata"]["deletionTimestamp"].is_string());
        assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 0);
        let add = s.patch(
            w,
            "ns",
            "a",
            PatchKind::Merge,
            br#"{"metadata":{"finalizers":["x/y","new"]}}"#,
            Target::Main,
            None,
        );
        assert_eq!(add.unwrap_err().code, 422);
        s.patch(
            w,
            "ns",
            "a",
            PatchKind::Merge,
            br#"{"metadata":{"finalizers":null}}"#,
            Target::Main,
            None,
        )
        .unwrap();
        assert_eq!(s.get(w, "ns", "a").unwrap_err().code, 404);
    }

    #[test]
    fn garbage_collection_follows_owner_uids() {
        let (mut s, w, secrets) = store();
        let owner = s
            .create(w, Some("ns"), json!({"metadata": {"name": "a"}}))
            .unwrap();
        let other = s
            .create(w, Some("ns"), json!({"metadata": {"name": "b"}}))
            .unwrap();
        let uid = |o: &Value| meta_str(o, "uid").unwrap().to_string();
        let reference = |o: &Value| json!({"apiVersion": "example.dev/v1", "kind": "Widget", "name": meta_str(o, "name"), "uid": uid(o)});
        s.create(
            secrets,
            Some("ns"),
            json!({"metadata": {"name": "only", "ownerReferences": [reference(&owner)]}}),
        )
        .unwrap();
        s.create(
            secrets,
            Some("ns"),
            json!({"metadata": {"name": "shared", "ownerReferences": [reference(&owner), reference(&other)]}}),
        )
        .unwrap();
        s.delete(w, "ns", "a", &Preconditions::default()).unwrap();
        assert_eq!(s.get(secrets, "ns", "only").unwrap_err().code, 404);
        let shared = s.get(secrets, "ns", "shared").unwrap();
        assert_eq!(owner_uids(&shared), vec![uid(&other)]);
    }

    #[test]
    fn watch_history_and_compaction() {
        let (mut s, w, _) = store();
        let a = s
            .create(w, Some("ns"), json!({"metadata": {"name": "a"}}))
            .unwrap();
        let from: u64 = rv(&a).parse().unwrap();
        s.create(w, Some("ns"), json!({"metadata": {"name": "b"}}))
            .unwrap();
        let start = s.start_watch(w, Some(from)).unwrap();
        assert_eq!(start.replay.len(), 1);
        assert_eq!(s.start_watch(w, None).unwrap().replay.len(), 2);
        s.compact();
        assert_eq!(
            s.start_watch(w, Some(from)).err().map(|e| e.code),
            Some(410)
        );
        assert!(s.start_watch(w, Some(s.resource_version())).is_ok());

        // A bounded history: only the last `limit` changes can be replayed.
        s.set_history_limit(2);
        let before = s.resource_version();
        for name in ["c", "d", "e"] {
            s.create(w, Some("ns"), json!({"metadata": {"name": name}}))
                .unwrap();
        }
        assert_eq!(
            s.start_watch(w, Some(before)).err().map(|e| e.code),
            Some(410)
        );
        assert_eq!(s.start_watch(w, Some(before + 1)).unwrap().replay.len(), 2);
    }
}
