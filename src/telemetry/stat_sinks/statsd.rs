//! `envoy.stat_sinks.statsd`: plain statsd lines with Envoy's flat names under a
//! prefix. Over UDP each line is a datagram of its own, as Envoy sends them; over TCP
//! (`tcp_cluster_name`) lines end in `\n` on a connection to one of the cluster's
//! hosts. Counters go as their increase since the last flush (`|c`), gauges as their
//! value (`|g`), and every value recorded in a histogram as it is recorded (`|ms`).
use std::{
    fmt::Write as _,
    io,
    net::{SocketAddr, UdpSocket},
    sync::{Arc, Mutex, OnceLock},
};

use tokio::io::AsyncWriteExt;

use super::{Snapshot, WRITE_TIMEOUT};
use crate::{
    config::stat_sinks::{StatsdConfig, StatsdTarget},
    telemetry::stats::{Counter, Store},
    upstream::{connect::Upstream, manager::ClusterManager},
};

/// Envoy drops a TCP sink's connection when this much is waiting to be written.
const TCP_BUFFER_LIMIT: usize = 16 * 1024 * 1024;

/// Where histogram values go as they are recorded, from whichever thread records them.
pub struct Sampler {
    prefix: String,
    out: Out,
    /// `statsd.cx_overflow`, once the sink is started.
    overflow: OnceLock<Counter>,
}

enum Out {
    /// Non-blocking: a full socket buffer drops the line, as a lost datagram would,
    /// and an unreachable address only loses lines.
    Udp(UdpSocket, SocketAddr),
    /// Lines waiting for the next flush's write.
    Tcp(Mutex<Vec<u8>>),
}

impl Sampler {
    pub fn new(c: &StatsdConfig) -> io::Result<Self> {
        let out = match &c.target {
            StatsdTarget::Udp(addr) => {
                let local: SocketAddr = if addr.is_ipv4() {
                    (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let s = UdpSocket::bind(local)?;
                s.set_nonblocking(true)?;
                Out::Udp(s, *addr)
            }
            StatsdTarget::Tcp(_) => Out::Tcp(Mutex::new(Vec::new())),
        };
        Ok(Sampler {
            prefix: c.prefix.clone(),
            out,
            overflow: OnceLock::new(),
        })
    }

    /// One histogram value.
    pub fn sample(&self, name: &str, v: u64) {
        let mut line = String::with_capacity(self.prefix.len() + name.len() + 24);
        let _ = write!(line, "{}.{name}:{v}|ms", self.prefix);
        self.send(&line);
    }

    fn send(&self, line: &str) {
        match &self.out {
            Out::Udp(s, to) => {
                let _ = s.send_to(line.as_bytes(), to);
            }
            Out::Tcp(buf) => {
                let mut buf = buf.lock().unwrap_or_else(|e| e.into_inner());
                if buf.len() + line.len() + 1 > TCP_BUFFER_LIMIT {
                    buf.clear();
                    if let Some(c) = self.overflow.get() {
                        c.inc();
                    }
                }
                buf.extend_from_slice(line.as_bytes());
                buf.push(b'\n');
            }
        }
    }

    fn take_buffered(&self) -> Vec<u8> {
        match &self.out {
            Out::Udp(..) => Vec::new(),
            Out::Tcp(buf) => std::mem::take(&mut *buf.lock().unwrap_or_else(|e| e.into_inner())),
        }
    }
}

/// The flushing side of one statsd sink.
pub struct Statsd {
    sampler: Arc<Sampler>,
    tcp: Option<Tcp>,
}

struct Tcp {
    cluster: String,
    clusters: Arc<ClusterManager>,
    conn: Option<Upstream>,
}

impl Statsd {
    pub fn new(
        c: &StatsdConfig,
        sampler: Arc<Sampler>,
        clusters: Arc<ClusterManager>,
        store: &Store,
    ) -> Self {
        let tcp = match &c.target {
            StatsdTarget::Udp(_) => None,
            StatsdTarget::Tcp(cluster) => {
                let _ = sampler.overflow.set(store.counter(
                    "statsd.cx_overflow".into(),
                    "envoy_statsd_cx_overflow",
                    &[],
                ));
                Some(Tcp {
                    cluster: cluster.clone(),
                    clusters,
                    conn: None,
                })
            }
        };
        Statsd { sampler, tcp }
    }

    pub async fn flush(&mut self, snap: &Snapshot) {
        let prefix = &self.sampler.prefix;
        let mut line = String::new();
        for (name, _, delta) in &snap.counters {
            line.clear();
            let _ = write!(line, "{prefix}.{name}:{delta}|c");
            self.sampler.send(&line);
        }
        for (name, v) in &snap.gauges {
            line.clear();
            let _ = write!(line, "{prefix}.{name}:{v}|g");
            self.sampler.send(&line);
        }
        if let Some(tcp) = &mut self.tcp {
            let bytes = self.sampler.take_buffered();
            tcp.write(&bytes).await;
        }
    }
}

impl Tcp {
    /// Writes `bytes` on the connection, connecting first if there is none; a failure
    /// drops the connection (and these lines), and the next flush connects again.
    async fn write(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.conn.is_none() {
            let Some(cluster) = self.clusters.get(&self.cluster) else {
                return;
            };
            let Some(host) = cluster.pick(None) else {
                return;
            };
            match crate::upstream::connect::connect(&cluster, &host).await {
                Ok(c) => self.conn = Some(c),
                Err(e) => {
                    tracing::debug!("statsd: connecting to '{}': {e}", self.cluster);
                    return;
                }
            }
        }
        let Some(conn) = &mut self.conn else { return };
        let wrote = tokio::time::timeout(WRITE_TIMEOUT, async {
            conn.write_all(bytes).await?;
            conn.flush().await
        })
        .await;
        if !matches!(wrote, Ok(Ok(()))) {
            self.conn = None;
        }
    }
}
