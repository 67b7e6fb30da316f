//! Mutual TLS between sidecars, against the real Envoy: a front proxy (plain HTTP in,
//! `UpstreamTlsContext` out) and a back proxy (`DownstreamTlsContext` in, plain HTTP to
//! the app), each either pilotfish or Envoy 1.40, with the TLS contexts istiod
//! generates (ALPN, SPIFFE SAN matchers, TLS 1.2–1.3, Istio's inbound cipher list).
//! Every pairing must carry traffic; a SAN mismatch, a foreign root and an expired
//! certificate must be refused with the same `ssl.*` counters on both proxies.
mod common;

use std::{net::SocketAddr, path::Path};

use common::{
    Proxy, Upstream,
    certs::{Ca, Leaf, certificate_secret, write_ca},
    http_bootstrap, http_get, reference_envoy, static_cluster,
};

/// The access-log operators of the downstream TLS connection.
const TLS_LOG: &str = "%DOWNSTREAM_PEER_URI_SAN% %DOWNSTREAM_LOCAL_URI_SAN% %DOWNSTREAM_TLS_VERSION% %REQUESTED_SERVER_NAME% %DOWNSTREAM_PEER_FINGERPRINT_256% %DOWNSTREAM_PEER_SUBJECT%\\n";

const FRONT_ID: &str = "spiffe://cluster.local/ns/default/sa/front";
const BACK_ID: &str = "spiffe://cluster.local/ns/default/sa/back";

/// Certificates and CA bundles written to a directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn pki(ca: &Ca, front: &Leaf, back: &Leaf, foreign: &Ca) -> Pki {
    let dir = tempfile::tempdir().unwrap();
    front.write(dir.path(), "front");
    back.write(dir.path(), "back");
    write_ca(dir.path(), "ca", &ca.pem);
    write_ca(dir.path(), "foreign", &foreign.pem);
    Pki { dir }
}

/// istiod's inbound `DownstreamTlsContext`, with files instead of SDS.
fn downstream_tls(p: &Pki, cert: &str, ca: &str, san_prefix: &str) -> String {
    format!(
        r#"      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_params:
              tls_minimum_protocol_version: TLSv1_2
              tls_maximum_protocol_version: TLSv1_3
              cipher_suites: [ECDHE-ECDSA-AES256-GCM-SHA384, ECDHE-RSA-AES256-GCM-SHA384, ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-GCM-SHA256, AES256-GCM-SHA384, AES128-GCM-SHA256]
            alpn_protocols: [h2, http/1.1]
            tls_certificates:
            - certificate_chain: {{ filename: "{}" }}
              private_key: {{ filename: "{}" }}
            combined_validation_context:
              default_validation_context:
                match_subject_alt_names: [{{ prefix: "{san_prefix}" }}]
              validation_context_sds_secret_config:
                name: file-ca
                sds_config:
                  path_config_source: {{ path: "{}" }}
"#,
        p.path(&format!("{cert}.crt")),
        p.path(&format!("{cert}.key")),
        p.path(&format!("{ca}.sds.yaml")),
    )
}

fn upstream_tls(p: &Pki, cert: &str, ca: &str, san_exact: &str) -> String {
    format!(
        r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: outbound_.9080_._.back.default.svc.cluster.local
        common_tls_context:
          tls_params:
            tls_minimum_protocol_version: TLSv1_2
            tls_maximum_protocol_version: TLSv1_3
          alpn_protocols: [istio-peer-exchange, istio]
          tls_certificates:
          - certificate_chain: {{ filename: "{}" }}
            private_key: {{ filename: "{}" }}
          validation_context:
            trusted_ca: {{ filename: "{}" }}
            match_subject_alt_names: [{{ exact: "{san_exact}" }}]
"#,
        p.path(&format!("{cert}.crt")),
        p.path(&format!("{cert}.key")),
        p.path(&format!("{ca}.pem")),
    )
}

/// The back proxy: TLS listener `http` (stat prefix `back`) to the app, forwarding the
/// client's certificate details as istiod's inbound connection managers do.
fn back_yaml(app: SocketAddr, tls: &str) -> String {
    common::http_bootstrap_logged(
        "              - match: { prefix: / }\n                route: { cluster: app }\n",
        &static_cluster("app", &[app], false),
        &format!(
            "          forward_client_cert_details: APPEND_FORWARD\n          set_current_client_cert_details: {{ subject: true, dns: true, uri: true }}\n{}",
            common::stdout_log(TLS_LOG)
        ),
    )
    .replacen(
        "    filter_chains:\n    - filters:",
        &format!("    stat_prefix: back\n    filter_chains:\n    - \n{tls}      filters:"),
        1,
    )
    // Envoy requires a node for SDS.
    .replacen("admin:", "node: { id: back, cluster: test }\nadmin:", 1)
}

/// The front proxy: plain listener `http` to cluster `mesh` (the back proxy) over TLS,
/// logging why an upstream connection failed.
fn front_yaml(back: SocketAddr, tls: &str) -> String {
    common::http_bootstrap_logged(
        "              - match: { prefix: / }\n                route: { cluster: mesh }\n",
        &format!("{}{tls}", static_cluster("mesh", &[back], false)),
        &common::stdout_log(
            "%RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_TRANSPORT_FAILURE_REASON%\\n",
        ),
    )
}

/// The back proxy with istiod's inbound TLS context (any client of the mesh's CA).
async fn start_back(bin: &str, app: SocketAddr, p: &Pki) -> Proxy {
    start(
        bin,
        &back_yaml(
            app,
            &downstream_tls(p, "back", "ca", "spiffe://cluster.local/"),
        ),
    )
    .await
}

async fn wait_stat(p: &Proxy, name: &str, want: u64) {
    for _ in 0..250 {
        if p.stat(name).await == Some(want) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{name} is {:?}, want {want}", p.stat(name).await);
}

async fn start(bin: &str, yaml: &str) -> Proxy {
    if bin == common::BIN {
        Proxy::start(yaml).await
    } else {
        Proxy::start_bin(
            bin,
            yaml,
            &["--disable-hot-restart", "--file-flush-interval-msec", "50"],
        )
        .await
    }
}

/// Validation context secrets from a file (SDS `path_config_source`), as the tests'
/// stand-in for Istio's `ROOTCA`.
fn write_ca_secret(dir: &Path, name: &str, ca_pem_path: &str) {
    let yaml = format!(
        r#"resources:
- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
  name: file-ca
  validation_context:
    trusted_ca: {{ filename: "{ca_pem_path}" }}
"#
    );
    std::fs::write(dir.join(format!("{name}.sds.yaml")), yaml).unwrap();
}

/// The reference Envoy and a PKI: Istio's CA, a second CA named `other`, and the
/// front's and back's certificates and the CA bundles written out.
fn setup(other: &str) -> Option<(String, Ca, Ca, Pki)> {
    let envoy = reference_envoy()?;
    let ca = Ca::new("cluster.local");
    let foreign = Ca::new(other);
    let p = pki(&ca, &ca.leaf(FRONT_ID), &ca.leaf(BACK_ID), &foreign);
    write_ca_secret(p.dir.path(), "ca", &p.path("ca.pem"));
    Some((envoy, ca, foreign, p))
}

/// One proxy pair's answer to a refusal case: (proxy, back counters, front counters,
/// HTTP status at the front).
type Outcome = (String, Vec<Option<u64>>, Vec<Option<u64>>, u16, Vec<String>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pairing_carries_traffic_and_refusals_match_envoy() {
    let Some((envoy, ca, foreign, p)) = setup("elsewhere") else {
        return;
    };
    // A client certificate from another root, and an expired one.
    foreign.leaf(FRONT_ID).write(p.dir.path(), "front-foreign");
    ca.expired_leaf(FRONT_ID)
        .write(p.dir.path(), "front-expired");
    let app = Upstream::start("app").await;
    let bins = [common::BIN.to_string(), envoy.clone()];
    let name = |b: &str| {
        if b == common::BIN {
            "pilotfish"
        } else {
            "envoy"
        }
    };

    // 1. Every pairing, both ways: 200 from the app, one handshake on each side, and
    //    what the app sees of the client (XFCC, scheme) the same from either back.
    let mut seen_by_app = Vec::new();
    let mut logged = Vec::new();
    for back_bin in &bins {
        let back = start(
            back_bin,
            &back_yaml(
                app.addr,
                &downstream_tls(&p, "back", "ca", "spiffe://cluster.local/"),
            ),
        )
        .await;
        let back_addr = back.listener("http");
        for front_bin in &bins {
            let front = start(
                front_bin,
                &front_yaml(back_addr, &upstream_tls(&p, "front", "ca", BACK_ID)),
            )
            .await;
            let got = http_get(front.listener("http"), "/hello").await;
            assert_eq!(
                got.as_ref().map(|(s, _)| *s),
                Ok(200),
                "{} → {}: {got:?}\nfront: {}\nback: {}",
                name(front_bin),
                name(back_bin),
                front.logs(),
                back.logs()
            );
            assert_eq!(
                front.stat("cluster.mesh.ssl.handshake").await,
                Some(1),
                "{} → {}",
                name(front_bin),
                name(back_bin)
            );
            let last = app.requests().last().cloned().unwrap();
            let header = |n: &str| {
                last.headers
                    .get(n)
                    .map(|v| v.to_str().unwrap_or_default().to_owned())
            };
            seen_by_app.push((
                name(back_bin),
                header("x-forwarded-client-cert"),
                header("x-forwarded-proto"),
            ));
        }
        assert_eq!(back.stat("listener.back.ssl.handshake").await, Some(2));
        logged.push((name(back_bin), back.stdout_lines(2).await));
    }
    assert_eq!(
        logged[0].1, logged[1].1,
        "TLS access log: pilotfish first, Envoy second"
    );
    // No TLS inspector on the back's listener: no requested server name, as in Envoy.
    assert!(
        logged[0].1[0].starts_with(&format!("{FRONT_ID} {BACK_ID} TLSv1.3 - ")),
        "{logged:?}"
    );
    let ours: Vec<_> = seen_by_app
        .iter()
        .filter(|s| s.0 == "pilotfish")
        .map(|s| (&s.1, &s.2))
        .collect();
    let theirs: Vec<_> = seen_by_app
        .iter()
        .filter(|s| s.0 == "envoy")
        .map(|s| (&s.1, &s.2))
        .collect();
    assert_eq!(
        ours, theirs,
        "XFCC and x-forwarded-proto: pilotfish left, Envoy right"
    );
    let xfcc = ours[0].0.as_deref().unwrap_or_default();
    assert!(xfcc.starts_with(&format!("By={BACK_ID};Hash=")), "{xfcc}");
    assert!(xfcc.ends_with(&format!("URI={FRONT_ID}")), "{xfcc}");

    // 2. Refusals: the same answer and the same counters from either back proxy (the
    //    front is pilotfish or Envoy alike; each front's own counters are compared too).
    let cases: [(&str, &str, &str, &str, &str); 4] = [
        // (what, front cert, front's CA, SAN the front wants, back's SAN prefix)
        (
            "server SAN mismatch",
            "front",
            "ca",
            "spiffe://cluster.local/ns/default/sa/other",
            "spiffe://cluster.local/",
        ),
        (
            "client SAN mismatch",
            "front",
            "ca",
            BACK_ID,
            "spiffe://cluster.local/ns/other/",
        ),
        (
            "client from a foreign root",
            "front-foreign",
            "ca",
            BACK_ID,
            "spiffe://cluster.local/",
        ),
        (
            "expired client certificate",
            "front-expired",
            "ca",
            BACK_ID,
            "spiffe://cluster.local/",
        ),
    ];
    let counters = [
        "ssl.handshake",
        "ssl.connection_error",
        "ssl.fail_verify_san",
        "ssl.fail_verify_error",
        "ssl.fail_verify_no_cert",
    ];
    for (what, cert, ca_name, want_san, back_prefix) in cases {
        let mut seen: Vec<Outcome> = Vec::new();
        for bin in &bins {
            let back = start(
                bin,
                &back_yaml(app.addr, &downstream_tls(&p, "back", ca_name, back_prefix)),
            )
            .await;
            let front = start(
                bin,
                &front_yaml(
                    back.listener("http"),
                    &upstream_tls(&p, cert, ca_name, want_san),
                ),
            )
            .await;
            let status = http_get(front.listener("http"), "/")
                .await
                .map(|(s, _)| s)
                .unwrap_or(0);
            // Envoy counts a failed handshake when the connection closes.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let mut back_stats = Vec::new();
            let mut front_stats = Vec::new();
            for c in counters {
                back_stats.push(back.stat(&format!("listener.back.{c}")).await);
                front_stats.push(front.stat(&format!("cluster.mesh.{c}")).await);
            }
            let logged = front.stdout_lines(1).await;
            seen.push((name(bin).into(), back_stats, front_stats, status, logged));
        }
        let (ours, theirs) = (&seen[0], &seen[1]);
        assert_eq!(ours.3, 503, "{what}: pilotfish answered {}", ours.3);
        assert_eq!(
            (ours.1.clone(), ours.2.clone(), ours.3, ours.4.clone()),
            (
                theirs.1.clone(),
                theirs.2.clone(),
                theirs.3,
                theirs.4.clone()
            ),
            "{what}: pilotfish (back, front counters {counters:?}, status) differs from Envoy"
        );
    }
}

use common::certs::SECRET;

/// istiod's `sds_config`: the agent's `sds-grpc` cluster, waiting for the secret.
const ISTIO_SDS: &str = r#"{ api_config_source: { api_type: GRPC, transport_api_version: V3, grpc_services: [{ envoy_grpc: { cluster_name: sds-grpc } }], set_node_on_first_message_only: true }, initial_fetch_timeout: 0s, resource_api_version: V3 }"#;

/// Istio's `sds-grpc` cluster on the agent's Unix socket.
fn sds_cluster(socket: &Path) -> String {
    format!(
        r#"  - name: sds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: sds-grpc
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ pipe: {{ path: "{}" }} }} }}
"#,
        socket.display()
    )
}

fn istio_downstream_tls() -> String {
    format!(
        r#"      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_params: {{ tls_minimum_protocol_version: TLSv1_2, tls_maximum_protocol_version: TLSv1_3 }}
            alpn_protocols: [h2, http/1.1]
            tls_certificate_sds_secret_configs: [{{ name: default, sds_config: {ISTIO_SDS} }}]
            combined_validation_context:
              default_validation_context:
                match_subject_alt_names: [{{ prefix: "spiffe://cluster.local/" }}]
              validation_context_sds_secret_config: {{ name: ROOTCA, sds_config: {ISTIO_SDS} }}
"#
    )
}

fn istio_upstream_tls(san: &str) -> String {
    format!(
        r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: outbound_.9080_._.back.default.svc.cluster.local
        common_tls_context:
          tls_params: {{ tls_minimum_protocol_version: TLSv1_2, tls_maximum_protocol_version: TLSv1_3 }}
          alpn_protocols: [istio-peer-exchange, istio]
          tls_certificate_sds_secret_configs: [{{ name: default, sds_config: {ISTIO_SDS} }}]
          combined_validation_context:
            default_validation_context:
              match_subject_alt_names: [{{ exact: "{san}" }}]
            validation_context_sds_secret_config: {{ name: ROOTCA, sds_config: {ISTIO_SDS} }}
"#
    )
}

/// The serial number of the certificate `addr` presents to a client with `client`.
async fn served_serial(addr: SocketAddr, ca: &Ca, client: &Leaf) -> String {
    use rustls::pki_types::ServerName;
    let config = common::certs::client_config(ca, client, BACK_ID, &[]);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("back").unwrap(), tcp)
        .await
        .unwrap();
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    pilotfish::tls::certs::info(&der).unwrap().serial_number
}

/// Istio's shape end to end: both proxies take `default` and `ROOTCA` from an SDS
/// server on a Unix socket (as the agent serves them), with istiod's TLS contexts. The
/// certificate rotates mid-traffic: no request fails, a connection already up keeps
/// working, and the next handshake presents the new certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_sds_secrets_rotate_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("sds.sock");
    let sds = common::xds::XdsServer::start_unix(&socket).await;
    let ca = Ca::new("cluster.local");
    let first = ca.leaf(BACK_ID);
    let app = Upstream::start("app").await;
    // Until its secrets arrive, the back is not ready (Envoy's listeners warm).
    let mut back = Proxy::start_unready(
        common::BIN,
        &back_yaml(app.addr, &istio_downstream_tls()).replacen(
            "  clusters:\n",
            &format!("  clusters:\n{}", sds_cluster(&socket)),
            1,
        ),
        &[],
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        back.admin_get("/ready").await.0,
        503,
        "ready without its certificate"
    );
    sds.set(SECRET, common::certs::istio_secrets(&ca, &first));
    for _ in 0..250 {
        if back.admin_get("/ready").await.0 == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        back.admin_get("/ready").await.0,
        200,
        "ready once the secrets are in"
    );
    back.refresh_listeners().await;
    let front = Proxy::start(
        &front_yaml(back.listener("http"), &istio_upstream_tls(BACK_ID)).replacen(
            "  clusters:\n",
            &format!("  clusters:\n{}", sds_cluster(&socket)),
            1,
        ),
    )
    .await;
    let back_addr = back.listener("http");
    let before = served_serial(back_addr, &ca, &first).await;

    // A connection from the front to the back stays up across the rotation.
    let mut kept = common::KeepAlive::open(front.listener("http")).await;
    assert_eq!(kept.get("/kept").await, 200);
    let mut failed = Vec::new();
    for i in 0..60 {
        if i == 30 {
            let second = ca.leaf(BACK_ID);
            sds.set(SECRET, common::certs::istio_secrets(&ca, &second));
            // Both proxies have the new secret before the traffic goes on.
            for p in [&back, &front] {
                wait_stat(p, "sds.default.update_success", 2).await;
            }
        }
        match http_get(front.listener("http"), &format!("/r{i}")).await {
            Ok((200, _)) => {}
            other => failed.push((i, other)),
        }
    }
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert_eq!(kept.get("/kept-after").await, 200);
    let after = served_serial(back_addr, &ca, &first).await;
    assert_ne!(
        before, after,
        "the next handshake presents the rotated certificate"
    );
    // Each proxy asked for each secret on a stream of its own, ACKed what it applied.
    let acks = sds
        .requests()
        .iter()
        .filter(|r| r.type_url == SECRET && r.error.is_none() && !r.nonce.is_empty())
        .count();
    assert!(acks >= 6, "ACKs: {:?}", sds.requests());

    // `/certs` shows the certificate now served; `/config_dump` the secrets as Envoy
    // dumps them (same names, versions, redacted key) for the same bootstrap.
    let (_, certs) = back.admin_get("/certs").await;
    assert!(
        certs.contains(&format!("\"serial_number\": \"{after}\"")),
        "{certs}"
    );
    assert!(certs.contains(BACK_ID), "{certs}");
    let envoy = reference_envoy();
    if let Some(envoy) = envoy {
        let theirs = start(
            &envoy,
            &back_yaml(app.addr, &istio_downstream_tls()).replacen(
                "  clusters:\n",
                &format!("  clusters:\n{}", sds_cluster(&socket)),
                1,
            ),
        )
        .await;
        let ours = secrets_dumped(&back).await;
        assert_eq!(ours.len(), 2, "{ours:?}");
        assert!(ours.iter().any(|s| s.2.contains("[redacted]")), "{ours:?}");
        assert_eq!(
            ours,
            secrets_dumped(&theirs).await,
            "pilotfish left, Envoy right"
        );
    }
}

/// (name, version, private key) of each secret in `/config_dump`'s `SecretsConfigDump`.
async fn secrets_dumped(p: &Proxy) -> Vec<(String, String, String)> {
    let (_, body) = p.admin_get("/config_dump").await;
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    let secrets = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.SecretsConfigDump")
        .cloned()
        .unwrap_or_default();
    let mut out: Vec<_> = secrets["dynamic_active_secrets"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_owned(),
                s["version_info"].as_str().unwrap_or_default().to_owned(),
                s["secret"]["tls_certificate"]["private_key"].to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// The back sidecar's inbound as istiod builds it for PERMISSIVE (a TLS chain and a
/// plaintext chain picked by the TLS inspector) or STRICT (the TLS chain only), for
/// HTTP (`http`, to the app) and TCP (`tcp`, to the echo server).
fn inbound_yaml(p: &Pki, app: SocketAddr, echo: SocketAddr, strict: bool) -> String {
    let tls = downstream_tls(p, "back", "ca", "spiffe://cluster.local/");
    let hcm = |prefix: &str| {
        format!(
            r#"      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {prefix}
          route_config:
            virtual_hosts:
            - {{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: app }} }}] }}
          http_filters:
          - {{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}
"#
        )
    };
    let tcp = |prefix: &str| {
        format!(
            r#"      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: {prefix}, cluster: echo }}
"#
        )
    };
    let plain = |filters: String| {
        if strict {
            String::new()
        } else {
            format!(
                "    - filter_chain_match: {{ transport_protocol: raw_buffer }}\n      filters:\n{filters}"
            )
        }
    };
    let inspector = r#"    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector }
"#;
    format!(
        r#"node: {{ id: back, cluster: test }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: http
    stat_prefix: back
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
{inspector}    filter_chains:
    - filter_chain_match: {{ transport_protocol: tls }}
{tls}      filters:
{}{}
  - name: tcp
    stat_prefix: back_tcp
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
{inspector}    filter_chains:
    - filter_chain_match: {{ transport_protocol: tls }}
{tls}      filters:
{}{}
  clusters:
{}{}"#,
        hcm("inbound_tls"),
        plain(hcm("inbound_plain")),
        tcp("inbound_tcp_tls"),
        plain(tcp("inbound_tcp_plain")),
        static_cluster("app", &[app], false),
        static_cluster("echo", &[echo], false),
    )
}

/// The front sidecar's outbound with auto mTLS: one cluster over two endpoints, the
/// back sidecar (`tlsMode: istio`) and the app itself (no sidecar, plaintext), as
/// istiod's `transport_socket_matches` and EDS metadata make it; and a TCP listener to
/// the back's TCP port the same way.
fn auto_mtls_yaml(p: &Pki, back: SocketAddr, app: SocketAddr, back_tcp: SocketAddr) -> String {
    // istiod's matches: the mTLS socket for `tlsMode: istio`, else plaintext.
    let tls: String = upstream_tls(p, "front", "ca", BACK_ID)
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect();
    let matches = format!(
        r#"    transport_socket_matches:
    - name: tlsMode-istio
      match: {{ tlsMode: istio }}
{tls}    - name: tlsMode-disabled
      match: {{}}
      transport_socket: {{ name: envoy.transport_sockets.raw_buffer, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer }} }}
"#
    );
    let ep = |a: SocketAddr, istio: bool| {
        let md = if istio {
            ", metadata: { filter_metadata: { envoy.transport_socket_match: { tlsMode: istio } } }"
        } else {
            ""
        };
        format!(
            "        - {{ endpoint: {{ address: {{ socket_address: {{ address: \"{}\", port_value: {} }} }} }}{md} }}\n",
            a.ip(),
            a.port()
        )
    };
    let cluster = |name: &str, eps: String| {
        format!(
            "  - name: {name}\n    connect_timeout: 1s\n    type: STATIC\n{matches}    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n{eps}"
        )
    };
    let tcp_listener = r#"  - name: tcp
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: outbound_tcp, cluster: mesh_tcp }
"#;
    http_bootstrap(
        "              - match: { prefix: / }\n                route: { cluster: mesh }\n",
        &format!(
            "{}{}",
            cluster("mesh", format!("{}{}", ep(back, true), ep(app, false))),
            cluster("mesh_tcp", ep(back_tcp, true))
        ),
    )
    .replacen("  clusters:\n", &format!("{tcp_listener}  clusters:\n"), 1)
}

/// Sends `msg` over TCP to `addr` and reads the echo.
async fn tcp_echo(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(msg).await.unwrap();
    // Read the echo before closing: a half-close while the proxy still inspects the
    // connection makes Envoy drop it.
    let mut got = vec![0u8; msg.len()];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut got));
    match read.await {
        Ok(Ok(_)) => got,
        _ => Vec::new(),
    }
}

/// Auto mTLS and PERMISSIVE/STRICT inbound, pilotfish and Envoy in each role: the
/// front picks TLS for the sidecar endpoint and plaintext for the bare app by endpoint
/// metadata (every request answered: a wrong pick fails), over HTTP and tcp_proxy; a
/// PERMISSIVE inbound takes both, a STRICT one closes plaintext connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mtls_and_permissive_inbound_match_envoy() {
    let Some((envoy, _, _, p)) = setup("elsewhere") else {
        return;
    };
    let app = Upstream::start("app").await;
    let echo = common::tcp_echo_server().await;
    let pilotfish = common::BIN.to_string();
    for (front_bin, back_bin) in [
        (&pilotfish, &pilotfish),
        (&envoy, &pilotfish),
        (&pilotfish, &envoy),
    ] {
        let pair = format!(
            "{} → {}",
            if *front_bin == pilotfish {
                "pilotfish"
            } else {
                "envoy"
            },
            if *back_bin == pilotfish {
                "pilotfish"
            } else {
                "envoy"
            }
        );
        let back = start(back_bin, &inbound_yaml(&p, app.addr, echo, false)).await;
        let front = start(
            front_bin,
            &auto_mtls_yaml(&p, back.listener("http"), app.addr, back.listener("tcp")),
        )
        .await;
        let before = app.requests().len();
        for i in 0..10 {
            let got = http_get(front.listener("http"), &format!("/auto{i}")).await;
            assert_eq!(got.as_ref().map(|(s, _)| *s), Ok(200), "{pair}: {got:?}");
        }
        assert_eq!(app.requests().len() - before, 10, "{pair}");
        // Round robin (per worker) over the two endpoints: some went through the back
        // sidecar over mTLS, the others straight to the app in plaintext.
        let via_back = back.stat("http.inbound_tls.downstream_rq_total").await;
        assert!(
            matches!(via_back, Some(1..=9)),
            "{pair}: {via_back:?} of 10 via the back sidecar"
        );
        // Each host counted once under the socket it resolved to, as Envoy counts them.
        let mut picks = Vec::new();
        for m in ["tlsMode-istio", "tlsMode-disabled", "default"] {
            picks.push(
                front
                    .stat(&format!("cluster.mesh.{m}.total_match_count"))
                    .await,
            );
        }
        picks.push(back.stat("cluster.app.default.total_match_count").await);
        assert_eq!(picks, [Some(1), Some(1), Some(0), Some(1)], "{pair}");
        let handshakes = front.stat("cluster.mesh.ssl.handshake").await;
        assert!(matches!(handshakes, Some(1..=2)), "{pair}: {handshakes:?}");
        assert_eq!(
            tcp_echo(front.listener("tcp"), b"over mtls").await,
            b"over mtls",
            "{pair}"
        );
        assert_eq!(
            back.stat("listener.back_tcp.ssl.handshake").await,
            Some(1),
            "{pair}"
        );
        // PERMISSIVE: plaintext from a client without a sidecar is served too.
        assert_eq!(
            http_get(back.listener("http"), "/plain")
                .await
                .map(|(s, _)| s),
            Ok(200),
            "{pair}"
        );
        assert_eq!(
            tcp_echo(back.listener("tcp"), b"plain").await,
            b"plain",
            "{pair}"
        );
    }
    // STRICT: plaintext is closed without a chain, counted as Envoy counts it.
    let mut counts = Vec::new();
    for bin in [&pilotfish, &envoy] {
        let back = start(bin, &inbound_yaml(&p, app.addr, echo, true)).await;
        assert!(http_get(back.listener("http"), "/plain").await.is_err());
        assert_eq!(tcp_echo(back.listener("tcp"), b"plain").await, b"");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        counts.push((
            back.stat("listener.back.no_filter_chain_match").await,
            back.stat("listener.back_tcp.no_filter_chain_match").await,
        ));
    }
    assert_eq!(counts[0], (Some(1), Some(1)));
    assert_eq!(
        counts[0], counts[1],
        "STRICT counters: pilotfish left, Envoy right"
    );
}

/// HTTP/2 over TLS: the front's HTTP/2 cluster negotiates `h2` by ALPN and the back
/// serves it as HTTP/2 (counted as such), with pilotfish or Envoy as the back; a
/// client offering `h2` directly gets HTTP/2 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_is_negotiated_by_alpn() {
    let Some((envoy, ca, _, p)) = setup("elsewhere") else {
        return;
    };
    let front_leaf = ca.leaf(FRONT_ID);
    let app = Upstream::start("app").await;
    for bin in [common::BIN.to_string(), envoy] {
        let back = start_back(&bin, app.addr, &p).await;
        let tls = upstream_tls(&p, "front", "ca", BACK_ID).replace(
            "alpn_protocols: [istio-peer-exchange, istio]",
            "alpn_protocols: [h2]",
        );
        let h2_cluster = static_cluster("mesh", &[back.listener("http")], true);
        let front = Proxy::start(&http_bootstrap(
            "              - match: { prefix: / }\n                route: { cluster: mesh }\n",
            &format!("{h2_cluster}{tls}"),
        ))
        .await;
        let got = http_get(front.listener("http"), "/h2").await;
        assert_eq!(got.as_ref().map(|(s, _)| *s), Ok(200), "{bin}: {got:?}");
        // A client of its own offering h2.
        let config = common::certs::client_config(&ca, &front_leaf, BACK_ID, &["h2"]);
        let tcp = tokio::net::TcpStream::connect(back.listener("http"))
            .await
            .unwrap();
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(
                rustls::pki_types::ServerName::try_from("back").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "{bin}");
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("https://back/direct")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{bin}");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(
            back.stat("http.ingress_http.downstream_cx_http2_total")
                .await,
            Some(2),
            "{bin}: both connections served as HTTP/2"
        );
    }
}

/// A server context with Envoy's SPIFFE validator: a CA bundle per trust domain.
fn downstream_tls_spiffe(p: &Pki) -> String {
    format!(
        r#"      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{ filename: "{}" }}
              private_key: {{ filename: "{}" }}
            validation_context:
              custom_validator_config:
                name: envoy.tls.cert_validator.spiffe
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig
                  trust_domains:
                  - {{ name: cluster.local, trust_bundle: {{ filename: "{}" }} }}
                  - {{ name: other.domain, trust_bundle: {{ filename: "{}" }} }}
"#,
        p.path("back.crt"),
        p.path("back.key"),
        p.path("ca.pem"),
        p.path("foreign.pem"),
    )
}

/// The SPIFFE validator picks the CA bundle by the client's trust domain: a client of
/// either domain is accepted with its own domain's CA, a certificate of one CA claiming
/// the other's trust domain is refused, with the same counters as Envoy's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffe_validator_checks_each_trust_domain_against_its_bundle() {
    let Some((envoy, _, other, p)) = setup("other.domain") else {
        return;
    };
    other
        .leaf("spiffe://other.domain/ns/x/sa/y")
        .write(p.dir.path(), "front-other");
    other.leaf(FRONT_ID).write(p.dir.path(), "front-spoof");
    let app = Upstream::start("app").await;
    let mut answers = Vec::new();
    for bin in [common::BIN.to_string(), envoy] {
        let back = start(&bin, &back_yaml(app.addr, &downstream_tls_spiffe(&p))).await;
        let mut seen = Vec::new();
        for cert in ["front", "front-other", "front-spoof"] {
            let front = Proxy::start(&front_yaml(
                back.listener("http"),
                &upstream_tls(&p, cert, "ca", BACK_ID),
            ))
            .await;
            let status = http_get(front.listener("http"), "/").await.map(|(s, _)| s);
            seen.push((cert, status.unwrap_or(0)));
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let mut counters = Vec::new();
        for c in [
            "handshake",
            "fail_verify_error",
            "fail_verify_san",
            "connection_error",
        ] {
            counters.push(back.stat(&format!("listener.back.ssl.{c}")).await);
        }
        answers.push((seen, counters));
    }
    assert_eq!(
        answers[0].0,
        [("front", 200), ("front-other", 200), ("front-spoof", 503)]
    );
    assert_eq!(answers[0], answers[1], "pilotfish first, Envoy second");
}

/// A client that comes back resumes its TLS session (a TLS 1.3 ticket), counted in
/// `ssl.session_reused` as by Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_as_with_envoy() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some((envoy, ca, _, p)) = setup("elsewhere") else {
        return;
    };
    let app = Upstream::start("app").await;
    let mut counts = Vec::new();
    for bin in [common::BIN.to_string(), envoy] {
        let back = start_back(&bin, app.addr, &p).await;
        // One client configuration (and so one session cache) for both connections.
        let config = common::certs::client_config(&ca, &ca.leaf(FRONT_ID), BACK_ID, &[]);
        for _ in 0..2 {
            let tcp = tokio::net::TcpStream::connect(back.listener("http"))
                .await
                .unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(
                    rustls::pki_types::ServerName::try_from("back").unwrap(),
                    tcp,
                )
                .await
                .unwrap();
            tls.write_all(b"GET / HTTP/1.1\r\nhost: back\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut out = Vec::new();
            let _ = tls.read_to_end(&mut out).await;
            assert!(
                out.starts_with(b"HTTP/1.1 200"),
                "{bin}: {:?}",
                String::from_utf8_lossy(&out)
            );
        }
        counts.push((
            back.stat("listener.back.ssl.handshake").await,
            back.stat("listener.back.ssl.session_reused").await,
        ));
    }
    assert_eq!(counts[0], (Some(2), Some(1)));
    assert_eq!(counts[0], counts[1], "pilotfish first, Envoy second");
}

/// The back sidecar's inbound as istiod builds it for PERMISSIVE mTLS, its chains
/// picked by the ALPN the client offers: `istio-http/*` and `istio-h2` to the HTTP
/// chain (stat prefix `inbound_http`), `istio-peer-exchange` and `istio` to the TCP
/// chain (`inbound_tcp`), both to the app.
fn inbound_by_alpn_yaml(p: &Pki, app: SocketAddr) -> String {
    let tls = |alpn: &str| {
        downstream_tls(p, "back", "ca", "spiffe://cluster.local/")
            .replace("alpn_protocols: [h2, http/1.1]", alpn)
    };
    format!(
        r#"node: {{ id: back, cluster: test }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: http
    stat_prefix: back
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector }}
    filter_chains:
    - filter_chain_match: {{ transport_protocol: tls, application_protocols: [istio-http/1.0, istio-http/1.1, istio-h2] }}
{}      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound_http
          route_config:
            virtual_hosts:
            - {{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: app }} }}] }}
          http_filters:
          - {{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}
    - filter_chain_match: {{ transport_protocol: tls, application_protocols: [istio-peer-exchange, istio] }}
{}      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: inbound_tcp, cluster: app }}
  clusters:
{}"#,
        tls("alpn_protocols: [h2, http/1.1]"),
        tls("alpn_protocols: [istio-peer-exchange, h2, http/1.1]"),
        static_cluster("app", &[app], false),
    )
}

/// The front sidecar's outbound as istiod builds it: listener `alpn` carries the
/// `istio.alpn` filter (istiod's lists) and routes `/h1` to `mesh` (HTTP/1.1), `/h2`
/// to `mesh_h2` (HTTP/2) and `/keep` to `mesh_keep` (marked `alpn_override: "false"`,
/// a DestinationRule's own TLS); listener `plain` has no such filter and routes to
/// `mesh`. Every cluster offers istiod's `istio-peer-exchange, istio`.
fn istio_alpn_front_yaml(p: &Pki, back: SocketAddr) -> String {
    let hcm = |prefix: &str, alpn_filter: &str, routes: &str| {
        format!(
            r#"    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {prefix}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{routes}]
          http_filters:
{alpn_filter}          - {{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}
"#
        )
    };
    let alpn_filter = r#"          - name: istio.alpn
            typed_config:
              "@type": type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig
              alpn_override:
              - alpn_override: [istio-http/1.0, istio, http/1.0]
              - { upstream_protocol: HTTP11, alpn_override: [istio-http/1.1, istio, http/1.1] }
              - { upstream_protocol: HTTP2, alpn_override: [istio-h2, istio, h2] }
"#;
    let route = |prefix: &str, cluster: &str| {
        format!("{{ match: {{ prefix: {prefix} }}, route: {{ cluster: {cluster} }} }}")
    };
    let tls = upstream_tls(p, "front", "ca", BACK_ID);
    let cluster =
        |name: &str, extra: &str| format!("{}{extra}{tls}", static_cluster(name, &[back], false));
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: alpn
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
{}  - name: plain
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
{}  clusters:
{}{}{}"#,
        hcm(
            "outbound_alpn",
            alpn_filter,
            &[
                route("/h1", "mesh"),
                route("/h2", "mesh_h2"),
                route("/keep", "mesh_keep"),
            ]
            .join(", ")
        ),
        hcm("outbound_plain", "", &route("/", "mesh")),
        cluster("mesh", ""),
        cluster(
            "mesh_h2",
            r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
"#
        ),
        cluster(
            "mesh_keep",
            "    metadata: { filter_metadata: { istio: { alpn_override: \"false\" } } }\n"
        ),
    )
}

/// `istio.alpn`: an HTTP request over Istio mTLS offers `istio-http/1.1` (HTTP/1.1) or
/// `istio-h2` (HTTP/2) instead of the cluster's `istio-peer-exchange, istio`, so it lands
/// on the peer's HTTP chain, with Envoy as the peer as with pilotfish; a cluster marked
/// `alpn_override: "false"` and a connection manager without the filter keep the
/// cluster's list (the peer's TCP chain), and the two never share a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_alpn_lands_http_on_the_peers_http_chain() {
    let Some((envoy, _, _, p)) = setup("elsewhere") else {
        return;
    };
    let app = Upstream::start("app").await;
    for back_bin in [envoy.as_str(), common::BIN] {
        let back = start(back_bin, &inbound_by_alpn_yaml(&p, app.addr)).await;
        let front = Proxy::start(&istio_alpn_front_yaml(&p, back.listener("http"))).await;
        let counts = || async {
            (
                back.stat("http.inbound_http.downstream_rq_http1_total")
                    .await,
                back.stat("http.inbound_http.downstream_rq_http2_total")
                    .await,
                back.stat("tcp.inbound_tcp.downstream_cx_total").await,
            )
        };
        let get = |listener: &str, path: &str| {
            let addr = front.listener(listener);
            let path = path.to_owned();
            async move {
                let got = http_get(addr, &path).await;
                assert_eq!(got.as_ref().map(|(s, _)| *s), Ok(200), "{path}: {got:?}");
            }
        };
        for _ in 0..3 {
            get("alpn", "/h1").await;
        }
        for _ in 0..2 {
            get("alpn", "/h2").await;
        }
        assert_eq!(counts().await, (Some(3), Some(2), Some(0)), "{back_bin}");
        get("alpn", "/keep").await;
        assert_eq!(counts().await, (Some(3), Some(2), Some(1)), "{back_bin}");
        // The same cluster without the filter: the cluster's own list, on a connection
        // of its own; and then with the filter again, not on that connection.
        get("plain", "/").await;
        assert_eq!(counts().await, (Some(3), Some(2), Some(2)), "{back_bin}");
        get("alpn", "/h1").await;
        assert_eq!(counts().await, (Some(4), Some(2), Some(2)), "{back_bin}");
    }
}

/// SDS over ADS (`sds_config: { ads: {} }`): a listener from LDS waits for its
/// certificate on the same ADS stream, serves it once it arrives, takes a rotated one
/// for the next handshake and keeps it when a bad one is NACKed, over both state of the
/// world and delta xDS, as Envoy 1.40 does with the same control plane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds_over_ads_serves_and_rotates_as_envoy_does() {
    use common::xds::{XdsServer, ads_bootstrap, any, from_yaml, tcp};
    use envoy_types::pb::envoy::{
        config::listener::v3::Listener,
        extensions::transport_sockets::tls::v3::{Secret, TlsCertificate, secret},
    };
    const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let ca = Ca::new("cluster.local");
    let app = Upstream::start("app").await;
    for api in ["GRPC", "DELTA_GRPC"] {
        let xds = XdsServer::start().await;
        let listener: Listener = from_yaml(
            r#"
name: tls
address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
filter_chains:
- transport_socket:
    name: envoy.transport_sockets.tls
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
      common_tls_context:
        tls_certificate_sds_secret_configs:
        - { name: default, sds_config: { ads: {}, resource_api_version: V3 } }
  filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: app, cluster: app }
"#,
        );
        xds.set(CDS, vec![]);
        xds.set(LDS, vec![("tls".into(), any(&listener))]);
        let yaml = format!(
            "{}{}",
            ads_bootstrap(&tcp(xds.addr), api),
            static_cluster("app", &[app.addr], false)
        );
        // Each asks for the secret on its ADS stream, and is not ready without it.
        let mut proxies = Vec::new();
        for bin in [common::BIN.to_owned(), envoy.clone()] {
            let args: &[&str] = if bin == common::BIN {
                &[]
            } else {
                &["--disable-hot-restart"]
            };
            let started = std::time::Instant::now();
            proxies.push(Proxy::start_unready(&bin, &yaml, args).await);
            xds.wait_request(&format!("{bin} subscribing to default ({api})"), |r| {
                r.type_url == SECRET && r.names.contains(&"default".to_owned()) && r.at >= started
            })
            .await;
        }
        for p in &proxies {
            assert_eq!(
                p.admin_get("/ready").await.0,
                503,
                "{api}: ready without its certificate"
            );
        }
        let first = ca.leaf(BACK_ID);
        xds.set(
            SECRET,
            vec![("default".into(), certificate_secret("default", &first))],
        );
        let mut serials = Vec::new();
        for p in &mut proxies {
            for _ in 0..250 {
                if p.admin_get("/ready").await.0 == 200 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            assert_eq!(p.admin_get("/ready").await.0, 200, "{api}: ready with it");
            p.refresh_listeners().await;
            serials.push(served_serial(p.listener("tls"), &ca, &first).await);
        }
        assert_eq!(serials[0], serials[1], "{api}: the same certificate served");
        // Rotation: the next handshake presents the new certificate.
        let second = ca.leaf(BACK_ID);
        xds.set(
            SECRET,
            vec![("default".into(), certificate_secret("default", &second))],
        );
        let mut rotated = Vec::new();
        for p in &proxies {
            wait_stat(p, "sds.default.update_success", 2).await;
            rotated.push(served_serial(p.listener("tls"), &ca, &first).await);
        }
        assert_eq!(
            rotated[0], rotated[1],
            "{api}: the same rotated certificate"
        );
        assert_ne!(rotated[0], serials[0], "{api}: rotated");
        // A secret that does not parse is NACKed by both, and the last good one stays.
        let bad = Secret {
            name: "default".into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(inline("not a certificate")),
                private_key: Some(inline("not a key")),
                ..Default::default()
            })),
        };
        xds.set(SECRET, vec![("default".into(), any(&bad))]);
        for p in &proxies {
            wait_stat(p, "sds.default.update_rejected", 1).await;
            assert_eq!(
                served_serial(p.listener("tls"), &ca, &first).await,
                rotated[0],
                "{api}: the last good certificate kept"
            );
        }
        let nacks = xds
            .requests()
            .iter()
            .filter(|r| r.type_url == SECRET && r.error.is_some())
            .count();
        assert!(nacks >= 2, "{api}: both NACKed: {:?}", xds.requests());
    }
}

fn inline(s: &str) -> envoy_types::pb::envoy::config::core::v3::DataSource {
    use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
    DataSource {
        specifier: Some(Specifier::InlineString(s.into())),
        ..Default::default()
    }
}
