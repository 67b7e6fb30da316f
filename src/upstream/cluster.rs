//! A cluster at run time: its hosts (a balancing snapshot swapped atomically when
//! discovery or health changes them), the pick, and for ORIGINAL_DST clusters the hosts
//! made on demand.
use crate::sync::MutexExt;
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use arc_swap::ArcSwap;

use super::{
    Host,
    breakers::{Breakers, Slot},
    lb::HostSet,
    outlier::{Detector, Outcome},
};
use crate::{
    config::{ClusterConfig, Discovery, EndpointAttrs},
    net::own::OwnAddresses,
    telemetry::{scopes::ClusterStats, stats::Store},
};

/// A host as discovery gives it: its address, name and endpoint attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub addr: SocketAddr,
    pub hostname: Option<Arc<str>>,
    pub attrs: EndpointAttrs,
}

#[derive(Debug)]
pub struct Cluster {
    pub config: ClusterConfig,
    pub stats: ClusterStats,
    hosts: ArcSwap<HostSet>,
    /// The overprovisioning factor of the latest assignment (EDS sends it with hosts).
    overprovisioning: AtomicU32,
    /// ORIGINAL_DST only: one host per original destination seen.
    original_dst: Mutex<HashMap<SocketAddr, Arc<Host>>>,
    /// pilotfish's capture addresses: connecting to one would loop.
    pub(super) own: Arc<OwnAddresses>,
    /// Connections, pending and active requests and retries against the thresholds.
    pub breakers: Breakers,
    /// Outlier detection, when configured.
    pub outlier: Option<Detector>,
    /// Active health checking's stats, when configured.
    pub health_stats: Option<super::health_check::Stats>,
    /// TLS or raw, per host (see [`Cluster::bind_tls`]).
    pub transports: super::transport::Transports,
    /// Istio's TCP metadata exchange on its connections (the cluster's `filters`).
    pub exchange: Option<crate::istio::exchange::Exchange>,
}

/// A slot of the cluster's retry breaker, given back when dropped.
pub type RetryPermit = Slot;

impl Cluster {
    pub fn new(config: ClusterConfig, store: &Arc<Store>, own: &Arc<OwnAddresses>) -> Self {
        let stats = ClusterStats::new(
            store,
            config.alt_stat_name.as_deref().unwrap_or(&config.name),
        );
        let breakers = Breakers::new(
            &config.breakers.default,
            config.breakers.default.track_remaining,
            store,
            config.alt_stat_name.as_deref().unwrap_or(&config.name),
        );
        let health_stats = config.health_check.as_ref().map(|_| {
            super::health_check::Stats::new(
                store,
                config.alt_stat_name.as_deref().unwrap_or(&config.name),
            )
        });
        let outlier = config.outlier.clone().map(|o| {
            Detector::new(
                o,
                store,
                config.alt_stat_name.as_deref().unwrap_or(&config.name),
            )
        });
        let hosts: Vec<Arc<Host>> = match config.discovery {
            Discovery::Static => config
                .endpoints
                .iter()
                .filter_map(|e| {
                    let addr = match &e.pipe {
                        Some(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
                        None => SocketAddr::new(e.host.parse().ok()?, e.port),
                    };
                    let name = e.hostname.as_deref().map(Arc::from);
                    Some(Host::with(addr, e.pipe.clone(), name, e.attrs.clone()))
                })
                .collect(),
            _ => Vec::new(),
        };
        let c = Cluster {
            exchange: config
                .metadata_exchange
                .as_ref()
                .map(|x| crate::istio::exchange::Exchange::new(x, store)),
            overprovisioning: AtomicU32::new(config.overprovisioning_factor),
            config,
            stats,
            hosts: ArcSwap::from_pointee(HostSet::empty()),
            original_dst: Mutex::new(HashMap::new()),
            own: own.clone(),
            breakers,
            outlier,
            health_stats,
            transports: Default::default(),
        };
        if c.config.health_check.is_some() {
            for h in &hosts {
                h.hc_failed.store(true, Ordering::Relaxed);
            }
        }
        c.install(hosts);
        c
    }

    /// Binds the cluster's TLS contexts to the secret store (before it is shared).
    pub fn bind_tls(&mut self, secrets: &crate::tls::SecretStore, store: &Arc<Store>) {
        self.transports = super::transport::Transports::new(
            &self.config.transport,
            secrets,
            store,
            self.config
                .alt_stat_name
                .as_deref()
                .unwrap_or(&self.config.name),
        );
        for h in &self.hosts.load().all {
            self.transports.count(&self.config.transport, h);
        }
    }

    /// Publishes a new balancing snapshot over `hosts` and its membership gauges.
    fn install(&self, hosts: Vec<Arc<Host>>) {
        for h in &hosts {
            self.transports.count(&self.config.transport, h);
        }
        let overprovisioning = self.overprovisioning.load(Ordering::Relaxed);
        let set = HostSet::build(hosts, &self.config.lb, overprovisioning);
        self.stats.membership_total.set(i64::from(set.counts.total));
        self.stats
            .membership_healthy
            .set(i64::from(set.counts.healthy));
        self.stats
            .membership_degraded
            .set(i64::from(set.counts.degraded));
        self.hosts.store(Arc::new(set));
    }

    /// Rebuilds the snapshot after a host's health changed.
    pub fn health_changed(&self) {
        self.install(self.hosts.load().all.clone());
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
        self.breakers.retries.try_acquire_within(max)
    }

    /// Tells outlier detection what an attempt told about `host`.
    pub fn report(&self, host: &Arc<Host>, outcome: Outcome) {
        if let Some(d) = &self.outlier {
            d.report(self, host, outcome);
        }
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

    /// Chooses the host for a request or connection: by the cluster's balancer over
    /// its priorities, or for ORIGINAL_DST the connection's original destination.
    pub fn pick(&self, original_dst: Option<SocketAddr>) -> Option<Arc<Host>> {
        self.pick_hashed(original_dst, None)
    }

    /// [`pick`](Self::pick) with the request's hash, for the hashing policies.
    pub fn pick_hashed(
        &self,
        original_dst: Option<SocketAddr>,
        hash: Option<u64>,
    ) -> Option<Arc<Host>> {
        self.pick_excluding(original_dst, hash, &[])
    }

    /// [`pick_hashed`](Self::pick_hashed) leaving the `excluded` priority levels out
    /// (a retry's `previous_priorities`).
    pub fn pick_excluding(
        &self,
        original_dst: Option<SocketAddr>,
        hash: Option<u64>,
        excluded: &[bool],
    ) -> Option<Arc<Host>> {
        if self.config.discovery == Discovery::OriginalDst {
            let addr = original_dst?;
            let mut map = self.original_dst.locked();
            return Some(map.entry(addr).or_insert_with(|| Host::new(addr)).clone());
        }
        let set = self.hosts.load();
        let mut panicked = false;
        let host = set.pick_excluding(hash, excluded, &mut panicked).cloned();
        if panicked {
            self.stats.lb_healthy_panic.inc();
        }
        host
    }

    /// Every host, in discovery order.
    pub fn hosts(&self) -> Vec<Arc<Host>> {
        self.hosts.load().all.clone()
    }

    /// The current balancing snapshot.
    pub fn host_set(&self) -> Arc<HostSet> {
        self.hosts.load_full()
    }

    /// Replaces the hosts (after DNS or EDS), keeping the pools of hosts that stay and
    /// updating their attributes in place.
    pub fn set_hosts(&self, hosts: &[Resolved]) {
        self.set_assignment(hosts, self.config.overprovisioning_factor);
    }

    /// [`set_hosts`](Self::set_hosts) with the assignment's overprovisioning factor.
    pub fn set_assignment(&self, hosts: &[Resolved], overprovisioning: u32) {
        self.overprovisioning
            .store(overprovisioning, Ordering::Relaxed);
        let old = self.hosts.load();
        let mut by_addr: HashMap<(SocketAddr, Option<&str>), &Arc<Host>> = old
            .all
            .iter()
            .map(|h| ((h.addr, h.hostname.as_deref()), h))
            .collect();
        let next: Vec<Arc<Host>> = hosts
            .iter()
            .map(|r| match by_addr.remove(&(r.addr, r.hostname.as_deref())) {
                Some(h) => {
                    h.set_attrs(&r.attrs);
                    h.clone()
                }
                None => {
                    let h = Host::with(r.addr, None, r.hostname.clone(), r.attrs.clone());
                    if self.config.health_check.is_some() {
                        h.hc_failed.store(true, Ordering::Relaxed);
                    }
                    h
                }
            })
            .collect();
        self.install(next);
    }

    /// Forgets ORIGINAL_DST hosts nobody holds and that have no open connection.
    pub fn cleanup_original_dst(&self) {
        let mut map = self.original_dst.locked();
        map.retain(|_, h| Arc::strong_count(h) > 1 || !h.pools_idle_empty());
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
                        ..Default::default()
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
        let r = |addr| Resolved {
            addr,
            hostname: None,
            attrs: Default::default(),
        };
        c.set_hosts(&[r(a)]);
        let before = c.pick(None).unwrap();
        c.set_hosts(&[r(a), r(b)]);
        assert!(c.hosts().iter().any(|h| Arc::ptr_eq(h, &before)));
        assert_eq!(c.stats.membership_total.get(), 2);
    }
}
