//! Downstream HTTP: connection serving, route selection, the router and local replies.
pub mod body;
pub mod client_cert;
pub mod dynamic_metadata;
pub mod filters;
pub mod forwarded;
pub mod hash_policy;
pub mod header_mutation;
pub mod header_timeout;
pub mod headers;
pub mod idle;
pub mod local_reply;
pub mod matchers;
pub mod metadata_matcher;
pub mod mirror;
pub mod path_normalize;
pub mod redirect;
pub mod request_checks;
pub mod retry;
pub mod rewrite;
pub mod route_match;
pub mod route_slot;
pub mod router;
pub mod server;
pub mod upgrade;

pub use router::{Downstream, HttpConnectionManager};
