//! Stats with Envoy's names, the access log, and tracing.
pub mod access_log;
pub mod access_log_filter;
pub mod naming;
pub mod otel_access_log;
pub mod scopes;
pub mod stat_sinks;
pub mod stats;
pub mod tags;
pub mod tracing;
