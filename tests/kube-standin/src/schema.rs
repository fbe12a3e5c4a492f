//! What the API server does with a CRD's structural schema on every write: prune unknown fields, apply
//! `default`s, and validate (`type`, `required`, `enum`, `pattern`, `minimum`/`maximum`, `minLength`/`maxLength`,
//! `minItems`/`maxItems`, `nullable`, and the string `format`s `date-time`, `date`, `uuid`, `byte`).
//!
//! CEL rules (`x-kubernetes-validations`) are evaluated by kube-cel (the library behind kube's
//! `cel` feature) once the structural checks pass, as the API server does, with ratcheting as in
//! Kubernetes 1.30+ where it matters here: an update that leaves `spec` as it was (a finalizer, an
//! annotation) is not refused for a rule its stored value already breaks.
//!
//! Not done: other `format`s, `oneOf`/`anyOf`/`allOf`/`not`, list-type uniqueness, per-field ratcheting of a
//! changed `spec`, and pruning or validation inside `metadata` (only `apiVersion`, `kind`, `metadata`
//! are kept at the root whatever the schema says, as in Kubernetes).

use std::cell::RefCell;
use std::collections::HashMap;

use serde_json::{Map, Value};

/// A schema's pattern, compiled once per thread (a CRD's few patterns are checked on every write).
fn compiled(pattern: &str) -> Result<regex::Regex, regex::Error> {
    thread_local! {
        static CACHE: RefCell<HashMap<String, Result<regex::Regex, regex::Error>>> = RefCell::new(HashMap::new());
    }
    CACHE.with_borrow_mut(|c| {
        c.entry(pattern.to_string())
            .or_insert_with(|| regex::Regex::new(pattern))
            .clone()
    })
}

/// The CEL rule failures of `obj`, as the API server words them (`spec.duration: Invalid value: ...`).
pub fn cel_errors(
    rt: &super::types::ResourceType,
    schema: &Value,
    obj: &Value,
    old: Option<&Value>,
) -> Vec<String> {
    // Ratcheting: the rules speak to a changed spec (status has no rules in these CRDs).
    if old.is_some_and(|o| o.get("spec") == obj.get("spec")) {
        return Vec::new();
    }
    thread_local! {
        static COMPILED: RefCell<HashMap<String, (Value, std::rc::Rc<kube_cel::CompiledSchema>)>> =
            RefCell::new(HashMap::new());
    }
    let key = format!("{}/{}", rt.group, rt.plural);
    let compiled = COMPILED.with_borrow_mut(|c| match c.get(&key) {
        Some((s, compiled)) if s == schema => compiled.clone(),
        _ => {
            let compiled = std::rc::Rc::new(kube_cel::compile_schema(schema));
            c.insert(key.clone(), (schema.clone(), compiled.clone()));
            compiled
        }
    });
    thread_local! {
        static VALIDATOR: kube_cel::Validator = kube_cel::Validator::new();
    }
    match VALIDATOR.with(|v| v.validate_compiled(&compiled, obj, old)) {
        Ok(()) => Vec::new(),
        Err(e) => e
            .into_vec()
            .into_iter()
            .map(|v| format!("{}: Invalid value: {}", v.field_path, v.message))
            .collect(),
    }
}

/// The schema without its CEL rules (an older CRD that had none).
pub fn without_rules(schema: &Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(o) => {
                o.remove("x-kubernetes-validations");
                o.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut out = schema.clone();
    strip(&mut out);
    out
}

/// Prunes unknown fields and fills in defaults, in place.
pub fn prune_and_default(schema: &Value, obj: &mut Value) {
    walk(schema, obj, true);
}

fn preserves_unknown(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn nullable(schema: &Value) -> bool {
    schema
        .get("nullable")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn walk(schema: &Value, value: &mut Value, root: bool) {
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            if let Some(props) = props {
                if !preserves_unknown(schema) && additional.is_none() {
                    map.retain(|k, _| {
                        props.contains_key(k)
                            || (root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
                    });
                }
                default_properties(props, map);
                for (k, child) in map.iter_mut() {
                    if root && k == "metadata" {
                        continue;
                    }
                    if let Some(child_schema) = props.get(k) {
                        walk(child_schema, child, false);
                    }
                }
            } else if let Some(additional) = additional {
                for child in map.values_mut() {
                    walk(additional, child, false);
                }
            } else if !preserves_unknown(schema)
                && schema.get("type").and_then(Value::as_str) == Some("object")
            {
                // An object without properties, additionalProperties or preserve-unknown-fields keeps nothing.
                map.retain(|k, _| root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata"));
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for item in items {
                    walk(item_schema, item, false);
                }
            }
        }
        _ => {}
    }
}

fn default_properties(props: &Map<String, Value>, map: &mut Map<String, Value>) {
    for (k, prop) in props {
        let Some(default) = prop.get("default") else {
            continue;
        };
        match map.get(k) {
            None => {
                map.insert(k.clone(), default.clone());
            }
            // A null for a non-nullable field is dropped before defaulting.
            Some(Value::Null) if !nullable(prop) => {
                map.insert(k.clone(), default.clone());
            }
            _ => {}
        }
    }
}

/// Validates an object against the schema; returns field errors like the API server's
/// (`spec.size: Invalid value: "x": spec.size in body must be of type integer: "string"`).
pub fn validate(schema: &Value, obj: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(schema, obj, "", &mut errors, true);
    errors
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A string `format` the API server checks (kube-openapi's registry, the ones a CRD here can carry):
/// `date-time` is RFC 3339 with an offset, `date` a full date, `uuid` the 8-4-4-4-12 hex form,
/// `byte` base64. Other formats (and `int32`/`int64` on integers) are accepted as the server does.
fn format_ok(format: &str, s: &str) -> bool {
    match format {
        "date-time" => s.parse::<k8s_openapi::jiff::Timestamp>().is_ok(),
        "date" => s.len() == 10 && s.parse::<k8s_openapi::jiff::civil::Date>().is_ok(),
        "uuid" => compiled(
            "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
        )
        .is_ok_and(|re| re.is_match(s)),
        "byte" => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(s).is_ok()
        }
        _ => true,
    }
}

fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>, root: bool) {
    let shown = if path.is_empty() { "<root>" } else { path };
    if value.is_null() {
        if !nullable(schema) && !root {
            errors.push(format!(
                "{shown}: Invalid value: \"null\": {shown} in body must be of type {}",
                schema
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("object")
            ));
        }
        return;
    }
    if let Some(want) = schema.get("type").and_then(Value::as_str) {
        let got = type_name(value);
        let ok = got == want || (want == "number" && got == "integer");
        if !ok
            && !schema
                .get("x-kubernetes-int-or-string")
                .and_then(Value::as_bool)
                .unwrap_or(false)
        {
            errors.push(format!(
                "{shown}: Invalid value: \"{got}\": {shown} in body must be of type {want}: \"{got}\""
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        errors.push(format!(
            "{shown}: Unsupported value: {value}: supported values: {}",
            list.join(", ")
        ));
    }
    match value {
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                errors.push(format!(
                    "{shown}: Too long: may not be more than {max} bytes"
                ));
            }
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                errors.push(format!("{shown}: Invalid value: {value}: {shown} in body should be at least {min} chars long"));
            }
            if let Some(format) = schema.get("format").and_then(Value::as_str)
                && !format_ok(format, s)
            {
                errors.push(format!(
                    "{shown}: Invalid value: {value}: {shown} in body must be of type {format}: {value}"
                ));
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                match compiled(pattern) {
                    Ok(re) if !re.is_match(s) => errors.push(format!(
                        "{shown}: Invalid value: {value}: {shown} in body should match '{pattern}'"
                    )),
                    Ok(_) => {}
                    Err(e) => errors.push(format!(
                        "{shown}: the schema pattern {pattern:?} does not compile: {e}"
                    )),
                }
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && x < min
            {
                errors.push(format!("{shown}: Invalid value: {n}: {shown} in body should be greater than or equal to {min}"));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && x > max
            {
                errors.push(format!("{shown}: Invalid value: {n}: {shown} in body should be less than or equal to {max}"));
            }
        }
        Value::Array(items) => {
            let len = items.len() as u64;
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && len > max
            {
                errors.push(format!(
                    "{shown}: Too many: {len}: must have at most {max} items"
                ));
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && len < min
            {
                errors.push(format!("{shown}: Invalid value: {len}: {shown} in body should have at least {min} items"));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), errors, false);
                }
            }
        }
        Value::Object(map) => {
            for req in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(req) = req.as_str()
                    && !map.contains_key(req)
                {
                    errors.push(format!("{}: Required value", child_path(path, req)));
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, child) in map {
                if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(s) = props.and_then(|p| p.get(k)).or(additional) {
                    check(s, child, &child_path(path, k), errors, false);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["size"],
                    "properties": {
                        "size": {"type": "integer", "minimum": 1, "maximum": 10},
                        "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
                        "duration": {"type": "string", "pattern": "^[0-9]+(s|m|h)$"},
                        "tags": {"type": "object", "additionalProperties": {"type": "string"}},
                        "items": {"type": "array", "maxItems": 2, "items": {"type": "object", "properties": {"n": {"type": "string", "default": "x"}}}},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
                    }
                },
                "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
            }
        })
    }

    #[test]
    fn prunes_unknown_fields_and_defaults() {
        let mut obj = json!({
            "apiVersion": "x/v1", "kind": "X", "metadata": {"name": "n", "anything": 1},
            "spec": {"size": 1, "unknown": true, "tags": {"k": "v"}, "items": [{}], "free": {"a": {"b": 1}}},
            "status": {"ready": true, "extra": 1},
            "top": 1
        });
        prune_and_default(&schema(), &mut obj);
        assert_eq!(
            obj,
            json!({
                "apiVersion": "x/v1", "kind": "X", "metadata": {"name": "n", "anything": 1},
                "spec": {"size": 1, "mode": "a", "tags": {"k": "v"}, "items": [{"n": "x"}], "free": {"a": {"b": 1}}},
                "status": {"ready": true}
            })
        );
    }

    #[test]
    fn validates_types_required_enum_pattern_and_bounds() {
        let good = json!({"spec": {"size": 3, "mode": "b", "duration": "90s"}});
        assert!(validate(&schema(), &good).is_empty());
        let bad = json!({"spec": {"size": 30, "mode": "c", "duration": "soon", "items": [{}, {}, {}], "tags": {"k": 1}}});
        let errors = validate(&schema(), &bad);
        assert_eq!(errors.len(), 5, "{errors:?}");
        let missing = validate(&schema(), &json!({"spec": {"size": "3"}}));
        assert!(
            missing[0].contains("must be of type integer"),
            "{missing:?}"
        );
        let required = validate(&schema(), &json!({"spec": {}}));
        assert_eq!(required, ["spec.size: Required value"]);
    }

    #[test]
    fn validates_string_formats_as_the_api_server_does() {
        let schema = json!({"type": "object", "properties": {"status": {"type": "object", "properties": {
            "at": {"type": "string", "format": "date-time"},
            "day": {"type": "string", "format": "date"},
            "id": {"type": "string", "format": "uuid"},
            "blob": {"type": "string", "format": "byte"},
            "size": {"type": "integer", "format": "int64"},
            "other": {"type": "string", "format": "made-up"}
        }}}});
        let good = json!({"status": {"at": "2026-11-30T12:00:00Z", "day": "2026-11-30",
            "id": "7f9fbd2e-2b8a-4b5e-9c1e-0e4f1a2b3c4d", "blob": "aGk=", "size": 3, "other": "anything"}});
        assert!(
            validate(&schema, &good).is_empty(),
            "{:?}",
            validate(&schema, &good)
        );
        let offset = json!({"status": {"at": "2026-11-30T12:00:00.123456+01:00"}});
        assert!(validate(&schema, &offset).is_empty());
        let bad = json!({"status": {"at": "yesterday", "day": "30/11/2026", "id": "not-a-uuid", "blob": "!!"}});
        let errors = validate(&schema, &bad);
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert_eq!(
            errors[0],
            "status.at: Invalid value: \"yesterday\": status.at in body must be of type date-time: \"yesterday\""
        );
        let no_offset = validate(&schema, &json!({"status": {"at": "2026-11-30T12:00:00"}}));
        assert_eq!(
            no_offset.len(),
            1,
            "RFC 3339 needs an offset: {no_offset:?}"
        );
    }
}
