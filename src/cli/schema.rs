//! The API server's checks of a custom object, offline: the CRD's OpenAPI schema (types, required,
//! enum, lengths, pattern, bounds, unknown fields as `kubectl apply`'s strict field validation
//! reports them) and then its CEL rules, evaluated by kube-cel (the library behind kube's `cel`
//! feature) on the very schema the operator generates for the cluster (`crds/` is that output).
use serde_json::{Map, Value};

/// A field the object has wrong: its path (`spec.teams[0].name`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Checks `object` against the CRD version's `openAPIV3Schema`. CEL rules run only when the structural
/// checks pass (a rule over a value of the wrong type says nothing useful).
pub fn check(schema: &Value, object: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let Some(obj) = object.as_object() else {
        return vec![FieldError {
            field: String::new(),
            message: "a manifest must be a mapping".into(),
        }];
    };
    // apiVersion, kind and metadata are the API server's own; status is ignored on create/update
    // (a status subresource), so only spec is checked against the schema.
    for key in obj.keys() {
        if !matches!(
            key.as_str(),
            "apiVersion" | "kind" | "metadata" | "spec" | "status"
        ) {
            errors.push(FieldError {
                field: key.clone(),
                message: "unknown field".into(),
            });
        }
    }
    check_name(obj, &mut errors);
    let spec_schema = schema.pointer("/properties/spec").unwrap_or(&Value::Null);
    let spec = prune_nulls(spec_schema, obj.get("spec").cloned().unwrap_or(Value::Null));
    let required = schema
        .get("required")
        .and_then(Value::as_array)
        .is_some_and(|r| r.iter().any(|v| v == "spec"));
    if spec.is_null() {
        if required {
            errors.push(FieldError {
                field: "spec".into(),
                message: "Required value".into(),
            });
        }
    } else {
        check_node(spec_schema, &spec, "spec", &mut errors);
    }
    if !errors.is_empty() {
        return errors;
    }
    let mut root = Map::new();
    if !spec.is_null() {
        root.insert("spec".into(), spec);
    }
    let mut cel_schema = schema.clone();
    if let Some(props) = cel_schema
        .get_mut("properties")
        .and_then(Value::as_object_mut)
    {
        props.remove("status");
    }
    if let Err(e) = kube_cel::Validator::new().validate(&cel_schema, &Value::Object(root), None) {
        for v in e.into_vec() {
            errors.push(FieldError {
                field: v.field_path.clone(),
                message: v.message.clone(),
            });
        }
    }
    errors
}

/// metadata.name is required and, for a custom resource, a DNS subdomain.
fn check_name(obj: &Map<String, Value>, errors: &mut Vec<FieldError>) {
    let name = obj
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str);
    let message = match name {
        None | Some("") => "Required value: name is required",
        Some(n) if n.len() > 253 || !is_dns_subdomain(n) => {
            "Invalid value: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        }
        Some(_) => return,
    };
    errors.push(FieldError {
        field: "metadata.name".into(),
        message: message.into(),
    });
}

fn is_dns_subdomain(s: &str) -> bool {
    s.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}

/// The API server drops a null in a field that is not `nullable` before it validates (structural
/// schema pruning); a nullable field keeps it. Leaves it to `check_node` to type-check what stays.
fn prune_nulls(schema: &Value, value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            Value::Object(
                map.into_iter()
                    .filter_map(|(k, v)| {
                        let sub = props
                            .and_then(|p| p.get(&k))
                            .or(additional)
                            .unwrap_or(&Value::Null);
                        if v.is_null() && sub.get("nullable") != Some(&Value::Bool(true)) {
                            None
                        } else {
                            Some((k, prune_nulls(sub, v)))
                        }
                    })
                    .collect(),
            )
        }
        Value::Array(items) => {
            let sub = schema.get("items").unwrap_or(&Value::Null);
            Value::Array(items.into_iter().map(|v| prune_nulls(sub, v)).collect())
        }
        other => other,
    }
}

fn push(errors: &mut Vec<FieldError>, path: &str, message: String) {
    errors.push(FieldError {
        field: path.to_string(),
        message,
    });
}

fn check_node(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    if value.is_null() {
        return; // kept only where nullable
    }
    let ty = schema.get("type").and_then(Value::as_str);
    let type_ok = match ty {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        push(
            errors,
            path,
            format!(
                "Invalid value: {value}: must be of type {}",
                ty.unwrap_or("")
            ),
        );
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(|v| v.to_string()).collect();
        push(
            errors,
            path,
            format!(
                "Unsupported value: {value}: supported values: {}",
                list.join(", ")
            ),
        );
    }
    match value {
        Value::String(s) => check_string(schema, s, path, errors),
        Value::Number(n) => check_number(schema, n, path, errors),
        Value::Array(items) => {
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && items.len() as u64 > max
            {
                push(
                    errors,
                    path,
                    format!("Too many: {}: must have at most {max} items", items.len()),
                );
            }
            let sub = schema.get("items").unwrap_or(&Value::Null);
            for (i, item) in items.iter().enumerate() {
                check_node(sub, item, &format!("{path}[{i}]"), errors);
            }
        }
        Value::Object(map) => check_object(schema, map, path, errors),
        _ => {}
    }
}

fn check_string(schema: &Value, s: &str, path: &str, errors: &mut Vec<FieldError>) {
    // Kubernetes counts characters (runes), not bytes.
    let len = s.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && len > max
    {
        push(
            errors,
            path,
            format!("Too long: may not be more than {max} bytes"),
        );
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && len < min
    {
        push(
            errors,
            path,
            format!("Invalid value: {s:?}: {path} in body should be at least {min} chars long"),
        );
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        match regex::Regex::new(pattern) {
            Ok(re) if !re.is_match(s) => push(
                errors,
                path,
                format!("Invalid value: {s:?}: {path} in body should match '{pattern}'"),
            ),
            Ok(_) => {}
            Err(e) => push(
                errors,
                path,
                format!("the CRD's pattern does not compile: {e}"),
            ),
        }
    }
}

fn check_number(schema: &Value, n: &serde_json::Number, path: &str, errors: &mut Vec<FieldError>) {
    let Some(v) = n.as_f64() else { return };
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
        && v > max
    {
        push(
            errors,
            path,
            format!("Invalid value: {n}: {path} in body should be less than or equal to {max}"),
        );
    }
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
        && v < min
    {
        push(
            errors,
            path,
            format!("Invalid value: {n}: {path} in body should be greater than or equal to {min}"),
        );
    }
    if schema.get("format").and_then(Value::as_str) == Some("int32")
        && (v > f64::from(i32::MAX) || v < f64::from(i32::MIN))
    {
        push(
            errors,
            path,
            format!("Invalid value: {n}: must fit in int32"),
        );
    }
}

fn check_object(
    schema: &Value,
    map: &Map<String, Value>,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    for key in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !map.contains_key(key) {
            push(errors, &format!("{path}.{key}"), "Required value".into());
        }
    }
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
        && map.len() as u64 > max
    {
        push(
            errors,
            path,
            format!("Too many: {}: must have at most {max} items", map.len()),
        );
    }
    let props = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    for (key, value) in map {
        let child = format!("{path}.{key}");
        match props.and_then(|p| p.get(key)).or(additional) {
            Some(sub) => check_node(sub, value, &child, errors),
            None if preserve => {}
            None => push(errors, &child, "unknown field".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn token_schema() -> Value {
        let crd = crate::api::crds()
            .into_iter()
            .find(|c| c.spec.names.kind == "SystemAccountToken")
            .unwrap();
        serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap()
    }

    fn fields(object: Value) -> Vec<String> {
        check(&token_schema(), &object)
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    fn token(spec: Value) -> Value {
        json!({"apiVersion": "konnect-sa.dev/v1alpha1", "kind": "SystemAccountToken",
               "metadata": {"name": "t"}, "spec": spec})
    }

    #[test]
    fn a_valid_object_passes_and_nulls_of_optional_fields_are_pruned() {
        assert!(
            fields(token(
                json!({"systemAccountRef": {"name": "a"}, "duration": "720h",
                                      "secretTemplate": {"labels": null}})
            ))
            .is_empty()
        );
    }

    #[test]
    fn structural_errors_name_their_field() {
        let got = fields(token(
            json!({"systemAccountRef": {"name": "a"}, "duration": 5, "renewBeforePercentage": 95,
                                      "secretKeey": "x", "rolloutRestartTargets": [{"kind": "Job", "name": "w"}]}),
        ));
        let fields: Vec<&str> = got.iter().map(|l| l.split(": ").next().unwrap()).collect();
        assert_eq!(
            fields,
            [
                "spec.duration",
                "spec.renewBeforePercentage",
                "spec.rolloutRestartTargets[0].kind",
                "spec.secretKeey"
            ],
            "{got:?}"
        );
        assert!(fields_of_missing_spec().contains(&"spec: Required value".to_string()));
    }

    fn fields_of_missing_spec() -> Vec<String> {
        fields(
            json!({"apiVersion": "konnect-sa.dev/v1alpha1", "kind": "SystemAccountToken", "metadata": {"name": "t"}}),
        )
    }

    #[test]
    fn cel_rules_of_the_generated_crd_are_evaluated() {
        let got = fields(token(
            json!({"systemAccountRef": {"name": "a", "id": "0b7a4b2e-1b9e-4c47-9d1a-2f6f3b0c9e11"},
                                      "duration": "0s"}),
        ));
        assert!(
            got.iter()
                .any(|l| l.contains("set exactly one of name or id")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|l| l.starts_with("spec.duration") && l.contains("more than 0s")),
            "{got:?}"
        );
    }

    #[test]
    fn names_must_be_dns_subdomains() {
        let mut bad = token(json!({"systemAccountRef": {"name": "a"}}));
        bad["metadata"]["name"] = json!("Bad_Name");
        assert!(fields(bad)[0].starts_with("metadata.name: Invalid value"));
    }
}
