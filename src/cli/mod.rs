//! Subcommands for people and CI that never run the operator: `validate` (offline) and `plan`
//! (read-only Konnect, optionally the cluster) for manifests under review.
pub mod manifests;
pub mod plan;
mod planner;
pub mod schema;
pub mod validate;
