//! Patch bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge patch and server-side apply.
//!
//! Approximations (enough for controller tests, not a full API server):
//! - strategic merge patch is applied as a JSON merge patch after dropping `$`-directives, except that
//!   `metadata.finalizers` merges as a set and honours `$deleteFromPrimitiveList/finalizers`; other lists are
//!   replaced, not merged by key (real Kubernetes merges e.g. `containers` by name);
//! - server-side apply merges the applied configuration into the live object; the store remembers which leaf
//!   fields each field manager applied (not shown as managedFields) and removes a field that manager applied
//!   before and leaves out now, unless another manager applied it too. Lists are atomic (no list-map merge
//!   by key), updates and merge patches take no ownership, and there are no ownership conflicts: `force` is
//!   accepted and has no effect.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchKind {
    /// The patch type of a `Content-Type` header value (parameters such as `; charset=utf-8` are ignored).
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let mime = content_type.split(';').next().unwrap_or("").trim();
        match mime {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/json-patch+json" => Some(Self::Json),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Parses a patch body of the given kind into JSON (apply bodies may be YAML, which includes JSON).
pub fn parse_body(kind: PatchKind, body: &[u8]) -> Result<Value, String> {
    match kind {
        PatchKind::Apply => {
            let text =
                std::str::from_utf8(body).map_err(|e| format!("apply body is not UTF-8: {e}"))?;
            serde_yaml::from_str::<Value>(text)
                .map_err(|e| format!("apply body is not YAML/JSON: {e}"))
        }
        _ => serde_json::from_slice(body).map_err(|e| format!("patch body is not JSON: {e}")),
    }
}

/// Applies a parsed patch to `doc`, returning the patched document.
pub fn apply(kind: PatchKind, doc: &Value, patch: &Value) -> Result<Value, String> {
    let mut out = doc.clone();
    match kind {
        PatchKind::Merge | PatchKind::Apply => {
            if !patch.is_object() {
                return Err("a merge patch must be a JSON object".into());
            }
            json_patch::merge(&mut out, patch);
        }
        PatchKind::Strategic => {
            if !patch.is_object() {
                return Err("a strategic merge patch must be a JSON object".into());
            }
            let patch = merge_finalizers(doc, patch);
            json_patch::merge(&mut out, &strip_directives(&patch));
        }
        PatchKind::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| format!("invalid JSON patch: {e}"))?;
            for op in ops.0 {
                // Like Kubernetes (evanphx/json-patch), a `test` for null passes on a missing path:
                // kube-runtime's finalizer helper relies on it when it adds the first finalizer.
                if let json_patch::PatchOperation::Test(t) = &op
                    && t.value.is_null()
                    && out.pointer(t.path.as_str()).is_none()
                {
                    continue;
                }
                json_patch::patch(&mut out, std::slice::from_ref(&op))
                    .map_err(|e| format!("JSON patch failed: {e}"))?;
            }
        }
    }
    Ok(out)
}

/// `metadata.finalizers` has patchStrategy=merge: a strategic patch adds to the list, and
/// `$deleteFromPrimitiveList/finalizers` removes from it.
fn merge_finalizers(doc: &Value, patch: &Value) -> Value {
    let added = patch
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array);
    let removed = patch
        .pointer("/metadata/$deleteFromPrimitiveList~1finalizers")
        .and_then(Value::as_array);
    if added.is_none() && removed.is_none() {
        return patch.clone();
    }
    let mut list: Vec<Value> = doc
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for f in added.into_iter().flatten() {
        if !list.contains(f) {
            list.push(f.clone());
        }
    }
    list.retain(|f| !removed.is_some_and(|r| r.contains(f)));
    let mut out = patch.clone();
    out["metadata"]["finalizers"] = Value::Array(list);
    out
}

/// Leaf paths of an applied configuration (objects recurse; lists and scalars are leaves), without the
/// identifying fields, which nobody owns.
pub fn leaf_paths(applied: &Value) -> Vec<Vec<String>> {
    fn walk(v: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    path.push(k.clone());
                    walk(child, path, out);
                    path.pop();
                }
            }
            Value::Null => {}
            _ => out.push(path.clone()),
        }
    }
    let mut out = Vec::new();
    walk(applied, &mut Vec::new(), &mut out);
    let identity: [&[&str]; 5] = [
        &["apiVersion"],
        &["kind"],
        &["metadata", "name"],
        &["metadata", "namespace"],
        &["metadata", "resourceVersion"],
    ];
    out.retain(|p| {
        !identity
            .iter()
            .any(|id| p.iter().map(String::as_str).eq(id.iter().copied()))
    });
    out
}

/// Removes the field at `path`, then the objects left empty above it (but not top-level fields).
pub fn remove_path(doc: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cursor = &mut *doc;
    for p in parents {
        match cursor.get_mut(p.as_str()) {
            Some(next) => cursor = next,
            None => return,
        }
    }
    if let Some(m) = cursor.as_object_mut() {
        m.remove(last.as_str());
    }
    if parents.len() > 1 {
        let parent_empty = doc
            .pointer(&pointer(parents))
            .is_some_and(|v| v.as_object().is_some_and(|m| m.is_empty()));
        if parent_empty {
            remove_path(doc, parents);
        }
    }
}

fn pointer(path: &[String]) -> String {
    path.iter()
        .map(|p| format!("/{}", p.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// Removes strategic-merge directives (`$patch`, `$setElementOrder/...`, `$retainKeys`, ...).
fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_types() {
        assert_eq!(
            PatchKind::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchKind::Merge)
        );
        assert_eq!(
            PatchKind::from_content_type("application/apply-patch+yaml"),
            Some(PatchKind::Apply)
        );
        assert_eq!(PatchKind::from_content_type("text/plain"), None);
    }

    #[test]
    fn merge_json_strategic_apply() {
        let doc = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        let merged = apply(
            PatchKind::Merge,
            &doc,
            &json!({"a": {"b": null, "d": 3}, "l": [3]}),
        )
        .unwrap();
        assert_eq!(merged, json!({"a": {"c": 2, "d": 3}, "l": [3]}));

        let ops = json!([{"op": "replace", "path": "/a/b", "value": 5}, {"op": "add", "path": "/l/-", "value": 9}]);
        let patched = apply(PatchKind::Json, &doc, &ops).unwrap();
        assert_eq!(patched, json!({"a": {"b": 5, "c": 2}, "l": [1, 2, 9]}));
        let first_finalizer = json!([{"op": "test", "path": "/metadata/finalizers", "value": null}, {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}]);
        let with_finalizer =
            apply(PatchKind::Json, &json!({"metadata": {}}), &first_finalizer).unwrap();
        assert_eq!(with_finalizer["metadata"]["finalizers"], json!(["f"]));
        let failing = json!([{"op": "test", "path": "/a/b", "value": 7}]);
        assert!(apply(PatchKind::Json, &doc, &failing).is_err());

        let smp = json!({"$setElementOrder/l": [1], "a": {"b": 4}});
        assert_eq!(
            apply(PatchKind::Strategic, &doc, &smp).unwrap(),
            json!({"a": {"b": 4, "c": 2}, "l": [1, 2]})
        );

        let with_finalizer = json!({"metadata": {"finalizers": ["a"]}});
        let added = apply(
            PatchKind::Strategic,
            &with_finalizer,
            &json!({"metadata": {"finalizers": ["b"]}}),
        )
        .unwrap();
        assert_eq!(added["metadata"]["finalizers"], json!(["a", "b"]));
        let dropped = apply(
            PatchKind::Strategic,
            &added,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        )
        .unwrap();
        assert_eq!(dropped["metadata"]["finalizers"], json!(["b"]));

        let yaml = parse_body(PatchKind::Apply, b"a:\n  c: 7\n").unwrap();
        assert_eq!(
            apply(PatchKind::Apply, &doc, &yaml).unwrap(),
            json!({"a": {"b": 1, "c": 7}, "l": [1, 2]})
        );
        assert!(apply(PatchKind::Merge, &doc, &json!([1])).is_err());
    }

    #[test]
    fn apply_paths_and_removal() {
        let applied = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "n", "labels": {"a": "1"}}, "spec": {"l": [1], "m": {"k": "v"}, "e": {}}});
        let mut paths = leaf_paths(&applied);
        paths.sort();
        let strs: Vec<String> = paths.iter().map(|p| p.join(".")).collect();
        assert_eq!(strs, ["metadata.labels.a", "spec.e", "spec.l", "spec.m.k"]);

        let mut doc = json!({"spec": {"m": {"k": "v"}, "keep": 1}, "status": {"x": {"y": 1}}});
        remove_path(&mut doc, &["spec".into(), "m".into(), "k".into()]);
        remove_path(&mut doc, &["status".into(), "x".into(), "y".into()]);
        assert_eq!(doc, json!({"spec": {"keep": 1}, "status": {}}));
    }
}
