//! xDS stats with Envoy's names: `control_plane.connected_state`,
//! `cluster_manager.cds.*`, `listener_manager.lds.*`, `http.<prefix>.rds.<name>.*` and
//! the EDS counters in each cluster's scope, plus the config apply latency histogram.
use std::sync::Arc;

use super::Kind;
use crate::telemetry::stats::{Counter, Gauge, Histogram, Store};

/// One subscription's counters (Envoy's `SubscriptionStats`).
#[derive(Debug, Clone)]
pub struct UpdateStats {
    pub attempt: Counter,
    pub success: Counter,
    pub rejected: Counter,
    pub failure: Counter,
    /// The first fetch did not arrive within `initial_fetch_timeout`.
    pub init_fetch_timeout: Counter,
    /// Milliseconds since the epoch of the last accepted update.
    pub update_time: Gauge,
    /// Envoy publishes a hash of the last accepted version.
    pub version: Gauge,
    /// Time from a response's arrival to its resources serving traffic.
    pub duration: Histogram,
}

impl UpdateStats {
    /// `flat` is the scope with its trailing dot (`cluster_manager.cds.`), `prom` the
    /// Prometheus stem (`envoy_cluster_manager_cds_`).
    pub fn new(store: &Arc<Store>, flat: &str, prom: &str, labels: &[(&str, &str)]) -> Self {
        let c = |n: &str| store.counter([flat, n].concat(), &[prom, n].concat(), labels);
        let g = |n: &str| store.gauge([flat, n].concat(), &[prom, n].concat(), labels);
        UpdateStats {
            attempt: c("update_attempt"),
            success: c("update_success"),
            rejected: c("update_rejected"),
            failure: c("update_failure"),
            init_fetch_timeout: c("init_fetch_timeout"),
            update_time: g("update_time"),
            version: g("version"),
            duration: store.histogram(
                [flat, "update_duration"].concat(),
                &[prom, "update_duration"].concat(),
                labels,
            ),
        }
    }

    /// RDS stats of one route configuration, in the scope of the connection manager
    /// that first asked for it.
    pub fn rds(store: &Arc<Store>, hcm_prefix: &str, route_config: &str) -> Self {
        UpdateStats::new(
            store,
            &format!("http.{hcm_prefix}.rds.{route_config}."),
            "envoy_http_rds_",
            &[
                ("envoy_http_conn_manager_prefix", hcm_prefix),
                ("envoy_rds_route_config", route_config),
            ],
        )
    }

    /// EDS stats in a cluster's scope.
    pub fn eds(store: &Arc<Store>, cluster: &str) -> Self {
        UpdateStats::new(
            store,
            &format!("cluster.{cluster}."),
            "envoy_cluster_",
            &[("envoy_cluster_name", cluster)],
        )
    }

    pub fn accepted(&self, version: &str) {
        self.success.inc();
        self.version.set(version_hash(version));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.update_time.set(now.as_millis() as i64);
    }
}

/// Process-wide xDS stats.
#[derive(Debug, Clone)]
pub struct XdsStats {
    pub connected_state: Gauge,
    pub cds: UpdateStats,
    pub lds: UpdateStats,
    pub warming_clusters: Gauge,
    pub active_clusters: Gauge,
    pub cluster_added: Counter,
    pub cluster_modified: Counter,
    pub cluster_removed: Counter,
    pub listeners_warming: Gauge,
    pub listeners_active: Gauge,
    pub listener_added: Counter,
    pub listener_modified: Counter,
    pub listener_removed: Counter,
    pub listener_create_failure: Counter,
}

impl XdsStats {
    pub fn new(store: &Arc<Store>) -> Self {
        let c = |flat: &str| {
            store.counter(
                flat.into(),
                &format!("envoy_{}", flat.replace('.', "_")),
                &[],
            )
        };
        let g = |flat: &str| {
            store.gauge(
                flat.into(),
                &format!("envoy_{}", flat.replace('.', "_")),
                &[],
            )
        };
        XdsStats {
            connected_state: g("control_plane.connected_state"),
            cds: UpdateStats::new(
                store,
                "cluster_manager.cds.",
                "envoy_cluster_manager_cds_",
                &[],
            ),
            lds: UpdateStats::new(
                store,
                "listener_manager.lds.",
                "envoy_listener_manager_lds_",
                &[],
            ),
            warming_clusters: g("cluster_manager.warming_clusters"),
            active_clusters: g("cluster_manager.active_clusters"),
            cluster_added: c("cluster_manager.cluster_added"),
            cluster_modified: c("cluster_manager.cluster_modified"),
            cluster_removed: c("cluster_manager.cluster_removed"),
            listeners_warming: g("listener_manager.total_listeners_warming"),
            listeners_active: g("listener_manager.total_listeners_active"),
            listener_added: c("listener_manager.listener_added"),
            listener_modified: c("listener_manager.listener_modified"),
            listener_removed: c("listener_manager.listener_removed"),
            listener_create_failure: c("listener_manager.listener_create_failure"),
        }
    }

    /// The stats of a wildcard type (CDS or LDS).
    pub fn of(&self, kind: Kind) -> Option<&UpdateStats> {
        match kind {
            Kind::Cluster => Some(&self.cds),
            Kind::Listener => Some(&self.lds),
            _ => None,
        }
    }
}

/// A stable 52-bit hash of a version string (it must fit a gauge exactly).
fn version_hash(v: &str) -> i64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in v.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (h & ((1 << 52) - 1)) as i64
}
