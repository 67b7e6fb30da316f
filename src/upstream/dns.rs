//! Name resolution for STRICT_DNS (every address of every endpoint is a host) and
//! LOGICAL_DNS (the first address only) clusters, refreshed every `dns_refresh_rate`.
use std::{io, net::SocketAddr, sync::Arc};

use crate::config::{Discovery, DnsFamily};

use super::{Cluster, cluster::Resolved};

/// Resolves `host:port`, keeping the addresses Envoy's `dns_lookup_family` keeps.
pub async fn resolve(host: &str, port: u16, family: DnsFamily) -> io::Result<Vec<SocketAddr>> {
    let all: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    Ok(filter_family(all, family))
}

fn filter_family(all: Vec<SocketAddr>, family: DnsFamily) -> Vec<SocketAddr> {
    let (v4, v6): (Vec<_>, Vec<_>) = all.into_iter().partition(|a| a.is_ipv4());
    match family {
        DnsFamily::V4Only => v4,
        DnsFamily::V6Only => v6,
        DnsFamily::Auto if !v6.is_empty() => v6,
        DnsFamily::Auto => v4,
        DnsFamily::V4Preferred if !v4.is_empty() => v4,
        DnsFamily::V4Preferred => v6,
        DnsFamily::All => v4.into_iter().chain(v6).collect(),
    }
}

/// Resolves every endpoint of a DNS cluster once and installs the hosts. A failed
/// lookup keeps the previous hosts, as Envoy does.
pub async fn refresh(cluster: &Cluster) {
    let cfg = &cluster.config;
    let mut hosts: Vec<Resolved> = Vec::new();
    for ep in &cfg.endpoints {
        let name: Option<Arc<str>> = ep.hostname.as_deref().map(Arc::from);
        match resolve(&ep.host, ep.port, cfg.dns_family).await {
            Ok(found) => hosts.extend(found.into_iter().map(|addr| Resolved {
                addr,
                hostname: name.clone(),
                attrs: ep.attrs.clone(),
            })),
            Err(e) => {
                tracing::warn!(cluster = %cfg.name, host = %ep.host, "DNS resolution failed: {e}");
                return;
            }
        }
    }
    if cfg.discovery == Discovery::LogicalDns {
        hosts.truncate(1);
    }
    hosts.dedup();
    cluster.set_hosts(&hosts);
}

/// Keeps a DNS cluster's hosts fresh until the cluster is dropped.
pub fn spawn_refresh(cluster: &Arc<Cluster>) {
    let weak = Arc::downgrade(cluster);
    let every = cluster.config.dns_refresh_rate;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(c) = weak.upgrade() else { return };
            refresh(&c).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Vec<SocketAddr> {
        vec!["[::1]:80".parse().unwrap(), "127.0.0.1:80".parse().unwrap()]
    }

    #[test]
    fn lookup_families_follow_envoy() {
        assert!(
            filter_family(addrs(), DnsFamily::Auto)
                .iter()
                .all(|a| a.is_ipv6())
        );
        assert!(
            filter_family(addrs(), DnsFamily::V4Preferred)
                .iter()
                .all(|a| a.is_ipv4())
        );
        assert!(
            filter_family(addrs(), DnsFamily::V4Only)
                .iter()
                .all(|a| a.is_ipv4())
        );
        assert_eq!(filter_family(addrs(), DnsFamily::All).len(), 2);
        let v4: Vec<SocketAddr> = vec!["127.0.0.1:80".parse().unwrap()];
        assert_eq!(filter_family(v4, DnsFamily::Auto).len(), 1);
    }

    #[tokio::test]
    async fn resolves_localhost() {
        let found = resolve("localhost", 8080, DnsFamily::All).await.unwrap();
        assert!(
            found
                .iter()
                .all(|a| a.port() == 8080 && a.ip().is_loopback()),
            "{found:?}"
        );
    }
}
