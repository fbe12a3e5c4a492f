//! Bearer authentication: the admin token, a person's `kpat_`, or a live `spat_` token issued by
//! this simulator. Authorisation as Konnect does it for the identity API: a `spat_` whose account
//! lacks the Identity Admin role (directly or through the Organization Admin team) gets 403 on
//! everything but the token check (`/organizations/me`) and the roles reference.
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::jiff::Timestamp;

use super::problem::ApiError;
use super::state::Shared;
use super::store::Principal;

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares without an early exit on the first differing byte.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

pub fn principal(shared: &Shared, headers: &HeaderMap, now: Timestamp) -> Option<Principal> {
    let token = bearer(headers)?;
    if same(token, shared.admin_token.expose()) {
        return Some(Principal::Admin);
    }
    shared.store().authenticate(now, token)
}

/// API routes: admin token or a live `spat_`.
pub async fn require_token(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(who) = principal(&shared, req.headers(), Timestamp::now()) else {
        return ApiError::unauthorized().into_response();
    };
    if !open_to_every_token(req.uri().path()) && !shared.store().is_identity_admin(&who) {
        return ApiError::forbidden().into_response();
    }
    next.run(req).await
}

/// Paths any authenticated token may read, whatever its roles.
fn open_to_every_token(path: &str) -> bool {
    let rest = path
        .strip_prefix("/v3")
        .or_else(|| path.strip_prefix("/v2"))
        .unwrap_or(path);
    matches!(rest, "/organizations/me" | "/roles")
}

/// `/_sim/` routes: the admin token only.
pub async fn require_admin(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let resp = match bearer(req.headers()) {
        Some(t) if same(t, shared.admin_token.expose()) => next.run(req).await,
        _ => ApiError::unauthorized().into_response(),
    };
    tracing::info!(method = %method, path = %path, status = resp.status().as_u16(), "admin request");
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer kpat_x"),
        );
        assert_eq!(bearer(&h), Some("kpat_x"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  spat_y "),
        );
        assert_eq!(bearer(&h), Some("spat_y"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
