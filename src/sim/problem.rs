//! problem+json errors, shaped like the spec's `BaseError` / `BadRequestError`.
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// One `invalid_parameters` item. Serialises to exactly one of the spec's `InvalidParameter*` variants
/// (standard: no `minimum`/`maximum`; min/max: with them).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InvalidParam {
    pub field: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'static str>,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maximum: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<&'static str>>,
}

impl InvalidParam {
    pub fn new(
        field: impl Into<String>,
        rule: Option<&'static str>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            rule,
            source: None,
            reason: reason.into(),
            minimum: None,
            maximum: None,
            choices: None,
        }
    }
    pub fn body(mut self) -> Self {
        self.source = Some("body");
        self
    }
    pub fn required(field: &str) -> Self {
        Self::new(field, Some("required"), "is a required field").body()
    }
}

/// An error answer of the simulated API.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: String,
    pub invalid: Vec<InvalidParam>,
}

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            invalid: Vec::new(),
        }
    }
    pub fn bad_request(detail: impl Into<String>, invalid: Vec<InvalidParam>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            detail: detail.into(),
            invalid,
        }
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, detail)
    }
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "A valid token is required")
    }
    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "You do not have permission to perform this action",
        )
    }
    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The service is temporarily unavailable",
        )
    }
}

/// A problem+json response for any status.
pub fn problem_response(status: StatusCode, detail: &str, invalid: &[InvalidParam]) -> Response {
    let mut body = serde_json::json!({
        "status": status.as_u16(),
        "title": status.canonical_reason().unwrap_or("Error"),
        "type": format!("https://httpstatuses.com/{}", status.as_u16()),
        "instance": format!("kong:trace:{}", rand::random::<u64>()),
        "detail": detail,
    });
    // The spec requires invalid_parameters (at least one) on every 400.
    if status == StatusCode::BAD_REQUEST {
        let invalid = if invalid.is_empty() {
            vec![InvalidParam::new("body", Some("invalid"), detail)]
        } else {
            unique(invalid)
        };
        body["invalid_parameters"] = serde_json::to_value(invalid).unwrap_or_default();
    }
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

/// The spec's `invalid_parameters` has `uniqueItems`: a repeated problem (the same bad parameter given
/// twice) is listed once.
fn unique(invalid: &[InvalidParam]) -> Vec<InvalidParam> {
    let mut out: Vec<InvalidParam> = Vec::with_capacity(invalid.len());
    for p in invalid {
        if !out.contains(p) {
            out.push(p.clone());
        }
    }
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        problem_response(self.status, &self.detail, &self.invalid)
    }
}
