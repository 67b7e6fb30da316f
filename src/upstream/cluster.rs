//! A cluster at run time: its hosts (swapped atomically when DNS changes them), the
//! round-robin pick, and for ORIGINAL_DST clusters the hosts made on demand.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use arc_swap::ArcSwap;

use super::http_pool::HostPool;
use crate::{
    config::{ClusterConfig, Discovery},
    net::own::OwnAddresses,
    telemetry::{scopes::ClusterStats, stats::Store},
};

#[derive(Debug)]
pub struct Host {
    /// Where to connect; `0.0.0.0:0` for a pipe host.
    pub addr: SocketAddr,
    /// A `pipe` endpoint: the Unix socket to connect to instead of `addr`.
    pub pipe: Option<std::path::PathBuf>,
    /// The endpoint's hostname (its DNS name, or `hostname`), for `auto_host_rewrite`.
    pub hostname: Option<Arc<str>>,
    pub pool: HostPool,
}

impl Host {
    pub fn new(addr: SocketAddr) -> Arc<Self> {
        Self::named(addr, None)
    }

    pub fn named(addr: SocketAddr, hostname: Option<Arc<str>>) -> Arc<Self> {
        Arc::new(Host {
            addr,
            pipe: None,
            hostname,
            pool: HostPool::default(),
        })
    }

    /// A host reached over the Unix socket at `path`.
    pub fn pipe(path: std::path::PathBuf) -> Arc<Self> {
        Arc::new(Host {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            pipe: Some(path),
            hostname: None,
            pool: HostPool::default(),
        })
    }
}

#[derive(Debug)]
pub struct Cluster {
    pub config: ClusterConfig,
    pub stats: ClusterStats,
    hosts: ArcSwap<Vec<Arc<Host>>>,
    next: AtomicUsize,
    /// ORIGINAL_DST only: one host per original destination seen.
    original_dst: Mutex<HashMap<SocketAddr, Arc<Host>>>,
    /// pilotfish's capture addresses: connecting to one would loop.
    pub(super) own: Arc<OwnAddresses>,
    /// Retries scheduled and not yet answered (the `max_retries` breaker).
    retries: Arc<AtomicU64>,
}

/// A slot of the cluster's retry breaker, given back when dropped.
#[derive(Debug)]
pub struct RetryPermit(Arc<AtomicU64>);

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Cluster {
    pub fn new(config: ClusterConfig, store: &Arc<Store>, own: &Arc<OwnAddresses>) -> Self {
        let stats = ClusterStats::new(
            store,
            config.alt_stat_name.as_deref().unwrap_or(&config.name),
        );
        let hosts: Vec<Arc<Host>> = match config.discovery {
            Discovery::Static => config
                .endpoints
                .iter()
                .filter_map(|e| {
                    if let Some(p) = &e.pipe {
                        return Some(Host::pipe(p.clone()));
                    }
                    let addr = SocketAddr::new(e.host.parse().ok()?, e.port);
                    Some(Host::named(addr, e.hostname.as_deref().map(Arc::from)))
                })
                .collect(),
            _ => Vec::new(),
        };
        stats.membership_total.set(hosts.len() as i64);
        stats.membership_healthy.set(hosts.len() as i64);
        Cluster {
            config,
            stats,
            hosts: ArcSwap::from_pointee(hosts),
            next: AtomicUsize::new(0),
            original_dst: Mutex::new(HashMap::new()),
            own: own.clone(),
            retries: Arc::default(),
        }
    }

    /// A slot for one more retry, if the breaker allows: `max_retries` concurrent
    /// retries, or with a `retry_budget` that share of the active requests (at least
    /// `min_retry_concurrency`), as Envoy's resource manager counts them.
    pub fn retry_permit(&self) -> Option<RetryPermit> {
        let limits = &self.config.breakers.default;
        let max = match limits.retry_budget {
            Some(b) => {
                let active = self.stats.upstream_rq_active.get().max(0) as f64;
                ((active * b.budget_percent / 100.0) as u64).max(u64::from(b.min_retry_concurrency))
            }
            None => u64::from(limits.max_retries),
        };
        let n = self.retries.fetch_add(1, Ordering::Relaxed);
        if n >= max {
            self.retries.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(RetryPermit(self.retries.clone()))
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The cluster's stat scope and observability name: `alt_stat_name`, else its name.
    pub fn stat_name(&self) -> &str {
        self.config
            .alt_stat_name
            .as_deref()
            .unwrap_or(&self.config.name)
    }

    /// Chooses the host for a request or connection: round robin over the current
    /// hosts, or for ORIGINAL_DST the connection's original destination.
    pub fn pick(&self, original_dst: Option<SocketAddr>) -> Option<Arc<Host>> {
        if self.config.discovery == Discovery::OriginalDst {
            let addr = original_dst?;
            let mut map = self.original_dst.lock().unwrap();
            return Some(map.entry(addr).or_insert_with(|| Host::new(addr)).clone());
        }
        let hosts = self.hosts.load();
        if hosts.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % hosts.len();
        Some(hosts[i].clone())
    }

    pub fn hosts(&self) -> Arc<Vec<Arc<Host>>> {
        self.hosts.load_full()
    }

    /// Replaces the host set (after DNS), keeping the pools of hosts that stay.
    pub fn set_hosts(&self, addrs: &[(SocketAddr, Option<Arc<str>>)]) {
        let old = self.hosts.load();
        let next: Vec<Arc<Host>> = addrs
            .iter()
            .map(|(a, name)| {
                old.iter()
                    .find(|h| h.addr == *a && h.hostname == *name)
                    .cloned()
                    .unwrap_or_else(|| Host::named(*a, name.clone()))
            })
            .collect();
        self.stats.membership_total.set(next.len() as i64);
        self.stats.membership_healthy.set(next.len() as i64);
        self.hosts.store(Arc::new(next));
    }

    /// Forgets ORIGINAL_DST hosts nobody holds and that have no open connection.
    pub fn cleanup_original_dst(&self) {
        let mut map = self.original_dst.lock().unwrap();
        map.retain(|_, h| Arc::strong_count(h) > 1 || !h.pool.is_idle_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DnsFamily, EndpointConfig, UpstreamProtocol};
    use std::time::Duration;

    fn cluster(discovery: Discovery, endpoints: &[(&str, u16)]) -> Cluster {
        Cluster::new(
            ClusterConfig {
                name: "c".into(),
                discovery,
                connect_timeout: Duration::from_secs(1),
                protocol: UpstreamProtocol::Http1,
                dns_refresh_rate: Duration::from_secs(5),
                dns_family: DnsFamily::Auto,
                endpoints: endpoints
                    .iter()
                    .map(|(h, p)| EndpointConfig {
                        host: h.to_string(),
                        port: *p,
                        hostname: None,
                        pipe: None,
                    })
                    .collect(),
                original_dst_header: None,
                upstream_socket: Default::default(),
                eds: None,
                ..Default::default()
            },
            &Store::new(),
            &Default::default(),
        )
    }

    #[test]
    fn round_robin_visits_every_host_in_turn() {
        let c = cluster(
            Discovery::Static,
            &[("127.0.0.1", 1), ("127.0.0.1", 2), ("127.0.0.1", 3)],
        );
        let ports: Vec<u16> = (0..6).map(|_| c.pick(None).unwrap().addr.port()).collect();
        assert_eq!(ports, [1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn empty_cluster_has_no_host() {
        assert!(cluster(Discovery::Static, &[]).pick(None).is_none());
    }

    #[test]
    fn original_dst_uses_the_connection_destination() {
        let c = cluster(Discovery::OriginalDst, &[]);
        let dst: SocketAddr = "10.1.2.3:8080".parse().unwrap();
        assert_eq!(c.pick(Some(dst)).unwrap().addr, dst);
        assert!(c.pick(None).is_none());
    }

    #[test]
    fn set_hosts_keeps_existing_host_objects() {
        let c = cluster(Discovery::StrictDns, &[]);
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        c.set_hosts(&[(a, None)]);
        let before = c.pick(None).unwrap();
        c.set_hosts(&[(a, None), (b, None)]);
        assert!(c.hosts().iter().any(|h| Arc::ptr_eq(h, &before)));
        assert_eq!(c.stats.membership_total.get(), 2);
    }
}
