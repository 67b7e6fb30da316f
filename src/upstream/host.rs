//! An upstream host: where to connect, its balancing attributes (from its endpoint),
//! its live health, and the requests it is serving (for least request and `/clusters`).
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
};

use arc_swap::ArcSwap;

use super::{http_pool::HostPool, outlier::HostMonitor};
use crate::config::{EdsHealth, EndpointAttrs};

#[derive(Debug)]
pub struct Host {
    /// Where to connect; `0.0.0.0:0` for a pipe host.
    pub addr: SocketAddr,
    /// A `pipe` endpoint: the Unix socket to connect to instead of `addr`.
    pub pipe: Option<std::path::PathBuf>,
    /// The endpoint's hostname (its DNS name, or `hostname`), for `auto_host_rewrite`.
    pub hostname: Option<Arc<str>>,
    pub pool: HostPool,
    /// Pools of connections made with an `istio.alpn` override, by its index (made on
    /// first use): such a connection carries only requests with the same override.
    alpn_pools: std::sync::OnceLock<Box<[HostPool]>>,
    /// Weight, priority, locality and EDS health; an update replaces them in place (the
    /// host keeps its connections), as Envoy updates a host that stays.
    attrs: ArcSwap<EndpointAttrs>,
    /// Ejected by outlier detection.
    pub(super) ejected: AtomicBool,
    /// Failing its active health check (a host of a health-checked cluster starts so,
    /// until its first check passes, as in Envoy).
    pub(super) hc_failed: AtomicBool,
    /// Its transport socket pick has been counted (`<match>.total_match_count`).
    pub(super) socket_counted: AtomicBool,
    /// Requests in flight to this host.
    rq_active: Arc<AtomicU32>,
    /// Outlier detection's counters and ejection history for this host.
    pub monitor: HostMonitor,
    /// Active health checking's run of results.
    pub checks: super::health_check::HostChecks,
    /// The per-host counters `/clusters` prints.
    pub counters: HostCounters,
}

/// A host's own counters, as Envoy keeps them for `/clusters`.
#[derive(Debug, Default)]
pub struct HostCounters {
    pub cx_total: AtomicU64,
    pub cx_connect_fail: AtomicU64,
    /// Requests that reached the host (response headers or a reset after connecting).
    pub rq_total: AtomicU64,
    /// Responses below 500.
    pub rq_success: AtomicU64,
    /// 5xx responses and resets.
    pub rq_error: AtomicU64,
    pub rq_timeout: AtomicU64,
}

impl HostCounters {
    /// The counter `/clusters` names `name`, if kept.
    pub fn get(&self, name: &str) -> Option<u64> {
        let c = match name {
            "cx_total" => &self.cx_total,
            "cx_connect_fail" => &self.cx_connect_fail,
            "rq_total" => &self.rq_total,
            "rq_success" => &self.rq_success,
            "rq_error" => &self.rq_error,
            "rq_timeout" => &self.rq_timeout,
            _ => return None,
        };
        Some(c.load(Ordering::Relaxed))
    }
}

/// How the balancer sees a host now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Degraded,
    Unhealthy,
    /// DRAINING from EDS: neither picked nor counted.
    Excluded,
}

impl Host {
    pub fn new(addr: SocketAddr) -> Arc<Self> {
        Self::with(addr, None, None, EndpointAttrs::default())
    }

    /// A host reached over the Unix socket at `path`.
    pub fn pipe(path: std::path::PathBuf) -> Arc<Self> {
        Self::with(
            SocketAddr::from(([0, 0, 0, 0], 0)),
            Some(path),
            None,
            EndpointAttrs::default(),
        )
    }

    pub fn with(
        addr: SocketAddr,
        pipe: Option<std::path::PathBuf>,
        hostname: Option<Arc<str>>,
        attrs: EndpointAttrs,
    ) -> Arc<Self> {
        Arc::new(Host {
            addr,
            pipe,
            hostname,
            pool: HostPool::default(),
            alpn_pools: Default::default(),
            attrs: ArcSwap::from_pointee(attrs),
            ejected: AtomicBool::new(false),
            hc_failed: AtomicBool::new(false),
            socket_counted: AtomicBool::new(false),
            rq_active: Arc::default(),
            monitor: HostMonitor::new(),
            checks: Default::default(),
            counters: HostCounters::default(),
        })
    }

    /// The pool for connections offering the cluster's ALPN (`alpn` 0) or the
    /// `istio.alpn` override with that index.
    pub fn pool_for(&self, alpn: u8) -> &HostPool {
        if alpn == 0 {
            return &self.pool;
        }
        &self.alpn_pools.get_or_init(|| {
            (0..crate::istio::alpn::MAX_LISTS)
                .map(|_| HostPool::default())
                .collect()
        })[usize::from(alpn) - 1]
    }

    /// True when no pool of the host holds a live connection.
    pub fn pools_idle_empty(&self) -> bool {
        self.pool.is_idle_empty()
            && self
                .alpn_pools
                .get()
                .is_none_or(|p| p.iter().all(HostPool::is_idle_empty))
    }

    pub fn attrs(&self) -> Arc<EndpointAttrs> {
        self.attrs.load_full()
    }

    pub(super) fn set_attrs(&self, attrs: &EndpointAttrs) {
        if **self.attrs.load() != *attrs {
            self.attrs.store(Arc::new(attrs.clone()));
        }
    }

    pub fn weight(&self) -> u32 {
        self.attrs.load().weight
    }

    /// EDS health, then outlier ejection: an ejected host is unhealthy.
    pub fn health(&self) -> Health {
        let eds = self.attrs.load().health;
        if eds == EdsHealth::Draining {
            return Health::Excluded;
        }
        if self.ejected.load(Ordering::Relaxed) || self.hc_failed.load(Ordering::Relaxed) {
            return Health::Unhealthy;
        }
        match eds {
            EdsHealth::Healthy => Health::Healthy,
            EdsHealth::Degraded => Health::Degraded,
            EdsHealth::Unhealthy | EdsHealth::Draining => Health::Unhealthy,
        }
    }

    /// Envoy's `health_flags` text: `healthy`, or each failing flag after a `/`.
    pub fn health_flags(&self) -> String {
        let mut out = String::new();
        if self.hc_failed.load(Ordering::Relaxed) {
            out.push_str("/failed_active_hc");
        }
        if self.ejected.load(Ordering::Relaxed) {
            out.push_str("/failed_outlier_check");
        }
        match self.attrs.load().health {
            EdsHealth::Healthy => {}
            EdsHealth::Unhealthy => out.push_str("/failed_eds_health"),
            EdsHealth::Degraded => out.push_str("/degraded_eds_health"),
            EdsHealth::Draining => out.push_str("/eds_status_draining"),
        }
        if out.is_empty() {
            out.push_str("healthy");
        }
        out
    }

    pub fn is_hc_failed(&self) -> bool {
        self.hc_failed.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Requests in flight to this host.
    pub fn active(&self) -> u32 {
        self.rq_active.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn track(&self) -> InFlight {
        self.rq_active.fetch_add(1, Ordering::Relaxed);
        InFlight(self.rq_active.clone())
    }
}

/// A request in flight to a host.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicU32>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
