//! Served types from CustomResourceDefinition YAML files.

use std::path::Path;

use serde_json::Value;

use super::types::ResourceType;

/// Reads every `CustomResourceDefinition` in the `*.yaml` / `*.yml` files of `dir` (multi-document files are
/// fine; other kinds are skipped). A missing directory yields no types.
pub fn load_crds(dir: &Path) -> Result<Vec<ResourceType>, String> {
    let mut types = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(types);
    };
    let mut paths: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        if !path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            continue;
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = <Value as serde::Deserialize>::deserialize(doc)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if value.get("kind").and_then(Value::as_str) != Some("CustomResourceDefinition") {
                continue;
            }
            types.push(crd_type(&value).map_err(|e| format!("{}: {e}", path.display()))?);
        }
    }
    Ok(types)
}

fn crd_type(crd: &Value) -> Result<ResourceType, String> {
    let spec = crd.get("spec").ok_or("CRD without spec")?;
    let field = |p: &str| {
        spec.pointer(p)
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or(format!("CRD without spec{}", p.replace('/', ".")))
    };
    let versions: Vec<&Value> = spec
        .get("versions")
        .and_then(Value::as_array)
        .map(|v| {
            v.iter()
                .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(true))
                .collect()
        })
        .unwrap_or_default();
    if versions.is_empty() {
        return Err("CRD without served versions".into());
    }
    Ok(ResourceType {
        group: field("/group")?,
        versions: versions
            .iter()
            .filter_map(|v| v.get("name").and_then(Value::as_str).map(String::from))
            .collect(),
        plural: field("/names/plural")?,
        kind: field("/names/kind")?,
        namespaced: field("/scope")? == "Namespaced",
        status_subresource: versions
            .iter()
            .any(|v| v.pointer("/subresources/status").is_some()),
        has_generation: true,
        custom: true,
        schema: versions
            .iter()
            .find_map(|v| v.pointer("/schema/openAPIV3Schema"))
            .cloned(),
    })
}
