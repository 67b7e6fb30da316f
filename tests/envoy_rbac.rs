//! RBAC, network and HTTP, pilotfish and Envoy 1.40 on the same bootstrap: a table of
//! connections and requests (source addresses picked on 127/8, paths, methods,
//! headers, ports) answered the same way, with the same counters. The network filter
//! sits before tcp_proxy in one chain, as istiod places it.
mod common;

use std::net::SocketAddr;

use common::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

const RBAC_NET: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
const RBAC_HTTP: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const RBAC_ROUTE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute";

fn bootstrap(http_up: SocketAddr, tcp_up: SocketAddr) -> String {
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: tcp
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.rbac
        typed_config:
          "@type": {RBAC_NET}
          stat_prefix: tcp.
          rules:
            action: DENY
            policies:
              blocked-source:
                permissions: [{{ any: true }}]
                principals: [{{ direct_remote_ip: {{ address_prefix: 127.0.0.66, prefix_len: 32 }} }}]
          shadow_rules_stat_prefix: istio_dry_run_allow_
          shadow_rules:
            action: ALLOW
            policies:
              only-77:
                permissions: [{{ any: true }}]
                principals: [{{ remote_ip: {{ address_prefix: 127.0.0.77, prefix_len: 32 }} }}]
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp_backend
          cluster: tcp_backend
  - name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: /open }}
                route: {{ cluster: backend }}
                typed_per_filter_config:
                  envoy.filters.http.rbac.allow: {{ "@type": {RBAC_ROUTE} }}
              - match: {{ prefix: / }}
                route: {{ cluster: backend }}
          http_filters:
          - name: envoy.filters.http.rbac.deny
            typed_config:
              "@type": {RBAC_HTTP}
              rules:
                action: DENY
                policies:
                  no-delete:
                    permissions: [{{ header: {{ name: ":method", string_match: {{ exact: DELETE }} }} }}]
                    principals: [{{ any: true }}]
                  no-admin-from-66:
                    permissions: [{{ url_path: {{ path: {{ prefix: /admin }} }} }}]
                    principals: [{{ remote_ip: {{ address_prefix: 127.0.0.66, prefix_len: 32 }} }}]
          - name: envoy.filters.http.rbac.allow
            typed_config:
              "@type": {RBAC_HTTP}
              rules:
                action: ALLOW
                policies:
                  reads:
                    permissions:
                    - and_rules:
                        rules:
                        - or_rules: {{ rules: [{{ header: {{ name: ":method", string_match: {{ exact: GET }} }} }}, {{ header: {{ name: ":method", string_match: {{ exact: HEAD }} }} }}] }}
                        - not_rule: {{ url_path: {{ path: {{ exact: /secret }} }} }}
                    principals: [{{ any: true }}]
                  team-writes:
                    permissions: [{{ destination_port_range: {{ start: 1, end: 65536 }} }}]
                    principals:
                    - and_ids:
                        ids:
                        - header: {{ name: x-team, string_match: {{ exact: blue }} }}
                        - not_id: {{ direct_remote_ip: {{ address_prefix: 127.0.0.88, prefix_len: 32 }} }}
                  nobody-authenticated:
                    permissions: [{{ any: true }}]
                    principals: [{{ authenticated: {{ principal_name: {{ prefix: "spiffe://" }} }} }}]
              shadow_rules_stat_prefix: istio_dry_run_allow_
              shadow_rules:
                action: DENY
                policies:
                  dry-deny-posts:
                    permissions: [{{ header: {{ name: ":method", string_match: {{ exact: POST }} }} }}]
                    principals: [{{ any: true }}]
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
{http}{tcp}"#,
        http = static_cluster("backend", &[http_up], false),
        tcp = static_cluster("tcp_backend", &[tcp_up], false),
    )
}

/// An upstream that answers every connection with one line.
async fn tcp_greeter() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 64];
                let _ = s.read(&mut b).await;
                let _ = s.write_all(b"hello\n").await;
            });
        }
    });
    addr
}

/// Connects from `source` (an address on 127/8) to `to`.
async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{source}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

async fn tcp_answer(source: &str, to: SocketAddr) -> String {
    let mut s = connect_from(source, to).await;
    let _ = s.write_all(b"hi\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn http_status(
    source: &str,
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> String {
    let mut s = connect_from(source, to).await;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 0\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).unwrap_or("---").to_owned();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    if status == "403" {
        format!("403 {body}")
    } else {
        status
    }
}

/// Source address, method, path, headers.
type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)]);

#[tokio::test]
async fn rbac_decides_as_envoy_does() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let up = Upstream::start("backend").await;
    let tcp_up = tcp_greeter().await;
    let yaml = bootstrap(up.addr, tcp_up);
    let theirs = Proxy::start_bin(&envoy, &yaml, &["--disable-hot-restart"]).await;
    let ours = Proxy::start(&yaml).await;
    let mut diff = Differences::default();
    for (source, what) in [
        ("127.0.0.1", "allowed source"),
        ("127.0.0.66", "denied source"),
        ("127.0.0.77", "shadow-allowed source"),
    ] {
        diff.check(
            format!("tcp from {source} ({what})"),
            tcp_answer(source, theirs.listener("tcp")).await,
            tcp_answer(source, ours.listener("tcp")).await,
        );
    }
    let cases: &[Case] = &[
        ("127.0.0.1", "GET", "/a", &[]),
        ("127.0.0.1", "HEAD", "/a", &[]),
        ("127.0.0.1", "GET", "/secret", &[]),
        ("127.0.0.1", "POST", "/a", &[]),
        ("127.0.0.1", "POST", "/a", &[("x-team", "blue")]),
        ("127.0.0.88", "POST", "/a", &[("x-team", "blue")]),
        ("127.0.0.1", "PUT", "/a", &[("x-team", "red")]),
        ("127.0.0.1", "DELETE", "/a", &[("x-team", "blue")]),
        ("127.0.0.66", "GET", "/admin/x", &[]),
        ("127.0.0.1", "GET", "/admin/x", &[]),
        ("127.0.0.66", "GET", "/adminx", &[]),
        ("127.0.0.1", "POST", "/open/x", &[]),
        ("127.0.0.1", "DELETE", "/open/x", &[]),
        // remote_ip from x-forwarded-for (use_remote_address false: its last address).
        (
            "127.0.0.1",
            "GET",
            "/admin",
            &[("x-forwarded-for", "10.0.0.1, 127.0.0.66")],
        ),
        (
            "127.0.0.66",
            "GET",
            "/admin",
            &[("x-forwarded-for", "127.0.0.9")],
        ),
    ];
    for (source, method, path, headers) in cases {
        diff.check(
            format!("{method} {path} from {source} {headers:?}"),
            http_status(source, theirs.listener("http"), method, path, headers).await,
            http_status(source, ours.listener("http"), method, path, headers).await,
        );
    }
    // The counters, under Envoy's default tags.
    diff.check(
        "rbac counters",
        theirs.prometheus_lines("rbac").await,
        ours.prometheus_lines("rbac").await,
    );
    diff.assert_none();
    // Not a vacuous agreement: some pass, some are refused.
    assert_eq!(
        tcp_answer("127.0.0.1", ours.listener("tcp")).await,
        "hello\n"
    );
    assert_eq!(tcp_answer("127.0.0.66", ours.listener("tcp")).await, "");
    assert_eq!(
        http_status("127.0.0.1", ours.listener("http"), "GET", "/a", &[]).await,
        "200"
    );
    assert_eq!(
        http_status("127.0.0.1", ours.listener("http"), "DELETE", "/a", &[]).await,
        "403 RBAC: access denied"
    );
}
