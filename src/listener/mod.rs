//! Listeners: binding, the accept loop, original destination, loop refusal, and
//! handing each connection to its network filter.
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::net::{TcpListener, TcpStream};

use crate::{
    config::{ListenerConfig, NetworkFilter},
    drain,
    http::{Downstream, HttpConnectionManager, server},
    net::orig_dst,
    tcp::TcpProxy,
    telemetry::{
        access_log::Sinks,
        scopes::ListenerStats,
        stats::{GaugeGuard, Store},
    },
    upstream::ClusterManager,
};

#[derive(Debug)]
pub enum Filter {
    Tcp(TcpProxy),
    Http(Arc<HttpConnectionManager>),
}

#[derive(Debug)]
pub struct Listener {
    pub config: ListenerConfig,
    pub stats: ListenerStats,
    pub filter: Filter,
    /// Addresses pilotfish's capture listeners are bound to: a connection whose original
    /// destination is one of them was not redirected and would loop.
    own: Arc<Vec<SocketAddr>>,
}

impl Listener {
    pub fn new(
        config: ListenerConfig,
        clusters: &ClusterManager,
        store: &Arc<Store>,
        sinks: &Sinks,
        own: Arc<Vec<SocketAddr>>,
    ) -> Result<Self, String> {
        let in_listener = |e: String| format!("listener '{}': {e}", config.name);
        let filter = match &config.filter {
            NetworkFilter::TcpProxy(t) => {
                Filter::Tcp(TcpProxy::new(t, clusters, store, sinks).map_err(in_listener)?)
            }
            NetworkFilter::Http(h) => Filter::Http(Arc::new(
                HttpConnectionManager::new((**h).clone(), clusters, store, sinks)
                    .map_err(in_listener)?,
            )),
        };
        let stats = ListenerStats::new(store, &config.stat_name);
        Ok(Listener {
            config,
            stats,
            filter,
            own,
        })
    }

    /// Accepts until drain starts, then stops accepting (the socket closes) while the
    /// connections already accepted finish.
    pub async fn run(self: Arc<Self>, socket: TcpListener, mut drain: drain::Watch) {
        loop {
            let accepted = tokio::select! {
                a = socket.accept() => a,
                _ = drain.signaled() => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let me = self.clone();
                    let guard = drain.connection();
                    let watch = drain.clone();
                    tokio::spawn(async move {
                        me.connection(stream, peer, watch).await;
                        drop(guard);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = %self.config.name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn connection(&self, stream: TcpStream, peer: SocketAddr, drain: drain::Watch) {
        let Ok(local) = stream.local_addr() else {
            return;
        };
        let dst = if self.config.original_dst {
            match orig_dst::original_dst(&stream, local) {
                Ok(Some(d)) => d,
                Ok(None) => local,
                Err(e) => {
                    tracing::debug!("SO_ORIGINAL_DST failed: {e}");
                    local
                }
            }
        } else {
            local
        };
        if self.config.original_dst && is_own(&self.own, dst, local) {
            self.stats.loop_refused.inc();
            tracing::debug!(%peer, %dst, "refused: destination is pilotfish itself");
            return;
        }
        self.stats.downstream_cx_total.inc();
        let _active = GaugeGuard::new(&self.stats.downstream_cx_active);
        match &self.filter {
            Filter::Tcp(t) => t.handle(stream, peer, dst).await,
            Filter::Http(h) => {
                server::serve(stream, h.clone(), Downstream { peer, local: dst }, drain).await
            }
        }
        self.stats.downstream_cx_destroy.inc();
    }
}

/// True when `dst` is one of pilotfish's own listener addresses.
fn is_own(own: &[SocketAddr], dst: SocketAddr, local: SocketAddr) -> bool {
    own.iter().any(|a| {
        a.port() == dst.port()
            && (a.ip() == dst.ip()
                || (a.ip().is_unspecified() && (dst.ip() == local.ip() || is_loopback(dst.ip()))))
    })
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v| v.is_loopback()),
    }
}

/// Binds a listener socket with SO_REUSEADDR, as Envoy does.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(false).ok();
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    TcpListener::from_std(sock.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_addresses_are_recognized() {
        let own = vec![
            "0.0.0.0:15001".parse().unwrap(),
            "0.0.0.0:15006".parse().unwrap(),
        ];
        let local: SocketAddr = "10.0.0.5:15001".parse().unwrap();
        assert!(is_own(&own, "10.0.0.5:15001".parse().unwrap(), local));
        assert!(is_own(&own, "127.0.0.1:15006".parse().unwrap(), local));
        assert!(!is_own(&own, "10.0.0.9:15001".parse().unwrap(), local));
        assert!(!is_own(&own, "10.0.0.5:8080".parse().unwrap(), local));
    }
}
