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
    /// Any raw `spat_`/`kpat_` value, known or not (e.g. a rejected admin token no journal saw).
    raw: regex::Regex,
    /// Every known value in every form: literals, so one Aho-Corasick automaton (a regex
    /// alternation of thousands of them is slow to search and, with capture groups, needs
    /// gigabytes).
    known: aho_corasick::AhoCorasick,
    /// For each needle of `known`, in order: the value's first characters and the form.
    labels: Vec<(String, &'static str)>,
}

impl Detector {
    pub fn new(values: &[String]) -> Detector {
        let mut needles_all = Vec::new();
        let mut labels = Vec::new();
        for value in values {
            let forms = ["raw", "base64", "base64", "base64", "bytes"];
            for (form, needle) in forms.iter().zip(needles(value)) {
                needles_all.push(needle);
                labels.push((value.chars().take(5).collect(), *form));
            }
        }
        Detector {
            raw: regex::Regex::new(r"[sk]pat_[A-Za-z0-9]{8}").expect("compiles"),
            known: aho_corasick::AhoCorasick::builder()
                .match_kind(aho_corasick::MatchKind::LeftmostFirst)
                .build(&needles_all)
                .expect("needles compile"),
            labels,
        }
    }

    /// Where in `text` a value shows, if it does: a description without the value itself.
    pub fn find(&self, text: &str) -> Option<String> {
        let known = self
            .known
            .find(text)
            .map(|m| (m.start(), self.labels[m.pattern().as_usize()].clone()));
        let raw = self
            .raw
            .find(text)
            .map(|m| (m.start(), (String::from("?pat_"), "raw")));
        let (at, (prefix, form)) = match (known, raw) {
            (Some(k), Some(r)) => {
                if r.0 < k.0 {
                    r
                } else {
                    k
                }
            }
            (k, r) => k.or(r)?,
        };
        let start = text[..at]
            .char_indices()
            .rev()
            .nth(80)
            .map_or(0, |(i, _)| i);
        Some(format!(
            "a token value ({prefix}…, {form}) after: {:?}",
            &text[start..at]
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

/// A benchmark's worth of values (a thousand tokens, five forms each) in one detector: it names the
/// value and form it found (the search runs without capture groups, whose slot table would need
/// gigabytes at this size).
#[test]
fn a_thousand_values_are_found_and_named() {
    let values: Vec<String> = (0..1000)
        .map(|i| format!("spat_{i:04}abcdefghijABCDEFGHIJ0123456789"))
        .collect();
    let detector = Detector::new(&values);
    let encoded = base64(format!("x{}", values[777]).as_bytes());
    let text = format!("{}{encoded}", "quiet log line\n".repeat(10_000));
    let found = detector.find(&text).expect("found");
    assert!(found.contains("(spat_…, base64)"), "{found}");
    assert!(detector.find(&"quiet log line\n".repeat(10_000)).is_none());
}
