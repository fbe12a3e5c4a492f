//! The custom resource types (API group `konnect-sa.dev`, version `v1alpha1`).

/// All CRDs as one multi-document YAML stream (what `konnect-sa-operator crds` prints).
pub fn crds_yaml() -> String {
    String::new()
}
