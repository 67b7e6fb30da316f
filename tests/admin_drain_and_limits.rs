//! What pilot-agent and Istio's bootstrap ask of the process beyond routing, pilotfish
//! and Envoy side by side: `/drain_listeners?inboundonly&graceful` (what pilot-agent
//! sends on SIGTERM), the global downstream connection limit of the overload manager,
//! the connection_limit network filter, and the admin access log.
mod common;

use std::{net::SocketAddr, time::Duration};

use common::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn bootstrap(upstream: SocketAddr, admin_log: &str, limit: Option<u32>) -> String {
    let listener = |name: &str, ip: &str, direction: &str, exempt: bool| {
        format!(
            r#"
  - name: {name}
    address: {{ socket_address: {{ address: {ip}, port_value: 0 }} }}
    traffic_direction: {direction}
    ignore_global_conn_limit: {exempt}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: / }}
                route: {{ cluster: backend }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}"#
        )
    };
    let overload = match limit {
        Some(n) => format!(
            r#"
overload_manager:
  resource_monitors:
  - name: envoy.resource_monitors.global_downstream_max_connections
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
      max_active_downstream_connections: {n}"#
        ),
        None => String::new(),
    };
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
  access_log:
  - name: envoy.access_loggers.file
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
      path: {admin_log}
{overload}
static_resources:
  listeners:{inbound}{outbound}{exempt}
  clusters:
{backend}"#,
        inbound = listener("inbound", "127.0.0.1", "INBOUND", false),
        outbound = listener("outbound", "127.0.0.2", "OUTBOUND", false),
        exempt = listener("exempt", "127.0.0.3", "OUTBOUND", true),
        backend = static_cluster("backend", &[upstream], false),
    )
}

/// One keep-alive request on `s`; returns the status and whether the response said
/// `connection: close`.
async fn request(s: &mut TcpStream) -> (u16, bool) {
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a response");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return (
                    text[9..12].parse().unwrap(),
                    text.contains("connection: close"),
                );
            }
        }
    }
}

#[tokio::test]
async fn inbound_listeners_drain_on_the_agents_request_and_the_rest_keep_serving() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let up = Upstream::start("backend").await;
    let dir = tempfile::tempdir().unwrap();
    for bin in [envoy.as_str(), BIN] {
        let log = dir.path().join(format!("admin-{}.log", bin.len()));
        let yaml = bootstrap(up.addr, log.to_str().unwrap(), None);
        let p = Proxy::start_bin(
            bin,
            &yaml,
            &[
                "--drain-time-s",
                "1",
                "--drain-strategy",
                "immediate",
                "--disable-hot-restart",
                "--file-flush-interval-msec",
                "100",
            ],
        )
        .await;
        let (inbound, outbound) = (p.listener("inbound"), p.listener("outbound"));
        let mut keep_in = TcpStream::connect(inbound).await.unwrap();
        let mut keep_out = TcpStream::connect(outbound).await.unwrap();
        assert_eq!(request(&mut keep_in).await, (200, false), "{bin}");
        let (code, body) =
            send_admin(p.admin, "POST", "/drain_listeners?inboundonly&graceful").await;
        assert_eq!((code, body.as_str()), (200, "OK\n"), "{bin}");
        // Inbound answers, but says close; outbound is untouched; the server stays live.
        assert_eq!(request(&mut keep_in).await, (200, true), "{bin} inbound");
        assert_eq!(request(&mut keep_out).await, (200, false), "{bin} outbound");
        let mut fresh = TcpStream::connect(inbound).await.unwrap();
        assert_eq!(request(&mut fresh).await, (200, true), "{bin} new inbound");
        assert_eq!(p.admin_get("/ready").await, (200, "LIVE\n".into()), "{bin}");
        // After the drain time the inbound listener stops; outbound still serves.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(
            TcpStream::connect(inbound).await.is_err(),
            "{bin}: inbound still accepts after the drain time"
        );
        let mut again = TcpStream::connect(outbound).await.unwrap();
        assert_eq!(
            request(&mut again).await,
            (200, false),
            "{bin} outbound after"
        );
        // The admin access log has a line per admin request (Envoy's default format).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("\"POST /drain_listeners?inboundonly&graceful HTTP/1.1\" 200") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{bin} admin access log: {text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn send_admin(admin: SocketAddr, method: &str, target: &str) -> (u16, String) {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(format!("{method} {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let body = if head.to_ascii_lowercase().contains("chunked") {
        // One chunk is enough for these short answers.
        body.split_once("\r\n")
            .map(|(_, rest)| rest.split("\r\n").next().unwrap_or("").to_owned() + "\n")
            .unwrap_or_default()
            .trim_end_matches('\n')
            .to_owned()
            + "\n"
    } else {
        body.to_owned()
    };
    (head[9..12].parse().unwrap(), body)
}

/// Istio's overload manager monitor: over the limit a connection is closed at once and
/// counted; a listener with `ignore_global_conn_limit` is not limited.
#[tokio::test]
async fn the_global_connection_limit_as_envoy_enforces_it() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let up = Upstream::start("backend").await;
    let mut diff = Differences::default();
    for bin in [envoy.as_str(), BIN] {
        let yaml = bootstrap(up.addr, "/dev/null", Some(2));
        let p = Proxy::start_bin(bin, &yaml, &["--disable-hot-restart"]).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(p.listener("outbound")).await.unwrap();
            assert_eq!(request(&mut s).await.0, 200, "{bin}");
            held.push(s);
        }
        // The third is accepted by the kernel and closed by the proxy.
        let mut third = TcpStream::connect(p.listener("inbound")).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
            .await
            .expect("the proxy did not close the connection over the limit")
            .unwrap_or(0);
        assert_eq!(n, 0, "{bin}");
        // The exempt listener still takes connections.
        let mut exempt = TcpStream::connect(p.listener("exempt")).await.unwrap();
        assert_eq!(request(&mut exempt).await.0, 200, "{bin}");
        let overflow =
            "envoy_listener_downstream_global_cx_overflow{envoy_listener_address=\"127.0.0.1_";
        let prom = p.prometheus().await;
        let got: Vec<&str> = prom.lines().filter(|l| l.starts_with(overflow)).collect();
        // At least once: a loaded machine may see the kernel hand over one more
        // connection attempt before the client gives up.
        let counted = got.iter().any(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v >= 1.0)
        });
        diff.check(format!("{bin}: overflow counted"), true, counted);
        // A place frees when a held connection closes.
        drop(held.pop());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut fourth = TcpStream::connect(p.listener("inbound")).await.unwrap();
        assert_eq!(request(&mut fourth).await.0, 200, "{bin}");
    }
    diff.assert_none();
}

/// `envoy.filters.network.connection_limit` before a `tcp_proxy`: two connections at
/// once on the chain, a third closed (at once, or after `delay`), counted in
/// `connection_limit.<prefix>.limited_connections` with the active ones in a gauge, and
/// a place freed when one closes; the same in both, Prometheus names included.
#[tokio::test]
async fn the_connection_limit_filter_as_envoy_enforces_it() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let echo = tcp_echo_server().await;
    let mut seen = Vec::new();
    for bin in [envoy.as_str(), BIN] {
        for delay in ["", ", delay: 0.2s"] {
            let yaml = tcp_proxy_bootstrap(echo, "tcp", "").replace(
                "    - filters:\n",
                &format!(
                    "    - filters:\n      - name: envoy.filters.network.connection_limit\n        typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit, stat_prefix: cl, max_connections: 2{delay} }}\n"
                ),
            );
            let p = Proxy::start_bin(bin, &yaml, &["--disable-hot-restart"]).await;
            let mut held = Vec::new();
            for _ in 0..2 {
                held.push(echo_round_trip(p.listener("tcp"), b"in").await);
            }
            let mut third = TcpStream::connect(p.listener("tcp")).await.unwrap();
            let _ = third.write_all(b"over").await;
            let mut buf = [0u8; 16];
            let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
                .await
                .expect("the connection over the limit was not closed")
                .unwrap_or(0);
            assert_eq!(n, 0, "{bin}: the third connection got an answer");
            let stats = (
                p.stat("connection_limit.cl.limited_connections").await,
                p.stat("connection_limit.cl.active_connections").await,
            );
            let mut prom: Vec<String> = p
                .prometheus()
                .await
                .lines()
                .filter(|l| l.starts_with("envoy_connection_limit"))
                .map(str::to_owned)
                .collect();
            prom.sort();
            drop(held.pop());
            tokio::time::sleep(Duration::from_millis(300)).await;
            echo_round_trip(p.listener("tcp"), b"again").await;
            seen.push((delay, stats, prom));
        }
    }
    assert_eq!(seen[0].1, (Some(1), Some(2)), "Envoy");
    assert_eq!(
        seen[2..],
        seen[..2],
        "pilotfish (left) against Envoy (right)"
    );
}
