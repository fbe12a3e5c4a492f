//! Query strings of list operations: `page[size]`, `page[number]` and deepObject filters
//! (`filter[name][eq]=x`, `filter[name]=x`, `filter[konnect_managed]=true`).
use super::problem::{ApiError, InvalidParam};

/// Konnect's real default and maximum are unconfirmed; the simulator refuses a size above the maximum
/// (instead of clamping) so a client that asks for more shows up in tests.
pub const DEFAULT_PAGE_SIZE: u64 = 10;
pub const MAX_PAGE_SIZE: u64 = 100;

/// How a filterable field may be filtered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// `LegacyStringFieldFilter`: `eq` or `contains`; a bare `filter[x]=v` means `eq`.
    Legacy,
    /// `StringFieldEqualsFilter`: `eq` only (bare form allowed).
    Equals,
    /// `BooleanFieldFilter`: `filter[x]=true|false`.
    Bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    Eq(String),
    /// Case-insensitive substring (Konnect's case rule is unconfirmed).
    Contains(String),
    Bool(bool),
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
                Cond::Bool(_) => false,
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
            "page[size]" | "page[number]" if paginated => {
                let (min, max) = if key == "page[size]" {
                    (1, Some(MAX_PAGE_SIZE))
                } else {
                    (1, None)
                };
                match value.parse::<u64>() {
                    Err(_) => invalid.push(InvalidParam::new(
                        key.as_str(),
                        Some("is_integer"),
                        "must be an integer",
                    )),
                    Ok(n) if n < min => invalid.push(InvalidParam {
                        minimum: Some(min),
                        ..InvalidParam::new(
                            key.as_str(),
                            Some("min"),
                            format!("must be at least {min}"),
                        )
                    }),
                    Ok(n) if max.is_some_and(|m| n > m) => invalid.push(InvalidParam {
                        maximum: max,
                        ..InvalidParam::new(
                            key.as_str(),
                            Some("max"),
                            format!("must be at most {}", max.unwrap_or_default()),
                        )
                    }),
                    Ok(n) if key == "page[size]" => q.page.size = n,
                    Ok(n) => q.page.number = n,
                }
            }
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

/// `filter[a]` -> ["a"], `filter[a][b]` -> ["a", "b"]; None when malformed.
fn brackets(key: &str) -> Option<Vec<&str>> {
    let mut rest = key.strip_prefix("filter")?;
    let mut segs = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        segs.push(&inner[..end]);
        rest = &inner[end + 1..];
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
    let field = segs[0];
    let Some((_, kind)) = allowed.iter().find(|(f, _)| *f == field) else {
        return Err(Box::new(InvalidParam::new(
            format!("[filter][{field}]"),
            Some("unknown_property"),
            format!("[{field}] is not a supported filter field"),
        )));
    };
    let op = segs.get(1).copied();
    let unsupported = |op: &str| {
        // The spec's example: no rule, field `[filter][x][op]`.
        InvalidParam::new(
            format!("[filter][{field}][{op}]"),
            None,
            format!("[{op}] is not a supported filter operation"),
        )
    };
    let cond = match (kind, op) {
        (FieldKind::Legacy | FieldKind::Equals, None | Some("eq")) => Cond::Eq(value.to_string()),
        (FieldKind::Legacy, Some("contains")) => Cond::Contains(value.to_string()),
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
    fn page_bounds() {
        for (k, v) in [
            ("page[size]", "0"),
            ("page[size]", "101"),
            ("page[number]", "0"),
            ("page[size]", "x"),
        ] {
            assert!(
                parse_list_query(&pairs(&[(k, v)]), ACCOUNTS, true).is_err(),
                "{k}={v}"
            );
        }
        let q = parse_list_query(&pairs(&[("page[size]", "100")]), ACCOUNTS, true).unwrap();
        assert_eq!(q.page.size, 100);
        let p = PageReq { number: 2, size: 2 }.apply(vec![1, 2, 3, 4, 5]);
        assert_eq!(p.data, vec![3, 4]);
        assert_eq!(p.meta.page.total, 5);
        let p = PageReq { number: 9, size: 2 }.apply(vec![1, 2, 3]);
        assert!(p.data.is_empty());
        assert_eq!(p.meta.page.total, 3);
    }
}
