//! Upstream clusters: hosts and their discovery (static, DNS, original destination),
//! load balancing, connecting, and HTTP connection pools.
pub mod cluster;
pub mod connect;
pub mod dns;
pub mod http_pool;
pub mod manager;

pub use cluster::{Cluster, Host};
pub use manager::ClusterManager;
