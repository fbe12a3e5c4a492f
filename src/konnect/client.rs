//! STUB: signatures only. The helper implementing the client replaces the bodies (keep the signatures).
#![allow(unused_variables)]
use std::sync::Arc;
use std::time::Duration;

use super::error::Result;
use super::models::*;

/// Observes every HTTP attempt (metrics): operation id (the spec's operationId), status (None = transport
/// error), duration.
pub trait RequestObserver: Send + Sync {
    fn observe(&self, operation: &'static str, status: Option<u16>, elapsed: Duration);
}

/// How to reach one Konnect organisation.
#[derive(Clone)]
pub struct ClientConfig {
    /// e.g. `https://global.api.konghq.com` or `http://127.0.0.1:8080` (plain http only for loopback).
    /// A regional host (`https://eu.api.konghq.com`) is mapped to the global host.
    pub base_url: String,
    pub token: TokenValue,
    /// Per-attempt timeout.
    pub request_timeout: Duration,
    /// Attempts for retryable failures (429, 5xx, timeouts), including the first.
    pub max_attempts: u32,
    /// A 429 whose Retry-After is longer than this is returned as `RateLimited` at once instead of waited out.
    pub max_retry_wait: Duration,
    /// Concurrent requests at most (shared by every clone of the client).
    pub max_concurrency: usize,
    pub observer: Option<Arc<dyn RequestObserver>>,
}

impl ClientConfig {
    pub fn new(base_url: impl Into<String>, token: TokenValue) -> Self {
        Self {
            base_url: base_url.into(),
            token,
            request_timeout: Duration::from_secs(30),
            max_attempts: 5,
            max_retry_wait: Duration::from_secs(30),
            max_concurrency: 16,
            observer: None,
        }
    }
}

/// A create whose response may have been lost and recovered by a lookup.
#[derive(Debug, Clone, PartialEq)]
pub struct Created<T> {
    pub value: T,
    /// true when a retried create met 409 and the object was found by name instead.
    pub recovered: bool,
}

/// Filters of `GET /v3/system-accounts`.
#[derive(Debug, Clone, Default)]
pub struct AccountFilter {
    pub name_eq: Option<String>,
    pub konnect_managed: Option<bool>,
}

/// Cheap to clone; clones share the connection pool and concurrency limit.
#[derive(Clone)]
pub struct KonnectClient {}

impl KonnectClient {
    pub fn new(config: ClientConfig) -> Result<Self> {
        todo!()
    }
    /// The normalised base URL (global host, no trailing slash).
    pub fn base_url(&self) -> &str {
        todo!()
    }
    pub async fn me(&self) -> Result<Organization> {
        todo!()
    }
    pub async fn list_system_accounts(&self, filter: &AccountFilter) -> Result<Vec<SystemAccount>> {
        todo!()
    }
    pub async fn create_system_account(
        &self,
        body: &CreateSystemAccount,
    ) -> Result<Created<SystemAccount>> {
        todo!()
    }
    pub async fn get_system_account(&self, id: &str) -> Result<SystemAccount> {
        todo!()
    }
    pub async fn update_system_account(
        &self,
        id: &str,
        body: &UpdateSystemAccount,
    ) -> Result<SystemAccount> {
        todo!()
    }
    pub async fn delete_system_account(&self, id: &str) -> Result<()> {
        todo!()
    }
    pub async fn list_access_tokens(
        &self,
        account_id: &str,
        name_eq: Option<&str>,
    ) -> Result<Vec<AccessToken>> {
        todo!()
    }
    /// Never retried: a lost response would lose the value (the token controller heals that case).
    pub async fn create_access_token(
        &self,
        account_id: &str,
        body: &CreateAccessToken,
    ) -> Result<AccessTokenCreated> {
        todo!()
    }
    pub async fn get_access_token(&self, account_id: &str, token_id: &str) -> Result<AccessToken> {
        todo!()
    }
    pub async fn delete_access_token(&self, account_id: &str, token_id: &str) -> Result<()> {
        todo!()
    }
    pub async fn list_assigned_roles(&self, account_id: &str) -> Result<Vec<AssignedRole>> {
        todo!()
    }
    /// 409 (already assigned) is returned as `Conflict`; the caller adopts by listing.
    pub async fn assign_role(&self, account_id: &str, role: &RoleTuple) -> Result<AssignedRole> {
        todo!()
    }
    pub async fn delete_assigned_role(&self, account_id: &str, assignment_id: &str) -> Result<()> {
        todo!()
    }
    pub async fn list_teams(&self, name_eq: Option<&str>) -> Result<Vec<Team>> {
        todo!()
    }
    pub async fn get_team(&self, team_id: &str) -> Result<Team> {
        todo!()
    }
    pub async fn create_team(&self, body: &CreateTeam) -> Result<Team> {
        todo!()
    }
    /// 409 (already a member) is returned as `Conflict`.
    pub async fn add_team_member(&self, team_id: &str, account_id: &str) -> Result<()> {
        todo!()
    }
    pub async fn remove_team_member(&self, team_id: &str, account_id: &str) -> Result<()> {
        todo!()
    }
    pub async fn list_account_teams(&self, account_id: &str) -> Result<Vec<Team>> {
        todo!()
    }
    pub async fn list_team_accounts(&self, team_id: &str) -> Result<Vec<SystemAccount>> {
        todo!()
    }
    pub async fn roles_reference(&self) -> Result<RolesReference> {
        todo!()
    }
}
