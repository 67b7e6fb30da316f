//! The runtime model: plain Rust structures compiled from Envoy protos. Nothing
//! downstream of `config/` sees a proto.
use std::{net::SocketAddr, sync::Arc, time::Duration};

pub use crate::{
    http::{
        filters::{compressor::CompressorConfig, cors::CorsPolicy, fault::FaultConfig},
        forwarded::ForwardedConfig,
        header_mutation::HeaderMutations,
        matchers::{HeaderMatcher, QueryParameterMatcher},
    },
    telemetry::access_log::AccessLogConfig,
};
use regex::Regex;

pub use crate::net::cidr::Cidr;

#[derive(Debug, Clone, Default)]
pub struct Config {
    pub node: NodeInfo,
    pub admin: Option<SocketAddr>,
    pub listeners: Vec<ListenerConfig>,
    pub clusters: Vec<ClusterConfig>,
    /// `dynamic_resources`: listeners and clusters from xDS or files.
    pub dynamic: Option<DynamicConfig>,
    /// Server-wide settings: stats naming, runtime, overload, logging.
    pub server: super::server::ServerConfig,
    /// The bootstrap's `tracing.http`: the provider of connection managers whose
    /// `tracing` names none.
    pub tracing: Option<super::tracing::TracingProvider>,
    /// `stats_sinks` and their flush settings.
    pub stat_sinks: super::stat_sinks::StatSinksConfig,
}

/// `dynamic_resources`.
#[derive(Debug, Clone)]
pub struct DynamicConfig {
    /// The bootstrap's node, sent to the control plane as it is.
    pub node: envoy_types::pb::envoy::config::core::v3::Node,
    pub ads: Option<AdsConfig>,
    pub lds: Option<ResourceSource>,
    pub cds: Option<ResourceSource>,
}

/// `ads_config`: one gRPC stream for every resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdsConfig {
    /// `api_type: DELTA_GRPC` (incremental) rather than `GRPC` (state of the world).
    pub delta: bool,
    /// `grpc_services[0].envoy_grpc.cluster_name`: a static cluster.
    pub cluster: String,
    /// `set_node_on_first_message_only`.
    pub node_on_first_message_only: bool,
}

/// A `ConfigSource`: where a resource type comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceSource {
    /// `ads: {}`. `initial_fetch_timeout`: Envoy's default 15 s, `None` when 0.
    Ads {
        initial_fetch_timeout: Option<Duration>,
    },
    /// `path_config_source.path`: a file of `DiscoveryResponse`, reloaded when it changes.
    Path(std::path::PathBuf),
}

impl ResourceSource {
    pub fn initial_fetch_timeout(&self) -> Option<Duration> {
        match self {
            ResourceSource::Ads {
                initial_fetch_timeout,
            } => *initial_fetch_timeout,
            ResourceSource::Path(_) => None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub id: String,
    pub cluster: String,
    /// The bootstrap's node as given (for `/server_info`).
    pub proto: envoy_types::pb::envoy::config::core::v3::Node,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    /// `additional_addresses`: more addresses of the same listener (dual stack).
    pub additional_addresses: Vec<SocketAddr>,
    /// Addresses bound with `ipv4_compat: true` (an IPv6 socket that also takes IPv4).
    pub ipv4_compat: Vec<SocketAddr>,
    /// `bind_to_port: false`: no socket of its own; it only serves connections handed
    /// over by a `use_original_dst` listener.
    pub bind_to_port: bool,
    /// `use_original_dst`: a connection whose original destination belongs to another
    /// listener is handed to that listener.
    pub use_original_dst: bool,
    /// `enable_reuse_port` (default true): a socket per worker, else one shared socket.
    pub reuse_port: bool,
    /// `traffic_direction: INBOUND` (what `/drain_listeners?inboundonly` drains).
    pub inbound: bool,
    /// `ignore_global_conn_limit` or `bypass_overload_manager`: exempt from the global
    /// downstream connection limit.
    pub ignore_global_conn_limit: bool,
    pub listener_filters: ListenerFilters,
    /// Envoy's listener stat scope: `stat_prefix`, else the address as `0.0.0.0_15001`.
    pub stat_name: String,
    pub filter_chains: Vec<FilterChain>,
    /// `default_filter_chain`: used when no chain matches.
    pub default_chain: Option<FilterChain>,
    /// `filter_chain_matcher`: when set, it chooses the chain by name and every
    /// `filter_chain_match` is ignored, as in Envoy.
    pub chain_matcher: Option<Arc<crate::listener::chain_matcher::ChainMatcher>>,
}

impl ListenerConfig {
    /// Every address the listener binds (or answers for, when not bound).
    pub fn addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        std::iter::once(self.address).chain(self.additional_addresses.iter().copied())
    }
}

/// The listener filters: what runs on an accepted connection before a filter chain is
/// chosen.
#[derive(Debug, Clone, Default)]
pub struct ListenerFilters {
    /// `envoy.filters.listener.original_dst` (listed, or implied by `use_original_dst`
    /// as in Envoy): the connection's destination becomes its original (pre-REDIRECT)
    /// destination.
    pub original_dst: bool,
    /// `envoy.filters.listener.tls_inspector`: SNI and ALPN from a TLS ClientHello.
    pub tls_inspector: Option<FilterEnabled>,
    /// `envoy.filters.listener.http_inspector`: HTTP/1.x or h2c as application protocol.
    pub http_inspector: Option<FilterEnabled>,
    /// `listener_filters_timeout` (Envoy's default 15 s; `None` when set to 0).
    pub timeout: Option<Duration>,
    pub continue_on_timeout: bool,
}

/// A listener filter's `filter_disabled` predicate; `None` inside means always enabled.
#[derive(Debug, Clone, Default)]
pub struct FilterEnabled {
    pub disabled: Option<ConnPredicate>,
}

/// `ListenerFilterChainMatchPredicate`.
#[derive(Debug, Clone)]
pub enum ConnPredicate {
    Any,
    Or(Vec<ConnPredicate>),
    And(Vec<ConnPredicate>),
    Not(Box<ConnPredicate>),
    /// `destination_port_range`: start inclusive, end exclusive.
    DestinationPort(u32, u32),
}

impl ConnPredicate {
    pub fn matches(&self, dst_port: u16) -> bool {
        match self {
            ConnPredicate::Any => true,
            ConnPredicate::Or(v) => v.iter().any(|p| p.matches(dst_port)),
            ConnPredicate::And(v) => v.iter().all(|p| p.matches(dst_port)),
            ConnPredicate::Not(p) => !p.matches(dst_port),
            ConnPredicate::DestinationPort(lo, hi) => (*lo..*hi).contains(&(dst_port as u32)),
        }
    }
}

#[derive(Debug, Clone)]
pub struct FilterChain {
    pub name: String,
    pub matcher: ChainMatch,
    /// The network filters before the terminal one, in order.
    pub read_filters: Vec<ReadFilter>,
    /// The terminal network filter.
    pub filter: NetworkFilter,
    /// `transport_socket`: TLS terminated before the filters run (`None`: raw bytes).
    pub tls: Option<Arc<super::tls::TlsContext>>,
    /// `transport_socket_connect_timeout`: how long the TLS handshake may take.
    pub handshake_timeout: Option<Duration>,
}

/// A network filter that runs before the terminal one and may close the connection.
#[derive(Debug, Clone)]
pub enum ReadFilter {
    /// `envoy.filters.network.rbac` with its `stat_prefix`.
    Rbac {
        config: Arc<crate::rbac::RbacConfig>,
        stat_prefix: String,
    },
    /// Istio's TCP metadata exchange (`istio.metadata_exchange`).
    MetadataExchange(crate::istio::exchange::ExchangeConfig),
    /// `istio.stats` (`stats.PluginConfig`): Istio's TCP metrics.
    IstioStats(crate::istio::stats::StatsConfig),
    /// `envoy.filters.network.connection_limit`: at most `max` connections at once on
    /// the chain; one more is closed (after `delay`, if set).
    ConnectionLimit {
        stat_prefix: String,
        max: u64,
        delay: Option<Duration>,
    },
}

/// `filter_chain_match`. Empty lists and `None` match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainMatch {
    pub destination_port: Option<u16>,
    pub prefix_ranges: Vec<Cidr>,
    /// Exact names and `*.suffix` wildcards, lowercase.
    pub server_names: Vec<String>,
    pub transport_protocol: Option<String>,
    pub application_protocols: Vec<String>,
    pub direct_source_prefix_ranges: Vec<Cidr>,
    pub source_type: SourceType,
    pub source_prefix_ranges: Vec<Cidr>,
    pub source_ports: Vec<u16>,
}

impl AsRef<ChainMatch> for ChainMatch {
    fn as_ref(&self) -> &ChainMatch {
        self
    }
}

impl AsRef<ChainMatch> for FilterChain {
    fn as_ref(&self) -> &ChainMatch {
        &self.matcher
    }
}

impl ChainMatch {
    /// True when choosing between chains like this one needs what the TLS or HTTP
    /// inspector finds (SNI, transport or application protocol).
    pub fn needs_inspection(&self) -> bool {
        !self.server_names.is_empty()
            || self.transport_protocol.is_some()
            || !self.application_protocols.is_empty()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SourceType {
    #[default]
    Any,
    /// `SAME_IP_OR_LOOPBACK`.
    Local,
    External,
}

#[derive(Debug, Clone)]
pub enum NetworkFilter {
    TcpProxy(TcpProxyConfig),
    Http(Box<HttpConfig>),
}

#[derive(Debug, Clone)]
pub struct TcpProxyConfig {
    pub stat_prefix: String,
    pub cluster: String,
    pub access_logs: Vec<AccessLogConfig>,
    /// `idle_timeout`: Envoy's default 1 h; `None` when `0s`.
    pub idle_timeout: Option<Duration>,
    pub max_downstream_connection_duration: Option<Duration>,
    /// `hash_policy: [{source_ip: {}}]`: a hashing balancer keys on the client's IP.
    pub hash_source_ip: bool,
    /// `max_connect_attempts` (default 1): connects tried, each to a host picked anew.
    pub max_connect_attempts: u32,
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
    /// `tracing`: sampling, tags and the span provider.
    pub tracing: Option<Arc<super::tracing::TracingConfig>>,
    /// `proxy_100_continue`: `Expect: 100-continue` goes upstream; otherwise it is
    /// removed (the `100 Continue` comes from pilotfish either way: see the router).
    pub proxy_100_continue: bool,
    pub codec: Codec,
    pub generate_request_id: bool,
    /// The `server` header on every response (Envoy overwrites the upstream's).
    pub server_name: String,
    pub access_logs: Vec<AccessLogConfig>,
    pub routes: RouteSource,
    /// The HTTP filters before the router, in chain order.
    pub filters: Vec<HttpFilter>,
    /// `upgrade_configs`: the upgrade types (lowercase, e.g. `websocket`) allowed.
    pub upgrades: Vec<String>,
    pub normalize_path: bool,
    pub merge_slashes: bool,
    pub forwarded: ForwardedConfig,
    /// `forward_client_cert_details` / `set_current_client_cert_details`.
    pub client_cert: crate::http::client_cert::ClientCertConfig,
    /// The listener's `per_connection_buffer_limit_bytes` (Envoy's default 1 MiB): how
    /// much of a request body is kept to replay it on a retry.
    pub buffer_limit: usize,
    /// `stream_idle_timeout` (Envoy's default 5 min; `None` when `0s`); a route's
    /// `idle_timeout` overrides it.
    pub stream_idle_timeout: Option<Duration>,
    /// `common_http_protocol_options.idle_timeout`: a connection without a new request
    /// for this long is closed (Envoy's default 1 h; `None` when `0s`).
    pub idle_timeout: Option<Duration>,
    /// `common_http_protocol_options.max_connection_duration`: then the connection
    /// drains.
    pub max_connection_duration: Option<Duration>,
    /// `drain_timeout` (default 5 s): how long a draining HTTP/1 connection may stay
    /// idle before it is closed.
    pub drain_timeout: Duration,
    /// `common_http_protocol_options.max_stream_duration`: a stream still going after
    /// this long ends (a route's `max_stream_duration` replaces it).
    pub max_stream_duration: Option<Duration>,
    /// `request_timeout`: the whole request must arrive within this (408 otherwise).
    pub request_timeout: Option<Duration>,
    /// `request_headers_timeout`: an HTTP/1.1 request's headers must arrive within this
    /// from their first byte (408 and the connection closed otherwise).
    pub request_headers_timeout: Option<Duration>,
    /// `http2_protocol_options` for the connections' HTTP/2 side: the streams a client
    /// may have open, the flow-control windows, PING keepalive.
    pub http2: H2Options,
    /// `common_http_protocol_options.max_requests_per_connection`: a connection serves
    /// this many requests, then closes (HTTP/1.1) or drains (HTTP/2).
    pub max_requests_per_connection: Option<u32>,
    /// `http_protocol_options` (HTTP/1.0 acceptance).
    pub http1: crate::http::request_checks::Http1Settings,
    /// `max_request_headers_kb` (default 60): a larger request head is refused 431.
    pub max_request_headers_kb: u32,
}

/// Where a connection manager's routes come from.
#[derive(Debug, Clone)]
pub enum RouteSource {
    /// `route_config`.
    Inline(RouteTable),
    /// `rds`: the `RouteConfiguration` of this name, from RDS.
    Rds {
        name: String,
        initial_fetch_timeout: Option<Duration>,
    },
}

#[derive(Debug, Clone)]
pub enum HttpFilter {
    /// `envoy.filters.http.fault` under its name in `http_filters`.
    Fault { name: String, config: FaultConfig },
    /// `envoy.filters.http.cors`: acts on per-route `CorsPolicy` configs only.
    Cors { name: String },
    /// `envoy.filters.http.grpc_stats`.
    GrpcStats {
        name: String,
        config: crate::http::filters::grpc_stats::GrpcStatsConfig,
    },
    /// `envoy.filters.http.rbac`.
    Rbac {
        name: String,
        config: Arc<crate::rbac::RbacConfig>,
    },
    /// `envoy.filters.http.ext_authz`.
    ExtAuthz {
        name: String,
        config: Arc<crate::http::filters::ext_authz::ExtAuthzConfig>,
    },
    /// `envoy.filters.http.jwt_authn`.
    JwtAuthn {
        name: String,
        config: Arc<crate::http::filters::jwt_authn::JwtAuthnConfig>,
    },
    /// Istio's HTTP peer metadata exchange (`io.istio.http.peer_metadata.Config`).
    IstioPeerMetadata {
        name: String,
        config: crate::istio::peer_metadata::PeerMetadataConfig,
    },
    /// `istio.alpn`: the ALPN a TLS upstream offers, by upstream protocol.
    IstioAlpn {
        name: String,
        config: crate::istio::alpn::AlpnConfig,
    },
    /// `istio.stats` (`stats.PluginConfig`): Istio's standard metrics.
    IstioStats {
        name: String,
        config: crate::istio::stats::StatsConfig,
    },
    /// `envoy.filters.http.compressor` (several may be chained, one per encoding).
    Compressor {
        name: String,
        config: Arc<CompressorConfig>,
    },
}

#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    pub headers: Headers,
    /// `most_specific_header_mutations_wins`: apply the levels least specific first.
    pub most_specific_wins: bool,
    pub per_filter: PerFilter,
    /// `ignore_port_in_host_matching`: `Host: name:port` matches the domain `name`.
    pub ignore_port_in_host_matching: bool,
}

/// `typed_per_filter_config`: per-route replacements of HTTP filters' configs, by the
/// filter's name. The most specific level that has one for a filter wins.
pub type PerFilter = Vec<(String, FilterOverride)>;

#[derive(Debug, Clone)]
pub enum FilterOverride {
    Fault(Arc<FaultConfig>),
    Cors(Arc<CorsPolicy>),
    /// `RBACPerRoute`: other rules for this route, or `None` (no `rbac`): off here.
    Rbac(Option<Arc<crate::rbac::RbacConfig>>),
    /// `ExtAuthzPerRoute`: off here, or the check's per-route settings.
    ExtAuthz(Arc<crate::http::filters::ext_authz::PerRoute>),
    /// jwt_authn's `PerRouteConfig`: off here, or the requirement to apply.
    JwtAuthn(Arc<crate::http::filters::jwt_authn::PerRoute>),
}

/// Header mutations of one level, both directions.
#[derive(Debug, Clone, Default)]
pub struct Headers {
    pub request: HeaderMutations,
    pub response: HeaderMutations,
}

#[derive(Debug, Clone)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    pub headers: Headers,
    pub per_filter: PerFilter,
    /// `include_request_attempt_count`: `x-envoy-attempt-count` on upstream requests.
    pub attempt_count_request: bool,
    /// `include_attempt_count_in_response`: `x-envoy-attempt-count` on responses.
    pub attempt_count_response: bool,
    /// `virtual_clusters`: request classes counted apart (stats only).
    pub virtual_clusters: Vec<VirtualCluster>,
}

/// A `VirtualCluster`: requests whose headers match all of `headers` are counted under
/// `vhost.<vh>.vcluster.<name>.*` (the first that matches; others under `other`).
#[derive(Debug, Clone)]
pub struct VirtualCluster {
    pub name: String,
    pub headers: Vec<crate::http::matchers::HeaderMatcher>,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    /// `decorator`: the span's operation name.
    pub decorator: Option<super::tracing::Decorator>,
    pub matcher: RouteMatch,
    pub action: RouteAction,
    pub headers: Headers,
    pub per_filter: PerFilter,
}

/// What a matched route does: forward (`route`), `redirect` or `direct_response`.
#[derive(Debug, Clone)]
pub enum RouteAction {
    Forward(Forward),
    Redirect(Redirect),
    Direct(DirectResponse),
}

#[derive(Debug, Clone)]
pub struct Forward {
    pub cluster: ClusterSpec,
    pub rewrite: Rewrite,
    /// Whole-request timeout; `None` when disabled with `0s`. Envoy's default is 15 s.
    pub timeout: Option<Duration>,
    /// The route's `upgrade_configs`: per upgrade type, enabled or not, overriding the
    /// connection manager's.
    pub upgrades: Vec<(String, bool)>,
    /// `idle_timeout`: the stream ends after this long without activity; it replaces
    /// the connection manager's `stream_idle_timeout` (`0s`: no idle timeout).
    pub idle_timeout: Option<Duration>,
    /// How a gRPC request's `grpc-timeout` replaces `timeout` (`max_grpc_timeout` or
    /// `max_stream_duration.grpc_timeout_header_max`); `None`: it does not.
    pub grpc_timeout: Option<GrpcTimeout>,
    /// The route's `retry_policy`, else its virtual host's.
    pub retry: Option<Arc<crate::http::retry::RetryPolicy>>,
    /// `request_mirror_policies`: the route's, else its virtual host's, else the route
    /// configuration's.
    pub mirrors: Vec<crate::http::mirror::MirrorPolicy>,
    /// `max_stream_duration.max_stream_duration`: replaces the connection manager's
    /// (`0s`: no limit for the route).
    pub max_stream_duration: Option<Duration>,
    /// `hash_policy`: the request's key for the hashing balancers.
    pub hash_policy: Option<Arc<crate::http::hash_policy::HashPolicy>>,
}

/// Envoy's rule for gRPC requests: the `grpc-timeout` header (less `offset`), or no
/// timeout without one, capped by `max` (`None`: no cap, as `0s` configures it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GrpcTimeout {
    pub max: Option<Duration>,
    pub offset: Duration,
}

impl GrpcTimeout {
    /// The timeout for a gRPC request whose `grpc-timeout` header says `header`.
    pub fn apply(&self, header: Option<Duration>) -> Option<Duration> {
        let t = header
            .map(|h| h.saturating_sub(self.offset))
            .filter(|t| !t.is_zero());
        match (t, self.max) {
            (Some(t), Some(m)) => Some(t.min(m)),
            (None, m) => m,
            (t, None) => t,
        }
    }
}

impl Forward {
    pub fn to(cluster: ClusterSpec) -> Self {
        Forward {
            cluster,
            rewrite: Rewrite::default(),
            timeout: None,
            upgrades: Vec::new(),
            idle_timeout: None,
            grpc_timeout: None,
            retry: None,
            mirrors: Vec::new(),
            max_stream_duration: None,
            hash_policy: None,
        }
    }
}

/// A `RedirectAction`: the `location` is built from the request with these parts
/// replaced.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// `https_redirect` / `scheme_redirect`.
    pub scheme: Option<String>,
    /// `host_redirect`: replaces the whole authority.
    pub host: Option<String>,
    pub port: Option<u32>,
    /// `path_redirect`, or `prefix_rewrite` / `regex_rewrite` of the path.
    pub path: Option<RedirectPath>,
    pub strip_query: bool,
    pub status: u16,
}

#[derive(Debug, Clone)]
pub enum RedirectPath {
    Replace(String),
    Rewrite(PathRewrite),
}

#[derive(Debug, Clone)]
pub struct DirectResponse {
    pub status: u16,
    pub body: Option<String>,
}

/// A route's `match`: the path, then every header and query matcher, then gRPC and the
/// runtime fraction must all agree.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    pub path: PathMatch,
    /// Applies to prefix, path and path-separated-prefix matches, not to regexes.
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatcher>,
    pub query_parameters: Vec<QueryParameterMatcher>,
    /// `grpc: {}`: only requests with a `content-type` of `application/grpc…`.
    pub grpc: bool,
    /// `runtime_fraction` (its default value; there is no runtime): matches this many
    /// of every million requests.
    pub per_million: Option<u32>,
}

impl RouteMatch {
    pub fn path(path: PathMatch) -> Self {
        RouteMatch {
            path,
            case_sensitive: true,
            headers: Vec::new(),
            query_parameters: Vec::new(),
            grpc: false,
            per_million: None,
        }
    }
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Prefix(String),
    Path(String),
    /// `safe_regex`: the whole path (query string removed) must match.
    Regex(Regex),
    /// `path_separated_prefix`: the path is the prefix or continues with `/`.
    SeparatedPrefix(String),
}

/// Where a route sends requests.
#[derive(Debug, Clone)]
pub enum ClusterSpec {
    Single(String),
    /// `weighted_clusters`: picked at random in proportion to the weights.
    Weighted(Vec<WeightedTarget>),
    /// `cluster_header`: the cluster named by this request header (lowercase).
    Header(String),
}

#[derive(Debug, Clone)]
pub struct WeightedTarget {
    pub name: String,
    pub weight: u32,
    pub headers: Headers,
}

impl WeightedTarget {
    pub fn new(name: &str, weight: u32) -> Self {
        WeightedTarget {
            name: name.into(),
            weight,
            headers: Headers::default(),
        }
    }
}

impl ClusterSpec {
    pub fn names(&self) -> Vec<&str> {
        match self {
            ClusterSpec::Single(c) => vec![c],
            ClusterSpec::Weighted(w) => w.iter().map(|t| t.name.as_str()).collect(),
            ClusterSpec::Header(_) => Vec::new(),
        }
    }
}

/// What the route rewrites before forwarding.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    pub path: Option<PathRewrite>,
    /// `host_rewrite_literal`.
    pub host: Option<String>,
    /// `host_rewrite_header`: the host from this request header, when present.
    pub host_from_header: Option<http::HeaderName>,
    /// `auto_host_rewrite`: the chosen upstream host's hostname, when it has one.
    pub auto_host: bool,
}

#[derive(Debug, Clone)]
pub enum PathRewrite {
    /// `prefix_rewrite`: replaces what the prefix (or path) match matched.
    Prefix(String),
    /// `regex_rewrite`: every match of the pattern in the path (query string kept).
    Regex {
        pattern: Regex,
        substitution: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    Static,
    StrictDns,
    LogicalDns,
    OriginalDst,
    /// `EDS`: hosts come from the endpoint discovery service (see [`EdsConfig`]).
    Eds,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
    /// `use_downstream_protocol_config`: the downstream request's version.
    Downstream,
}

/// A cluster's transport sockets: TLS or raw, per host by its
/// `envoy.transport_socket_match` metadata (Istio's auto mTLS).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TransportSockets {
    /// `transport_socket` (`None`: raw bytes).
    pub default: Option<Arc<super::tls::TlsContext>>,
    /// `transport_socket_matches`, in order: the first whose `match` the host's metadata
    /// contains wins; none: `default`.
    pub matches: Vec<SocketMatch>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SocketMatch {
    pub name: String,
    pub criteria: LbMetadata,
    pub tls: Option<Arc<super::tls::TlsContext>>,
}

impl TransportSockets {
    /// The index of the match a host with `metadata` uses (`None`: the default).
    pub fn pick(&self, metadata: Option<&LbMetadata>) -> Option<usize> {
        self.matches.iter().position(|m| {
            m.criteria
                .iter()
                .all(|(k, v)| metadata.is_some_and(|md| md.get(k) == Some(v)))
        })
    }
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

#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    pub name: String,
    pub discovery: Discovery,
    pub connect_timeout: Duration,
    pub protocol: UpstreamProtocol,
    /// How often DNS names are resolved again. With `respect_dns_ttl` too: the system
    /// resolver pilotfish uses reports no TTL, so this rate stands.
    pub dns_refresh_rate: Duration,
    pub dns_family: DnsFamily,
    pub endpoints: Vec<EndpointConfig>,
    /// ORIGINAL_DST `original_dst_lb_config.use_http_header`: the request header
    /// (lowercase) whose `ip:port` overrides the connection's original destination.
    pub original_dst_header: Option<http::HeaderName>,
    pub upstream_socket: UpstreamSocket,
    /// EDS clusters: where their hosts come from.
    pub eds: Option<EdsConfig>,
    /// `alt_stat_name`: the cluster's stat scope (`cluster.<alt_stat_name>.…`) and
    /// observability name, instead of its name. Istio sets `<name>;`.
    pub alt_stat_name: Option<String>,
    /// `circuit_breakers.thresholds` per priority (Envoy's defaults when unset).
    pub breakers: Breakers,
    /// Arrived over CDS (`/clusters` says `added_via_api`).
    pub added_via_api: bool,
    /// `max_requests_per_connection` (the cluster field or `common_http_protocol_options`):
    /// an upstream HTTP connection is used for at most this many requests.
    pub max_requests_per_connection: Option<u32>,
    /// `per_connection_buffer_limit_bytes` (default 1 MiB): how far a mirror copy sent
    /// to this cluster may fall behind the request before it is cut off.
    pub buffer_limit: usize,
    /// `transport_socket` and `transport_socket_matches`.
    pub transport: TransportSockets,
    /// `common_http_protocol_options.idle_timeout`: an upstream HTTP connection that
    /// carried no request for this long is closed (Envoy's default 1 h; `None`: `0s`).
    pub idle_timeout: Option<Duration>,
    /// ORIGINAL_DST `cleanup_interval`: how often hosts no connection uses are dropped
    /// (Envoy's default 5s; istiod's inbound clusters ask for ~292 years, i.e. never).
    pub cleanup_interval: Duration,
    /// How hosts are chosen.
    pub lb: LbConfig,
    /// The load assignment's `policy.overprovisioning_factor` (Envoy's default 140).
    pub overprovisioning_factor: u32,
    /// `outlier_detection`, when set.
    pub outlier: Option<OutlierConfig>,
    /// `health_checks` (one at most), when set.
    pub health_check: Option<HealthCheckConfig>,
    /// `http2_protocol_options` for upstream HTTP/2 connections.
    pub h2: H2Options,
    /// `common_http_protocol_options.max_connection_duration`: an upstream connection
    /// takes no new request after this long and closes once idle.
    pub max_connection_duration: Option<Duration>,
    /// `metadata.filter_metadata["istio"].alpn_override` is `"false"`: `istio.alpn`
    /// leaves this cluster's ALPN list alone (istiod's mark for a DestinationRule's
    /// own TLS).
    pub keep_alpn: bool,
    /// What its `istio` metadata (and name) say about the peer metadata exchange.
    pub istio_marks: crate::istio::peer_metadata::ClusterMarks,
    /// `filter_metadata.istio.services[0]`: the service istiod made it for (Istio's
    /// `destination_service` labels).
    pub istio_service: Option<Arc<crate::istio::stats::labels::Service>>,
    /// `filters`: Istio's TCP metadata exchange on its connections.
    pub metadata_exchange: Option<crate::istio::exchange::ExchangeConfig>,
}

/// Upstream `http2_protocol_options`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Options {
    /// Upstream: streams per connection before another is opened (also bounded by the
    /// peer's SETTINGS_MAX_CONCURRENT_STREAMS). Downstream: the streams a client may
    /// have open (SETTINGS_MAX_CONCURRENT_STREAMS; more are refused). Envoy 1.40's
    /// default, 1024.
    pub max_concurrent_streams: u32,
    /// `connection_keepalive`: PING every `interval`, close after `timeout` unanswered.
    pub keepalive: Option<(Duration, Duration)>,
    pub initial_stream_window_size: Option<u32>,
    pub initial_connection_window_size: Option<u32>,
}

impl Default for H2Options {
    fn default() -> Self {
        H2Options {
            max_concurrent_streams: 1024,
            keepalive: None,
            initial_stream_window_size: None,
            initial_connection_window_size: None,
        }
    }
}

/// An active health check, Envoy's defaults for what is unset.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    pub timeout: Duration,
    pub interval: Duration,
    /// `interval_jitter` (a random extra up to this) and `interval_jitter_percent`
    /// (up to this percent of the interval), added together.
    pub interval_jitter: Duration,
    pub interval_jitter_percent: u32,
    pub initial_jitter: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    /// While the cluster has carried no traffic (Envoy's default 60 s).
    pub no_traffic_interval: Duration,
    /// Healthy hosts of a cluster with no traffic (`no_traffic_interval` when unset).
    pub no_traffic_healthy_interval: Option<Duration>,
    /// For a host marked unhealthy (`interval` when unset).
    pub unhealthy_interval: Option<Duration>,
    /// Right after a host turned unhealthy / healthy (the next interval's when unset).
    pub unhealthy_edge_interval: Option<Duration>,
    pub healthy_edge_interval: Option<Duration>,
    pub kind: HealthCheckKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HealthCheckKind {
    Http {
        /// `host`, else the cluster's name.
        host: String,
        path: String,
        /// Half-open ranges; `[200, 201)` when unset.
        expected_statuses: Vec<(u16, u16)>,
        request_headers_to_add: Vec<(String, String)>,
        request_headers_to_remove: Vec<String>,
        http2: bool,
    },
    Tcp {
        send: Vec<u8>,
        /// Each block must be found in the response, in order, not necessarily
        /// adjacent.
        receive: Vec<Vec<u8>>,
    },
    Grpc {
        service_name: String,
        /// `authority`, else the cluster's name.
        authority: String,
    },
}

/// `outlier_detection`, with Envoy's defaults for what is unset. Percentages are whole
/// numbers from 0 to 100.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    pub consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub consecutive_local_origin_failure: u32,
    pub split_external_local_origin_errors: bool,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_time_jitter: Duration,
    pub max_ejection_percent: u32,
    pub enforcing_consecutive_5xx: u32,
    pub enforcing_consecutive_gateway_failure: u32,
    pub enforcing_consecutive_local_origin_failure: u32,
    pub enforcing_success_rate: u32,
    pub enforcing_local_origin_success_rate: u32,
    pub success_rate_minimum_hosts: u32,
    pub success_rate_request_volume: u32,
    /// Thousandths of a standard deviation (Envoy's 1900: 1.9 σ).
    pub success_rate_stdev_factor: u32,
    pub failure_percentage_threshold: u32,
    pub enforcing_failure_percentage: u32,
    pub enforcing_failure_percentage_local_origin: u32,
    pub failure_percentage_minimum_hosts: u32,
    pub failure_percentage_request_volume: u32,
    /// A passing active health check lets an ejected host back (Envoy's default).
    pub successful_active_health_check_uneject_host: bool,
}

impl Default for OutlierConfig {
    /// Envoy's defaults.
    fn default() -> Self {
        OutlierConfig {
            consecutive_5xx: 5,
            consecutive_gateway_failure: 5,
            consecutive_local_origin_failure: 5,
            split_external_local_origin_errors: false,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_time_jitter: Duration::ZERO,
            max_ejection_percent: 10,
            enforcing_consecutive_5xx: 100,
            enforcing_consecutive_gateway_failure: 0,
            enforcing_consecutive_local_origin_failure: 100,
            enforcing_success_rate: 100,
            enforcing_local_origin_success_rate: 100,
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100,
            success_rate_stdev_factor: 1900,
            failure_percentage_threshold: 85,
            enforcing_failure_percentage: 0,
            enforcing_failure_percentage_local_origin: 0,
            failure_percentage_minimum_hosts: 5,
            failure_percentage_request_volume: 50,
            successful_active_health_check_uneject_host: true,
        }
    }
}

/// The load balancer: its policy and the settings every policy shares.
#[derive(Debug, Clone, PartialEq)]
pub struct LbConfig {
    pub policy: LbPolicy,
    /// `common_lb_config.healthy_panic_threshold` in percent (Envoy's default 50): below
    /// it a priority balances over all its hosts, healthy or not.
    pub panic_threshold: f64,
    /// `common_lb_config.locality_weighted_lb_config`: pick a locality by its weight
    /// (scaled by its health) first, then a host in it.
    pub locality_weighted: bool,
    /// `consistent_hashing_lb_config.use_hostname_for_hashing`: hash hosts by hostname
    /// rather than `ip:port`.
    pub use_hostname_for_hashing: bool,
}

impl Default for LbConfig {
    fn default() -> Self {
        LbConfig {
            policy: LbPolicy::RoundRobin,
            panic_threshold: 50.0,
            locality_weighted: false,
            use_hostname_for_hashing: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LbPolicy {
    /// Weighted round robin (earliest deadline first when weights differ).
    RoundRobin,
    /// The least loaded of `choice_count` random hosts; weighted by
    /// `weight / (active + 1)^active_request_bias` when weights differ.
    LeastRequest {
        choice_count: u32,
        active_request_bias: f64,
        /// `selection_method: FULL_SCAN`: every host is compared.
        full_scan: bool,
    },
    Random,
    /// Consistent hashing on a ring of `minimum_ring_size`..`maximum_ring_size` entries.
    RingHash {
        min_size: u64,
        max_size: u64,
    },
    /// Consistent hashing with a Maglev table of `table_size` (prime) slots.
    Maglev {
        table_size: u64,
    },
    /// ORIGINAL_DST's CLUSTER_PROVIDED: the connection's own destination.
    ClusterProvided,
}

impl LbPolicy {
    /// A policy that balances by the request's hash (route `hash_policy`).
    pub fn hashes(self) -> bool {
        matches!(self, LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. })
    }
}

impl Default for ClusterConfig {
    /// A STATIC HTTP/1 cluster with Envoy's defaults, for tests to adjust.
    fn default() -> Self {
        ClusterConfig {
            name: String::new(),
            discovery: Discovery::Static,
            connect_timeout: Duration::from_secs(5),
            protocol: UpstreamProtocol::Http1,
            dns_refresh_rate: Duration::from_secs(5),
            dns_family: DnsFamily::Auto,
            endpoints: Vec::new(),
            original_dst_header: None,
            upstream_socket: UpstreamSocket::default(),
            transport: TransportSockets::default(),
            eds: None,
            alt_stat_name: None,
            breakers: Breakers::default(),
            added_via_api: false,
            max_requests_per_connection: None,
            buffer_limit: 1 << 20,
            idle_timeout: Some(Duration::from_secs(3600)),
            cleanup_interval: Duration::from_secs(5),
            lb: LbConfig::default(),
            overprovisioning_factor: 140,
            outlier: None,
            health_check: None,
            h2: H2Options::default(),
            max_connection_duration: None,
            keep_alpn: false,
            istio_marks: Default::default(),
            istio_service: None,
            metadata_exchange: None,
        }
    }
}

/// A cluster's circuit-breaker thresholds at both routing priorities.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Breakers {
    pub default: Limits,
    pub high: Limits,
}

/// One priority's thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    /// `retry_budget`: replaces `max_retries` when set.
    pub retry_budget: Option<RetryBudget>,
    /// `track_remaining`: publish `remaining_*` gauges.
    pub track_remaining: bool,
}

/// `retry_budget`: concurrent retries allowed as a share of the cluster's active and
/// pending requests, never fewer than `min_retry_concurrency`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// Percent (Envoy's default 20).
    pub budget_percent: f64,
    /// Envoy's default 3.
    pub min_retry_concurrency: u32,
}

impl Default for Limits {
    /// Envoy's defaults.
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget: None,
            track_remaining: false,
        }
    }
}

/// `eds_cluster_config`: the `ClusterLoadAssignment` name to subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdsConfig {
    /// `service_name`, else the cluster's name.
    pub service_name: String,
    /// `eds_config.initial_fetch_timeout` (Envoy's default 15 s; `None` when 0): the
    /// cluster stops warming without endpoints after this long.
    pub initial_fetch_timeout: Option<Duration>,
}

/// How upstream sockets are set up before they connect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamSocket {
    /// `upstream_bind_config.source_address` (Istio's inbound passthrough binds 127.0.0.6
    /// so its own iptables rules let the connection through), then the
    /// `extra_source_addresses`: the first of the destination's family is used.
    pub sources: Vec<std::net::IpAddr>,
    /// SO_MARK, from `upstream_bind_config.socket_options` or `--upstream-mark`.
    pub mark: Option<u32>,
    /// `upstream_connection_options.tcp_keepalive`: SO_KEEPALIVE with these settings.
    pub keepalive: Option<Keepalive>,
}

/// TCP keepalive probes; `None` fields keep the kernel's defaults, as in Envoy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keepalive {
    pub probes: Option<u32>,
    pub time: Option<u32>,
    pub interval: Option<u32>,
}

impl UpstreamSocket {
    /// The source address for a connection to `dst`: the first configured one of its
    /// family, else the first (which then fails to connect, as in Envoy).
    pub fn source_for(&self, dst: std::net::IpAddr) -> Option<std::net::IpAddr> {
        self.sources
            .iter()
            .find(|s| s.is_ipv4() == dst.is_ipv4())
            .or(self.sources.first())
            .copied()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointConfig {
    /// An IP literal for STATIC clusters, a DNS name for the DNS types.
    pub host: String,
    pub port: u16,
    /// `hostname`, for `auto_host_rewrite` (DNS endpoints default to their name).
    pub hostname: Option<String>,
    /// A Unix socket (`pipe.path`) instead of `host:port` (STATIC clusters).
    pub pipe: Option<std::path::PathBuf>,
    /// Where it sits for balancing: weight, priority, locality and EDS health.
    pub attrs: EndpointAttrs,
}

/// What the balancer knows of an endpoint from its assignment (a DNS cluster's hosts
/// inherit their endpoint's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointAttrs {
    /// `load_balancing_weight` (1 when unset).
    pub weight: u32,
    /// The `LocalityLbEndpoints`' `priority` (0 is the highest).
    pub priority: u32,
    pub locality: Locality,
    /// The locality's `load_balancing_weight` (0 when unset: the locality gets no
    /// traffic under locality-weighted balancing, as in Envoy).
    pub locality_weight: u32,
    /// `health_status` as EDS (or the load assignment) gave it.
    pub health: EdsHealth,
    /// `metadata.filter_metadata["envoy.lb"].canary` (`omit_canary_hosts`, `/clusters`).
    pub canary: bool,
    /// The endpoint's `metadata.filter_metadata["envoy.lb"]` (`omit_host_metadata`);
    /// `None` when it has none.
    pub lb_metadata: Option<Arc<LbMetadata>>,
    /// The endpoint's `metadata.filter_metadata["envoy.transport_socket_match"]`, which
    /// picks its transport socket (Istio's `tlsMode: istio`).
    pub socket_metadata: Option<Arc<LbMetadata>>,
    /// The endpoint's `metadata.filter_metadata["istio"].workload` (istiod's
    /// `name;namespace;canonical service;revision;cluster`), Istio's stats' fallback
    /// for a peer that sent no metadata.
    pub istio_workload: Option<Arc<crate::istio::peer::Peer>>,
}

/// An endpoint's `envoy.lb` metadata: key → value, numbers as JSON numbers (protobuf's
/// doubles), so values compare as Envoy's `ValueUtil::equal` does.
pub type LbMetadata = std::collections::BTreeMap<String, serde_json::Value>;

impl Default for EndpointAttrs {
    fn default() -> Self {
        EndpointAttrs {
            weight: 1,
            priority: 0,
            locality: Locality::default(),
            locality_weight: 0,
            health: EdsHealth::Healthy,
            canary: false,
            lb_metadata: None,
            socket_metadata: None,
            istio_workload: None,
        }
    }
}

/// `envoy.config.core.v3.Locality`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

/// An endpoint's `health_status`, as Envoy buckets it: UNKNOWN and HEALTHY route;
/// UNHEALTHY and TIMEOUT do not (except in panic); DEGRADED takes traffic only when too
/// few hosts are healthy; DRAINING hosts are excluded (never picked, not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EdsHealth {
    #[default]
    Healthy,
    Unhealthy,
    Degraded,
    Draining,
}
