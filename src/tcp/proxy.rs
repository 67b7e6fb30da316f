//! tcp_proxy: connect to a host of the cluster and copy bytes both ways, passing
//! half-closes through, with Envoy's byte and connection stats.
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::time::Instant;

use super::copy;
use crate::{
    config::TcpProxyConfig,
    http::idle::Activity,
    istio::stats::{IstioStats, TcpConn, labels::Reporter},
    net::conn::Conn,
    telemetry::{
        access_log::{AccessLog, Record, Sinks},
        scopes::TcpStats,
        stats::{GaugeGuard, Store},
    },
    upstream::{
        Cluster, ClusterManager,
        breakers::Slot,
        connect::{Upstream, connect},
        outlier::Outcome,
    },
};

#[derive(Debug)]
pub struct TcpProxy {
    pub stats: TcpStats,
    /// Looked up per connection in the current cluster set; a connection to a cluster
    /// that does not exist is closed (as in Envoy).
    cluster: String,
    clusters: Arc<ClusterManager>,
    access_logs: Vec<AccessLog>,
    /// `idle_timeout` (Envoy's default 1 h; `None` when `0s`).
    idle_timeout: Option<Duration>,
    /// `max_downstream_connection_duration`.
    max_duration: Option<Duration>,
    /// Hash the client's IP for a hashing balancer.
    hash_source_ip: bool,
    /// `max_connect_attempts` (default 1).
    max_connect_attempts: u32,
}

impl TcpProxy {
    pub fn new(
        config: &TcpProxyConfig,
        clusters: &Arc<ClusterManager>,
        store: &Arc<Store>,
        sinks: &Sinks,
    ) -> Result<Self, String> {
        Ok(TcpProxy {
            stats: TcpStats::new(store, &config.stat_prefix),
            cluster: config.cluster.clone(),
            clusters: clusters.clone(),
            idle_timeout: config.idle_timeout,
            max_duration: config.max_downstream_connection_duration,
            hash_source_ip: config.hash_source_ip,
            max_connect_attempts: config.max_connect_attempts,
            access_logs: config
                .access_logs
                .iter()
                .map(|l| sinks.open(l))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Proxies one downstream connection whose (original) destination is `dst`, with
    /// Istio's TCP metrics when the chain has `istio.stats`.
    pub async fn handle(
        &self,
        down: Conn,
        peer: SocketAddr,
        dst: SocketAddr,
        server_name: Option<String>,
        istio: Option<&IstioStats>,
    ) {
        self.stats.downstream_cx_total.inc();
        let started = Instant::now();
        let mut istio = istio.map(|s| {
            let mut c = TcpConn::new(s);
            c.source = Some(peer);
            c.destination = Some(dst);
            c.server_name = server_name.clone();
            if c.reporter() == Reporter::Destination {
                c.slot = down.peer_slot();
                if let Some(t) = down.tls() {
                    c.peer_principal = t.uri_san.clone();
                    c.local_principal = t.local_uri_san();
                }
            }
            c
        });
        let mut record = Record {
            start: Some(SystemTime::now()),
            downstream_remote: Some(peer),
            downstream_local: Some(dst),
            requested_server_name: server_name,
            tls: down.tls().cloned(),
            ..Default::default()
        };
        self.proxy(down, dst, started, &mut record, istio.as_mut())
            .await;
        if let Some(i) = &mut istio {
            // Bytes from the downstream are the ones sent upstream, and back.
            i.close(
                record.response_flags.as_deref().unwrap_or("-"),
                record.bytes_sent,
                record.bytes_received,
            );
        }
        if !self.access_logs.is_empty() {
            record.duration = started.elapsed();
            for log in &self.access_logs {
                log.write(&record);
            }
        }
    }

    async fn proxy(
        &self,
        down: Conn,
        dst: SocketAddr,
        started: Instant,
        record: &mut Record,
        mut istio: Option<&mut TcpConn<'_>>,
    ) {
        let Some(cluster) = self.clusters.get(&self.cluster) else {
            self.stats.downstream_cx_no_route.inc();
            record.response_flags = Some("NC".into());
            return;
        };
        record.upstream_cluster = Some(cluster.name().to_owned());
        if let Some(i) = istio.as_deref_mut() {
            i.cluster_name = Some(cluster.name().to_owned());
            i.service = cluster.config.istio_service.clone();
        }
        // Envoy hashes the client's IP as text with xxHash64, as for HTTP.
        let hash = self.hash_source_ip.then(|| {
            let ip = record
                .downstream_remote
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            xxhash_rust::xxh64::xxh64(ip.as_bytes(), 0)
        });
        let cs = &cluster.stats;
        let Some(_cx) = connection_slot(&cluster).await else {
            record.response_flags = Some("UO".into());
            return;
        };
        // Up to `max_connect_attempts` connects, each to a host picked anew, as Envoy.
        let mut attempt = 0;
        let (host, up) = loop {
            attempt += 1;
            let Some(host) = cluster.pick_hashed(Some(dst), hash) else {
                cs.upstream_cx_none_healthy.inc();
                record.response_flags = Some("UH".into());
                return;
            };
            record.upstream_host = Some(host.addr);
            match connect(&cluster, &host).await {
                Ok(up) => break (host, up),
                Err(e) => {
                    record.upstream_transport_failure_reason = e.transport_failure_reason();
                    cluster.report(&host, Outcome::ConnectFailed);
                    if attempt >= self.max_connect_attempts {
                        if self.max_connect_attempts > 1 {
                            cs.upstream_cx_connect_attempts_exceeded.inc();
                        }
                        record.response_flags = Some("UF".into());
                        return;
                    }
                }
            }
        };
        cluster.report(&host, Outcome::ConnectedFinal);
        record.upstream_local = up.local_addr();
        if let Some(i) = istio.as_deref_mut() {
            i.upstream = Some(host.addr);
            if i.reporter() == Reporter::Source {
                i.workload = host.attrs().istio_workload.clone();
            }
            if i.reporter() == Reporter::Source
                && let Upstream::Tls(t) = &up
            {
                // The cluster's exchange writes to the upstream connection.
                i.slot = t.peer_slot();
                i.peer_principal = t.peer_uri_san();
                i.local_principal = t.local_uri_san();
            }
        }
        let _active = GaugeGuard::new(&cs.upstream_cx_active);
        down.set_nodelay();
        let moved = copy::Moved::new(self.idle_timeout.map(Activity::new));
        // The copy ends when both sides have closed, or on the idle timeout or the
        // connection's maximum duration: then both sockets close.
        let idle = async {
            match &moved.activity {
                Some(a) => a.expired().await,
                None => std::future::pending().await,
            }
        };
        let lifetime = async {
            match self.max_duration {
                Some(d) => tokio::time::sleep_until(started + d).await,
                None => std::future::pending().await,
            }
        };
        // Istio's periodic TCP report (never ends).
        let reporting = async {
            match istio.as_deref_mut() {
                Some(i) if let Some(period) = i.period() => {
                    let mut next = tokio::time::interval_at(started + period, period);
                    loop {
                        next.tick().await;
                        let (to_up, to_down) = moved.totals();
                        i.tick(to_down, to_up);
                    }
                }
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = copy_both(down, up, &moved) => {}
            () = idle => self.stats.idle_timeout.inc(),
            () = lifetime => self.stats.max_downstream_connection_duration.inc(),
            () = reporting => {}
        }
        let (sent, received) = moved.totals();
        self.stats.downstream_cx_rx_bytes_total.add(sent);
        self.stats.downstream_cx_tx_bytes_total.add(received);
        cs.upstream_cx_tx_bytes_total.add(sent);
        cs.upstream_cx_rx_bytes_total.add(received);
        record.bytes_received = sent;
        record.bytes_sent = received;
    }
}

/// Copies both ways: socket to socket when neither side is TLS, else through buffers.
async fn copy_both(down: Conn, up: Upstream, moved: &copy::Moved) -> std::io::Result<()> {
    match (down, up) {
        (Conn::Plain(d), Upstream::Tcp(u)) => copy::tracked(&d, &u, moved).await,
        (Conn::Plain(d), Upstream::Unix(u)) => copy::tracked(&d, &u, moved).await,
        (d, u) => copy::tracked_streams(d, u, moved).await,
    }
}

/// A place within the cluster's `max_connections`: at the limit the connection waits
/// as a pending request (within `max_pending_requests`) for one to close; `None` when
/// the pending limit overflows too (Envoy's UO).
async fn connection_slot(cluster: &Cluster) -> Option<Slot> {
    let cx = &cluster.breakers.connections;
    if let Some(s) = cx.try_acquire() {
        return Some(s);
    }
    cluster.stats.upstream_cx_overflow.inc();
    let Some(_pending) = cluster.breakers.pending.try_acquire() else {
        cluster.stats.upstream_rq_pending_overflow.inc();
        return None;
    };
    cluster.stats.upstream_rq_pending_total.inc();
    let _waiting = GaugeGuard::new(&cluster.stats.upstream_rq_pending_active);
    loop {
        let released = cx.released();
        if let Some(s) = cx.try_acquire() {
            return Some(s);
        }
        released.await;
    }
}
