//! Types and names shared by the three kinds: references, policies, the Konnect override, condition vocabulary.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// API group of every kind.
pub const GROUP: &str = "konnect-sa.dev";
/// API version of every kind.
pub const VERSION: &str = "v1alpha1";
/// Finalizer the controllers put on an object before the first Konnect create.
pub const FINALIZER: &str = "konnect-sa.dev/cleanup";
/// Annotation on a SystemAccountToken: a new value asks for one rotation.
pub const ROTATE_ANNOTATION: &str = "konnect-sa.dev/rotate";
/// Annotation on a token Secret: the Konnect id of the token it holds.
pub const SECRET_TOKEN_ID_ANNOTATION: &str = "konnect-sa.dev/token-id";
/// Annotation on a token Secret: the SystemAccountToken revision it holds.
pub const SECRET_REVISION_ANNOTATION: &str = "konnect-sa.dev/revision";
/// Annotation on a token Secret: expiry of the token it holds (RFC 3339, UTC, seconds).
pub const SECRET_EXPIRES_AT_ANNOTATION: &str = "konnect-sa.dev/expires-at";
/// Label on every Secret the operator writes (`app.kubernetes.io/managed-by: konnect-sa-operator`).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY_VALUE: &str = "konnect-sa-operator";
/// Key of the token in a `spec.konnect.authSecretRef` Secret.
pub const AUTH_SECRET_TOKEN_KEY: &str = "token";
/// Optional key of the server URL in a `spec.konnect.authSecretRef` Secret.
pub const AUTH_SECRET_SERVER_URL_KEY: &str = "serverURL";

/// The primary condition on every kind: True only when Konnect matches the spec of `metadata.generation`.
pub const CONDITION_READY: &str = "Ready";
/// SystemAccountToken only: True while a new token is being issued (between create and Secret write).
pub const CONDITION_ISSUING: &str = "Issuing";

/// Condition reasons (CamelCase). A reason leads to the one function that decided it.
pub mod reason {
    /// Konnect matches the spec.
    pub const RECONCILED: &str = "Reconciled";
    /// Work in progress (first reconcile, issuing, waiting for a revoke).
    pub const PENDING: &str = "Pending";
    /// The spec cannot be acted on (bad duration, no team matches, Konnect-managed account, ...).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Konnect already has something with this identity (name taken, adoption refused).
    pub const CONFLICT: &str = "Conflict";
    /// Konnect refused the operator's token (401/403).
    pub const AUTH_FAILED: &str = "AuthFailed";
    /// Konnect answered with another error or could not be reached.
    pub const KONNECT_ERROR: &str = "KonnectError";
    /// Konnect answered 429; the operator waits for Retry-After.
    pub const RATE_LIMITED: &str = "RateLimited";
    /// The referenced SystemAccount does not exist yet or is not Ready.
    pub const WAITING_FOR_SYSTEM_ACCOUNT: &str = "WaitingForSystemAccount";
    /// The target Secret exists and is not owned by this SystemAccountToken.
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    /// The object is being deleted and Konnect cleanup is running.
    pub const DELETING: &str = "Deleting";
    /// Konnect cleanup failed; the finalizer stays until it succeeds.
    pub const DELETION_BLOCKED: &str = "DeletionBlocked";

    /// Every reason, for tests and documentation.
    pub const ALL: [&str; 11] = [
        RECONCILED,
        PENDING,
        INVALID_SPEC,
        CONFLICT,
        AUTH_FAILED,
        KONNECT_ERROR,
        RATE_LIMITED,
        WAITING_FOR_SYSTEM_ACCOUNT,
        SECRET_CONFLICT,
        DELETING,
        DELETION_BLOCKED,
    ];
}

/// A Konnect uuid (RE2, as used in CEL rules).
pub(crate) const UUID_PATTERN: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
/// A Kubernetes object name (DNS-1123 subdomain).
/// No backslashes (`[.]` for a dot): the pattern is embedded in CEL string literals, where `\.` is no valid escape.
pub(crate) const DNS_SUBDOMAIN_PATTERN: &str =
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// True for a hyphenated uuid (the form Konnect returns), as [`UUID_PATTERN`] says.
pub(crate) fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// What a name-or-id reference points at, once checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefTarget<'a> {
    /// By Kubernetes object name (SystemAccount) or Konnect name (team).
    Name(&'a str),
    /// By Konnect id.
    Id(&'a str),
}

fn ref_target<'a>(
    what: &str,
    name: Option<&'a str>,
    id: Option<&'a str>,
) -> Result<RefTarget<'a>, String> {
    match (name, id) {
        (Some(name), None) if !name.is_empty() => Ok(RefTarget::Name(name)),
        (None, Some(id)) if !id.is_empty() => Ok(RefTarget::Id(id)),
        (Some(_), Some(_)) => Err(format!("{what} sets both name and id: set exactly one")),
        _ => Err(format!("{what} sets neither name nor id: set exactly one")),
    }
}

/// Reference to a SystemAccount: exactly one of `name` or `id`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[x_kube(validation = Rule::new("has(self.name) != has(self.id)").message("set exactly one of name or id"))]
#[serde(rename_all = "camelCase")]
pub struct SystemAccountRef {
    /// Name of a SystemAccount in the same namespace (no cross-namespace references). The reference waits
    /// (Ready=False, reason WaitingForSystemAccount) until that SystemAccount has a Konnect id.
    /// Exactly one of name or id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(format!("self.matches('{DNS_SUBDOMAIN_PATTERN}')")).message("must be a Kubernetes object name (lowercase DNS subdomain)"))]
    pub name: Option<String>,
    /// Konnect id (uuid) of a system account this operator does not manage. Exactly one of name or id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 36))]
    #[x_kube(validation = Rule::new(format!("self.matches('{UUID_PATTERN}')")).message("must be a uuid"))]
    pub id: Option<String>,
}

impl SystemAccountRef {
    /// A reference by SystemAccount object name.
    pub fn by_name(name: impl Into<String>) -> Self {
        Self {
            name: Some(name.into()),
            id: None,
        }
    }

    /// A reference by Konnect account id.
    pub fn by_id(id: impl Into<String>) -> Self {
        Self {
            name: None,
            id: Some(id.into()),
        }
    }

    /// The checked target; the error (for an InvalidSpec message) when both or neither are set.
    pub fn target(&self) -> Result<RefTarget<'_>, String> {
        ref_target("systemAccountRef", self.name.as_deref(), self.id.as_deref())
    }
}

/// A Konnect team: exactly one of `name` or `id`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[x_kube(validation = Rule::new("has(self.name) != has(self.id)").message("set exactly one of name or id"))]
#[serde(rename_all = "camelCase")]
pub struct TeamRef {
    /// Konnect team name. Exactly one team in the organization must have this name, otherwise Ready=False with
    /// reason InvalidSpec (Konnect team names are not unique: use id then). Exactly one of name or id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 250))]
    pub name: Option<String>,
    /// Konnect team id (uuid). Exactly one of name or id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 36))]
    #[x_kube(validation = Rule::new(format!("self.matches('{UUID_PATTERN}')")).message("must be a uuid"))]
    pub id: Option<String>,
}

impl TeamRef {
    /// A team by Konnect name.
    pub fn by_name(name: impl Into<String>) -> Self {
        Self {
            name: Some(name.into()),
            id: None,
        }
    }

    /// A team by Konnect id.
    pub fn by_id(id: impl Into<String>) -> Self {
        Self {
            name: None,
            id: Some(id.into()),
        }
    }

    /// The checked target; the error (for an InvalidSpec message) when both or neither are set.
    pub fn target(&self) -> Result<RefTarget<'_>, String> {
        ref_target("team reference", self.name.as_deref(), self.id.as_deref())
    }
}

/// A Secret in the same namespace as the object that references it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LocalSecretRef {
    /// Name of the Secret, in the namespace of this object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Per-object Konnect connection, instead of the operator-wide `--konnect-url` and token.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KonnectOverride {
    /// Secret in this object's namespace with key `token` (a `kpat_` or `spat_` Konnect token) and optional key
    /// `serverURL` (default: the operator's `--konnect-url`). Read on every reconcile, so rotating that Secret
    /// needs no restart. Unset: the operator-wide connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_secret_ref: Option<LocalSecretRef>,
}

// What happens in Konnect when the Kubernetes object is deleted. (No `///`: the field's doc is the CRD text.)
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DeletionPolicy {
    /// Delete (or revoke) the Konnect object, then remove the finalizer.
    #[default]
    Delete,
    /// Leave the Konnect object as it is.
    Orphan,
}

// What a SystemAccount does when Konnect already has an account with its name. (No `///`: see DeletionPolicy.)
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AdoptionPolicy {
    /// Do not touch the existing account: Ready=False with reason Conflict.
    #[default]
    Refuse,
    /// Take the existing account over (never one that Konnect manages itself).
    Adopt,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_has_exactly_one_target() {
        assert_eq!(
            SystemAccountRef::by_name("ci-bot").target(),
            Ok(RefTarget::Name("ci-bot"))
        );
        assert_eq!(
            SystemAccountRef::by_id("abc").target(),
            Ok(RefTarget::Id("abc"))
        );
        let both = SystemAccountRef {
            name: Some("a".into()),
            id: Some("b".into()),
        };
        assert!(both.target().unwrap_err().contains("both"));
        assert!(
            SystemAccountRef::default()
                .target()
                .unwrap_err()
                .contains("neither")
        );
        assert!(SystemAccountRef::by_name("").target().is_err());
        assert!(TeamRef::by_name("Platform").target().is_ok());
        assert!(
            TeamRef::default()
                .target()
                .unwrap_err()
                .contains("team reference")
        );
    }

    #[test]
    fn uuids_are_hyphenated_hex() {
        assert!(is_uuid("497f6eca-6276-4993-bfeb-53cbbbba6f08"));
        assert!(is_uuid("497F6ECA-6276-4993-BFEB-53CBBBBA6F08"));
        for bad in [
            "",
            "*",
            "497f6eca62764993bfeb53cbbbba6f08",
            "497f6eca-6276-4993-bfeb-53cbbbba6f0g",
            "{497f6eca-6276-4993-bfeb-53cbbbba6f08}",
        ] {
            assert!(!is_uuid(bad), "{bad}");
        }
    }

    #[test]
    fn policies_default_to_the_safe_choice_and_use_the_documented_spelling() {
        assert_eq!(DeletionPolicy::default(), DeletionPolicy::Delete);
        assert_eq!(AdoptionPolicy::default(), AdoptionPolicy::Refuse);
        assert_eq!(
            serde_json::to_string(&DeletionPolicy::Orphan).unwrap(),
            "\"Orphan\""
        );
        assert_eq!(
            serde_json::from_str::<AdoptionPolicy>("\"Adopt\"").unwrap(),
            AdoptionPolicy::Adopt
        );
        assert!(serde_json::from_str::<AdoptionPolicy>("\"adopt\"").is_err());
    }

    #[test]
    fn refs_serialize_without_the_unset_side() {
        let json = serde_json::to_value(SystemAccountRef::by_name("ci-bot")).unwrap();
        assert_eq!(json, serde_json::json!({"name": "ci-bot"}));
        let over = KonnectOverride {
            auth_secret_ref: Some(LocalSecretRef {
                name: "konnect-admin".into(),
            }),
        };
        assert_eq!(
            serde_json::to_value(over).unwrap(),
            serde_json::json!({"authSecretRef": {"name": "konnect-admin"}})
        );
    }
}
