//! Istio's standard metrics (`istio.stats`) between two pilotfish sidecars configured as
//! istiod 1.30 configures them: a client sidecar (OUTBOUND listener, reporter
//! `source`) and a server sidecar (INBOUND listener, reporter `destination`), nodes
//! with the metadata Istio's injector sets, the peer found by the metadata exchanges
//! (HTTP headers; the TCP frame over mTLS). After known traffic, each sidecar's
//! `/stats/prometheus` carries the series istio-proxy's own e2e tests expect, with
//! Istio's label order and values. Envoy has no `istio.stats` (it is istio-proxy's),
//! so nothing here is differential.
mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::{Proxy, Upstream, static_cluster};
use http::Request;
use http_body_util::Full;

fn node(workload: &str) -> String {
    format!(
        r#"node:
  id: "sidecar~10.244.0.10~{workload}-7d4b9c-abcde.default~default.svc.cluster.local"
  cluster: {workload}.default
  metadata:
    NAME: {workload}-7d4b9c-abcde
    NAMESPACE: default
    WORKLOAD_NAME: {workload}-v1
    CLUSTER_ID: Kubernetes
    MESH_ID: cluster.local
    ISTIO_VERSION: 1.30.3
    LABELS:
      app: {workload}
      version: v1
      service.istio.io/canonical-name: {workload}
      service.istio.io/canonical-revision: v1
"#
    )
}

/// istiod's peer metadata filter configs.
const INBOUND_MX: &str = "{ downstream_discovery: [{ istio_headers: {} }, { workload_discovery: {} }], downstream_propagation: [{ istio_headers: {} }] }";
const OUTBOUND_MX: &str = "{ upstream_discovery: [{ istio_headers: {} }, { workload_discovery: {} }], upstream_propagation: [{ istio_headers: { skip_external_clusters: true } }] }";

/// A listener with a connection manager as istiod builds a sidecar's: the peer
/// metadata filter first, `istio.stats` last before the router.
fn hcm_listener(direction: &str, mx: &str, stats: &str, routes: &str) -> String {
    hcm_listener_on("http", "", direction, mx, stats, routes)
}

/// The same on listener `name`, with a chain `transport_socket` (one line of YAML
/// flow, or empty).
fn hcm_listener_on(
    name: &str,
    tls: &str,
    direction: &str,
    mx: &str,
    stats: &str,
    routes: &str,
) -> String {
    let tls = if tls.is_empty() {
        String::new()
    } else {
        format!("{tls}\n      ")
    };
    format!(
        r#"  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    traffic_direction: {direction}
    filter_chains:
    - {tls}filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: test
          route_config:
            name: test-routes
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{routes}]
          http_filters:
          - name: istio.metadata_exchange
            typed_config:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: type.googleapis.com/io.istio.http.peer_metadata.Config
              value: {mx}
          - name: istio.stats
            typed_config: {{ "@type": type.googleapis.com/stats.PluginConfig{stats} }}
          - {{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}
"#
    )
}

fn bootstrap(node: &str, listeners: &str, clusters: &str) -> String {
    format!(
        "{node}admin:\n  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}\nstatic_resources:\n  listeners:\n{listeners}  clusters:\n{clusters}"
    )
}

/// The metadata istiod puts on an outbound cluster of a service.
const SERVER_SERVICE: &str = "    metadata:\n      filter_metadata:\n        istio:\n          services: [{ host: server.default.svc.cluster.local, name: server, namespace: default }]\n";

/// One sample line's labels, in Istio's order, from `name=value` pairs.
fn labels(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect::<Vec<_>>()
        .join(",")
}

/// The 20 peer labels of a client `client-v1` talking to `server-v1`.
fn peers(reporter: &str, src_principal: &str, dst_principal: &str) -> Vec<(&'static str, String)> {
    [
        ("reporter", reporter),
        ("source_workload", "client-v1"),
        ("source_canonical_service", "client"),
        ("source_canonical_revision", "v1"),
        ("source_workload_namespace", "default"),
        ("source_principal", src_principal),
        ("source_app", "client"),
        ("source_version", "v1"),
        ("source_cluster", "Kubernetes"),
        ("destination_workload", "server-v1"),
        ("destination_workload_namespace", "default"),
        ("destination_principal", dst_principal),
        ("destination_app", "server"),
        ("destination_version", "v1"),
        ("destination_service", ""),
        ("destination_canonical_service", "server"),
        ("destination_canonical_revision", "v1"),
        ("destination_service_name", ""),
        ("destination_service_namespace", "default"),
        ("destination_cluster", "Kubernetes"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect()
}

fn set(ls: &mut [(&'static str, String)], k: &str, v: &str) {
    ls.iter_mut().find(|(n, _)| *n == k).unwrap().1 = v.to_owned();
}

/// What the client reports: its cluster's service names the destination.
fn source_labels(src_principal: &str, dst_principal: &str) -> Vec<(&'static str, String)> {
    let mut ls = peers("source", src_principal, dst_principal);
    set(
        &mut ls,
        "destination_service",
        "server.default.svc.cluster.local",
    );
    set(&mut ls, "destination_service_name", "server");
    ls
}

/// What the server reports: its inbound cluster has no service metadata and the Host
/// header is not read, so its own canonical service names the destination.
fn destination_labels(src_principal: &str, dst_principal: &str) -> Vec<(&'static str, String)> {
    let mut ls = peers("destination", src_principal, dst_principal);
    set(&mut ls, "destination_service", "server");
    set(&mut ls, "destination_service_name", "server");
    ls
}

fn render(ls: &[(&'static str, String)]) -> String {
    labels(&ls.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>())
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut req = Request::get(path).header("host", "server:8000");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    common::send(addr, false, req.body(Full::<Bytes>::default()).unwrap())
        .await
        .unwrap()
        .0
        .as_u16()
}

/// The two workloads' certificates and Istio's root, written to files.
struct Pki {
    _dir: tempfile::TempDir,
    server: (std::path::PathBuf, std::path::PathBuf),
    client: (std::path::PathBuf, std::path::PathBuf),
    ca: std::path::PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let ca = common::certs::Ca::new("cluster.local");
        let dir = tempfile::tempdir().unwrap();
        Pki {
            server: ca.leaf(SERVER_ID).write(dir.path(), "server"),
            client: ca.leaf(CLIENT_ID).write(dir.path(), "client"),
            ca: common::certs::write_ca(dir.path(), "ca", &ca.pem),
            _dir: dir,
        }
    }

    /// The server's inbound mTLS, offering `alpn`.
    fn server_socket(&self, alpn: &[&str]) -> String {
        common::certs::mtls_socket(&self.server, &self.ca, alpn, None)
    }

    /// The client's mTLS to the server, offering `alpn`.
    fn client_socket(&self, alpn: &[&str]) -> String {
        common::certs::mtls_socket(&self.client, &self.ca, alpn, Some(SERVER_ID))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_are_labelled_as_istio_proxy_labels_them() {
    let app = Upstream::start("app").await;
    let pki = Pki::new();
    let server_stats = ", disable_host_header_fallback: true, metrics: [{ name: requests_total, dimensions: { source_version: \"has(request.headers['x-version']) ? request.headers['x-version'] : 'none'\" }, tags_to_remove: [response_flags] }]";
    let inbound_route = "{ match: { prefix: / }, route: { cluster: \"inbound|8000||\" } }";
    // The same connection manager behind mutual TLS, as istiod's inbound mTLS chain.
    let server_tls = pki.server_socket(&["h2", "http/1.1"]);
    // The server: istiod's inbound config (`disable_host_header_fallback`), and a
    // Telemetry override as istiod renders one: `source_version` from a request
    // header, `response_flags` removed, on `requests_total` only.
    let server = Proxy::start(&bootstrap(
        &node("server"),
        &format!(
            "{}{}",
            hcm_listener("INBOUND", INBOUND_MX, server_stats, inbound_route),
            hcm_listener_on(
                "https",
                &server_tls,
                "INBOUND",
                INBOUND_MX,
                server_stats,
                inbound_route
            ),
        ),
        &static_cluster("inbound|8000||", &[app.addr], false),
    ))
    .await;
    let client = Proxy::start(&bootstrap(
        &node("client"),
        &hcm_listener(
            "OUTBOUND",
            OUTBOUND_MX,
            "",
            "{ match: { prefix: /gone }, route: { cluster: nowhere } }, { match: { prefix: /mtls }, route: { cluster: mtls } }, { match: { prefix: / }, route: { cluster: \"outbound|8000||server.default.svc.cluster.local\" } }",
        ),
        &format!(
            "{}{SERVER_SERVICE}{}{}{SERVER_SERVICE}{}",
            static_cluster(
                "outbound|8000||server.default.svc.cluster.local",
                &[server.listener("http")],
                false
            ),
            // A cluster with no endpoint: 503, `UH`.
            static_cluster("nowhere", &[], false),
            // Istio mTLS to the server's TLS chain.
            static_cluster("mtls", &[server.listener("https")], false),
            format_args!("    {}\n", pki.client_socket(&["http/1.1"])),
        ),
    ))
    .await;

    for _ in 0..3 {
        assert_eq!(get(client.listener("http"), "/ok", &[]).await, 200);
    }
    assert_eq!(
        get(client.listener("http"), "/ok", &[("x-version", "canary")]).await,
        200
    );
    assert_eq!(get(client.listener("http"), "/gone", &[]).await, 503);

    // The client reports as the source: the server's identity from its response
    // headers, the service from the cluster's metadata.
    let src = source_labels("unknown", "unknown");
    let tail = |code: &str, flags: &str, policy: &str| {
        format!(
            ",request_protocol=\"http\",response_code=\"{code}\",grpc_response_status=\"\",response_flags=\"{flags}\",connection_security_policy=\"{policy}\""
        )
    };
    let ok = format!("{{{}{}}}", render(&src), tail("200", "-", "unknown"));
    client
        .wait_metric(&format!("istio_requests_total{ok}"), 4)
        .await;
    // No sidecar answered the 503: nothing is known of a peer.
    let mut unreached = src.clone();
    for k in [
        "destination_workload",
        "destination_workload_namespace",
        "destination_app",
        "destination_version",
        "destination_canonical_service",
        "destination_cluster",
        "destination_service_namespace",
    ] {
        set(&mut unreached, k, "unknown");
    }
    set(&mut unreached, "destination_canonical_revision", "latest");
    set(&mut unreached, "destination_service", "server:8000");
    set(&mut unreached, "destination_service_name", "server:8000");
    client
        .wait_metric(
            &format!(
                "istio_requests_total{{{}{}}}",
                render(&unreached),
                tail("503", "UH", "unknown")
            ),
            1,
        )
        .await;
    let with_le = |l: &str, le: &str| format!("{},le=\"{le}\"}}", &l[..l.len() - 1]);
    assert_eq!(
        client
            .metric(&format!(
                "istio_request_duration_milliseconds_bucket{}",
                with_le(&ok, "+Inf")
            ))
            .await,
        Some(4)
    );
    assert_eq!(
        client
            .metric(&format!("istio_request_bytes_count{ok}"))
            .await,
        Some(4)
    );
    assert_eq!(
        client
            .metric(&format!("istio_response_bytes_count{ok}"))
            .await,
        Some(4)
    );
    let text = client.prometheus().await;
    for t in [
        "# TYPE istio_requests_total counter",
        "# TYPE istio_request_duration_milliseconds histogram",
        "# TYPE istio_request_bytes histogram",
        "istio_build{component=\"proxy\",tag=\"1.30.3\"} 1",
    ] {
        assert!(text.contains(t), "{t} in\n{text}");
    }
    // Envoy's default buckets, the `le` label last.
    assert!(text.contains(&format!(
        "istio_request_duration_milliseconds_bucket{}",
        with_le(&ok, "3600000")
    )));

    // The server reports as the destination: the client's identity from its request
    // headers, the service its own canonical name (no Host fallback, no metadata),
    // the override applied to `requests_total` only.
    let dst = destination_labels("unknown", "unknown");
    let server_tail = ",request_protocol=\"http\",response_code=\"200\",grpc_response_status=\"\",connection_security_policy=\"none\"";
    for (version, n) in [("none", 3), ("canary", 1)] {
        let mut l = dst.clone();
        set(&mut l, "source_version", version);
        server
            .wait_metric(
                &format!("istio_requests_total{{{}{server_tail}}}", render(&l)),
                n,
            )
            .await;
    }
    assert_eq!(
        server
            .metric(&format!(
                "istio_request_bytes_count{{{}{}}}",
                render(&dst),
                tail("200", "-", "none")
            ))
            .await,
        Some(4),
        "the other metrics keep the standard labels"
    );

    // Over mutual TLS both sides know both identities; the server calls it mutual_tls.
    assert_eq!(get(client.listener("http"), "/mtls", &[]).await, 200);
    let src = source_labels(CLIENT_ID, SERVER_ID);
    client
        .wait_metric(
            &format!(
                "istio_requests_total{{{}{}}}",
                render(&src),
                tail("200", "-", "unknown")
            ),
            1,
        )
        .await;
    let mut dst = destination_labels(CLIENT_ID, SERVER_ID);
    set(&mut dst, "source_version", "none");
    server
        .wait_metric(
            &format!(
                "istio_requests_total{{{},request_protocol=\"http\",response_code=\"200\",grpc_response_status=\"\",connection_security_policy=\"mutual_tls\"}}",
                render(&dst)
            ),
            1,
        )
        .await;
}

const EXCHANGE: &str = r#"{ "@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange, value: { protocol: istio-peer-exchange, enable_discovery: true } }"#;
const STATS: &str =
    r#"{ name: istio.stats, typed_config: { "@type": type.googleapis.com/stats.PluginConfig } }"#;
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/server";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_are_labelled_from_the_exchange_and_the_certificates() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let echo = common::tcp_echo_server().await;
    let server = Proxy::start(&bootstrap(
        &node("server"),
        &format!(
            r#"  - name: tcp
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    traffic_direction: INBOUND
    filter_chains:
    - {}
      filters:
      - {{ name: istio.metadata_exchange, typed_config: {EXCHANGE} }}
      - {STATS}
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: inbound_tcp, cluster: "inbound|9000||" }}
"#,
            pki.server_socket(&["istio-peer-exchange", "h2", "http/1.1"]),
        ),
        &static_cluster("inbound|9000||", &[echo], false),
    ))
    .await;
    let client = Proxy::start(&bootstrap(
        &node("client"),
        &format!(
            r#"  - name: tcp
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    traffic_direction: OUTBOUND
    filter_chains:
    - filters:
      - {STATS}
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: outbound_tcp, cluster: "outbound|9000||server.default.svc.cluster.local" }}
"#
        ),
        &format!(
            r#"{}{SERVER_SERVICE}    filters:
    - {{ name: istio.metadata_exchange, typed_config: {EXCHANGE} }}
    {}
"#,
            static_cluster(
                "outbound|9000||server.default.svc.cluster.local",
                &[server.listener("tcp")],
                false
            ),
            pki.client_socket(&["istio-peer-exchange", "istio"]),
        ),
    ))
    .await;

    // Two connections, 9 bytes each way.
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(client.listener("tcp"))
            .await
            .unwrap();
        s.write_all(b"over mtls").await.unwrap();
        let mut got = [0u8; 9];
        tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .expect("the echo")
            .unwrap();
        assert_eq!(&got, b"over mtls");
    }

    // The client: the server's workload from its frame, both identities from the
    // certificates (the server's namespace from its SPIFFE id), the service from
    // the cluster's metadata.
    let src = source_labels(CLIENT_ID, SERVER_ID);
    let src = format!(
        "{{{},request_protocol=\"tcp\",response_flags=\"-\",connection_security_policy=\"unknown\"}}",
        render(&src)
    );
    // The server: the client's workload from its frame, mutual TLS.
    let dst = destination_labels(CLIENT_ID, SERVER_ID);
    let dst = format!(
        "{{{},request_protocol=\"tcp\",response_flags=\"-\",connection_security_policy=\"mutual_tls\"}}",
        render(&dst)
    );
    for (proxy, labels) in [(&client, &src), (&server, &dst)] {
        for (metric, want) in [
            ("istio_tcp_connections_opened_total", 2),
            ("istio_tcp_connections_closed_total", 2),
            ("istio_tcp_received_bytes_total", 18),
            ("istio_tcp_sent_bytes_total", 18),
        ] {
            proxy.wait_metric(&format!("{metric}{labels}"), want).await;
        }
    }
}
