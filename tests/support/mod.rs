//! Shared support for integration tests. Each test binary uses a subset of it.
#![allow(dead_code, unused_imports)]

pub mod env;
pub mod journal;
pub mod kube_api;
pub mod kubelet;
pub mod leak;
pub mod logs;
pub mod metrics;
pub mod operator;
pub mod proxy;
pub mod rbac;

#[allow(unused_imports)]
pub use env::{NS, TestEnv, delete, eventually, merge_patch, ready_of, wait_for};
pub use kube_api::FakeKube;
