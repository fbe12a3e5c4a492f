//! What a failed reconcile means for the user (condition reason and message) and for the
//! work queue (when to look again). One function per question, so a reason leads back here.
use std::time::Duration;

use crate::k8s::conditions::Reason;
use crate::konnect::KonnectError;

/// A reconcile that could not reach the desired state.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The spec cannot be acted on as written; waiting will not help, an edit will.
    #[error("{0}")]
    InvalidSpec(String),
    /// Konnect holds something that clashes with the spec (a taken name, an account we must not adopt).
    #[error("{0}")]
    Conflict(String),
    /// The Secret to write exists and is not ours.
    #[error("{0}")]
    SecretConflict(String),
    /// The referenced SystemAccount is not Ready yet; its watch wakes us.
    #[error("{0}")]
    WaitingForSystemAccount(String),
    /// The referenced SystemAccount exists and is being created, with no failure so far: a wait of
    /// moments (its Ready event wakes us), reported like `WaitingForSystemAccount`.
    #[error("{0}")]
    SystemAccountInProgress(String),
    /// Another object of this cluster is about to take something over (a shared role assignment);
    /// looked at again shortly.
    #[error("{0}")]
    Handover(String),
    /// The Konnect credentials could not be read or were refused.
    #[error("{0}")]
    Auth(String),
    #[error("{context}: {source}")]
    Konnect {
        context: String,
        #[source]
        source: KonnectError,
    },
    /// Shown as the API server's Status message, never kube's Debug dump of the Status.
    #[error("Kubernetes API: {context}: {}", crate::k8s::error_summary(.source))]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },
}

impl ReconcileError {
    pub fn konnect(context: impl Into<String>) -> impl FnOnce(KonnectError) -> Self {
        let context = context.into();
        move |source| Self::Konnect { context, source }
    }

    pub fn kube(context: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let context = context.into();
        move |source| Self::Kube { context, source }
    }

    /// The `Ready=False` reason shown to the user.
    pub fn reason(&self) -> Reason {
        match self {
            Self::InvalidSpec(_) => Reason::InvalidSpec,
            Self::Conflict(_) => Reason::Conflict,
            Self::SecretConflict(_) => Reason::SecretConflict,
            Self::WaitingForSystemAccount(_) | Self::SystemAccountInProgress(_) => {
                Reason::WaitingForSystemAccount
            }
            Self::Handover(_) => Reason::Pending,
            Self::Auth(_) => Reason::AuthFailed,
            Self::Konnect { source, .. } => match source {
                KonnectError::Unauthorized { .. } | KonnectError::Forbidden { .. } => {
                    Reason::AuthFailed
                }
                KonnectError::RateLimited { .. } => Reason::RateLimited,
                KonnectError::BadRequest { .. } | KonnectError::Config(_) => Reason::InvalidSpec,
                _ => Reason::KonnectError,
            },
            // The API server refuses what the spec asks for (a label it will not take, an
            // admission policy): an edit, not waiting, fixes it.
            Self::Kube { source, .. } if crate::k8s::is_refusal(source) => Reason::InvalidSpec,
            Self::Kube { .. } => Reason::Pending,
        }
    }

    /// A message that says what happened and what to do about it.
    pub fn message(&self) -> String {
        match self {
            Self::Konnect {
                source: KonnectError::Unauthorized { .. },
                ..
            } => format!(
                "{self}. The token was rejected (expired, revoked or mistyped): check the Konnect token (operator \
                 flag --konnect-token-file / KONNECT_TOKEN, or the Secret named in spec.konnect.authSecretRef)."
            ),
            Self::Konnect {
                source: KonnectError::Forbidden { .. },
                ..
            } => format!(
                "{self}. The token is valid but lacks the Identity Admin role: assign Identity Admin to its \
                 account (or add it to the Organization Admin team) for the operator's token \
                 (--konnect-token-file / KONNECT_TOKEN) or the Secret named in spec.konnect.authSecretRef."
            ),
            Self::Konnect {
                source: KonnectError::RateLimited { retry_after },
                ..
            } => {
                format!(
                    "Konnect rate limit reached; retrying in {}s.",
                    retry_after.as_secs()
                )
            }
            Self::Konnect { source, .. } if source.is_transient() => {
                format!("{self}. Retrying with backoff.")
            }
            Self::Kube { source, .. } if crate::k8s::is_refusal(source) => {
                format!(
                    "{self}. The API server will refuse this again: fix what it names; retried with backoff."
                )
            }
            _ => self.to_string(),
        }
    }

    /// A metric label.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Konnect { source, .. } => source.category(),
            Self::Kube { .. } => "Kubernetes",
            other => other.reason().as_str(),
        }
    }

    /// A stale resourceVersion: someone else wrote first; look again at once with fresh data.
    pub fn is_write_conflict(&self) -> bool {
        matches!(self, Self::Kube { source: kube::Error::Api(s), .. } if s.code == 409)
    }

    /// Waiting for the SystemAccount: a state reported in the condition, not a failure (no
    /// Warning Event, no error metric, no warning log).
    pub fn is_waiting(&self) -> bool {
        matches!(
            self,
            Self::WaitingForSystemAccount(_) | Self::SystemAccountInProgress(_)
        )
    }

    /// Waiting on an account that is being created right now (see [`Self::SystemAccountInProgress`]).
    pub fn is_brief_wait(&self) -> bool {
        matches!(self, Self::SystemAccountInProgress(_))
    }
}

/// When to reconcile again after `err`, given how many times in a row this object failed.
/// Exponential (5s, 10s, ... capped at `max`) with up to 10% jitter; never a hot loop.
/// Errors an edit must fix still get looked at again at the capped delay, so a fix made in
/// Konnect (a freed name) is noticed too.
pub fn retry_delay(
    err: &ReconcileError,
    failures: u32,
    max: Duration,
    jitter_unit: f64,
) -> Duration {
    let backoff = |base_secs: u64| {
        let exp = base_secs.saturating_mul(1u64 << failures.min(16));
        Duration::from_secs(exp).min(max)
    };
    let base = match err {
        ReconcileError::Konnect {
            source: KonnectError::RateLimited { retry_after },
            ..
        } => (*retry_after).max(backoff(1)).min(max),
        ReconcileError::InvalidSpec(_)
        | ReconcileError::Conflict(_)
        | ReconcileError::SecretConflict(_) => backoff(30),
        // A deterministic refusal by the API server is a spec error in all but name.
        ReconcileError::Kube { source, .. } if crate::k8s::is_refusal(source) => backoff(30),
        // The account's watch wakes us; this is only the fallback, so it does not grow.
        ReconcileError::WaitingForSystemAccount(_) | ReconcileError::SystemAccountInProgress(_) => {
            Duration::from_secs(30).min(max)
        }
        // The other object records it within a reconcile or two.
        ReconcileError::Handover(_) => Duration::from_secs(2).min(max),
        e if e.is_write_conflict() => Duration::from_millis(200),
        _ => backoff(5),
    };
    base + base.mul_f64(0.1 * jitter_unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(300);

    fn transient() -> ReconcileError {
        ReconcileError::konnect("creating account")(KonnectError::Server {
            status: 503,
            detail: "down".into(),
        })
    }

    #[test]
    fn transient_errors_back_off_exponentially_up_to_the_cap() {
        let d: Vec<u64> = (0..10)
            .map(|n| retry_delay(&transient(), n, MAX, 0.0).as_secs())
            .collect();
        assert_eq!(d, vec![5, 10, 20, 40, 80, 160, 300, 300, 300, 300]);
    }

    #[test]
    fn rate_limit_waits_at_least_retry_after() {
        let e = ReconcileError::konnect("x")(KonnectError::RateLimited {
            retry_after: Duration::from_secs(77),
        });
        assert_eq!(retry_delay(&e, 0, MAX, 0.0), Duration::from_secs(77));
        assert_eq!(e.reason(), Reason::RateLimited);
    }

    #[test]
    fn jitter_adds_at_most_ten_percent() {
        let d = retry_delay(&transient(), 6, MAX, 1.0);
        assert_eq!(d, Duration::from_secs(330));
    }

    #[test]
    fn auth_errors_map_to_auth_failed_and_say_what_to_fix() {
        let e = ReconcileError::konnect("reading account")(KonnectError::Unauthorized {
            detail: "bad".into(),
        });
        assert_eq!(e.reason(), Reason::AuthFailed);
        assert!(
            e.message().contains("token was rejected"),
            "{}",
            e.message()
        );
        let e = ReconcileError::konnect("reading account")(KonnectError::Forbidden {
            detail: "no".into(),
        });
        assert_eq!(e.reason(), Reason::AuthFailed);
        assert!(
            e.message().contains("lacks the Identity Admin role")
                && !e.message().contains("rejected"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn api_server_refusals_back_off_like_spec_errors_and_say_so_briefly() {
        let status = kube::core::Status::failure(
            "Secret \"s\" is invalid: metadata.labels: Invalid value: \"bad key\"",
            "Invalid",
        )
        .with_code(422);
        let e = ReconcileError::kube("writing Secret s")(kube::Error::Api(Box::new(status)));
        assert_eq!(e.reason(), Reason::InvalidSpec);
        assert_eq!(retry_delay(&e, 0, MAX, 0.0), Duration::from_secs(30));
        let msg = e.message();
        assert!(msg.contains("metadata.labels: Invalid value"), "{msg}");
        assert!(!msg.contains("Status {"), "no Debug dump: {msg}");
        // A stale copy is retried at once; a server error backs off from 5 s.
        let stale = kube::core::Status::failure("conflict", "Conflict").with_code(409);
        let e = ReconcileError::kube("x")(kube::Error::Api(Box::new(stale)));
        assert_eq!(retry_delay(&e, 0, MAX, 0.0), Duration::from_millis(200));
        let busy = kube::core::Status::failure("etcd", "InternalError").with_code(500);
        let e = ReconcileError::kube("x")(kube::Error::Api(Box::new(busy)));
        assert_eq!(retry_delay(&e, 0, MAX, 0.0), Duration::from_secs(5));
        assert_eq!(e.reason(), Reason::Pending);
    }

    #[test]
    fn spec_errors_are_not_retried_in_a_hot_loop() {
        let e = ReconcileError::InvalidSpec("no".into());
        assert!(retry_delay(&e, 0, MAX, 0.0) >= Duration::from_secs(30));
    }
}
