//! Stats with Envoy's names, and the access log.
pub mod access_log;
pub mod naming;
pub mod scopes;
pub mod stats;
pub mod tags;
