//! The HTTP filters that run before the router, one module each: the config they are
//! compiled into and what they do to a request and its response.
pub mod compressor;
pub mod cors;
pub mod ext_authz;
pub mod fault;
pub mod grpc_stats;
pub mod jwt_authn;
