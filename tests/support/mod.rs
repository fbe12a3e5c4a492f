//! Shared support for integration tests. Each test binary uses a subset of it.
#![allow(dead_code, unused_imports)]

pub mod env;
pub mod journal;
pub mod kubelet;
pub mod leak;
pub mod logs;
pub mod metrics;
pub mod operator;
pub mod proxy;
pub mod rbac;

/// The Kubernetes API stand-in (the workspace crate `tests/kube-standin`), under the name the tests use.
pub use kube_standin as kube_api;

#[allow(unused_imports)]
pub use env::{NS, TestEnv, delete, eventually, merge_patch, ready_of, wait_for};
pub use kube_api::FakeKube;
