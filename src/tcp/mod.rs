//! L4 proxying: `envoy.filters.network.tcp_proxy`.
pub mod copy;
pub mod proxy;

pub use proxy::TcpProxy;
