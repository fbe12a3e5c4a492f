//! `RoleBinding`: a Konnect role assigned to a system account (plural `rolebindings.konnect-sa.dev`, shortName
//! `ksarb`; plain `rolebindings` is Kubernetes RBAC's).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{DeletionPolicy, KonnectOverride, SystemAccountRef, UUID_PATTERN, is_uuid};

/// `entityId` and `entityRegion` when unset: all entities, all regions.
pub const ANY: &str = "*";
/// Values `spec.entityRegion` accepts.
pub const ENTITY_REGIONS: [&str; 7] = ["us", "eu", "au", "me", "in", "sg", "*"];

/// A Konnect role assigned to a system account, e.g. Viewer on all Control Planes in eu.
// The printcolumn(...) entries repeat `type_ = "string"`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "konnect-sa.dev",
    version = "v1alpha1",
    kind = "RoleBinding",
    plural = "rolebindings",
    namespaced,
    status = "RoleBindingStatus",
    derive = "PartialEq",
    shortname = "ksarb",
    category = "konnect",
    doc = "A Kong Konnect role assigned to a system account (Konnect has no role update: a change assigns the new role, then removes the old one).",
    printcolumn(
        name = "Account",
        type_ = "string",
        description = "Referenced SystemAccount",
        json_path = ".spec.systemAccountRef.name"
    ),
    printcolumn(
        name = "Role",
        type_ = "string",
        description = "Konnect role name",
        json_path = ".spec.roleName"
    ),
    printcolumn(
        name = "Entity Type",
        type_ = "string",
        description = "Konnect entity type",
        json_path = ".spec.entityTypeName"
    ),
    printcolumn(
        name = "Region",
        type_ = "string",
        description = "Konnect region of the entity",
        json_path = ".spec.entityRegion"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        description = "Ready condition status",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RoleBindingSpec {
    /// The system account that gets the role: `{name: <SystemAccount in this namespace>}` or
    /// `{id: <Konnect uuid>}` for an account this operator does not manage.
    pub system_account_ref: SystemAccountRef,
    /// Konnect role name, e.g. Viewer, Admin, Deployer, Creator (an open list: Konnect adds roles; checked
    /// against Konnect's role catalogue when it is available).
    #[schemars(length(min = 1, max = 250))]
    pub role_name: String,
    /// Konnect entity type the role applies to, e.g. "Control Planes", "API Products", "Portals".
    #[schemars(length(min = 1, max = 250))]
    pub entity_type_name: String,
    /// Konnect id (uuid) of the entity, or "*" for all entities of the type. Default: "*".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 36), extend("default" = "*"))]
    #[x_kube(validation = Rule::new(format!("self == '*' || self.matches('{UUID_PATTERN}')")).message("entityId must be a uuid or \"*\""))]
    pub entity_id: Option<String>,
    /// Konnect region of the entity: us, eu, au, me, in, sg, or "*" for all regions. Default: "*".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2), extend("default" = "*"))]
    #[x_kube(validation = Rule::new("self in ['us', 'eu', 'au', 'me', 'in', 'sg', '*']").message("entityRegion must be one of us, eu, au, me, in, sg, *"))]
    pub entity_region: Option<String>,
    /// What happens when this object is deleted: Delete (default) removes the role assignment in Konnect;
    /// Orphan keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,
    /// Konnect connection for this object instead of the operator-wide one. Default: the operator's
    /// `--konnect-url` and token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub konnect: Option<KonnectOverride>,
}

impl RoleBindingSpec {
    /// `spec.entityId` or "*".
    pub fn entity_id(&self) -> &str {
        match self.entity_id.as_deref() {
            Some(id) if !id.is_empty() => id,
            _ => ANY,
        }
    }

    /// `spec.entityRegion` or "*".
    pub fn entity_region(&self) -> &str {
        match self.entity_region.as_deref() {
            Some(region) if !region.is_empty() => region,
            _ => ANY,
        }
    }

    /// `spec.deletionPolicy` with its default (Delete).
    pub fn deletion_policy(&self) -> DeletionPolicy {
        self.deletion_policy.unwrap_or_default()
    }

    /// What the CRD's schema and CEL rules check, again in code. The error is one InvalidSpec message.
    pub fn validate(&self) -> Result<(), String> {
        self.system_account_ref.target()?;
        if self.role_name.trim().is_empty() {
            return Err("spec.roleName must not be empty".into());
        }
        if self.entity_type_name.trim().is_empty() {
            return Err("spec.entityTypeName must not be empty".into());
        }
        let id = self.entity_id();
        if id != ANY && !is_uuid(id) {
            return Err(format!("spec.entityId {id:?} must be a uuid or \"*\""));
        }
        let region = self.entity_region();
        if !ENTITY_REGIONS.contains(&region) {
            return Err(format!(
                "spec.entityRegion {region:?} must be one of us, eu, au, me, in, sg, *"
            ));
        }
        Ok(())
    }
}

/// Observed state of a RoleBinding.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoleBindingStatus {
    /// Konnect id of the role assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_role_id: Option<String>,
    /// Konnect id of the system account that holds the assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_account_id: Option<String>,
    /// True when the assignment existed before (made by hand, or by another cluster) and was adopted: it is
    /// never removed from Konnect by this object (not on deletion, a role change or an account move).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted: Option<bool>,
    /// The auth Secret whose Konnect connection made this object's Konnect state ("" for the operator-wide
    /// one): cleanup uses the same organisation, never a guess.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub konnect_auth_secret: Option<String>,
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

    fn spec() -> RoleBindingSpec {
        RoleBindingSpec {
            system_account_ref: SystemAccountRef::by_name("ci-bot"),
            role_name: "Viewer".into(),
            entity_type_name: "Control Planes".into(),
            ..Default::default()
        }
    }

    #[test]
    fn entity_defaults_to_everything() {
        let s = spec();
        assert_eq!(s.entity_id(), "*");
        assert_eq!(s.entity_region(), "*");
        assert_eq!(s.deletion_policy(), DeletionPolicy::Delete);
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn explicit_entity_is_used_and_checked() {
        let s = RoleBindingSpec {
            entity_id: Some("497f6eca-6276-4993-bfeb-53cbbbba6f08".into()),
            entity_region: Some("eu".into()),
            ..spec()
        };
        assert_eq!(s.entity_id(), "497f6eca-6276-4993-bfeb-53cbbbba6f08");
        assert_eq!(s.entity_region(), "eu");
        assert_eq!(s.validate(), Ok(()));
        let bad_id = RoleBindingSpec {
            entity_id: Some("cp-1".into()),
            ..spec()
        };
        assert!(bad_id.validate().unwrap_err().contains("entityId"));
        let bad_region = RoleBindingSpec {
            entity_region: Some("EU".into()),
            ..spec()
        };
        assert!(bad_region.validate().unwrap_err().contains("entityRegion"));
        let no_role = RoleBindingSpec {
            role_name: " ".into(),
            ..spec()
        };
        assert!(no_role.validate().unwrap_err().contains("roleName"));
    }
}
