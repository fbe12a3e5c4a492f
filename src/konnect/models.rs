//! Wire types of the Konnect Identity v3 API, shared by the client and the simulator.
//! Field names follow `../shared/konnect/identity-openapi.yaml`.
use serde::{Deserialize, Deserializer, Serialize};

/// A token value (`kpat_...` / `spat_...`). Debug and Display never show it; only
/// [`TokenValue::expose`] does, and only the Secret writer and the HTTP auth header call it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TokenValue(String);

impl TokenValue {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The raw value. Call sites are few and reviewed: the auth header, the Secret writer.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for TokenValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenValue(<redacted>)")
    }
}

impl std::fmt::Display for TokenValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `SystemAccount`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemAccount {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    #[serde(default)]
    pub konnect_managed: bool,
}

/// Body of `POST /v3/system-accounts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateSystemAccount {
    pub name: String,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub konnect_managed: Option<bool>,
}

/// Body of `PATCH /v3/system-accounts/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateSystemAccount {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `SystemAccountAccessToken` (never carries the value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessToken {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    /// RFC 3339, UTC, second precision.
    pub expires_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<String>,
}

/// `SystemAccountAccessTokenCreated`: the only response that carries the value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessTokenCreated {
    #[serde(flatten)]
    pub meta: AccessToken,
    pub token: TokenValue,
}

/// Body of `POST /v3/system-accounts/{id}/access-tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateAccessToken {
    pub name: String,
    /// RFC 3339.
    pub expires_at: String,
}

/// `AssignRole` (request) without the id; `AssignedRole` (response) with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RoleTuple {
    pub role_name: String,
    pub entity_type_name: String,
    pub entity_id: String,
    pub entity_region: String,
}

/// `AssignedRole`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignedRole {
    pub id: String,
    #[serde(flatten)]
    pub role: RoleTuple,
}

/// `TeamResponse`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Team {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub system_team: bool,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// Body of `POST /v3/teams` (simulator seeding and tests).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateTeam {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Body of `POST /v3/teams/{teamId}/system-accounts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddSystemAccountToTeam {
    pub id: String,
}

/// `MeOrganization` (subset).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Organization {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// `GET /v3/roles`: entity type key -> `{name, roles: {key: {name, description}}}`.
pub type RolesReference = std::collections::BTreeMap<String, EntityTypeRoles>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityTypeRoles {
    pub name: String,
    pub roles: std::collections::BTreeMap<String, RoleDescription>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleDescription {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

/// A page of a list response: `{meta: {page: {number, size, total}}, data: [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub meta: PageMetaWrapper,
    pub data: Vec<T>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PageMetaWrapper {
    pub page: PageMeta,
}

/// Typed `number` in the spec: Konnect may send `1.0`, so read leniently.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PageMeta {
    #[serde(deserialize_with = "lenient_u64")]
    pub number: u64,
    #[serde(deserialize_with = "lenient_u64")]
    pub size: u64,
    #[serde(deserialize_with = "lenient_u64")]
    pub total: u64,
}

fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    match v {
        serde_json::Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .ok_or_else(|| serde::de::Error::custom("negative page number")),
        serde_json::Value::String(s) => s
            .parse::<f64>()
            .map(|f| f as u64)
            .map_err(serde::de::Error::custom),
        _ => Err(serde::de::Error::custom("page field is not a number")),
    }
}

/// problem+json error body (`BaseError` / `BadRequestError`), read leniently.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_opt_u16"
    )]
    pub status: Option<u16>,
    #[serde(default)]
    pub title: String,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub instance: String,
    #[serde(default)]
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_parameters: Option<Vec<InvalidParameter>>,
    /// Kong gateway's non-problem body on 429: `{"message": "API rate limit exceeded"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn lenient_opt_u16<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    Ok(v.and_then(|v| v.as_f64()).map(|f| f as u16))
}

/// One item of `invalid_parameters`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InvalidParameter {
    pub field: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<serde_json::Value>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_value_is_redacted_in_debug_and_display() {
        let t = TokenValue::new("spat_12345678901234567890");
        assert!(!format!("{t:?}").contains("spat_"));
        assert!(!format!("{t}").contains("spat_"));
        assert_eq!(t.expose(), "spat_12345678901234567890");
    }

    #[test]
    fn page_meta_accepts_floats() {
        let p: Page<SystemAccount> = serde_json::from_str(
            r#"{"meta":{"page":{"number":1.0,"size":10.0,"total":0}},"data":[]}"#,
        )
        .unwrap();
        assert_eq!(p.meta.page.number, 1);
        assert_eq!(p.meta.page.size, 10);
    }

    #[test]
    fn problem_reads_kong_rate_limit_body_and_float_status() {
        let p: Problem = serde_json::from_str(r#"{"message":"API rate limit exceeded"}"#).unwrap();
        assert_eq!(p.message.as_deref(), Some("API rate limit exceeded"));
        let p: Problem = serde_json::from_str(
            r#"{"status":409.0,"title":"Conflict","instance":"x","detail":"d"}"#,
        )
        .unwrap();
        assert_eq!(p.status, Some(409));
    }
}
