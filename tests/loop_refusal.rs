//! Loop refusal outside a network namespace: a capture listener in the shape istiod
//! sends (`use_original_dst: true`, no listener filter), reached directly and through
//! clusters of every kind pointing back at it. Each connection is refused and counted
//! in `pilotfish_listener_loop_refused`, none is followed. (The netns capture test runs
//! the same shape behind iptables.)
mod common;

use std::{
    net::{Ipv6Addr, SocketAddr},
    time::Duration,
};

use common::*;
use tokio::{io::AsyncReadExt, net::TcpStream};

/// A port free on both 127.0.0.1 and ::1 right now.
fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("::1", port)).is_ok() {
            return port;
        }
    }
}

fn bootstrap(capture: u16) -> String {
    // Port 0 twice on one address is a duplicate: each listener has an address of its own.
    let tcp = |name: &str, ip: &str, cluster: &str| {
        format!(
            r#"
  - name: {name}
    address: {{ socket_address: {{ address: {ip}, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {name}
          cluster: {cluster}"#
        )
    };
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  # istiod's virtualOutbound: use_original_dst and no listener filters.
  - name: virtualOutbound
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {capture} }} }}
    additional_addresses: [{{ address: {{ socket_address: {{ address: "::1", port_value: {capture} }} }} }}]
    use_original_dst: true
    traffic_direction: OUTBOUND
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: PassthroughCluster
          cluster: PassthroughCluster
{static_v4}{static_v6}{dns}
  - name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: /static }}
                route: {{ cluster: static_v4 }}
              - match: {{ prefix: / }}
                route: {{ cluster: by_header }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - name: PassthroughCluster
    type: ORIGINAL_DST
    connect_timeout: 1s
    lb_policy: CLUSTER_PROVIDED
  - name: by_header
    type: ORIGINAL_DST
    connect_timeout: 1s
    lb_policy: CLUSTER_PROVIDED
    original_dst_lb_config: {{ use_http_header: true }}
  - name: dns
    type: STRICT_DNS
    connect_timeout: 1s
    load_assignment:
      cluster_name: dns
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: localhost, port_value: {capture} }} }} }}
{c4}{c6}"#,
        static_v4 = tcp("to_static_v4", "127.0.0.2", "static_v4"),
        static_v6 = tcp("to_static_v6", "127.0.0.3", "static_v6"),
        dns = tcp("to_dns", "127.0.0.4", "dns"),
        c4 = static_cluster("static_v4", &[([127, 0, 0, 1], capture).into()], false),
        c6 = static_cluster("static_v6", &[(Ipv6Addr::LOCALHOST, capture).into()], false),
    )
}

/// Connects to `addr` and returns the bytes read until the proxy closes.
async fn closed_without_data(addr: SocketAddr) -> usize {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("the proxy did not close the connection")
        .unwrap_or(0)
}

#[tokio::test]
async fn connections_back_into_a_capture_listener_are_refused_for_every_cluster_type() {
    let capture = free_port();
    let p = Proxy::start(&bootstrap(capture)).await;
    let refused = |addr: &str| {
        format!("pilotfish_listener_loop_refused{{envoy_listener_address=\"{addr}\"}}")
    };
    let cx_total =
        |c: &str| format!("envoy_cluster_upstream_cx_total{{envoy_cluster_name=\"{c}\"}}");
    let cx_fail =
        |c: &str| format!("envoy_cluster_upstream_cx_connect_fail{{envoy_cluster_name=\"{c}\"}}");
    // The listener's stat scope is its first address.
    let capture_scope = format!("127.0.0.1_{capture}");

    // Straight to the capture listener, IPv4 and IPv6: not redirected, so its original
    // destination is the listener itself. Refused where it was accepted.
    for addr in [
        SocketAddr::from(([127, 0, 0, 1], capture)),
        format!("[::1]:{capture}").parse().unwrap(),
    ] {
        assert_eq!(closed_without_data(addr).await, 0, "{addr}");
    }
    p.wait_metric(&refused(&capture_scope), 2).await;
    assert_eq!(p.metric(&cx_total("PassthroughCluster")).await, Some(0));

    // Through STATIC (v4 and v6) and STRICT_DNS clusters whose endpoint is the capture
    // listener: refused before connecting, so the capture listener never sees them.
    for (listener, cluster, n) in [
        ("to_static_v4", "static_v4", 3),
        ("to_static_v6", "static_v6", 4),
        ("to_dns", "dns", 5),
    ] {
        assert_eq!(
            closed_without_data(p.listener(listener)).await,
            0,
            "{listener}"
        );
        p.wait_metric(&refused(&capture_scope), n).await;
        assert_eq!(p.metric(&cx_fail(cluster)).await, Some(1), "{cluster}");
    }

    // HTTP: a STATIC cluster, and ORIGINAL_DST choosing the host from a request header.
    let http = p.listener("http");
    let (code, _) = http_get(http, "/static").await.unwrap();
    assert_eq!(code, 503);
    let target = format!("127.0.0.1:{capture}");
    let (status, headers, _) = send(
        http,
        false,
        http::Request::get("/")
            .header("host", "svc")
            .header("x-envoy-original-dst-host", &target)
            .body(Default::default())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, 503);
    assert!(headers.get("x-envoy-overloaded").is_none());
    p.wait_metric(&refused(&capture_scope), 7).await;
    assert_eq!(p.metric(&cx_fail("by_header")).await, Some(1));
    // Nothing ever reached the capture listener's filter chain.
    assert_eq!(
        p.metric(&format!(
            "envoy_listener_downstream_cx_total{{envoy_listener_address=\"{capture_scope}\"}}"
        ))
        .await,
        Some(0)
    );
}
