//! Team labels as the spec's `Labels` / `LabelsUpdate` schemas define them: validation, and the merge
//! a PATCH does. Pure.
use std::collections::BTreeMap;

use super::problem::InvalidParam;

pub type Labels = BTreeMap<String, String>;

/// `maxProperties` of `Labels`.
pub const MAX_LABELS: usize = 50;
/// Key and value length limit (the schema's `maxLength`; the description's for keys).
const MAX_LEN: usize = 63;
/// The description: keys "cannot start with kong, konnect, mesh, kic, or _".
const RESERVED_PREFIXES: &[&str] = &["kong", "konnect", "mesh", "kic", "_"];

/// The schema's value pattern `^[a-z0-9A-Z]{1}([a-z0-9A-Z-._]*[a-z0-9A-Z]+)?$`: alphanumeric at both ends,
/// `-._` allowed inside.
fn value_ok(v: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let (Some(first), Some(last)) = (v.chars().next(), v.chars().last()) else {
        return false;
    };
    v.chars().count() <= MAX_LEN
        && alnum(first)
        && alnum(last)
        && v.chars().all(|c| alnum(c) || matches!(c, '-' | '.' | '_'))
}

fn key_problem(k: &str) -> Option<&'static str> {
    if k.is_empty() || k.chars().count() > MAX_LEN {
        Some("keys must be 1-63 characters long")
    } else if RESERVED_PREFIXES.iter().any(|p| k.starts_with(p)) {
        Some("keys cannot start with kong, konnect, mesh, kic or _")
    } else {
        None
    }
}

/// Problems of a label set (empty when valid); `None` values (a PATCH removing a key) are not checked.
pub fn problems<'a>(
    labels: impl IntoIterator<Item = (&'a String, Option<&'a String>)>,
) -> Vec<InvalidParam> {
    let mut out = Vec::new();
    let mut count = 0;
    for (k, v) in labels {
        count += 1;
        if let Some(reason) = key_problem(k) {
            out.push(InvalidParam::new(format!("labels.{k}"), Some("is_label"), reason).body());
        }
        if v.is_some_and(|v| !value_ok(v)) {
            out.push(
                InvalidParam::new(
                    format!("labels.{k}"),
                    Some("is_label"),
                    "values must be 1-63 letters, digits or -._, starting and ending with a letter or digit",
                )
                .body(),
            );
        }
    }
    if count > MAX_LABELS {
        out.push(InvalidParam {
            maximum: Some(MAX_LABELS as u64),
            ..InvalidParam::new("labels", Some("max_items"), "must have at most 50 labels").body()
        });
    }
    out
}

/// A PATCH's labels: each key set, or removed when its value is `null`.
pub fn merge(current: &Labels, update: &BTreeMap<String, Option<String>>) -> Labels {
    let mut out = current.clone();
    for (k, v) in update {
        match v {
            Some(v) => out.insert(k.clone(), v.clone()),
            None => out.remove(k),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
    fn check(l: &Labels) -> Vec<InvalidParam> {
        problems(l.iter().map(|(k, v)| (k, Some(v))))
    }

    #[test]
    fn values_follow_the_schema_pattern() {
        for ok in ["a", "test", "a.b-c_d", "A9"] {
            assert!(value_ok(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a b", "é", &"a".repeat(64)] {
            assert!(!value_ok(bad), "{bad}");
        }
    }

    #[test]
    fn keys_counts_and_reserved_prefixes() {
        assert!(check(&set(&[("env", "test")])).is_empty());
        assert_eq!(check(&set(&[("kong-x", "a")]))[0].field, "labels.kong-x");
        assert_eq!(check(&set(&[("_x", "a")])).len(), 1);
        assert_eq!(check(&set(&[("", "a")])).len(), 1);
        let many: Labels = (0..51).map(|i| (format!("k{i}"), "v".into())).collect();
        let p = check(&many);
        assert_eq!((p.len(), p[0].field.as_str()), (1, "labels"));
        let fifty: Labels = (0..50).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(check(&fifty).is_empty());
    }

    #[test]
    fn merge_sets_and_removes() {
        let update = BTreeMap::from([
            ("a".to_string(), None),
            ("b".to_string(), Some("2".to_string())),
        ]);
        assert_eq!(
            merge(&set(&[("a", "1"), ("c", "3")]), &update),
            set(&[("b", "2"), ("c", "3")])
        );
    }
}
