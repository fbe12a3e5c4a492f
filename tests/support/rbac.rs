//! What the operator may do in a cluster: the rules of `src/api/rbac.rs` (which config/rbac and the Helm chart
//! copy), checked against every request an operator made to the stand-in. A request the rules do not cover is
//! one the real API server would answer with 403, so `TestEnv` fails the test when it ends.
use k8s_openapi::api::rbac::v1::PolicyRule;
use konnect_sa_operator::api::rbac::{leader_election_rules, required_rules};
use konnect_sa_operator::run::RunArgs;

use super::kube_api::RequestRecord;

/// The permissions one operator identity is given by the install manifests.
#[derive(Clone, Debug)]
pub struct Grant {
    /// The bearer token its client sends (the stand-in records it as the request's user).
    pub user: String,
    /// None: the ClusterRole (every namespace, cluster-wide list and watch). Some: one Role per namespace
    /// (`--namespaces`), nothing cluster-wide.
    pub namespaces: Option<Vec<String>>,
    /// The Lease's namespace, when leader election is on (a Role there).
    pub lease_namespace: Option<String>,
}

impl Grant {
    pub fn for_args(user: &str, args: &RunArgs) -> Grant {
        Grant {
            user: user.to_string(),
            namespaces: Some(
                args.namespaces
                    .iter()
                    .filter(|n| !n.is_empty())
                    .cloned()
                    .collect::<Vec<_>>(),
            )
            .filter(|watched| !watched.is_empty()),
            lease_namespace: args
                .leader_elect
                .then(|| args.leader_election_namespace.clone()),
        }
    }

    /// Whether the manifests let this identity make `r`.
    pub fn allows(&self, r: &RequestRecord) -> bool {
        let in_scope = match (&self.namespaces, &r.namespace) {
            (None, _) => true,
            (Some(watched), Some(ns)) => watched.contains(ns),
            (Some(_), None) => false,
        };
        let in_lease_ns =
            self.lease_namespace.is_some() && r.namespace.as_ref() == self.lease_namespace.as_ref();
        (in_scope && covered(&required_rules(), r))
            || (in_lease_ns && covered(&leader_election_rules(), r))
    }
}

/// Whether one of `rules` covers the request (apiGroup, resource or resource/subresource, verb).
pub fn covered(rules: &[PolicyRule], r: &RequestRecord) -> bool {
    let resource = match &r.subresource {
        Some(sub) => format!("{}/{sub}", r.plural),
        None => r.plural.clone(),
    };
    rules.iter().any(|rule| {
        let has = |list: &Option<Vec<String>>, want: &str| {
            list.as_ref()
                .is_some_and(|l| l.iter().any(|x| x == want || x == "*"))
        };
        has(&rule.api_groups, &r.group)
            && has(&rule.resources, &resource)
            && rule.verbs.iter().any(|v| v == &r.verb || v == "*")
    })
}

/// The requests of the granted identities that their grant does not cover, one line each.
pub fn unauthorised(grants: &[Grant], requests: &[RequestRecord]) -> Vec<String> {
    requests
        .iter()
        .filter_map(|r| {
            let grant = grants.iter().find(|g| Some(&g.user) == r.user.as_ref())?;
            (!grant.allows(r)).then(|| {
                format!(
                    "{} {}/{}{} in {} (name {:?}) by {}",
                    r.verb,
                    if r.group.is_empty() { "core" } else { &r.group },
                    r.plural,
                    r.subresource
                        .as_ref()
                        .map(|s| format!("/{s}"))
                        .unwrap_or_default(),
                    r.namespace.as_deref().unwrap_or("<cluster>"),
                    r.name,
                    grant.user,
                )
            })
        })
        .collect()
}
