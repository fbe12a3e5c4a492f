//! Shared support for integration tests. Each test binary uses a subset of it.
#![allow(dead_code, unused_imports)]

pub mod env;
pub mod kube_api;
pub mod kubelet;
pub mod proxy;

#[allow(unused_imports)]
pub use env::{NS, TestEnv, delete, eventually, merge_patch, ready_of, wait_for};
pub use kube_api::FakeKube;
