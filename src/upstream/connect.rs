//! Opening upstream TCP connections with the cluster's connect timeout and stats.
use std::{io, net::SocketAddr, time::Duration};

use tokio::net::TcpStream;

use crate::telemetry::scopes::ClusterStats;

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

/// Connects to `addr`, counting `upstream_cx_total` and the failure counters.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    stats: &ClusterStats,
) -> Result<TcpStream, ConnectError> {
    stats.upstream_cx_total.inc();
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
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
