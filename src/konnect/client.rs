//! The typed Konnect Identity v3 client: auth, per-attempt timeouts, retries (429 honouring `Retry-After`, 5xx and
//! transport errors with jittered exponential backoff), a concurrency limit, pagination, and recovery of creates
//! whose response was lost.
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{self, HeaderValue};
use reqwest::{Method, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tracing::debug;

use super::error::{KonnectError, Result};
use super::models::*;
use super::response::{Reply, redact_tokens};
use super::retry::{
    BACKOFF_CAP, DEFAULT_RATE_LIMIT_WAIT, RetryPolicy, backoff_delays, parse_retry_after,
};
use super::url::normalize_base_url;

/// Page size asked for on every list call.
pub const PAGE_SIZE: u64 = 100;
/// A list that has not ended after this many pages is an error (a server that never says "last page" must not
/// keep us looping).
pub const MAX_PAGES: u64 = 1000;

/// Observes every HTTP attempt (metrics): operation id (the spec's operationId), status (None = transport
/// error), duration; and every wait between two attempts.
pub trait RequestObserver: Send + Sync {
    fn observe(&self, operation: &'static str, status: Option<u16>, elapsed: Duration);

    /// Called as the client starts waiting `wait` before the next attempt of `operation`.
    fn waiting(&self, _operation: &'static str, _why: RetryWait, _wait: Duration) {}
}

/// Why the client waits before another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryWait {
    /// Konnect answered 429: its Retry-After, or [`DEFAULT_RATE_LIMIT_WAIT`] without one.
    RetryAfter,
    /// A 5xx or a lost reply: the next jittered exponential backoff delay.
    Backoff,
}

/// Asked before every attempt of a write (any method but GET): an `Err` refuses it (the leader
/// fence, [`crate::fence::Fence`]).
pub trait WriteGate: Send + Sync {
    fn check(&self) -> std::result::Result<(), String>;
}

/// Where a client's token comes from when it may change under it (the operator's token file).
pub trait TokenSource: Send + Sync {
    /// Reads the token again from its origin: `Some` only when it differs from the one last
    /// returned (or given at start), `None` when unchanged or unreadable.
    fn reload(&self) -> Option<TokenValue>;
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
    /// Refuses writes when this replica may not write (None: always allowed).
    pub write_gate: Option<Arc<dyn WriteGate>>,
    /// Read again once on a 401 before the 401 counts (None: the token is fixed).
    pub token_source: Option<Arc<dyn TokenSource>>,
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
            write_gate: None,
            token_source: None,
        }
    }
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            // Unvalidated here: a pasted URL could hold a token.
            .field("base_url", &redact_tokens(&self.base_url))
            .field("token", &self.token)
            .field("request_timeout", &self.request_timeout)
            .field("max_attempts", &self.max_attempts)
            .field("max_retry_wait", &self.max_retry_wait)
            .field("max_concurrency", &self.max_concurrency)
            .field("observer", &self.observer.as_ref().map(|_| "set"))
            .field("write_gate", &self.write_gate.as_ref().map(|_| "set"))
            .field("token_source", &self.token_source.as_ref().map(|_| "set"))
            .finish()
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
pub struct KonnectClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base_url: String,
    /// `Bearer <token>`, marked sensitive; replaced when the token is reloaded.
    auth: std::sync::RwLock<HeaderValue>,
    config: ClientConfig,
    limit: Semaphore,
}

impl std::fmt::Debug for KonnectClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KonnectClient")
            .field("base_url", &self.inner.base_url)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// One logical request (possibly several attempts).
struct Call<'a> {
    operation: &'static str,
    method: Method,
    /// Path segments after `/v3`; each is percent-encoded on its own, so an id cannot change the route.
    path: &'a [&'a str],
    query: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
    policy: RetryPolicy,
}

/// The last reply of a call. `after_ambiguous_failure`: an earlier attempt failed with a 5xx or lost its
/// response, so it may have been executed (a 409 or 404 now may be our own doing).
struct Outcome {
    reply: Reply,
    after_ambiguous_failure: bool,
}

impl KonnectClient {
    pub fn new(config: ClientConfig) -> Result<Self> {
        // reqwest is built without a crypto provider; main installs ring, and so does this, for tests and tools.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let base_url = normalize_base_url(&config.base_url)?;
        if config.max_attempts == 0 {
            return Err(KonnectError::Config(
                "max_attempts must be at least 1".into(),
            ));
        }
        if config.max_concurrency == 0 {
            return Err(KonnectError::Config(
                "max_concurrency must be at least 1".into(),
            ));
        }
        if config.request_timeout.is_zero() {
            return Err(KonnectError::Config(
                "request_timeout must be positive".into(),
            ));
        }
        let auth = auth_header(&config.token)?;
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            // A redirect could carry the Authorization header somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("konnect-sa-operator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| KonnectError::Config(format!("cannot build the HTTP client: {e}")))?;
        let limit = Semaphore::new(config.max_concurrency);
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base_url,
                auth: std::sync::RwLock::new(auth),
                config,
                limit,
            }),
        })
    }

    /// Uses `token` from the next request on (clones share it). False when it is the one in use.
    pub fn set_token(&self, token: &TokenValue) -> Result<bool> {
        let auth = auth_header(token)?;
        let mut current = self.inner.auth.write().unwrap_or_else(|p| p.into_inner());
        if *current == auth {
            return Ok(false);
        }
        *current = auth;
        Ok(true)
    }

    /// True when `token` is the one this client sends.
    pub fn uses_token(&self, token: &TokenValue) -> bool {
        auth_header(token)
            .is_ok_and(|auth| *self.inner.auth.read().unwrap_or_else(|p| p.into_inner()) == auth)
    }

    /// The normalised base URL (global host, no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    // ---- organisation and roles ----

    /// `GET /v3/organizations/me`: proves the token works.
    pub async fn me(&self) -> Result<Organization> {
        self.get("get-organizations-me", &["organizations", "me"], vec![])
            .await
    }

    /// `GET /v3/roles`.
    pub async fn roles_reference(&self) -> Result<RolesReference> {
        self.get("get-predefined-roles", &["roles"], vec![]).await
    }

    // ---- system accounts ----

    pub async fn list_system_accounts(&self, filter: &AccountFilter) -> Result<Vec<SystemAccount>> {
        let mut query = vec![];
        if let Some(name) = &filter.name_eq {
            query.push(("filter[name][eq]", name.clone()));
        }
        if let Some(managed) = filter.konnect_managed {
            query.push(("filter[konnect_managed]", managed.to_string()));
        }
        self.list_all("get-system-accounts", &["system-accounts"], query, true)
            .await
    }

    /// A create retried after a 5xx or a lost response that then meets 409 looks the account up by name and
    /// returns it with `recovered: true` (the caller checked the name was free before creating, so the account
    /// is the one the lost attempt made). A 409 on the first attempt is `Conflict`.
    pub async fn create_system_account(
        &self,
        body: &CreateSystemAccount,
    ) -> Result<Created<SystemAccount>> {
        const OP: &str = "post-system-accounts";
        let out = self
            .send(
                OP,
                Method::POST,
                &["system-accounts"],
                body,
                RetryPolicy::Transient,
            )
            .await?;
        if out.reply.is_success() {
            return Ok(Created {
                value: out.reply.json(OP)?,
                recovered: false,
            });
        }
        if out.reply.status == 409 && out.after_ambiguous_failure {
            let filter = AccountFilter {
                name_eq: Some(body.name.clone()),
                konnect_managed: None,
            };
            let found = self.list_system_accounts(&filter).await?;
            if let Some(account) = found.into_iter().find(|a| a.name == body.name) {
                debug!(operation = OP, "recovered a create whose response was lost");
                return Ok(Created {
                    value: account,
                    recovered: true,
                });
            }
        }
        Err(out.reply.error())
    }

    pub async fn get_system_account(&self, id: &str) -> Result<SystemAccount> {
        self.get("get-system-accounts-id", &["system-accounts", id], vec![])
            .await
    }

    pub async fn update_system_account(
        &self,
        id: &str,
        body: &UpdateSystemAccount,
    ) -> Result<SystemAccount> {
        const OP: &str = "patch-system-accounts-id";
        // Setting fields to given values is idempotent, so the patch is retried like a read.
        let out = self
            .send(
                OP,
                Method::PATCH,
                &["system-accounts", id],
                body,
                RetryPolicy::Transient,
            )
            .await?;
        decode(OP, out)
    }

    pub async fn delete_system_account(&self, id: &str) -> Result<()> {
        self.delete("delete-system-accounts-id", &["system-accounts", id])
            .await
    }

    // ---- access tokens ----

    pub async fn list_access_tokens(
        &self,
        account_id: &str,
        name_eq: Option<&str>,
    ) -> Result<Vec<AccessToken>> {
        let query = name_eq
            .map(|n| vec![("filter[name][eq]", n.to_string())])
            .unwrap_or_default();
        self.list_all(
            "get-system-account-id-access-tokens",
            &["system-accounts", account_id, "access-tokens"],
            query,
            true,
        )
        .await
    }

    /// Never retried: a lost response would lose the value (the token controller heals that case).
    pub async fn create_access_token(
        &self,
        account_id: &str,
        body: &CreateAccessToken,
    ) -> Result<AccessTokenCreated> {
        const OP: &str = "post-system-accounts-id-access-tokens";
        // One attempt for every failure that may have created the token (5xx, timeout, lost response): a repeat
        // would make a second token while the first one's value is gone. Only a 429 is waited out and re-sent,
        // because a rate-limited request was refused before it ran, so nothing was created.
        let out = self
            .send(
                OP,
                Method::POST,
                &["system-accounts", account_id, "access-tokens"],
                body,
                RetryPolicy::RateLimitOnly,
            )
            .await?;
        decode(OP, out)
    }

    pub async fn get_access_token(&self, account_id: &str, token_id: &str) -> Result<AccessToken> {
        self.get(
            "get-system-accounts-id-access-tokens-id",
            &["system-accounts", account_id, "access-tokens", token_id],
            vec![],
        )
        .await
    }

    pub async fn delete_access_token(&self, account_id: &str, token_id: &str) -> Result<()> {
        self.delete(
            "delete-system-accounts-id-access-tokens-id",
            &["system-accounts", account_id, "access-tokens", token_id],
        )
        .await
    }

    // ---- role assignments ----

    pub async fn list_assigned_roles(&self, account_id: &str) -> Result<Vec<AssignedRole>> {
        // The spec declares no page parameters here (the reply still has `meta`): ask without them and follow
        // pages only if the reply says there are more.
        self.list_all(
            "get-system-accounts-accountId-assigned-roles",
            &["system-accounts", account_id, "assigned-roles"],
            vec![],
            false,
        )
        .await
    }

    /// 409 (already assigned) is returned as `Conflict`; the caller adopts by listing. When the 409 answers a
    /// retry after a lost response, the assignment is ours: it is looked up and returned.
    pub async fn assign_role(&self, account_id: &str, role: &RoleTuple) -> Result<AssignedRole> {
        const OP: &str = "post-system-accounts-accountId-assigned-roles";
        let out = self
            .send(
                OP,
                Method::POST,
                &["system-accounts", account_id, "assigned-roles"],
                role,
                RetryPolicy::Transient,
            )
            .await?;
        if out.reply.is_success() {
            return out.reply.json(OP);
        }
        if out.reply.status == 409 && out.after_ambiguous_failure {
            let assigned = self.list_assigned_roles(account_id).await?;
            if let Some(found) = assigned.into_iter().find(|a| &a.role == role) {
                return Ok(found);
            }
        }
        Err(out.reply.error())
    }

    pub async fn delete_assigned_role(&self, account_id: &str, assignment_id: &str) -> Result<()> {
        self.delete(
            "delete-system-accounts-accountId-assigned-roles-roleId",
            &[
                "system-accounts",
                account_id,
                "assigned-roles",
                assignment_id,
            ],
        )
        .await
    }

    // ---- teams ----

    pub async fn list_teams(&self, name_eq: Option<&str>) -> Result<Vec<Team>> {
        let query = name_eq
            .map(|n| vec![("filter[name][eq]", n.to_string())])
            .unwrap_or_default();
        self.list_all("list-teams", &["teams"], query, true).await
    }

    pub async fn get_team(&self, team_id: &str) -> Result<Team> {
        self.get("get-team", &["teams", team_id], vec![]).await
    }

    /// Team names are not unique, so a create that may have run is not repeated (only a 429 is re-sent).
    pub async fn create_team(&self, body: &CreateTeam) -> Result<Team> {
        const OP: &str = "create-team";
        let out = self
            .send(
                OP,
                Method::POST,
                &["teams"],
                body,
                RetryPolicy::RateLimitOnly,
            )
            .await?;
        decode(OP, out)
    }

    /// 409 (already a member) is returned as `Conflict`, except when it answers a retry after a lost response:
    /// then the earlier attempt added the member, and this is success.
    pub async fn add_team_member(&self, team_id: &str, account_id: &str) -> Result<()> {
        const OP: &str = "post-teams-teamId-system-accounts";
        let body = AddSystemAccountToTeam {
            id: account_id.to_string(),
        };
        let out = self
            .send(
                OP,
                Method::POST,
                &["teams", team_id, "system-accounts"],
                &body,
                RetryPolicy::Transient,
            )
            .await?;
        if out.reply.is_success() || (out.reply.status == 409 && out.after_ambiguous_failure) {
            return Ok(());
        }
        Err(out.reply.error())
    }

    pub async fn remove_team_member(&self, team_id: &str, account_id: &str) -> Result<()> {
        self.delete(
            "delete-teams-teamId-system-accounts-accountId",
            &["teams", team_id, "system-accounts", account_id],
        )
        .await
    }

    pub async fn list_account_teams(&self, account_id: &str) -> Result<Vec<Team>> {
        self.list_all(
            "get-system-accounts-accountId-teams",
            &["system-accounts", account_id, "teams"],
            vec![],
            true,
        )
        .await
    }

    pub async fn list_team_accounts(&self, team_id: &str) -> Result<Vec<SystemAccount>> {
        self.list_all(
            "get-teams-teamId-system-accounts",
            &["teams", team_id, "system-accounts"],
            vec![],
            true,
        )
        .await
    }

    // ---- plumbing ----

    async fn get<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        path: &[&str],
        query: Vec<(&'static str, String)>,
    ) -> Result<T> {
        let out = self
            .call(&Call {
                operation,
                method: Method::GET,
                path,
                query,
                body: None,
                policy: RetryPolicy::Transient,
            })
            .await?;
        decode(operation, out)
    }

    /// 404 after an earlier attempt that may have run is success: that attempt deleted it.
    async fn delete(&self, operation: &'static str, path: &[&str]) -> Result<()> {
        let out = self
            .call(&Call {
                operation,
                method: Method::DELETE,
                path,
                query: vec![],
                body: None,
                policy: RetryPolicy::Transient,
            })
            .await?;
        if out.reply.is_success() || (out.reply.status == 404 && out.after_ambiguous_failure) {
            return Ok(());
        }
        Err(out.reply.error())
    }

    async fn send<B: Serialize>(
        &self,
        operation: &'static str,
        method: Method,
        path: &[&str],
        body: &B,
        policy: RetryPolicy,
    ) -> Result<Outcome> {
        let body = serde_json::to_vec(body).map_err(|e| {
            KonnectError::Decode(format!("{operation}: cannot encode the request: {e}"))
        })?;
        self.call(&Call {
            operation,
            method,
            path,
            query: vec![],
            body: Some(body),
            policy,
        })
        .await
    }

    /// Every page of a list. `page_params`: send `page[size]`/`page[number]` on the first request (the spec
    /// declares them for this operation).
    async fn list_all<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        path: &[&str],
        query: Vec<(&'static str, String)>,
        page_params: bool,
    ) -> Result<Vec<T>> {
        let mut items = Vec::new();
        let mut number = 1u64;
        let mut size = PAGE_SIZE;
        loop {
            let mut q = query.clone();
            if page_params || number > 1 {
                q.push(("page[size]", size.to_string()));
                q.push(("page[number]", number.to_string()));
            }
            let page: ListPage<T> = self.get(operation, path, q).await?;
            let fetched = page.data.len() as u64;
            items.extend(page.data);
            let Some(meta) = page.meta.map(|m| m.page) else {
                return Ok(items);
            };
            if meta.size > 0 {
                size = meta.size;
            }
            // Our own page counter, not the echoed `number`: a server that echoes a wrong number cannot make
            // us re-read a page forever.
            if fetched == 0 || fetched < size || number.saturating_mul(size) >= meta.total {
                return Ok(items);
            }
            if number >= MAX_PAGES {
                return Err(KonnectError::Decode(format!(
                    "{operation}: the list did not end after {MAX_PAGES} pages"
                )));
            }
            number += 1;
        }
    }

    /// Sends a call, retrying per its policy. Returns the last reply whatever its status (callers decide what
    /// a 409 or 404 means), or `Transport` when the last attempt got no reply.
    async fn call(&self, call: &Call<'_>) -> Result<Outcome> {
        let url = self.url(call)?;
        let config = &self.inner.config;
        let max_attempts = config.max_attempts.max(1);
        let mut delays = backoff_delays(max_attempts);
        let mut ambiguous = false;
        let mut attempt = 0u32;
        let mut reloaded = false;
        loop {
            attempt += 1;
            let last = attempt >= max_attempts;
            let may_retry_failure = call.policy == RetryPolicy::Transient && !last;
            // Every attempt of a write, retries after a Retry-After wait included.
            if call.method != Method::GET
                && let Some(gate) = &config.write_gate
                && let Err(why) = gate.check()
            {
                return Err(KonnectError::Fenced(format!("{}: {why}", call.operation)));
            }
            match self.attempt(call, &url, attempt).await {
                Ok(reply) if reply.status == 429 => {
                    let wait = reply.retry_after.unwrap_or(DEFAULT_RATE_LIMIT_WAIT);
                    if last || wait > config.max_retry_wait {
                        return Ok(Outcome {
                            reply,
                            after_ambiguous_failure: ambiguous,
                        });
                    }
                    self.wait(call, RetryWait::RetryAfter, wait).await;
                }
                // The token may have been replaced under us (a rotated token file): read it
                // once more and repeat with the new one before the 401 counts. Konnect did
                // nothing with a rejected request, so repeating is safe for every method.
                Ok(reply) if reply.status == 401 && !reloaded && self.reload_token() => {
                    reloaded = true;
                    attempt -= 1;
                }
                Ok(reply) if reply.status >= 500 && may_retry_failure => {
                    ambiguous = true;
                    let delay = delays.next().unwrap_or(BACKOFF_CAP);
                    self.wait(call, RetryWait::Backoff, delay).await;
                }
                Ok(reply) => {
                    return Ok(Outcome {
                        reply,
                        after_ambiguous_failure: ambiguous,
                    });
                }
                Err(_) if may_retry_failure => {
                    ambiguous = true;
                    let delay = delays.next().unwrap_or(BACKOFF_CAP);
                    self.wait(call, RetryWait::Backoff, delay).await;
                }
                Err(message) => {
                    return Err(KonnectError::Transport(format!(
                        "{}: {message} (attempt {attempt} of {max_attempts})",
                        call.operation
                    )));
                }
            }
        }
    }

    /// Waits between two attempts, told to the observer first.
    async fn wait(&self, call: &Call<'_>, why: RetryWait, wait: Duration) {
        if let Some(observer) = &self.inner.config.observer {
            observer.waiting(call.operation, why, wait);
        }
        tokio::time::sleep(wait).await;
    }

    /// Re-reads the token from its source; true when a different one is now in use.
    fn reload_token(&self) -> bool {
        let Some(source) = &self.inner.config.token_source else {
            return false;
        };
        match source.reload() {
            Some(token) => self.set_token(&token).unwrap_or(false),
            None => false,
        }
    }

    /// One HTTP exchange under the concurrency limit and the per-attempt timeout; reported to the observer.
    async fn attempt(
        &self,
        call: &Call<'_>,
        url: &Url,
        attempt: u32,
    ) -> std::result::Result<Reply, String> {
        let inner = &*self.inner;
        // The semaphore is never closed; holding the permit only while on the wire, not while backing off.
        let _permit = inner.limit.acquire().await.map_err(|e| e.to_string())?;
        let started = Instant::now();
        let mut request = inner
            .http
            .request(call.method.clone(), url.clone())
            .header(
                header::AUTHORIZATION,
                inner.auth.read().unwrap_or_else(|p| p.into_inner()).clone(),
            )
            .header(header::ACCEPT, "application/json, application/problem+json");
        if let Some(body) = &call.body {
            request = request
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let exchange = async {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let headers = response.headers();
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let retry_after = parse_retry_after(
                headers
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()),
                SystemTime::now(),
            );
            let body = response.bytes().await?.to_vec();
            Ok::<_, reqwest::Error>(Reply {
                status,
                content_type,
                body,
                retry_after,
            })
        };
        let result = match tokio::time::timeout(inner.config.request_timeout, exchange).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(describe_transport(&e)),
            Err(_) => Err(format!(
                "timed out after {:?}",
                inner.config.request_timeout
            )),
        };
        let elapsed = started.elapsed();
        let status = result.as_ref().ok().map(|r| r.status);
        if let Some(observer) = &inner.config.observer {
            observer.observe(call.operation, status, elapsed);
        }
        debug!(
            operation = call.operation,
            method = %call.method,
            attempt,
            status,
            elapsed_ms = elapsed.as_millis() as u64,
            error = result.as_ref().err().map(String::as_str),
            "Konnect request"
        );
        result
    }

    fn url(&self, call: &Call<'_>) -> Result<Url> {
        let mut url = Url::parse(&self.inner.base_url)
            .map_err(|e| KonnectError::Config(format!("base URL: {e}")))?;
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|_| KonnectError::Config("base URL cannot have a path".into()))?;
            segments.pop_if_empty().push("v3").extend(call.path);
        }
        if !call.query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in &call.query {
                pairs.append_pair(k, v);
            }
        }
        Ok(url)
    }
}

/// `Bearer <token>`, marked sensitive.
fn auth_header(token: &TokenValue) -> Result<HeaderValue> {
    let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        // Not echoing the value: it is the secret.
        .map_err(|_| {
            KonnectError::Config(
                "the Konnect token contains characters not allowed in a header".into(),
            )
        })?;
    auth.set_sensitive(true);
    Ok(auth)
}

/// A list reply; `meta` is optional here so a reply without it is read as the only page.
#[derive(serde::Deserialize)]
struct ListPage<T> {
    #[serde(default)]
    meta: Option<PageMetaWrapper>,
    data: Vec<T>,
}

fn decode<T: DeserializeOwned>(operation: &str, out: Outcome) -> Result<T> {
    if out.reply.is_success() {
        out.reply.json(operation)
    } else {
        Err(out.reply.error())
    }
}

/// A transport error with its causes (hyper's "connection closed before message completed" is in a source).
fn describe_transport(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "could not connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    redact_tokens(&text)
}
