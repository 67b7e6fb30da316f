//! Istio's peer metadata exchanges, HTTP and TCP, between two pilotfish sidecars configured as
//! istiod 1.30 configures them (the `istio.metadata_exchange` HTTP filter in a
//! `TypedStruct`, nodes with the metadata Istio's injector sets): each sidecar's
//! identity travels in `x-envoy-peer-metadata[-id]` as istio-proxy encodes it (a
//! `Struct` with Istio's reduced key set, base64), and neither app ever sees the
//! headers. Envoy 1.40 has no such filter (it is istio-proxy's), so there is no
//! differential run; the encoding is checked byte for byte in the unit tests.
mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::{Proxy, Upstream, static_cluster};
use envoy_types::pb::google::protobuf::{Struct, value::Kind};
use http::Request;
use http_body_util::Full;
use prost::Message;

const CLIENT_ID: &str = "sidecar~10.244.0.10~client-7d4b9c-abcde.default~default.svc.cluster.local";
const SERVER_ID: &str = "sidecar~10.244.0.20~server-5f6c8d-fghij.default~default.svc.cluster.local";

/// A node as pilot-agent renders it (the parts the exchange reads, and some it
/// leaves out).
fn node(id: &str, workload: &str, pod: &str) -> String {
    format!(
        r#"node:
  id: "{id}"
  cluster: {workload}.default
  locality: {{ region: us-east1, zone: us-east1-b }}
  metadata:
    NAME: {pod}
    NAMESPACE: default
    WORKLOAD_NAME: {workload}
    CLUSTER_ID: Kubernetes
    MESH_ID: cluster.local
    ISTIO_VERSION: 1.30.3
    OWNER: kubernetes://apis/apps/v1/namespaces/default/deployments/{workload}
    LABELS:
      app: {workload}
      version: v1
      pod-template-hash: 7d4b9c
      service.istio.io/canonical-name: {workload}
      service.istio.io/canonical-revision: v1
"#
    )
}

fn hcm(filter: &str, routes: &str) -> String {
    format!(
        r#"    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: test
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{routes}]
          http_filters:
          - name: istio.metadata_exchange
            typed_config:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: type.googleapis.com/io.istio.http.peer_metadata.Config
              value: {filter}
          - {{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}
"#
    )
}

fn bootstrap(node: &str, listener: &str, clusters: &str) -> String {
    format!(
        r#"{node}admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
{listener}  clusters:
{clusters}"#
    )
}

/// istiod's inbound config of the filter.
const INBOUND: &str = "{ downstream_discovery: [{ istio_headers: {} }, { workload_discovery: {} }], downstream_propagation: [{ istio_headers: {} }] }";
/// istiod's outbound config, with `metadataExchangeHeaders.mode: IN_MESH`.
const OUTBOUND: &str = "{ upstream_discovery: [{ istio_headers: {} }, { workload_discovery: {} }], upstream_propagation: [{ istio_headers: { skip_external_clusters: true } }] }";

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> http::HeaderMap {
    let mut req = Request::get(path).header("host", "test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (status, h, _) = common::send(addr, false, req.body(Full::<Bytes>::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(status, 200, "{path}");
    h
}

/// The `Struct` an `x-envoy-peer-metadata` value carries, as strings (and `LABELS`
/// as `key=value` pairs, sorted).
fn decoded(value: &http::HeaderValue) -> Vec<(String, String)> {
    let bytes = data_encoding::BASE64
        .decode(value.as_bytes())
        .expect("standard base64");
    let s = Struct::decode(bytes.as_slice()).expect("a protobuf Struct");
    let mut out: Vec<(String, String)> = s
        .fields
        .into_iter()
        .map(|(k, v)| {
            let v = match v.kind {
                Some(Kind::StringValue(s)) => s,
                Some(Kind::StructValue(l)) => {
                    let mut pairs: Vec<String> = l
                        .fields
                        .into_iter()
                        .map(|(k, v)| match v.kind {
                            Some(Kind::StringValue(s)) => format!("{k}={s}"),
                            other => format!("{k}={other:?}"),
                        })
                        .collect();
                    pairs.sort();
                    pairs.join(",")
                }
                other => format!("{other:?}"),
            };
            (k, v)
        })
        .collect();
    out.sort();
    out
}

fn expected(workload: &str, pod: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = [
        ("AVAILABILITY_ZONE", "us-east1-b".to_owned()),
        ("CLUSTER_ID", "Kubernetes".to_owned()),
        (
            "LABELS",
            format!(
                "app={workload},service.istio.io/canonical-name={workload},service.istio.io/canonical-revision=v1,version=v1"
            ),
        ),
        ("NAME", pod.to_owned()),
        ("NAMESPACE", "default".to_owned()),
        (
            "OWNER",
            format!("kubernetes://apis/apps/v1/namespaces/default/deployments/{workload}"),
        ),
        ("REGION", "us-east1".to_owned()),
        ("WORKLOAD_NAME", workload.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    out.sort();
    out
}

fn peer_headers(h: &http::HeaderMap) -> Vec<&str> {
    ["x-envoy-peer-metadata", "x-envoy-peer-metadata-id"]
        .into_iter()
        .filter(|n| h.contains_key(*n))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_exchange_identities_and_apps_never_see_the_headers() {
    let app = Upstream::start("app").await;
    let server = Proxy::start(&bootstrap(
        &node(SERVER_ID, "server", "server-5f6c8d-fghij"),
        &hcm(
            INBOUND,
            "{ match: { prefix: / }, route: { cluster: inbound_app } }",
        ),
        &static_cluster("inbound_app", &[app.addr], false),
    ))
    .await;
    let client = Proxy::start(&bootstrap(
        &node(CLIENT_ID, "client", "client-7d4b9c-abcde"),
        &hcm(
            OUTBOUND,
            "{ match: { prefix: /direct }, route: { cluster: direct } }, \
             { match: { prefix: /out }, route: { cluster: PassthroughCluster } }, \
             { match: { prefix: / }, route: { cluster: server } }",
        ),
        &format!(
            "{}{}{}",
            static_cluster("server", &[server.listener("http")], false),
            static_cluster("direct", &[app.addr], false),
            static_cluster("PassthroughCluster", &[app.addr], false),
        ),
    ))
    .await;

    // Client app → client sidecar → server sidecar → server app: the server app sees
    // no exchange header, and neither does the client app in the response.
    let before = app.requests().len();
    let resp = get(client.listener("http"), "/mesh", &[]).await;
    assert_eq!(peer_headers(&resp), Vec::<&str>::new());
    let seen = &app.requests()[before];
    assert_eq!(seen.path, "/mesh");
    assert_eq!(peer_headers(&seen.headers), Vec::<&str>::new());

    // What the client sidecar sends (seen by an app it reaches without a sidecar in
    // between): its node id, and its node reduced as istio-proxy reduces it.
    get(client.listener("http"), "/direct", &[]).await;
    let seen = app.requests().pop().unwrap();
    assert_eq!(seen.headers["x-envoy-peer-metadata-id"], CLIENT_ID);
    assert_eq!(
        decoded(&seen.headers["x-envoy-peer-metadata"]),
        expected("client", "client-7d4b9c-abcde")
    );

    // What the server sidecar answers: its own, for each header the request carried
    // (here as an istio-proxy client would send them); its app sees neither.
    let resp = get(
        server.listener("http"),
        "/from-istio-proxy",
        &[
            (
                "x-envoy-peer-metadata-id",
                "sidecar~10.244.0.30~other.default~default.svc.cluster.local",
            ),
            (
                "x-envoy-peer-metadata",
                "Ch4KCkNMVVNURVJfSUQSEBoOc2VydmVyLWNsdXN0ZXI=",
            ),
        ],
    )
    .await;
    assert_eq!(resp["x-envoy-peer-metadata-id"], SERVER_ID);
    assert_eq!(
        decoded(&resp["x-envoy-peer-metadata"]),
        expected("server", "server-5f6c8d-fghij")
    );
    assert_eq!(
        peer_headers(&app.requests().pop().unwrap().headers),
        Vec::<&str>::new()
    );
    let resp = get(
        server.listener("http"),
        "/id-only",
        &[("x-envoy-peer-metadata-id", "x")],
    )
    .await;
    assert_eq!(peer_headers(&resp), ["x-envoy-peer-metadata-id"]);
    let resp = get(server.listener("http"), "/none", &[]).await;
    assert_eq!(peer_headers(&resp), Vec::<&str>::new());

    // Outside the mesh (`skip_external_clusters`, the PassthroughCluster): nothing is
    // sent, and what the app sent is left as it is.
    get(
        client.listener("http"),
        "/out",
        &[("x-envoy-peer-metadata-id", "the-apps-own")],
    )
    .await;
    let seen = app.requests().pop().unwrap();
    assert_eq!(seen.headers["x-envoy-peer-metadata-id"], "the-apps-own");
    assert!(!seen.headers.contains_key("x-envoy-peer-metadata"));
}

/// istiod's TCP metadata exchange config (listener chains and clusters).
const EXCHANGE: &str = r#"{ "@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange, value: { protocol: istio-peer-exchange, enable_discovery: true } }"#;

const BACK_ID: &str = "spiffe://cluster.local/ns/default/sa/server";
const FRONT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";

/// A frame as istio-proxy writes it, built here with the protobuf types: magic and
/// length (big-endian), then `Any(Struct{x-envoy-peer-metadata, -id})`.
fn istio_proxy_frame(id: &str, workload: &str) -> Vec<u8> {
    use envoy_types::pb::google::protobuf::{Any, Value};
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.into())),
    };
    let node = Struct {
        fields: [("WORKLOAD_NAME".to_owned(), s(workload))].into(),
    };
    let outer = Struct {
        fields: [
            (
                "x-envoy-peer-metadata".to_owned(),
                Value {
                    kind: Some(Kind::StructValue(node)),
                },
            ),
            ("x-envoy-peer-metadata-id".to_owned(), s(id)),
        ]
        .into(),
    };
    let any = Any {
        type_url: "type.googleapis.com/google.protobuf.Struct".into(),
        value: outer.encode_to_vec(),
    }
    .encode_to_vec();
    let mut out = 0x3D23_0467u32.to_be_bytes().to_vec();
    out.extend_from_slice(&(any.len() as u32).to_be_bytes());
    out.extend_from_slice(&any);
    out
}

/// Istio's TCP metadata exchange over mTLS that negotiated `istio-peer-exchange`:
/// between two pilotfish sidecars the echo comes back byte for byte (each side took
/// the other's frame off), and against an istio-proxy-like peer (a client writing
/// istio-proxy's frame) the server sidecar's own frame comes first, carrying its node,
/// then the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_metadata_exchange_frames_never_reach_the_app() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = common::certs::Ca::new("cluster.local");
    let dir = tempfile::tempdir().unwrap();
    ca.leaf(BACK_ID).write(dir.path(), "back");
    ca.leaf(FRONT_ID).write(dir.path(), "front");
    let ca_path = common::certs::write_ca(dir.path(), "ca", &ca.pem);
    let file = |n: &str| dir.path().join(n).display().to_string();
    let echo = common::tcp_echo_server().await;
    let app = Upstream::start("app").await;
    // The back's chains as istiod's inbound has them: TLS, the exchange, then
    // tcp_proxy (listener `tcp`) or a connection manager (listener `http`).
    let listener = |name: &str, terminal: &str| {
        format!(
            r#"  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [istio-peer-exchange, h2, http/1.1]
            tls_certificates: [{{ certificate_chain: {{ filename: "{}" }}, private_key: {{ filename: "{}" }} }}]
            validation_context: {{ trusted_ca: {{ filename: "{}" }} }}
      filters:
      - {{ name: istio.metadata_exchange, typed_config: {EXCHANGE} }}
{terminal}"#,
            file("back.crt"),
            file("back.key"),
            ca_path.display(),
        )
    };
    let back = Proxy::start(&format!(
        "{}admin:\n  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}\nstatic_resources:\n  listeners:\n{}{}  clusters:\n{}{}",
        node(SERVER_ID, "server", "server-5f6c8d-fghij"),
        listener(
            "tcp",
            r#"      - name: envoy.filters.network.tcp_proxy
        typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: inbound_tcp, cluster: echo }
"#
        ),
        listener(
            "http",
            r#"      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound_http
          route_config:
            virtual_hosts:
            - { name: all, domains: ["*"], routes: [{ match: { prefix: / }, route: { cluster: app } }] }
          http_filters:
          - { name: envoy.filters.http.router, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }
"#
        ),
        static_cluster("echo", &[echo], false),
        static_cluster("app", &[app.addr], false),
    ))
    .await;
    let front = Proxy::start(&format!(
        r#"{}admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: tcp
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: outbound_tcp, cluster: mesh }}
  clusters:
{}    filters:
    - {{ name: istio.metadata_exchange, typed_config: {EXCHANGE} }}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          alpn_protocols: [istio-peer-exchange, istio]
          tls_certificates: [{{ certificate_chain: {{ filename: "{}" }}, private_key: {{ filename: "{}" }} }}]
          validation_context: {{ trusted_ca: {{ filename: "{}" }}, match_subject_alt_names: [{{ exact: "{BACK_ID}" }}] }}
"#,
        node(CLIENT_ID, "client", "client-7d4b9c-abcde"),
        static_cluster("mesh", &[back.listener("tcp")], false),
        file("front.crt"),
        file("front.key"),
        ca_path.display(),
    ))
    .await;

    // Sidecar to sidecar: the app's bytes, and only they, come back.
    drop(common::echo_round_trip(front.listener("tcp"), b"over mtls").await);
    for p in [&front, &back] {
        for (name, want) in [
            ("alpn_protocol_found", 1),
            ("metadata_added", 1),
            ("initial_header_not_found", 0),
            ("header_not_found", 0),
        ] {
            assert_eq!(
                p.stat(&format!("metadata_exchange.{name}")).await,
                Some(want),
                "{name}"
            );
        }
    }

    // An istio-proxy-like client: its frame, then data; the sidecar's frame first.
    let connector = tokio_rustls::TlsConnector::from(common::certs::client_config(
        &ca,
        &ca.leaf(FRONT_ID),
        BACK_ID,
        &["istio-peer-exchange", "istio"],
    ));
    let connect = |listener: &str| {
        let (addr, connector) = (back.listener(listener), connector.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("back").unwrap();
            connector.connect(name, tcp).await.unwrap()
        }
    };
    let mut tls = connect("tcp").await;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"istio-peer-exchange"[..])
    );
    let mut out = istio_proxy_frame(
        "sidecar~10.244.0.99~other.default~default.svc.cluster.local",
        "other",
    );
    out.extend_from_slice(b"hello");
    tls.write_all(&out).await.unwrap();
    let read = async {
        let mut header = [0u8; 8];
        tls.read_exact(&mut header).await.unwrap();
        assert_eq!(header[..4], [0x3d, 0x23, 0x04, 0x67]);
        let len = u32::from_be_bytes(header[4..].try_into().unwrap()) as usize;
        let mut any = vec![0u8; len];
        tls.read_exact(&mut any).await.unwrap();
        let mut data = [0u8; 5];
        tls.read_exact(&mut data).await.unwrap();
        (any, data)
    };
    let (any, data) = tokio::time::timeout(std::time::Duration::from_secs(5), read)
        .await
        .expect("the frame and the echo");
    assert_eq!(&data, b"hello", "the peer's frame never reached the app");
    let any = envoy_types::pb::google::protobuf::Any::decode(any.as_slice()).unwrap();
    assert_eq!(any.type_url, "type.googleapis.com/google.protobuf.Struct");
    let outer = Struct::decode(any.value.as_slice()).unwrap();
    assert!(matches!(
        &outer.fields["x-envoy-peer-metadata-id"].kind,
        Some(Kind::StringValue(id)) if id == SERVER_ID
    ));
    let Some(Kind::StructValue(node)) = &outer.fields["x-envoy-peer-metadata"].kind else {
        panic!("no node struct");
    };
    assert!(matches!(
        &node.fields["WORKLOAD_NAME"].kind,
        Some(Kind::StringValue(w)) if w == "server"
    ));

    // The same on a connection manager's chain: the frame comes off before the HTTP
    // codec (and HTTP/2 detection) sees the request.
    let mut tls = connect("http").await;
    let mut out = istio_proxy_frame(
        "sidecar~10.244.0.99~other.default~default.svc.cluster.local",
        "other",
    );
    out.extend_from_slice(b"GET /after-frame HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    tls.write_all(&out).await.unwrap();
    let mut all = Vec::new();
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(5), tls.read_to_end(&mut all)).await;
    assert!(all.len() > 8 && all[..4] == [0x3d, 0x23, 0x04, 0x67]);
    let len = u32::from_be_bytes(all[4..8].try_into().unwrap()) as usize;
    let reply = String::from_utf8_lossy(&all[8 + len..]).to_string();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(app.requests().pop().unwrap().path, "/after-frame");
}
