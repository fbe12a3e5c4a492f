//! Pure decisions of the RoleBinding controller.
use crate::konnect::{AssignedRole, RoleTuple, RolesReference};

#[derive(Debug, Clone, PartialEq)]
pub struct BindingPlan {
    /// The assignment that satisfies the spec, when Konnect has it already.
    pub existing: Option<String>,
    /// The assignment this binding recorded that no longer matches the spec: delete it once
    /// the new one exists (create first, then delete: no access gap).
    pub stale: Option<AssignedRole>,
}

pub fn plan_binding(
    desired: &RoleTuple,
    recorded_id: Option<&str>,
    assigned: &[AssignedRole],
) -> BindingPlan {
    let existing = assigned
        .iter()
        .find(|a| Some(a.id.as_str()) == recorded_id && &a.role == desired)
        .or_else(|| assigned.iter().find(|a| &a.role == desired))
        .map(|a| a.id.clone());
    let stale = recorded_id
        .and_then(|id| assigned.iter().find(|a| a.id == id))
        .filter(|a| &a.role != desired)
        .cloned();
    BindingPlan { existing, stale }
}

fn normalise(s: &str) -> String {
    let s: String = s
        .to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { '_' })
        .collect();
    s.trim_end_matches('s').to_string()
}

/// Checks `role_name` against `GET /v3/roles` for `entity_type_name`. A type the reference does not
/// list passes (Konnect's lists grow faster than its spec); a known type with an unknown role fails
/// with the valid names.
pub fn validate_role(
    reference: &RolesReference,
    entity_type_name: &str,
    role_name: &str,
) -> Result<(), String> {
    let wanted = normalise(entity_type_name);
    let Some(entry) = reference
        .iter()
        .find(|(key, e)| normalise(key) == wanted || normalise(&e.name) == wanted)
        .map(|(_, e)| e)
    else {
        return Ok(());
    };
    let mut valid: Vec<&str> = entry.roles.values().map(|r| r.name.as_str()).collect();
    if valid.contains(&role_name) {
        return Ok(());
    }
    valid.sort_unstable();
    Err(format!(
        "Konnect has no role '{role_name}' for entity type '{entity_type_name}'; valid roles: {}",
        valid.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::konnect::{EntityTypeRoles, RoleDescription};

    fn tuple(role: &str) -> RoleTuple {
        RoleTuple {
            role_name: role.into(),
            entity_type_name: "Control Planes".into(),
            entity_id: "*".into(),
            entity_region: "eu".into(),
        }
    }

    fn assigned(id: &str, role: &str) -> AssignedRole {
        AssignedRole {
            id: id.into(),
            role: tuple(role),
        }
    }

    #[test]
    fn finds_or_adopts_the_matching_assignment() {
        let list = vec![assigned("r1", "Viewer")];
        assert_eq!(
            plan_binding(&tuple("Viewer"), Some("r1"), &list)
                .existing
                .as_deref(),
            Some("r1")
        );
        assert_eq!(
            plan_binding(&tuple("Viewer"), None, &list)
                .existing
                .as_deref(),
            Some("r1")
        );
        assert_eq!(
            plan_binding(&tuple("Admin"), None, &list),
            BindingPlan {
                existing: None,
                stale: None
            }
        );
    }

    #[test]
    fn a_changed_spec_marks_the_old_assignment_stale() {
        let list = vec![assigned("r1", "Viewer")];
        let plan = plan_binding(&tuple("Admin"), Some("r1"), &list);
        assert_eq!(plan.existing, None);
        assert_eq!(plan.stale.map(|a| a.id).as_deref(), Some("r1"));
        let both = vec![assigned("r1", "Viewer"), assigned("r2", "Admin")];
        let plan = plan_binding(&tuple("Admin"), Some("r1"), &both);
        assert_eq!(plan.existing.as_deref(), Some("r2"));
        assert_eq!(plan.stale.map(|a| a.id).as_deref(), Some("r1"));
    }

    fn reference() -> RolesReference {
        let roles = ["Admin", "Viewer"]
            .iter()
            .map(|r| {
                (
                    r.to_lowercase(),
                    RoleDescription {
                        name: r.to_string(),
                        description: String::new(),
                    },
                )
            })
            .collect();
        RolesReference::from([
            (
                "control_planes".to_string(),
                EntityTypeRoles {
                    name: "Control Planes".into(),
                    roles,
                },
            ),
            (
                "mesh_control_planes".to_string(),
                EntityTypeRoles {
                    name: "Mesh Control Plane".into(),
                    roles: Default::default(),
                },
            ),
        ])
    }

    #[test]
    fn unknown_roles_of_known_types_are_refused_with_the_valid_list() {
        assert!(validate_role(&reference(), "Control Planes", "Viewer").is_ok());
        let err = validate_role(&reference(), "Control Planes", "Viewr").unwrap_err();
        assert!(err.contains("Admin, Viewer"), "{err}");
        assert!(
            validate_role(&reference(), "Mesh Control Planes", "Viewer").is_err(),
            "singular/plural match"
        );
        assert!(
            validate_role(&reference(), "Event Gateways", "Anything").is_ok(),
            "unlisted types pass"
        );
    }
}
