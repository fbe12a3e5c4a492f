//! Token values must never appear outside the Secret that carries them: not in a log line (text or JSON, at
//! trace level), an Event, a status field or an error message. The values looked for are every one the
//! simulator issued (from its journal) and the admin tokens, each in the forms it can travel in: raw, base64
//! (as Secret data goes over the wire) and as a byte array's `{:?}`.
use serde_json::Value;

use konnect_sa_operator::sim::RunningSim;

/// Every `spat_`/`kpat_` value in the simulator's journal (request and response bodies) plus its admin token.
/// The journal must be on (`TestEnv` turns it on).
pub fn issued_values(sim: &RunningSim) -> Vec<String> {
    let mut values = vec![sim.admin_token().expose().to_string()];
    for entry in sim.journal() {
        for body in [&entry.request_body, &entry.response_body]
            .into_iter()
            .flatten()
        {
            collect_tokens(body, &mut values);
        }
    }
    values.sort();
    values.dedup();
    values
}

fn collect_tokens(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.starts_with("spat_") || s.starts_with("kpat_") => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|i| collect_tokens(i, out)),
        Value::Object(map) => map.values().for_each(|i| collect_tokens(i, out)),
        _ => {}
    }
}

/// The strings that betray `value` inside a longer text: the value, its base64 at each of the three
/// alignments it can have inside a longer encoded string, and the element list of its bytes' `{:?}`.
pub fn needles(value: &str) -> Vec<String> {
    let bytes = value.as_bytes();
    let mut out = vec![value.to_string()];
    for skip in 0..3 {
        let rest = &bytes[skip.min(bytes.len())..];
        let whole = rest.len() / 3 * 3;
        if whole >= 12 {
            out.push(base64(&rest[..whole]));
        }
    }
    let debug = format!("{bytes:?}");
    out.push(
        debug
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    );
    out
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

/// Finds any of a set of token values, in every form, in one pass over a text (the logs run to megabytes
/// and a chaos run issues hundreds of values: a search per value and form would take minutes in a debug build).
pub struct Detector {
    any: regex::Regex,
    /// For each alternative of `any`, in order: the value's first characters and the form.
    labels: Vec<(String, &'static str)>,
}

impl Detector {
    pub fn new(values: &[String]) -> Detector {
        // Any raw `spat_`/`kpat_` value, known or not (e.g. a rejected admin token no journal saw).
        let mut patterns = vec![r"[sk]pat_[A-Za-z0-9]{8}".to_string()];
        let mut labels = vec![(String::from("?pat_"), "raw")];
        for value in values {
            let forms = ["raw", "base64", "base64", "base64", "bytes"];
            for (form, needle) in forms.iter().zip(needles(value)) {
                patterns.push(regex::escape(&needle));
                labels.push((value.chars().take(5).collect(), form));
            }
        }
        let alternatives: Vec<String> = patterns.iter().map(|p| format!("({p})")).collect();
        let any = regex::RegexBuilder::new(&alternatives.join("|"))
            .size_limit(1 << 30)
            .build()
            .expect("needles compile");
        Detector { any, labels }
    }

    /// Where in `text` a value shows, if it does: a description without the value itself.
    pub fn find(&self, text: &str) -> Option<String> {
        let caps = self.any.captures(text)?;
        let (i, m) = caps
            .iter()
            .skip(1)
            .enumerate()
            .find_map(|(i, m)| Some((i, m?)))?;
        let (prefix, form) = &self.labels[i];
        let start = text[..m.start()]
            .char_indices()
            .rev()
            .nth(80)
            .map_or(0, |(i, _)| i);
        Some(format!(
            "a token value ({prefix}…, {form}) after: {:?}",
            &text[start..m.start()]
        ))
    }

    /// Panics when `text` (named `what`) shows a value.
    pub fn assert_clean(&self, text: &str, what: &str) {
        if let Some(leak) = self.find(text) {
            panic!("{what} shows {leak}");
        }
    }
}

/// Where in `text` one of `values` shows, if it does (see `Detector`).
pub fn find_leak(values: &[String], text: &str) -> Option<String> {
    Detector::new(values).find(text)
}

/// Panics when `text` shows one of `values`.
pub fn assert_clean(values: &[String], text: &str, what: &str) {
    Detector::new(values).assert_clean(text, what);
}

/// Objects as they may be shown to people: everything but Secret `data` and `stringData`.
pub fn visible(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if obj["kind"] == "Secret"
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("data");
        m.remove("stringData");
    }
    obj
}

#[test]
fn needles_find_a_value_in_every_form() {
    let value = "spat_0123456789abcdefghijABCDEFGHIJ";
    let values = vec![value.to_string()];
    for prefix in ["", "x", "xy", "xyz"] {
        let encoded = base64(format!("{prefix}{value}\n").as_bytes());
        assert!(find_leak(&values, &encoded).is_some(), "{encoded}");
    }
    assert!(find_leak(&values, &format!("{:?}", value.as_bytes().to_vec())).is_some());
    assert!(find_leak(&values, &format!("token={value:?}")).is_some());
    assert!(find_leak(&values, "spat_ only a prefix").is_none());
}
