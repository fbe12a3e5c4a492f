//! `SystemAccount`: a Konnect system account, its name, description and team memberships.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{AdoptionPolicy, DeletionPolicy, KonnectOverride, TeamRef};

/// A Konnect system account (a machine identity in a Konnect organization), kept in sync with this spec.
// The printcolumn(...) entries repeat `type_ = "string"`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "konnect-sa.dev",
    version = "v1alpha1",
    kind = "SystemAccount",
    plural = "systemaccounts",
    namespaced,
    status = "SystemAccountStatus",
    derive = "PartialEq",
    shortname = "ksa",
    category = "konnect",
    doc = "A Kong Konnect system account managed from Kubernetes: name, description and team memberships.",
    printcolumn(
        name = "Konnect Name",
        type_ = "string",
        description = "Name in Konnect (empty: metadata.name)",
        json_path = ".spec.name"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        description = "Ready condition status",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "ID",
        type_ = "string",
        description = "Konnect system account id",
        json_path = ".status.id"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SystemAccountSpec {
    /// Name of the system account in Konnect; unique per organization. Default: metadata.name.
    /// Renaming patches the account in place; a name that another account already has gives Ready=False with
    /// reason Conflict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub name: Option<String>,
    /// Description of the system account in Konnect (Konnect requires one).
    /// Default: "Managed by konnect-sa-operator (<namespace>/<name>)". Edits patch the account in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// Konnect teams the account is a member of, each by name or by id. Memberships missing in Konnect are
    /// added; memberships this operator added and that are no longer listed are removed; memberships added by
    /// someone else in Konnect are left alone. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub teams: Vec<TeamRef>,
    /// What to do when Konnect already has an account with this name: Refuse (default) reports Ready=False with
    /// reason Conflict and changes nothing; Adopt takes the existing account over. An account that Konnect
    /// manages itself (konnect_managed) is never adopted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adoption: Option<AdoptionPolicy>,
    /// What happens in Konnect when this object is deleted: Delete (default) deletes the system account (which
    /// revokes its tokens); Orphan keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
    /// Konnect connection for this object instead of the operator-wide one. Default: the operator's
    /// `--konnect-url` and token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub konnect: Option<KonnectOverride>,
}

impl SystemAccountSpec {
    /// The Konnect name: `spec.name`, else the object's name.
    pub fn konnect_name(&self, meta_name: &str) -> String {
        match self.name.as_deref() {
            Some(name) if !name.is_empty() => name.to_string(),
            _ => meta_name.to_string(),
        }
    }

    /// The Konnect description: `spec.description`, else "Managed by konnect-sa-operator (<ns>/<name>)",
    /// or "(<cluster>: <ns>/<name>)" with `--cluster-name`.
    pub fn description_or_default(&self, cluster: &str, namespace: &str, name: &str) -> String {
        match self.description.as_deref() {
            Some(description) if !description.is_empty() => description.to_string(),
            _ if cluster.is_empty() => {
                format!("Managed by konnect-sa-operator ({namespace}/{name})")
            }
            _ => format!("Managed by konnect-sa-operator ({cluster}: {namespace}/{name})"),
        }
    }

    /// `spec.adoption` with its default (Refuse).
    pub fn adoption(&self) -> AdoptionPolicy {
        self.adoption.unwrap_or_default()
    }

    /// `spec.deletionPolicy` with its default (Delete).
    pub fn deletion_policy(&self) -> DeletionPolicy {
        self.deletion_policy.unwrap_or_default()
    }
}

/// A team membership as observed in Konnect.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TeamStatus {
    /// Konnect team id.
    pub id: String,
    /// Konnect team name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// Observed state of a SystemAccount.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SystemAccountStatus {
    /// Konnect id of the system account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Team memberships this operator added and owns (it only removes these).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teams: Vec<TeamStatus>,
    /// Konnect name of an account create in flight. Recorded before the create call so that, after a crash or a
    /// lost response, an account found with this name is known to be this object's own and not someone else's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_create: Option<String>,
    /// When pendingCreate was recorded (RFC 3339, UTC, seconds): only an account created at or after it is taken
    /// for this object's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_create_since: Option<String>,
    /// True when an existing Konnect account was adopted (spec.adoption: Adopt) rather than created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted: Option<bool>,
    /// metadata.generation of the spec the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions; Ready is the primary one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_and_description_default_from_the_object() {
        let spec = SystemAccountSpec::default();
        assert_eq!(spec.konnect_name("ci-bot"), "ci-bot");
        assert_eq!(
            spec.description_or_default("", "platform", "ci-bot"),
            "Managed by konnect-sa-operator (platform/ci-bot)"
        );
        let spec = SystemAccountSpec {
            name: Some("CI Bot".into()),
            description: Some("CI automation".into()),
            ..Default::default()
        };
        assert_eq!(spec.konnect_name("ci-bot"), "CI Bot");
        assert_eq!(
            spec.description_or_default("", "platform", "ci-bot"),
            "CI automation"
        );
        assert_eq!(spec.adoption(), AdoptionPolicy::Refuse);
        assert_eq!(spec.deletion_policy(), DeletionPolicy::Delete);
    }

    #[test]
    fn the_api_md_example_deserializes() {
        let yaml = r#"
apiVersion: konnect-sa.dev/v1alpha1
kind: SystemAccount
metadata: {name: ci-bot, namespace: platform}
spec:
  name: ci-bot
  description: CI automation
  teams:
    - name: Platform
    - id: 0f3b5a1e-1111-4222-8333-944445555666
  adoption: Adopt
  deletionPolicy: Orphan
  konnect: {authSecretRef: {name: konnect-admin}}
status:
  id: 497f6eca-6276-4993-bfeb-53cbbbba6f08
  teams: [{id: 0f3b5a1e-1111-4222-8333-944445555666, name: Platform}]
  observedGeneration: 3
  conditions: [{type: Ready, status: "True", reason: Reconciled, message: ok, lastTransitionTime: "2026-11-28T10:00:00Z"}]
"#;
        let sa: SystemAccount = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(sa.spec.teams.len(), 2);
        assert_eq!(sa.spec.adoption(), AdoptionPolicy::Adopt);
        assert_eq!(sa.spec.deletion_policy(), DeletionPolicy::Orphan);
        let status = sa.status.unwrap();
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.conditions[0].reason, "Reconciled");
    }

    #[test]
    fn an_empty_status_serializes_to_nothing() {
        assert_eq!(
            serde_json::to_value(SystemAccountStatus::default()).unwrap(),
            serde_json::json!({})
        );
    }
}
