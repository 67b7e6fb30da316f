//! The set of clusters, by name, built from config.
use std::{collections::HashMap, sync::Arc, time::Duration};

use super::{Cluster, dns};
use crate::{
    config::{ClusterConfig, Discovery},
    telemetry::stats::Store,
};

#[derive(Debug, Default)]
pub struct ClusterManager {
    clusters: HashMap<String, Arc<Cluster>>,
}

impl ClusterManager {
    pub fn new(configs: &[ClusterConfig], store: &Arc<Store>) -> Self {
        let clusters = configs
            .iter()
            .map(|c| (c.name.clone(), Arc::new(Cluster::new(c.clone(), store))))
            .collect();
        ClusterManager { clusters }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        self.clusters.values()
    }

    pub fn len(&self) -> usize {
        self.clusters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
    }

    /// First resolution of every DNS cluster (bounded, as Envoy's cluster init is),
    /// then periodic refresh and ORIGINAL_DST host cleanup. Runs on the control runtime.
    pub async fn start_background(&self) {
        let dns: Vec<_> = self
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
        for c in self
            .iter()
            .filter(|c| c.config.discovery == Discovery::OriginalDst)
        {
            let weak = Arc::downgrade(c);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    let Some(c) = weak.upgrade() else { return };
                    c.cleanup_original_dst();
                }
            });
        }
    }
}
