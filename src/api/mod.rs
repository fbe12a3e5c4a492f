//! The custom resource types (API group `konnect-sa.dev`, version `v1alpha1`).

pub mod common;
pub mod duration;
pub mod metadata;
pub mod rbac;
pub mod role_binding;
pub mod system_account;
pub mod token;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use common::{
    AdoptionPolicy, CONDITION_ISSUING, CONDITION_READY, Condition, DeletionPolicy, FINALIZER,
    KonnectOverride, LocalSecretRef, RefTarget, SystemAccountRef, TeamRef, reason,
};
pub use role_binding::{RoleBinding, RoleBindingSpec, RoleBindingStatus};
pub use system_account::{SystemAccount, SystemAccountSpec, SystemAccountStatus, TeamStatus};
pub use token::{
    PreviousToken, RestartKind, RestartTarget, SecretTemplate, SystemAccountToken,
    SystemAccountTokenSpec, SystemAccountTokenStatus,
};

/// Every CustomResourceDefinition of the operator, in a stable order (SystemAccount, SystemAccountToken,
/// RoleBinding).
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        SystemAccount::crd(),
        SystemAccountToken::crd(),
        RoleBinding::crd(),
    ]
}

/// One CRD as YAML (what `crds/<plural>.<group>.yaml` holds).
pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    // Serializing a k8s-openapi struct to YAML cannot fail (no maps with non-string keys).
    serde_yaml::to_string(crd).unwrap_or_default()
}

/// File name of a CRD under `crds/`: `<plural>.<group>.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or_default())
}

/// All CRDs as one multi-document YAML stream (what `konnect-sa-operator crds` prints).
pub fn crds_yaml() -> String {
    crds()
        .iter()
        .map(|crd| format!("---\n{}", crd_yaml(crd)))
        .collect()
}
