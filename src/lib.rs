//! pilotfish: a sidecar data-plane proxy configured like Envoy.
#![deny(unsafe_code)]
// No panic on data from the network or the control plane: a poisoned lock is taken
// as it is (`sync.rs`), and the few invariants that may not hold are named where they
// are allowed.
#![deny(clippy::unwrap_used, clippy::expect_used)]
pub mod admin;
pub mod app;
pub mod bootstrap;
pub mod config;
pub mod demo;
pub mod drain;
pub mod http;
pub mod istio;
pub mod listener;
pub mod logging;
pub mod memory;
pub mod net;
pub mod rbac;
pub mod readiness;
pub mod runtime;
pub mod sync;
pub mod tcp;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod workers;
pub mod xds;
