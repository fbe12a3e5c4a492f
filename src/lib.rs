//! konnect-sa-operator: Kong Konnect system accounts, their `spat_` tokens and role bindings as Kubernetes resources.
pub mod api;
pub mod bootstrap;
pub mod cli;
pub mod clock;
pub mod controller;
pub mod fence;
pub mod k8s;
pub mod konnect;
pub mod leader;
pub mod run;
pub mod sim;
pub mod telemetry;
