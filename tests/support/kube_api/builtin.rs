//! Write rules of built-in kinds that controllers notice (only Secrets so far).

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
