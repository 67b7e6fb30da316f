//! `envoy.filters.http.fault`: delay and abort injection, configured on the connection
//! manager's filter or per route (`typed_per_filter_config`, which replaces it for that
//! route). A delay runs first; the abort, if any, is decided after it. Faults apply only
//! when the request matches the config's `headers`, `upstream_cluster` and
//! `downstream_nodes`, and only while fewer than `max_active_faults` are in progress.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http::{HeaderMap, Response, StatusCode};

use crate::http::{
    body::Body,
    local_reply::{self, GrpcStatus, ResponseFlag},
    matchers::{HeaderMatcher, RequestHead},
};
use crate::telemetry::stats::{Counter, Gauge, Store};

/// A compiled `HTTPFault`.
#[derive(Debug, Clone, Default)]
pub struct FaultConfig {
    pub delay: Option<Delay>,
    pub abort: Option<Abort>,
    /// Only requests routed to this cluster.
    pub upstream_cluster: Option<String>,
    pub headers: Vec<HeaderMatcher>,
    /// Only requests whose `x-envoy-downstream-service-node` is one of these.
    pub downstream_nodes: Vec<String>,
    pub max_active: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Delay {
    pub kind: DelayKind,
    /// Of every million requests.
    pub per_million: u32,
}

#[derive(Debug, Clone)]
pub enum DelayKind {
    Fixed(Duration),
    /// `header_delay`: milliseconds from `x-envoy-fault-delay-request`.
    Header,
}

#[derive(Debug, Clone)]
pub struct Abort {
    pub kind: AbortKind,
    pub per_million: u32,
}

#[derive(Debug, Clone)]
pub enum AbortKind {
    Http(u16),
    Grpc(u32),
    /// `header_abort`: `x-envoy-fault-abort-request` (HTTP) or
    /// `x-envoy-fault-abort-grpc-request`.
    Header,
}

const DELAY_HEADER: &str = "x-envoy-fault-delay-request";
const DELAY_PERCENT_HEADER: &str = "x-envoy-fault-delay-request-percentage";
const ABORT_HEADER: &str = "x-envoy-fault-abort-request";
const ABORT_GRPC_HEADER: &str = "x-envoy-fault-abort-grpc-request";
const ABORT_PERCENT_HEADER: &str = "x-envoy-fault-abort-request-percentage";

/// Envoy's `http.<prefix>.fault.*` stats, shared by every fault config of one connection
/// manager.
#[derive(Debug)]
pub struct FaultStats {
    pub delays_injected: Counter,
    pub aborts_injected: Counter,
    pub faults_overflow: Counter,
    pub response_rl_injected: Counter,
    pub active_faults: Gauge,
    active: AtomicU64,
}

impl FaultStats {
    pub fn new(store: &Arc<Store>, prefix: &str) -> Self {
        let label = [("envoy_http_conn_manager_prefix", prefix)];
        let c = |stat: &str| {
            store.counter(
                format!("http.{prefix}.fault.{stat}"),
                &format!("envoy_http_fault_{stat}"),
                &label,
            )
        };
        FaultStats {
            delays_injected: c("delays_injected"),
            aborts_injected: c("aborts_injected"),
            faults_overflow: c("faults_overflow"),
            response_rl_injected: c("response_rl_injected"),
            active_faults: store.gauge(
                format!("http.{prefix}.fault.active_faults"),
                "envoy_http_fault_active_faults",
                &label,
            ),
            active: AtomicU64::new(0),
        }
    }
}

/// Holds one active fault until dropped.
pub struct ActiveFault<'a>(&'a FaultStats);

impl Drop for ActiveFault<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.active_faults.dec();
    }
}

/// What the filter decided for one request.
#[derive(Default)]
pub struct Outcome<'a> {
    pub delay: Option<Duration>,
    pub abort: Option<Response<Body>>,
    pub active: Option<ActiveFault<'a>>,
}

impl FaultConfig {
    /// Decides the faults for a request routed to `cluster`. The delay (if any) is to be
    /// slept before the abort (if any) is sent or the request forwarded.
    pub fn decide<'s>(
        &self,
        req: &RequestHead<'_>,
        cluster: Option<&str>,
        stats: &'s FaultStats,
    ) -> Outcome<'s> {
        let mut out = Outcome::default();
        if !self.applies(req, cluster) {
            return out;
        }
        let headers = req.headers;
        let delay = self.delay.as_ref().and_then(|d| {
            let per_million = percent_header(headers, DELAY_PERCENT_HEADER, d.per_million);
            let wanted = match d.kind {
                DelayKind::Fixed(t) => Some(t),
                DelayKind::Header => header_u64(headers, DELAY_HEADER).map(Duration::from_millis),
            };
            wanted.filter(|_| roll(per_million))
        });
        let abort = self.abort.as_ref().and_then(|a| {
            let per_million = percent_header(headers, ABORT_PERCENT_HEADER, a.per_million);
            let wanted = match a.kind {
                AbortKind::Http(code) => Some((code, None)),
                AbortKind::Grpc(status) => Some((200, Some(status))),
                AbortKind::Header => header_u64(headers, ABORT_GRPC_HEADER)
                    .map(|g| (200, Some(g as u32)))
                    .or_else(|| {
                        header_u64(headers, ABORT_HEADER)
                            .filter(|c| (200..600).contains(c))
                            .map(|c| (c as u16, None))
                    }),
            };
            wanted.filter(|_| roll(per_million))
        });
        if delay.is_none() && abort.is_none() {
            return out;
        }
        if let Some(max) = self.max_active
            && stats.active.load(Ordering::Relaxed) >= max
        {
            stats.faults_overflow.inc();
            return out;
        }
        stats.active.fetch_add(1, Ordering::Relaxed);
        stats.active_faults.inc();
        out.active = Some(ActiveFault(stats));
        if let Some(d) = delay {
            stats.delays_injected.inc();
            out.delay = Some(d);
        }
        if let Some((code, grpc)) = abort {
            out.abort = Some(abort_reply(code, grpc));
        }
        out
    }

    fn applies(&self, req: &RequestHead<'_>, cluster: Option<&str>) -> bool {
        if let Some(want) = &self.upstream_cluster
            && cluster != Some(want.as_str())
        {
            return false;
        }
        if !self.downstream_nodes.is_empty() {
            let node = req
                .headers
                .get("x-envoy-downstream-service-node")
                .and_then(|v| v.to_str().ok());
            if !node.is_some_and(|n| self.downstream_nodes.iter().any(|d| d == n)) {
                return false;
            }
        }
        self.headers.iter().all(|h| h.matches(req))
    }
}

/// The abort's local reply: `fault filter abort` with the status (200 for gRPC aborts,
/// which carry their `grpc-status` for the gRPC form of the reply).
fn abort_reply(code: u16, grpc: Option<u32>) -> Response<Body> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut resp = local_reply::with_body(
        status,
        local_reply::FAULT_ABORT,
        ResponseFlag::FaultInjected,
    );
    if let Some(g) = grpc {
        resp.extensions_mut().insert(GrpcStatus(g));
    }
    resp
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// A percentage header (of 100) caps the configured fraction; it never raises it.
fn percent_header(headers: &HeaderMap, name: &str, configured: u32) -> u32 {
    match header_u64(headers, name) {
        Some(p) => configured.min((p.min(100) * 10_000) as u32),
        None => configured,
    }
}

fn roll(per_million: u32) -> bool {
    per_million >= 1_000_000 || fastrand::u32(..1_000_000) < per_million
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: &HeaderMap) -> RequestHead<'_> {
        RequestHead {
            method: "GET",
            scheme: "http",
            authority: "h",
            path_and_query: "/",
            headers,
        }
    }

    fn abort(kind: AbortKind, per_million: u32) -> FaultConfig {
        FaultConfig {
            abort: Some(Abort { kind, per_million }),
            ..Default::default()
        }
    }

    #[test]
    fn aborts_follow_kind_percentage_and_headers() {
        let stats = FaultStats::new(&Store::new(), "t");
        let none = HeaderMap::new();
        let got = abort(AbortKind::Http(503), 1_000_000).decide(&head(&none), None, &stats);
        assert_eq!(got.abort.unwrap().status(), 503);
        assert!(
            abort(AbortKind::Http(503), 0)
                .decide(&head(&none), None, &stats)
                .abort
                .is_none()
        );
        // header_abort needs its header.
        assert!(
            abort(AbortKind::Header, 1_000_000)
                .decide(&head(&none), None, &stats)
                .abort
                .is_none()
        );
        let mut h = HeaderMap::new();
        h.insert(ABORT_HEADER, "429".parse().unwrap());
        let got = abort(AbortKind::Header, 1_000_000).decide(&head(&h), None, &stats);
        assert_eq!(got.abort.unwrap().status(), 429);
        // The percentage header lowers the configured fraction.
        h.insert(ABORT_PERCENT_HEADER, "0".parse().unwrap());
        assert!(
            abort(AbortKind::Header, 1_000_000)
                .decide(&head(&h), None, &stats)
                .abort
                .is_none()
        );
        assert_eq!(
            stats.aborts_injected.get(),
            0,
            "counted when sent, not decided"
        );
    }

    #[test]
    fn cluster_and_max_active_limit_faults() {
        let stats = FaultStats::new(&Store::new(), "t");
        let none = HeaderMap::new();
        let mut cfg = abort(AbortKind::Http(500), 1_000_000);
        cfg.upstream_cluster = Some("reviews".into());
        assert!(
            cfg.decide(&head(&none), Some("ratings"), &stats)
                .abort
                .is_none()
        );
        assert!(
            cfg.decide(&head(&none), Some("reviews"), &stats)
                .abort
                .is_some()
        );
        cfg.max_active = Some(1);
        let first = cfg.decide(&head(&none), Some("reviews"), &stats);
        assert!(first.abort.is_some());
        let second = cfg.decide(&head(&none), Some("reviews"), &stats);
        assert!(second.abort.is_none());
        assert_eq!(stats.faults_overflow.get(), 1);
        drop(first);
        assert!(
            cfg.decide(&head(&none), Some("reviews"), &stats)
                .abort
                .is_some()
        );
    }

    #[test]
    fn delay_from_config_or_header() {
        let stats = FaultStats::new(&Store::new(), "t");
        let none = HeaderMap::new();
        let fixed = FaultConfig {
            delay: Some(Delay {
                kind: DelayKind::Fixed(Duration::from_secs(2)),
                per_million: 1_000_000,
            }),
            ..Default::default()
        };
        assert_eq!(
            fixed.decide(&head(&none), None, &stats).delay,
            Some(Duration::from_secs(2))
        );
        let by_header = FaultConfig {
            delay: Some(Delay {
                kind: DelayKind::Header,
                per_million: 1_000_000,
            }),
            ..Default::default()
        };
        let mut h = HeaderMap::new();
        assert_eq!(by_header.decide(&head(&h), None, &stats).delay, None);
        h.insert(DELAY_HEADER, "250".parse().unwrap());
        assert_eq!(
            by_header.decide(&head(&h), None, &stats).delay,
            Some(Duration::from_millis(250))
        );
        assert_eq!(stats.delays_injected.get(), 2);
    }
}
