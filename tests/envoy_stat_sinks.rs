//! The bootstrap's `stats_sinks` against Envoy 1.40: statsd over UDP and over TCP, and
//! the gRPC metrics service, each proxy sending to collectors of its own while the
//! same requests pass through both. Compared: the line format, counters' deltas
//! adding up to their totals, histogram values sent one line each, the metrics
//! service's messages (node in a stream's first message only, one family per stat,
//! cumulative counters, summaries and histograms of the interval) and its reconnection
//! when the server ends a stream. Istio's "all" golden bootstrap carries both sinks.
mod common;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::*;
use envoy_types::pb::{
    envoy::service::metrics::v3::{
        StreamMetricsMessage, StreamMetricsResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    io::prometheus::client::MetricType,
};
use futures_util::StreamExt;
use tokio::io::AsyncBufReadExt;

/// Requests sent through each proxy.
const REQUESTS: u64 = 7;

/// Datagrams received on a UDP socket, one string each.
#[derive(Clone, Default)]
struct Datagrams(Arc<Mutex<Vec<String>>>);

impl Datagrams {
    async fn start() -> (SocketAddr, Datagrams) {
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // A flush is a burst of a few hundred datagrams: room for them all, so a busy
        // machine loses none (forced past rmem_max when root).
        let _ =
            nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RcvBufForce, &(8 << 20));
        let addr = s.local_addr().unwrap();
        let got = Datagrams::default();
        let into = got.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = s.recv(&mut buf).await {
                let d = String::from_utf8_lossy(&buf[..n]).into_owned();
                into.0.lock().unwrap().push(d);
            }
        });
        (addr, got)
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// Lines received on TCP connections.
async fn tcp_lines() -> (SocketAddr, Datagrams) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let got = Datagrams::default();
    let into = got.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let into = into.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(s).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    into.0.lock().unwrap().push(l);
                }
            });
        }
    });
    (addr, got)
}

/// The metrics service: records every message with the number of its stream, and
/// ends each stream (answering) after two messages, so the proxy has to open another.
#[derive(Clone, Default)]
struct Collector {
    got: Arc<Mutex<Vec<(usize, StreamMetricsMessage)>>>,
    streams: Arc<Mutex<usize>>,
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn stream_metrics(
        &self,
        req: tonic::Request<tonic::Streaming<StreamMetricsMessage>>,
    ) -> Result<tonic::Response<StreamMetricsResponse>, tonic::Status> {
        let n = {
            let mut s = self.streams.lock().unwrap();
            *s += 1;
            *s
        };
        let mut stream = req.into_inner();
        for _ in 0..2 {
            match stream.next().await {
                Some(Ok(m)) => self.got.lock().unwrap().push((n, m)),
                _ => break,
            }
        }
        Ok(tonic::Response::new(StreamMetricsResponse {}))
    }
}

async fn metrics_server() -> (SocketAddr, Collector) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let c = Collector::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(c.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    (addr, c)
}

struct Collectors {
    udp: Datagrams,
    tcp: Datagrams,
    grpc: Collector,
}

/// A bootstrap with the three sinks (flushing every second) to fresh collectors, a
/// listener routing to `backend`, and the node `sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local`.
async fn bootstrap(backend: SocketAddr) -> (String, Collectors) {
    let (udp_addr, udp) = Datagrams::start().await;
    let (tcp_addr, tcp) = tcp_lines().await;
    let (grpc_addr, grpc) = metrics_server().await;
    let clusters = format!(
        "{}{}{}",
        static_cluster("backend", &[backend], false),
        static_cluster("statsd_tcp", &[tcp_addr], false),
        static_cluster("metrics", &[grpc_addr], true),
    );
    let routes =
        "              - match: { prefix: / }\n                route: { cluster: backend }\n";
    let yaml = format!(
        r#"node: {{ id: "sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local", cluster: pod.ns }}
stats_flush_interval: 1s
stats_sinks:
- name: envoy.stat_sinks.statsd
  typed_config:
    "@type": type.googleapis.com/envoy.config.metrics.v3.StatsdSink
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }}
- name: envoy.stat_sinks.statsd
  typed_config:
    "@type": type.googleapis.com/envoy.config.metrics.v3.StatsdSink
    tcp_cluster_name: statsd_tcp
    prefix: mesh
- name: envoy.stat_sinks.metrics_service
  typed_config:
    "@type": type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig
    transport_api_version: V3
    grpc_service: {{ envoy_grpc: {{ cluster_name: metrics }} }}
{}"#,
        udp_addr.port(),
        http_bootstrap(routes, &clusters)
    );
    (yaml, Collectors { udp, tcp, grpc })
}

/// A statsd line split into name, value and type.
fn parse(line: &str, prefix: &str) -> Option<(String, i64, String)> {
    let rest = line.strip_prefix(prefix)?.strip_prefix('.')?;
    let (name, rest) = rest.rsplit_once(':')?;
    let (value, kind) = rest.split_once('|')?;
    Some((name.to_owned(), value.parse().ok()?, kind.to_owned()))
}

/// What one proxy's statsd lines say: per counter the sum of its deltas, per gauge its
/// last value, per histogram how many values were sent; and the lines that did not
/// parse.
#[derive(Debug, Default, PartialEq)]
struct Statsd {
    counters: BTreeMap<String, i64>,
    gauges: BTreeMap<String, i64>,
    samples: BTreeMap<String, usize>,
    malformed: Vec<String>,
}

fn statsd(lines: &[String], prefix: &str) -> Statsd {
    let mut s = Statsd::default();
    for l in lines {
        match parse(l, prefix) {
            Some((n, v, k)) if k == "c" => *s.counters.entry(n).or_default() += v,
            Some((n, v, k)) if k == "g" => {
                s.gauges.insert(n, v);
            }
            Some((n, _, k)) if k == "ms" => *s.samples.entry(n).or_default() += 1,
            _ => s.malformed.push(l.clone()),
        }
    }
    s
}

/// The stats both proxies keep for this traffic, as (name, kind) with the value every
/// sink must report after `REQUESTS` requests (None: present, value not compared).
const COMPARED: &[(&str, Option<i64>)] = &[
    (
        "http.ingress_http.downstream_rq_total",
        Some(REQUESTS as i64),
    ),
    ("http.ingress_http.downstream_rq_2xx", Some(REQUESTS as i64)),
    (
        "http.ingress_http.downstream_cx_total",
        Some(REQUESTS as i64),
    ),
    ("cluster.backend.upstream_rq_total", Some(REQUESTS as i64)),
    ("cluster.backend.upstream_rq_200", Some(REQUESTS as i64)),
    ("cluster.backend.upstream_rq_2xx", Some(REQUESTS as i64)),
];

const GAUGES: &[&str] = &[
    "http.ingress_http.downstream_rq_active",
    "cluster.backend.upstream_rq_active",
    "server.live",
];

const HISTOGRAMS: &[&str] = &[
    "http.ingress_http.downstream_rq_time",
    "cluster.backend.upstream_rq_time",
];

/// Sends the requests (a connection each), then waits for two flushes.
async fn traffic(p: &Proxy) {
    for _ in 0..REQUESTS {
        let (status, _) = http_get(p.listener("http"), "/x").await.unwrap();
        assert_eq!(status, 200);
    }
    tokio::time::sleep(Duration::from_millis(2600)).await;
}

/// What the metrics service received, reduced to what both proxies must agree on.
#[derive(Debug, PartialEq)]
struct Streamed {
    /// Per message: its stream, and whether it carried the node (with the node's id).
    identifiers: Vec<(usize, Option<String>)>,
    /// Every family holds one metric with the snapshot's timestamp.
    one_metric_each: bool,
    /// The last message's value of each compared counter (cumulative).
    counters: BTreeMap<String, f64>,
    gauges: Vec<String>,
    /// Per histogram: the kinds sent for it in the first message that has it, and the sum of the
    /// interval sample counts over all messages.
    histograms: BTreeMap<String, (Vec<i32>, u64)>,
    /// Histogram buckets are cumulative, with no +Inf bucket.
    buckets_well_formed: bool,
}

fn streamed(got: &[(usize, StreamMetricsMessage)]) -> Streamed {
    let mut out = Streamed {
        identifiers: Vec::new(),
        one_metric_each: true,
        counters: BTreeMap::new(),
        gauges: Vec::new(),
        histograms: BTreeMap::new(),
        buckets_well_formed: true,
    };
    let mut first_message = BTreeMap::new();
    for (i, (stream, m)) in got.iter().enumerate() {
        out.identifiers.push((
            *stream,
            m.identifier
                .as_ref()
                .and_then(|i| i.node.as_ref())
                .map(|n| n.id.clone()),
        ));
        for f in &m.envoy_metrics {
            let name = f.name.clone().unwrap_or_default();
            out.one_metric_each &= f.metric.len() == 1 && f.metric[0].timestamp_ms.is_some();
            let Some(metric) = f.metric.first() else {
                continue;
            };
            let kind = f.r#type.unwrap_or(-1);
            if kind == MetricType::Counter as i32
                && COMPARED.iter().any(|(n, _)| *n == name)
                && i + 1 == got.len()
            {
                out.counters.insert(
                    name.clone(),
                    metric.counter.as_ref().unwrap().value.unwrap(),
                );
            }
            if kind == MetricType::Gauge as i32 && GAUGES.contains(&name.as_str()) && i == 0 {
                out.gauges.push(name.clone());
            }
            if HISTOGRAMS.contains(&name.as_str()) {
                let first_seen = *first_message.entry(name.clone()).or_insert(i);
                let e = out.histograms.entry(name.clone()).or_default();
                if i == first_seen {
                    e.0.push(kind);
                }
                if let Some(h) = &metric.histogram {
                    e.1 += h.sample_count.unwrap_or(0);
                    let counts: Vec<u64> = h
                        .bucket
                        .iter()
                        .map(|b| b.cumulative_count.unwrap())
                        .collect();
                    out.buckets_well_formed &= counts.windows(2).all(|w| w[0] <= w[1])
                        && h.bucket.iter().all(|b| b.upper_bound.unwrap().is_finite())
                        && counts.last().copied().unwrap_or(0) <= h.sample_count.unwrap_or(0);
                }
            }
        }
    }
    out.gauges.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn stat_sinks_report_as_envoy_does() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let backend = Upstream::start("backend").await;
    let (ours_yaml, ours_got) = bootstrap(backend.addr).await;
    let (theirs_yaml, theirs_got) = bootstrap(backend.addr).await;
    let ours = Proxy::start(&ours_yaml).await;
    let theirs = Proxy::start_bin(&envoy, &theirs_yaml, &["--disable-hot-restart"]).await;
    // The first flush comes a second after start: both have streamed by now or soon.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    traffic(&ours).await;
    traffic(&theirs).await;
    // Both keep flushing while the results are read: take them after the same wait.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let mut d = Differences::default();
    for (who, p, got) in [
        ("pilotfish", &ours, &ours_got),
        ("Envoy", &theirs, &theirs_got),
    ] {
        // Over UDP, a line per datagram.
        let udp = got.udp.all();
        assert!(
            udp.iter().all(|l| !l.contains('\n')),
            "{who}: several lines in a datagram"
        );
        for (prefix, lines) in [("envoy", udp), ("mesh", got.tcp.all())] {
            let s = statsd(&lines, prefix);
            assert!(s.malformed.is_empty(), "{who} {prefix}: {:?}", s.malformed);
            for (name, want) in COMPARED {
                let sum = s.counters.get(*name).copied();
                d.check(format!("{who} {prefix} counter {name}"), *want, sum);
                // Deltas add up to the admin total.
                let total = p.stat(name).await.map(|v| v as i64);
                assert_eq!(sum, total, "{who} {prefix}: {name}'s deltas against /stats");
            }
            for g in GAUGES {
                let v = s.gauges.get(*g).copied();
                assert!(v.is_some(), "{who} {prefix}: gauge {g} missing");
            }
            for h in HISTOGRAMS {
                assert_eq!(
                    s.samples.get(*h).copied(),
                    Some(REQUESTS as usize),
                    "{who} {prefix}: values of {h}"
                );
            }
        }
    }
    d.assert_none();

    let ours_s = streamed(&ours_got.grpc.got.lock().unwrap());
    let theirs_s = streamed(&theirs_got.grpc.got.lock().unwrap());
    // Both flushed about as often; compare the shape of the first four messages.
    let first = |s: &Streamed| s.identifiers.iter().take(4).cloned().collect::<Vec<_>>();
    let node = Some("sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local".to_owned());
    assert_eq!(
        first(&theirs_s),
        vec![(1, node.clone()), (1, None), (2, node.clone()), (2, None)],
        "Envoy's streams"
    );
    assert_eq!(first(&ours_s), first(&theirs_s), "streams and identifiers");
    assert!(ours_s.one_metric_each && theirs_s.one_metric_each);
    assert_eq!(ours_s.counters, theirs_s.counters, "cumulative counters");
    for (name, want) in COMPARED {
        assert_eq!(ours_s.counters.get(*name), want.map(|v| v as f64).as_ref());
    }
    assert_eq!(ours_s.gauges, theirs_s.gauges, "gauges");
    assert_eq!(ours_s.histograms, theirs_s.histograms, "histograms");
    assert!(ours_s.buckets_well_formed && theirs_s.buckets_well_formed);
    assert_eq!(
        ours_s.histograms.get(HISTOGRAMS[0]),
        Some(&(
            vec![MetricType::Summary as i32, MetricType::Histogram as i32],
            REQUESTS
        ))
    );
}

/// `stats_flush_on_admin`: no timer; each admin `/stats` request flushes.
#[tokio::test(flavor = "multi_thread")]
async fn flush_on_admin_flushes_when_stats_are_read() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let backend = Upstream::start("backend").await;
    for bin in [BIN, envoy.as_str()] {
        let (udp_addr, udp) = Datagrams::start().await;
        let routes =
            "              - match: { prefix: / }\n                route: { cluster: backend }\n";
        let yaml = format!(
            r#"stats_flush_on_admin: true
stats_sinks:
- name: envoy.stat_sinks.statsd
  typed_config:
    "@type": type.googleapis.com/envoy.config.metrics.v3.StatsdSink
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }}
    prefix: onadmin
{}"#,
            udp_addr.port(),
            http_bootstrap(routes, &static_cluster("backend", &[backend.addr], false))
        );
        let p = Proxy::start_bin(bin, &yaml, &[]).await;
        let (status, _) = http_get(p.listener("http"), "/x").await.unwrap();
        assert_eq!(status, 200);
        // Past Envoy's default interval: nothing flushed without a /stats request.
        tokio::time::sleep(Duration::from_millis(5500)).await;
        let before = statsd(&udp.all(), "onadmin");
        assert!(before.counters.is_empty(), "{bin}: flushed on a timer");
        p.admin_get("/stats").await;
        let mut after = Statsd::default();
        for _ in 0..50 {
            after = statsd(&udp.all(), "onadmin");
            if after
                .counters
                .contains_key("cluster.backend.upstream_rq_total")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            after.counters.get("cluster.backend.upstream_rq_total"),
            Some(&1),
            "{bin}: {after:?}"
        );
        // Histogram values go out as they are recorded, flush or not.
        assert_eq!(
            before.samples.get("http.ingress_http.downstream_rq_time"),
            Some(&1),
            "{bin}"
        );
    }
}
