//! Hot-path micro-benchmarks: route matching over 1,000 routes and the cluster pick.
//! `cargo bench --bench hot_path` prints nanoseconds per operation. (The comparison
//! harness against Envoy lives with the benchmark work; see docs/benchmarks.md.)
use std::{hint::black_box, time::Instant};

use pilotfish::{
    config::{
        ClusterConfig, Discovery, DnsFamily, EndpointConfig, PathMatch, Route, RouteTable,
        UpstreamProtocol, VirtualHost,
    },
    http::route_match::Routes,
    telemetry::stats::Store,
    upstream::ClusterManager,
};

fn measure(name: &str, iters: u64, mut f: impl FnMut(u64)) {
    for i in 0..iters / 10 {
        f(i);
    }
    let start = Instant::now();
    for i in 0..iters {
        f(i);
    }
    let ns = start.elapsed().as_nanos() as f64 / iters as f64;
    println!("{name:<40} {ns:>10.1} ns/op");
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // built by `cargo test --all-targets`: nothing to check here
    }
    let cluster = ClusterConfig {
        name: "c".into(),
        discovery: Discovery::Static,
        connect_timeout: std::time::Duration::from_secs(1),
        protocol: UpstreamProtocol::Http1,
        dns_refresh_rate: std::time::Duration::from_secs(5),
        dns_family: DnsFamily::Auto,
        endpoints: (0..8)
            .map(|i| EndpointConfig {
                host: format!("10.0.0.{i}"),
                port: 80,
            })
            .collect(),
    };
    let clusters = ClusterManager::new(&[cluster], &Store::new());
    let routes = (0..1000)
        .map(|i| Route {
            name: String::new(),
            path: PathMatch::Prefix(format!("/service-{i}/")),
            case_sensitive: true,
            cluster: "c".into(),
            timeout: None,
        })
        .collect();
    let table = RouteTable {
        name: "bench".into(),
        virtual_hosts: vec![VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes,
        }],
    };
    let routes = Routes::new(&table, &clusters).unwrap();
    measure("route match, first of 1000", 1_000_000, |_| {
        black_box(routes.route(black_box("x"), black_box("/service-0/x")));
    });
    measure("route match, last of 1000", 100_000, |_| {
        black_box(routes.route(black_box("x"), black_box("/service-999/x")));
    });
    let c = clusters.get("c").unwrap();
    measure("round-robin pick over 8 hosts", 10_000_000, |_| {
        black_box(c.pick(None));
    });
    let counter = pilotfish::telemetry::scopes::ClusterStats::new(&Store::new(), "c");
    measure("stats: record a response code", 10_000_000, |i| {
        counter
            .upstream_rq
            .record(if i % 10 == 0 { 503 } else { 200 });
    });
}
