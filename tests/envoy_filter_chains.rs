//! Filter-chain selection, differentially: one listener with the TLS and HTTP
//! inspectors and chains matching on server names, transport protocol, ALPN and source
//! address, in Envoy 1.40 and pilotfish. Each chain's upstream greets with its name, so
//! the greeting says which chain a connection got; both proxies must agree on every
//! connection (and count the same `no_filter_chain_match`).
mod common;

use std::{net::SocketAddr, time::Duration};

use common::*;
use pilotfish::listener::tls_hello::client_hello_bytes;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket},
};

/// The listener's TLS and HTTP inspectors (YAML, at a listener's indentation).
const INSPECTORS: &str = r#"    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector }
    - name: envoy.filters.listener.http_inspector
      typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector }
    listener_filters_timeout: 0.5s
    continue_on_listener_filters_timeout: true
"#;

/// The chains, as `(name, filter_chain_match)`.
const CHAINS: &[(&str, &str)] = &[
    ("exact-sni", "{ server_names: [api.example.com] }"),
    ("wildcard-sni", "{ server_names: [\"*.example.com\"] }"),
    (
        "tls-h2",
        "{ transport_protocol: tls, application_protocols: [h2] }",
    ),
    ("tls", "{ transport_protocol: tls }"),
    ("http1", "{ application_protocols: [http/1.1] }"),
    ("h2c", "{ application_protocols: [h2c] }"),
    (
        "from-127.0.0.2",
        "{ source_prefix_ranges: [{ address_prefix: 127.0.0.2, prefix_len: 32 }] }",
    ),
];

/// An upstream that writes its name as soon as a connection arrives.
async fn greeter(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(format!("{name}\n").as_bytes()).await;
                let mut sink = [0u8; 1024];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// One greeter per chain name: the tcp_proxy filter list that reaches it, and the
/// static cluster in front of it.
async fn backend(name: &str) -> (String, String) {
    let addr = greeter(Box::leak(name.to_owned().into_boxed_str())).await;
    let tcp = format!(
        "[{{ name: envoy.filters.network.tcp_proxy, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: {name}, cluster: {name} }} }}]"
    );
    let cluster = format!(
        "  - name: {name}\n    connect_timeout: 1s\n    load_assignment: {{ cluster_name: {name}, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }} }}] }}] }}\n",
        addr.port()
    );
    (tcp, cluster)
}

async fn bootstrap(with_default: bool) -> String {
    let mut chains = String::new();
    let mut clusters = String::new();
    let names = CHAINS.iter().map(|(n, _)| *n).chain(["default"]);
    for name in names {
        let (tcp, cluster) = backend(name).await;
        clusters.push_str(&cluster);
        match CHAINS.iter().find(|(n, _)| *n == name) {
            Some((_, m)) => chains.push_str(&format!(
                "    - filter_chain_match: {m}\n      filters: {tcp}\n"
            )),
            None if with_default => chains.push_str(&format!(
                "    default_filter_chain:\n      filters: {tcp}\n"
            )),
            None => {}
        }
    }
    // default_filter_chain sits beside filter_chains, not in the list.
    let (list, default) = match chains.split_once("    default_filter_chain:") {
        Some((l, d)) => (l.to_owned(), format!("    default_filter_chain:{d}")),
        None => (chains, String::new()),
    };
    format!(
        r#"admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }} }}
static_resources:
  listeners:
  - name: chains
    stat_prefix: chains
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
{INSPECTORS}    filter_chains:
{list}{default}  clusters:
{clusters}"#
    )
}

/// What a client sends first.
#[derive(Debug, Clone, Copy)]
enum Opening {
    Hello(Option<&'static str>, &'static [&'static str]),
    Bytes(&'static [u8]),
    Nothing,
}

/// The chain a connection from `src` opening with `opening` lands on: the greeting,
/// or `closed` when the proxy closes it without one.
async fn landed(proxy: SocketAddr, src: &str, opening: Opening) -> String {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    let mut s = sock.connect(proxy).await.unwrap();
    match opening {
        Opening::Hello(sni, alpn) => s
            .write_all(&client_hello_bytes(sni, alpn, 1))
            .await
            .unwrap(),
        Opening::Bytes(b) => s.write_all(b).await.unwrap(),
        Opening::Nothing => {}
    }
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    let read = async {
        while let Ok(1) = s.read(&mut b).await {
            if b[0] == b'\n' {
                break;
            }
            line.push(b[0]);
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    if line.is_empty() {
        "closed".into()
    } else {
        String::from_utf8_lossy(&line).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_chain_selection_matches_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let cases: &[(&str, Opening)] = &[
        ("127.0.0.1", Opening::Hello(Some("api.example.com"), &[])),
        (
            "127.0.0.1",
            Opening::Hello(Some("www.api.example.com"), &["h2"]),
        ),
        ("127.0.0.1", Opening::Hello(Some("example.com"), &["h2"])),
        (
            "127.0.0.1",
            Opening::Hello(Some("example.com"), &["http/1.1", "h2"]),
        ),
        ("127.0.0.1", Opening::Hello(None, &[])),
        ("127.0.0.2", Opening::Hello(None, &["h2"])),
        (
            "127.0.0.1",
            Opening::Bytes(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"),
        ),
        ("127.0.0.1", Opening::Bytes(b"GET / HTTP/1.0\r\n\r\n")),
        (
            "127.0.0.1",
            Opening::Bytes(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        ),
        ("127.0.0.2", Opening::Bytes(b"\x00\x01binary")),
        ("127.0.0.1", Opening::Bytes(b"\x00\x01binary")),
        ("127.0.0.2", Opening::Nothing),
        ("127.0.0.1", Opening::Nothing),
    ];
    let mut diffs = Differences::default();
    let mut chosen = std::collections::BTreeSet::new();
    for with_default in [true, false] {
        let yaml = bootstrap(with_default).await;
        let theirs = Proxy::start_bin(&envoy, &yaml, &["--disable-hot-restart"]).await;
        let ours = Proxy::start(&yaml).await;
        for (src, opening) in cases {
            let envoy_got = landed(theirs.listener("chains"), src, *opening).await;
            let ours_got = landed(ours.listener("chains"), src, *opening).await;
            chosen.insert(ours_got.clone());
            diffs.check(
                format!("default chain: {with_default}, from {src}, {opening:?}"),
                envoy_got,
                ours_got,
            );
        }
        assert_same_samples(
            &ours,
            &theirs,
            &["envoy_listener_no_filter_chain_match{envoy_listener_address=\"chains\"}"],
        )
        .await;
    }
    diffs.assert_none();
    // The cases reach every chain, the default one, and no chain at all.
    let all: std::collections::BTreeSet<String> = CHAINS
        .iter()
        .map(|(n, _)| n.to_string())
        .chain(["default".into(), "closed".into()])
        .collect();
    assert_eq!(chosen, all, "chains reached");
}

const INPUT: &str = "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3";

fn input(kind: &str) -> String {
    format!("{{ name: {kind}, typed_config: {{ \"@type\": {INPUT}.{kind} }} }}")
}

fn to_chain(name: &str) -> String {
    format!(
        "{{ action: {{ name: {name}, typed_config: {{ \"@type\": type.googleapis.com/google.protobuf.StringValue, value: {name} }} }} }}"
    )
}

fn single(kind: &str, exact_or: &str) -> String {
    format!(
        "{{ single_predicate: {{ input: {}, {exact_or} }} }}",
        input(kind)
    )
}

/// A listener on 0.0.0.0 choosing chains with `filter_chain_matcher`: istiod's waypoint
/// shape (destination IP ranges, then ALPN with the TCP chain as `on_no_match`) and
/// the rest of the matcher: a predicate list (SNI exact and suffix, and/not, a source
/// IP range), a prefix map on SNI whose longer prefix's subtree misses, an exclusive
/// range skipped after a more specific one failed, and an action naming no chain.
async fn matcher_bootstrap() -> String {
    let names = [
        "http",
        "tcp",
        "sni-exact",
        "sni-suffix",
        "tls-not-h2",
        "from-5",
        "pa",
        "ab-raw",
        "wide",
    ];
    let mut chains = String::new();
    let mut clusters = String::new();
    for name in names.iter().chain(&["default"]) {
        let (tcp, cluster) = backend(name).await;
        clusters.push_str(&cluster);
        if *name == "default" {
            chains.push_str(&format!(
                "    default_filter_chain:\n      filters: {tcp}\n"
            ));
        } else {
            // A filter_chain_match that would send everything elsewhere: ignored.
            chains.push_str(&format!(
                "    - name: {name}\n      filter_chain_match: {{ destination_port: 1 }}\n      filters: {tcp}\n"
            ));
        }
    }
    let (list, default) = chains.split_once("    default_filter_chain:").unwrap();
    let alpn = format!(
        "{{ matcher: {{ matcher_tree: {{ input: {}, exact_match_map: {{ map: {{ \"'h2c'\": {http}, \"'http/1.1'\": {http} }} }} }}, on_no_match: {tcp} }} }}",
        input("ApplicationProtocolInput"),
        http = to_chain("http"),
        tcp = to_chain("tcp"),
    );
    let list_matcher = format!(
        "{{ matcher: {{ matcher_list: {{ matchers: [\
         {{ predicate: {}, on_match: {} }}, \
         {{ predicate: {}, on_match: {} }}, \
         {{ predicate: {{ and_matcher: {{ predicate: [{}, {{ not_matcher: {} }}] }} }}, on_match: {} }}, \
         {{ predicate: {}, on_match: {} }}] }} }} }}",
        single("ServerNameInput", "value_match: { exact: api.example.com }"),
        to_chain("sni-exact"),
        single("ServerNameInput", "value_match: { suffix: .example.com }"),
        to_chain("sni-suffix"),
        single("TransportProtocolInput", "value_match: { exact: tls }"),
        single(
            "ApplicationProtocolInput",
            "value_match: { exact: \"'h2'\" }"
        ),
        to_chain("tls-not-h2"),
        single(
            "SourceIPInput",
            "custom_match: { name: ip, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.matching.input_matchers.ip.v3.Ip, stat_prefix: src, cidr_ranges: [{ address_prefix: 127.0.0.5, prefix_len: 32 }] } }"
        ),
        to_chain("from-5"),
    );
    let prefix = format!(
        "{{ matcher: {{ matcher_tree: {{ input: {}, prefix_match_map: {{ map: {{ a: {}, ab: {{ matcher: {{ matcher_tree: {{ input: {}, exact_match_map: {{ map: {{ raw_buffer: {} }} }} }} }} }} }} }} }} }} }}",
        input("ServerNameInput"),
        to_chain("pa"),
        input("TransportProtocolInput"),
        to_chain("ab-raw"),
    );
    let range = |ip: &str, len: u8, on_match: &str, exclusive: bool| {
        format!(
            "            - {{ ranges: [{{ address_prefix: {ip}, prefix_len: {len} }}], exclusive: {exclusive}, on_match: {on_match} }}\n"
        )
    };
    let ranges = [
        range("127.0.0.2", 32, &alpn, false),
        range("127.0.0.3", 32, &to_chain("no-such-chain"), false),
        range("127.0.0.4", 32, &prefix, false),
        range("127.0.0.0", 24, &list_matcher, false),
        range("127.0.0.0", 8, &to_chain("wide"), true),
    ]
    .concat();
    format!(
        r#"admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }} }}
static_resources:
  listeners:
  - name: chains
    stat_prefix: chains
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 0 }} }}
{INSPECTORS}    filter_chain_matcher:
      matcher_tree:
        input: {dst_ip}
        custom_match:
          name: ip
          typed_config:
            "@type": type.googleapis.com/xds.type.matcher.v3.IPMatcher
            range_matchers:
{ranges}    filter_chains:
{list}    default_filter_chain:{default}  clusters:
{clusters}"#,
        dst_ip = input("DestinationIPInput"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_chain_matcher_selects_as_envoy_does() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let http1: &[u8] = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
    let h2c: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let binary: &[u8] = b"\x00\x01binary";
    // Source, destination, opening.
    let cases: &[(&str, &str, Opening)] = &[
        ("127.0.0.1", "127.0.0.2", Opening::Bytes(http1)),
        ("127.0.0.1", "127.0.0.2", Opening::Bytes(h2c)),
        ("127.0.0.1", "127.0.0.2", Opening::Hello(None, &["h2"])),
        ("127.0.0.1", "127.0.0.2", Opening::Bytes(binary)),
        ("127.0.0.1", "127.0.0.3", Opening::Bytes(binary)),
        ("127.0.0.1", "127.0.0.4", Opening::Hello(Some("abc"), &[])),
        ("127.0.0.1", "127.0.0.4", Opening::Hello(Some("axe"), &[])),
        (
            "127.0.0.1",
            "127.0.0.4",
            Opening::Hello(Some("api.example.com"), &[]),
        ),
        (
            "127.0.0.1",
            "127.0.0.1",
            Opening::Hello(Some("api.example.com"), &[]),
        ),
        (
            "127.0.0.1",
            "127.0.0.1",
            Opening::Hello(Some("www.example.com"), &["h2"]),
        ),
        (
            "127.0.0.1",
            "127.0.0.1",
            Opening::Hello(None, &["http/1.1"]),
        ),
        ("127.0.0.1", "127.0.0.1", Opening::Hello(None, &["h2"])),
        ("127.0.0.5", "127.0.0.1", Opening::Bytes(binary)),
        ("127.0.0.1", "127.0.0.1", Opening::Bytes(binary)),
        ("127.0.0.1", "127.1.0.1", Opening::Bytes(binary)),
        ("127.0.0.1", "127.0.0.9", Opening::Nothing),
    ];
    let yaml = matcher_bootstrap().await;
    let theirs = Proxy::start_bin(&envoy, &yaml, &["--disable-hot-restart"]).await;
    let ours = Proxy::start(&yaml).await;
    let at =
        |p: &Proxy, dst: &str| SocketAddr::new(dst.parse().unwrap(), p.listener("chains").port());
    let mut diffs = Differences::default();
    let mut chosen = std::collections::BTreeSet::new();
    for (src, dst, opening) in cases {
        let envoy_got = landed(at(&theirs, dst), src, *opening).await;
        let ours_got = landed(at(&ours, dst), src, *opening).await;
        chosen.insert(ours_got.clone());
        diffs.check(format!("{src} -> {dst}, {opening:?}"), envoy_got, ours_got);
    }
    assert_same_samples(
        &ours,
        &theirs,
        &["envoy_listener_no_filter_chain_match{envoy_listener_address=\"chains\"}"],
    )
    .await;
    diffs.assert_none();
    let all: std::collections::BTreeSet<String> = [
        "http",
        "tcp",
        "sni-exact",
        "sni-suffix",
        "tls-not-h2",
        "from-5",
        "pa",
        "wide",
        "default",
        "closed",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(chosen, all, "chains reached");
}
