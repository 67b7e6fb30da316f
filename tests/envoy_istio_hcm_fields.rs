//! Listener and connection-manager fields istiod sets on every sidecar, pilotfish and
//! Envoy 1.40 on the same bootstrap: `proxy_100_continue` (both values, with a client
//! that waits for `100 Continue`), `path_with_escaped_slashes_action: KEEP_UNCHANGED`
//! next to `normalize_path`, `stream_idle_timeout: 0s`, a default chain with istiod's
//! empty `filter_chain_match`, `transport_socket_connect_timeout` on a chain,
//! `max_connections_to_accept_per_socket_event`, the TLS inspector's
//! `initial_read_buffer_size`, and an ORIGINAL_DST cluster's `cleanup_interval`.
mod common;

use std::{net::SocketAddr, time::Duration};

use common::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn listener(name: &str, proxy_100: bool) -> String {
    format!(
        r#"
  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    max_connections_to_accept_per_socket_event: 1
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector
        initial_read_buffer_size: 512
    filter_chains:
    - filter_chain_match: {{ server_names: [never.example] }}
      transport_socket_connect_timeout: 15s
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: never
          cluster: backend
    default_filter_chain:
      name: PassthroughFilterChain
      filter_chain_match: {{}}
      transport_socket_connect_timeout: 15s
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          proxy_100_continue: {proxy_100}
          stream_idle_timeout: 0s
          normalize_path: true
          path_with_escaped_slashes_action: KEEP_UNCHANGED
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: / }}
                route: {{ cluster: backend, timeout: 0s }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}"#
    )
}

fn bootstrap(up: SocketAddr) -> String {
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:{a}{b}
  clusters:
{backend}
  - name: InboundPassthroughCluster
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 10s
    cleanup_interval: 9223372035s
"#,
        a = listener("plain", false),
        b = listener("proxied", true),
        backend = static_cluster("backend", &[up], false),
    )
}

/// A POST whose client waits (a while) for `100 Continue` before its body, as curl
/// does: whether the interim answer came, the final status line and body.
async fn expect_continue(to: SocketAddr) -> (bool, String, String) {
    let mut s = TcpStream::connect(to).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let interim = tokio::time::timeout(Duration::from_secs(2), async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .is_ok();
    let continued = interim && got.starts_with(b"HTTP/1.1 100");
    s.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    let text = String::from_utf8_lossy(&rest).into_owned();
    // The final response follows the interim one (or is all there is).
    let text = match text.find("HTTP/1.1 2") {
        Some(i) => text[i..].to_owned(),
        None => String::from_utf8_lossy(&got).into_owned() + &text,
    };
    let status = text.lines().next().unwrap_or("").to_owned();
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (continued, status, body)
}

#[tokio::test]
async fn istios_listener_and_hcm_fields_behave_as_in_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let up = Upstream::start("backend").await;
    let yaml = bootstrap(up.addr);
    let theirs = Proxy::start_bin(&envoy, &yaml, &["--disable-hot-restart"]).await;
    let ours = Proxy::start(&yaml).await;
    let mut diff = Differences::default();
    for name in ["plain", "proxied"] {
        let mut seen = Vec::new();
        for p in [&theirs, &ours] {
            let before = up.requests().len();
            let answer = expect_continue(p.listener(name)).await;
            let expect = up.requests()[before..].first().map(|r| {
                r.headers
                    .get("expect")
                    .map(|v| v.to_str().unwrap().to_owned())
            });
            seen.push((answer, expect));
        }
        diff.check(
            format!("Expect: 100-continue on {name}"),
            seen[0].clone(),
            seen[1].clone(),
        );
        // Not vacuous: the body went through, and the header as the field says.
        let ((continued, status, body), expect) = seen.pop().unwrap();
        assert!(continued && status.starts_with("HTTP/1.1 200") && body == "hello");
        assert_eq!(
            expect.flatten().is_some(),
            name == "proxied",
            "expect upstream on {name}"
        );
    }
    for path in ["/a%2Fb/../c", "/x/a%2fb", "/x/./y/%2E%2E/z"] {
        let mut seen = Vec::new();
        for p in [&theirs, &ours] {
            let before = up.requests().len();
            let (status, _) = http_get(p.listener("plain"), path).await.unwrap();
            seen.push((status, up.requests().get(before).map(|r| r.path.clone())));
        }
        diff.check(format!("GET {path}"), seen[0].clone(), seen[1].clone());
    }
    diff.assert_none();
}
