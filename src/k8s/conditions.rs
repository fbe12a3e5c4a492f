//! The one place that builds conditions. A reason string leads back to the function that chose it
//! (`controller::error::ReconcileError::reason` for failures, `controller::reconciler` for Ready).
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::common::reason;

/// The primary condition read by kstatus, Flux, Argo CD and `kubectl wait`.
pub const READY: &str = crate::api::common::CONDITION_READY;
/// Token only: a token create is in flight (`status.pendingTokenName` is set).
pub const ISSUING: &str = crate::api::common::CONDITION_ISSUING;
/// Token only: a rollout restart target could not be patched.
pub const RESTART_TARGETS: &str = "RestartTargetsReady";
/// Token only: this token's Secret is the operator's own credential (`--konnect-token-secret`).
pub const OPERATOR_CREDENTIAL: &str = "OperatorCredential";

/// The condition reasons of API.md (CamelCase).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Reconciled,
    Pending,
    InvalidSpec,
    Conflict,
    AuthFailed,
    KonnectError,
    RateLimited,
    WaitingForSystemAccount,
    SecretConflict,
    Deleting,
    DeletionBlocked,
    /// Secondary conditions only (restart targets).
    TargetNotFound,
    /// Secondary conditions only: a restart failed and is retried (the previous token is kept).
    RestartFailed,
    /// OperatorCredential only: the operator runs on the current token.
    InUse,
    /// OperatorCredential only: the operator has not loaded the current token yet; the previous
    /// one is kept until it has.
    Loading,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Reconciled => reason::RECONCILED,
            Reason::Pending => reason::PENDING,
            Reason::InvalidSpec => reason::INVALID_SPEC,
            Reason::Conflict => reason::CONFLICT,
            Reason::AuthFailed => reason::AUTH_FAILED,
            Reason::KonnectError => reason::KONNECT_ERROR,
            Reason::RateLimited => reason::RATE_LIMITED,
            Reason::WaitingForSystemAccount => reason::WAITING_FOR_SYSTEM_ACCOUNT,
            Reason::SecretConflict => reason::SECRET_CONFLICT,
            Reason::Deleting => reason::DELETING,
            Reason::DeletionBlocked => reason::DELETION_BLOCKED,
            Reason::TargetNotFound => "TargetNotFound",
            Reason::RestartFailed => "RestartFailed",
            Reason::InUse => "InUse",
            Reason::Loading => "Loading",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Sets condition `type_` in place. `lastTransitionTime` changes only when the status flips,
/// so repeated reconciles do not churn the object.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: Reason,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status_str = if status { "True" } else { "False" }.to_string();
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status_str {
                c.last_transition_time = Time(now);
            }
            c.status = status_str;
            c.reason = reason.as_str().to_string();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status: status_str,
            reason: reason.as_str().to_string(),
            message,
            observed_generation: generation,
            last_transition_time: Time(now),
        }),
    }
}

/// Drops condition `type_` (for secondary conditions that no longer apply).
pub fn remove(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when `Ready=True` was written for `generation`.
pub fn is_ready(conditions: &[Condition], generation: Option<i64>) -> bool {
    get(conditions, READY).is_some_and(|c| {
        c.status == "True" && (generation.is_none() || c.observed_generation == generation)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut c = Vec::new();
        set(
            &mut c,
            READY,
            false,
            Reason::Pending,
            "creating",
            Some(1),
            t(100),
        );
        set(
            &mut c,
            READY,
            false,
            Reason::KonnectError,
            "retrying",
            Some(1),
            t(200),
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time.0, t(100));
        assert_eq!(c[0].reason, "KonnectError");
        set(
            &mut c,
            READY,
            true,
            Reason::Reconciled,
            "ok",
            Some(2),
            t(300),
        );
        assert_eq!(c[0].last_transition_time.0, t(300));
        assert!(is_ready(&c, Some(2)));
        assert!(
            !is_ready(&c, Some(3)),
            "Ready for an older generation is not Ready"
        );
    }

    #[test]
    fn remove_drops_only_that_type() {
        let mut c = Vec::new();
        set(&mut c, READY, true, Reason::Reconciled, "ok", None, t(1));
        set(
            &mut c,
            RESTART_TARGETS,
            false,
            Reason::TargetNotFound,
            "x",
            None,
            t(1),
        );
        remove(&mut c, RESTART_TARGETS);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].type_, READY);
    }
}
