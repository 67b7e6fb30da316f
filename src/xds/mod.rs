//! Dynamic configuration: the ADS client (state of the world and delta), file-based
//! LDS/CDS (`path_config_source`), and the state that turns their resources into the
//! running listeners, clusters, routes and endpoints: per-resource accept/reject (NACK)
//! with the last good version kept, warming, readiness after the first full config,
//! and what `/config_dump` shows.
pub mod ads;
pub mod file;
pub mod resource;
pub mod state;
pub mod stats;

pub use resource::Kind;
pub use state::{Handle, Update};

use std::{sync::Arc, time::Instant};

use crate::config::{ClusterConfig, DynamicConfig, ResourceSource};

/// Starts the dynamic sources of `dynamic` on the current (control) runtime: the ADS
/// stream, file watchers and the timer for warming and initial-fetch deadlines. Path
/// sources are read once before this returns, as Envoy reads them during startup.
pub fn start(
    dynamic: &DynamicConfig,
    clusters: &[ClusterConfig],
    rt: state::Runtime,
) -> Result<Arc<Handle>, String> {
    let static_listeners: Vec<String> = rt
        .listeners
        .listeners()
        .iter()
        .map(|l| l.config.name.clone())
        .collect();
    let static_clusters: Vec<String> = clusters.iter().map(|c| c.name.clone()).collect();
    let store = rt.ctx.store.clone();
    let handle = Handle::new(
        rt,
        dynamic.lds.clone(),
        dynamic.cds.clone(),
        &static_clusters,
        &static_listeners,
    );
    // After each burst of updates, the stats of what it removed go (once nothing in
    // flight holds them), and the descriptor pool (checks between pushes use the
    // allow-list schema alone), then the freed memory.
    tokio::spawn(crate::memory::release_after_bursts(
        handle.subscribe(),
        move || {
            crate::config::proto::release_pool();
            let released = store.release_unheld();
            if released > 0 {
                tracing::debug!("released {released} stats of removed resources");
            }
        },
    ));
    for (kind, source) in [
        (Kind::Cluster, &dynamic.cds),
        (Kind::Listener, &dynamic.lds),
    ] {
        if let Some(ResourceSource::Path(p)) = source {
            file::load(p, kind, &handle);
            tokio::spawn(file::watch(p.clone(), kind, handle.clone()));
        }
    }
    if let Some(ads) = &dynamic.ads {
        let cluster = clusters
            .iter()
            .find(|c| c.name == ads.cluster)
            .ok_or_else(|| format!("xDS cluster '{}' is not a static cluster", ads.cluster))?;
        let target = match cluster.endpoints.first() {
            Some(e) if e.pipe.is_some() => ads::Target::Unix(e.pipe.clone().unwrap_or_default()),
            Some(e) => ads::Target::Tcp(std::net::SocketAddr::new(
                e.host.parse().map_err(|_| {
                    format!("xDS cluster '{}': '{}' is not an IP", ads.cluster, e.host)
                })?,
                e.port,
            )),
            None => return Err(format!("xDS cluster '{}' has no endpoint", ads.cluster)),
        };
        tokio::spawn(ads::run(
            ads.clone(),
            target,
            cluster.connect_timeout,
            node(&dynamic.node),
            handle.clone(),
        ));
    }
    let timer = handle.clone();
    tokio::spawn(async move {
        let mut changed = timer.subscribe();
        loop {
            match timer.next_deadline() {
                Some(d) => tokio::select! {
                    _ = tokio::time::sleep_until(d.into()) => timer.tick(Instant::now()),
                    r = changed.changed() => if r.is_err() { return },
                },
                None => {
                    if changed.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(handle)
}

/// The node as sent to the control plane: the bootstrap's, with the agent's name and
/// version and the client features pilotfish supports filled in as Envoy does.
pub fn node(
    bootstrap: &envoy_types::pb::envoy::config::core::v3::Node,
) -> envoy_types::pb::envoy::config::core::v3::Node {
    use envoy_types::pb::envoy::{
        config::core::v3::{BuildVersion, node::UserAgentVersionType},
        r#type::v3::SemanticVersion,
    };
    let mut n = bootstrap.clone();
    if n.user_agent_name.is_empty() {
        n.user_agent_name = "pilotfish".into();
    }
    if n.user_agent_version_type.is_none() {
        let mut v = env!("CARGO_PKG_VERSION")
            .split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0));
        n.user_agent_version_type =
            Some(UserAgentVersionType::UserAgentBuildVersion(BuildVersion {
                version: Some(SemanticVersion {
                    major_number: v.next().unwrap_or(0),
                    minor_number: v.next().unwrap_or(0),
                    patch: v.next().unwrap_or(0),
                }),
                metadata: None,
            }));
    }
    for f in ["envoy.lb.does_not_support_overprovisioning"] {
        if !n.client_features.iter().any(|c| c == f) {
            n.client_features.push(f.into());
        }
    }
    n
}
