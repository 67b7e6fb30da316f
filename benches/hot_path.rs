//! Hot-path micro-benchmarks (criterion): route match over 1,000 routes, the weighted
//! cluster pick, the load-balancer pick, request-header preparation and stats recording.
//! They grow with the hot path (header rewrites join once routing has them). Run
//! with `cargo bench --bench hot_path`; the comparison against Envoy is `./scripts/bench`.
use std::{hint::black_box, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use pilotfish::{
    config::{
        ClusterConfig, ClusterSpec, Discovery, DnsFamily, EndpointConfig, Forward, LbPolicy,
        PathMatch, Route, RouteAction, RouteMatch, RouteTable, UpstreamProtocol, VirtualHost,
        WeightedTarget,
    },
    http::{headers, matchers::RequestHead, route_match::Routes},
    telemetry::{scopes::ClusterStats, stats::Store},
    upstream::ClusterManager,
};

fn cluster(name: &str, hosts: usize) -> ClusterConfig {
    ClusterConfig {
        name: name.into(),
        discovery: Discovery::Static,
        connect_timeout: Duration::from_secs(1),
        protocol: UpstreamProtocol::Http1,
        dns_refresh_rate: Duration::from_secs(5),
        dns_family: DnsFamily::Auto,
        endpoints: (0..hosts)
            .map(|i| EndpointConfig {
                host: format!("10.0.{}.{}", i / 250, i % 250),
                port: 80,
                ..Default::default()
            })
            .collect(),
        original_dst_header: None,
        upstream_socket: Default::default(),
        eds: None,
        ..Default::default()
    }
}

fn table(routes: Vec<Route>) -> RouteTable {
    RouteTable {
        name: "bench".into(),
        virtual_hosts: vec![VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes,
            headers: Default::default(),
            per_filter: Vec::new(),
            attempt_count_request: false,
            attempt_count_response: false,
            virtual_clusters: Vec::new(),
        }],
        ..Default::default()
    }
}

fn route(path: PathMatch, cluster: ClusterSpec) -> Route {
    Route {
        decorator: None,
        name: String::new(),
        matcher: RouteMatch::path(path),
        action: RouteAction::Forward(Forward::to(cluster)),
        headers: Default::default(),
        per_filter: Vec::new(),
    }
}

fn head<'a>(path: &'a str, headers: &'a HeaderMap) -> RequestHead<'a> {
    RequestHead {
        method: "GET",
        scheme: "http",
        authority: "reviews:9080",
        path_and_query: path,
        headers,
    }
}

fn route_match(c: &mut Criterion) {
    let clusters = ClusterManager::new(&[cluster("c", 1)], &Store::new());
    let routes = (0..1000)
        .map(|i| {
            route(
                PathMatch::Prefix(format!("/service-{i}/")),
                ClusterSpec::Single("c".into()),
            )
        })
        .collect();
    let routes = Routes::new(&table(routes), &pilotfish::telemetry::stats::Store::new()).unwrap();
    let clusters = clusters.snapshot();
    let none = HeaderMap::new();
    let mut g = c.benchmark_group("route match over 1,000 prefix routes");
    for (name, path) in [
        ("first route matches", "/service-0/x"),
        ("last route matches", "/service-999/x"),
        ("no route matches", "/nothing"),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                routes
                    .route(black_box(&head(path, &none)), &clusters)
                    .is_some()
            })
        });
    }
    g.finish();
}

fn weighted_pick(c: &mut Criterion) {
    let clusters = ClusterManager::new(&[cluster("v1", 1), cluster("v2", 1)], &Store::new());
    let split = ClusterSpec::Weighted(vec![
        WeightedTarget::new("v1", 75),
        WeightedTarget::new("v2", 25),
    ]);
    let routes = Routes::new(
        &table(vec![route(PathMatch::Prefix("/".into()), split)]),
        &pilotfish::telemetry::stats::Store::new(),
    )
    .unwrap();
    let clusters = clusters.snapshot();
    let none = HeaderMap::new();
    c.bench_function("route match + weighted cluster pick (75/25)", |b| {
        b.iter(|| {
            routes
                .route(black_box(&head("/", &none)), &clusters)
                .unwrap()
                .cluster()
                .map(|c| c.name().len())
        })
    });
}

fn lb_pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("load balancer pick");
    let policies = [
        ("round robin", LbPolicy::RoundRobin),
        (
            "least request",
            LbPolicy::LeastRequest {
                choice_count: 2,
                active_request_bias: 1.0,
                full_scan: false,
            },
        ),
        ("random", LbPolicy::Random),
        (
            "ring hash",
            LbPolicy::RingHash {
                min_size: 1024,
                max_size: 8 << 20,
            },
        ),
        ("maglev", LbPolicy::Maglev { table_size: 65537 }),
    ];
    for hosts in [3, 100, 1000] {
        for (name, policy) in policies {
            for weighted in [false, true] {
                if weighted && policy.hashes() {
                    continue;
                }
                let mut config = cluster("c", hosts);
                config.lb.policy = policy;
                if weighted {
                    for (i, e) in config.endpoints.iter_mut().enumerate() {
                        e.attrs.weight = 1 + (i % 3) as u32;
                    }
                }
                let clusters = ClusterManager::new(&[config], &Store::new());
                let cluster = clusters.get("c").unwrap();
                let label = if weighted { " (weighted)" } else { "" };
                let mut key = 0u64;
                g.bench_function(format!("{name}{label} over {hosts} hosts"), |b| {
                    b.iter(|| {
                        key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
                        cluster.pick_hashed(None, Some(black_box(key)))
                    })
                });
            }
        }
    }
    g.finish();
}

fn request_headers(c: &mut Criterion) {
    let mut template = HeaderMap::new();
    for (k, v) in [
        ("host", "reviews.default.svc.cluster.local:9080"),
        ("user-agent", "curl/8.0"),
        ("accept", "*/*"),
        ("connection", "keep-alive, x-hop"),
        ("x-hop", "1"),
        ("te", "trailers, deflate"),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
    ] {
        template.insert(k, HeaderValue::from_static(v));
    }
    c.bench_function("request headers: strip hop-by-hop, add x-request-id", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |h| {
                headers::strip_hop_by_hop(h);
                h.insert("x-request-id", headers::request_id());
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

fn stats_record(c: &mut Criterion) {
    let stats = ClusterStats::new(&Store::new(), "c");
    let mut i = 0u32;
    c.bench_function("stats: record a response code", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            stats
                .upstream_rq
                .record(if i.is_multiple_of(10) { 503 } else { 200 });
        })
    });
}

criterion_group!(
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = route_match, weighted_pick, lb_pick, request_headers, stats_record
);
criterion_main!(benches);
