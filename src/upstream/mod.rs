//! Upstream clusters: hosts and their discovery (static, DNS, original destination),
//! load balancing, connecting, and HTTP connection pools.
pub mod breakers;
pub mod cluster;
pub mod connect;
pub mod dns;
pub mod h2_settings;
pub mod health_check;
pub mod host;
pub mod http_pool;
pub mod lb;
pub mod manager;
pub mod outlier;
pub mod side_call;
pub mod transport;

pub use cluster::Cluster;
pub use host::Host;
pub use manager::ClusterManager;
