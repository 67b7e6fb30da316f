//! The values of Istio's 25 standard labels for one request or connection, from this
//! node's metadata, the peer the exchanges found, the TLS identities and the
//! destination service, following istio-proxy's per-reporter rules: a missing peer
//! value is `unknown` (a canonical revision `latest`), a missing local one empty.
use std::{borrow::Cow, sync::OnceLock};

use super::config::TAGS;
use crate::istio::peer::Peer;

pub const UNKNOWN: &str = "unknown";

/// This node, as its metadata (`ISTIO_META_*`) describes it.
#[derive(Debug, Default)]
pub struct Local {
    pub workload: String,
    pub namespace: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub app: String,
    pub version: String,
    pub cluster: String,
    pub istio_version: String,
    /// The node (`id`, `cluster`, `metadata`) for `xds.node.*` expressions.
    pub node: serde_json::Value,
}

/// Read once, on first use (after the bootstrap has set the node).
pub fn local() -> &'static Local {
    static LOCAL: OnceLock<Local> = OnceLock::new();
    LOCAL.get_or_init(|| {
        let Some(node) = crate::istio::peer_metadata::node() else {
            return Local::default();
        };
        let meta = node
            .metadata
            .as_ref()
            .map(struct_json)
            .unwrap_or(serde_json::Value::Null);
        let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        let labels = &meta["LABELS"];
        Local {
            workload: s(&meta["WORKLOAD_NAME"]),
            namespace: s(&meta["NAMESPACE"]),
            canonical_service: s(&labels["service.istio.io/canonical-name"]),
            canonical_revision: s(&labels["service.istio.io/canonical-revision"]),
            app: s(&labels["app"]),
            version: s(&labels["version"]),
            cluster: s(&meta["CLUSTER_ID"]),
            istio_version: s(&meta["ISTIO_VERSION"]),
            node: serde_json::json!({
                "id": node.id,
                "cluster": node.cluster,
                "metadata": meta,
            }),
        }
    })
}

/// A protobuf `Struct` as JSON.
pub fn struct_json(s: &envoy_types::pb::google::protobuf::Struct) -> serde_json::Value {
    use envoy_types::pb::google::protobuf::value::Kind;
    fn value(v: &envoy_types::pb::google::protobuf::Value) -> serde_json::Value {
        match &v.kind {
            Some(Kind::StringValue(s)) => s.clone().into(),
            Some(Kind::BoolValue(b)) => (*b).into(),
            Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
                .map(serde_json::Value::Number)
                .unwrap_or_default(),
            Some(Kind::StructValue(s)) => struct_json(s),
            Some(Kind::ListValue(l)) => l.values.iter().map(value).collect(),
            Some(Kind::NullValue(_)) | None => serde_json::Value::Null,
        }
    }
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), value(v)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The cluster's `filter_metadata.istio.services[0]`: the service istiod built it for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Service {
    pub host: String,
    pub name: String,
    pub namespace: String,
}

/// Which side this proxy reports as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter {
    Source,
    Destination,
}

/// What one request or connection knew when it ended.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub reporter: Reporter,
    /// The other workload: the downstream one for a destination reporter, the upstream
    /// one for a source reporter.
    pub peer: Option<&'a Peer>,
    pub peer_principal: Option<&'a str>,
    pub local_principal: Option<&'a str>,
    /// The request's `Host` / `:authority`, unless the fallback is disabled.
    pub host: Option<&'a str>,
    pub route_name: Option<&'a str>,
    pub cluster_name: Option<&'a str>,
    pub service: Option<&'a Service>,
    /// `http`, `grpc` or `tcp`.
    pub protocol: &'static str,
    pub response_code: u16,
    /// The gRPC status; `None` for a request that is not gRPC or had none.
    pub grpc_status: Option<u32>,
    /// Envoy's short response flags, `-` when none.
    pub response_flags: &'a str,
}

impl Facts<'_> {
    /// Nothing known but the side and the protocol: no peer, no identities, no
    /// destination, response code 0 and no flags.
    pub fn new(reporter: Reporter, protocol: &'static str) -> Self {
        Facts {
            reporter,
            peer: None,
            peer_principal: None,
            local_principal: None,
            host: None,
            route_name: None,
            cluster_name: None,
            service: None,
            protocol,
            response_code: 0,
            grpc_status: None,
            response_flags: "-",
        }
    }
}

const PASSTHROUGH_CLUSTERS: [&str; 5] = [
    "BlackHoleCluster",
    "PassthroughCluster",
    "InboundPassthroughCluster",
    "InboundPassthroughClusterIpv4",
    "InboundPassthroughClusterIpv6",
];

/// The 25 values, in [`TAGS`] order.
pub fn standard<'a>(f: &Facts<'a>, local: &'a Local) -> [Cow<'a, str>; TAGS.len()] {
    let or_unknown = |v: Option<&'a str>| -> Cow<'a, str> {
        Cow::Borrowed(v.filter(|v| !v.is_empty()).unwrap_or(UNKNOWN))
    };
    let peer = |get: fn(&'a Peer) -> &'a str| or_unknown(f.peer.map(get));
    let peer_revision = match f.peer.map(|p| p.canonical_revision.as_str()) {
        Some(r) if !r.is_empty() => r,
        _ => "latest",
    };
    // The peer's namespace: from its SPIFFE identity first.
    let peer_namespace = f
        .peer_principal
        .and_then(namespace_of)
        .or(f.peer.map(|p| p.namespace.as_str()))
        .filter(|n| !n.is_empty());
    let peer_principal = f
        .peer_principal
        .filter(|p| !p.is_empty())
        .or(f.peer.map(|p| p.identity.as_str()));
    let local_principal = f.local_principal.filter(|p| !p.is_empty());

    // The destination service: the Host header, then the route or cluster.
    let mut host = f.host;
    let mut name = f.host;
    let mut namespace = None;
    match f.route_name {
        Some("block_all") => name = Some("BlackHoleCluster"),
        Some("allow_any") => name = Some("PassthroughCluster"),
        _ => match f.cluster_name {
            Some(c) if PASSTHROUGH_CLUSTERS.contains(&c) => name = Some(c),
            _ => {
                if let Some(s) = f.service {
                    if !s.host.is_empty() {
                        host = Some(&s.host);
                    }
                    if !s.namespace.is_empty() {
                        namespace = Some(s.namespace.as_str());
                    }
                    name = if s.name.is_empty() {
                        s.host.split('.').next()
                    } else {
                        Some(&s.name)
                    };
                }
            }
        },
    }
    let code = Cow::Owned(f.response_code.to_string());
    let grpc: Cow<'a, str> = match f.grpc_status {
        Some(s) => Cow::Owned(s.to_string()),
        None => Cow::Borrowed(""),
    };
    let b = |s: &'a str| Cow::Borrowed(s);
    match f.reporter {
        Reporter::Source => [
            b("source"),
            b(&local.workload),
            b(&local.canonical_service),
            b(&local.canonical_revision),
            b(&local.namespace),
            or_unknown(local_principal),
            b(&local.app),
            b(&local.version),
            b(&local.cluster),
            peer(|p| &p.workload),
            or_unknown(peer_namespace),
            or_unknown(peer_principal),
            peer(|p| &p.app),
            peer(|p| &p.version),
            or_unknown(host),
            peer(|p| &p.canonical_service),
            b(peer_revision),
            or_unknown(name),
            or_unknown(namespace.or(peer_namespace)),
            peer(|p| &p.cluster),
            b(f.protocol),
            code,
            grpc,
            b(f.response_flags),
            b(UNKNOWN),
        ],
        Reporter::Destination => {
            let mtls = peer_principal.is_some_and(|p| !p.is_empty()) && local_principal.is_some();
            let local_service = || b(&local.canonical_service);
            [
                b("destination"),
                peer(|p| &p.workload),
                peer(|p| &p.canonical_service),
                b(peer_revision),
                or_unknown(peer_namespace),
                or_unknown(peer_principal),
                peer(|p| &p.app),
                peer(|p| &p.version),
                peer(|p| &p.cluster),
                b(&local.workload),
                b(&local.namespace),
                or_unknown(local_principal),
                b(&local.app),
                b(&local.version),
                host.filter(|h| !h.is_empty())
                    .map(b)
                    .unwrap_or_else(local_service),
                b(&local.canonical_service),
                b(&local.canonical_revision),
                name.filter(|n| !n.is_empty())
                    .map(b)
                    .unwrap_or_else(local_service),
                b(&local.namespace),
                b(&local.cluster),
                b(f.protocol),
                code,
                grpc,
                b(f.response_flags),
                b(if mtls { "mutual_tls" } else { "none" }),
            ]
        }
    }
}

/// `<ns>` of a SPIFFE identity `…/ns/<ns>/…`.
fn namespace_of(principal: &str) -> Option<&str> {
    let rest = &principal[principal.find("/ns/")? + 4..];
    Some(rest.split('/').next().unwrap_or(rest))
}

/// The gRPC status of a response: `grpc-status` from the trailers, else the headers,
/// else mapped from the HTTP status as Envoy maps it.
pub fn grpc_status(header: Option<u32>, http: u16) -> Option<u32> {
    if header.is_some() {
        return header;
    }
    if http == 0 {
        return None;
    }
    Some(match http {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> Local {
        Local {
            workload: "productpage-v1".into(),
            namespace: "default".into(),
            canonical_service: "productpage".into(),
            canonical_revision: "v1".into(),
            app: "productpage".into(),
            version: "v1".into(),
            cluster: "Kubernetes".into(),
            ..Default::default()
        }
    }

    fn facts(reporter: Reporter) -> Facts<'static> {
        Facts {
            response_code: 200,
            ..Facts::new(reporter, "http")
        }
    }

    fn labels(f: &Facts, l: &Local) -> Vec<(&'static str, String)> {
        TAGS.iter()
            .copied()
            .zip(standard(f, l).into_iter().map(|v| v.into_owned()))
            .collect()
    }

    fn get(ls: &[(&'static str, String)], k: &str) -> String {
        ls.iter().find(|(n, _)| *n == k).unwrap().1.clone()
    }

    #[test]
    fn a_client_without_a_peer_reports_unknowns_and_latest() {
        let l = local();
        let service = Service {
            host: "reviews.default.svc.cluster.local".into(),
            name: "reviews".into(),
            namespace: "default".into(),
        };
        let f = Facts {
            host: Some("reviews:9080"),
            cluster_name: Some("outbound|9080||reviews.default.svc.cluster.local"),
            service: Some(&service),
            ..facts(Reporter::Source)
        };
        let ls = labels(&f, &l);
        assert_eq!(get(&ls, "reporter"), "source");
        assert_eq!(get(&ls, "source_workload"), "productpage-v1");
        assert_eq!(get(&ls, "source_principal"), "unknown");
        assert_eq!(get(&ls, "destination_workload"), "unknown");
        assert_eq!(get(&ls, "destination_canonical_revision"), "latest");
        assert_eq!(
            get(&ls, "destination_service"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(get(&ls, "destination_service_name"), "reviews");
        assert_eq!(get(&ls, "destination_service_namespace"), "default");
        assert_eq!(get(&ls, "grpc_response_status"), "");
        assert_eq!(get(&ls, "connection_security_policy"), "unknown");
    }

    #[test]
    fn a_server_reads_the_peer_and_the_identities() {
        let l = local();
        let peer = Peer {
            workload: "ratings-v1".into(),
            namespace: "other".into(),
            canonical_service: "ratings".into(),
            app: "ratings".into(),
            version: "v1".into(),
            cluster: "Kubernetes".into(),
            ..Default::default()
        };
        let f = Facts {
            peer: Some(&peer),
            peer_principal: Some("spiffe://cluster.local/ns/bookinfo/sa/ratings"),
            local_principal: Some("spiffe://cluster.local/ns/default/sa/productpage"),
            host: None,
            cluster_name: Some("inbound|9080||"),
            ..facts(Reporter::Destination)
        };
        let ls = labels(&f, &l);
        assert_eq!(get(&ls, "source_workload"), "ratings-v1");
        assert_eq!(
            get(&ls, "source_workload_namespace"),
            "bookinfo",
            "the identity's namespace first"
        );
        assert_eq!(get(&ls, "source_canonical_revision"), "latest");
        assert_eq!(get(&ls, "destination_workload"), "productpage-v1");
        assert_eq!(
            get(&ls, "destination_principal"),
            "spiffe://cluster.local/ns/default/sa/productpage"
        );
        assert_eq!(
            get(&ls, "destination_service"),
            "productpage",
            "the local canonical service without host or cluster service"
        );
        assert_eq!(get(&ls, "destination_service_namespace"), "default");
        assert_eq!(get(&ls, "connection_security_policy"), "mutual_tls");
        let plain = Facts {
            peer_principal: None,
            ..f
        };
        assert_eq!(
            get(&labels(&plain, &l), "connection_security_policy"),
            "none"
        );
    }

    #[test]
    fn passthrough_and_block_all_name_the_service() {
        let l = local();
        let f = Facts {
            host: Some("httpbin.org"),
            route_name: Some("allow_any"),
            cluster_name: Some("PassthroughCluster"),
            ..facts(Reporter::Source)
        };
        let ls = labels(&f, &l);
        assert_eq!(get(&ls, "destination_service"), "httpbin.org");
        assert_eq!(get(&ls, "destination_service_name"), "PassthroughCluster");
        let tcp = Facts {
            host: None,
            route_name: None,
            protocol: "tcp",
            ..f
        };
        let ls = labels(&tcp, &l);
        assert_eq!(get(&ls, "destination_service"), "unknown");
        assert_eq!(get(&ls, "destination_service_name"), "PassthroughCluster");
    }

    #[test]
    fn grpc_status_maps_http_codes_as_envoy() {
        assert_eq!(grpc_status(Some(5), 200), Some(5));
        assert_eq!(grpc_status(None, 503), Some(14));
        assert_eq!(grpc_status(None, 404), Some(12));
        assert_eq!(grpc_status(None, 500), Some(2));
        assert_eq!(grpc_status(None, 200), Some(2));
        assert_eq!(grpc_status(None, 0), None);
    }
}
