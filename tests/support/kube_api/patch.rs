//! Patch bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge patch and server-side apply.
//!
//! Approximations (enough for controller tests, not a full API server):
//! - strategic merge patch is applied as a JSON merge patch after dropping `$`-directives: lists are replaced,
//!   not merged by key (real Kubernetes merges e.g. `metadata.finalizers` and `containers` by key);
//! - server-side apply merges the applied fields into the live object (a merge patch of the applied
//!   configuration): no managedFields, no ownership conflicts, and a field left out of a later apply is not
//!   removed. `force` is accepted and has no effect.

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
            json_patch::merge(&mut out, &strip_directives(patch));
        }
        PatchKind::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| format!("invalid JSON patch: {e}"))?;
            json_patch::patch(&mut out, &ops).map_err(|e| format!("JSON patch failed: {e}"))?;
        }
    }
    Ok(out)
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
        let failing = json!([{"op": "test", "path": "/a/b", "value": 7}]);
        assert!(apply(PatchKind::Json, &doc, &failing).is_err());

        let smp = json!({"$setElementOrder/l": [1], "a": {"b": 4}});
        assert_eq!(
            apply(PatchKind::Strategic, &doc, &smp).unwrap(),
            json!({"a": {"b": 4, "c": 2}, "l": [1, 2]})
        );

        let yaml = parse_body(PatchKind::Apply, b"a:\n  c: 7\n").unwrap();
        assert_eq!(
            apply(PatchKind::Apply, &doc, &yaml).unwrap(),
            json!({"a": {"b": 1, "c": 7}, "l": [1, 2]})
        );
        assert!(apply(PatchKind::Merge, &doc, &json!([1])).is_err());
    }
}
