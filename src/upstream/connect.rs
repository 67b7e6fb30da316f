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
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Timeout => f.write_str("connection timeout"),
            ConnectError::Failed(e) => write!(f, "remote connection failure: {e}"),
        }
    }
}

/// Connects to `addr` for `cluster`, counting `upstream_cx_total` and the failure
/// counters.
pub async fn connect(cluster: &Cluster, addr: SocketAddr) -> Result<TcpStream, ConnectError> {
    let stats = &cluster.stats;
    stats.upstream_cx_total.inc();
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
