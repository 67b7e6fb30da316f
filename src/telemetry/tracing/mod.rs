//! Distributed tracing as Envoy does it for HTTP: the sampling decision (carried in
//! `x-request-id`), spans whose context travels in B3 or W3C headers, Envoy's span
//! tags, and export to Zipkin (v2 JSON) or an OpenTelemetry collector (OTLP), batched
//! off the traffic path.
pub mod context;
pub mod decision;
pub mod exporter;
pub mod otlp;
pub mod request_span;
pub mod span;
pub mod tracer;
pub mod zipkin;

pub use request_span::{HttpTracing, RequestSpan};
pub use tracer::{NodeIdentity, Tracers};
