//! Reading a set of manifests (files, directories, or `-` for `kustomize build` output on stdin) into
//! documents that remember where they came from.
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::api::common::GROUP;

/// One YAML document of the set.
#[derive(Debug, Clone)]
pub struct Doc {
    /// The file it came from (`-` for stdin).
    pub file: String,
    pub value: Value,
}

impl Doc {
    pub fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or("")
    }
    pub fn api_version(&self) -> &str {
        self.value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    /// Whether this is a `konnect-sa.dev` object (any version).
    pub fn is_ours(&self) -> bool {
        self.api_version().split('/').next() == Some(GROUP)
    }
    pub fn name(&self) -> &str {
        self.value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
    /// The namespace the object lands in: its own, else `default_ns` (what `kubectl apply -n` does).
    pub fn namespace<'a>(&'a self, default_ns: &'a str) -> &'a str {
        self.value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or(default_ns)
    }
}

/// Reads every document of `paths`. Directories are walked (`.yaml`, `.yml`, `.json`, sorted); `-` is
/// stdin. `kind: List` documents are expanded into their items; empty documents are skipped.
pub fn load(paths: &[PathBuf]) -> Result<Vec<Doc>, String> {
    let mut docs = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("cannot read stdin: {e}"))?;
            parse_into("-", &text, &mut docs)?;
        } else {
            for file in files(path)? {
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
                parse_into(&file.display().to_string(), &text, &mut docs)?;
            }
        }
    }
    Ok(docs)
}

fn files(path: &Path) -> Result<Vec<PathBuf>, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            out.extend(files(&entry)?);
        } else if entry
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            out.push(entry);
        }
    }
    Ok(out)
}

/// Parses a multi-document YAML (or JSON) text.
pub fn parse_into(file: &str, text: &str, docs: &mut Vec<Doc>) -> Result<(), String> {
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(de)
            .map_err(|e| format!("{file}: document {}: not valid YAML: {e}", i + 1))?;
        push(file, value, docs);
    }
    Ok(())
}

fn push(file: &str, value: Value, docs: &mut Vec<Doc>) {
    match value {
        Value::Null => {}
        Value::Object(ref map)
            if map.get("kind").and_then(Value::as_str) == Some("List")
                && map.get("items").is_some_and(Value::is_array) =>
        {
            for item in map["items"].as_array().into_iter().flatten() {
                push(file, item.clone(), docs);
            }
        }
        value => docs.push(Doc {
            file: file.to_string(),
            value,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_and_lists_become_documents() {
        let mut docs = Vec::new();
        parse_into(
            "x.yaml",
            "---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Secret, metadata: {name: a}}\n\
             ---\n---\napiVersion: konnect-sa.dev/v1alpha1\nkind: SystemAccount\nmetadata: {name: b, namespace: n}\n",
            &mut docs,
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].kind(), "Secret");
        assert!(!docs[0].is_ours());
        assert!(docs[1].is_ours());
        assert_eq!(docs[1].namespace("default"), "n");
        assert_eq!(docs[0].namespace("default"), "default");
    }
}
