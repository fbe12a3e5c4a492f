//! The Kubernetes permissions the operator needs: the one canonical list that config/rbac and the Helm chart copy
//! (tests/install.rs checks they match).

use k8s_openapi::api::rbac::v1::PolicyRule;

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    }
}

/// Rules for the watched namespaces (cluster-wide in a ClusterRole, or one Role per namespace with
/// `--namespaces`): the custom resources, token Secrets, Events and rollout restarts.
pub fn required_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            "konnect-sa.dev",
            &["systemaccounts", "systemaccounttokens", "rolebindings"],
            &["get", "list", "watch", "patch"],
        ),
        rule(
            "konnect-sa.dev",
            &[
                "systemaccounts/status",
                "systemaccounttokens/status",
                "rolebindings/status",
            ],
            &["get", "update"],
        ),
        rule(
            "konnect-sa.dev",
            &[
                "systemaccounts/finalizers",
                "systemaccounttokens/finalizers",
                "rolebindings/finalizers",
            ],
            &["update"],
        ),
        // Delete: only a token Secret the spec moved away from (secretName edited), once the token it still
        // holds is revoked (src/k8s/secret.rs delete_unless_holding); everything else goes with its
        // SystemAccountToken through ownerReference garbage collection.
        rule(
            "",
            &["secrets"],
            &[
                "get", "list", "watch", "create", "update", "patch", "delete",
            ],
        ),
        // Each Event is created once (src/k8s/events.rs: no series to patch).
        rule("events.k8s.io", &["events"], &["create"]),
        // rolloutRestartTargets: a patch of spec.template's restartedAt annotation, like `kubectl rollout restart`.
        rule(
            "apps",
            &["deployments", "statefulsets", "daemonsets"],
            &["patch"],
        ),
    ]
}

/// Rules in the operator's own namespace: the leader-election Lease (src/leader.rs): get, create, and a
/// resourceVersion-guarded update to take or renew it.
pub fn leader_election_rules() -> Vec<PolicyRule> {
    vec![rule(
        "coordination.k8s.io",
        &["leases"],
        &["get", "create", "update"],
    )]
}
