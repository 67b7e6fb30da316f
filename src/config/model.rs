//! The runtime model: plain Rust structures compiled from Envoy protos. Nothing
//! downstream of `config/` sees a proto.
use std::{net::SocketAddr, time::Duration};

pub use crate::telemetry::access_log::AccessLogConfig;

#[derive(Debug, Clone, Default)]
pub struct Config {
    pub node: NodeInfo,
    pub admin: Option<SocketAddr>,
    pub listeners: Vec<ListenerConfig>,
    pub clusters: Vec<ClusterConfig>,
}

#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub id: String,
    pub cluster: String,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    /// `envoy.filters.listener.original_dst`: the connection's local address becomes
    /// its original (pre-REDIRECT) destination.
    pub original_dst: bool,
    /// Envoy's listener stat scope: `stat_prefix`, else the address as `0.0.0.0_15001`.
    pub stat_name: String,
    pub filter: NetworkFilter,
}

#[derive(Debug, Clone)]
pub enum NetworkFilter {
    TcpProxy(TcpProxyConfig),
    Http(HttpConfig),
}

#[derive(Debug, Clone)]
pub struct TcpProxyConfig {
    pub stat_prefix: String,
    pub cluster: String,
    pub access_logs: Vec<AccessLogConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Auto,
    Http1,
    Http2,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub stat_prefix: String,
    pub codec: Codec,
    pub generate_request_id: bool,
    /// The `server` header on every response (Envoy overwrites the upstream's).
    pub server_name: String,
    pub access_logs: Vec<AccessLogConfig>,
    pub routes: RouteTable,
}

#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Debug, Clone)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub path: PathMatch,
    pub case_sensitive: bool,
    pub cluster: String,
    /// Whole-request timeout; `None` when disabled with `0s`. Envoy's default is 15 s.
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Prefix(String),
    Path(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    Static,
    StrictDns,
    LogicalDns,
    OriginalDst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
    /// `use_downstream_protocol_config`: the downstream request's version.
    Downstream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsFamily {
    /// Envoy's AUTO: IPv6 if the name has one, else IPv4.
    Auto,
    V4Only,
    V6Only,
    V4Preferred,
    All,
}

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub name: String,
    pub discovery: Discovery,
    pub connect_timeout: Duration,
    pub protocol: UpstreamProtocol,
    pub dns_refresh_rate: Duration,
    pub dns_family: DnsFamily,
    pub endpoints: Vec<EndpointConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// An IP literal for STATIC clusters, a DNS name for the DNS types.
    pub host: String,
    pub port: u16,
}
