//! Envoy protos in, plain runtime structures out.
pub mod chain_matcher;
pub mod compile;
pub mod encoded_check;
pub mod http_filters;
pub mod jwt_authn;
pub mod mirror;
pub mod model;
pub mod proto;
pub mod rbac;
pub mod retry;
pub mod route_config;
pub mod server;
pub mod stat_sinks;
pub mod support;
pub mod tls;
pub mod tracing;
pub mod typed_struct;

pub use model::*;
