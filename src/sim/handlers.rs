//! The simulated Identity API: routes, operation ids, request parsing. Rules live in the store.
use std::sync::{Arc, LazyLock};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Map, Value};

use super::problem::{ApiError, InvalidParam};
use super::query::{FieldKind, ListQuery, PageReq, parse_list_query};
use super::state::Shared;
use super::store::TeamUpdate;
use crate::konnect::models::RoleTuple;

type ApiResult = Result<Response, ApiError>;
type S = State<Arc<Shared>>;

/// (method, path under the version prefix, the spec's operationId).
pub const OPERATIONS: &[(&str, &str, &str)] = &[
    ("GET", "/system-accounts", "get-system-accounts"),
    ("POST", "/system-accounts", "post-system-accounts"),
    (
        "GET",
        "/system-accounts/{account_id}",
        "get-system-accounts-id",
    ),
    (
        "PATCH",
        "/system-accounts/{account_id}",
        "patch-system-accounts-id",
    ),
    (
        "DELETE",
        "/system-accounts/{account_id}",
        "delete-system-accounts-id",
    ),
    (
        "GET",
        "/system-accounts/{account_id}/access-tokens",
        "get-system-account-id-access-tokens",
    ),
    (
        "POST",
        "/system-accounts/{account_id}/access-tokens",
        "post-system-accounts-id-access-tokens",
    ),
    (
        "GET",
        "/system-accounts/{account_id}/access-tokens/{token_id}",
        "get-system-accounts-id-access-tokens-id",
    ),
    (
        "PATCH",
        "/system-accounts/{account_id}/access-tokens/{token_id}",
        "patch-system-accounts-id-access-tokens-id",
    ),
    (
        "DELETE",
        "/system-accounts/{account_id}/access-tokens/{token_id}",
        "delete-system-accounts-id-access-tokens-id",
    ),
    (
        "GET",
        "/system-accounts/{account_id}/assigned-roles",
        "get-system-accounts-accountId-assigned-roles",
    ),
    (
        "POST",
        "/system-accounts/{account_id}/assigned-roles",
        "post-system-accounts-accountId-assigned-roles",
    ),
    (
        "GET",
        "/system-accounts/{account_id}/assigned-roles/{role_id}",
        "get-system-account-role",
    ),
    (
        "DELETE",
        "/system-accounts/{account_id}/assigned-roles/{role_id}",
        "delete-system-accounts-accountId-assigned-roles-roleId",
    ),
    (
        "GET",
        "/system-accounts/{account_id}/teams",
        "get-system-accounts-accountId-teams",
    ),
    ("GET", "/teams", "list-teams"),
    ("POST", "/teams", "create-team"),
    ("GET", "/teams/{team_id}", "get-team"),
    ("PATCH", "/teams/{team_id}", "update-team"),
    ("DELETE", "/teams/{team_id}", "delete-team"),
    (
        "GET",
        "/teams/{team_id}/system-accounts",
        "get-teams-teamId-system-accounts",
    ),
    (
        "POST",
        "/teams/{team_id}/system-accounts",
        "post-teams-teamId-system-accounts",
    ),
    (
        "DELETE",
        "/teams/{team_id}/system-accounts/{account_id}",
        "delete-teams-teamId-system-accounts-accountId",
    ),
    ("GET", "/roles", "get-predefined-roles"),
    ("GET", "/organizations/me", "get-organizations-me"),
];

/// The operationId of a matched route (`/v3/...` or, with a `v2-` prefix, `/v2/...`).
pub fn operation_id(method: &Method, template: &str) -> Option<String> {
    let (prefix, rest) = if let Some(r) = template.strip_prefix("/v3") {
        ("", r)
    } else {
        ("v2-", template.strip_prefix("/v2")?)
    };
    OPERATIONS
        .iter()
        .find(|(m, p, _)| *m == method.as_str() && *p == rest)
        .map(|(_, _, op)| format!("{prefix}{op}"))
}

/// The API routes under `/v3` and (for the docs' examples) `/v2`.
pub fn api_router() -> Router<Arc<Shared>> {
    let mut r = Router::new();
    for (prefix, v2) in [("/v3", false), ("/v2", true)] {
        let accounts = if v2 {
            get(list_accounts).post(create_account_v2)
        } else {
            get(list_accounts).post(create_account)
        };
        let p = |s: &str| format!("{prefix}{s}");
        r = r
            .route(&p("/system-accounts"), accounts)
            .route(
                &p("/system-accounts/{account_id}"),
                get(get_account).patch(patch_account).delete(delete_account),
            )
            .route(
                &p("/system-accounts/{account_id}/access-tokens"),
                get(list_tokens).post(create_token),
            )
            .route(
                &p("/system-accounts/{account_id}/access-tokens/{token_id}"),
                get(get_token).patch(patch_token).delete(delete_token),
            )
            .route(
                &p("/system-accounts/{account_id}/assigned-roles"),
                get(list_roles).post(create_role),
            )
            .route(
                &p("/system-accounts/{account_id}/assigned-roles/{role_id}"),
                get(get_role).delete(delete_role),
            )
            .route(
                &p("/system-accounts/{account_id}/teams"),
                get(list_account_teams),
            )
            .route(&p("/teams"), get(list_teams).post(create_team))
            .route(
                &p("/teams/{team_id}"),
                get(get_team).patch(update_team).delete(delete_team),
            )
            .route(
                &p("/teams/{team_id}/system-accounts"),
                get(list_team_accounts).post(add_member),
            )
            .route(
                &p("/teams/{team_id}/system-accounts/{account_id}"),
                delete(remove_member),
            )
            .route(&p("/roles"), get(roles_reference))
            .route(&p("/organizations/me"), get(me));
    }
    r
}

// ---- request helpers ----

/// The docs write ids as `/teams/:497f...`: accept the colon.
fn id(raw: &str) -> &str {
    raw.strip_prefix(':').unwrap_or(raw)
}

/// A JSON object body, Content-Type or not (the docs' curl examples send none). No body means `{}`;
/// whitespace alone is not JSON.
fn object(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    if body.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(ApiError::bad_request(
            "Request format is invalid",
            vec![InvalidParam::new("body", Some("is_object"), "must be a JSON object").body()],
        )),
    }
}

/// Collects field errors so one 400 names every bad field.
#[derive(Default)]
struct Fields(Vec<InvalidParam>);

impl Fields {
    fn opt_str(&mut self, o: &Map<String, Value>, key: &str) -> Option<String> {
        match o.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.0
                    .push(InvalidParam::new(key, Some("is_string"), "must be a string").body());
                None
            }
        }
    }
    fn req_str(&mut self, o: &Map<String, Value>, key: &str) -> String {
        if matches!(o.get(key), None | Some(Value::Null)) {
            self.0.push(InvalidParam::required(key));
            return String::new();
        }
        self.opt_str(o, key).unwrap_or_default()
    }
    fn opt_bool(&mut self, o: &Map<String, Value>, key: &str) -> Option<bool> {
        match o.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                self.0
                    .push(InvalidParam::new(key, Some("is_boolean"), "must be a boolean").body());
                None
            }
        }
    }
    /// `labels`: absent (None), `null` when `nullable` (Some(None)), or a map whose values `value` reads.
    fn label_map<T>(
        &mut self,
        o: &Map<String, Value>,
        nullable: bool,
        value: impl Fn(&Value) -> Option<T>,
    ) -> Option<Option<std::collections::BTreeMap<String, T>>> {
        let parsed = match o.get("labels")? {
            // `Labels` (create) is not nullable, `LabelsUpdate` is.
            Value::Null if nullable => return Some(None),
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| Some((k.clone(), value(v)?)))
                .collect::<Option<_>>(),
            _ => None,
        };
        if parsed.is_none() {
            let what = if nullable {
                "strings or nulls"
            } else {
                "strings"
            };
            self.0.push(
                InvalidParam::new(
                    "labels",
                    Some("is_label"),
                    format!("must be a map of {what}"),
                )
                .body(),
            );
        }
        Some(parsed)
    }
    /// Create: labels must be strings.
    fn labels(
        &mut self,
        o: &Map<String, Value>,
    ) -> Option<Option<std::collections::BTreeMap<String, String>>> {
        self.label_map(o, false, |v| v.as_str().map(str::to_string))
    }
    /// Team fields are not nullable: `null` is refused, not read as absent.
    fn not_null(&mut self, o: &Map<String, Value>, keys: &[&str]) {
        for key in keys {
            if o.get(*key).is_some_and(Value::is_null) {
                self.0
                    .push(InvalidParam::new(*key, Some("is_string"), "must be a string").body());
            }
        }
    }
    fn check(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::bad_request("Invalid request body", self.0))
        }
    }
}

fn list_query(
    uri: &Uri,
    allowed: &[(&str, FieldKind)],
    paginated: bool,
) -> Result<ListQuery, ApiError> {
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri).map_err(|_| {
        ApiError::bad_request(
            "Invalid query string",
            vec![InvalidParam::new(
                "query",
                Some("invalid"),
                "is not a valid query string",
            )],
        )
    })?;
    parse_list_query(&pairs, allowed, paginated)
}

const NAME_FILTER: &[(&str, FieldKind)] = &[("name", FieldKind::Legacy)];
const TEAM_FILTERS: &[(&str, FieldKind)] =
    &[("name", FieldKind::Legacy), ("labels", FieldKind::Labels)];
const ACCOUNT_FILTERS: &[(&str, FieldKind)] = &[
    ("name", FieldKind::Legacy),
    ("description", FieldKind::Legacy),
    ("konnect_managed", FieldKind::Bool),
];
const ROLE_FILTERS: &[(&str, FieldKind)] = &[
    ("entity_id", FieldKind::Equals),
    ("role_name", FieldKind::Equals),
    ("entity_type_name", FieldKind::Equals),
];
const REGIONS: &[&str] = &["us", "eu", "au", "me", "in", "sg", "*"];

fn ok<T: serde::Serialize>(v: T) -> ApiResult {
    Ok(Json(v).into_response())
}

fn created<T: serde::Serialize>(v: T) -> ApiResult {
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

fn no_content() -> ApiResult {
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- system accounts ----

async fn list_accounts(State(s): S, uri: Uri) -> ApiResult {
    let q = list_query(&uri, ACCOUNT_FILTERS, true)?;
    ok(s.store().list_accounts(&q.filters, q.page))
}

async fn create_account_with(s: &Shared, body: &Bytes, description_required: bool) -> ApiResult {
    let o = object(body)?;
    let mut f = Fields::default();
    let name = f.req_str(&o, "name");
    let description = if description_required {
        f.req_str(&o, "description")
    } else {
        f.opt_str(&o, "description").unwrap_or_default()
    };
    let managed = f.opt_bool(&o, "konnect_managed").unwrap_or(false);
    f.check()?;
    created(
        s.store()
            .create_account(Timestamp::now(), &name, &description, managed)?,
    )
}

async fn create_account(State(s): S, body: Bytes) -> ApiResult {
    create_account_with(&s, &body, true).await
}

/// v2 (the docs' example) accepts a body with only `name`.
async fn create_account_v2(State(s): S, body: Bytes) -> ApiResult {
    create_account_with(&s, &body, false).await
}

async fn get_account(State(s): S, Path(a): Path<String>) -> ApiResult {
    ok(s.store().get_account(id(&a))?)
}

async fn patch_account(State(s): S, Path(a): Path<String>, body: Bytes) -> ApiResult {
    let o = object(&body)?;
    let mut f = Fields::default();
    let name = f.opt_str(&o, "name");
    let description = f.opt_str(&o, "description");
    f.check()?;
    ok(s.store().patch_account(
        Timestamp::now(),
        id(&a),
        name.as_deref(),
        description.as_deref(),
    )?)
}

async fn delete_account(State(s): S, Path(a): Path<String>) -> ApiResult {
    s.store().delete_account(id(&a))?;
    no_content()
}

// ---- access tokens ----

async fn list_tokens(State(s): S, Path(a): Path<String>, uri: Uri) -> ApiResult {
    let q = list_query(&uri, NAME_FILTER, true)?;
    ok(s.store().list_tokens(id(&a), &q.filters, q.page)?)
}

async fn create_token(State(s): S, Path(a): Path<String>, body: Bytes) -> ApiResult {
    let o = object(&body)?;
    let mut f = Fields::default();
    let name = f.req_str(&o, "name");
    let expires_at = f.req_str(&o, "expires_at");
    f.check()?;
    created(
        s.store()
            .create_token(Timestamp::now(), id(&a), &name, &expires_at)?,
    )
}

async fn get_token(State(s): S, Path((a, t)): Path<(String, String)>) -> ApiResult {
    ok(s.store().get_token(id(&a), id(&t))?)
}

async fn patch_token(State(s): S, Path((a, t)): Path<(String, String)>, body: Bytes) -> ApiResult {
    let o = object(&body)?;
    let mut f = Fields::default();
    let name = f.req_str(&o, "name");
    f.check()?;
    ok(s.store()
        .patch_token(Timestamp::now(), id(&a), id(&t), &name)?)
}

async fn delete_token(State(s): S, Path((a, t)): Path<(String, String)>) -> ApiResult {
    s.store().delete_token(id(&a), id(&t))?;
    no_content()
}

// ---- role assignments ----

async fn list_roles(State(s): S, Path(a): Path<String>, uri: Uri) -> ApiResult {
    // The operation declares no page parameters: everything comes in one page.
    let q = list_query(&uri, ROLE_FILTERS, false)?;
    let roles = s.store().list_roles(id(&a), &q.filters)?;
    let size = roles.len() as u64;
    ok(PageReq {
        number: 1,
        size: size.max(1),
    }
    .apply(roles))
}

async fn create_role(State(s): S, Path(a): Path<String>, body: Bytes) -> ApiResult {
    let o = object(&body)?;
    let mut f = Fields::default();
    // The spec marks none required; like kongctl, the simulator wants all four.
    let role = RoleTuple {
        role_name: f.req_str(&o, "role_name"),
        entity_type_name: f.req_str(&o, "entity_type_name"),
        entity_id: f.req_str(&o, "entity_id"),
        entity_region: f.req_str(&o, "entity_region"),
    };
    if !role.entity_region.is_empty() && !REGIONS.contains(&role.entity_region.as_str()) {
        f.0.push(InvalidParam {
            choices: Some(REGIONS.to_vec()),
            ..InvalidParam::new(
                "entity_region",
                Some("enum"),
                "must be one of the listed regions",
            )
            .body()
        });
    }
    f.check()?;
    created(s.store().assign_role(id(&a), role)?)
}

async fn get_role(State(s): S, Path((a, r)): Path<(String, String)>) -> ApiResult {
    ok(s.store().get_role(id(&a), id(&r))?)
}

async fn delete_role(State(s): S, Path((a, r)): Path<(String, String)>) -> ApiResult {
    s.store().delete_role(id(&a), id(&r))?;
    no_content()
}

// ---- teams and memberships ----

async fn list_teams(State(s): S, uri: Uri) -> ApiResult {
    let q = list_query(&uri, TEAM_FILTERS, true)?;
    ok(s.store().list_teams(&q.filters, q.page))
}

async fn create_team(State(s): S, body: Bytes) -> ApiResult {
    let o = object(&body)?;
    let mut f = Fields::default();
    f.not_null(&o, &["description"]);
    let name = f.req_str(&o, "name");
    let description = f.opt_str(&o, "description");
    let labels = f.labels(&o).flatten().unwrap_or_default();
    f.check()?;
    created(
        s.store()
            .create_team(Timestamp::now(), &name, description, labels)?,
    )
}

async fn get_team(State(s): S, Path(t): Path<String>) -> ApiResult {
    ok(s.store().get_team(id(&t))?)
}

async fn update_team(State(s): S, Path(t): Path<String>, body: Bytes) -> ApiResult {
    let o = object(&body)?;
    let mut f = Fields::default();
    f.not_null(&o, &["name", "description"]);
    let name = f.opt_str(&o, "name");
    let description = f.opt_str(&o, "description");
    let labels = f.label_map(&o, true, |v| match v {
        Value::Null => Some(None),
        Value::String(s) => Some(Some(s.clone())),
        _ => None,
    });
    f.check()?;
    let update = TeamUpdate {
        name,
        description,
        labels,
    };
    ok(s.store().update_team(Timestamp::now(), id(&t), update)?)
}

async fn delete_team(State(s): S, Path(t): Path<String>) -> ApiResult {
    s.store().delete_team(id(&t))?;
    no_content()
}

async fn list_team_accounts(State(s): S, Path(t): Path<String>, uri: Uri) -> ApiResult {
    let q = list_query(&uri, NAME_FILTER, true)?;
    ok(s.store().list_team_accounts(id(&t), &q.filters, q.page)?)
}

async fn list_account_teams(State(s): S, Path(a): Path<String>, uri: Uri) -> ApiResult {
    let q = list_query(&uri, NAME_FILTER, true)?;
    ok(s.store().list_account_teams(id(&a), &q.filters, q.page)?)
}

/// 201 with the text `Created`, as the docs show (the spec declares no body).
async fn add_member(State(s): S, Path(t): Path<String>, body: Bytes) -> ApiResult {
    let o = object(&body)?;
    let mut f = Fields::default();
    let account = f.req_str(&o, "id");
    f.check()?;
    s.store().add_member(id(&t), id(&account))?;
    Ok((
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Created",
    )
        .into_response())
}

async fn remove_member(State(s): S, Path((t, a)): Path<(String, String)>) -> ApiResult {
    s.store().remove_member(id(&t), id(&a))?;
    no_content()
}

// ---- reference and me ----

/// The spec's `Roles` response, generated from the spec's schema (enum values verbatim).
static ROLES: LazyLock<Value> =
    LazyLock::new(|| serde_json::from_str(include_str!("roles.json")).unwrap_or_default());

async fn roles_reference() -> ApiResult {
    ok(&*ROLES)
}

async fn me(State(s): S) -> ApiResult {
    ok(s.store().organization())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_an_id_in_both_versions() {
        for (m, p, op) in OPERATIONS {
            let m: Method = m.parse().unwrap();
            assert_eq!(operation_id(&m, &format!("/v3{p}")).as_deref(), Some(*op));
            assert_eq!(
                operation_id(&m, &format!("/v2{p}")),
                Some(format!("v2-{op}"))
            );
        }
        assert_eq!(operation_id(&Method::GET, "/_sim/state"), None);
    }

    #[test]
    fn roles_reference_is_valid_json_with_the_spec_keys() {
        let r = &*ROLES;
        for k in [
            "control_planes",
            "api_products",
            "audit_logs",
            "identity",
            "mesh_control_planes",
            "dashboards",
            "reports",
        ] {
            assert!(r[k]["roles"].is_object(), "{k}");
        }
        assert_eq!(r["mesh_control_planes"]["name"], "Mesh Control Plane");
        assert_eq!(r["control_planes"]["roles"]["viewer"]["name"], "Viewer");
    }

    #[test]
    fn ids_with_a_leading_colon_are_accepted() {
        assert_eq!(id(":497f"), "497f");
        assert_eq!(id("497f"), "497f");
    }
}
