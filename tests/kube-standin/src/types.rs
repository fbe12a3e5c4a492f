//! The resource types the stand-in serves, and the `Status` errors it answers with.

use serde_json::{Value, json};

pub type TypeId = usize;

/// A resource type the stand-in serves.
#[derive(Debug, Clone)]
pub struct ResourceType {
    /// API group, "" for core.
    pub group: String,
    /// Served versions; objects are stored once and shown in the requested version (no conversion).
    pub versions: Vec<String>,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    pub status_subresource: bool,
    /// Whether `metadata.generation` is maintained (CRDs, apps/v1 workloads; not Secrets, Events, Leases).
    pub has_generation: bool,
    /// Custom resources: PUT needs a resourceVersion, DELETE returns the object, create drops `.status`.
    pub custom: bool,
    /// The CRD's `openAPIV3Schema`: writes are pruned, defaulted and validated with it (see `schema.rs`).
    pub schema: Option<Value>,
}

impl ResourceType {
    pub fn builtin(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        Self {
            group: group.into(),
            versions: vec![version.into()],
            plural: plural.into(),
            kind: kind.into(),
            namespaced,
            status_subresource: false,
            has_generation: false,
            custom: false,
            schema: None,
        }
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    /// `secrets` or `systemaccounts.konnect-sa.dev`, as in the real API server's messages.
    pub fn qualified_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }
}

/// The types every stand-in serves, before CRDs are added.
pub fn builtin_types() -> Vec<ResourceType> {
    let workload = |plural: &str, kind: &str| ResourceType {
        status_subresource: true,
        has_generation: true,
        ..ResourceType::builtin("apps", "v1", plural, kind, true)
    };
    vec![
        ResourceType {
            status_subresource: true,
            ..ResourceType::builtin("", "v1", "namespaces", "Namespace", false)
        },
        ResourceType::builtin("", "v1", "secrets", "Secret", true),
        ResourceType::builtin("", "v1", "configmaps", "ConfigMap", true),
        ResourceType::builtin("", "v1", "events", "Event", true),
        ResourceType::builtin("events.k8s.io", "v1", "events", "Event", true),
        ResourceType::builtin("coordination.k8s.io", "v1", "leases", "Lease", true),
        workload("deployments", "Deployment"),
        workload("statefulsets", "StatefulSet"),
        workload("daemonsets", "DaemonSet"),
    ]
}

/// A Kubernetes `Status` failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: String,
    pub message: String,
    /// (name, group, kind) for `details`.
    pub details: Option<Box<(String, String, String)>>,
}

impl ApiError {
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, rt: &ResourceType, name: &str) -> Self {
        self.details = Some(Box::new((name.into(), rt.group.clone(), rt.plural.clone())));
        self
    }

    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", rt.qualified_resource()),
        )
        .with_details(rt, name)
    }

    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", rt.qualified_resource()),
        )
        .with_details(rt, name)
    }

    pub fn conflict(rt: &ResourceType, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                rt.qualified_resource()
            ),
        )
        .with_details(rt, name)
    }

    pub fn stale(rt: &ResourceType, name: &str) -> Self {
        Self::conflict(
            rt,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    pub fn invalid(rt: &ResourceType, name: &str, field_error: &str) -> Self {
        Self::new(
            422,
            "Invalid",
            format!(
                "{} \"{name}\" is invalid: {field_error}",
                rt.qualified_kind()
            ),
        )
        .with_details(rt, name)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// The `Status` object the API server returns.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some((name, group, kind)) = self.details.as_deref() {
            status["details"] = json!({"name": name, "group": group, "kind": kind});
        }
        status
    }
}
