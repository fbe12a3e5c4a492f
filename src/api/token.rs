//! `SystemAccountToken`: a `spat_` access token of a system account, kept in a Secret and rotated before expiry.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{DNS_SUBDOMAIN_PATTERN, DeletionPolicy, KonnectOverride, SystemAccountRef};
use super::duration;
use super::metadata::{self, LABEL_VALUE_PATTERN, QUALIFIED_NAME_PATTERN, RESERVED_PREFIX};

/// Token lifetime when `spec.duration` is unset.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(2160 * 3600);
/// Longest lifetime Konnect issues (12 months).
pub const MAX_DURATION: Duration = Duration::from_secs(8760 * 3600);
/// Overlap of old and new token when `spec.previousTokenRetention` is unset.
pub const DEFAULT_PREVIOUS_TOKEN_RETENTION: Duration = Duration::from_secs(3600);
/// Secret key when `spec.secretKey` is unset (what kong-operator's secretRef reads).
pub const DEFAULT_SECRET_KEY: &str = "token";
/// Valid Secret data keys (RE2; no backslash so it embeds in a CEL string literal).
pub(crate) const SECRET_KEY_PATTERN: &str = "^[-._a-zA-Z0-9]+$";

/// A Konnect system account access token (`spat_`) written to a Secret and rotated before it expires.
// The printcolumn(...) entries repeat `type_ = "string"`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "konnect-sa.dev",
    version = "v1alpha1",
    kind = "SystemAccountToken",
    plural = "systemaccounttokens",
    namespaced,
    status = "SystemAccountTokenStatus",
    derive = "PartialEq",
    shortname = "ksat",
    category = "konnect",
    doc = "A Kong Konnect system account access token (spat_), kept in a Secret and rotated before it expires.",
    printcolumn(
        name = "Account",
        type_ = "string",
        description = "Referenced SystemAccount",
        json_path = ".spec.systemAccountRef.name"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        description = "Ready condition status",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Expires",
        type_ = "string",
        description = "Expiry of the current token (UTC)",
        json_path = ".status.expiresAt"
    ),
    printcolumn(
        name = "Renewal",
        type_ = "string",
        description = "When the next rotation is due (UTC)",
        json_path = ".status.renewalTime"
    ),
    printcolumn(
        name = "Secret",
        type_ = "string",
        description = "Secret holding the token (empty: metadata.name)",
        json_path = ".spec.secretName"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("!(has(self.renewBefore) && has(self.renewBeforePercentage))").message("set at most one of renewBefore and renewBeforePercentage"),
    validation = Rule::new("!has(self.renewBefore) || duration(self.renewBefore) < duration(has(self.duration) ? self.duration : '2160h')").message("renewBefore must be shorter than duration (default 2160h)").field_path(".renewBefore"),
)]
#[serde(rename_all = "camelCase")]
pub struct SystemAccountTokenSpec {
    /// The system account the token belongs to: `{name: <SystemAccount in this namespace>}` or
    /// `{id: <Konnect uuid>}` for an account this operator does not manage. Changing it issues a new token for
    /// the new account (the old one is revoked after previousTokenRetention).
    pub system_account_ref: SystemAccountRef,
    /// Token lifetime, a Go duration ("2160h", "720h", "30m"): more than 0, at most 8760h (Konnect's maximum of
    /// 12 months). Default: 2160h (90 days). Konnect may refuse lifetimes under a day; that is reported as
    /// Ready=False, not hidden. Changing it rotates the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = duration::GO_DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s') && duration(self) <= duration('8760h')").message("duration must be more than 0s and at most 8760h"))]
    pub duration: Option<String>,
    /// Rotate this long before the token expires, a Go duration shorter than duration. Set at most one of
    /// renewBefore and renewBeforePercentage. Default: a third of duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = duration::GO_DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s') && duration(self) <= duration('8760h')").message("renewBefore must be more than 0s and at most 8760h"))]
    pub renew_before: Option<String>,
    /// Rotate when this percentage of the lifetime is left: 1 to 90. Set at most one of renewBefore and
    /// renewBeforePercentage. Default: renewBefore's default (a third of duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 90))]
    pub renew_before_percentage: Option<i32>,
    /// How long the previous token stays valid after the new one is in the Secret (time for consumers to reload),
    /// a Go duration from 0s to 8760h. 0s revokes it at once. Never later than the old token's own expiry.
    /// A token whose Secret was deleted or emptied, or that Konnect no longer has, is revoked at once.
    /// Default: 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = duration::GO_DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s') && duration(self) <= duration('8760h')").message("previousTokenRetention must be from 0s to 8760h"))]
    pub previous_token_retention: Option<String>,
    /// Name of the Secret that receives the token, always in this object's namespace. Default: metadata.name.
    /// A Secret of that name that this object does not own is never overwritten (Ready=False, reason
    /// SecretConflict).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(format!("self.matches('{DNS_SUBDOMAIN_PATTERN}')")).message("secretName must be a lowercase DNS subdomain (a valid Secret name)"))]
    pub secret_name: Option<String>,
    /// Key in the Secret's data that holds the token. Default: "token" (what kong-operator's Konnect secretRef
    /// reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(format!("self.matches('{SECRET_KEY_PATTERN}')")).message("secretKey must consist of letters, digits, '-', '_' or '.'"))]
    pub secret_key: Option<String>,
    /// Extra labels and annotations for the Secret, e.g. `konghq.com/credential: konnect` for kong-operator, or
    /// a Reloader annotation. The operator's own `app.kubernetes.io/managed-by` label takes precedence; keys under
    /// `konnect-sa.dev/` are refused (the operator's own annotations live there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_template: Option<SecretTemplate>,
    /// Workloads in this namespace to restart (like `kubectl rollout restart`) after each rotation, once the new
    /// token is in the Secret. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub rollout_restart_targets: Vec<RestartTarget>,
    /// What happens when this object is deleted: Delete (default) revokes all of its tokens in Konnect (the
    /// Secret goes with the object); Orphan keeps the token in Konnect and the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
    /// Konnect connection for this object instead of the operator-wide one. Default: the operator's
    /// `--konnect-url` and token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub konnect: Option<KonnectOverride>,
}

/// Extra metadata for the token Secret.
// The key rules have the shape Gateway API ships for its infrastructure labels (8 entries at most keeps the
// API server's CEL cost estimate within budget).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretTemplate {
    /// Labels added to the Secret (at most 8). Keys and values follow Kubernetes label syntax; keys under
    /// `konnect-sa.dev/` are reserved for the operator.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 8, "additionalProperties" = {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE_PATTERN}))]
    #[x_kube(
        validation = Rule::new(format!("self.all(key, key.matches('{QUALIFIED_NAME_PATTERN}'))")).message("label keys must be an optional DNS subdomain prefix and '/', then a name of 1-63 letters, digits, '-', '_' or '.' starting and ending alphanumeric"),
        validation = Rule::new("self.all(key, key.split('/')[0].size() < 253)").message("a label key prefix must be shorter than 253 characters"),
        validation = Rule::new(format!("self.all(key, !key.startsWith('{RESERVED_PREFIX}'))")).message("keys under konnect-sa.dev/ are reserved for the operator"),
    )]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the Secret (at most 8, values up to 4096 bytes). Keys follow Kubernetes
    /// annotation key syntax; keys under `konnect-sa.dev/` are reserved for the operator.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 8, "additionalProperties" = {"type": "string", "maxLength": 4096}))]
    #[x_kube(
        validation = Rule::new(format!("self.all(key, key.matches('{QUALIFIED_NAME_PATTERN}'))")).message("annotation keys must be an optional DNS subdomain prefix and '/', then a name of 1-63 letters, digits, '-', '_' or '.' starting and ending alphanumeric"),
        validation = Rule::new("self.all(key, key.split('/')[0].size() < 253)").message("an annotation key prefix must be shorter than 253 characters"),
        validation = Rule::new(format!("self.all(key, !key.startsWith('{RESERVED_PREFIX}'))")).message("keys under konnect-sa.dev/ are reserved for the operator"),
    )]
    pub annotations: BTreeMap<String, String>,
}

/// A workload restarted after each rotation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RestartTarget {
    /// Workload kind: Deployment, StatefulSet or DaemonSet.
    pub kind: RestartKind,
    /// Workload name, in this object's namespace.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(format!("self.matches('{DNS_SUBDOMAIN_PATTERN}')")).message("name must be a Kubernetes object name"))]
    pub name: String,
}

// Kinds of workload that can be restarted. (No `///`: the field's doc is the CRD text.)
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RestartKind {
    /// apps/v1 Deployment.
    #[default]
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
}

impl RestartKind {
    /// The Kubernetes kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartKind::Deployment => "Deployment",
            RestartKind::StatefulSet => "StatefulSet",
            RestartKind::DaemonSet => "DaemonSet",
        }
    }
}

impl std::fmt::Display for RestartKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn parse_field(field: &str, value: &str) -> Result<Duration, String> {
    duration::parse(value).map_err(|e| format!("spec.{field}: {e}"))
}

impl SystemAccountTokenSpec {
    /// Token lifetime: `spec.duration` or 2160h; an error (for an InvalidSpec message) when it does not parse or
    /// is not in (0, 8760h].
    pub fn duration(&self) -> Result<Duration, String> {
        let Some(raw) = self.duration.as_deref() else {
            return Ok(DEFAULT_DURATION);
        };
        let d = parse_field("duration", raw)?;
        if d.is_zero() || d > MAX_DURATION {
            return Err(format!(
                "spec.duration {raw:?} must be more than 0s and at most 8760h"
            ));
        }
        Ok(d)
    }

    /// How long before expiry to rotate a token of `lifetime`: `spec.renewBefore`, else
    /// `spec.renewBeforePercentage` percent of `lifetime`, else a third of `lifetime`. Always shorter than
    /// `lifetime`: a value that is invalid or not shorter falls back to a third ([`Self::validate`] reports it).
    pub fn renew_before(&self, lifetime: Duration) -> Duration {
        let third = lifetime / 3;
        if let Some(raw) = self.renew_before.as_deref() {
            return match duration::parse(raw) {
                Ok(d) if !d.is_zero() && d < lifetime => d,
                _ => third,
            };
        }
        match self.renew_before_percentage {
            Some(p @ 1..=90) => lifetime.mul_f64(f64::from(p) / 100.0),
            _ => third,
        }
    }

    /// Overlap of old and new token: `spec.previousTokenRetention` or 1h; an error when it does not parse or is
    /// more than 8760h.
    pub fn previous_token_retention(&self) -> Result<Duration, String> {
        let Some(raw) = self.previous_token_retention.as_deref() else {
            return Ok(DEFAULT_PREVIOUS_TOKEN_RETENTION);
        };
        let d = parse_field("previousTokenRetention", raw)?;
        if d > MAX_DURATION {
            return Err(format!(
                "spec.previousTokenRetention {raw:?} must be at most 8760h"
            ));
        }
        Ok(d)
    }

    /// Name of the token Secret: `spec.secretName` or the object's name.
    pub fn secret_name(&self, meta_name: &str) -> String {
        match self.secret_name.as_deref() {
            Some(name) if !name.is_empty() => name.to_string(),
            _ => meta_name.to_string(),
        }
    }

    /// Data key of the token in the Secret: `spec.secretKey` or "token".
    pub fn secret_key(&self) -> &str {
        match self.secret_key.as_deref() {
            Some(key) if !key.is_empty() => key,
            _ => DEFAULT_SECRET_KEY,
        }
    }

    /// `spec.deletionPolicy` with its default (Delete).
    pub fn deletion_policy(&self) -> DeletionPolicy {
        self.deletion_policy.unwrap_or_default()
    }

    /// Everything the CRD's schema and CEL rules check, again in code (for API servers or stand-ins that did not
    /// enforce them). The error is one message for a Ready=False/InvalidSpec condition.
    pub fn validate(&self) -> Result<(), String> {
        self.system_account_ref.target()?;
        let lifetime = self.duration()?;
        if let Some(raw) = self.renew_before.as_deref() {
            if self.renew_before_percentage.is_some() {
                return Err(
                    "spec: set at most one of renewBefore and renewBeforePercentage".into(),
                );
            }
            let d = parse_field("renewBefore", raw)?;
            if d.is_zero() || d >= lifetime {
                return Err(format!(
                    "spec.renewBefore {raw:?} must be more than 0s and shorter than duration ({})",
                    duration::format(lifetime)
                ));
            }
        }
        if let Some(p) = self.renew_before_percentage
            && !(1..=90).contains(&p)
        {
            return Err(format!(
                "spec.renewBeforePercentage {p} must be from 1 to 90"
            ));
        }
        self.previous_token_retention()?;
        if let Some(name) = self.secret_name.as_deref()
            && !is_dns_subdomain(name)
        {
            return Err(format!(
                "spec.secretName {name:?} is not a valid Secret name (lowercase DNS subdomain)"
            ));
        }
        let key = self.secret_key();
        if key.len() > 253
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            return Err(format!(
                "spec.secretKey {key:?} must consist of letters, digits, '-', '_' or '.'"
            ));
        }
        if let Some(t) = &self.secret_template {
            metadata::check_template(&t.labels, &t.annotations)?;
        }
        for target in &self.rollout_restart_targets {
            if !is_dns_subdomain(&target.name) {
                return Err(format!(
                    "spec.rolloutRestartTargets: {:?} is not a valid {} name",
                    target.name, target.kind
                ));
            }
        }
        Ok(())
    }
}

/// A lowercase RFC 1123 subdomain of at most 253 characters (a valid name for most Kubernetes objects).
pub(crate) fn is_dns_subdomain(name: &str) -> bool {
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        !bytes.is_empty()
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-'
    };
    !name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok)
}

/// A token that was replaced and waits for its revocation.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PreviousToken {
    /// Konnect token id.
    pub id: String,
    /// Konnect token name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Konnect id of the system account the token belongs to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub account_id: String,
    /// When the token is revoked (RFC 3339, UTC, seconds). Held back while rolloutRestartTargets have not
    /// been restarted onto its successor, never past expiresAt.
    pub revoke_at: String,
    /// When the token expires (RFC 3339, UTC, seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The Secret (in this namespace) the token was written to. After a move to another secretName it
    /// keeps the token until its revokeAt, and is then deleted (if it still holds this token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The key of that Secret. After a move to another secretKey the old key keeps the token until its
    /// revokeAt, and is then removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<String>,
}

/// Observed state of a SystemAccountToken. Never holds a token value.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SystemAccountTokenStatus {
    /// Konnect id of the current token (the one in the Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// Konnect name of the current token, derived from namespace, name and revision (e.g.
    /// platform.ci-bot-token.r3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_name: Option<String>,
    /// Konnect id of the system account the current token belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// Number of tokens issued for this object so far (the current token's revision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Expiry of the current token (RFC 3339, UTC, seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// When the current token is due for rotation (RFC 3339, UTC, seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<String>,
    /// When the current token was written to the Secret (RFC 3339, UTC, seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<String>,
    /// The Secret the current token was written to (spec.secretName when it was issued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The key of that Secret holding the current token (spec.secretKey when it was issued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<String>,
    /// Replaced tokens still valid in Konnect, each revoked at its revokeAt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_tokens: Vec<PreviousToken>,
    /// Name of a token being created; set just before the create call so a crash in between can be healed by
    /// finding and revoking it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_token_name: Option<String>,
    /// When pendingTokenName was recorded (RFC 3339, UTC, seconds): only a token created at or after it is
    /// this object's unfinished one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_since: Option<String>,
    /// Konnect id of the system account the pending token is being created in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_account_id: Option<String>,
    /// The Secret the pending token is written to: after a crash and a secretName edit, a token that
    /// reached it is adopted from there (and kept for the retention), not revoked as unfinished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_secret_name: Option<String>,
    /// The auth Secret whose Konnect connection made this object's Konnect state ("" for the operator-wide
    /// one): cleanup uses the same organisation, never a guess.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub konnect_auth_secret: Option<String>,
    /// The konnect-sa.dev/rotate annotation value already acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotate_annotation: Option<String>,
    /// Revision for which rolloutRestartTargets were last restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart_revision: Option<i64>,
    /// metadata.generation of the spec the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions: Ready (primary) and Issuing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SystemAccountTokenSpec {
        SystemAccountTokenSpec {
            system_account_ref: SystemAccountRef::by_name("ci-bot"),
            ..Default::default()
        }
    }

    const H: u64 = 3600;

    #[test]
    fn defaults_are_90_days_a_third_and_one_hour() {
        let s = spec();
        assert_eq!(s.duration(), Ok(Duration::from_secs(2160 * H)));
        assert_eq!(
            s.renew_before(Duration::from_secs(2160 * H)),
            Duration::from_secs(720 * H)
        );
        assert_eq!(s.previous_token_retention(), Ok(Duration::from_secs(H)));
        assert_eq!(s.secret_name("ci-bot-token"), "ci-bot-token");
        assert_eq!(s.secret_key(), "token");
        assert_eq!(s.deletion_policy(), DeletionPolicy::Delete);
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn explicit_values_win() {
        let s = SystemAccountTokenSpec {
            duration: Some("720h".into()),
            renew_before: Some("24h".into()),
            previous_token_retention: Some("0s".into()),
            secret_name: Some("kong-konnect".into()),
            secret_key: Some("spat".into()),
            ..spec()
        };
        assert_eq!(s.duration(), Ok(Duration::from_secs(720 * H)));
        assert_eq!(
            s.renew_before(Duration::from_secs(720 * H)),
            Duration::from_secs(24 * H)
        );
        assert_eq!(s.previous_token_retention(), Ok(Duration::ZERO));
        assert_eq!(s.secret_name("x"), "kong-konnect");
        assert_eq!(s.secret_key(), "spat");
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn percentage_is_of_the_lifetime() {
        let s = SystemAccountTokenSpec {
            renew_before_percentage: Some(25),
            ..spec()
        };
        assert_eq!(
            s.renew_before(Duration::from_secs(100 * H)),
            Duration::from_secs(25 * H)
        );
        assert_eq!(
            s.renew_before(Duration::from_secs(60)),
            Duration::from_secs(15)
        );
    }

    #[test]
    fn renew_before_never_reaches_the_lifetime() {
        let s = SystemAccountTokenSpec {
            renew_before: Some("48h".into()),
            ..spec()
        };
        assert_eq!(
            s.renew_before(Duration::from_secs(24 * H)),
            Duration::from_secs(8 * H)
        );
        let s = SystemAccountTokenSpec {
            renew_before: Some("bogus".into()),
            ..spec()
        };
        assert_eq!(
            s.renew_before(Duration::from_secs(30 * 60)),
            Duration::from_secs(10 * 60)
        );
    }

    #[test]
    fn invalid_specs_are_explained() {
        let cases: Vec<(SystemAccountTokenSpec, &str)> = vec![
            (
                SystemAccountTokenSpec {
                    duration: Some("0s".into()),
                    ..spec()
                },
                "more than 0s",
            ),
            (
                SystemAccountTokenSpec {
                    duration: Some("8761h".into()),
                    ..spec()
                },
                "at most 8760h",
            ),
            (
                SystemAccountTokenSpec {
                    duration: Some("90d".into()),
                    ..spec()
                },
                "unknown unit",
            ),
            (
                SystemAccountTokenSpec {
                    renew_before: Some("1h".into()),
                    renew_before_percentage: Some(10),
                    ..spec()
                },
                "at most one",
            ),
            (
                SystemAccountTokenSpec {
                    duration: Some("1h".into()),
                    renew_before: Some("1h".into()),
                    ..spec()
                },
                "shorter than duration (1h)",
            ),
            (
                SystemAccountTokenSpec {
                    renew_before_percentage: Some(95),
                    ..spec()
                },
                "1 to 90",
            ),
            (
                SystemAccountTokenSpec {
                    renew_before_percentage: Some(0),
                    ..spec()
                },
                "1 to 90",
            ),
            (
                SystemAccountTokenSpec {
                    previous_token_retention: Some("9000h".into()),
                    ..spec()
                },
                "previousTokenRetention",
            ),
            (
                SystemAccountTokenSpec {
                    secret_name: Some("Bad_Name".into()),
                    ..spec()
                },
                "secretName",
            ),
            (
                SystemAccountTokenSpec {
                    secret_key: Some("a/b".into()),
                    ..spec()
                },
                "secretKey",
            ),
            (
                SystemAccountTokenSpec {
                    system_account_ref: SystemAccountRef::default(),
                    ..spec()
                },
                "systemAccountRef",
            ),
            (
                SystemAccountTokenSpec {
                    rollout_restart_targets: vec![RestartTarget {
                        kind: RestartKind::Deployment,
                        name: "-x".into(),
                    }],
                    ..spec()
                },
                "Deployment",
            ),
        ];
        for (s, want) in cases {
            let err = s.validate().expect_err(want);
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }

    #[test]
    fn dns_subdomains() {
        for ok in ["a", "ci-bot-token", "a.b-c.d", "0abc"] {
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in ["", "A", "a_b", "-a", "a-", "a..b", ".a", &"a".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }

    #[test]
    fn the_api_md_example_deserializes() {
        let yaml = r#"
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccountToken
metadata: {name: ci-bot-token, namespace: platform}
spec:
  systemAccountRef: {name: ci-bot}
  duration: 2160h
  renewBefore: 720h
  previousTokenRetention: 1h
  secretName: ci-bot-token
  secretKey: token
  secretTemplate:
    labels: {konghq.com/credential: konnect}
    annotations: {}
  rolloutRestartTargets:
    - {kind: Deployment, name: ci-runner}
  deletionPolicy: Delete
status:
  tokenId: 80f0685e-0000-4000-8000-000000000000
  tokenName: platform.ci-bot-token.r3
  revision: 3
  expiresAt: "2027-02-26T10:00:00Z"
  renewalTime: "2027-01-27T10:00:00Z"
  previousTokens: [{id: a, revokeAt: "2027-01-27T11:00:00Z"}]
"#;
        let t: SystemAccountToken = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(t.spec.validate(), Ok(()));
        assert_eq!(
            t.spec.rollout_restart_targets[0].kind,
            RestartKind::Deployment
        );
        assert_eq!(
            t.spec.secret_template.as_ref().unwrap().labels["konghq.com/credential"],
            "konnect"
        );
        let status = t.status.unwrap();
        assert_eq!(status.revision, Some(3));
        assert_eq!(status.previous_tokens[0].revoke_at, "2027-01-27T11:00:00Z");
    }
}
