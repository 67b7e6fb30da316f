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

/// A client-side TCP listener as istiod's outbound ones: `istio.stats`, then
/// tcp_proxy to `cluster`.
fn tcp_listener(cluster: &str) -> String {
    format!(
        r#"  - name: tcp
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    traffic_direction: OUTBOUND
    filter_chains:
    - filters:
      - {STATS}
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: outbound_tcp, cluster: "{cluster}" }}
"#
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

/// What the client reports of a request no sidecar answered: nothing known of the
/// destination but the `Host` it was sent to.
fn unanswered_labels(host: &str) -> Vec<(&'static str, String)> {
    let mut ls = peers("source", "unknown", "unknown");
    for k in [
        "destination_workload",
        "destination_workload_namespace",
        "destination_app",
        "destination_version",
        "destination_canonical_service",
        "destination_cluster",
        "destination_service_namespace",
    ] {
        set(&mut ls, k, "unknown");
    }
    set(&mut ls, "destination_canonical_revision", "latest");
    set(&mut ls, "destination_service", host);
    set(&mut ls, "destination_service_name", host);
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
    let unreached = unanswered_labels("server:8000");
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
const STATS: &str = r#"{ name: istio.stats, typed_config: { "@type": type.googleapis.com/stats.PluginConfig, tcp_reporting_duration: 0.2s } }"#;
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/server";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_are_labelled_from_the_exchange_and_the_certificates() {
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
        &tcp_listener("outbound|9000||server.default.svc.cluster.local"),
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
    let expect = |opened: i64, closed: i64, bytes: i64| {
        let (src, dst) = (&src, &dst);
        let (client, server) = (&client, &server);
        async move {
            for (proxy, labels) in [(client, src), (server, dst)] {
                for (metric, want) in [
                    ("istio_tcp_connections_opened_total", opened),
                    ("istio_tcp_connections_closed_total", closed),
                    ("istio_tcp_received_bytes_total", bytes),
                    ("istio_tcp_sent_bytes_total", bytes),
                ] {
                    proxy.wait_metric(&format!("{metric}{labels}"), want).await;
                }
            }
        }
    };

    // Two connections, 9 bytes each way. While the first is open the periodic report
    // (`tcp_reporting_duration`, 0.2 s here) has it opened, with its bytes so far.
    for n in 1..=2 {
        let _open = common::echo_round_trip(client.listener("tcp"), b"over mtls").await;
        if n == 1 {
            expect(1, 0, 9).await;
        }
    }
    expect(2, 2, 18).await;
}

/// The values of the samples of `name` whose labels contain each of `fragments`.
fn samples(text: &str, name: &str, fragments: &[&str]) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && fragments.iter().all(|f| l.contains(f)))
        .map(|l| l.rsplit(' ').next().unwrap().to_owned())
        .collect()
}

/// gRPC through a client sidecar with istiod's `grpc_stats` (`emit_filter_state`):
/// `request_protocol="grpc"`, the call's status from its trailers or its
/// trailers-only answer, and the message counters with the 20 peer labels only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_carry_their_status_and_message_counts() {
    let server = common::grpc_services::grpc_server().await;
    let client = Proxy::start(&bootstrap(
        &node("client"),
        &hcm_listener(
            "OUTBOUND",
            OUTBOUND_MX,
            ", tcp_reporting_duration: 0.2s",
            "{ match: { prefix: / }, route: { cluster: grpc } }",
        )
        .replace(
            "          - name: istio.stats",
            "          - { name: envoy.filters.http.grpc_stats, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig, emit_filter_state: true, stats_for_all_methods: false } }\n          - name: istio.stats",
        ),
        &static_cluster("grpc", &[server], true),
    ))
    .await;
    common::grpc_services::call_three_deny_one_stream_four(client.listener("http")).await;

    let status = |s: &str| {
        format!(
            ",request_protocol=\"grpc\",response_code=\"200\",grpc_response_status=\"{s}\",response_flags=\"-\",connection_security_policy=\"unknown\"}}"
        )
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let text = client.prometheus().await;
        let got = (
            samples(
                &text,
                "istio_requests_total",
                &["reporter=\"source\"", &status("0")],
            ),
            samples(&text, "istio_requests_total", &[&status("7")]),
            samples(
                &text,
                "istio_request_messages_total",
                &[
                    "source_workload=\"client-v1\"",
                    "destination_cluster=\"unknown\"}",
                ],
            ),
            samples(
                &text,
                "istio_response_messages_total",
                &["destination_cluster=\"unknown\"}"],
            ),
        );
        let want = (
            vec!["4".to_owned()],
            vec!["1".to_owned()],
            vec!["8".to_owned()],
            vec!["7".to_owned()],
        );
        if got == want {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{got:?} in\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // A stream still open is reported every `tcp_reporting_duration` (0.2 s here).
    let mut ads = common::grpc_services::AdsStream::open(client.listener("http")).await;
    for i in 0..2 {
        ads.exchange(&format!("open{i}")).await;
    }
    let peers = format!(
        "{{{}}}",
        render(&unanswered_labels(&client.listener("http").to_string()))
    );
    client
        .wait_metric(&format!("istio_request_messages_total{peers}"), 10)
        .await;
    client
        .wait_metric(&format!("istio_response_messages_total{peers}"), 9)
        .await;
    ads.close().await;
}

/// The `prometheus` binary (Debian's package; `scripts/test` installs it as root).
fn prometheus_bin() -> Option<String> {
    std::env::var("PROMETHEUS_BIN").ok().or_else(|| {
        ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .map(str::to_owned)
    })
}

/// `s` percent-encoded for a URL query.
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real Prometheus scraping two sidecars answers the PromQL of Istio's Grafana
/// dashboards and Kiali's graph with the series they expect: request rate by source
/// and destination workload, success rate, latency percentiles from the histogram,
/// TCP bytes. `promtool check metrics` finds nothing wrong with the `istio_*`
/// families.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_answers_istios_dashboard_queries() {
    let Some(prometheus) = prometheus_bin() else {
        common::require(
            "Debian's prometheus (scripts/test installs it when run as root)",
            false,
        );
        return;
    };
    let app = Upstream::start("app").await;
    let echo = common::tcp_echo_server().await;
    let server = Proxy::start(&bootstrap(
        &node("server"),
        &hcm_listener(
            "INBOUND",
            INBOUND_MX,
            ", disable_host_header_fallback: true",
            "{ match: { prefix: / }, route: { cluster: \"inbound|8000||\" } }",
        ),
        &static_cluster("inbound|8000||", &[app.addr], false),
    ))
    .await;
    let client = Proxy::start(&bootstrap(
        &node("client"),
        &format!(
            "{}{}",
            tcp_listener("outbound|9000||db.default.svc.cluster.local"),
            hcm_listener(
                "OUTBOUND",
                OUTBOUND_MX,
                "",
                "{ match: { prefix: /fail }, route: { cluster: nowhere } }, { match: { prefix: / }, route: { cluster: \"outbound|8000||server.default.svc.cluster.local\" } }",
            )
        ),
        &format!(
            "{}{SERVER_SERVICE}{}{}    metadata:\n      filter_metadata:\n        istio:\n          services: [{{ host: db.default.svc.cluster.local, name: db, namespace: default }}]\n",
            static_cluster(
                "outbound|8000||server.default.svc.cluster.local",
                &[server.listener("http")],
                false
            ),
            static_cluster("nowhere", &[], false),
            static_cluster("outbound|9000||db.default.svc.cluster.local", &[echo], false),
        ),
    ))
    .await;

    // The scrape, as Prometheus reads it, passes promtool's checks.
    let promtool = std::path::Path::new(&prometheus).with_file_name("promtool");
    get(client.listener("http"), "/warm-up", &[]).await;
    let text = client.prometheus().await;
    let istio: String = text
        .lines()
        .filter(|l| l.starts_with("istio_") || l.starts_with("# TYPE istio_"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut check = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(istio.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The lint findings allowed: no HELP lines (Envoy and istio-proxy write none) and
    // Istio's own name `istio_request_duration_milliseconds` (not in seconds).
    let findings: Vec<&str> = report
        .lines()
        .filter(|l| {
            !l.trim().is_empty()
                && !l.ends_with(" no help text")
                && *l
                    != "istio_request_duration_milliseconds use base unit \"seconds\" instead of \"milliseconds\""
        })
        .collect();
    assert!(findings.is_empty(), "promtool: {report}\n{istio}");

    // Prometheus, scraping both sidecars every second.
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nscrape_configs:\n- job_name: sidecars\n  metrics_path: /stats/prometheus\n  static_configs: [{{ targets: [\"{}\", \"{}\"] }}]\n",
            client.admin, server.admin
        ),
    )
    .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _prometheus = Kill(
        std::process::Command::new(&prometheus)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );
    let api: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let query = |q: String| async move {
        let (status, body) =
            common::http_get(api, &format!("/api/v1/query?query={}", query_escape(&q)))
                .await
                .unwrap_or((0, String::new()));
        assert!(status == 200 || status == 0, "{q}: {status} {body}");
        serde_json::from_str::<serde_json::Value>(&body)
            .map(|v| v["data"]["result"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default()
    };

    // Traffic while Prometheus scrapes: requests that succeed, some that fail, and
    // TCP connections.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    type Check = (&'static str, String, fn(&[serde_json::Value]) -> bool);
    let checks: [Check; 6] = [
        (
            "Istio Mesh Dashboard: global request volume",
            "round(sum(irate(istio_requests_total{reporter=\"source\"}[1m])), 0.001)".into(),
            |r| value(r, 0) > 0.0,
        ),
        (
            "Istio Mesh Dashboard: global success rate (non-5xx)",
            "sum(rate(istio_requests_total{reporter=\"source\", response_code!~\"5.*\"}[1m])) / sum(rate(istio_requests_total{reporter=\"source\"}[1m]))".into(),
            |r| (0.5..1.0).contains(&value(r, 0)),
        ),
        (
            "Istio Workload Dashboard: incoming requests by source",
            "round(sum(irate(istio_requests_total{connection_security_policy!=\"mutual_tls\", destination_workload_namespace=~\"default\", destination_workload=~\"server-v1\", reporter=~\"destination\"}[1m])) by (source_workload, source_workload_namespace, response_code), 0.001)".into(),
            |r| r.len() == 1 && r[0]["metric"]["source_workload"] == "client-v1" && r[0]["metric"]["response_code"] == "200",
        ),
        (
            "Istio Workload Dashboard: incoming request duration p99 by source",
            "(histogram_quantile(0.99, sum(irate(istio_request_duration_milliseconds_bucket{reporter=~\"destination\", destination_workload=~\"server-v1\", destination_workload_namespace=~\"default\"}[1m])) by (source_workload, source_workload_namespace, le)) / 1000)".into(),
            |r| r.len() == 1 && r[0]["metric"]["source_workload"] == "client-v1" && value(r, 0).is_finite(),
        ),
        (
            "Kiali graph: requests by source and destination",
            "sum(rate(istio_requests_total{reporter=\"source\",source_workload_namespace=\"default\"}[1m])) by (source_cluster,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,destination_cluster,destination_service_namespace,destination_service,destination_service_name,destination_workload_namespace,destination_workload,destination_canonical_service,destination_canonical_revision,request_protocol,response_code,grpc_response_status,response_flags) > 0".into(),
            |r| {
                r.iter().any(|s| {
                    s["metric"]["destination_workload"] == "server-v1"
                        && s["metric"]["destination_service"] == "server.default.svc.cluster.local"
                        && s["metric"]["response_code"] == "200"
                }) && r.iter().any(|s| s["metric"]["response_flags"] == "UH")
            },
        ),
        (
            "Kiali graph: TCP bytes by source and destination",
            "sum(rate(istio_tcp_sent_bytes_total{reporter=\"source\"}[1m])) by (source_workload, destination_service_name) > 0".into(),
            |r| r.len() == 1 && r[0]["metric"]["destination_service_name"] == "db",
        ),
    ];
    fn value(r: &[serde_json::Value], i: usize) -> f64 {
        r.get(i)
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    }
    let mut pending: Vec<usize> = (0..checks.len()).collect();
    let mut last = Vec::new();
    while !pending.is_empty() {
        for i in 0..5 {
            let path = if i == 4 { "/fail" } else { "/ok" };
            get(client.listener("http"), path, &[]).await;
        }
        common::echo_round_trip(client.listener("tcp"), b"ping").await;
        let mut still = Vec::new();
        for i in pending {
            let (what, q, ok) = &checks[i];
            let r = query(q.clone()).await;
            if !ok(&r) {
                last.push(format!("{what}: {q} → {r:?}"));
                still.push(i);
            }
        }
        pending = still;
        assert!(
            std::time::Instant::now() < deadline,
            "Prometheus never answered as Istio's dashboards expect:\n{}",
            last.join("\n")
        );
        last.clear();
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
