//! One error type for every Konnect call, so controllers can match on what happened.
use std::time::Duration;

use super::models::{InvalidParameter, Problem};

pub type Result<T, E = KonnectError> = std::result::Result<T, E>;

/// What went wrong with a Konnect call. Messages carry Konnect's `detail` and trace `instance`,
/// never a token value (requests and responses that carry one are never echoed).
#[derive(Debug, Clone, thiserror::Error)]
pub enum KonnectError {
    #[error("not found in Konnect: {detail} ({instance})")]
    NotFound { detail: String, instance: String },
    #[error("conflict in Konnect: {detail} ({instance})")]
    Conflict { detail: String, instance: String },
    #[error("Konnect rejected the token (401 Unauthorized): {detail}")]
    Unauthorized { detail: String },
    #[error("the Konnect token lacks permission (403 Forbidden): {detail}")]
    Forbidden { detail: String },
    #[error("Konnect rate limit hit; retry after {}s", retry_after.as_secs())]
    RateLimited { retry_after: Duration },
    #[error(
        "Konnect refused the request (400): {detail}{}",
        fmt_params(invalid_parameters)
    )]
    BadRequest {
        detail: String,
        invalid_parameters: Vec<InvalidParameter>,
    },
    #[error("Konnect server error {status}: {detail}")]
    Server { status: u16, detail: String },
    #[error("Konnect request failed: {0}")]
    Transport(String),
    #[error("unexpected Konnect response: {0}")]
    Decode(String),
    #[error("invalid Konnect configuration: {0}")]
    Config(String),
    /// Not sent: this replica lost the leader Lease.
    #[error("{0}")]
    Fenced(String),
}

fn fmt_params(params: &[InvalidParameter]) -> String {
    if params.is_empty() {
        return String::new();
    }
    let items: Vec<String> = params
        .iter()
        .map(|p| format!("{}: {}", p.field, p.reason))
        .collect();
    format!(" [{}]", items.join("; "))
}

impl KonnectError {
    /// Builds the error for a non-2xx status from its (possibly non-problem) body.
    pub fn from_status(status: u16, problem: Problem, retry_after: Option<Duration>) -> Self {
        let detail = if problem.detail.is_empty() {
            problem
                .message
                .clone()
                .unwrap_or_else(|| problem.title.clone())
        } else {
            problem.detail.clone()
        };
        let instance = problem.instance.clone();
        match status {
            400 => Self::BadRequest {
                detail,
                invalid_parameters: problem.invalid_parameters.unwrap_or_default(),
            },
            401 => Self::Unauthorized { detail },
            403 => Self::Forbidden { detail },
            404 => Self::NotFound { detail, instance },
            409 => Self::Conflict { detail, instance },
            429 => Self::RateLimited {
                retry_after: retry_after.unwrap_or(Duration::from_secs(15)),
            },
            s => Self::Server { status: s, detail },
        }
    }

    /// Konnect certainly did not act on the request (it refused it, or it never left): after a
    /// create, nothing was created, so there is nothing to find and heal later.
    pub fn nothing_was_done(&self) -> bool {
        matches!(
            self,
            Self::BadRequest { .. }
                | Self::Unauthorized { .. }
                | Self::Forbidden { .. }
                | Self::NotFound { .. }
                | Self::RateLimited { .. }
                | Self::Config(_)
        )
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }
    /// 401/403: the token is wrong or too weak; waiting will not fix it.
    pub fn is_auth(&self) -> bool {
        matches!(self, Self::Unauthorized { .. } | Self::Forbidden { .. })
    }
    /// Worth retrying later without a spec change.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. } | Self::Server { .. } | Self::Transport(_)
        )
    }
    /// A short CamelCase category, used as a metric label.
    pub fn category(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "NotFound",
            Self::Conflict { .. } => "Conflict",
            Self::Unauthorized { .. } => "Unauthorized",
            Self::Forbidden { .. } => "Forbidden",
            Self::RateLimited { .. } => "RateLimited",
            Self::BadRequest { .. } => "BadRequest",
            Self::Server { .. } => "ServerError",
            Self::Transport(_) => "Transport",
            Self::Decode(_) => "Decode",
            Self::Config(_) => "Config",
            Self::Fenced(_) => "Fenced",
        }
    }
}

/// `Ok(())` for a 404: deleting something already gone is done.
pub trait IgnoreNotFound {
    fn ignore_not_found(self) -> Result<()>;
}

impl IgnoreNotFound for Result<()> {
    fn ignore_not_found(self) -> Result<()> {
        match self {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }
}
