//! Query strings of list operations: `page[size]`, `page[number]` and deepObject filters
//! (`filter[name][eq]=x`, `filter[name]=x`, `filter[konnect_managed]=true`), and team label filters
//! (`filter[labels.env][eq]=x`, as the spec's description writes them, or `filter[labels][env][eq]=x`).
use std::collections::BTreeMap;

use super::problem::{ApiError, InvalidParam};

/// Konnect's real default and maximum are unconfirmed. The spec sets no maximum, so any size is served.
pub const DEFAULT_PAGE_SIZE: u64 = 10;

/// How a filterable field may be filtered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// `LegacyStringFieldFilter`: `eq` or `contains`; a bare `filter[x]=v` means `eq`.
    Legacy,
    /// `StringFieldEqualsFilter`: `eq` only (bare form allowed).
    Equals,
    /// `BooleanFieldFilter`: `filter[x]=true|false`.
    Bool,
    /// A map of `LegacyStringFieldFilterWithExists` by label key: `eq`, `contains` or `exists`.
    Labels,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    Eq(String),
    /// Case-insensitive substring (Konnect's case rule is unconfirmed).
    Contains(String),
    Bool(bool),
    /// `exists`: whether the label key is present.
    Exists(bool),
}

/// Parsed filters, already checked against the operation's allowed fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters(Vec<(String, Cond)>);

impl Filters {
    pub fn new(conds: Vec<(String, Cond)>) -> Self {
        Self(conds)
    }
    /// True when every condition on `field` holds for `value` (no condition: true).
    pub fn str_ok(&self, field: &str, value: &str) -> bool {
        self.0
            .iter()
            .filter(|(f, _)| f == field)
            .all(|(_, c)| match c {
                Cond::Eq(v) => value == v,
                Cond::Contains(v) => value.to_lowercase().contains(&v.to_lowercase()),
                Cond::Bool(_) | Cond::Exists(_) => false,
            })
    }
    /// True when every `labels.<key>` condition holds for `labels`.
    pub fn labels_ok(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0
            .iter()
            .filter_map(|(f, c)| Some((f.strip_prefix(LABELS_PREFIX)?, c)))
            .all(|(key, c)| match (c, labels.get(key)) {
                (Cond::Exists(want), v) => v.is_some() == *want,
                (Cond::Eq(want), Some(v)) => v == want,
                (Cond::Contains(want), Some(v)) => v.to_lowercase().contains(&want.to_lowercase()),
                _ => false,
            })
    }
    pub fn bool_ok(&self, field: &str, value: bool) -> bool {
        self.0
            .iter()
            .filter(|(f, _)| f == field)
            .all(|(_, c)| matches!(c, Cond::Bool(b) if *b == value))
    }
}

/// `page[number]` (from 1) and `page[size]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageReq {
    pub number: u64,
    pub size: u64,
}

impl Default for PageReq {
    fn default() -> Self {
        Self {
            number: 1,
            size: DEFAULT_PAGE_SIZE,
        }
    }
}

impl PageReq {
    /// One page of `items` plus the meta (`total` = number of matching objects).
    pub fn apply<T>(&self, items: Vec<T>) -> konnect_page::Page<T> {
        let total = items.len() as u64;
        let skip = (self.number - 1).saturating_mul(self.size);
        let data = items
            .into_iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
            .take(usize::try_from(self.size).unwrap_or(usize::MAX))
            .collect();
        konnect_page::Page {
            meta: konnect_page::PageMetaWrapper {
                page: konnect_page::PageMeta {
                    number: self.number,
                    size: self.size,
                    total,
                },
            },
            data,
        }
    }
}

mod konnect_page {
    pub use crate::konnect::models::{Page, PageMeta, PageMetaWrapper};
}

/// A list request: page + filters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub page: PageReq,
    pub filters: Filters,
}

/// Parses decoded query pairs against the operation's allowed filter fields.
pub fn parse_list_query(
    pairs: &[(String, String)],
    allowed: &[(&str, FieldKind)],
    paginated: bool,
) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery::default();
    let mut invalid = Vec::new();
    let mut conds = Vec::new();
    for (key, value) in pairs {
        match key.as_str() {
            // `allowEmptyValue`: an empty value means the default.
            "page[size]" | "page[number]" if paginated && value.is_empty() => {}
            "page[size]" | "page[number]" if paginated => match value.parse::<i128>() {
                Err(_) => invalid.push(InvalidParam::new(
                    key.as_str(),
                    Some("is_integer"),
                    "must be an integer",
                )),
                Ok(n) if n < 1 => invalid.push(InvalidParam {
                    minimum: Some(1),
                    ..InvalidParam::new(key.as_str(), Some("min"), "must be at least 1")
                }),
                Ok(n) => {
                    let n = u64::try_from(n).unwrap_or(u64::MAX);
                    if key == "page[size]" {
                        q.page.size = n;
                    } else {
                        q.page.number = n;
                    }
                }
            },
            // The deepObject form of an empty `labels` map: no condition.
            "filter[labels]"
                if value.is_empty() && allowed.iter().any(|(_, k)| *k == FieldKind::Labels) => {}
            k if k.starts_with("filter[") => match parse_filter(k, value, allowed) {
                Ok(c) => conds.push(c),
                Err(p) => invalid.push(*p),
            },
            // Unknown parameters are ignored, like most HTTP APIs do.
            _ => {}
        }
    }
    if !invalid.is_empty() {
        return Err(ApiError::bad_request("Invalid query parameters", invalid));
    }
    q.filters = Filters::new(conds);
    Ok(q)
}

const LABELS_PREFIX: &str = "labels.";

/// `filter[a]` -> ["a"], `filter[a][b]` -> ["a", "b"], `filter[labels][k][op]` -> ["labels.k", "op"];
/// None when malformed.
fn brackets(key: &str) -> Option<Vec<String>> {
    let mut rest = key.strip_prefix("filter")?;
    let mut segs: Vec<String> = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        segs.push(inner[..end].to_string());
        rest = &inner[end + 1..];
    }
    // The deepObject form of the nested `labels` map names the key in its own brackets.
    if segs.len() >= 2 && segs[0] == "labels" {
        let key = segs.remove(1);
        segs[0] = format!("{LABELS_PREFIX}{key}");
    }
    (!segs.is_empty() && segs.len() <= 2).then_some(segs)
}

fn parse_filter(
    key: &str,
    value: &str,
    allowed: &[(&str, FieldKind)],
) -> Result<(String, Cond), Box<InvalidParam>> {
    let Some(segs) = brackets(key) else {
        return Err(Box::new(InvalidParam::new(
            key,
            Some("invalid"),
            "is not a valid filter",
        )));
    };
    let field = segs[0].as_str();
    // `labels.<key>` is filtered as the operation's `labels` field says (any non-empty key).
    let base = match field.strip_prefix(LABELS_PREFIX) {
        Some(k) if !k.is_empty() => "labels",
        _ => field,
    };
    // A label key needs a `Labels` field; any other name a field that is not one.
    let Some((_, kind)) = allowed
        .iter()
        .find(|(f, k)| *f == base && (base == field) != (*k == FieldKind::Labels))
    else {
        return Err(Box::new(InvalidParam::new(
            format!("[filter][{field}]"),
            Some("unknown_property"),
            format!("[{field}] is not a supported filter field"),
        )));
    };
    let op = segs.get(1).map(String::as_str);
    let unsupported = |op: &str| {
        // The spec's example: no rule, field `[filter][x][op]`.
        InvalidParam::new(
            format!("[filter][{field}][{op}]"),
            None,
            format!("[{op}] is not a supported filter operation"),
        )
    };
    let cond = match (kind, op) {
        (FieldKind::Legacy | FieldKind::Equals | FieldKind::Labels, None | Some("eq")) => {
            Cond::Eq(value.to_string())
        }
        (FieldKind::Legacy | FieldKind::Labels, Some("contains")) => {
            Cond::Contains(value.to_string())
        }
        (FieldKind::Labels, Some("exists")) => match value {
            "true" => Cond::Exists(true),
            "false" => Cond::Exists(false),
            _ => {
                return Err(Box::new(InvalidParam::new(
                    format!("[filter][{field}][exists]"),
                    Some("is_boolean"),
                    "must be a boolean",
                )));
            }
        },
        (FieldKind::Bool, None | Some("eq")) => match value {
            "true" => Cond::Bool(true),
            "false" => Cond::Bool(false),
            _ => {
                return Err(Box::new(InvalidParam::new(
                    format!("[filter][{field}]"),
                    Some("is_boolean"),
                    "must be a boolean",
                )));
            }
        },
        (_, Some(op)) => return Err(Box::new(unsupported(op))),
    };
    Ok((field.to_string(), cond))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
    const ACCOUNTS: &[(&str, FieldKind)] = &[
        ("name", FieldKind::Legacy),
        ("description", FieldKind::Legacy),
        ("konnect_managed", FieldKind::Bool),
    ];

    #[test]
    fn parses_all_filter_forms_and_pages() {
        let q = parse_list_query(
            &pairs(&[
                ("filter[name][eq]", "a"),
                ("filter[description][contains]", "B"),
                ("filter[konnect_managed]", "false"),
                ("page[size]", "5"),
                ("page[number]", "2"),
            ]),
            ACCOUNTS,
            true,
        )
        .unwrap();
        assert_eq!(q.page, PageReq { number: 2, size: 5 });
        assert!(q.filters.str_ok("name", "a"));
        assert!(!q.filters.str_ok("name", "ab"));
        assert!(q.filters.str_ok("description", "xbx"));
        assert!(q.filters.bool_ok("konnect_managed", false));
        assert!(!q.filters.bool_ok("konnect_managed", true));
        let bare = parse_list_query(&pairs(&[("filter[name]", "a")]), ACCOUNTS, true).unwrap();
        assert!(bare.filters.str_ok("name", "a") && !bare.filters.str_ok("name", "b"));
    }

    #[test]
    fn unsupported_operator_is_reported_like_the_spec_example() {
        let e = parse_list_query(&pairs(&[("filter[name][startswith]", "a")]), ACCOUNTS, true)
            .unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
        assert_eq!(e.invalid[0].field, "[filter][name][startswith]");
        assert_eq!(
            e.invalid[0].reason,
            "[startswith] is not a supported filter operation"
        );
        let roles = [("role_name", FieldKind::Equals)];
        let e = parse_list_query(
            &pairs(&[("filter[role_name][contains]", "a")]),
            &roles,
            false,
        )
        .unwrap_err();
        assert_eq!(e.invalid[0].field, "[filter][role_name][contains]");
        assert!(parse_list_query(&pairs(&[("filter[nope]", "a")]), ACCOUNTS, true).is_err());
    }

    #[test]
    fn label_filters_in_both_spellings() {
        let teams = [("name", FieldKind::Legacy), ("labels", FieldKind::Labels)];
        let labels: BTreeMap<String, String> = [("env".to_string(), "Prod-1".to_string())].into();
        let matches = |q: &[(&str, &str)]| {
            parse_list_query(&pairs(q), &teams, true)
                .unwrap()
                .filters
                .labels_ok(&labels)
        };
        assert!(matches(&[("filter[labels.env][eq]", "Prod-1")]));
        assert!(matches(&[("filter[labels][env][eq]", "Prod-1")]));
        assert!(matches(&[("filter[labels.env]", "Prod-1")]));
        assert!(!matches(&[("filter[labels.env]", "prod-1")]));
        assert!(matches(&[("filter[labels.env][contains]", "prod")]));
        assert!(matches(&[("filter[labels.env][exists]", "true")]));
        assert!(!matches(&[("filter[labels.team][exists]", "true")]));
        assert!(matches(&[("filter[labels.team][exists]", "false")]));
        assert!(!matches(&[("filter[labels.team][eq]", "x")]));
        for bad in [
            ("filter[labels.env][exists]", "yes"),
            ("filter[labels.env][startswith]", "a"),
            ("filter[labels]", "a"),
            ("filter[labels.]", "a"),
        ] {
            assert!(
                parse_list_query(&pairs(&[bad]), &teams, true).is_err(),
                "{bad:?}"
            );
        }
        // Operations without label filters refuse them.
        assert!(parse_list_query(&pairs(&[("filter[labels.env]", "a")]), ACCOUNTS, true).is_err());
    }

    #[test]
    fn page_bounds() {
        for (k, v) in [
            ("page[size]", "0"),
            ("page[size]", "-3"),
            ("page[number]", "0"),
            ("page[size]", "x"),
        ] {
            assert!(
                parse_list_query(&pairs(&[(k, v)]), ACCOUNTS, true).is_err(),
                "{k}={v}"
            );
        }
        let q = parse_list_query(&pairs(&[("page[size]", "1000")]), ACCOUNTS, true).unwrap();
        assert_eq!(q.page.size, 1000);
        // allowEmptyValue: empty means the default.
        let q = parse_list_query(
            &pairs(&[("page[size]", ""), ("page[number]", "")]),
            ACCOUNTS,
            true,
        )
        .unwrap();
        assert_eq!(q.page, PageReq::default());
        let p = PageReq { number: 2, size: 2 }.apply(vec![1, 2, 3, 4, 5]);
        assert_eq!(p.data, vec![3, 4]);
        assert_eq!(p.meta.page.total, 5);
        let p = PageReq { number: 9, size: 2 }.apply(vec![1, 2, 3]);
        assert!(p.data.is_empty());
        assert_eq!(p.meta.page.total, 3);
    }
}
