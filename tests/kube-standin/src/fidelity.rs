//! Behaviours of a real kube-apiserver (compared with v1.36 request by request) that the store's write path
//! calls into, kept here as plain functions: how metadata is normalised, what Secret data is accepted, and
//! how paged lists stay one snapshot.
use std::collections::{BTreeMap, VecDeque};

use base64::Engine;
use serde_json::Value;

use super::types::{ApiError, ResourceType};

/// The API server stores no empty or null metadata lists and maps (Go `omitempty`): `finalizers: []`,
/// `labels: {}`, `annotations: {}`, `ownerReferences: []` and null metadata fields vanish. Built-in kinds
/// have no null anywhere (their Go types cannot hold one); custom resources keep theirs to their schema.
pub fn drop_empty(rt: &ResourceType, obj: &mut Value) {
    if !rt.custom {
        drop_nulls(obj);
    }
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.retain(|_, v| match v {
            Value::Null => false,
            Value::Array(a) => !a.is_empty(),
            Value::Object(m) => !m.is_empty(),
            Value::String(s) => !s.is_empty(),
            _ => true,
        });
    }
}

fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// Secret `data`: keys are config keys (`[-._a-zA-Z0-9]+`, at most 253 characters, not `.` or `..`), values
/// base64 (the real server cannot even decode the body otherwise: 400), 1 MiB at most in all.
pub fn check_secret_data(rt: &ResourceType, name: &str, obj: &Value) -> Result<(), ApiError> {
    if !(rt.group.is_empty() && rt.plural == "secrets") {
        return Ok(());
    }
    let Some(data) = obj.get("data").and_then(Value::as_object) else {
        return Ok(());
    };
    let mut total = 0;
    for (key, value) in data {
        let key_ok = !key.is_empty()
            && key.len() <= 253
            && key != "."
            && key != ".."
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !key_ok {
            return Err(ApiError::invalid(
                rt,
                name,
                &format!(
                    "data[{key}]: Invalid value: {key:?}: a valid config key must consist of alphanumeric \
                     characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for \
                     validation is '[-._a-zA-Z0-9]+')"
                ),
            ));
        }
        let decoded = value
            .as_str()
            .map(|s| base64::engine::general_purpose::STANDARD.decode(s));
        match decoded {
            Some(Ok(bytes)) => total += bytes.len(),
            Some(Err(e)) => {
                return Err(ApiError::bad_request(format!(
                    "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data ({e})"
                )));
            }
            None => {
                return Err(ApiError::bad_request(
                    "Secret in version \"v1\" cannot be handled as a Secret: data values must be base64 strings",
                ));
            }
        }
    }
    if total > 1024 * 1024 {
        return Err(ApiError::invalid(
            rt,
            name,
            "data: Too long: must have at most 1048576 bytes",
        ));
    }
    Ok(())
}

/// The rest of paged lists: a list with `limit` is one snapshot at the first page's resourceVersion, every
/// later page (`continue`) served from it, as etcd serves a paged read at one revision.
#[derive(Default)]
pub struct Pages {
    next_id: u64,
    open: BTreeMap<u64, (u64, VecDeque<Value>)>,
}

/// How many unfinished paged lists are kept (the oldest are forgotten; their `continue` then gets 410).
const OPEN_LISTS: usize = 256;

impl Pages {
    /// The first page of `items` (taken at `rv`), and the continue token when more remain.
    pub fn first(
        &mut self,
        rv: u64,
        mut items: Vec<Value>,
        limit: usize,
    ) -> (Vec<Value>, Option<String>) {
        if items.len() <= limit {
            return (items, None);
        }
        let rest: VecDeque<Value> = items.split_off(limit).into();
        self.next_id += 1;
        self.open.insert(self.next_id, (rv, rest));
        while self.open.len() > OPEN_LISTS {
            self.open.pop_first();
        }
        (items, Some(format!("{rv}.{}", self.next_id)))
    }

    /// The next page of a snapshot, its resourceVersion, and the next token; 410 when it is gone.
    pub fn next(
        &mut self,
        token: &str,
        limit: Option<usize>,
    ) -> Result<(u64, Vec<Value>, Option<String>), ApiError> {
        let expired = || {
            ApiError::new(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list result. You can start a \
                 new list without the continue parameter.",
            )
        };
        let id = token
            .split_once('.')
            .and_then(|(_, id)| id.parse::<u64>().ok())
            .ok_or_else(|| ApiError::bad_request(format!("invalid continue token {token:?}")))?;
        let (rv, mut rest) = self.open.remove(&id).ok_or_else(expired)?;
        let take = limit.unwrap_or(rest.len()).min(rest.len());
        let page: Vec<Value> = rest.drain(..take).collect();
        if rest.is_empty() {
            return Ok((rv, page, None));
        }
        self.open.insert(id, (rv, rest));
        Ok((rv, page, Some(token.to_string())))
    }

    /// Compaction: every open paged list is too old now.
    pub fn forget(&mut self) {
        self.open.clear();
    }
}
