//! Rollout restarts of the workloads that read a token Secret.
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::Api;
use kube::api::{Patch, PatchParams};

/// The pod template annotation set to the revision's issue time and number. Writing the same value again
/// changes nothing, so a restart happens once per revision even if the operator repeats the patch.
pub const RESTARTED_AT: &str = "konnect-sa.dev/restartedAt";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

/// Outcome for one target.
#[derive(Debug)]
pub enum RestartOutcome {
    Patched,
    NotFound,
    Failed(kube::Error),
}

pub async fn restart(
    client: &kube::Client,
    namespace: &str,
    kind: WorkloadKind,
    name: &str,
    stamp: &str,
) -> RestartOutcome {
    let patch = serde_json::json!({
        "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}
    });
    let pp = PatchParams::default();
    let p = Patch::Merge(&patch);
    let result = match kind {
        WorkloadKind::Deployment => Api::<Deployment>::namespaced(client.clone(), namespace)
            .patch(name, &pp, &p)
            .await
            .map(|_| ()),
        WorkloadKind::StatefulSet => Api::<StatefulSet>::namespaced(client.clone(), namespace)
            .patch(name, &pp, &p)
            .await
            .map(|_| ()),
        WorkloadKind::DaemonSet => Api::<DaemonSet>::namespaced(client.clone(), namespace)
            .patch(name, &pp, &p)
            .await
            .map(|_| ()),
    };
    match result {
        Ok(()) => RestartOutcome::Patched,
        Err(kube::Error::Api(s)) if s.code == 404 => RestartOutcome::NotFound,
        Err(e) => RestartOutcome::Failed(e),
    }
}
