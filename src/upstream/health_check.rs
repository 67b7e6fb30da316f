//! Active health checks, as Envoy runs them: each host of the cluster is checked every
//! `interval` (plus jitter; `no_traffic_interval` while the cluster has carried no
//! traffic, `unhealthy_interval` for a failing host) by an HTTP GET, a TCP exchange or
//! a gRPC `grpc.health.v1.Health/Check`, each bounded by `timeout`. A host turns
//! unhealthy after `unhealthy_threshold` failures in a row and healthy again after
//! `healthy_threshold` passes; a new host starts unhealthy and its first pass is
//! enough. The balancer sees the result. Checks run on the control runtime.
use std::{
    collections::HashSet,
    sync::{
        Arc, Weak,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Cluster, Host, connect::connect};
use crate::{
    config::{HealthCheckConfig, HealthCheckKind},
    telemetry::stats::{Counter, Gauge, Store},
};

/// `cluster.<name>.health_check.*`.
#[derive(Debug)]
pub struct Stats {
    pub attempt: Counter,
    pub success: Counter,
    pub failure: Counter,
    pub network_failure: Counter,
    pub healthy: Gauge,
}

impl Stats {
    pub fn new(store: &Store, cluster: &str) -> Self {
        let label = [("envoy_cluster_name", cluster)];
        let c = |stat: &str| {
            store.counter(
                ["cluster.", cluster, ".health_check.", stat].concat(),
                &["envoy_cluster_health_check_", stat].concat(),
                &label,
            )
        };
        let healthy = store.gauge(
            ["cluster.", cluster, ".health_check.healthy"].concat(),
            "envoy_cluster_health_check_healthy",
            &label,
        );
        healthy.set(0);
        Stats {
            attempt: c("attempt"),
            success: c("success"),
            failure: c("failure"),
            network_failure: c("network_failure"),
            healthy,
        }
    }
}

/// A host's run of results.
#[derive(Debug, Default)]
pub struct HostChecks {
    passes: AtomicU32,
    failures: AtomicU32,
    /// Checks done; the first pass of a new host is enough.
    done: AtomicU32,
}

/// How a check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    /// The host answered, wrongly.
    Fail,
    /// No answer: connection refused or reset, or the timeout.
    NetworkFail,
}

/// What changed for the balancer.
#[derive(Debug, PartialEq, Eq)]
enum Edge {
    None,
    TurnedHealthy,
    TurnedUnhealthy,
}

/// Applies one result to `host`, returning the edge it crossed.
fn record(cfg: &HealthCheckConfig, host: &Host, v: Verdict) -> Edge {
    let c = &host.checks;
    let first = c.done.fetch_add(1, Ordering::Relaxed) == 0;
    if v == Verdict::Pass {
        c.failures.store(0, Ordering::Relaxed);
        let passes = c.passes.fetch_add(1, Ordering::Relaxed) + 1;
        if host.is_hc_failed() && (first || passes >= cfg.healthy_threshold) {
            host.hc_failed.store(false, Ordering::Relaxed);
            return Edge::TurnedHealthy;
        }
    } else {
        c.passes.store(0, Ordering::Relaxed);
        let failures = c.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if !host.is_hc_failed() && failures >= cfg.unhealthy_threshold {
            host.hc_failed.store(true, Ordering::Relaxed);
            return Edge::TurnedUnhealthy;
        }
    }
    Edge::None
}

/// When to check `host` next.
fn next_interval(cfg: &HealthCheckConfig, cluster: &Cluster, host: &Host, edge: &Edge) -> Duration {
    let base = match edge {
        Edge::TurnedHealthy if cfg.healthy_edge_interval.is_some() => {
            cfg.healthy_edge_interval.unwrap_or(cfg.interval)
        }
        Edge::TurnedUnhealthy if cfg.unhealthy_edge_interval.is_some() => {
            cfg.unhealthy_edge_interval.unwrap_or(cfg.interval)
        }
        _ if cluster.stats.upstream_rq_total.get() == 0
            && cluster.stats.upstream_cx_total.get() == 0 =>
        {
            match cfg.no_traffic_healthy_interval {
                Some(d) if !host.is_hc_failed() => d,
                _ => cfg.no_traffic_interval,
            }
        }
        _ if host.is_hc_failed() => cfg.unhealthy_interval.unwrap_or(cfg.interval),
        _ => cfg.interval,
    };
    let mut jitter = Duration::ZERO;
    if !cfg.interval_jitter.is_zero() {
        jitter += cfg.interval_jitter.mul_f64(fastrand::f64());
    }
    if cfg.interval_jitter_percent > 0 {
        jitter += base.mul_f64(f64::from(cfg.interval_jitter_percent) / 100.0 * fastrand::f64());
    }
    base + jitter
}

/// Checks `host` once.
async fn check(cfg: &HealthCheckConfig, cluster: &Cluster, host: &Host) -> Verdict {
    let run = async {
        match &cfg.kind {
            HealthCheckKind::Http {
                host: authority,
                path,
                expected_statuses,
                request_headers_to_add,
                request_headers_to_remove,
                http2,
            } => {
                let Ok(stream) = connect(cluster, host).await else {
                    return Verdict::NetworkFail;
                };
                let mut req = Request::get(path.as_str())
                    .header(http::header::HOST, authority.as_str())
                    .header(http::header::USER_AGENT, "Envoy/HC");
                for (k, v) in request_headers_to_add {
                    req = req.header(k.as_str(), v.as_str());
                }
                let Ok(mut req) = req.body(Full::<Bytes>::default()) else {
                    return Verdict::Fail;
                };
                for k in request_headers_to_remove {
                    req.headers_mut().remove(k.as_str());
                }
                if *http2 {
                    *req.uri_mut() = match format!("http://{authority}{path}").parse() {
                        Ok(u) => u,
                        Err(_) => return Verdict::Fail,
                    };
                    req.headers_mut().remove(http::header::HOST);
                }
                let Some(resp) = exchange(stream, req, *http2).await else {
                    return Verdict::NetworkFail;
                };
                let status = resp.status();
                let code = status.as_u16();
                if expected_statuses
                    .iter()
                    .any(|&(lo, hi)| (lo..hi).contains(&code))
                {
                    Verdict::Pass
                } else {
                    Verdict::Fail
                }
            }
            HealthCheckKind::Tcp { send, receive } => {
                let Ok(mut stream) = connect(cluster, host).await else {
                    return Verdict::NetworkFail;
                };
                if !send.is_empty() && stream.write_all(send).await.is_err() {
                    return Verdict::NetworkFail;
                }
                if receive.is_empty() {
                    return Verdict::Pass;
                }
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    if blocks_in_order(&got, receive) {
                        return Verdict::Pass;
                    }
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return Verdict::Fail,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
            }
            HealthCheckKind::Grpc {
                service_name,
                authority,
            } => grpc_check(cluster, host, service_name, authority).await,
        }
    };
    tokio::time::timeout(cfg.timeout, run)
        .await
        .unwrap_or(Verdict::NetworkFail)
}

/// Sends `req` on a connection of its own over `stream`; `None` when it fails.
async fn exchange(
    stream: super::connect::Upstream,
    req: Request<Full<Bytes>>,
    h2: bool,
) -> Option<http::Response<hyper::body::Incoming>> {
    if h2 {
        let (mut s, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .ok()?;
        tokio::spawn(conn);
        s.send_request(req).await.ok()
    } else {
        let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        s.send_request(req).await.ok()
    }
}

/// Whether each block appears in `got`, in order (not necessarily adjacent).
fn blocks_in_order(got: &[u8], blocks: &[Vec<u8>]) -> bool {
    let mut at = 0;
    for b in blocks {
        match got[at..]
            .windows(b.len().max(1))
            .position(|w| w == b.as_slice())
        {
            Some(i) => at += i + b.len(),
            None => return false,
        }
    }
    true
}

/// `grpc.health.v1.Health/Check` over HTTP/2: SERVING (1) with `grpc-status: 0` passes.
async fn grpc_check(cluster: &Cluster, host: &Host, service: &str, authority: &str) -> Verdict {
    let Ok(stream) = connect(cluster, host).await else {
        return Verdict::NetworkFail;
    };
    // HealthCheckRequest { service = 1 }, in one uncompressed gRPC frame.
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a);
        let mut n = service.len();
        while n >= 0x80 {
            msg.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        msg.push(n as u8);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    let Ok(uri) = format!("http://{authority}/grpc.health.v1.Health/Check").parse::<http::Uri>()
    else {
        return Verdict::Fail;
    };
    let Ok(req) = Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .header(http::header::USER_AGENT, "Envoy/HC")
        .body(Full::new(Bytes::from(frame)))
    else {
        return Verdict::Fail;
    };
    let Some(resp) = exchange(stream, req, true).await else {
        return Verdict::NetworkFail;
    };
    if resp.status() != http::StatusCode::OK {
        return Verdict::Fail;
    }
    let head_status = resp.headers().get("grpc-status").cloned();
    let Ok(collected) = resp.into_body().collect().await else {
        return Verdict::NetworkFail;
    };
    let trailer_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status").cloned());
    let ok = trailer_status.or(head_status).is_some_and(|v| v == "0");
    let body = collected.to_bytes();
    // One frame: flag, length, then HealthCheckResponse { status = 1 (varint) }.
    let serving = body.len() >= 7 && body[5] == 0x08 && body[6] == 1;
    if ok && serving {
        Verdict::Pass
    } else {
        Verdict::Fail
    }
}

/// Starts checking `cluster`'s hosts: waits for the first check of each (bounded, as
/// Envoy's cluster initialization waits for it), then keeps a task per host, picking
/// up hosts discovery adds. Tasks end when their host or the cluster goes.
pub async fn start(cluster: &Arc<Cluster>) {
    let Some(cfg) = cluster.config.health_check.clone() else {
        return;
    };
    let cfg = Arc::new(cfg);
    let hosts = cluster.hosts();
    let first = futures_util::future::join_all(hosts.iter().map(|h| once(&cfg, cluster, h)));
    let _ = tokio::time::timeout(Duration::from_secs(15), first).await;
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        let mut running: HashSet<usize> = HashSet::new();
        let mut first_round: Option<HashSet<usize>> =
            Some(hosts.iter().map(|h| Arc::as_ptr(h) as usize).collect());
        loop {
            let Some(c) = weak.upgrade() else { return };
            let current = c.hosts();
            running.retain(|p| current.iter().any(|h| Arc::as_ptr(h) as usize == *p));
            for h in &current {
                let key = Arc::as_ptr(h) as usize;
                if running.insert(key) {
                    let checked = first_round.as_ref().is_some_and(|f| f.contains(&key));
                    spawn_host(cfg.clone(), weak.clone(), Arc::downgrade(h), checked);
                }
            }
            first_round = None;
            let every = cfg.interval.min(Duration::from_secs(1));
            drop(c);
            tokio::time::sleep(every).await;
        }
    });
}

/// One check of `host` and its effect.
async fn once(cfg: &HealthCheckConfig, cluster: &Cluster, host: &Arc<Host>) -> Edge {
    let stats = cluster.health_stats.as_ref();
    if let Some(s) = stats {
        s.attempt.inc();
    }
    let v = check(cfg, cluster, host).await;
    if let Some(s) = stats {
        match v {
            Verdict::Pass => s.success.inc(),
            Verdict::Fail => s.failure.inc(),
            Verdict::NetworkFail => {
                s.failure.inc();
                s.network_failure.inc();
            }
        }
    }
    let edge = record(cfg, host, v);
    if v == Verdict::Pass
        && let Some(d) = &cluster.outlier
        && d.config.successful_active_health_check_uneject_host
    {
        d.uneject_after_health_check(cluster, host);
    }
    if edge != Edge::None {
        tracing::info!(
            cluster = cluster.name(),
            host = %host.addr,
            "health check: host turned {}",
            if edge == Edge::TurnedHealthy { "healthy" } else { "unhealthy" }
        );
        cluster.health_changed();
    }
    if let Some(s) = stats {
        let healthy = cluster.hosts().iter().filter(|h| !h.is_hc_failed()).count();
        s.healthy.set(healthy as i64);
    }
    edge
}

fn spawn_host(
    cfg: Arc<HealthCheckConfig>,
    cluster: Weak<Cluster>,
    host: Weak<Host>,
    checked: bool,
) {
    tokio::spawn(async move {
        let mut edge = Edge::None;
        let mut wait = if checked {
            None
        } else if cfg.initial_jitter.is_zero() {
            Some(Duration::ZERO)
        } else {
            Some(cfg.initial_jitter.mul_f64(fastrand::f64()))
        };
        loop {
            let pause = match wait.take() {
                Some(d) => d,
                None => {
                    let (Some(c), Some(h)) = (cluster.upgrade(), host.upgrade()) else {
                        return;
                    };
                    next_interval(&cfg, &c, &h, &edge)
                }
            };
            tokio::time::sleep(pause).await;
            let (Some(c), Some(h)) = (cluster.upgrade(), host.upgrade()) else {
                return;
            };
            if !c.hosts().iter().any(|x| Arc::ptr_eq(x, &h)) {
                return;
            }
            edge = once(&cfg, &c, &h).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EndpointAttrs;

    fn cfg() -> HealthCheckConfig {
        HealthCheckConfig {
            timeout: Duration::from_secs(1),
            interval: Duration::from_secs(5),
            interval_jitter: Duration::ZERO,
            interval_jitter_percent: 0,
            initial_jitter: Duration::ZERO,
            unhealthy_threshold: 3,
            healthy_threshold: 2,
            no_traffic_interval: Duration::from_secs(60),
            no_traffic_healthy_interval: None,
            unhealthy_interval: None,
            unhealthy_edge_interval: None,
            healthy_edge_interval: None,
            kind: HealthCheckKind::Tcp {
                send: Vec::new(),
                receive: Vec::new(),
            },
        }
    }

    #[test]
    fn thresholds_move_a_host_between_healthy_and_unhealthy() {
        let c = cfg();
        let h = Host::with(
            ([127, 0, 0, 1], 1).into(),
            None,
            None,
            EndpointAttrs::default(),
        );
        h.hc_failed.store(true, Ordering::Relaxed);
        // A new host's first pass is enough.
        assert_eq!(record(&c, &h, Verdict::Pass), Edge::TurnedHealthy);
        assert_eq!(record(&c, &h, Verdict::Fail), Edge::None);
        assert_eq!(record(&c, &h, Verdict::NetworkFail), Edge::None);
        assert_eq!(record(&c, &h, Verdict::Fail), Edge::TurnedUnhealthy);
        assert!(h.is_hc_failed());
        // Back only after `healthy_threshold` passes in a row.
        assert_eq!(record(&c, &h, Verdict::Pass), Edge::None);
        assert_eq!(record(&c, &h, Verdict::Fail), Edge::None);
        assert_eq!(record(&c, &h, Verdict::Pass), Edge::None);
        assert_eq!(record(&c, &h, Verdict::Pass), Edge::TurnedHealthy);
        assert_eq!(h.health_flags(), "healthy");
    }

    #[test]
    fn tcp_receive_blocks_match_in_order_not_adjacent() {
        let blocks = vec![b"OK".to_vec(), b"END".to_vec()];
        assert!(blocks_in_order(b"xxOKyyEND", &blocks));
        assert!(!blocks_in_order(b"ENDxxOK", &blocks));
        assert!(!blocks_in_order(b"OK", &blocks));
    }
}
