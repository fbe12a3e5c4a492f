//! The HTTP face of the stand-in: Kubernetes REST paths on top of `Store`.
//!
//! One fallback handler parses the path itself (`/api/v1/...`, `/apis/{group}/{version}/...`, with or without
//! `namespaces/{ns}`), because the real URL space does not fit a static router (e.g. `/api/v1/namespaces/x` is a
//! Namespace while `/api/v1/namespaces/x/secrets` is a list).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::builtin::check_event;
use super::events::{self, is_events_v1};
use super::patch::PatchKind;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{ApiError, DeleteOutcome, Preconditions, ResourceType, Store, Target, TypeId};
use super::watch::{self, WatchRequest};

/// One API request, as counted for traffic assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// get, list, watch, create, update, patch, delete, deletecollection (Kubernetes audit verbs).
    pub verb: String,
    pub group: String,
    pub plural: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// `dryRun=All`: checked, not stored.
    pub dry_run: bool,
    /// Metadata only (`as=PartialObjectMetadata`): no Secret data in the answer.
    pub metadata_only: bool,
    /// Who asked: the bearer token sent (`FakeKube::client_as`), None without one.
    pub user: Option<String>,
}

/// A failure to inject into matching requests.
#[derive(Debug, Clone)]
pub struct Fault {
    pub verb: String,
    pub plural: String,
    pub remaining: u32,
    pub code: u16,
    /// The Status message; None: a generic "injected failure" text with reason InternalError.
    pub message: Option<String>,
}

/// State shared by the HTTP handlers and the test API.
pub struct Shared {
    pub store: Arc<Mutex<Store>>,
    pub requests: Mutex<Vec<RequestRecord>>,
    pub faults: Mutex<Vec<Fault>>,
    pub bookmark_interval_ms: AtomicU64,
    /// Upper bound for a watch's duration, whatever timeoutSeconds says.
    pub max_watch_ms: AtomicU64,
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// What each request costs (latency, serialised writes, APF); free unless set.
    pub cost: Mutex<Arc<super::cost::Cost>>,
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

fn json_response(code: StatusCode, value: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

fn error_response(err: &ApiError) -> Response {
    let code = StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &err.to_status())
}

fn not_found_path() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

/// A parsed resource path.
struct Route {
    type_id: TypeId,
    group: String,
    version: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

enum Parsed {
    Resource(Route),
    Discovery(Value),
}

fn parse_path(store: &Store, path: &str) -> Result<Parsed, ApiError> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => {
            return Ok(Parsed::Discovery(
                json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-standin", "platform": "linux/amd64"}),
            ));
        }
        ["api"] => {
            return Ok(Parsed::Discovery(
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            ));
        }
        ["apis"] => return Ok(Parsed::Discovery(group_list(store))),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found_path()),
    };
    if rest.is_empty() {
        return Ok(Parsed::Discovery(resource_list(store, group, version)));
    }
    let namespaced_plural = |p: &str| {
        store
            .type_id(group, version, p)
            .filter(|t| store.resource_type(*t).namespaced)
    };
    let (namespace, plural, tail) = match rest {
        ["namespaces", ns, plural, tail @ ..] if namespaced_plural(plural).is_some() => {
            (Some(ns.to_string()), *plural, tail)
        }
        [plural, tail @ ..] => (None, *plural, tail),
        [] => return Err(not_found_path()),
    };
    let type_id = store
        .type_id(group, version, plural)
        .ok_or_else(not_found_path)?;
    let (name, subresource) = match tail {
        [] => (None, None),
        [name] => (Some(name.to_string()), None),
        [name, sub] => (Some(name.to_string()), Some(sub.to_string())),
        _ => return Err(not_found_path()),
    };
    if let Some(sub) = &subresource
        && !(sub == "status" && store.resource_type(type_id).status_subresource)
    {
        return Err(not_found_path());
    }
    Ok(Parsed::Resource(Route {
        type_id,
        group: group.to_string(),
        version: version.to_string(),
        plural: plural.to_string(),
        namespace,
        name,
        subresource,
    }))
}

fn group_list(store: &Store) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for t in store.types().iter().filter(|t| !t.group.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, vs)) => vs.extend(
                t.versions
                    .iter()
                    .filter(|v| !vs.contains(v))
                    .cloned()
                    .collect::<Vec<_>>(),
            ),
            None => groups.push((t.group.clone(), t.versions.clone())),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(store: &Store, group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for t in store
        .types()
        .iter()
        .filter(|t| t.group == group && t.versions.iter().any(|v| v == version))
    {
        let verbs = [
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ];
        resources.push(json!({"name": t.plural, "singularName": t.kind.to_lowercase(), "namespaced": t.namespaced, "kind": t.kind, "verbs": verbs}));
        if t.status_subresource {
            resources.push(json!({"name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced, "kind": t.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

fn verb_of(method: &Method, route: &Route, params: &Params) -> &'static str {
    match (method.as_str(), route.name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if params.flag("watch") => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = Params(
        Query::<Vec<(String, String)>>::try_from_uri(&uri)
            .map(|q| q.0)
            .unwrap_or_default(),
    );
    let parsed = {
        let store = shared.store.lock().expect("store lock");
        parse_path(&store, uri.path())
    };
    let route = match parsed {
        Ok(Parsed::Resource(r)) => r,
        Ok(Parsed::Discovery(v)) => return json_response(StatusCode::OK, &v),
        Err(e) => return error_response(&e),
    };
    let verb = verb_of(&method, &route, &params);
    shared
        .requests
        .lock()
        .expect("requests lock")
        .push(RequestRecord {
            verb: verb.to_string(),
            group: route.group.clone(),
            plural: route.plural.clone(),
            namespace: route.namespace.clone(),
            name: route.name.clone(),
            subresource: route.subresource.clone(),
            dry_run: params.get("dryRun").is_some(),
            metadata_only: wants_partial(&headers),
            user: headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(String::from),
        });
    // Dry runs of POST and PUT run every check and store nothing; elsewhere they are refused rather
    // than silently committed, so a test relying on one notices.
    let dry_run = params.get("dryRun").is_some();
    if dry_run && !matches!(verb, "create" | "update") {
        return error_response(&ApiError::bad_request(
            "dryRun is supported by the Kubernetes API stand-in for create and update only",
        ));
    }
    // Watches are long-running requests: APF and the commit do not apply to them.
    let cost = shared.cost.lock().expect("cost lock").clone();
    let _seat = match verb {
        "watch" => None,
        _ => match cost
            .admit(
                format!("{method} {}", uri.path()),
                is_write(verb) && !dry_run,
            )
            .await
        {
            Ok(seat) => seat,
            Err(too_many) => return too_many,
        },
    };
    if let Some(fault) = take_fault(&shared, verb, &route.plural) {
        let err = match fault.message {
            // A refusal in the words of an admission webhook or policy engine.
            Some(message) => ApiError::new(fault.code, "Forbidden", message),
            None => ApiError::new(
                fault.code,
                "InternalError",
                format!("injected failure for {verb} {}", route.plural),
            ),
        };
        return error_response(&err);
    }
    let result = match verb {
        "watch" => return watch_response(&shared, &route, &params, wants_partial(&headers)),
        "list" | "get" if wants_partial(&headers) => {
            let answer = if verb == "list" {
                list(&shared, &route, &params)
            } else {
                get(&shared, &route)
            };
            answer.map(|(code, value)| (code, partial_answer(value)))
        }
        "list" => list(&shared, &route, &params),
        "get" => get(&shared, &route),
        "create" => create(&shared, &route, &body, dry_run),
        "update" => replace(&shared, &route, &body, dry_run),
        "patch" => patch(&shared, &route, &params, &headers, &body),
        "delete" => delete(&shared, &route, &params, &body),
        "deletecollection" => delete_collection(&shared, &route, &params),
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method",
        )),
    };
    let (code, value) = match result {
        Ok((code, value)) => (code, value),
        Err(e) => (
            StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            e.to_status(),
        ),
    };
    tracing::debug!(target: "kube_standin", verb, path = uri.path(), code = code.as_u16(), "request");
    json_response(code, &value)
}

/// Verbs that change stored state (and are committed to etcd on a real server).
pub fn is_write(verb: &str) -> bool {
    matches!(
        verb,
        "create" | "update" | "patch" | "delete" | "deletecollection"
    )
}

impl RequestRecord {
    /// A write that was stored (dry runs are checked, not committed).
    pub fn is_write(&self) -> bool {
        is_write(&self.verb) && !self.dry_run
    }

    /// A get or a list (watches are counted apart).
    pub fn is_read(&self) -> bool {
        matches!(self.verb.as_str(), "get" | "list")
    }
}

fn take_fault(shared: &Shared, verb: &str, plural: &str) -> Option<Fault> {
    let mut faults = shared.faults.lock().expect("faults lock");
    let fault = faults.iter_mut().find(|f| {
        f.remaining > 0
            && (f.verb == verb || f.verb == "*")
            && (f.plural == plural || f.plural == "*")
    })?;
    fault.remaining -= 1;
    let taken = fault.clone();
    faults.retain(|f| f.remaining > 0);
    Some(taken)
}

type Outcome = Result<(StatusCode, Value), ApiError>;

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

fn selectors(params: &Params) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(params.get("labelSelector").unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(params.get("fieldSelector").unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    Ok((labels, fields))
}

fn target(route: &Route) -> Target {
    if route.subresource.is_some() {
        Target::Status
    } else {
        Target::Main
    }
}

fn ns(route: &Route) -> &str {
    route.namespace.as_deref().unwrap_or("")
}

/// Lists serve the latest state, whatever resourceVersion / resourceVersionMatch ask for; with `limit` the
/// pages are one snapshot, taken at the first page (`fidelity::Pages`), as etcd serves them.
fn list(shared: &Shared, route: &Route, params: &Params) -> Outcome {
    let (labels, fields) = selectors(params)?;
    let mut store = shared.store.lock().expect("store lock");
    let rt = store.resource_type(route.type_id).clone();
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let (rv, items, next) = match params.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => store.pages.next(token, limit)?,
        None => {
            let items = store.list(route.type_id, route.namespace.as_deref(), &labels, &fields);
            let rv = store.resource_version();
            match limit {
                Some(limit) => {
                    let (page, next) = store.pages.first(rv, items, limit);
                    (rv, page, next)
                }
                None => (rv, items, None),
            }
        }
    };
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(next) = next {
        metadata["continue"] = Value::String(next);
    }
    let items: Vec<Value> = items
        .iter()
        .map(|o| store.render_as(route.type_id, &route.group, &route.version, o))
        .collect();
    Ok((
        StatusCode::OK,
        json!({"kind": format!("{}List", rt.kind), "apiVersion": list_api_version(&rt, route), "metadata": metadata, "items": items}),
    ))
}

/// The envelope's apiVersion: the one asked for (events.k8s.io Events come from the core store).
fn list_api_version(rt: &ResourceType, route: &Route) -> String {
    if is_events_v1(&route.group, &route.plural) {
        format!("{}/{}", events::GROUP, route.version)
    } else {
        rt.api_version(&route.version)
    }
}

/// An events.k8s.io Event body checked as that API checks it (type, eventTime, note length), then
/// in the core shape it is stored in; other bodies as they are.
fn events_in(store: &Store, route: &Route, value: Value) -> Result<Value, ApiError> {
    if !is_events_v1(&route.group, &route.plural) {
        return Ok(value);
    }
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .or(route.name.as_deref())
        .unwrap_or_default()
        .to_string();
    check_event(&events_v1_type(store), &name, &value)?;
    Ok(events::to_core(value))
}

fn events_v1_type(store: &Store) -> ResourceType {
    store
        .types()
        .iter()
        .find(|t| is_events_v1(&t.group, &t.plural))
        .cloned()
        .expect("events.k8s.io is served")
}

/// A patch through events.k8s.io applies to the Event in that shape (its field names), as the real
/// server converts before patching; server-side apply is not modelled there.
fn patch_event_v1(store: &mut Store, route: &Route, kind: PatchKind, body: &[u8]) -> Outcome {
    if kind == PatchKind::Apply {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            "the Kubernetes API stand-in does not model server-side apply of events.k8s.io Events",
        ));
    }
    let name = route.name.as_deref().unwrap_or("");
    let stored = store.get(route.type_id, ns(route), name)?;
    let shown = events::from_core(stored);
    let patch_value = crate::patch::parse_body(kind, body).map_err(ApiError::bad_request)?;
    let patched = crate::patch::apply(kind, &shown, &patch_value)
        .map_err(|e| ApiError::new(422, "Invalid", format!("the patch cannot be applied: {e}")))?;
    let value = events_in(store, route, patched)?;
    let obj = store.replace(route.type_id, ns(route), name, value, Target::Main)?;
    Ok((
        StatusCode::OK,
        store.render_as(route.type_id, &route.group, &route.version, &obj),
    ))
}

fn get(shared: &Shared, route: &Route) -> Outcome {
    let store = shared.store.lock().expect("store lock");
    let obj = store.get(
        route.type_id,
        ns(route),
        route.name.as_deref().unwrap_or(""),
    )?;
    Ok((
        StatusCode::OK,
        store.render_as(route.type_id, &route.group, &route.version, &obj),
    ))
}

fn create(shared: &Shared, route: &Route, body: &[u8], dry_run: bool) -> Outcome {
    if route.name.is_some() {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "POST is not allowed on a named object",
        ));
    }
    let value = parse_json(body)?;
    let mut store = shared.store.lock().expect("store lock");
    let value = events_in(&store, route, value)?;
    store.dry_run = dry_run;
    let obj = store.create(route.type_id, route.namespace.as_deref(), value);
    store.dry_run = false;
    let obj = obj?;
    Ok((
        StatusCode::CREATED,
        store.render_as(route.type_id, &route.group, &route.version, &obj),
    ))
}

fn replace(shared: &Shared, route: &Route, body: &[u8], dry_run: bool) -> Outcome {
    let value = parse_json(body)?;
    let mut store = shared.store.lock().expect("store lock");
    let value = events_in(&store, route, value)?;
    let name = route.name.as_deref().unwrap_or("");
    store.dry_run = dry_run;
    let obj = store.replace(route.type_id, ns(route), name, value, target(route));
    store.dry_run = false;
    let obj = obj?;
    Ok((
        StatusCode::OK,
        store.render_as(route.type_id, &route.group, &route.version, &obj),
    ))
}

fn patch(
    shared: &Shared,
    route: &Route,
    params: &Params,
    headers: &HeaderMap,
    body: &[u8],
) -> Outcome {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let kind = PatchKind::from_content_type(content_type).ok_or_else(|| {
        ApiError::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {content_type:?})"))
    })?;
    let mut store = shared.store.lock().expect("store lock");
    let name = route.name.as_deref().unwrap_or("");
    if is_events_v1(&route.group, &route.plural) {
        return patch_event_v1(&mut store, route, kind, body);
    }
    let existed = store.get(route.type_id, ns(route), name).is_ok();
    let obj = store.patch(
        route.type_id,
        ns(route),
        name,
        kind,
        body,
        target(route),
        params.get("fieldManager"),
    )?;
    let code = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        code,
        store.render_as(route.type_id, &route.group, &route.version, &obj),
    ))
}

fn delete(shared: &Shared, route: &Route, params: &Params, body: &[u8]) -> Outcome {
    let mut options: Value = if body.is_empty() {
        json!({})
    } else {
        parse_json(body)?
    };
    if let (Some(p), Some(o)) = (params.get("propagationPolicy"), options.as_object_mut()) {
        o.insert("propagationPolicy".into(), Value::String(p.to_string()));
    }
    let pre = Preconditions {
        uid: options
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(String::from),
        resource_version: options
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(String::from),
        propagation_policy: propagation_policy(&options)?,
    };
    let mut store = shared.store.lock().expect("store lock");
    let rt = store.resource_type(route.type_id).clone();
    let name = route.name.as_deref().unwrap_or("");
    match store.delete(route.type_id, ns(route), name, &pre)? {
        DeleteOutcome::Pending(obj) => Ok((
            StatusCode::OK,
            store.render_as(route.type_id, &route.group, &route.version, &obj),
        )),
        // Custom resources return the deleted object, built-in kinds a Success Status (as the real registry).
        DeleteOutcome::Deleted(obj) if rt.custom => Ok((
            StatusCode::OK,
            store.render_as(route.type_id, &route.group, &route.version, &obj),
        )),
        DeleteOutcome::Deleted(obj) => Ok((
            StatusCode::OK,
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": name, "group": rt.group, "kind": rt.plural, "uid": obj.pointer("/metadata/uid")},
            }),
        )),
    }
}

/// `propagationPolicy` of DeleteOptions: Orphan, Background or Foreground (anything else: 422 like the real server).
fn propagation_policy(options: &Value) -> Result<Option<String>, ApiError> {
    match options.get("propagationPolicy") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(p)) if matches!(p.as_str(), "Orphan" | "Background" | "Foreground") => {
            Ok(Some(p.clone()))
        }
        Some(other) => Err(ApiError::new(
            422,
            "Invalid",
            format!(
                "propagationPolicy: Unsupported value: {other}: supported values: \"Foreground\", \"Background\", \"Orphan\""
            ),
        )),
    }
}

fn delete_collection(shared: &Shared, route: &Route, params: &Params) -> Outcome {
    let (labels, fields) = selectors(params)?;
    let mut store = shared.store.lock().expect("store lock");
    let rt = store.resource_type(route.type_id).clone();
    let victims = store.list(route.type_id, route.namespace.as_deref(), &labels, &fields);
    let mut items = Vec::new();
    for v in victims {
        let vns = v
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("");
        let vname = v
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        match store.delete(route.type_id, vns, vname, &Preconditions::default()) {
            Ok(DeleteOutcome::Pending(o) | DeleteOutcome::Deleted(o)) => {
                items.push(store.render_as(route.type_id, &route.group, &route.version, &o));
            }
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok((
        StatusCode::OK,
        json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(&route.version), "metadata": {"resourceVersion": store.resource_version().to_string()}, "items": items}),
    ))
}

/// `Accept: application/json;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1`: metadata only.
fn wants_partial(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("as=PartialObjectMetadata"))
}

fn partial_object(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
}

/// A get or list answer as the API server gives it for a metadata-only request.
fn partial_answer(value: Value) -> Value {
    match value.get("items").and_then(Value::as_array) {
        Some(items) => json!({
            "kind": "PartialObjectMetadataList",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": value["metadata"],
            "items": items.iter().map(partial_object).collect::<Vec<_>>(),
        }),
        None => partial_object(&value),
    }
}

fn watch_response(shared: &Shared, route: &Route, params: &Params, partial: bool) -> Response {
    let (labels, fields) = match selectors(params) {
        Ok(s) => s,
        Err(e) => return error_response(&e),
    };
    let from = match params.get("resourceVersion").filter(|s| !s.is_empty()) {
        None => None,
        Some(rv) => match rv.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => {
                return error_response(&ApiError::bad_request(format!(
                    "invalid resource version {rv:?}"
                )));
            }
        },
    };
    let max = Duration::from_millis(shared.max_watch_ms.load(Ordering::Relaxed));
    let asked = params
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(max);
    let req = WatchRequest {
        type_id: route.type_id,
        version: route.version.clone(),
        namespace: route.namespace.clone(),
        labels,
        fields,
        from,
        bookmarks: params.flag("allowWatchBookmarks"),
        send_initial_events: params.flag("sendInitialEvents"),
        timeout: asked.min(max),
        bookmark_interval: Duration::from_millis(
            shared.bookmark_interval_ms.load(Ordering::Relaxed).max(10),
        ),
    };
    let stream = watch::start(shared.store.clone(), req, shared.shutdown.subscribe());
    let events_v1 = is_events_v1(&route.group, &route.plural);
    let stream = futures::StreamExt::map(stream, move |chunk| {
        chunk.map(|bytes| {
            if !events_v1 && !partial {
                return bytes;
            }
            // Each event's object as the request asked for it: the core store's Events as
            // events.k8s.io shows them, and/or metadata only (PartialObjectMetadata).
            let mut out = String::new();
            for line in String::from_utf8_lossy(&bytes).lines() {
                let mut event: Value = serde_json::from_str(line).unwrap_or(Value::Null);
                if event["type"] != "ERROR" {
                    let mut object = event["object"].take();
                    if events_v1 {
                        object = events::from_core(object);
                    }
                    if partial {
                        object = partial_object(&object);
                    }
                    event["object"] = object;
                }
                out.push_str(&event.to_string());
                out.push('\n');
            }
            Bytes::from(out)
        })
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
