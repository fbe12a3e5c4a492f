//! Write rules of built-in kinds that controllers notice: Secrets, and apps/v1 workloads (the
//! restart targets of tokens).

use serde_json::{Value, json};

use super::types::{ApiError, ResourceType};

/// What the API server does for built-in kinds on a write. Secrets: `stringData` is folded into `data`
/// (base64), `type` defaults to Opaque and cannot change, and an immutable Secret keeps its data.
pub fn check_builtin(
    rt: &ResourceType,
    name: &str,
    old: Option<&Value>,
    new: &mut Value,
) -> Result<(), ApiError> {
    if rt.group == "apps" {
        return check_workload(rt, name, old, new);
    }
    if !(rt.group.is_empty() && rt.plural == "secrets") {
        return Ok(());
    }
    let obj = new.as_object_mut().expect("object");
    if let Some(Value::Object(string_data)) = obj.remove("stringData") {
        let data = obj.entry("data").or_insert_with(|| json!({}));
        if !data.is_object() {
            *data = json!({});
        }
        for (k, v) in string_data {
            let text = v.as_str().unwrap_or_default();
            data[k.as_str()] = Value::String(base64(text.as_bytes()));
        }
    }
    if obj.get("type").is_none_or(Value::is_null) {
        obj.insert("type".into(), Value::String("Opaque".into()));
    }
    if let Some(old) = old {
        if old.get("type") != new.get("type") {
            return Err(ApiError::invalid(
                rt,
                name,
                "type: Invalid value: field is immutable",
            ));
        }
        if old.get("immutable") == Some(&Value::Bool(true))
            && (old.get("data") != new.get("data")
                || new.get("immutable") != Some(&Value::Bool(true)))
        {
            return Err(ApiError::invalid(
                rt,
                name,
                "data: Forbidden: field is immutable when `immutable` is set",
            ));
        }
    }
    Ok(())
}

/// The API server's own patterns (apimachinery `validation.IsQualifiedName`, `IsValidLabelValue`).
const QUALIFIED_NAME: &str = r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$";
const DNS1123_SUBDOMAIN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// All annotations of one object together (`TotalAnnotationSizeLimitB`).
const ANNOTATIONS_LIMIT: usize = 256 * 1024;
/// events.k8s.io/v1 `note` (`NoteLengthLimit`).
pub const EVENT_NOTE_LIMIT: usize = 1024;

fn matches(pattern: &str, text: &str) -> bool {
    static CACHE: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, regex::Regex>>,
    > = std::sync::OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    cache
        .entry(pattern.to_string())
        .or_insert_with(|| regex::Regex::new(pattern).expect("valid pattern"))
        .is_match(text)
}

/// Why `key` is not a qualified name, in the API server's words (None: it is one).
fn qualified_name_error(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if name.contains('/') {
        return Some("a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character with an optional DNS subdomain prefix and '/'".into());
    }
    if let Some(p) = prefix {
        if p.is_empty() {
            return Some("prefix part must be non-empty".into());
        }
        if p.len() > 253 || !matches(DNS1123_SUBDOMAIN, p) {
            return Some("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into());
        }
    }
    if name.is_empty() {
        return Some("name part must be non-empty".into());
    }
    if name.len() > 63 {
        return Some("name part must be no more than 63 characters".into());
    }
    if !matches(QUALIFIED_NAME, name) {
        return Some("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into());
    }
    None
}

/// Label and annotation syntax, checked on every write of every kind, as `ValidateObjectMeta` does:
/// keys are qualified names (annotation keys lowercased first), label values at most 63 characters of
/// the same alphabet, annotations at most 256 KiB together. 422 Invalid otherwise.
pub fn check_metadata(rt: &ResourceType, name: &str, obj: &Value) -> Result<(), ApiError> {
    let meta = obj.get("metadata");
    let map = |field: &str| meta.and_then(|m| m.get(field)).and_then(Value::as_object);
    let invalid = |field: String| Err(ApiError::invalid(rt, name, &field));
    for (key, value) in map("labels").into_iter().flatten() {
        if let Some(why) = qualified_name_error(key) {
            return invalid(format!("metadata.labels: Invalid value: {key:?}: {why}"));
        }
        let v = value.as_str().unwrap_or_default();
        if v.len() > 63 {
            return invalid(format!(
                "metadata.labels: Invalid value: {v:?}: must be no more than 63 characters"
            ));
        }
        if !v.is_empty() && !matches(QUALIFIED_NAME, v) {
            return invalid(format!(
                "metadata.labels: Invalid value: {v:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
            ));
        }
    }
    let mut total = 0;
    for (key, value) in map("annotations").into_iter().flatten() {
        if let Some(why) = qualified_name_error(&key.to_lowercase()) {
            return invalid(format!(
                "metadata.annotations: Invalid value: {key:?}: {why}"
            ));
        }
        total += key.len() + value.as_str().unwrap_or_default().len();
    }
    if total > ANNOTATIONS_LIMIT {
        return invalid(format!(
            "metadata.annotations: Too long: may not be more than {ANNOTATIONS_LIMIT} bytes"
        ));
    }
    Ok(())
}

/// events.k8s.io/v1 Events: a type of Normal or Warning, an eventTime, and a note of at most 1024 bytes
/// (the limit a long error message runs into).
pub fn check_event(rt: &ResourceType, name: &str, obj: &Value) -> Result<(), ApiError> {
    if !(rt.group == "events.k8s.io" && rt.plural == "events") {
        return Ok(());
    }
    let invalid = |field: String| Err(ApiError::invalid(rt, name, &field));
    let note = obj.get("note").and_then(Value::as_str).unwrap_or_default();
    if note.len() > EVENT_NOTE_LIMIT {
        return invalid(format!(
            "note: Too long: may not be more than {EVENT_NOTE_LIMIT} bytes"
        ));
    }
    match obj.get("type").and_then(Value::as_str) {
        Some("Normal" | "Warning") => {}
        other => {
            return invalid(format!(
                "type: Unsupported value: {:?}: supported values: \"Normal\", \"Warning\"",
                other.unwrap_or_default()
            ));
        }
    }
    if obj.get("eventTime").is_none_or(Value::is_null) {
        return invalid("eventTime: Required value".into());
    }
    Ok(())
}

pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// apps/v1 Deployments, StatefulSets and DaemonSets, as the API server treats them: the defaults it
/// fills in (the strategy, history limit, the pod template's restart and DNS policy, grace period,
/// each container's pull policy and termination message), and the validation a manifest runs into:
/// a selector that matches the template's labels and cannot change, and containers with a name and
/// an image.
fn check_workload(
    rt: &ResourceType,
    name: &str,
    old: Option<&Value>,
    new: &mut Value,
) -> Result<(), ApiError> {
    let invalid = |msg: &str| Err(ApiError::invalid(rt, name, msg));
    let spec = new
        .as_object_mut()
        .expect("object")
        .entry("spec")
        .or_insert_with(|| json!({}));
    let defaults = match rt.plural.as_str() {
        "deployments" => json!({
            "replicas": 1, "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
        }),
        "statefulsets" => json!({
            "replicas": 1, "revisionHistoryLimit": 10, "podManagementPolicy": "OrderedReady",
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
        }),
        "daemonsets" => json!({
            "revisionHistoryLimit": 10,
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
        }),
        _ => return Ok(()),
    };
    fill(spec, &defaults);
    let Some(selector) = spec.get("selector").filter(|s| s.is_object()).cloned() else {
        return invalid("spec.selector: Required value");
    };
    let labels = spec
        .pointer("/template/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let match_labels = selector["matchLabels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    if match_labels.is_empty() && selector.get("matchExpressions").is_none() {
        return invalid("spec.selector: Invalid value: empty selector is invalid for deployment");
    }
    if match_labels.iter().any(|(k, v)| labels.get(k) != Some(v)) {
        return invalid(&format!(
            "spec.template.metadata.labels: Invalid value: {}: `selector` does not match template `labels`",
            Value::Object(labels)
        ));
    }
    if let Some(old) = old
        && old.pointer("/spec/selector") != Some(&selector)
    {
        return invalid(&format!(
            "spec.selector: Invalid value: {selector}: field is immutable"
        ));
    }
    let pod = spec.pointer_mut("/template/spec").filter(|p| p.is_object());
    let Some(pod) = pod else {
        return invalid("spec.template.spec.containers: Required value");
    };
    fill(
        pod,
        &json!({
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "securityContext": {}, "schedulerName": "default-scheduler",
        }),
    );
    let containers = pod.get_mut("containers").and_then(Value::as_array_mut);
    let Some(containers) = containers.filter(|c| !c.is_empty()) else {
        return invalid("spec.template.spec.containers: Required value");
    };
    for (i, c) in containers.iter_mut().enumerate() {
        if c.get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return invalid(&format!(
                "spec.template.spec.containers[{i}].name: Required value"
            ));
        }
        let Some(image) = c.get("image").and_then(Value::as_str).map(str::to_string) else {
            return invalid(&format!(
                "spec.template.spec.containers[{i}].image: Required value"
            ));
        };
        // `:latest`, or no tag, is pulled every time.
        let tag = image.rsplit('/').next().unwrap_or_default();
        let latest = !tag.contains(':') || tag.ends_with(":latest");
        let pull = if latest { "Always" } else { "IfNotPresent" };
        fill(
            c,
            &json!({
                "imagePullPolicy": pull, "resources": {},
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
            }),
        );
    }
    Ok(())
}

/// Fills in `defaults` where `obj` has no value (recursively into objects both have).
fn fill(obj: &mut Value, defaults: &Value) {
    let (Some(obj), Some(defaults)) = (obj.as_object_mut(), defaults.as_object()) else {
        return;
    };
    for (k, d) in defaults {
        match obj.get_mut(k) {
            None | Some(Value::Null) => {
                obj.insert(k.clone(), d.clone());
            }
            Some(v) => fill(v, d),
        }
    }
}
