//! Shared support for integration tests. Each test binary uses a subset of it.
#![allow(dead_code)]

pub mod kube_api;

pub use kube_api::FakeKube;
