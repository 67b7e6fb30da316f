//! Compiles a checked Envoy bootstrap into the runtime [`Config`]. Errors name the
//! field path, as `static_resources.clusters[1].load_assignment: …`.
use std::{collections::HashSet, net::SocketAddr, sync::Arc, time::Duration};

use envoy_types::pb::envoy::{
    config::{
        bootstrap::v3::Bootstrap,
        cluster::v3::{Cluster, cluster},
        core::v3::{Address, address, socket_address},
        endpoint::v3::lb_endpoint,
        listener::v3::{Listener, filter, listener_filter},
    },
    extensions::{
        filters::network::{
            http_connection_manager::v3::{
                HttpConnectionManager, http_connection_manager, http_filter,
            },
            tcp_proxy::v3::{TcpProxy, tcp_proxy},
        },
        upstreams::http::v3::{HttpProtocolOptions, http_protocol_options},
    },
};
use envoy_types::pb::google::protobuf;

use super::{model::*, proto};

const TCP_PROXY: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const CONNECTION_LIMIT: &str =
    "envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit";
const HCM: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER: &str = "envoy.extensions.filters.http.router.v3.Router";
const ORIGINAL_DST: &str = "envoy.extensions.filters.listener.original_dst.v3.OriginalDst";
const TLS_INSPECTOR: &str = "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const HTTP_INSPECTOR: &str = "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector";
const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

type Result<T> = std::result::Result<T, String>;

pub fn compile(bootstrap: &Bootstrap) -> Result<Config> {
    let node = bootstrap
        .node
        .as_ref()
        .map(|n| NodeInfo {
            id: n.id.clone(),
            cluster: n.cluster.clone(),
            proto: n.clone(),
        })
        .unwrap_or_default();
    let admin = match bootstrap.admin.as_ref().and_then(|a| a.address.as_ref()) {
        Some(a) => Some(socket_addr(a, "admin.address")?),
        None => None,
    };
    let mut config = Config {
        node,
        admin,
        server: super::server::compile(bootstrap)?,
        ..Default::default()
    };
    let static_clusters: HashSet<&str> = bootstrap
        .static_resources
        .iter()
        .flat_map(|r| r.clusters.iter().map(|c| c.name.as_str()))
        .collect();
    config.stat_sinks = super::stat_sinks::compile(bootstrap, &static_clusters)?;
    // Deprecated in Envoy's API, still how Istio's bootstrap configures Zipkin.
    #[allow(deprecated)]
    if let Some(http) = bootstrap.tracing.as_ref().and_then(|t| t.http.as_ref()) {
        config.tracing = Some(super::tracing::provider(http, "tracing.http")?);
    }
    if let Some(d) = &bootstrap.dynamic_resources {
        let node = bootstrap.node.as_ref();
        if (d.lds_config.is_some() || d.cds_config.is_some())
            && node.is_none_or(|n| n.id.is_empty() || n.cluster.is_empty())
        {
            return Err(
                "node: id and cluster are required with dynamic_resources (as in Envoy)".into(),
            );
        }
        config.dynamic = Some(dynamic(d, bootstrap.node.clone().unwrap_or_default())?);
    }
    let ads_cluster = config
        .dynamic
        .as_ref()
        .and_then(|d| d.ads.as_ref())
        .map(|a| a.cluster.clone());
    let Some(res) = bootstrap.static_resources.as_ref() else {
        if let Some(c) = ads_cluster {
            return Err(format!(
                "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name: \
                 unknown cluster '{c}' (it must be a static cluster)"
            ));
        }
        return Ok(config);
    };

    let mut names = HashSet::new();
    for (i, c) in res.clusters.iter().enumerate() {
        let path = format!("static_resources.clusters[{i}]");
        let compiled = compile_cluster(c, &path)?;
        if !names.insert(compiled.name.clone()) {
            return Err(format!(
                "{path}.name: duplicate cluster '{}'",
                compiled.name
            ));
        }
        config.clusters.push(compiled);
    }
    if let Some(c) = &ads_cluster
        && !names.contains(c)
    {
        return Err(format!(
            "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name: \
             unknown cluster '{c}' (it must be a static cluster)"
        ));
    }

    let mut listener_names = HashSet::new();
    let mut addresses = HashSet::new();
    for (i, l) in res.listeners.iter().enumerate() {
        let path = format!("static_resources.listeners[{i}]");
        let compiled = listener(l, &path, &names)?;
        if !listener_names.insert(compiled.name.clone()) {
            return Err(format!(
                "{path}.name: duplicate listener '{}'",
                compiled.name
            ));
        }
        // Port 0 asks the kernel for a port of its own: several listeners may, as in
        // Envoy.
        for a in compiled.addresses().filter(|a| a.port() != 0) {
            if !addresses.insert(a) {
                return Err(format!(
                    "{path}.address: {a} is already used by another listener"
                ));
            }
        }
        let has_ads = config.dynamic.as_ref().is_some_and(|d| d.ads.is_some());
        if !has_ads && let Some(j) = compiled.filter_chains.iter().position(uses_rds) {
            return Err(format!(
                "{path}.filter_chains[{j}]: RDS from ads needs dynamic_resources.ads_config"
            ));
        }
        config.listeners.push(compiled);
    }
    if config.dynamic.as_ref().is_none_or(|d| d.ads.is_none())
        && let Some(i) = config.clusters.iter().position(|c| c.eds.is_some())
    {
        return Err(format!(
            "static_resources.clusters[{i}].eds_cluster_config: EDS from ads needs \
             dynamic_resources.ads_config"
        ));
    }
    Ok(config)
}

/// `dynamic_resources`: ADS over gRPC (state of the world or delta) and where LDS and
/// CDS come from.
fn dynamic(
    d: &envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::DynamicResources,
    node: envoy_types::pb::envoy::config::core::v3::Node,
) -> Result<DynamicConfig> {
    use envoy_types::pb::envoy::config::core::v3::{
        api_config_source::ApiType, grpc_service::TargetSpecifier,
    };
    let path = "dynamic_resources";
    let ads = match &d.ads_config {
        None => None,
        Some(a) => {
            let apath = format!("{path}.ads_config");
            let delta = match ApiType::try_from(a.api_type) {
                Ok(ApiType::Grpc) => false,
                Ok(ApiType::DeltaGrpc) => true,
                Ok(other) => {
                    return Err(format!(
                        "{apath}.api_type: {} is not supported (GRPC or DELTA_GRPC)",
                        other.as_str_name()
                    ));
                }
                Err(_) => return Err(format!("{apath}.api_type: unknown value {}", a.api_type)),
            };
            if a.transport_api_version == V2 {
                return Err(format!(
                    "{apath}.transport_api_version: V2 is not supported (V3)"
                ));
            }
            let cluster = match a.grpc_services.as_slice() {
                [g] if g.timeout.is_some() || !g.initial_metadata.is_empty() => {
                    return Err(format!(
                        "{apath}.grpc_services[0]: timeout and initial_metadata are not \
                         supported for the xDS stream"
                    ));
                }
                [g] => match &g.target_specifier {
                    Some(TargetSpecifier::EnvoyGrpc(e)) if !e.authority.is_empty() => {
                        return Err(format!(
                            "{apath}.grpc_services[0].envoy_grpc.authority: not supported \
                             for the xDS stream"
                        ));
                    }
                    Some(TargetSpecifier::EnvoyGrpc(e)) if !e.cluster_name.is_empty() => {
                        e.cluster_name.clone()
                    }
                    _ => {
                        return Err(format!(
                            "{apath}.grpc_services[0]: an envoy_grpc with a cluster_name is \
                             required (google_grpc is not supported)"
                        ));
                    }
                },
                _ => {
                    return Err(format!(
                        "{apath}.grpc_services: exactly one gRPC service is required"
                    ));
                }
            };
            Some(AdsConfig {
                delta,
                cluster,
                node_on_first_message_only: a.set_node_on_first_message_only,
            })
        }
    };
    let source = |cs: &Option<envoy_types::pb::envoy::config::core::v3::ConfigSource>,
                  name: &str|
     -> Result<Option<ResourceSource>> {
        let Some(cs) = cs else { return Ok(None) };
        let spath = format!("{path}.{name}");
        let s = config_source(cs, &spath)?;
        if matches!(s, ResourceSource::Ads { .. }) && ads.is_none() {
            return Err(format!("{spath}.ads: needs dynamic_resources.ads_config"));
        }
        Ok(Some(s))
    };
    Ok(DynamicConfig {
        lds: source(&d.lds_config, "lds_config")?,
        cds: source(&d.cds_config, "cds_config")?,
        ads,
        node,
    })
}

/// A `ConfigSource`: `ads: {}` or `path_config_source`.
fn config_source(
    cs: &envoy_types::pb::envoy::config::core::v3::ConfigSource,
    path: &str,
) -> Result<ResourceSource> {
    use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
    if cs.resource_api_version == V2 {
        return Err(format!(
            "{path}.resource_api_version: V2 is not supported (V3)"
        ));
    }
    let initial_fetch_timeout = match &cs.initial_fetch_timeout {
        None => Some(Duration::from_secs(15)),
        Some(d) => Some(duration(d)).filter(|d| !d.is_zero()),
    };
    match &cs.config_source_specifier {
        Some(ConfigSourceSpecifier::Ads(_)) => Ok(ResourceSource::Ads {
            initial_fetch_timeout,
        }),
        Some(ConfigSourceSpecifier::PathConfigSource(p)) if !p.path.is_empty() => {
            Ok(ResourceSource::Path(p.path.clone().into()))
        }
        Some(ConfigSourceSpecifier::PathConfigSource(_)) => {
            Err(format!("{path}.path_config_source.path: required"))
        }
        _ => Err(format!(
            "{path}: only ads and path_config_source are supported"
        )),
    }
}

pub(super) fn socket_addr(a: &Address, path: &str) -> Result<SocketAddr> {
    let Some(address::Address::SocketAddress(sa)) = &a.address else {
        return Err(format!("{path}: a socket_address is required"));
    };
    let port = match sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => p,
        _ => 0,
    };
    let port = u16::try_from(port)
        .map_err(|_| format!("{path}.socket_address.port_value: {port} is out of range"))?;
    let ip = sa.address.parse().map_err(|_| {
        format!(
            "{path}.socket_address.address: '{}' is not an IP address",
            sa.address
        )
    })?;
    Ok(SocketAddr::new(ip, port))
}

pub(super) fn duration(d: &protobuf::Duration) -> Duration {
    Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
}

/// Compiles one listener; an inline `route_config` checks its clusters against `clusters`.
pub fn listener(l: &Listener, path: &str, clusters: &HashSet<String>) -> Result<ListenerConfig> {
    let addr = l
        .address
        .as_ref()
        .ok_or_else(|| format!("{path}.address: required"))?;
    let address = socket_addr(addr, &format!("{path}.address"))?;
    let mut ipv4_compat = Vec::new();
    if compat(addr) {
        ipv4_compat.push(address);
    }
    let mut additional_addresses = Vec::new();
    for (i, a) in l.additional_addresses.iter().enumerate() {
        let apath = format!("{path}.additional_addresses[{i}].address");
        let a = a
            .address
            .as_ref()
            .ok_or_else(|| format!("{apath}: required"))?;
        let extra = socket_addr(a, &apath)?;
        if compat(a) {
            ipv4_compat.push(extra);
        }
        additional_addresses.push(extra);
    }
    let listener_filters = listener_filters(l, path)?;
    let mut filter_chains = Vec::new();
    let unified = l.filter_chain_matcher.is_some();
    for (i, chain) in l.filter_chains.iter().enumerate() {
        let cpath = format!("{path}.filter_chains[{i}]");
        let compiled = filter_chain(chain, &cpath, clusters)?;
        if unified {
            // Chains are chosen by name; their `filter_chain_match` is ignored.
            if compiled.name.is_empty() {
                return Err(format!(
                    "{cpath}.name: \"name\" field is required when using a listener matcher"
                ));
            }
            if filter_chains
                .iter()
                .any(|c: &FilterChain| c.name == compiled.name)
            {
                return Err(format!(
                    "{cpath}.name: \"name\" field is duplicated with value '{}'",
                    compiled.name
                ));
            }
        } else if let Some(j) = filter_chains
            .iter()
            .position(|c: &FilterChain| c.matcher == compiled.matcher)
        {
            return Err(format!(
                "{cpath}.filter_chain_match: the same as filter_chains[{j}]'s; Envoy rejects \
                 listeners with two chains matching the same connections"
            ));
        }
        filter_chains.push(compiled);
    }
    let mut default_chain = match &l.default_filter_chain {
        Some(c) => {
            let dpath = format!("{path}.default_filter_chain");
            // Envoy ignores a default chain's `filter_chain_match` (istiod sends an
            // empty one).
            Some(filter_chain(c, &dpath, clusters)?)
        }
        None => None,
    };
    let chain_matcher = l
        .filter_chain_matcher
        .as_ref()
        .map(|m| {
            let names: Vec<&str> = filter_chains.iter().map(|c| c.name.as_str()).collect();
            super::chain_matcher::compile(m, &names, &format!("{path}.filter_chain_matcher"))
                .map(Arc::new)
        })
        .transpose()?;
    if filter_chains.is_empty() && default_chain.is_none() {
        return Err(format!(
            "{path}.filter_chains: at least one filter chain (or a default_filter_chain) is required"
        ));
    }
    if let Some(limit) = &l.per_connection_buffer_limit_bytes {
        for chain in filter_chains.iter_mut().chain(default_chain.as_mut()) {
            if let NetworkFilter::Http(h) = &mut chain.filter {
                h.buffer_limit = limit.value as usize;
            }
        }
    }
    let stat_name = if l.stat_prefix.is_empty() {
        format!("{}_{}", address.ip(), address.port())
    } else {
        l.stat_prefix.clone()
    };
    let name = if l.name.is_empty() {
        stat_name.clone()
    } else {
        l.name.clone()
    };
    Ok(ListenerConfig {
        name,
        address,
        additional_addresses,
        ipv4_compat,
        bind_to_port: l.bind_to_port.as_ref().is_none_or(|b| b.value),
        use_original_dst: l.use_original_dst.as_ref().is_some_and(|b| b.value),
        reuse_port: l.enable_reuse_port.as_ref().is_none_or(|b| b.value),
        inbound: l.traffic_direction
            == envoy_types::pb::envoy::config::core::v3::TrafficDirection::Inbound as i32,
        ignore_global_conn_limit: l.ignore_global_conn_limit || l.bypass_overload_manager,
        listener_filters,
        stat_name,
        filter_chains,
        default_chain,
        chain_matcher,
    })
}

fn uses_rds(c: &FilterChain) -> bool {
    matches!(&c.filter, NetworkFilter::Http(h) if matches!(h.routes, RouteSource::Rds { .. }))
}

fn compat(a: &Address) -> bool {
    matches!(&a.address, Some(address::Address::SocketAddress(sa)) if sa.ipv4_compat)
}

fn listener_filters(l: &Listener, path: &str) -> Result<ListenerFilters> {
    let mut filters = ListenerFilters {
        timeout: match &l.listener_filters_timeout {
            None => Some(Duration::from_secs(15)),
            Some(d) => Some(duration(d)).filter(|d| !d.is_zero()),
        },
        continue_on_timeout: l.continue_on_listener_filters_timeout,
        // Envoy adds the original_dst listener filter itself when `use_original_dst` is
        // set (istiod's virtualOutbound lists no listener filter and relies on this).
        original_dst: l.use_original_dst.as_ref().is_some_and(|b| b.value),
        ..Default::default()
    };
    for (i, f) in l.listener_filters.iter().enumerate() {
        let fpath = format!("{path}.listener_filters[{i}]");
        let Some(listener_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            return Err(format!("{fpath} ({}): typed_config is required", f.name));
        };
        let enabled = || -> Result<FilterEnabled> {
            Ok(FilterEnabled {
                disabled: f
                    .filter_disabled
                    .as_ref()
                    .map(|p| predicate(p, &format!("{fpath}.filter_disabled")))
                    .transpose()?,
            })
        };
        let slot = match proto::type_name(&any.type_url) {
            ORIGINAL_DST => {
                if f.filter_disabled.is_some() {
                    return Err(format!(
                        "{fpath}.filter_disabled: not supported on original_dst"
                    ));
                }
                filters.original_dst = true;
                continue;
            }
            TLS_INSPECTOR => &mut filters.tls_inspector,
            HTTP_INSPECTOR => &mut filters.http_inspector,
            _ => return Err(format!("{fpath} ({}): not supported", f.name)),
        };
        if slot.is_some() {
            return Err(format!("{fpath} ({}): given twice", f.name));
        }
        *slot = Some(enabled()?);
    }
    Ok(filters)
}

fn predicate(
    p: &envoy_types::pb::envoy::config::listener::v3::ListenerFilterChainMatchPredicate,
    path: &str,
) -> Result<ConnPredicate> {
    use envoy_types::pb::envoy::config::listener::v3::listener_filter_chain_match_predicate::Rule;
    let set = |rules: &[_], name: &str| -> Result<Vec<ConnPredicate>> {
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| predicate(r, &format!("{path}.{name}.rules[{i}]")))
            .collect()
    };
    Ok(match &p.rule {
        Some(Rule::OrMatch(m)) => ConnPredicate::Or(set(&m.rules, "or_match")?),
        Some(Rule::AndMatch(m)) => ConnPredicate::And(set(&m.rules, "and_match")?),
        Some(Rule::NotMatch(n)) => {
            ConnPredicate::Not(Box::new(predicate(n, &format!("{path}.not_match"))?))
        }
        Some(Rule::AnyMatch(true)) => ConnPredicate::Any,
        Some(Rule::DestinationPortRange(r)) => {
            if r.start < 0 || r.end > 65536 || r.start >= r.end {
                return Err(format!(
                    "{path}.destination_port_range: [{}, {}) is not a port range",
                    r.start, r.end
                ));
            }
            ConnPredicate::DestinationPort(r.start as u32, r.end as u32)
        }
        _ => return Err(format!("{path}: a rule is required")),
    })
}

fn filter_chain(
    chain: &envoy_types::pb::envoy::config::listener::v3::FilterChain,
    path: &str,
    clusters: &HashSet<String>,
) -> Result<FilterChain> {
    let matcher = match &chain.filter_chain_match {
        Some(m) => chain_match(m, &format!("{path}.filter_chain_match"))?,
        None => ChainMatch::default(),
    };
    let Some((last, read)) = chain.filters.split_last() else {
        return Err(format!("{path}.filters: a terminal filter is required"));
    };
    let read_filters = read
        .iter()
        .enumerate()
        .map(|(i, f)| read_filter(f, &format!("{path}.filters[{i}]")))
        .collect::<Result<_>>()?;
    let filter = network_filter(
        last,
        &format!("{path}.filters[{}]", chain.filters.len() - 1),
        clusters,
    )?;
    let tls = match &chain.transport_socket {
        Some(ts) => super::tls::transport_socket(ts, &format!("{path}.transport_socket"), true)?
            .map(Arc::new),
        None => None,
    };
    Ok(FilterChain {
        name: chain.name.clone(),
        matcher,
        read_filters,
        filter,
        tls,
        handshake_timeout: chain
            .transport_socket_connect_timeout
            .as_ref()
            .map(duration)
            .filter(|d| !d.is_zero()),
    })
}

/// A network filter before the terminal one. A terminal filter here is an error, as in
/// Envoy (nothing after it would run).
fn read_filter(
    f: &envoy_types::pb::envoy::config::listener::v3::Filter,
    path: &str,
) -> Result<ReadFilter> {
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        return Err(format!("{path} ({}): typed_config is required", f.name));
    };
    match proto::type_name(&any.type_url) {
        super::rbac::NETWORK_RBAC => {
            let (config, stat_prefix) = super::rbac::network(any, &format!("{path}.typed_config"))?;
            Ok(ReadFilter::Rbac {
                config: Arc::new(config),
                stat_prefix,
            })
        }
        crate::istio::exchange::TYPE => Ok(ReadFilter::MetadataExchange(
            crate::istio::exchange::compile(
                &proto::any_to_json(any).map_err(|e| format!("{path}: {e}"))?,
                &format!("{path}.typed_config"),
            )?,
        )),
        crate::istio::stats::TYPE => Ok(ReadFilter::IstioStats(crate::istio::stats::compile(
            &proto::any_to_json(any).map_err(|e| format!("{path}: {e}"))?,
            &format!("{path}.typed_config"),
        )?)),
        CONNECTION_LIMIT => {
            use envoy_types::pb::envoy::extensions::filters::network::connection_limit::v3::ConnectionLimit;
            let tpath = format!("{path}.typed_config");
            let c: ConnectionLimit = proto::unpack(any).map_err(|e| format!("{tpath}: {e}"))?;
            if c.stat_prefix.is_empty() {
                return Err(format!("{tpath}.stat_prefix: required"));
            }
            let max = match c.max_connections.map(|v| v.value) {
                Some(n) if n >= 1 => n,
                Some(_) => return Err(format!("{tpath}.max_connections: must be at least 1")),
                None => return Err(format!("{tpath}.max_connections: required")),
            };
            Ok(ReadFilter::ConnectionLimit {
                stat_prefix: c.stat_prefix,
                max,
                delay: c.delay.as_ref().map(duration).filter(|d| !d.is_zero()),
            })
        }
        TCP_PROXY | HCM => Err(format!(
            "{path} ({}): a terminal filter must be the chain's last",
            f.name
        )),
        _ => Err(format!("{path} ({}): not supported", f.name)),
    }
}

fn chain_match(
    m: &envoy_types::pb::envoy::config::listener::v3::FilterChainMatch,
    path: &str,
) -> Result<ChainMatch> {
    use envoy_types::pb::envoy::config::listener::v3::filter_chain_match::ConnectionSourceType;
    let destination_port = match &m.destination_port {
        Some(p) if (1..=65535).contains(&p.value) => Some(p.value as u16),
        Some(p) => {
            return Err(format!(
                "{path}.destination_port: {} is not a port from 1 to 65535",
                p.value
            ));
        }
        None => None,
    };
    let ranges = |v: &[envoy_types::pb::envoy::config::core::v3::CidrRange], name: &str| {
        let mut out: Vec<Cidr> = v
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let rpath = format!("{path}.{name}[{i}]");
                let ip = r.address_prefix.parse().map_err(|_| {
                    format!(
                        "{rpath}.address_prefix: '{}' is not an IP address",
                        r.address_prefix
                    )
                })?;
                Cidr::new(ip, r.prefix_len.as_ref().map_or(0, |l| l.value))
                    .map_err(|e| format!("{rpath}.prefix_len: {e}"))
            })
            .collect::<Result<_>>()?;
        out.sort();
        out.dedup();
        Ok::<_, String>(out)
    };
    let mut server_names = Vec::new();
    for (i, n) in m.server_names.iter().enumerate() {
        let n = n.to_ascii_lowercase();
        if n.is_empty()
            || (n.contains('*') && !(n.starts_with("*.") && n.matches('*').count() == 1))
        {
            return Err(format!(
                "{path}.server_names[{i}]: '{n}' is neither a name nor a '*.' wildcard"
            ));
        }
        server_names.push(n);
    }
    server_names.sort();
    server_names.dedup();
    let mut application_protocols = m.application_protocols.clone();
    application_protocols.sort();
    application_protocols.dedup();
    let mut source_ports = Vec::new();
    for (i, p) in m.source_ports.iter().enumerate() {
        if !(1..=65535).contains(p) {
            return Err(format!(
                "{path}.source_ports[{i}]: {p} is not a port from 1 to 65535"
            ));
        }
        source_ports.push(*p as u16);
    }
    source_ports.sort();
    source_ports.dedup();
    if !m.address_suffix.is_empty() || m.suffix_len.is_some() {
        return Err(format!(
            "{path}.address_suffix: not supported (Envoy does not implement it either)"
        ));
    }
    Ok(ChainMatch {
        destination_port,
        prefix_ranges: ranges(&m.prefix_ranges, "prefix_ranges")?,
        server_names,
        transport_protocol: Some(m.transport_protocol.clone()).filter(|t| !t.is_empty()),
        application_protocols,
        direct_source_prefix_ranges: ranges(
            &m.direct_source_prefix_ranges,
            "direct_source_prefix_ranges",
        )?,
        source_type: match ConnectionSourceType::try_from(m.source_type) {
            Ok(ConnectionSourceType::Any) => SourceType::Any,
            Ok(ConnectionSourceType::SameIpOrLoopback) => SourceType::Local,
            Ok(ConnectionSourceType::External) => SourceType::External,
            Err(_) => {
                return Err(format!(
                    "{path}.source_type: unknown value {}",
                    m.source_type
                ));
            }
        },
        source_prefix_ranges: ranges(&m.source_prefix_ranges, "source_prefix_ranges")?,
        source_ports,
    })
}

fn network_filter(
    f: &envoy_types::pb::envoy::config::listener::v3::Filter,
    path: &str,
    clusters: &HashSet<String>,
) -> Result<NetworkFilter> {
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        return Err(format!("{path} ({}): typed_config is required", f.name));
    };
    match proto::type_name(&any.type_url) {
        TCP_PROXY => {
            let tp: TcpProxy = proto::unpack(any).map_err(|e| format!("{path}: {e}"))?;
            let cluster = match tp.cluster_specifier {
                Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => c,
                _ => return Err(format!("{path}.typed_config.cluster: required")),
            };
            if tp.stat_prefix.is_empty() {
                return Err(format!("{path}.typed_config.stat_prefix: required"));
            }
            let access_logs =
                access_logs(&tp.access_log, &format!("{path}.typed_config.access_log"))?;
            let mut hash_source_ip = false;
            for (i, h) in tp.hash_policy.iter().enumerate() {
                use envoy_types::pb::envoy::r#type::v3::hash_policy::PolicySpecifier;
                match &h.policy_specifier {
                    Some(PolicySpecifier::SourceIp(_)) => hash_source_ip = true,
                    // pilotfish keeps no filter state: never a hash, as in Envoy when the
                    // key is absent.
                    Some(PolicySpecifier::FilterState(_)) => {}
                    None => {
                        return Err(format!(
                            "{path}.typed_config.hash_policy[{i}]: source_ip or filter_state is required"
                        ));
                    }
                }
            }
            let max_connect_attempts = match &tp.max_connect_attempts {
                Some(v) if v.value == 0 => {
                    return Err(format!(
                        "{path}.typed_config.max_connect_attempts: must be at least 1"
                    ));
                }
                Some(v) => v.value,
                None => 1,
            };
            Ok(NetworkFilter::TcpProxy(TcpProxyConfig {
                hash_source_ip,
                max_connect_attempts,
                stat_prefix: tp.stat_prefix,
                cluster,
                access_logs,
                idle_timeout: match &tp.idle_timeout {
                    None => Some(Duration::from_secs(3600)),
                    Some(d) => Some(duration(d)).filter(|d| !d.is_zero()),
                },
                max_downstream_connection_duration: tp
                    .max_downstream_connection_duration
                    .as_ref()
                    .map(duration)
                    .filter(|d| !d.is_zero()),
            }))
        }
        HCM => {
            let hcm: HttpConnectionManager =
                proto::unpack(any).map_err(|e| format!("{path}: {e}"))?;
            http(hcm, &format!("{path}.typed_config"), clusters)
                .map(|h| NetworkFilter::Http(Box::new(h)))
        }
        _ => Err(format!("{path} ({}): not supported", f.name)),
    }
}

fn http(hcm: HttpConnectionManager, path: &str, clusters: &HashSet<String>) -> Result<HttpConfig> {
    let client_cert = client_cert(&hcm, path)?;
    if hcm.stat_prefix.is_empty() {
        return Err(format!("{path}.stat_prefix: required"));
    }
    // The UUID request id is what pilotfish generates anyway; its two settings act on
    // tracing decisions.
    let mut request_id = None;
    if let Some(ext) = &hcm.request_id_extension {
        let name = ext
            .typed_config
            .as_ref()
            .map(|a| proto::type_name(&a.type_url))
            .unwrap_or("");
        if name != "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig" {
            return Err(format!(
                "{path}.request_id_extension.typed_config ({name}): not supported"
            ));
        }
        if let Some(any) = &ext.typed_config {
            request_id = Some(
                proto::unpack(any)
                    .map_err(|e| format!("{path}.request_id_extension.typed_config: {e}"))?,
            );
        }
    }
    let tracing = hcm
        .tracing
        .as_ref()
        .map(|t| super::tracing::hcm(t, request_id.as_ref(), &format!("{path}.tracing")))
        .transpose()?
        .map(std::sync::Arc::new);
    let codec = match hcm.codec_type() {
        http_connection_manager::CodecType::Auto => Codec::Auto,
        http_connection_manager::CodecType::Http1 => Codec::Http1,
        http_connection_manager::CodecType::Http2 => Codec::Http2,
        other => {
            return Err(format!(
                "{path}.codec_type: {} is not supported",
                other.as_str_name()
            ));
        }
    };
    let filters = http_filters(&hcm.http_filters, &format!("{path}.http_filters"))?;
    let access_logs = access_logs(&hcm.access_log, &format!("{path}.access_log"))?;
    let routes = match hcm.route_specifier {
        Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) => RouteSource::Inline(
            super::route_config::route_table(&rc, &format!("{path}.route_config"), clusters, true)?,
        ),
        Some(http_connection_manager::RouteSpecifier::Rds(rds)) => {
            let rpath = format!("{path}.rds");
            if rds.route_config_name.is_empty() {
                return Err(format!("{rpath}.route_config_name: required"));
            }
            let source = match &rds.config_source {
                Some(cs) => config_source(cs, &format!("{rpath}.config_source"))?,
                None => return Err(format!("{rpath}.config_source: required")),
            };
            if !matches!(source, ResourceSource::Ads { .. }) {
                return Err(format!(
                    "{rpath}.config_source: only ads is supported for RDS"
                ));
            }
            RouteSource::Rds {
                name: rds.route_config_name,
                initial_fetch_timeout: source.initial_fetch_timeout(),
            }
        }
        _ => {
            return Err(format!("{path}: route_config or rds is required"));
        }
    };
    // Envoy's defaults: a stream idle for 5 minutes ends, a connection without
    // requests for an hour closes; `0s` turns either off.
    let off_when_zero = |d: Duration| Some(d).filter(|d| !d.is_zero());
    let stream_idle_timeout = hcm
        .stream_idle_timeout
        .as_ref()
        .map_or(Some(Duration::from_secs(300)), |d| {
            off_when_zero(duration(d))
        });
    let common = hcm.common_http_protocol_options.as_ref();
    let max_requests_per_connection = common
        .and_then(|c| c.max_requests_per_connection.as_ref())
        .map(|v| v.value)
        .filter(|&m| m > 0);
    let idle_timeout = common
        .and_then(|c| c.idle_timeout.as_ref())
        .map_or(Some(Duration::from_secs(3600)), |d| {
            off_when_zero(duration(d))
        });
    let max_connection_duration = common
        .and_then(|c| c.max_connection_duration.as_ref())
        .and_then(|d| off_when_zero(duration(d)));
    let drain_timeout = hcm
        .drain_timeout
        .as_ref()
        .map_or(Duration::from_secs(5), duration);
    let max_stream_duration = common
        .and_then(|c| c.max_stream_duration.as_ref())
        .and_then(|d| off_when_zero(duration(d)));
    let request_timeout = hcm
        .request_timeout
        .as_ref()
        .and_then(|d| off_when_zero(duration(d)));
    let http1 = match &hcm.http_protocol_options {
        Some(o) => crate::http::request_checks::Http1Settings {
            accept_http_10: o.accept_http_10,
            default_host_for_http_10: match o.default_host_for_http_10.as_str() {
                "" => None,
                h => Some(http::HeaderValue::from_str(h).map_err(|_| {
                    format!(
                        "{path}.http_protocol_options.default_host_for_http_10: '{h}' is not a host"
                    )
                })?),
            },
        },
        None => Default::default(),
    };
    // Envoy's default 60 KiB, at most 8 MiB.
    let max_request_headers_kb = match hcm.max_request_headers_kb.as_ref().map(|v| v.value) {
        None => 60,
        Some(kb @ 1..=8192) => kb,
        Some(kb) => {
            return Err(format!(
                "{path}.max_request_headers_kb: {kb} is not in [1, 8192]"
            ));
        }
    };
    let request_headers_timeout = hcm
        .request_headers_timeout
        .as_ref()
        .and_then(|d| off_when_zero(duration(d)));
    let http2 = match &hcm.http2_protocol_options {
        Some(o) => h2_options(o, &format!("{path}.http2_protocol_options"))?,
        None => H2Options::default(),
    };
    // Escaped slashes are left as they are (what istiod sends).
    {
        use http_connection_manager::PathWithEscapedSlashesAction as A;
        match A::try_from(hcm.path_with_escaped_slashes_action) {
            Ok(A::ImplementationSpecificDefault | A::KeepUnchanged) => {}
            _ => {
                return Err(format!(
                    "{path}.path_with_escaped_slashes_action: only KEEP_UNCHANGED is supported"
                ));
            }
        }
    }
    Ok(HttpConfig {
        stat_prefix: hcm.stat_prefix,
        proxy_100_continue: hcm.proxy_100_continue,
        codec,
        generate_request_id: hcm.generate_request_id.as_ref().is_none_or(|b| b.value),
        access_logs,
        server_name: if hcm.server_name.is_empty() {
            "envoy".into()
        } else {
            hcm.server_name
        },
        routes,
        filters,
        upgrades: hcm
            .upgrade_configs
            .iter()
            .filter(|u| u.enabled.as_ref().is_none_or(|b| b.value))
            .map(|u| u.upgrade_type.to_ascii_lowercase())
            .collect(),
        normalize_path: hcm.normalize_path.as_ref().is_some_and(|b| b.value),
        merge_slashes: hcm.merge_slashes,
        client_cert,
        forwarded: ForwardedConfig {
            use_remote_address: hcm.use_remote_address.as_ref().is_some_and(|b| b.value),
            skip_xff_append: hcm.skip_xff_append,
            xff_num_trusted_hops: hcm.xff_num_trusted_hops,
            preserve_external_request_id: hcm.preserve_external_request_id,
            internal: match &hcm.internal_address_config {
                Some(c) => c
                    .cidr_ranges
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        super::rbac::cidr(
                            r,
                            &format!("{path}.internal_address_config.cidr_ranges[{i}]"),
                        )
                    })
                    .collect::<Result<_>>()?,
                None => Vec::new(),
            },
        },
        buffer_limit: 1 << 20,
        stream_idle_timeout,
        idle_timeout,
        max_connection_duration,
        drain_timeout,
        max_stream_duration,
        request_timeout,
        request_headers_timeout,
        max_requests_per_connection,
        http1,
        max_request_headers_kb,
        tracing,
        http2,
    })
}

/// The HTTP filter chain: `envoy.filters.http.cors` and `envoy.filters.http.fault` (at
/// most one each, in any order), then the router, last.
/// `forward_client_cert_details` and `set_current_client_cert_details`.
fn client_cert(
    hcm: &HttpConnectionManager,
    path: &str,
) -> Result<crate::http::client_cert::ClientCertConfig> {
    use crate::http::client_cert::{ClientCertConfig, Details, ForwardMode};
    use http_connection_manager::ForwardClientCertDetails as F;
    let mode = match F::try_from(hcm.forward_client_cert_details) {
        Ok(F::Sanitize) => ForwardMode::Sanitize,
        Ok(F::ForwardOnly) => ForwardMode::ForwardOnly,
        Ok(F::AppendForward) => ForwardMode::AppendForward,
        Ok(F::SanitizeSet) => ForwardMode::SanitizeSet,
        Ok(F::AlwaysForwardOnly) => ForwardMode::AlwaysForwardOnly,
        Err(_) => {
            return Err(format!(
                "{path}.forward_client_cert_details: unknown value {}",
                hcm.forward_client_cert_details
            ));
        }
    };
    let details = hcm
        .set_current_client_cert_details
        .as_ref()
        .map(|d| Details {
            subject: d.subject.as_ref().is_some_and(|b| b.value),
            cert: d.cert,
            chain: d.chain,
            dns: d.dns,
            uri: d.uri,
        })
        .unwrap_or_default();
    Ok(ClientCertConfig { mode, details })
}

fn http_filters(
    filters: &[envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter],
    path: &str,
) -> Result<Vec<HttpFilter>> {
    let type_of = |f: &envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter| match &f.config_type {
        Some(http_filter::ConfigType::TypedConfig(a)) => Some(proto::type_name(&a.type_url).to_owned()),
        _ => None,
    };
    match filters.last().map(type_of) {
        Some(Some(t)) if t == ROUTER => {}
        Some(_) => {
            return Err(format!(
                "{path}: the last filter must be envoy.filters.http.router"
            ));
        }
        None => return Err(format!("{path}: envoy.filters.http.router is required")),
    }
    let mut out: Vec<HttpFilter> = Vec::new();
    for (i, f) in filters[..filters.len() - 1].iter().enumerate() {
        let fpath = format!("{path}[{i}]");
        let filter = match (type_of(f).as_deref(), &f.config_type) {
            (Some(super::http_filters::FAULT), Some(http_filter::ConfigType::TypedConfig(any))) => {
                let cfg: envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault =
                    proto::unpack(any).map_err(|e| format!("{fpath}: {e}"))?;
                HttpFilter::Fault {
                    name: f.name.clone(),
                    config: super::http_filters::fault(&cfg, &format!("{fpath}.typed_config"))?,
                }
            }
            (Some(super::http_filters::CORS), _) => HttpFilter::Cors {
                name: f.name.clone(),
            },
            (
                Some(super::http_filters::GRPC_STATS),
                Some(http_filter::ConfigType::TypedConfig(any)),
            ) => HttpFilter::GrpcStats {
                name: f.name.clone(),
                config: super::http_filters::grpc_stats(any, &format!("{fpath}.typed_config"))?,
            },
            (Some(super::rbac::HTTP_RBAC), Some(http_filter::ConfigType::TypedConfig(any))) => {
                let r: envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac =
                    proto::unpack(any).map_err(|e| format!("{fpath}: {e}"))?;
                HttpFilter::Rbac {
                    name: f.name.clone(),
                    config: Arc::new(super::rbac::http(&r, &format!("{fpath}.typed_config"))?),
                }
            }
            (
                Some(super::http_filters::EXT_AUTHZ),
                Some(http_filter::ConfigType::TypedConfig(any)),
            ) => HttpFilter::ExtAuthz {
                name: f.name.clone(),
                config: Arc::new(super::http_filters::ext_authz(
                    any,
                    &format!("{fpath}.typed_config"),
                )?),
            },
            (
                Some(super::jwt_authn::JWT_AUTHN),
                Some(http_filter::ConfigType::TypedConfig(any)),
            ) => HttpFilter::JwtAuthn {
                name: f.name.clone(),
                config: Arc::new(super::jwt_authn::jwt_authn(
                    any,
                    &format!("{fpath}.typed_config"),
                )?),
            },
            (
                Some(super::http_filters::COMPRESSOR),
                Some(http_filter::ConfigType::TypedConfig(any)),
            ) => HttpFilter::Compressor {
                name: f.name.clone(),
                config: Arc::new(super::http_filters::compressor(
                    any,
                    &format!("{fpath}.typed_config"),
                )?),
            },
            (
                Some(crate::istio::peer_metadata::TYPE),
                Some(http_filter::ConfigType::TypedConfig(any)),
            ) => HttpFilter::IstioPeerMetadata {
                name: f.name.clone(),
                config: crate::istio::peer_metadata::compile(
                    &proto::any_to_json(any).map_err(|e| format!("{fpath}: {e}"))?,
                    &format!("{fpath}.typed_config"),
                )?,
            },
            (Some(crate::istio::stats::TYPE), Some(http_filter::ConfigType::TypedConfig(any))) => {
                HttpFilter::IstioStats {
                    name: f.name.clone(),
                    config: crate::istio::stats::compile(
                        &proto::any_to_json(any).map_err(|e| format!("{fpath}: {e}"))?,
                        &format!("{fpath}.typed_config"),
                    )?,
                }
            }
            (Some(crate::istio::alpn::TYPE), Some(http_filter::ConfigType::TypedConfig(any))) => {
                HttpFilter::IstioAlpn {
                    name: f.name.clone(),
                    config: crate::istio::alpn::compile(
                        &proto::any_to_json(any).map_err(|e| format!("{fpath}: {e}"))?,
                        &format!("{fpath}.typed_config"),
                    )?,
                }
            }
            _ => return Err(format!("{fpath} ({}): not supported", f.name)),
        };
        // Envoy chains any number of filters; pilotfish's filters act once each, except
        // the compressors (one per encoding) and RBAC (Istio's ALLOW, DENY and audit
        // policies come as separate filters).
        let several = matches!(
            filter,
            HttpFilter::Compressor { .. } | HttpFilter::Rbac { .. }
        );
        if !several
            && out
                .iter()
                .any(|o| std::mem::discriminant(o) == std::mem::discriminant(&filter))
        {
            return Err(format!(
                "{fpath} ({}): only one filter of this kind is supported",
                f.name
            ));
        }
        out.push(filter);
    }
    Ok(out)
}

// `http2_protocol_options` and `dns_refresh_rate` are deprecated in the API but Envoy
// still honours them, and so does pilotfish.
/// A cluster as CDS delivers it.
pub fn cluster(c: &Cluster, path: &str) -> Result<ClusterConfig> {
    let mut compiled = compile_cluster(c, path)?;
    compiled.added_via_api = true;
    Ok(compiled)
}

/// `circuit_breakers.thresholds` by priority, Envoy's defaults for what is unset.
fn breakers(
    cb: Option<&envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers>,
    path: &str,
) -> Result<Breakers> {
    let mut out = Breakers::default();
    let Some(cb) = cb else { return Ok(out) };
    let mut seen = [false; 2];
    for (i, t) in cb.thresholds.iter().enumerate() {
        let tpath = format!("{path}.thresholds[{i}]");
        let high = t.priority == 1;
        if std::mem::replace(&mut seen[usize::from(high)], true) {
            return Err(format!("{tpath}.priority: given twice"));
        }
        let l = if high {
            &mut out.high
        } else {
            &mut out.default
        };
        let set = |slot: &mut u32, v: &Option<protobuf::UInt32Value>| {
            if let Some(v) = v {
                *slot = v.value;
            }
        };
        set(&mut l.max_connections, &t.max_connections);
        set(&mut l.max_pending_requests, &t.max_pending_requests);
        set(&mut l.max_requests, &t.max_requests);
        set(&mut l.max_retries, &t.max_retries);
        l.track_remaining = t.track_remaining;
        if let Some(b) = &t.retry_budget {
            let percent = b.budget_percent.as_ref().map_or(20.0, |p| p.value);
            if !(0.0..=100.0).contains(&percent) {
                return Err(format!(
                    "{tpath}.retry_budget.budget_percent: {percent} is not within 0..100"
                ));
            }
            l.retry_budget = Some(crate::config::model::RetryBudget {
                budget_percent: percent,
                min_retry_concurrency: b.min_retry_concurrency.as_ref().map_or(3, |v| v.value),
            });
        }
    }
    Ok(out)
}

/// A cluster, compiled.
#[allow(deprecated)]
fn compile_cluster(c: &Cluster, path: &str) -> Result<ClusterConfig> {
    if c.name.is_empty() {
        return Err(format!("{path}.name: required"));
    }
    let discovery = match &c.cluster_discovery_type {
        None => Discovery::Static,
        Some(cluster::ClusterDiscoveryType::Type(t)) => {
            match cluster::DiscoveryType::try_from(*t) {
                Ok(cluster::DiscoveryType::Static) => Discovery::Static,
                Ok(cluster::DiscoveryType::StrictDns) => Discovery::StrictDns,
                Ok(cluster::DiscoveryType::LogicalDns) => Discovery::LogicalDns,
                Ok(cluster::DiscoveryType::OriginalDst) => Discovery::OriginalDst,
                Ok(cluster::DiscoveryType::Eds) => Discovery::Eds,
                Err(_) => return Err(format!("{path}.type: unknown value {t}")),
            }
        }
        Some(cluster::ClusterDiscoveryType::ClusterType(ct)) => {
            return Err(format!("{path}.cluster_type ({}): not supported", ct.name));
        }
    };
    let lb = lb_config(c, discovery, path)?;
    let breakers = breakers(
        c.circuit_breakers.as_ref(),
        &format!("{path}.circuit_breakers"),
    )?;
    let (endpoints, overprovisioning_factor) = match &c.load_assignment {
        Some(la) => {
            let lpath = format!("{path}.load_assignment");
            (
                endpoints(la, &lpath, discovery)?,
                overprovisioning_factor(la, &lpath)?,
            )
        }
        None => (Vec::new(), 140),
    };
    let eds = match (discovery, &c.eds_cluster_config) {
        (Discovery::Eds, Some(e)) => {
            let epath = format!("{path}.eds_cluster_config");
            let source = match &e.eds_config {
                Some(cs) => config_source(cs, &format!("{epath}.eds_config"))?,
                None => return Err(format!("{epath}.eds_config: required")),
            };
            if !matches!(source, ResourceSource::Ads { .. }) {
                return Err(format!("{epath}.eds_config: only ads is supported for EDS"));
            }
            Some(EdsConfig {
                service_name: if e.service_name.is_empty() {
                    c.name.clone()
                } else {
                    e.service_name.clone()
                },
                initial_fetch_timeout: source.initial_fetch_timeout(),
            })
        }
        (Discovery::Eds, None) => {
            return Err(format!(
                "{path}.eds_cluster_config: required for an EDS cluster"
            ));
        }
        (_, Some(_)) => {
            return Err(format!(
                "{path}.eds_cluster_config: only allowed on EDS clusters"
            ));
        }
        _ => None,
    };
    match discovery {
        Discovery::LogicalDns if endpoints.len() != 1 => {
            return Err(format!(
                "{path}.load_assignment: LOGICAL_DNS clusters must have a single host"
            ));
        }
        Discovery::OriginalDst if !endpoints.is_empty() => {
            return Err(format!(
                "{path}.load_assignment: ORIGINAL_DST clusters must have no load assignment"
            ));
        }
        Discovery::Eds if !endpoints.is_empty() => {
            return Err(format!(
                "{path}.load_assignment: EDS clusters take their endpoints from EDS"
            ));
        }
        _ => {}
    }

    let mut protocol = if c.http2_protocol_options.is_some() {
        UpstreamProtocol::Http2
    } else {
        UpstreamProtocol::Http1
    };
    let mut h2 = match &c.http2_protocol_options {
        Some(o) => h2_options(o, &format!("{path}.http2_protocol_options"))?,
        None => H2Options::default(),
    };
    let mut max_requests_per_connection = c.max_requests_per_connection.as_ref().map(|v| v.value);
    // Envoy's default upstream connection idle timeout.
    let mut idle_timeout = Some(Duration::from_secs(3600));
    let mut max_connection_duration = None;
    for (key, any) in &c.typed_extension_protocol_options {
        let opath = format!("{path}.typed_extension_protocol_options[\"{key}\"]");
        if proto::type_name(&any.type_url) != HTTP_OPTIONS {
            return Err(format!("{opath}: not supported"));
        }
        let opts: HttpProtocolOptions = proto::unpack(any).map_err(|e| format!("{opath}: {e}"))?;
        if let Some(common) = &opts.common_http_protocol_options {
            // The connection manager's connection timeouts share this message; upstream
            // they are not implemented yet.
            let cpath = format!("{opath}.common_http_protocol_options");
            if let Some(t) = &common.idle_timeout {
                idle_timeout = Some(duration(t)).filter(|t| !t.is_zero());
            }
            if common.max_stream_duration.is_some() {
                return Err(format!(
                    "{cpath}.max_stream_duration: not supported upstream"
                ));
            }
            if let Some(d) = &common.max_connection_duration {
                max_connection_duration = Some(duration(d)).filter(|d| !d.is_zero());
            }
            // It wins over the deprecated cluster field, as in Envoy.
            if let Some(m) = &common.max_requests_per_connection {
                max_requests_per_connection = Some(m.value);
            }
        }
        protocol = match opts.upstream_protocol_options {
            Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(e)) => {
                use http_protocol_options::explicit_http_config::ProtocolConfig;
                match e.protocol_config {
                    Some(ProtocolConfig::Http2ProtocolOptions(o)) => {
                        h2 = h2_options(
                            &o,
                            &format!("{opath}.explicit_http_config.http2_protocol_options"),
                        )?;
                        UpstreamProtocol::Http2
                    }
                    Some(ProtocolConfig::HttpProtocolOptions(_)) => UpstreamProtocol::Http1,
                    _ => {
                        return Err(format!(
                            "{opath}.explicit_http_config: one of http_protocol_options or \
                             http2_protocol_options is required"
                        ));
                    }
                }
            }
            Some(http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(
                d,
            )) => {
                if let Some(o) = &d.http2_protocol_options {
                    h2 = h2_options(
                        o,
                        &format!("{opath}.use_downstream_protocol_config.http2_protocol_options"),
                    )?;
                }
                UpstreamProtocol::Downstream
            }
            _ => {
                return Err(format!(
                    "{opath}: explicit_http_config or use_downstream_protocol_config is required"
                ));
            }
        };
    }

    let dns_family = match c.dns_lookup_family() {
        cluster::DnsLookupFamily::Auto => DnsFamily::Auto,
        cluster::DnsLookupFamily::V4Only => DnsFamily::V4Only,
        cluster::DnsLookupFamily::V6Only => DnsFamily::V6Only,
        cluster::DnsLookupFamily::V4Preferred => DnsFamily::V4Preferred,
        cluster::DnsLookupFamily::All => DnsFamily::All,
    };
    let original_dst_header = match &c.lb_config {
        Some(cluster::LbConfig::OriginalDstLbConfig(o)) => {
            let opath = format!("{path}.original_dst_lb_config");
            if discovery != Discovery::OriginalDst {
                return Err(format!("{opath}: only allowed on ORIGINAL_DST clusters"));
            }
            if o.upstream_port_override.is_some() || o.metadata_key.is_some() {
                return Err(format!(
                    "{opath}: only use_http_header and http_header_name are supported"
                ));
            }
            match (o.use_http_header, o.http_header_name.as_str()) {
                (false, _) => None,
                (true, "") => Some(http::HeaderName::from_static("x-envoy-original-dst-host")),
                (true, name) => Some(http::HeaderName::try_from(name).map_err(|_| {
                    format!("{opath}.http_header_name: '{name}' is not a header name")
                })?),
            }
        }
        // The other lb_configs belong to their lb_policy (see lb_config).
        _ => None,
    };
    let mut upstream_socket = match &c.upstream_bind_config {
        Some(b) => upstream_socket(b, &format!("{path}.upstream_bind_config"))?,
        None => UpstreamSocket::default(),
    };
    if let Some(k) = c
        .upstream_connection_options
        .as_ref()
        .and_then(|o| o.tcp_keepalive.as_ref())
    {
        upstream_socket.keepalive = Some(Keepalive {
            probes: k.keepalive_probes.as_ref().map(|v| v.value),
            time: k.keepalive_time.as_ref().map(|v| v.value),
            interval: k.keepalive_interval.as_ref().map(|v| v.value),
        });
    }
    let transport = transport_sockets(c, path)?;
    Ok(ClusterConfig {
        keep_alpn: c.metadata.as_ref().is_some_and(keeps_alpn),
        istio_marks: istio_marks(c),
        istio_service: istio_service(c).map(Arc::new),
        metadata_exchange: cluster_filters(c, path)?,
        transport,
        original_dst_header,
        upstream_socket,
        eds,
        alt_stat_name: (!c.alt_stat_name.is_empty()).then(|| c.alt_stat_name.clone()),
        breakers,
        added_via_api: false,
        max_requests_per_connection: max_requests_per_connection.filter(|&m| m > 0),
        buffer_limit: c
            .per_connection_buffer_limit_bytes
            .as_ref()
            .map_or(1 << 20, |v| v.value as usize),
        idle_timeout,
        cleanup_interval: c
            .cleanup_interval
            .as_ref()
            .map(duration)
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(5)),
        name: c.name.clone(),
        discovery,
        connect_timeout: c
            .connect_timeout
            .as_ref()
            .map(duration)
            .unwrap_or(Duration::from_secs(5)),
        protocol,
        dns_refresh_rate: c
            .dns_refresh_rate
            .as_ref()
            .map(duration)
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(5)),
        dns_family,
        endpoints,
        lb,
        overprovisioning_factor,
        h2,
        max_connection_duration,
        outlier: match &c.outlier_detection {
            Some(o) => Some(outlier(o, &format!("{path}.outlier_detection"))?),
            None => None,
        },
        health_check: match c.health_checks.as_slice() {
            [] => None,
            [h] => Some(health_check(
                h,
                &c.name,
                &format!("{path}.health_checks[0]"),
            )?),
            _ => {
                return Err(format!(
                    "{path}.health_checks: only one health check is supported"
                ));
            }
        },
    })
}

/// One of `health_checks`.
fn health_check(
    h: &envoy_types::pb::envoy::config::core::v3::HealthCheck,
    cluster: &str,
    path: &str,
) -> Result<HealthCheckConfig> {
    use envoy_types::pb::envoy::config::core::v3::health_check::{HealthChecker, payload::Payload};
    let need = |d: &Option<protobuf::Duration>, name: &str| -> Result<Duration> {
        match d {
            Some(d) if !duration(d).is_zero() => Ok(duration(d)),
            _ => Err(format!("{path}.{name}: required and greater than 0")),
        }
    };
    let positive =
        |d: &Option<protobuf::Duration>| d.as_ref().map(duration).filter(|d| !d.is_zero());
    let threshold = |v: &Option<protobuf::UInt32Value>, name: &str| -> Result<u32> {
        match v {
            Some(v) => Ok(v.value.max(1)),
            None => Err(format!("{path}.{name}: required")),
        }
    };
    let payload = |p: &envoy_types::pb::envoy::config::core::v3::health_check::Payload,
                   ppath: String|
     -> Result<Vec<u8>> {
        match &p.payload {
            Some(Payload::Text(t)) => hex(t).ok_or_else(|| format!("{ppath}.text: not hex")),
            Some(Payload::Binary(b)) => Ok(b.clone()),
            None => Err(format!("{ppath}: text or binary is required")),
        }
    };
    let kind = match &h.health_checker {
        Some(HealthChecker::HttpHealthCheck(x)) => {
            let hpath = format!("{path}.http_health_check");
            if x.path.is_empty() {
                return Err(format!("{hpath}.path: required"));
            }
            if x.send.is_some() || !x.receive.is_empty() {
                return Err(format!("{hpath}: send and receive are not supported"));
            }
            let mut expected_statuses = Vec::new();
            for (i, r) in x.expected_statuses.iter().enumerate() {
                if !(100..=599).contains(&r.start) || r.end <= r.start || r.end > 600 {
                    return Err(format!(
                        "{hpath}.expected_statuses[{i}]: [{}, {}) is not a range of statuses",
                        r.start, r.end
                    ));
                }
                expected_statuses.push((r.start as u16, r.end as u16));
            }
            if expected_statuses.is_empty() {
                expected_statuses.push((200, 201));
            }
            let mut add = Vec::new();
            for (i, o) in x.request_headers_to_add.iter().enumerate() {
                let Some(hv) = &o.header else {
                    return Err(format!(
                        "{hpath}.request_headers_to_add[{i}].header: required"
                    ));
                };
                add.push((hv.key.to_ascii_lowercase(), hv.value.clone()));
            }
            HealthCheckKind::Http {
                host: if x.host.is_empty() {
                    cluster.to_owned()
                } else {
                    x.host.clone()
                },
                path: x.path.clone(),
                expected_statuses,
                request_headers_to_add: add,
                request_headers_to_remove: x
                    .request_headers_to_remove
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
                // CodecClientType: HTTP1 0, HTTP2 1, HTTP3 2.
                http2: match x.codec_client_type {
                    0 => false,
                    1 => true,
                    _ => return Err(format!("{hpath}.codec_client_type: only HTTP1 and HTTP2")),
                },
            }
        }
        Some(HealthChecker::TcpHealthCheck(t)) => {
            let tpath = format!("{path}.tcp_health_check");
            HealthCheckKind::Tcp {
                send: match &t.send {
                    Some(p) => payload(p, format!("{tpath}.send"))?,
                    None => Vec::new(),
                },
                receive: t
                    .receive
                    .iter()
                    .enumerate()
                    .map(|(i, p)| payload(p, format!("{tpath}.receive[{i}]")))
                    .collect::<Result<_>>()?,
            }
        }
        Some(HealthChecker::GrpcHealthCheck(g)) => HealthCheckKind::Grpc {
            service_name: g.service_name.clone(),
            authority: if g.authority.is_empty() {
                cluster.to_owned()
            } else {
                g.authority.clone()
            },
        },
        Some(HealthChecker::CustomHealthCheck(_)) => {
            return Err(format!("{path}.custom_health_check: not supported"));
        }
        None => {
            return Err(format!(
                "{path}: http_health_check, tcp_health_check or grpc_health_check is required"
            ));
        }
    };
    Ok(HealthCheckConfig {
        timeout: need(&h.timeout, "timeout")?,
        interval: need(&h.interval, "interval")?,
        interval_jitter: h.interval_jitter.as_ref().map(duration).unwrap_or_default(),
        interval_jitter_percent: h.interval_jitter_percent,
        initial_jitter: h.initial_jitter.as_ref().map(duration).unwrap_or_default(),
        unhealthy_threshold: threshold(&h.unhealthy_threshold, "unhealthy_threshold")?,
        healthy_threshold: threshold(&h.healthy_threshold, "healthy_threshold")?,
        no_traffic_interval: positive(&h.no_traffic_interval).unwrap_or(Duration::from_secs(60)),
        no_traffic_healthy_interval: positive(&h.no_traffic_healthy_interval),
        unhealthy_interval: positive(&h.unhealthy_interval),
        unhealthy_edge_interval: positive(&h.unhealthy_edge_interval),
        healthy_edge_interval: positive(&h.healthy_edge_interval),
        kind,
    })
}

/// Bytes from hex text (a health-check payload's `text`).
fn hex(t: &str) -> Option<Vec<u8>> {
    let t = t.as_bytes();
    if !t.len().is_multiple_of(2) {
        return None;
    }
    t.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

/// LEAST_REQUEST's settings (legacy `least_request_lb_config` or the typed policy),
/// in Envoy's ranges: `choice_count` at least 2 (default 2), a finite bias of at least
/// 0 (default 1).
fn least_request(
    choice_count: Option<u32>,
    bias: Option<f64>,
    full_scan: bool,
    path: &str,
) -> Result<LbPolicy> {
    let choice_count = choice_count.unwrap_or(2);
    if choice_count < 2 {
        return Err(format!(
            "{path}.choice_count: must be at least 2, got {choice_count}"
        ));
    }
    let bias = bias.unwrap_or(1.0);
    if !(bias >= 0.0 && bias.is_finite()) {
        return Err(format!(
            "{path}.active_request_bias: {bias} must be a finite number of at least 0"
        ));
    }
    Ok(LbPolicy::LeastRequest {
        choice_count,
        active_request_bias: bias,
        full_scan,
    })
}

/// RING_HASH's settings: ring sizes within 1..8388608 (defaults 1024 and 8388608),
/// `hash_function` XX_HASH (0) only.
fn ring_hash(
    min: Option<u64>,
    max: Option<u64>,
    hash_function: i32,
    path: &str,
) -> Result<LbPolicy> {
    const MAX: u64 = 8 * 1024 * 1024;
    let (min_size, max_size) = (min.unwrap_or(1024), max.unwrap_or(MAX));
    for (name, v) in [
        ("minimum_ring_size", min_size),
        ("maximum_ring_size", max_size),
    ] {
        if v == 0 || v > MAX {
            return Err(format!("{path}.{name}: {v} is not within 1..8388608"));
        }
    }
    if min_size > max_size {
        return Err(format!(
            "{path}: minimum_ring_size ({min_size}) is above maximum_ring_size ({max_size})"
        ));
    }
    if hash_function != 0 {
        return Err(format!("{path}.hash_function: only XX_HASH is supported"));
    }
    Ok(LbPolicy::RingHash { min_size, max_size })
}

/// MAGLEV's `table_size`: a prime no larger than 5000011 (default 65537).
fn maglev(table_size: Option<u64>, path: &str) -> Result<LbPolicy> {
    let table_size = table_size.unwrap_or(65537);
    if table_size > 5_000_011 || !crate::upstream::lb::hash::is_prime(table_size) {
        return Err(format!(
            "{path}.table_size: {table_size} must be a prime number no larger than 5000011"
        ));
    }
    Ok(LbPolicy::Maglev { table_size })
}

/// `load_balancing_policy`: the first policy pilotfish implements, as Envoy takes the
/// first it has a factory for; it replaces `lb_policy`. (Deprecated fields are still
/// honoured, as Envoy honours them.)
#[allow(deprecated)]
fn typed_lb_policy(
    p: &envoy_types::pb::envoy::config::cluster::v3::LoadBalancingPolicy,
    discovery: Discovery,
    out: &mut LbConfig,
    path: &str,
) -> Result<()> {
    use envoy_types::pb::envoy::extensions::load_balancing_policies::{
        common::v3::{LocalityLbConfig, locality_lb_config::LocalityConfigSpecifier as L},
        least_request::v3::LeastRequest,
        maglev::v3::Maglev,
        random::v3::Random,
        ring_hash::v3::RingHash,
        round_robin::v3::RoundRobin,
    };
    const PREFIX: &str = "envoy.extensions.load_balancing_policies.";
    let locality = |l: &Option<LocalityLbConfig>, lpath: &str| -> Result<bool> {
        match l
            .as_ref()
            .and_then(|l| l.locality_config_specifier.as_ref())
        {
            None => Ok(false),
            Some(L::LocalityWeightedLbConfig(_)) => Ok(true),
            Some(L::ZoneAwareLbConfig(_)) => Err(format!(
                "{lpath}.locality_lb_config.zone_aware_lb_config: not supported (zone-aware \
                 routing needs a local cluster)"
            )),
        }
    };
    for (i, policy) in p.policies.iter().enumerate() {
        let ppath = format!("{path}.policies[{i}].typed_extension_config");
        let Some(any) = policy
            .typed_extension_config
            .as_ref()
            .and_then(|t| t.typed_config.as_ref())
        else {
            return Err(format!("{ppath}.typed_config: required"));
        };
        let ty = proto::type_name(&any.type_url);
        let Some(kind) = ty.strip_prefix(PREFIX) else {
            continue;
        };
        let unpack_err = |e| format!("{ppath}.typed_config: {e}");
        let chosen = match kind {
            "cluster_provided.v3.ClusterProvided" => LbPolicy::ClusterProvided,
            "round_robin.v3.RoundRobin" => {
                let r: RoundRobin = proto::unpack(any).map_err(unpack_err)?;
                out.locality_weighted = locality(&r.locality_lb_config, &ppath)?;
                LbPolicy::RoundRobin
            }
            "random.v3.Random" => {
                let r: Random = proto::unpack(any).map_err(unpack_err)?;
                out.locality_weighted = locality(&r.locality_lb_config, &ppath)?;
                LbPolicy::Random
            }
            "least_request.v3.LeastRequest" => {
                let l: LeastRequest = proto::unpack(any).map_err(unpack_err)?;
                out.locality_weighted = locality(&l.locality_lb_config, &ppath)?;
                // SelectionMethod: N_CHOICES 0, FULL_SCAN 1; `enable_full_scan` is the
                // older switch.
                let full_scan =
                    l.selection_method == 1 || l.enable_full_scan.as_ref().is_some_and(|b| b.value);
                least_request(
                    l.choice_count.as_ref().map(|v| v.value),
                    l.active_request_bias.as_ref().map(|v| v.default_value),
                    full_scan,
                    &ppath,
                )?
            }
            "ring_hash.v3.RingHash" => {
                let r: RingHash = proto::unpack(any).map_err(unpack_err)?;
                if r.hash_balance_factor.is_some() {
                    return Err(format!("{ppath}.hash_balance_factor: not supported"));
                }
                if r.locality_weighted_lb_config.is_some() {
                    return Err(format!(
                        "{ppath}.locality_weighted_lb_config: not supported"
                    ));
                }
                out.use_hostname_for_hashing = r.use_hostname_for_hashing
                    || r.consistent_hashing_lb_config
                        .as_ref()
                        .is_some_and(|h| h.use_hostname_for_hashing);
                ring_hash(
                    r.minimum_ring_size.as_ref().map(|v| v.value),
                    r.maximum_ring_size.as_ref().map(|v| v.value),
                    r.hash_function,
                    &ppath,
                )?
            }
            "maglev.v3.Maglev" => {
                let m: Maglev = proto::unpack(any).map_err(unpack_err)?;
                if m.locality_weighted_lb_config.is_some() {
                    return Err(format!(
                        "{ppath}.locality_weighted_lb_config: not supported"
                    ));
                }
                out.use_hostname_for_hashing = m
                    .consistent_hashing_lb_config
                    .as_ref()
                    .is_some_and(|h| h.use_hostname_for_hashing);
                maglev(m.table_size.as_ref().map(|v| v.value), &ppath)?
            }
            _ => continue,
        };
        if (discovery == Discovery::OriginalDst) != (chosen == LbPolicy::ClusterProvided) {
            return Err(format!(
                "{ppath}: CLUSTER_PROVIDED is the only policy for ORIGINAL_DST clusters, and \
                 only for them"
            ));
        }
        out.policy = chosen;
        return Ok(());
    }
    Err(format!("{path}: none of the policies is supported"))
}

/// `outlier_detection`, Envoy's defaults filling what is unset.
fn outlier(
    o: &envoy_types::pb::envoy::config::cluster::v3::OutlierDetection,
    path: &str,
) -> Result<OutlierConfig> {
    let mut c = OutlierConfig::default();
    let u = |slot: &mut u32, v: &Option<protobuf::UInt32Value>| {
        if let Some(v) = v {
            *slot = v.value;
        }
    };
    let percent = |slot: &mut u32, v: &Option<protobuf::UInt32Value>, name: &str| {
        if let Some(v) = v {
            if v.value > 100 {
                return Err(format!("{path}.{name}: {} is above 100", v.value));
            }
            *slot = v.value;
        }
        Ok(())
    };
    let d = |slot: &mut Duration, v: &Option<protobuf::Duration>, name: &str| {
        if let Some(v) = v {
            let v = duration(v);
            if v.is_zero() && name != "max_ejection_time_jitter" {
                return Err(format!("{path}.{name}: must be greater than 0"));
            }
            *slot = v;
        }
        Ok(())
    };
    u(&mut c.consecutive_5xx, &o.consecutive_5xx);
    u(
        &mut c.consecutive_gateway_failure,
        &o.consecutive_gateway_failure,
    );
    u(
        &mut c.consecutive_local_origin_failure,
        &o.consecutive_local_origin_failure,
    );
    c.split_external_local_origin_errors = o.split_external_local_origin_errors;
    d(&mut c.interval, &o.interval, "interval")?;
    d(
        &mut c.base_ejection_time,
        &o.base_ejection_time,
        "base_ejection_time",
    )?;
    d(
        &mut c.max_ejection_time,
        &o.max_ejection_time,
        "max_ejection_time",
    )?;
    d(
        &mut c.max_ejection_time_jitter,
        &o.max_ejection_time_jitter,
        "max_ejection_time_jitter",
    )?;
    percent(
        &mut c.max_ejection_percent,
        &o.max_ejection_percent,
        "max_ejection_percent",
    )?;
    percent(
        &mut c.enforcing_consecutive_5xx,
        &o.enforcing_consecutive_5xx,
        "enforcing_consecutive_5xx",
    )?;
    percent(
        &mut c.enforcing_consecutive_gateway_failure,
        &o.enforcing_consecutive_gateway_failure,
        "enforcing_consecutive_gateway_failure",
    )?;
    percent(
        &mut c.enforcing_consecutive_local_origin_failure,
        &o.enforcing_consecutive_local_origin_failure,
        "enforcing_consecutive_local_origin_failure",
    )?;
    percent(
        &mut c.enforcing_success_rate,
        &o.enforcing_success_rate,
        "enforcing_success_rate",
    )?;
    percent(
        &mut c.enforcing_local_origin_success_rate,
        &o.enforcing_local_origin_success_rate,
        "enforcing_local_origin_success_rate",
    )?;
    u(
        &mut c.success_rate_minimum_hosts,
        &o.success_rate_minimum_hosts,
    );
    u(
        &mut c.success_rate_request_volume,
        &o.success_rate_request_volume,
    );
    u(
        &mut c.success_rate_stdev_factor,
        &o.success_rate_stdev_factor,
    );
    percent(
        &mut c.failure_percentage_threshold,
        &o.failure_percentage_threshold,
        "failure_percentage_threshold",
    )?;
    percent(
        &mut c.enforcing_failure_percentage,
        &o.enforcing_failure_percentage,
        "enforcing_failure_percentage",
    )?;
    percent(
        &mut c.enforcing_failure_percentage_local_origin,
        &o.enforcing_failure_percentage_local_origin,
        "enforcing_failure_percentage_local_origin",
    )?;
    u(
        &mut c.failure_percentage_minimum_hosts,
        &o.failure_percentage_minimum_hosts,
    );
    u(
        &mut c.failure_percentage_request_volume,
        &o.failure_percentage_request_volume,
    );
    if let Some(b) = &o.successful_active_health_check_uneject_host {
        c.successful_active_health_check_uneject_host = b.value;
    }
    Ok(c)
}

/// Upstream `http2_protocol_options`, in Envoy's ranges.
fn h2_options(
    o: &envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions,
    path: &str,
) -> Result<H2Options> {
    let mut out = H2Options::default();
    if let Some(v) = &o.max_concurrent_streams {
        if !(1..=2_147_483_647).contains(&v.value) {
            return Err(format!(
                "{path}.max_concurrent_streams: {} is not within 1..2147483647",
                v.value
            ));
        }
        out.max_concurrent_streams = v.value;
    }
    let window = |v: &Option<protobuf::UInt32Value>, name: &str| -> Result<Option<u32>> {
        match v {
            Some(w) if !(65_535..=2_147_483_647).contains(&w.value) => Err(format!(
                "{path}.{name}: {} is not within 65535..2147483647",
                w.value
            )),
            Some(w) => Ok(Some(w.value)),
            None => Ok(None),
        }
    };
    out.initial_stream_window_size =
        window(&o.initial_stream_window_size, "initial_stream_window_size")?;
    out.initial_connection_window_size = window(
        &o.initial_connection_window_size,
        "initial_connection_window_size",
    )?;
    if let Some(k) = &o.connection_keepalive {
        let kpath = format!("{path}.connection_keepalive");
        let interval = k.interval.as_ref().map(duration).filter(|d| !d.is_zero());
        let timeout = k.timeout.as_ref().map(duration).filter(|d| !d.is_zero());
        match (interval, timeout) {
            (Some(i), Some(t)) => out.keepalive = Some((i, t)),
            (None, _) => {
                return Err(format!(
                    "{kpath}.interval: required (pilotfish sends PINGs on an interval only)"
                ));
            }
            (_, None) => return Err(format!("{kpath}.timeout: required")),
        }
    }
    Ok(out)
}

/// The cluster's load balancer: `lb_policy` with its `least_request_lb_config`, and
/// `common_lb_config`.
#[allow(deprecated)]
fn lb_config(c: &Cluster, discovery: Discovery, path: &str) -> Result<LbConfig> {
    let legacy = c.lb_policy();
    // `load_balancing_policy` replaces `lb_policy` (checked below).
    let typed = c.load_balancing_policy.is_some();
    let policy = match (discovery, legacy) {
        _ if typed => LbPolicy::RoundRobin,
        (Discovery::OriginalDst, cluster::LbPolicy::ClusterProvided) => LbPolicy::ClusterProvided,
        (Discovery::OriginalDst, other) => {
            return Err(format!(
                "{path}.lb_policy: {} is not valid for cluster type ORIGINAL_DST; only \
                 CLUSTER_PROVIDED is allowed",
                other.as_str_name()
            ));
        }
        (_, cluster::LbPolicy::ClusterProvided) => {
            return Err(format!(
                "{path}.lb_policy: CLUSTER_PROVIDED is only valid for ORIGINAL_DST clusters"
            ));
        }
        (_, cluster::LbPolicy::RoundRobin) => LbPolicy::RoundRobin,
        (_, cluster::LbPolicy::Random) => LbPolicy::Random,
        (_, cluster::LbPolicy::RingHash) => {
            let cfg = match &c.lb_config {
                Some(cluster::LbConfig::RingHashLbConfig(r)) => Some(r),
                _ => None,
            };
            ring_hash(
                cfg.and_then(|r| r.minimum_ring_size.as_ref())
                    .map(|v| v.value),
                cfg.and_then(|r| r.maximum_ring_size.as_ref())
                    .map(|v| v.value),
                cfg.map_or(0, |r| r.hash_function),
                &format!("{path}.ring_hash_lb_config"),
            )?
        }
        (_, cluster::LbPolicy::Maglev) => {
            let size = match &c.lb_config {
                Some(cluster::LbConfig::MaglevLbConfig(m)) => {
                    m.table_size.as_ref().map(|v| v.value)
                }
                _ => None,
            };
            maglev(size, &format!("{path}.maglev_lb_config"))?
        }
        (_, cluster::LbPolicy::LeastRequest) => {
            let cfg = match &c.lb_config {
                Some(cluster::LbConfig::LeastRequestLbConfig(l)) => Some(l),
                _ => None,
            };
            least_request(
                cfg.and_then(|l| l.choice_count.as_ref()).map(|v| v.value),
                cfg.and_then(|l| l.active_request_bias.as_ref())
                    .map(|v| v.default_value),
                false,
                &format!("{path}.least_request_lb_config"),
            )?
        }
        (_, other) => {
            return Err(format!(
                "{path}.lb_policy: {} is not supported yet",
                other.as_str_name()
            ));
        }
    };
    match (&c.lb_config, policy) {
        (Some(cluster::LbConfig::OriginalDstLbConfig(_)) | None, _) => {}
        (Some(_), _) if typed => {
            return Err(format!(
                "{path}.load_balancing_policy: the legacy lb configs do not apply with it"
            ));
        }
        (Some(cluster::LbConfig::LeastRequestLbConfig(_)), LbPolicy::LeastRequest { .. })
        | (Some(cluster::LbConfig::RingHashLbConfig(_)), LbPolicy::RingHash { .. })
        | (Some(cluster::LbConfig::MaglevLbConfig(_)), LbPolicy::Maglev { .. }) => {}
        (Some(other), _) => {
            let name = match other {
                cluster::LbConfig::LeastRequestLbConfig(_) => "least_request_lb_config",
                cluster::LbConfig::RingHashLbConfig(_) => "ring_hash_lb_config",
                cluster::LbConfig::MaglevLbConfig(_) => "maglev_lb_config",
                _ => "lb_config",
            };
            return Err(format!(
                "{path}.{name}: does not match lb_policy {}",
                legacy.as_str_name()
            ));
        }
    }
    let mut out = LbConfig {
        policy,
        ..LbConfig::default()
    };
    if let Some(p) = &c.load_balancing_policy {
        typed_lb_policy(
            p,
            discovery,
            &mut out,
            &format!("{path}.load_balancing_policy"),
        )?;
    }
    if let Some(common) = &c.common_lb_config {
        let cpath = format!("{path}.common_lb_config");
        if let Some(p) = &common.healthy_panic_threshold {
            if !(0.0..=100.0).contains(&p.value) {
                return Err(format!(
                    "{cpath}.healthy_panic_threshold: {} is not within 0..100",
                    p.value
                ));
            }
            out.panic_threshold = p.value;
        }
        use cluster::common_lb_config::LocalityConfigSpecifier;
        match &common.locality_config_specifier {
            None => {}
            Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_)) => {
                if out.policy.hashes() {
                    return Err(format!(
                        "{cpath}.locality_weighted_lb_config: not supported with {}",
                        legacy.as_str_name()
                    ));
                }
                out.locality_weighted = true;
            }
            Some(LocalityConfigSpecifier::ZoneAwareLbConfig(_)) => {
                return Err(format!(
                    "{cpath}.zone_aware_lb_config: not supported (zone-aware routing needs a \
                     local cluster)"
                ));
            }
        }
    }
    Ok(out)
}

/// The endpoints of a `ClusterLoadAssignment` (a cluster's `load_assignment`, or an EDS
/// resource), each with its weight, priority, locality and health.
pub fn endpoints(
    la: &envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment,
    path: &str,
    discovery: Discovery,
) -> Result<Vec<EndpointConfig>> {
    let mut endpoints = Vec::new();
    for (l, lle) in la.endpoints.iter().enumerate() {
        let lpath = format!("{path}.endpoints[{l}]");
        let locality_weight = match &lle.load_balancing_weight {
            Some(w) if w.value == 0 => {
                return Err(format!("{lpath}.load_balancing_weight: must be at least 1"));
            }
            Some(w) => w.value,
            None => 0,
        };
        if lle.priority > 128 {
            return Err(format!("{lpath}.priority: {} is above 128", lle.priority));
        }
        let locality = lle
            .locality
            .as_ref()
            .map_or_else(Locality::default, |l| Locality {
                region: l.region.clone(),
                zone: l.zone.clone(),
                sub_zone: l.sub_zone.clone(),
            });
        for (e, lbe) in lle.lb_endpoints.iter().enumerate() {
            let epath = format!("{lpath}.lb_endpoints[{e}]");
            let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &lbe.host_identifier else {
                return Err(format!("{epath}.endpoint: required"));
            };
            let weight = match &lbe.load_balancing_weight {
                Some(w) if w.value == 0 => {
                    return Err(format!("{epath}.load_balancing_weight: must be at least 1"));
                }
                Some(w) => w.value,
                None => 1,
            };
            let attrs = EndpointAttrs {
                weight,
                priority: lle.priority,
                locality: locality.clone(),
                locality_weight,
                // UNKNOWN 0, HEALTHY 1, UNHEALTHY 2, DRAINING 3, TIMEOUT 4, DEGRADED 5.
                health: match lbe.health_status {
                    0 | 1 => EdsHealth::Healthy,
                    2 | 4 => EdsHealth::Unhealthy,
                    3 => EdsHealth::Draining,
                    5 => EdsHealth::Degraded,
                    v => return Err(format!("{epath}.health_status: unknown value {v}")),
                },
                canary: lbe.metadata.as_ref().is_some_and(canary),
                lb_metadata: lbe.metadata.as_ref().and_then(lb_metadata).map(Arc::new),
                socket_metadata: lbe
                    .metadata
                    .as_ref()
                    .and_then(|m| m.filter_metadata.get("envoy.transport_socket_match"))
                    .map(|s| Arc::new(struct_json(s))),
                istio_workload: lbe.metadata.as_ref().and_then(istio_workload).map(Arc::new),
            };
            let sa = match ep.address.as_ref().and_then(|a| a.address.as_ref()) {
                Some(address::Address::SocketAddress(sa)) => sa,
                Some(address::Address::Pipe(p)) if discovery == Discovery::Static => {
                    endpoints.push(EndpointConfig {
                        pipe: Some(p.path.clone().into()),
                        attrs,
                        ..Default::default()
                    });
                    continue;
                }
                _ => {
                    return Err(format!(
                        "{epath}.endpoint.address: a socket_address is required"
                    ));
                }
            };
            let port = match sa.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) if p > 0 && p <= 65535 => {
                    p as u16
                }
                _ => {
                    return Err(format!(
                        "{epath}.endpoint.address.socket_address.port_value: a port from 1 to 65535 is required"
                    ));
                }
            };
            let dns = matches!(discovery, Discovery::StrictDns | Discovery::LogicalDns);
            if !dns && sa.address.parse::<std::net::IpAddr>().is_err() {
                return Err(format!(
                    "{epath}.endpoint.address.socket_address.address: '{}' is not an IP \
                         address (STATIC and EDS endpoints need IPs; use STRICT_DNS for names)",
                    sa.address
                ));
            }
            endpoints.push(EndpointConfig {
                host: sa.address.clone(),
                port,
                hostname: Some(ep.hostname.clone())
                    .filter(|h| !h.is_empty())
                    .or_else(|| dns.then(|| sa.address.clone())),
                pipe: None,
                attrs,
            });
        }
    }
    Ok(endpoints)
}

/// The load assignment's `policy.overprovisioning_factor` in percent (Envoy's 140).
pub fn overprovisioning_factor(
    la: &envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment,
    path: &str,
) -> Result<u32> {
    match la
        .policy
        .as_ref()
        .and_then(|p| p.overprovisioning_factor.as_ref())
    {
        Some(f) if f.value == 0 => Err(format!(
            "{path}.policy.overprovisioning_factor: must be at least 1"
        )),
        Some(f) => Ok(f.value),
        None => Ok(140),
    }
}

/// A cluster's `transport_socket` and `transport_socket_matches`.
fn transport_sockets(c: &Cluster, path: &str) -> Result<TransportSockets> {
    let socket = |ts: &envoy_types::pb::envoy::config::core::v3::TransportSocket, p: String| {
        super::tls::transport_socket(ts, &p, false).map(|t| t.map(Arc::new))
    };
    let default = match &c.transport_socket {
        Some(ts) => socket(ts, format!("{path}.transport_socket"))?,
        None => None,
    };
    let mut matches = Vec::new();
    for (i, m) in c.transport_socket_matches.iter().enumerate() {
        let mpath = format!("{path}.transport_socket_matches[{i}]");
        let Some(ts) = &m.transport_socket else {
            return Err(format!("{mpath}.transport_socket: required"));
        };
        matches.push(SocketMatch {
            name: m.name.clone(),
            criteria: m.r#match.as_ref().map(struct_json).unwrap_or_default(),
            tls: socket(ts, format!("{mpath}.transport_socket"))?,
        });
    }
    Ok(TransportSockets { default, matches })
}

/// A cluster's `filters` (upstream network filters): Istio's metadata exchange only.
fn cluster_filters(
    c: &Cluster,
    path: &str,
) -> Result<Option<crate::istio::exchange::ExchangeConfig>> {
    let mut out = None;
    for (i, f) in c.filters.iter().enumerate() {
        let fpath = format!("{path}.filters[{i}]");
        match f
            .typed_config
            .as_ref()
            .map(|a| (proto::type_name(&a.type_url), a))
        {
            Some((crate::istio::exchange::TYPE, any)) if out.is_none() => {
                out = Some(crate::istio::exchange::compile(
                    &proto::any_to_json(any).map_err(|e| format!("{fpath}: {e}"))?,
                    &format!("{fpath}.typed_config"),
                )?);
            }
            _ => return Err(format!("{fpath} ({}): not supported", f.name)),
        }
    }
    Ok(out)
}

/// `filter_metadata["istio"]`'s `external: true` (or the `PassthroughCluster`) and
/// `disable_mx: true`.
fn istio_marks(c: &Cluster) -> crate::istio::peer_metadata::ClusterMarks {
    use envoy_types::pb::google::protobuf::value::Kind;
    let flag = |key: &str| {
        c.metadata
            .as_ref()
            .and_then(|m| m.filter_metadata.get("istio"))
            .and_then(|s| s.fields.get(key))
            .is_some_and(|v| matches!(v.kind, Some(Kind::BoolValue(true))))
    };
    crate::istio::peer_metadata::ClusterMarks {
        external: c.name == "PassthroughCluster" || flag("external"),
        disable_mx: flag("disable_mx"),
    }
}

/// `filter_metadata["istio"].services[0]` (`host`, `name`, `namespace`).
fn istio_service(c: &Cluster) -> Option<crate::istio::stats::labels::Service> {
    let meta = c.metadata.as_ref()?.filter_metadata.get("istio")?;
    let json = crate::istio::stats::labels::struct_json(meta);
    let first = json["services"].get(0)?;
    let s = |k: &str| first[k].as_str().unwrap_or_default().to_owned();
    Some(crate::istio::stats::labels::Service {
        host: s("host"),
        name: s("name"),
        namespace: s("namespace"),
    })
}

/// `filter_metadata["istio"].workload`, parsed.
fn istio_workload(
    m: &envoy_types::pb::envoy::config::core::v3::Metadata,
) -> Option<crate::istio::peer::Peer> {
    use envoy_types::pb::google::protobuf::value::Kind;
    match &m.filter_metadata.get("istio")?.fields.get("workload")?.kind {
        Some(Kind::StringValue(s)) => crate::istio::peer::Peer::from_workload_metadata(s),
        _ => None,
    }
}

/// `filter_metadata["istio"].alpn_override: "false"`.
fn keeps_alpn(m: &envoy_types::pb::envoy::config::core::v3::Metadata) -> bool {
    use envoy_types::pb::google::protobuf::value::Kind;
    m.filter_metadata
        .get("istio")
        .and_then(|s| s.fields.get("alpn_override"))
        .is_some_and(|v| matches!(&v.kind, Some(Kind::StringValue(s)) if s == "false"))
}

/// `filter_metadata["envoy.lb"].canary: true`.
fn canary(m: &envoy_types::pb::envoy::config::core::v3::Metadata) -> bool {
    use envoy_types::pb::google::protobuf::value::Kind;
    m.filter_metadata
        .get("envoy.lb")
        .and_then(|s| s.fields.get("canary"))
        .is_some_and(|v| matches!(v.kind, Some(Kind::BoolValue(true))))
}

/// `filter_metadata["envoy.lb"]`, if there is one.
fn lb_metadata(m: &envoy_types::pb::envoy::config::core::v3::Metadata) -> Option<LbMetadata> {
    m.filter_metadata.get("envoy.lb").map(struct_json)
}

/// A protobuf `Struct` as JSON values (numbers as doubles, as protobuf keeps them).
pub fn struct_json(s: &envoy_types::pb::google::protobuf::Struct) -> LbMetadata {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), value_json(v)))
        .collect()
}

fn value_json(v: &envoy_types::pb::google::protobuf::Value) -> serde_json::Value {
    use envoy_types::pb::google::protobuf::value::Kind;
    use serde_json::Value as J;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => J::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n).map_or(J::Null, J::Number),
        Some(Kind::StringValue(s)) => J::String(s.clone()),
        Some(Kind::BoolValue(b)) => J::Bool(*b),
        Some(Kind::StructValue(s)) => J::Object(struct_json(s).into_iter().collect()),
        Some(Kind::ListValue(l)) => J::Array(l.values.iter().map(value_json).collect()),
    }
}

/// `ApiVersion::V2` (deprecated, removed from Envoy): only AUTO and V3 are accepted.
const V2: i32 = 1;

/// SOL_SOCKET and SO_MARK on Linux, as Envoy configs spell them (`level: 1, name: 36`).
const SOL_SOCKET: i64 = 1;
const SO_MARK: i64 = 36;

fn upstream_socket(
    b: &envoy_types::pb::envoy::config::core::v3::BindConfig,
    path: &str,
) -> Result<UpstreamSocket> {
    use envoy_types::pb::envoy::config::core::v3::socket_option;
    let mut out = UpstreamSocket::default();
    if let Some(sa) = &b.source_address {
        if sa.port_specifier.is_some()
            && !matches!(
                sa.port_specifier,
                Some(socket_address::PortSpecifier::PortValue(0))
            )
        {
            return Err(format!(
                "{path}.source_address.port_value: only 0 (any port) is supported"
            ));
        }
        out.sources.push(sa.address.parse().map_err(|_| {
            format!(
                "{path}.source_address.address: '{}' is not an IP address",
                sa.address
            )
        })?);
    }
    for (i, extra) in b.extra_source_addresses.iter().enumerate() {
        let epath = format!("{path}.extra_source_addresses[{i}].address");
        let Some(sa) = &extra.address else {
            return Err(format!("{epath}: required"));
        };
        out.sources.push(
            sa.address
                .parse()
                .map_err(|_| format!("{epath}.address: '{}' is not an IP address", sa.address))?,
        );
    }
    for (i, o) in b.socket_options.iter().enumerate() {
        match (o.level, o.name, &o.value) {
            (SOL_SOCKET, SO_MARK, Some(socket_option::Value::IntValue(v)))
                if u32::try_from(*v).is_ok() =>
            {
                out.mark = Some(*v as u32)
            }
            _ => {
                return Err(format!(
                    "{path}.socket_options[{i}]: only SO_MARK (level 1, name 36, int_value) is \
                     supported"
                ));
            }
        }
    }
    Ok(out)
}

const FILE_LOG: &str = "envoy.extensions.access_loggers.file.v3.FileAccessLog";
const STDOUT_LOG: &str = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
const STDERR_LOG: &str = "envoy.extensions.access_loggers.stream.v3.StderrAccessLog";
const OTEL_LOG: &str =
    "envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig";

pub(super) fn access_logs(
    logs: &[envoy_types::pb::envoy::config::accesslog::v3::AccessLog],
    path: &str,
) -> Result<Vec<AccessLogConfig>> {
    use crate::telemetry::access_log::Target;
    use envoy_types::pb::envoy::{
        config::accesslog::v3::access_log,
        extensions::access_loggers::{
            file::v3::{FileAccessLog, file_access_log},
            stream::v3::{StderrAccessLog, StdoutAccessLog, stderr_access_log, stdout_access_log},
        },
    };
    let mut out = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        let lpath = format!("{path}[{i}]");
        let Some(access_log::ConfigType::TypedConfig(any)) = &log.config_type else {
            return Err(format!("{lpath} ({}): typed_config is required", log.name));
        };
        let err = |e: String| format!("{lpath}: {e}");
        let mut otel = None;
        let (target, format) = match proto::type_name(&any.type_url) {
            OTEL_LOG => {
                let c = proto::unpack(any).map_err(err)?;
                otel = Some(std::sync::Arc::new(otel_log(
                    &c,
                    &format!("{lpath}.typed_config"),
                )?));
                (Target::OpenTelemetry, None)
            }
            FILE_LOG => {
                let f: FileAccessLog = proto::unpack(any).map_err(err)?;
                if f.path.is_empty() {
                    return Err(format!("{lpath}.typed_config.path: required"));
                }
                #[allow(deprecated)]
                let format = match f.access_log_format {
                    None => None,
                    Some(file_access_log::AccessLogFormat::Format(s)) => {
                        Some(text_format(&s, &lpath)?)
                    }
                    Some(file_access_log::AccessLogFormat::LogFormat(sf)) => {
                        Some(substitution_format(&sf, &lpath)?)
                    }
                    Some(_) => {
                        return Err(format!(
                            "{lpath}.typed_config: only format and log_format are supported"
                        ));
                    }
                };
                let target = match f.path.as_str() {
                    "/dev/stdout" => Target::Stdout,
                    "/dev/stderr" => Target::Stderr,
                    p => Target::File(p.to_owned()),
                };
                (target, format)
            }
            STDOUT_LOG => {
                let f: StdoutAccessLog = proto::unpack(any).map_err(err)?;
                let format = match f.access_log_format {
                    Some(stdout_access_log::AccessLogFormat::LogFormat(sf)) => {
                        Some(substitution_format(&sf, &lpath)?)
                    }
                    None => None,
                };
                (Target::Stdout, format)
            }
            STDERR_LOG => {
                let f: StderrAccessLog = proto::unpack(any).map_err(err)?;
                let format = match f.access_log_format {
                    Some(stderr_access_log::AccessLogFormat::LogFormat(sf)) => {
                        Some(substitution_format(&sf, &lpath)?)
                    }
                    None => None,
                };
                (Target::Stderr, format)
            }
            _ => return Err(format!("{lpath} ({}): not supported", log.name)),
        };
        let format = match format {
            Some(f) => f,
            None => text_format(crate::telemetry::access_log::DEFAULT_FORMAT, &lpath)?,
        };
        let filter = log
            .filter
            .as_ref()
            .map(|f| log_filter(f, &format!("{lpath}.filter")))
            .transpose()?;
        out.push(AccessLogConfig {
            target,
            format,
            filter,
            otel,
        });
    }
    Ok(out)
}

/// `envoy.access_loggers.open_telemetry`: OTLP over gRPC; a string `body` and string
/// `attributes`, formatted as access-log lines.
fn otel_log(
    c: &envoy_types::pb::envoy::extensions::access_loggers::open_telemetry::v3::OpenTelemetryAccessLogConfig,
    path: &str,
) -> Result<crate::telemetry::otel_access_log::OtelLogConfig> {
    use envoy_types::pb::opentelemetry::proto::common::v1::{AnyValue, any_value};
    let string =
        |v: &Option<AnyValue>, p: &str| -> Result<Vec<crate::telemetry::access_log::Piece>> {
            match v.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => {
                    crate::telemetry::access_log::parse(s).map_err(|e| format!("{p}: {e}"))
                }
                _ => Err(format!("{p}: only string_value is supported")),
            }
        };
    #[allow(deprecated)]
    let common = c.common_config.as_ref();
    let grpc = c
        .grpc_service
        .as_ref()
        .or(common.and_then(|c| c.grpc_service.as_ref()));
    let gpath = if c.grpc_service.is_some() {
        format!("{path}.grpc_service")
    } else {
        format!("{path}.common_config.grpc_service")
    };
    if c.http_service.is_some() {
        return Err(format!(
            "{path}.http_service: not supported (grpc_service is)"
        ));
    }
    let grpc = grpc.ok_or_else(|| format!("{gpath}: required"))?;
    if let Some(cc) = common {
        use envoy_types::pb::envoy::config::core::v3::ApiVersion;
        if !matches!(
            ApiVersion::try_from(cc.transport_api_version),
            Ok(ApiVersion::Auto | ApiVersion::V3)
        ) {
            return Err(format!(
                "{path}.common_config.transport_api_version: only V3 is supported"
            ));
        }
    }
    let target = super::http_filters::envoy_grpc(grpc, &gpath, Duration::from_secs(5))?;
    let log_name = if c.log_name.is_empty() {
        common.map(|c| c.log_name.clone()).unwrap_or_default()
    } else {
        c.log_name.clone()
    };
    if log_name.is_empty() {
        return Err(format!("{path}.common_config.log_name: required"));
    }
    let flush = c
        .buffer_flush_interval
        .as_ref()
        .or(common.and_then(|c| c.buffer_flush_interval.as_ref()))
        .map_or(Duration::from_secs(1), duration);
    let size = c
        .buffer_size_bytes
        .as_ref()
        .or(common.and_then(|c| c.buffer_size_bytes.as_ref()))
        .map_or(16 * 1024, |v| v.value as usize);
    let pairs = |l: &Option<envoy_types::pb::opentelemetry::proto::common::v1::KeyValueList>,
                 p: &str|
     -> Result<Vec<(String, Vec<crate::telemetry::access_log::Piece>)>> {
        l.iter()
            .flat_map(|l| &l.values)
            .enumerate()
            .map(|(i, kv)| {
                Ok((
                    kv.key.clone(),
                    string(&kv.value, &format!("{p}.values[{i}].value"))?,
                ))
            })
            .collect()
    };
    let resource = pairs(
        &c.resource_attributes,
        &format!("{path}.resource_attributes"),
    )?
    .into_iter()
    .map(|(k, v)| {
        // Resource attributes are literal: rendered once, with no request.
        let record = crate::telemetry::access_log::Record::default();
        (k, record.render_value(&v))
    })
    .collect();
    Ok(crate::telemetry::otel_access_log::OtelLogConfig {
        cluster: target.cluster,
        authority: target.authority,
        timeout: target.timeout,
        metadata: target.metadata,
        body: c
            .body
            .as_ref()
            .map(|_| string(&c.body, &format!("{path}.body")))
            .transpose()?,
        attributes: pairs(&c.attributes, &format!("{path}.attributes"))?,
        log_name,
        builtin_labels: !c.disable_builtin_labels,
        resource,
        flush_interval: if flush.is_zero() {
            Duration::from_secs(1)
        } else {
            flush
        },
        buffer_size: size.max(1),
    })
}

/// An `AccessLogFilter`. The runtime keys filters name are not read: the configured
/// defaults decide.
fn log_filter(
    f: &envoy_types::pb::envoy::config::accesslog::v3::AccessLogFilter,
    path: &str,
) -> Result<crate::telemetry::access_log_filter::LogFilter> {
    use crate::telemetry::access_log_filter::{LogFilter, Op};
    use envoy_types::pb::envoy::{
        config::accesslog::v3::{
            ComparisonFilter, access_log_filter::FilterSpecifier, comparison_filter,
        },
        r#type::v3::fractional_percent::DenominatorType,
    };
    let comparison = |c: &Option<ComparisonFilter>, p: &str| -> Result<(Op, u64)> {
        let c = c
            .as_ref()
            .ok_or_else(|| format!("{p}.comparison: required"))?;
        let op = match comparison_filter::Op::try_from(c.op) {
            Ok(comparison_filter::Op::Eq) => Op::Eq,
            Ok(comparison_filter::Op::Ge) => Op::Ge,
            Ok(comparison_filter::Op::Le) => Op::Le,
            Ok(comparison_filter::Op::Ne) => Op::Ne,
            Err(_) => return Err(format!("{p}.comparison.op: unknown")),
        };
        let v = c
            .value
            .as_ref()
            .ok_or_else(|| format!("{p}.comparison.value: required"))?;
        if v.runtime_key.is_empty() {
            return Err(format!("{p}.comparison.value.runtime_key: required"));
        }
        Ok((op, u64::from(v.default_value)))
    };
    let list = |fs: &[envoy_types::pb::envoy::config::accesslog::v3::AccessLogFilter],
                p: &str|
     -> Result<Vec<LogFilter>> {
        if fs.len() < 2 {
            return Err(format!("{p}.filters: at least 2 are required"));
        }
        fs.iter()
            .enumerate()
            .map(|(i, f)| log_filter(f, &format!("{p}.filters[{i}]")))
            .collect()
    };
    Ok(match &f.filter_specifier {
        Some(FilterSpecifier::StatusCodeFilter(s)) => {
            let (op, v) = comparison(&s.comparison, &format!("{path}.status_code_filter"))?;
            LogFilter::StatusCode(op, v)
        }
        Some(FilterSpecifier::DurationFilter(d)) => {
            let (op, v) = comparison(&d.comparison, &format!("{path}.duration_filter"))?;
            LogFilter::Duration(op, v)
        }
        Some(FilterSpecifier::NotHealthCheckFilter(_)) => LogFilter::NotHealthCheck,
        Some(FilterSpecifier::TraceableFilter(_)) => LogFilter::Traceable,
        Some(FilterSpecifier::RuntimeFilter(r)) => {
            let p = format!("{path}.runtime_filter");
            if r.runtime_key.is_empty() {
                return Err(format!("{p}.runtime_key: required"));
            }
            let share = r.percent_sampled.as_ref();
            LogFilter::Runtime {
                numerator: share.map_or(0, |s| u64::from(s.numerator)),
                denominator: match share.map(|s| DenominatorType::try_from(s.denominator)) {
                    None | Some(Ok(DenominatorType::Hundred)) => 100,
                    Some(Ok(DenominatorType::TenThousand)) => 10_000,
                    Some(Ok(DenominatorType::Million)) => 1_000_000,
                    Some(Err(_)) => {
                        return Err(format!("{p}.percent_sampled.denominator: unknown"));
                    }
                },
                independent: r.use_independent_randomness,
            }
        }
        Some(FilterSpecifier::AndFilter(a)) => {
            LogFilter::And(list(&a.filters, &format!("{path}.and_filter"))?)
        }
        Some(FilterSpecifier::OrFilter(o)) => {
            LogFilter::Or(list(&o.filters, &format!("{path}.or_filter"))?)
        }
        Some(FilterSpecifier::HeaderFilter(h)) => {
            let p = format!("{path}.header_filter.header");
            let m = h.header.as_ref().ok_or_else(|| format!("{p}: required"))?;
            LogFilter::Header(super::route_config::header_matcher(m, &p)?)
        }
        Some(FilterSpecifier::ResponseFlagFilter(r)) => {
            for (i, flag) in r.flags.iter().enumerate() {
                if !crate::http::local_reply::FLAG_NAMES.contains(&flag.as_str()) {
                    return Err(format!(
                        "{path}.response_flag_filter.flags[{i}]: unknown flag '{flag}'"
                    ));
                }
            }
            LogFilter::ResponseFlag(r.flags.clone())
        }
        Some(FilterSpecifier::GrpcStatusFilter(g)) => LogFilter::GrpcStatus {
            statuses: g.statuses.iter().map(|&s| s as u32).collect(),
            exclude: g.exclude,
        },
        Some(FilterSpecifier::ExtensionFilter(e)) => {
            use envoy_types::pb::envoy::config::accesslog::v3::extension_filter::ConfigType;
            const CEL: &str = "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter";
            let p = format!("{path}.extension_filter");
            let Some(ConfigType::TypedConfig(any)) = &e.config_type else {
                return Err(format!("{p}.typed_config: required"));
            };
            if proto::type_name(&any.type_url) != CEL {
                return Err(format!("{p} ({}): not supported", e.name));
            }
            let cel: envoy_types::pb::envoy::extensions::access_loggers::filters::cel::v3::ExpressionFilter =
                proto::unpack(any).map_err(|e| format!("{p}: {e}"))?;
            LogFilter::Cel(
                crate::istio::stats::cel::Expr::parse(&cel.expression)
                    .map_err(|e| format!("{p}.typed_config.expression: {e}"))?,
            )
        }
        Some(_) => return Err(format!("{path}: this filter is not supported")),
        None => return Err(format!("{path}: a filter is required")),
    })
}

fn text_format(s: &str, path: &str) -> Result<crate::telemetry::access_log::Format> {
    crate::telemetry::access_log::parse(s)
        .map(crate::telemetry::access_log::Format::Text)
        .map_err(|e| format!("{path}: {e}"))
}

fn substitution_format(
    sf: &envoy_types::pb::envoy::config::core::v3::SubstitutionFormatString,
    path: &str,
) -> Result<crate::telemetry::access_log::Format> {
    use crate::telemetry::access_log::{Format, parse};
    use envoy_types::pb::{
        envoy::config::core::v3::{data_source, substitution_format_string},
        google::protobuf::value,
    };
    let fpath = format!("{path}.typed_config.log_format");
    #[allow(deprecated)]
    match &sf.format {
        Some(substitution_format_string::Format::TextFormat(s)) => text_format(s, &fpath),
        Some(substitution_format_string::Format::TextFormatSource(ds)) => match &ds.specifier {
            Some(data_source::Specifier::InlineString(s)) => text_format(s, &fpath),
            _ => Err(format!(
                "{fpath}.text_format_source: only inline_string is supported"
            )),
        },
        Some(substitution_format_string::Format::JsonFormat(st)) => {
            let mut fields = Vec::new();
            for (k, v) in &st.fields {
                let Some(value::Kind::StringValue(s)) = &v.kind else {
                    return Err(format!(
                        "{fpath}.json_format.{k}: only string values are supported"
                    ));
                };
                fields.push((
                    k.clone(),
                    parse(s).map_err(|e| format!("{fpath}.json_format.{k}: {e}"))?,
                ));
            }
            Ok(Format::Json(fields, sf.omit_empty_values))
        }
        _ => Err(format!("{fpath}: a text or JSON format is required")),
    }
}
