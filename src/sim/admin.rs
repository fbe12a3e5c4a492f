//! `/_sim/` endpoints (admin token only, never faulted): faults, state, counts, reset, seeding helpers.
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;

use super::faults::Faults;
use super::problem::{ApiError, InvalidParam};
use super::state::Shared;

type S = State<Arc<Shared>>;

pub fn admin_router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_sim/faults", get(get_faults).put(put_faults))
        .route("/_sim/state", get(state))
        .route("/_sim/counts", get(counts))
        .route("/_sim/counts/reset", post(reset_counts))
        .route("/_sim/reset", post(reset))
        .route("/_sim/teams", post(seed_team))
        .route("/_sim/system-accounts", post(seed_account))
        .route(
            "/_sim/system-accounts/{account_id}/access-tokens/{token_id}/expire",
            post(expire_token),
        )
        .route("/_sim/personal-access-tokens", post(create_personal_token))
        .route(
            "/_sim/personal-access-tokens/{token_id}",
            axum::routing::delete(revoke_personal_token),
        )
}

fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "Invalid request body",
            vec![InvalidParam::new("body", Some("invalid"), e.to_string()).body()],
        )
    })
}

async fn get_faults(State(s): S) -> Response {
    Json(s.faults().faults().clone()).into_response()
}

/// Replaces all fault settings (absent fields take their defaults).
async fn put_faults(State(s): S, body: Bytes) -> Result<Response, ApiError> {
    let f: Faults = parse(&body)?;
    f.validate().map_err(|e| {
        ApiError::bad_request(
            e.clone(),
            vec![InvalidParam::new("body", Some("invalid"), e).body()],
        )
    })?;
    s.faults().set(f.clone());
    Ok(Json(f).into_response())
}

async fn state(State(s): S) -> Response {
    Json(s.store().dump(Timestamp::now())).into_response()
}

async fn counts(State(s): S) -> Response {
    Json(s.stats().snapshot()).into_response()
}

async fn reset_counts(State(s): S) -> StatusCode {
    s.reset_counts();
    StatusCode::NO_CONTENT
}

/// Back to the seed data; counts and journal cleared; faults kept.
async fn reset(State(s): S) -> Result<StatusCode, ApiError> {
    s.reset()?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct SeedTeamBody {
    name: String,
    #[serde(default)]
    description: Option<String>,
}

async fn seed_team(State(s): S, body: Bytes) -> Result<Response, ApiError> {
    let b: SeedTeamBody = parse(&body)?;
    let team =
        s.store()
            .create_team(Timestamp::now(), &b.name, b.description, Default::default())?;
    Ok((StatusCode::CREATED, Json(team)).into_response())
}

#[derive(Deserialize)]
struct SeedAccountBody {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    konnect_managed: bool,
}

async fn seed_account(State(s): S, body: Bytes) -> Result<Response, ApiError> {
    let b: SeedAccountBody = parse(&body)?;
    let acc =
        s.store()
            .create_account(Timestamp::now(), &b.name, &b.description, b.konnect_managed)?;
    Ok((StatusCode::CREATED, Json(acc)).into_response())
}

async fn expire_token(
    State(s): S,
    Path((a, t)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    s.store().expire_token_now(Timestamp::now(), &a, &t)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct PersonalTokenBody {
    name: String,
}

/// A person's `kpat_` with full access; the value is in this reply only.
async fn create_personal_token(State(s): S, body: Bytes) -> Result<Response, ApiError> {
    let b: PersonalTokenBody = parse(&body)?;
    let created = s.store().create_personal_token(&b.name);
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "id": created.id,
            "name": created.name,
            "token": created.token.expose(),
        })),
    )
        .into_response())
}

async fn revoke_personal_token(
    State(s): S,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.store().revoke_personal_token(&id)?;
    Ok(StatusCode::NO_CONTENT)
}
