//! Kubernetes-side effects: conditions, status writes, the token Secret, Events, rollout restarts.
pub mod conditions;
pub mod events;
pub mod restart;
pub mod secret;
pub mod status;
