//! tcp_proxy: connect to a host of the cluster and copy bytes both ways, passing
//! half-closes through, with Envoy's byte and connection stats.
use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpStream;

use crate::{
    config::TcpProxyConfig,
    telemetry::{scopes::TcpStats, stats::GaugeGuard, stats::Store},
    upstream::{Cluster, ClusterManager, connect::connect},
};

#[derive(Debug)]
pub struct TcpProxy {
    pub stats: TcpStats,
    /// `None` when the configured cluster does not exist (Envoy closes such connections).
    cluster: Option<Arc<Cluster>>,
}

impl TcpProxy {
    pub fn new(config: &TcpProxyConfig, clusters: &ClusterManager, store: &Arc<Store>) -> Self {
        TcpProxy {
            stats: TcpStats::new(store, &config.stat_prefix),
            cluster: clusters.get(&config.cluster).cloned(),
        }
    }

    /// Proxies one downstream connection whose (original) destination is `dst`.
    pub async fn handle(&self, mut down: TcpStream, dst: SocketAddr) {
        self.stats.downstream_cx_total.inc();
        let Some(cluster) = &self.cluster else {
            self.stats.downstream_cx_no_route.inc();
            return;
        };
        let Some(host) = cluster.pick(Some(dst)) else {
            cluster.stats.upstream_cx_none_healthy.inc();
            return;
        };
        let cs = &cluster.stats;
        let Ok(mut up) = connect(host.addr, cluster.config.connect_timeout, cs).await else {
            return;
        };
        let _active = GaugeGuard::new(&cs.upstream_cx_active);
        let _ = down.set_nodelay(true);
        if let Ok((sent, received)) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
            self.stats.downstream_cx_rx_bytes_total.add(sent);
            self.stats.downstream_cx_tx_bytes_total.add(received);
            cs.upstream_cx_tx_bytes_total.add(sent);
            cs.upstream_cx_rx_bytes_total.add(received);
        }
    }
}
