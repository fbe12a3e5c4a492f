//! The middleware every API request goes through: count, fault injection, journal, access log.
//! Never logs a header or a body (token values travel in both).
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::jiff::Timestamp;

use super::conn::ConnKill;
use super::faults::{Before, Lost};
use super::handlers::operation_id;
use super::problem::ApiError;
use super::state::{Shared, lock};
use super::stats::JournalEntry;

const BODY_LIMIT: usize = 1 << 20;

/// Kong gateway's own 429 (not problem+json).
fn rate_limited(retry_after: u64, limit: Option<u64>) -> Response {
    let mut resp = (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        r#"{"message":"API rate limit exceeded"}"#,
    )
        .into_response();
    let h = resp.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    if let Some(limit) = limit {
        h.insert("x-ratelimit-limit-minute", HeaderValue::from(limit));
        h.insert("x-ratelimit-remaining-minute", HeaderValue::from(0u64));
    }
    resp
}

fn bad_gateway() -> Response {
    (
        StatusCode::BAD_GATEWAY,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        r#"{"message":"An invalid response was received from the upstream server"}"#,
    )
        .into_response()
}

fn json_of(bytes: &[u8]) -> Option<serde_json::Value> {
    serde_json::from_slice(bytes).ok()
}

pub async fn api_pipeline(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let operation = operation_id(&method, &template).unwrap_or_else(|| "unknown".into());
    let kill = req
        .extensions()
        .get::<ConnectInfo<ConnKill>>()
        .map(|c| c.0.clone());
    shared.stats().record(&operation, Timestamp::now());

    let latency = shared.faults().latency_ms();
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let before = shared.faults().before(Timestamp::now());
    let (resp, fault) = match before {
        Before::RateLimited { retry_after, limit } => {
            (rate_limited(retry_after, limit), Some("429"))
        }
        Before::Unavailable => (ApiError::unavailable().into_response(), Some("5xx")),
        Before::Proceed => run(&shared, req, next, &operation, kill).await,
    };
    tracing::info!(
        method = %method,
        path = %template,
        operation = %operation,
        status = resp.status().as_u16(),
        duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        fault = fault.unwrap_or("none"),
        "request"
    );
    resp
}

/// Runs the operation, records it in the journal, then maybe loses the response.
async fn run(
    shared: &Shared,
    req: Request,
    next: Next,
    operation: &str,
    kill: Option<ConnKill>,
) -> (Response, Option<&'static str>) {
    let Some(journal) = &shared.journal else {
        let resp = next.run(req).await;
        return lose(shared, resp, kill);
    };
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let (parts, body) = req.into_parts();
    let req_bytes = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => {
            return (
                ApiError::bad_request("Request body too large", vec![]).into_response(),
                None,
            );
        }
    };
    let req = Request::from_parts(parts, Body::from(req_bytes.clone()));
    let resp = next.run(req).await;
    let (parts, body) = resp.into_parts();
    let resp_bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_else(|_| Bytes::new());
    let status = parts.status.as_u16();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let resp = Response::from_parts(parts, Body::from(resp_bytes.clone()));
    let (resp, fault) = lose(shared, resp, kill);
    lock(journal).push(JournalEntry {
        operation: operation.to_string(),
        method,
        path,
        status,
        request_body: json_of(&req_bytes),
        response_body: json_of(&resp_bytes),
        response_content_type: content_type,
        delivered: fault.is_none(),
    });
    (resp, fault)
}

/// The "lost response" fault: the operation has committed; the caller sees a 502, a 503 or a cut connection.
fn lose(
    shared: &Shared,
    resp: Response,
    kill: Option<ConnKill>,
) -> (Response, Option<&'static str>) {
    match shared.faults().after() {
        None => (resp, None),
        Some(Lost::BadGateway) => (bad_gateway(), Some("lost-502")),
        Some(Lost::Unavailable) => (ApiError::unavailable().into_response(), Some("lost-503")),
        Some(Lost::DropConnection) => match kill {
            Some(k) => {
                // Every later read or write on this connection fails: hyper closes it unanswered.
                k.kill();
                (resp, Some("lost-drop"))
            }
            None => (bad_gateway(), Some("lost-502")),
        },
    }
}
