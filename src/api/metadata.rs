//! Label and annotation syntax, as the API server checks it, for the metadata a user asks us to put on a
//! Secret (`spec.secretTemplate`). The same rules exist twice on purpose: as CEL in the CRD (refused at
//! apply time) and here (an object admitted by an older CRD gets `Ready=False InvalidSpec`, never a token
//! whose Secret the API server then refuses). A test checks the two agree.

use std::collections::BTreeMap;

/// Keys the operator keeps for its own Secret metadata; a template may not set them.
pub const RESERVED_PREFIX: &str = "konnect-sa.dev/";
/// How many template labels and annotations at most (the bound also keeps the CEL cost estimate low).
pub const MAX_TEMPLATE_ENTRIES: usize = 8;
/// Longest template annotation value (the API server's limit is 256 KiB for all annotations together).
pub const MAX_ANNOTATION_VALUE: usize = 4096;

/// A qualified name: an optional DNS-subdomain prefix and `/`, then a name of 1 to 63 characters
/// (RE2; no backslashes, the pattern sits inside a CEL string literal).
pub(crate) const QUALIFIED_NAME_PATTERN: &str = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$";
/// A label value: empty, or up to 63 characters that start and end alphanumeric.
pub(crate) const LABEL_VALUE_PATTERN: &str = "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.".contains(&b)
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?` of at most `max` characters; empty when `allow_empty`.
fn is_name(s: &str, max: usize, allow_empty: bool) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        return allow_empty;
    }
    b.len() <= max
        && b.iter().all(|c| is_name_char(*c))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Whether `key` is a valid label or annotation key.
pub fn is_qualified_name(key: &str) -> bool {
    match key.split_once('/') {
        None => is_name(key, 63, false),
        Some((prefix, name)) => {
            prefix.len() < 253 && prefix.split('.').all(is_dns_label) && is_name(name, 63, false)
        }
    }
}

pub fn is_label_value(value: &str) -> bool {
    is_name(value, 63, true)
}

/// Checks `secretTemplate.labels` and `.annotations`; the message names the field and what is wrong.
pub fn check_template(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Result<(), String> {
    for (field, map) in [("labels", labels), ("annotations", annotations)] {
        if map.len() > MAX_TEMPLATE_ENTRIES {
            return Err(format!(
                "spec.secretTemplate.{field} has {} entries; at most {MAX_TEMPLATE_ENTRIES} are allowed",
                map.len()
            ));
        }
        for (key, value) in map {
            if key.starts_with(RESERVED_PREFIX) {
                return Err(format!(
                    "spec.secretTemplate.{field}: key {key:?} uses the prefix {RESERVED_PREFIX}, which the operator \
                     keeps for its own Secret metadata"
                ));
            }
            if !is_qualified_name(key) {
                return Err(format!(
                    "spec.secretTemplate.{field}: key {key:?} is not a valid Kubernetes {} key (an optional DNS \
                     prefix and '/', then 1-63 letters, digits, '-', '_' or '.', starting and ending alphanumeric)",
                    &field[..field.len() - 1]
                ));
            }
            if field == "labels" && !is_label_value(value) {
                return Err(format!(
                    "spec.secretTemplate.labels: the value of {key:?} is not a valid label value (at most 63 \
                     letters, digits, '-', '_' or '.', starting and ending alphanumeric)"
                ));
            }
            if field == "annotations" && value.len() > MAX_ANNOTATION_VALUE {
                return Err(format!(
                    "spec.secretTemplate.annotations: the value of {key:?} is longer than {MAX_ANNOTATION_VALUE} bytes"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_api_servers_qualified_name_rule() {
        for ok in [
            "app",
            "konghq.com/credential",
            "a.b-c.d/N_a.m-e",
            "x/y",
            &"a".repeat(63),
        ] {
            assert!(is_qualified_name(ok), "{ok}");
        }
        for bad in [
            "",
            "/name",
            "bad key",
            "-lead",
            "trail-",
            "Example.com/x",
            "a/b/c",
            "a_b.com/x",
            "x/",
            &"a".repeat(64),
            &format!("{}/x", "a".repeat(253)),
        ] {
            assert!(!is_qualified_name(bad), "{bad}");
        }
    }

    #[test]
    fn label_values_are_short_names_or_empty() {
        assert!(is_label_value(""));
        assert!(is_label_value("konnect"));
        assert!(is_label_value("v1.2_3-x"));
        assert!(!is_label_value("has space"));
        assert!(!is_label_value("-x"));
        assert!(!is_label_value(&"v".repeat(64)));
    }

    #[test]
    fn template_refuses_reserved_keys_bad_syntax_and_too_many_entries() {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let none = BTreeMap::new();
        assert!(check_template(&map(&[("konghq.com/credential", "konnect")]), &none).is_ok());
        let e = check_template(&map(&[("bad key", "x")]), &none).unwrap_err();
        assert!(e.contains("labels") && e.contains("bad key"), "{e}");
        let e = check_template(&map(&[("ok", "not ok!")]), &none).unwrap_err();
        assert!(e.contains("not a valid label value"), "{e}");
        let e = check_template(&none, &map(&[("konnect-sa.dev/revision", "9")])).unwrap_err();
        assert!(e.contains("keeps for its own"), "{e}");
        assert!(check_template(&none, &map(&[("note", "free text, spaces: fine")])).is_ok());
        let many: BTreeMap<String, String> =
            (0..9).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(check_template(&many, &none).is_err());
    }
}
