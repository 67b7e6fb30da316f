//! Envoy's stat scopes (cluster, listener, HTTP and TCP proxy, server) as structs of
//! pre-resolved handles, with Envoy's flat names and Prometheus tag extraction.
use std::sync::Arc;

use super::stats::{CodeCounters, Counter, Gauge, LazyHistogram, Store};

#[derive(Debug)]
pub struct ClusterStats {
    pub upstream_cx_total: Counter,
    pub upstream_cx_active: Gauge,
    pub upstream_cx_connect_fail: Counter,
    pub upstream_cx_connect_timeout: Counter,
    pub upstream_cx_idle_timeout: Counter,
    pub upstream_cx_none_healthy: Counter,
    pub upstream_cx_rx_bytes_total: Counter,
    pub upstream_cx_tx_bytes_total: Counter,
    pub upstream_rq_total: Counter,
    pub upstream_rq_active: Gauge,
    pub upstream_rq_completed: Counter,
    pub upstream_rq_timeout: Counter,
    pub upstream_rq_per_try_timeout: Counter,
    pub upstream_rq_per_try_idle_timeout: Counter,
    pub upstream_rq_retry: Counter,
    pub upstream_rq_retry_success: Counter,
    pub upstream_rq_retry_overflow: Counter,
    pub upstream_rq_retry_limit_exceeded: Counter,
    pub upstream_rq_retry_backoff_exponential: Counter,
    pub upstream_rq_retry_backoff_ratelimited: Counter,
    pub retry_or_shadow_abandoned: Counter,
    pub upstream_rq_pending_overflow: Counter,
    pub upstream_rq_pending_total: Counter,
    pub upstream_rq_pending_active: Gauge,
    pub upstream_cx_overflow: Counter,
    pub upstream_cx_connect_attempts_exceeded: Counter,
    pub upstream_cx_max_duration_reached: Counter,
    pub upstream_rq_active_overflow: Counter,
    pub upstream_rq: CodeCounters,
    /// `retry.upstream_rq_<code>`, `_<class>xx`, `_completed`: responses that were
    /// retried (made on first use, as Envoy's).
    pub retry_upstream_rq: CodeCounters,
    /// Request start to the end of the response (made on first use, as Envoy's).
    pub upstream_rq_time: LazyHistogram,
    /// TCP connect time of upstream connections (made on first use, as Envoy's).
    pub upstream_cx_connect_ms: LazyHistogram,
    pub membership_healthy: Gauge,
    pub membership_degraded: Gauge,
    pub membership_total: Gauge,
    /// Picks made from every host of a level in panic.
    pub lb_healthy_panic: Counter,
}

impl ClusterStats {
    pub fn new(store: &Arc<Store>, name: &str) -> Self {
        let label = [("envoy_cluster_name", name)];
        // Names by `concat` (one allocation of the exact size), not `format!`: an xDS
        // push registers these by the hundred thousand.
        let c = |stat: &str| {
            store.counter(
                ["cluster.", name, ".", stat].concat(),
                &["envoy_cluster_", stat].concat(),
                &label,
            )
        };
        let g = |stat: &str| {
            store.gauge(
                ["cluster.", name, ".", stat].concat(),
                &["envoy_cluster_", stat].concat(),
                &label,
            )
        };
        ClusterStats {
            upstream_cx_total: c("upstream_cx_total"),
            upstream_cx_active: g("upstream_cx_active"),
            upstream_cx_connect_fail: c("upstream_cx_connect_fail"),
            upstream_cx_connect_timeout: c("upstream_cx_connect_timeout"),
            upstream_cx_idle_timeout: c("upstream_cx_idle_timeout"),
            upstream_cx_none_healthy: c("upstream_cx_none_healthy"),
            upstream_cx_rx_bytes_total: c("upstream_cx_rx_bytes_total"),
            upstream_cx_tx_bytes_total: c("upstream_cx_tx_bytes_total"),
            upstream_rq_total: c("upstream_rq_total"),
            upstream_rq_active: g("upstream_rq_active"),
            upstream_rq_completed: c("upstream_rq_completed"),
            upstream_rq_timeout: c("upstream_rq_timeout"),
            upstream_rq_per_try_timeout: c("upstream_rq_per_try_timeout"),
            upstream_rq_per_try_idle_timeout: c("upstream_rq_per_try_idle_timeout"),
            upstream_rq_retry: c("upstream_rq_retry"),
            upstream_rq_retry_success: c("upstream_rq_retry_success"),
            upstream_rq_retry_overflow: c("upstream_rq_retry_overflow"),
            upstream_rq_retry_limit_exceeded: c("upstream_rq_retry_limit_exceeded"),
            upstream_rq_retry_backoff_exponential: c("upstream_rq_retry_backoff_exponential"),
            upstream_rq_retry_backoff_ratelimited: c("upstream_rq_retry_backoff_ratelimited"),
            retry_or_shadow_abandoned: c("retry_or_shadow_abandoned"),
            upstream_rq_pending_overflow: c("upstream_rq_pending_overflow"),
            upstream_rq_pending_total: c("upstream_rq_pending_total"),
            upstream_rq_pending_active: g("upstream_rq_pending_active"),
            upstream_cx_overflow: c("upstream_cx_overflow"),
            upstream_cx_connect_attempts_exceeded: c("upstream_cx_connect_attempts_exceeded"),
            upstream_cx_max_duration_reached: c("upstream_cx_max_duration_reached"),
            upstream_rq_active_overflow: c("upstream_rq_active_overflow"),
            upstream_rq: CodeCounters::new(
                store,
                format!("cluster.{name}."),
                "upstream_rq",
                "envoy_cluster_upstream_rq".into(),
                vec![("envoy_cluster_name", name.to_owned())],
            ),
            retry_upstream_rq: CodeCounters::new(
                store,
                format!("cluster.{name}.retry."),
                "upstream_rq",
                "envoy_cluster_retry_upstream_rq".into(),
                vec![("envoy_cluster_name", name.to_owned())],
            ),
            upstream_rq_time: LazyHistogram::new(
                store,
                format!("cluster.{name}.upstream_rq_time"),
                "envoy_cluster_upstream_rq_time".into(),
                vec![("envoy_cluster_name", name.to_owned())],
            ),
            upstream_cx_connect_ms: LazyHistogram::new(
                store,
                format!("cluster.{name}.upstream_cx_connect_ms"),
                "envoy_cluster_upstream_cx_connect_ms".into(),
                vec![("envoy_cluster_name", name.to_owned())],
            ),
            membership_healthy: g("membership_healthy"),
            membership_degraded: g("membership_degraded"),
            membership_total: g("membership_total"),
            lb_healthy_panic: c("lb_healthy_panic"),
        }
    }
}

/// A virtual cluster's stats (`vhost.<vh>.vcluster.<vc>.*`): the requests of a virtual
/// host that match it, counted as the router counts them for the cluster.
#[derive(Debug)]
pub struct VclusterStats {
    pub upstream_rq_total: Counter,
    pub upstream_rq_timeout: Counter,
    pub upstream_rq_retry: Counter,
    pub upstream_rq_retry_success: Counter,
    pub upstream_rq_retry_limit_exceeded: Counter,
    pub upstream_rq_retry_overflow: Counter,
    /// `upstream_rq_<code>`, `_<class>xx`, `_completed`, made on first use.
    pub upstream_rq: CodeCounters,
    pub upstream_rq_time: LazyHistogram,
}

impl VclusterStats {
    pub fn new(store: &Arc<Store>, vhost: &str, vcluster: &str) -> Self {
        let prefix = ["vhost.", vhost, ".vcluster.", vcluster, "."].concat();
        let labels = vec![
            ("envoy_virtual_cluster", vcluster.to_owned()),
            ("envoy_virtual_host", vhost.to_owned()),
        ];
        let label_refs = [
            ("envoy_virtual_cluster", vcluster),
            ("envoy_virtual_host", vhost),
        ];
        let c = |stat: &str| {
            store.counter(
                [prefix.as_str(), stat].concat(),
                &["envoy_vhost_vcluster_", stat].concat(),
                &label_refs,
            )
        };
        VclusterStats {
            upstream_rq_total: c("upstream_rq_total"),
            upstream_rq_timeout: c("upstream_rq_timeout"),
            upstream_rq_retry: c("upstream_rq_retry"),
            upstream_rq_retry_success: c("upstream_rq_retry_success"),
            upstream_rq_retry_limit_exceeded: c("upstream_rq_retry_limit_exceeded"),
            upstream_rq_retry_overflow: c("upstream_rq_retry_overflow"),
            upstream_rq: CodeCounters::new(
                store,
                prefix.clone(),
                "upstream_rq",
                "envoy_vhost_vcluster_upstream_rq".into(),
                labels.clone(),
            ),
            upstream_rq_time: LazyHistogram::new(
                store,
                [prefix.as_str(), "upstream_rq_time"].concat(),
                "envoy_vhost_vcluster_upstream_rq_time".into(),
                labels,
            ),
        }
    }
}

#[derive(Debug)]
pub struct ListenerStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_destroy: Counter,
    /// Connections in the listener filters (inspection) right now.
    pub downstream_pre_cx_active: Gauge,
    /// Connections closed because the listener filters timed out.
    pub downstream_pre_cx_timeout: Counter,
    /// Connections closed because no filter chain matched.
    pub no_filter_chain_match: Counter,
    /// pilotfish's own: connections refused because their original destination was
    /// one of pilotfish's own listeners (they would loop).
    pub loop_refused: Counter,
    /// Connections closed because the global downstream connection limit was reached.
    pub downstream_global_cx_overflow: Counter,
}

impl ListenerStats {
    pub fn new(store: &Arc<Store>, stat_name: &str) -> Self {
        // Envoy 1.40's tag extractor turns the listener's scope, address-shaped
        // (`0.0.0.0_15001`) or a `stat_prefix`, into the `envoy_listener_address` label;
        // only the admin listener's stays in the name.
        let is_address = stat_name != "admin";
        let (prom_prefix, labels): (String, Vec<(&str, &str)>) = if is_address {
            (
                "envoy_listener_".into(),
                vec![("envoy_listener_address", stat_name)],
            )
        } else {
            (format!("envoy_listener_{stat_name}_"), vec![])
        };
        let c = |stat: &str| {
            store.counter(
                format!("listener.{stat_name}.{stat}"),
                &format!("{prom_prefix}{stat}"),
                &labels,
            )
        };
        let g = |stat: &str| {
            store.gauge(
                format!("listener.{stat_name}.{stat}"),
                &format!("{prom_prefix}{stat}"),
                &labels,
            )
        };
        ListenerStats {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: g("downstream_cx_active"),
            downstream_cx_destroy: c("downstream_cx_destroy"),
            downstream_pre_cx_active: g("downstream_pre_cx_active"),
            downstream_pre_cx_timeout: c("downstream_pre_cx_timeout"),
            no_filter_chain_match: c("no_filter_chain_match"),
            downstream_global_cx_overflow: c("downstream_global_cx_overflow"),
            loop_refused: store.counter(
                format!("pilotfish.listener.{stat_name}.loop_refused"),
                "pilotfish_listener_loop_refused",
                &[("envoy_listener_address", stat_name)],
            ),
        }
    }
}

#[derive(Debug)]
pub struct HttpStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_http1_total: Counter,
    pub downstream_cx_http2_total: Counter,
    pub downstream_rq_total: Counter,
    pub downstream_rq_active: Gauge,
    pub downstream_rq_http1_total: Counter,
    pub downstream_rq_http2_total: Counter,
    pub downstream_rq: CodeCounters,
    pub no_route: Counter,
    pub no_cluster: Counter,
    pub downstream_cx_upgrades_total: Counter,
    pub downstream_cx_upgrades_active: Gauge,
    pub downstream_rq_ws_on_non_ws_route: Counter,
    pub downstream_rq_idle_timeout: Counter,
    pub downstream_rq_max_duration_reached: Counter,
    pub downstream_rq_timeout: Counter,
    pub downstream_rq_header_timeout: Counter,
    pub downstream_cx_idle_timeout: Counter,
    pub downstream_cx_max_duration_reached: Counter,
    pub downstream_cx_max_requests_reached: Counter,
    /// `downstream_rq_time`: from a request's arrival to its response's end.
    pub downstream_rq_time: LazyHistogram,
}

impl HttpStats {
    pub fn new(store: &Arc<Store>, prefix: &str) -> Self {
        let label = [("envoy_http_conn_manager_prefix", prefix)];
        let c = |stat: &str| {
            store.counter(
                format!("http.{prefix}.{stat}"),
                &format!("envoy_http_{stat}"),
                &label,
            )
        };
        let g = |stat: &str| {
            store.gauge(
                format!("http.{prefix}.{stat}"),
                &format!("envoy_http_{stat}"),
                &label,
            )
        };
        HttpStats {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: g("downstream_cx_active"),
            downstream_cx_http1_total: c("downstream_cx_http1_total"),
            downstream_cx_http2_total: c("downstream_cx_http2_total"),
            downstream_rq_total: c("downstream_rq_total"),
            downstream_rq_active: g("downstream_rq_active"),
            downstream_rq_http1_total: c("downstream_rq_http1_total"),
            downstream_rq_http2_total: c("downstream_rq_http2_total"),
            // Envoy keeps per-class counters only for downstream requests.
            downstream_rq: CodeCounters::new(
                store,
                format!("http.{prefix}."),
                "downstream_rq",
                "envoy_http_downstream_rq".into(),
                vec![("envoy_http_conn_manager_prefix", prefix.to_owned())],
            ),
            no_route: c("no_route"),
            no_cluster: c("no_cluster"),
            downstream_cx_upgrades_total: c("downstream_cx_upgrades_total"),
            downstream_cx_upgrades_active: g("downstream_cx_upgrades_active"),
            downstream_rq_ws_on_non_ws_route: c("downstream_rq_ws_on_non_ws_route"),
            downstream_rq_idle_timeout: c("downstream_rq_idle_timeout"),
            downstream_rq_max_duration_reached: c("downstream_rq_max_duration_reached"),
            downstream_rq_timeout: c("downstream_rq_timeout"),
            downstream_rq_header_timeout: c("downstream_rq_header_timeout"),
            downstream_cx_idle_timeout: c("downstream_cx_idle_timeout"),
            downstream_cx_max_duration_reached: c("downstream_cx_max_duration_reached"),
            downstream_cx_max_requests_reached: c("downstream_cx_max_requests_reached"),
            downstream_rq_time: LazyHistogram::new(
                store,
                format!("http.{prefix}.downstream_rq_time"),
                "envoy_http_downstream_rq_time".into(),
                vec![("envoy_http_conn_manager_prefix", prefix.to_owned())],
            ),
        }
    }
}

#[derive(Debug)]
pub struct TcpStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_no_route: Counter,
    pub downstream_cx_rx_bytes_total: Counter,
    pub downstream_cx_tx_bytes_total: Counter,
    pub upstream_flush_total: Counter,
    pub idle_timeout: Counter,
    pub max_downstream_connection_duration: Counter,
}

impl TcpStats {
    pub fn new(store: &Arc<Store>, prefix: &str) -> Self {
        let label = [("envoy_tcp_prefix", prefix)];
        let c = |stat: &str| {
            store.counter(
                format!("tcp.{prefix}.{stat}"),
                &format!("envoy_tcp_{stat}"),
                &label,
            )
        };
        TcpStats {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_no_route: c("downstream_cx_no_route"),
            downstream_cx_rx_bytes_total: c("downstream_cx_rx_bytes_total"),
            downstream_cx_tx_bytes_total: c("downstream_cx_tx_bytes_total"),
            upstream_flush_total: c("upstream_flush_total"),
            idle_timeout: c("idle_timeout"),
            max_downstream_connection_duration: c("max_downstream_connection_duration"),
        }
    }
}

#[derive(Debug)]
pub struct ServerStats {
    /// 1 while the server is live (not draining), as Envoy's `server.live`.
    pub live: Gauge,
    /// Envoy's `server.state`: 0 live, 1 draining, 2 pre-initializing, 3 initializing.
    pub state: Gauge,
    pub concurrency: Gauge,
    pub uptime: Gauge,
    pub total_connections: Gauge,
    pub active_clusters: Gauge,
    pub total_listeners_active: Gauge,
    /// `listener_manager.workers_started`: 1 once the workers serve (pilot-agent's
    /// readiness probe waits for it).
    pub workers_started: Gauge,
    /// `server.memory_allocated` / `server.memory_heap_size`: what the allocator has
    /// handed out, and holds from the kernel (updated every few seconds).
    pub memory_allocated: Gauge,
    pub memory_heap_size: Gauge,
    /// `server.static_unknown_fields`: bootstrap fields dropped under
    /// `--allow-unknown-static-fields`.
    pub static_unknown_fields: Counter,
}

impl ServerStats {
    pub fn new(store: &Arc<Store>) -> Self {
        let g = |flat: &str, prom: &str| store.gauge(flat.into(), prom, &[]);
        ServerStats {
            live: g("server.live", "envoy_server_live"),
            state: g("server.state", "envoy_server_state"),
            concurrency: g("server.concurrency", "envoy_server_concurrency"),
            uptime: g("server.uptime", "envoy_server_uptime"),
            total_connections: g("server.total_connections", "envoy_server_total_connections"),
            active_clusters: g(
                "cluster_manager.active_clusters",
                "envoy_cluster_manager_active_clusters",
            ),
            total_listeners_active: g(
                "listener_manager.total_listeners_active",
                "envoy_listener_manager_total_listeners_active",
            ),
            workers_started: g(
                "listener_manager.workers_started",
                "envoy_listener_manager_workers_started",
            ),
            memory_allocated: g("server.memory_allocated", "envoy_server_memory_allocated"),
            memory_heap_size: g("server.memory_heap_size", "envoy_server_memory_heap_size"),
            static_unknown_fields: store.counter(
                "server.static_unknown_fields".into(),
                "envoy_server_static_unknown_fields",
                &[],
            ),
        }
    }
}
