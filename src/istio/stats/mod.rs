//! Istio's standard metrics (`istio.stats`, `stats.PluginConfig`, the HTTP and the
//! network filter): `istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes`, the gRPC message counters and the
//! `istio_tcp_*` family, labelled as istio-proxy labels them (see `labels.rs`), and
//! `istio_build`.
//!
//! Each metric is a stat named in Envoy's `istiocustom` namespace with its labels
//! given explicitly (the bootstrap's `stats_tags` do not touch them) and published
//! without the `envoy_` prefix. The label set of a request is looked up in a
//! per-filter map of the series seen so far, read without a lock; only a label set
//! not seen before takes one, to register its stats.
pub mod attrs;
pub mod cel;
pub mod config;
pub mod labels;

use crate::sync::MutexExt;
use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash, Hasher},
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;

pub use self::config::{StatsConfig, TYPE, compile};
use self::{
    attrs::Attrs,
    config::{Metric, Source, TAGS},
    labels::{Facts, Reporter},
};
use crate::{
    istio::peer::Peer,
    telemetry::stats::{Counter, Histogram, Store},
};

/// At most this many label sets are remembered per filter and family; past it (a Host
/// header per request, say) each one is looked up in the store, as correct and slower.
const MAX_CACHED: usize = 4096;

/// The metrics of one family, recorded together.
const HTTP: [Metric; 4] = [
    Metric::Requests,
    Metric::Duration,
    Metric::RequestBytes,
    Metric::ResponseBytes,
];
const GRPC: [Metric; 2] = [Metric::RequestMessages, Metric::ResponseMessages];
const TCP: [Metric; 4] = [
    Metric::TcpOpened,
    Metric::TcpClosed,
    Metric::TcpSent,
    Metric::TcpReceived,
];

#[derive(Debug, Clone)]
enum Handle {
    Counter(Counter),
    Histogram(Histogram),
}

type Handles = Arc<[Option<Handle>]>;
type Series = HashMap<u64, Vec<(Box<[Box<str>]>, Handles)>>;

/// One family's series, by label values.
#[derive(Debug)]
struct Family {
    metrics: &'static [Metric],
    seen: ArcSwap<Series>,
    add: Mutex<()>,
}

impl Family {
    fn new(metrics: &'static [Metric]) -> Self {
        Family {
            metrics,
            seen: ArcSwap::from_pointee(HashMap::new()),
            add: Mutex::new(()),
        }
    }
}

/// `istio.stats` on one connection manager or filter chain.
#[derive(Debug)]
pub struct IstioStats {
    config: StatsConfig,
    reporter: Reporter,
    store: Arc<Store>,
    http: Family,
    grpc: Family,
    tcp: Family,
    peers: PeerCache,
    /// `istio_build`, held so that it lives as long as the filter.
    _build: crate::telemetry::stats::Gauge,
}

/// Peers decoded from their `x-envoy-peer-metadata` values: a sidecar's peers send the
/// same bytes on every request, so each value is decoded once (up to a bound).
#[derive(Debug, Default)]
struct PeerCache {
    seen: ArcSwap<HashMap<http::HeaderValue, Arc<Peer>, foldhash::fast::RandomState>>,
    add: Mutex<()>,
}

impl PeerCache {
    fn get(&self, v: &http::HeaderValue) -> Option<Arc<Peer>> {
        if let Some(p) = self.seen.load().get(v) {
            return Some(p.clone());
        }
        let p = Arc::new(Peer::from_header(v.as_bytes())?);
        let _guard = self.add.locked();
        let seen = self.seen.load_full();
        if seen.len() < MAX_CACHED {
            let mut next = (*seen).clone();
            next.insert(v.clone(), p.clone());
            self.seen.store(Arc::new(next));
        }
        Some(p)
    }
}

fn hash_values(values: &[&str]) -> u64 {
    let mut h = foldhash::fast::FixedState::with_seed(0x15710).build_hasher();
    for v in values {
        v.hash(&mut h);
    }
    h.finish()
}

impl IstioStats {
    /// The filter on a listener whose `traffic_direction` is INBOUND (`inbound`) or
    /// not: without a configured reporter, that decides which side it reports as.
    pub fn new(config: &StatsConfig, inbound: bool, store: &Arc<Store>) -> Self {
        let l = labels::local();
        let tag = if l.istio_version.is_empty() {
            "unknown"
        } else {
            &l.istio_version
        };
        let build = store.gauge_with_tags(
            format!("istiocustom.istio_build.component.proxy.tag.{tag}"),
            "istio_build",
            &[("component", "proxy"), ("tag", tag)],
        );
        build.set(1);
        IstioStats {
            config: config.clone(),
            reporter: if inbound {
                Reporter::Destination
            } else {
                Reporter::Source
            },
            store: store.clone(),
            http: Family::new(&HTTP),
            grpc: Family::new(&GRPC),
            tcp: Family::new(&TCP),
            peers: PeerCache::default(),
            _build: build,
        }
    }

    /// The peer an `x-envoy-peer-metadata` value describes.
    pub fn peer_from_header(&self, v: &http::HeaderValue) -> Option<Arc<Peer>> {
        self.peers.get(v)
    }

    pub fn reporter(&self) -> Reporter {
        self.reporter
    }

    /// Whether the Host header names the destination service (`disable_host_header_fallback`).
    pub fn host_fallback(&self) -> bool {
        !self.config.disable_host_header_fallback
    }

    pub fn needs_request_headers(&self) -> bool {
        self.config.needs_request_headers
    }

    pub fn tcp_reporting(&self) -> Option<std::time::Duration> {
        self.config.tcp_reporting
    }

    /// The label values of a stream: the 25 standard ones, then each expression's.
    fn values<'a>(&self, facts: &Facts<'a>, attrs: &Attrs<'_>) -> Vec<std::borrow::Cow<'a, str>> {
        let local = labels::local();
        let mut v: Vec<_> = labels::standard(facts, local).into();
        for e in &self.config.exprs {
            let attrs = Attrs {
                local: Some(local),
                ..*attrs
            };
            v.push(std::borrow::Cow::Owned(
                e.eval(&attrs)
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| labels::UNKNOWN.to_owned()),
            ));
        }
        v
    }

    /// The handles of `family`'s metrics for these label values.
    fn handles(&self, family: &Family, values: &[std::borrow::Cow<'_, str>]) -> Handles {
        let refs: Vec<&str> = values.iter().map(|v| v.as_ref()).collect();
        let key = hash_values(&refs);
        let find = |s: &Series| {
            s.get(&key).and_then(|list| {
                list.iter()
                    .find(|(k, _)| k.iter().map(|b| &**b).eq(refs.iter().copied()))
                    .map(|(_, h)| h.clone())
            })
        };
        if let Some(h) = find(&family.seen.load()) {
            return h;
        }
        let _guard = family.add.locked();
        let seen = family.seen.load_full();
        if let Some(h) = find(&seen) {
            return h;
        }
        let handles: Handles = family
            .metrics
            .iter()
            .map(|&m| self.register(m, &refs))
            .collect();
        if seen.values().map(Vec::len).sum::<usize>() < MAX_CACHED {
            let mut next = (*seen).clone();
            next.entry(key).or_default().push((
                refs.iter().map(|v| Box::from(*v)).collect(),
                handles.clone(),
            ));
            family.seen.store(Arc::new(next));
        }
        handles
    }

    /// Registers metric `m`'s stat for the label values (none when it is dropped).
    fn register(&self, m: Metric, values: &[&str]) -> Option<Handle> {
        let shape = self.config.shape(m)?;
        let labels: Vec<(&str, &str)> = shape
            .iter()
            .map(|(name, src)| {
                let v = match src {
                    Source::Standard(t) => values[*t],
                    Source::Expr(i) => values[TAGS.len() + i],
                };
                (name.as_str(), v)
            })
            .collect();
        let prom = format!("istio_{}", m.name());
        let mut flat = format!("istiocustom.{prom}");
        for (k, v) in &labels {
            flat.push('.');
            flat.push_str(k);
            flat.push('.');
            flat.push_str(v);
        }
        Some(if m.is_histogram() {
            Handle::Histogram(self.store.histogram_with_tags(flat, &prom, &labels))
        } else {
            Handle::Counter(self.store.counter_with_tags(flat, &prom, &labels))
        })
    }

    /// One HTTP stream, at its end.
    pub fn record_http(&self, facts: &Facts<'_>, attrs: &Attrs<'_>, end: &HttpEnd) {
        let values = self.values(facts, attrs);
        let handles = self.handles(&self.http, &values);
        for (h, v) in
            handles
                .iter()
                .zip([1, end.duration_ms, end.request_bytes, end.response_bytes])
        {
            match h {
                Some(Handle::Counter(c)) => c.add(v),
                Some(Handle::Histogram(h)) => h.record_value(v),
                None => {}
            }
        }
        if let Some((req, resp)) = end.messages {
            // gRPC message counters carry the 20 peer labels (and the dimensions).
            let handles = self.handles(&self.grpc, &values);
            for (h, v) in handles.iter().zip([req, resp]) {
                if let Some(Handle::Counter(c)) = h {
                    c.add(v);
                }
            }
        }
    }

    /// A gRPC call's message counters, labelled once (when its peer is known, at its
    /// response), reported every `tcp_reporting_duration` and at its end.
    pub fn grpc_report(&self, facts: &Facts<'_>, attrs: &Attrs<'_>) -> GrpcReport {
        let values = self.values(facts, attrs);
        GrpcReport {
            handles: self.handles(&self.grpc, &values),
            reported: Default::default(),
        }
    }

    /// A TCP connection's reporting.
    pub fn tcp(&self) -> TcpReport<'_> {
        TcpReport {
            stats: self,
            handles: None,
            sent: 0,
            received: 0,
        }
    }
}

/// A gRPC call's message counters and what of them has been reported.
#[derive(Debug)]
pub struct GrpcReport {
    handles: Handles,
    reported: [std::sync::atomic::AtomicU64; 2],
}

impl GrpcReport {
    /// Adds the messages (request, response; totals so far) not reported yet.
    pub fn report(&self, totals: (u64, u64)) {
        use std::sync::atomic::Ordering;
        for ((h, seen), now) in self
            .handles
            .iter()
            .zip(&self.reported)
            .zip([totals.0, totals.1])
        {
            // The largest total reported wins: a report that read an older total
            // than another adds nothing.
            let before = seen.fetch_max(now, Ordering::Relaxed);
            if let Some(Handle::Counter(c)) = h {
                c.add(now.saturating_sub(before));
            }
        }
    }
}

/// What an HTTP stream measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpEnd {
    /// Whole milliseconds, truncated (as istio-proxy records them).
    pub duration_ms: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// gRPC request and response messages, when the call was counted.
    pub messages: Option<(u64, u64)>,
}

/// What a TCP connection knows for its labels, and its reporting.
pub struct TcpConn<'s> {
    report: TcpReport<'s>,
    /// Where the metadata exchange leaves the peer; `None` when it does not run
    /// (Istio's `peer_not_found`).
    pub slot: Option<crate::istio::peer::PeerSlot>,
    /// The upstream endpoint's `istio.workload` metadata: a source reporter's peer when
    /// the exchange found none.
    pub workload: Option<Arc<Peer>>,
    pub peer_principal: Option<String>,
    pub local_principal: Option<String>,
    pub cluster_name: Option<String>,
    pub service: Option<Arc<labels::Service>>,
    pub server_name: Option<String>,
    pub source: Option<std::net::SocketAddr>,
    pub destination: Option<std::net::SocketAddr>,
    pub upstream: Option<std::net::SocketAddr>,
}

impl<'s> TcpConn<'s> {
    pub fn new(stats: &'s IstioStats) -> Self {
        TcpConn {
            report: stats.tcp(),
            slot: None,
            workload: None,
            peer_principal: None,
            local_principal: None,
            cluster_name: None,
            service: None,
            server_name: None,
            source: None,
            destination: None,
            upstream: None,
        }
    }

    pub fn reporter(&self) -> Reporter {
        self.report.stats.reporter
    }

    pub fn period(&self) -> Option<std::time::Duration> {
        self.report.stats.config.tcp_reporting
    }

    /// Whether the exchange is done with (the peer read, or known absent).
    fn peer_known(&self) -> bool {
        self.slot.as_ref().is_none_or(|s| s.get().is_some())
    }

    fn with_labels(&mut self, flags: &str, f: impl FnOnce(&mut TcpReport<'s>, &Facts, &Attrs)) {
        let peer = self
            .slot
            .as_ref()
            .and_then(|s| s.get().cloned().flatten())
            .or_else(|| match self.reporter() {
                Reporter::Source => self.workload.clone(),
                Reporter::Destination => None,
            });
        let facts = Facts {
            peer: peer.as_deref(),
            peer_principal: self.peer_principal.as_deref(),
            local_principal: self.local_principal.as_deref(),
            cluster_name: self.cluster_name.as_deref(),
            service: self.service.as_deref(),
            response_flags: flags,
            ..Facts::new(self.reporter(), "tcp")
        };
        let (downstream_peer, upstream_peer) = match facts.reporter {
            Reporter::Destination => (peer.as_deref(), None),
            Reporter::Source => (None, peer.as_deref()),
        };
        let attrs = Attrs {
            source: self.source,
            destination: self.destination,
            upstream: self.upstream,
            mtls: self.peer_principal.is_some(),
            peer_principal: self.peer_principal.as_deref(),
            local_principal: self.local_principal.as_deref(),
            server_name: self.server_name.as_deref(),
            cluster_name: self.cluster_name.as_deref(),
            downstream_peer,
            upstream_peer,
            ..Default::default()
        };
        f(&mut self.report, &facts, &attrs);
    }

    /// A periodic report: opened once the peer is known, then the bytes since the
    /// last (totals `sent` to the downstream and `received` from it).
    pub fn tick(&mut self, sent: u64, received: u64) {
        if !self.report.opened() {
            if !self.peer_known() {
                return;
            }
            self.with_labels("-", |r, f, a| r.open(f, a));
        }
        self.report.bytes(sent, received);
    }

    /// The connection ended, with Envoy's response `flags` (`-` for none).
    pub fn close(&mut self, flags: &str, sent: u64, received: u64) {
        self.with_labels(flags, |r, f, a| r.close(f, a, sent, received));
    }
}

/// One TCP connection's metrics: opened once its labels are known (the peer found, or
/// the connection closing), bytes as they move, closed at the end.
pub struct TcpReport<'s> {
    stats: &'s IstioStats,
    handles: Option<Handles>,
    sent: u64,
    received: u64,
}

impl TcpReport<'_> {
    pub fn opened(&self) -> bool {
        self.handles.is_some()
    }

    /// Labels the connection and counts it opened.
    pub fn open(&mut self, facts: &Facts<'_>, attrs: &Attrs<'_>) {
        if self.handles.is_some() {
            return;
        }
        let values = self.stats.values(facts, attrs);
        let handles = self.stats.handles(&self.stats.tcp, &values);
        if let Some(Handle::Counter(c)) = &handles[0] {
            c.inc();
        }
        self.handles = Some(handles);
    }

    /// Counts the bytes moved since the last report: `sent` to the downstream,
    /// `received` from it (totals so far).
    pub fn bytes(&mut self, sent: u64, received: u64) {
        let Some(h) = &self.handles else { return };
        if let Some(Handle::Counter(c)) = &h[2] {
            c.add(sent.saturating_sub(self.sent));
        }
        if let Some(Handle::Counter(c)) = &h[3] {
            c.add(received.saturating_sub(self.received));
        }
        self.sent = sent;
        self.received = received;
    }

    /// The connection closed: the rest of its bytes, and closed.
    pub fn close(&mut self, facts: &Facts<'_>, attrs: &Attrs<'_>, sent: u64, received: u64) {
        self.open(facts, attrs);
        self.bytes(sent, received);
        if let Some(Some(Handle::Counter(c))) = self.handles.as_ref().map(|h| &h[1]) {
            c.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::stats::Filter;

    fn facts() -> Facts<'static> {
        Facts {
            host: Some("reviews:9080"),
            response_code: 200,
            ..Facts::new(Reporter::Source, "http")
        }
    }

    #[test]
    fn http_streams_land_in_istios_series() {
        let store = Store::new();
        let config = compile(
            &serde_json::json!({"metrics": [
                {"name": "requests_total", "dimensions": {"route": "xds.route_name"}},
                {"name": "response_bytes", "drop": true},
            ]}),
            "p",
        )
        .unwrap();
        let s = IstioStats::new(&config, false, &store);
        let attrs = Attrs {
            route_name: Some("r1"),
            ..Default::default()
        };
        let end = HttpEnd {
            duration_ms: 3,
            request_bytes: 120,
            response_bytes: 99,
            messages: None,
        };
        s.record_http(&facts(), &attrs, &end);
        s.record_http(&facts(), &attrs, &end);
        let failed = Facts {
            response_code: 503,
            response_flags: "UF",
            ..facts()
        };
        s.record_http(&failed, &attrs, &end);
        // What the filter holds stays through the store's clean-up of released stats.
        store.release_unheld();
        let prom = store.render_prometheus(&Filter::default());
        let line = |name: &str, code: &str, flags: &str| {
            format!(
                "{name}{{reporter=\"source\",source_workload=\"\",source_canonical_service=\"\",source_canonical_revision=\"\",source_workload_namespace=\"\",source_principal=\"unknown\",source_app=\"\",source_version=\"\",source_cluster=\"\",destination_workload=\"unknown\",destination_workload_namespace=\"unknown\",destination_principal=\"unknown\",destination_app=\"unknown\",destination_version=\"unknown\",destination_service=\"reviews:9080\",destination_canonical_service=\"unknown\",destination_canonical_revision=\"latest\",destination_service_name=\"reviews:9080\",destination_service_namespace=\"unknown\",destination_cluster=\"unknown\",request_protocol=\"http\",response_code=\"{code}\",grpc_response_status=\"\",response_flags=\"{flags}\",connection_security_policy=\"unknown\""
            )
        };
        assert!(
            prom.contains(&format!(
                "{},route=\"r1\"}} 2\n",
                line("istio_requests_total", "200", "-")
            )),
            "{prom}"
        );
        assert!(prom.contains(&format!(
            "{},route=\"r1\"}} 1\n",
            line("istio_requests_total", "503", "UF")
        )));
        assert!(prom.contains("# TYPE istio_request_duration_milliseconds histogram\n"));
        assert!(prom.contains(&format!(
            "{},le=\"5\"}} 2\n",
            line("istio_request_duration_milliseconds_bucket", "200", "-")
        )));
        assert!(prom.contains(&format!(
            "{}}} 240\n",
            line("istio_request_bytes_sum", "200", "-")
        )));
        assert!(!prom.contains("istio_response_bytes"), "dropped");
        assert!(prom.contains("istio_build{component=\"proxy\",tag=\"unknown\"} 1\n"));
        // One series per label set, looked up without registering again.
        assert_eq!(s.http.seen.load().values().map(Vec::len).sum::<usize>(), 2);
    }

    #[test]
    fn tcp_connections_open_once_and_count_byte_deltas() {
        let store = Store::new();
        let s = IstioStats::new(&compile(&serde_json::json!({}), "p").unwrap(), true, &store);
        let f = Facts {
            reporter: Reporter::Destination,
            protocol: "tcp",
            host: None,
            ..facts()
        };
        let mut r = s.tcp();
        r.bytes(5, 5);
        assert!(!r.opened());
        r.open(&f, &Attrs::default());
        r.bytes(10, 4);
        r.open(&f, &Attrs::default());
        r.close(&f, &Attrs::default(), 12, 6);
        let prom = store.render_prometheus(&Filter::default());
        let get = |name: &str| {
            prom.lines()
                .find(|l| l.starts_with(&format!("{name}{{")))
                .and_then(|l| l.rsplit(' ').next())
                .unwrap_or_else(|| panic!("{name} in {prom}"))
                .to_owned()
        };
        assert_eq!(get("istio_tcp_connections_opened_total"), "1");
        assert_eq!(get("istio_tcp_connections_closed_total"), "1");
        assert_eq!(get("istio_tcp_sent_bytes_total"), "12");
        assert_eq!(get("istio_tcp_received_bytes_total"), "6");
        assert!(prom.contains(
            "request_protocol=\"tcp\",response_flags=\"-\",connection_security_policy=\"none\"}"
        ));
        assert!(!prom.contains("istio_tcp_sent_bytes_total{reporter=\"destination\",source_workload=\"unknown\",source_canonical_service=\"unknown\",source_canonical_revision=\"latest\",source_workload_namespace=\"unknown\",source_principal=\"unknown\",source_app=\"unknown\",source_version=\"unknown\",source_cluster=\"unknown\",destination_workload=\"\",destination_workload_namespace=\"\",destination_principal=\"unknown\",destination_app=\"\",destination_version=\"\",destination_service=\"\",destination_canonical_service=\"\",destination_canonical_revision=\"\",destination_service_name=\"\",destination_service_namespace=\"\",destination_cluster=\"\",request_protocol=\"tcp\",response_code"), "TCP has no response_code");
    }
}
