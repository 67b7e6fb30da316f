//! Envoy protos in, plain runtime structures out.
pub mod compile;
pub mod encoded_check;
pub mod http_filters;
pub mod model;
pub mod proto;
pub mod route_config;
pub mod support;

pub use model::*;
