//! The set of clusters, by name. Requests and connections look a cluster up by name in
//! the current set (one atomic load), so a CDS update takes effect on the next request;
//! a cluster whose definition did not change keeps its object, hosts and pools.
use std::{collections::HashMap, sync::Arc, time::Duration};

use arc_swap::ArcSwap;

use super::{Cluster, dns};
use crate::{
    config::{ClusterConfig, Discovery},
    net::own::OwnAddresses,
    telemetry::stats::Store,
};

pub type ClusterMap = HashMap<String, Arc<Cluster>>;

#[derive(Debug, Default)]
pub struct ClusterManager {
    clusters: ArcSwap<ClusterMap>,
    /// pilotfish's capture addresses, which no upstream connection may reach.
    own: Arc<OwnAddresses>,
    /// The TLS secrets clusters and listeners use.
    secrets: Arc<crate::tls::SecretStore>,
}

impl ClusterManager {
    pub fn new(configs: &[ClusterConfig], store: &Arc<Store>) -> Self {
        Self::with_secrets(configs, store, Default::default())
    }

    /// A manager whose clusters take their TLS secrets from `secrets`.
    pub fn with_secrets(
        configs: &[ClusterConfig],
        store: &Arc<Store>,
        secrets: Arc<crate::tls::SecretStore>,
    ) -> Self {
        let m = ClusterManager {
            secrets,
            ..Default::default()
        };
        m.apply(configs.to_vec(), &[], store);
        m
    }

    /// The secret store (listeners bind their TLS contexts to it too).
    pub fn secrets(&self) -> &Arc<crate::tls::SecretStore> {
        &self.secrets
    }

    /// The capture addresses every cluster refuses to connect to; the listener manager
    /// keeps them current.
    pub fn own_addresses(&self) -> &Arc<OwnAddresses> {
        &self.own
    }

    /// The cluster named `name` in the current set.
    pub fn get(&self, name: &str) -> Option<Arc<Cluster>> {
        self.clusters.load().get(name).cloned()
    }

    /// The current set (a consistent view for one request or one admin page).
    pub fn snapshot(&self) -> Arc<ClusterMap> {
        self.clusters.load_full()
    }

    pub fn len(&self) -> usize {
        self.clusters.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.clusters.load().is_empty()
    }

    /// Adds or replaces `upserts` and removes `removes`, published in one swap. A
    /// cluster whose config equals the running one's is kept as it is. Returns the
    /// clusters built (new or changed; their background work is not started yet).
    pub fn apply(
        &self,
        upserts: Vec<ClusterConfig>,
        removes: &[String],
        store: &Arc<Store>,
    ) -> Vec<Arc<Cluster>> {
        let mut next: ClusterMap = (*self.clusters.load_full()).clone();
        for name in removes {
            next.remove(name);
        }
        let mut built = Vec::new();
        for c in upserts {
            if next.get(&c.name).is_some_and(|running| running.config == c) {
                continue;
            }
            let mut cluster = Cluster::new(c, store, &self.own);
            cluster.bind_tls(&self.secrets, store);
            let cluster = Arc::new(cluster);
            built.push(cluster.clone());
            next.insert(cluster.name().to_owned(), cluster);
        }
        self.clusters.store(Arc::new(next));
        built
    }

    /// Background work of every cluster: see [`start`].
    pub async fn start_background(&self) {
        let all: Vec<_> = self.snapshot().values().cloned().collect();
        start(&all).await;
    }
}

/// First resolution of the DNS clusters among `clusters` (bounded, as Envoy's cluster
/// init is), then their periodic refresh, and ORIGINAL_DST host cleanup. The tasks hold
/// the clusters weakly and end when a cluster is removed. Runs on the control runtime.
pub async fn start(clusters: &[Arc<Cluster>]) {
    let dns: Vec<_> = clusters
        .iter()
        .filter(|c| {
            matches!(
                c.config.discovery,
                Discovery::StrictDns | Discovery::LogicalDns
            )
        })
        .cloned()
        .collect();
    let first = futures_util::future::join_all(dns.iter().map(|c| dns::refresh(c)));
    let _ = tokio::time::timeout(Duration::from_secs(15), first).await;
    for c in &dns {
        dns::spawn_refresh(c);
    }
    for c in clusters {
        super::outlier::spawn(c);
    }
    // Active health checks: the first round completes before the clusters count as
    // initialized, as in Envoy.
    futures_util::future::join_all(clusters.iter().map(super::health_check::start)).await;
    for c in clusters
        .iter()
        .filter(|c| c.config.discovery == Discovery::OriginalDst)
    {
        let weak = Arc::downgrade(c);
        let every = c.config.cleanup_interval;
        tokio::spawn(async move {
            loop {
                // tokio caps a sleep past its horizon (istiod's ~292 years) at ~30 years.
                tokio::time::sleep(every).await;
                let Some(c) = weak.upgrade() else { return };
                c.cleanup_original_dst();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DnsFamily, EndpointConfig, UpstreamProtocol};

    fn config(name: &str, port: u16) -> ClusterConfig {
        ClusterConfig {
            name: name.into(),
            discovery: Discovery::Static,
            connect_timeout: Duration::from_secs(1),
            protocol: UpstreamProtocol::Http1,
            dns_refresh_rate: Duration::from_secs(5),
            dns_family: DnsFamily::Auto,
            endpoints: vec![EndpointConfig {
                host: "127.0.0.1".into(),
                port,
                ..Default::default()
            }],
            original_dst_header: None,
            upstream_socket: Default::default(),
            eds: None,
            ..Default::default()
        }
    }

    #[test]
    fn unchanged_clusters_keep_their_object_changed_ones_are_rebuilt() {
        let store = Store::new();
        let m = ClusterManager::new(&[config("a", 1), config("b", 2)], &store);
        let a = m.get("a").unwrap();
        let b = m.get("b").unwrap();
        let built = m.apply(vec![config("a", 1), config("b", 3)], &[], &store);
        assert_eq!(built.len(), 1);
        assert!(Arc::ptr_eq(&a, &m.get("a").unwrap()));
        assert!(!Arc::ptr_eq(&b, &m.get("b").unwrap()));
        m.apply(vec![], &["a".into()], &store);
        assert!(m.get("a").is_none());
        assert_eq!(m.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn original_dst_hosts_are_dropped_at_the_cleanup_interval() {
        let store = Store::new();
        let c = ClusterConfig {
            discovery: Discovery::OriginalDst,
            endpoints: vec![],
            cleanup_interval: Duration::from_secs(60),
            ..config("passthrough", 0)
        };
        let m = ClusterManager::new(&[c], &store);
        let cluster = m.get("passthrough").unwrap();
        start(std::slice::from_ref(&cluster)).await;
        let dst = "10.0.0.9:80".parse().unwrap();
        let host = Arc::downgrade(&cluster.pick(Some(dst)).unwrap());
        // Envoy's 5s default would have dropped it by now; this cluster asks for 60s.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(host.upgrade().is_some());
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(host.upgrade().is_none());
    }
}
