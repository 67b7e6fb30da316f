//! Opening upstream TCP connections with the cluster's connect timeout, source address
//! and socket mark, counting Envoy's connection stats.
use std::{io, net::SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

use super::Cluster;
use crate::config::UpstreamSocket;

#[derive(Debug)]
pub enum ConnectError {
    Timeout,
    Failed(io::Error),
    /// The address is one of pilotfish's capture listeners: the connection would loop.
    Loop,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Timeout => f.write_str("connection timeout"),
            ConnectError::Failed(e) => write!(f, "remote connection failure: {e}"),
            ConnectError::Loop => f.write_str(
                "remote connection failure: the destination is pilotfish's own capture \
                 listener (refused, it would loop)",
            ),
        }
    }
}

/// Connects to `addr` for `cluster`, counting `upstream_cx_total` and the failure
/// counters. An address of pilotfish's own capture listeners is refused before any
/// socket is made (counted in `pilotfish_listener_loop_refused` and as a connect
/// failure), whatever the cluster's type.
pub async fn connect(cluster: &Cluster, addr: SocketAddr) -> Result<TcpStream, ConnectError> {
    let stats = &cluster.stats;
    stats.upstream_cx_total.inc();
    if cluster.own.refuse_upstream(addr) {
        stats.upstream_cx_connect_fail.inc();
        return Err(ConnectError::Loop);
    }
    let attempt = async {
        let socket = socket(addr, &cluster.config.upstream_socket)?;
        socket.connect(addr).await
    };
    match tokio::time::timeout(cluster.config.connect_timeout, attempt).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => {
            stats.upstream_cx_connect_fail.inc();
            Err(ConnectError::Failed(e))
        }
        Err(_) => {
            stats.upstream_cx_connect_fail.inc();
            stats.upstream_cx_connect_timeout.inc();
            Err(ConnectError::Timeout)
        }
    }
}

/// A socket for `addr` with the source address bound and the mark set, as configured.
fn socket(addr: SocketAddr, opts: &UpstreamSocket) -> io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(mark) = opts.mark {
        // SO_MARK needs CAP_NET_ADMIN; without it the connection must not go out
        // unmarked (it could be captured again and loop), so the error stands.
        socket2::SockRef::from(&socket).set_mark(mark)?;
    }
    if let Some(src) = opts.source_for(addr.ip()) {
        // A source of the other family than the destination cannot be used; Envoy
        // fails such connections too.
        socket.bind(SocketAddr::new(src, 0))?;
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::{ClusterConfig, Discovery, DnsFamily, UpstreamProtocol},
        telemetry::stats::Store,
    };

    fn cluster(upstream_socket: UpstreamSocket) -> Cluster {
        let config = ClusterConfig {
            name: "c".into(),
            discovery: Discovery::OriginalDst,
            connect_timeout: std::time::Duration::from_secs(5),
            protocol: UpstreamProtocol::Http1,
            dns_refresh_rate: std::time::Duration::from_secs(5),
            dns_family: DnsFamily::Auto,
            endpoints: Vec::new(),
            original_dst_header: None,
            upstream_socket,
            eds: None,
        };
        Cluster::new(config, &Store::new(), &Default::default())
    }

    #[tokio::test]
    async fn binds_the_source_of_the_destination_family() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = cluster(UpstreamSocket {
            sources: vec!["::1".parse().unwrap(), "127.0.0.6".parse().unwrap()],
            mark: None,
        });
        let s = connect(&c, l.local_addr().unwrap()).await.unwrap();
        let (_, peer) = l.accept().await.unwrap();
        assert_eq!(peer.ip(), "127.0.0.6".parse::<std::net::IpAddr>().unwrap());
        assert_eq!(s.local_addr().unwrap().ip(), peer.ip());
        assert_eq!(c.stats.upstream_cx_total.get(), 1);
    }

    #[tokio::test]
    async fn sets_the_mark_or_fails_without_the_capability() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = cluster(UpstreamSocket {
            sources: Vec::new(),
            mark: Some(1337),
        });
        let res = connect(&c, l.local_addr().unwrap()).await;
        if nix::unistd::geteuid().is_root() {
            let s = res.unwrap();
            assert_eq!(socket2::SockRef::from(&s).mark().unwrap(), 1337);
        } else {
            // Never an unmarked connection that iptables could capture again.
            assert!(matches!(res, Err(ConnectError::Failed(_))));
            assert_eq!(c.stats.upstream_cx_connect_fail.get(), 1);
        }
    }
}
