//! Opening upstream connections (TCP, or a Unix socket for a `pipe` endpoint) with the
//! cluster's connect timeout, source address, socket mark and keepalive, counting
//! Envoy's connection stats.
use std::sync::atomic::Ordering;
use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpSocket, TcpStream, UnixStream},
};

use super::{Cluster, Host};
use crate::config::UpstreamSocket;

/// An upstream connection.
#[derive(Debug)]
pub enum Upstream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// TLS over TCP (the host's transport socket).
    Tls(Box<crate::tls::ClientStream>),
}

impl Upstream {
    /// The local address, for access logs (none for a Unix socket).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Upstream::Tcp(s) => s.local_addr().ok(),
            Upstream::Unix(_) => None,
            Upstream::Tls(s) => s.get_ref().0.local_addr().ok(),
        }
    }

    /// The ALPN protocol TLS negotiated.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            Upstream::Tls(s) => s.get_ref().1.alpn_protocol(),
            _ => None,
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Upstream::Tcp($s) => {
                let $s = Pin::new($s);
                $e
            }
            Upstream::Unix($s) => {
                let $s = Pin::new($s);
                $e
            }
            Upstream::Tls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Upstream::Tcp(s) => s.is_write_vectored(),
            Upstream::Unix(s) => s.is_write_vectored(),
            Upstream::Tls(s) => s.is_write_vectored(),
        }
    }
}

impl ConnectError {
    /// Envoy's transport failure reason for this failure, if it names one.
    pub fn transport_failure_reason(&self) -> Option<String> {
        match self {
            ConnectError::Failed(e) => {
                let text = e.to_string();
                // io::Error adds " (os error N)"; Envoy prints the message alone.
                let msg = text.split(" (os error").next().unwrap_or(&text);
                Some(format!("delayed connect error: {msg}"))
            }
            ConnectError::Tls(reason) => Some(reason.clone()),
            ConnectError::Timeout | ConnectError::Loop => None,
        }
    }
}

#[derive(Debug)]
pub enum ConnectError {
    Timeout,
    Failed(io::Error),
    /// The address is one of pilotfish's capture listeners: the connection would loop.
    Loop,
    /// The TLS handshake failed (or its secrets are missing), with the reason as
    /// Envoy's `%UPSTREAM_TRANSPORT_FAILURE_REASON%` words it.
    Tls(String),
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
            ConnectError::Tls(e) => f.write_str(e),
        }
    }
}

/// Connects to `host` for `cluster`, counting `upstream_cx_total` and the failure
/// counters. An address of pilotfish's own capture listeners is refused before any
/// socket is made (counted in `pilotfish_listener_loop_refused` and as a connect
/// failure), whatever the cluster's type.
pub async fn connect(cluster: &Cluster, host: &Host) -> Result<Upstream, ConnectError> {
    connect_alpn(cluster, host, None).await
}

/// [`connect`], a TLS connection offering `alpn` (an `istio.alpn` override) instead of
/// its context's ALPN list.
pub async fn connect_alpn(
    cluster: &Cluster,
    host: &Host,
    alpn: Option<&crate::istio::alpn::Override>,
) -> Result<Upstream, ConnectError> {
    let stats = &cluster.stats;
    stats.upstream_cx_total.inc();
    host.counters.cx_total.fetch_add(1, Ordering::Relaxed);
    let result = attempt(cluster, host, alpn).await;
    if let Err(e) = &result {
        stats.upstream_cx_connect_fail.inc();
        if matches!(e, ConnectError::Timeout) {
            stats.upstream_cx_connect_timeout.inc();
        }
        host.counters
            .cx_connect_fail
            .fetch_add(1, Ordering::Relaxed);
    }
    result
}

/// One connection attempt, bounded by the cluster's connect timeout. As Envoy's, that
/// timeout covers the TLS handshake: a connection counts as connected once its
/// transport socket is.
async fn attempt(
    cluster: &Cluster,
    host: &Host,
    alpn: Option<&crate::istio::alpn::Override>,
) -> Result<Upstream, ConnectError> {
    let addr = host.addr;
    if host.pipe.is_none() && cluster.own.refuse_upstream(addr) {
        return Err(ConnectError::Loop);
    }
    let tls = cluster
        .transports
        .for_host(&cluster.config.transport, host)
        .map_err(ConnectError::Tls)?;
    let connecting = async {
        if let Some(path) = &host.pipe {
            if tls.is_some() {
                return Err(ConnectError::Tls(
                    "TLS to a pipe endpoint is not supported".into(),
                ));
            }
            return UnixStream::connect(path)
                .await
                .map(Upstream::Unix)
                .map_err(ConnectError::Failed);
        }
        let started = tokio::time::Instant::now();
        let s = tcp(addr, &cluster.config.upstream_socket)
            .await
            .map_err(ConnectError::Failed)?;
        cluster
            .stats
            .upstream_cx_connect_ms
            .record(started.elapsed());
        match tls {
            None => {
                if let Some(x) = &cluster.exchange {
                    x.applies(None);
                }
                Ok(Upstream::Tcp(s))
            }
            Some(t) => match t.connect(s, addr.ip(), alpn).await {
                Ok(mut s) => {
                    if let Some(x) = &cluster.exchange {
                        s.exchange(x).await.map_err(ConnectError::Failed)?;
                    }
                    Ok(Upstream::Tls(Box::new(s)))
                }
                Err(e) => Err(ConnectError::Tls(crate::tls::context::failure_reason(&e))),
            },
        }
    };
    tokio::time::timeout(cluster.config.connect_timeout, connecting)
        .await
        .unwrap_or(Err(ConnectError::Timeout))
}

/// A TCP connection to `addr` with the cluster's socket options.
async fn tcp(addr: SocketAddr, opts: &UpstreamSocket) -> io::Result<TcpStream> {
    let s = socket(addr, opts)?.connect(addr).await?;
    let _ = s.set_nodelay(true);
    if let Some(k) = &opts.keepalive {
        keepalive(&s, k)?;
    }
    Ok(s)
}

/// `upstream_connection_options.tcp_keepalive`: SO_KEEPALIVE, and the probe settings
/// given (the kernel's defaults for the rest).
fn keepalive(s: &TcpStream, k: &crate::config::Keepalive) -> io::Result<()> {
    let mut ka = socket2::TcpKeepalive::new();
    if let Some(t) = k.time {
        ka = ka.with_time(std::time::Duration::from_secs(t.into()));
    }
    if let Some(i) = k.interval {
        ka = ka.with_interval(std::time::Duration::from_secs(i.into()));
    }
    if let Some(p) = k.probes {
        ka = ka.with_retries(p);
    }
    socket2::SockRef::from(s).set_tcp_keepalive(&ka)
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
            ..Default::default()
        };
        Cluster::new(config, &Store::new(), &Default::default())
    }

    #[tokio::test]
    async fn binds_the_source_of_the_destination_family() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = cluster(UpstreamSocket {
            sources: vec!["::1".parse().unwrap(), "127.0.0.6".parse().unwrap()],
            mark: None,
            keepalive: None,
        });
        let s = connect(&c, &Host::new(l.local_addr().unwrap()))
            .await
            .unwrap();
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
            keepalive: None,
        });
        let res = connect(&c, &Host::new(l.local_addr().unwrap())).await;
        if nix::unistd::geteuid().is_root() {
            let Upstream::Tcp(s) = res.unwrap() else {
                panic!("a TCP connection")
            };
            assert_eq!(socket2::SockRef::from(&s).mark().unwrap(), 1337);
        } else {
            // Never an unmarked connection that iptables could capture again.
            assert!(matches!(res, Err(ConnectError::Failed(_))));
            assert_eq!(c.stats.upstream_cx_connect_fail.get(), 1);
        }
    }

    #[tokio::test]
    async fn keepalive_is_set_as_configured() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = cluster(UpstreamSocket {
            keepalive: Some(crate::config::Keepalive {
                probes: Some(4),
                time: Some(300),
                interval: Some(7),
            }),
            ..Default::default()
        });
        let Upstream::Tcp(s) = connect(&c, &Host::new(l.local_addr().unwrap()))
            .await
            .unwrap()
        else {
            panic!("a TCP connection")
        };
        let sock = socket2::SockRef::from(&s);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap().as_secs(), 300);
        assert_eq!(sock.tcp_keepalive_interval().unwrap().as_secs(), 7);
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 4);
    }

    #[tokio::test]
    async fn a_pipe_host_connects_over_its_unix_socket() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        let c = cluster(UpstreamSocket::default());
        let mut up = connect(&c, &Host::pipe(path.clone())).await.unwrap();
        let (mut server, _) = l.accept().await.unwrap();
        up.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        assert!(up.local_addr().is_none());
        // A missing socket is a connect failure like any other.
        drop(l);
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            connect(&c, &Host::pipe(path)).await,
            Err(ConnectError::Failed(_))
        ));
        assert_eq!(c.stats.upstream_cx_connect_fail.get(), 1);
    }
}
