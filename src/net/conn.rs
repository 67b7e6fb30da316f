//! A downstream connection once its filter chain is chosen: plain TCP, or TLS
//! terminated by the chain's transport socket (with the few bytes read to sniff the
//! HTTP/2 preface played back first).
use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::tls::PeerInfo;

#[derive(Debug)]
pub enum Conn {
    Plain(TcpStream),
    Tls {
        stream: Box<tokio_rustls::server::TlsStream<TcpStream>>,
        peer: Arc<PeerInfo>,
        /// Bytes already read (preface sniffing), served before the stream's.
        replay: Vec<u8>,
        /// Istio's metadata exchange: takes the peer's frame off the stream.
        inbox: Option<Box<crate::istio::exchange::Inbox>>,
    },
}

impl Conn {
    /// What TLS established, if the connection is TLS.
    pub fn tls(&self) -> Option<&Arc<PeerInfo>> {
        match self {
            Conn::Plain(_) => None,
            Conn::Tls { peer, .. } => Some(peer),
        }
    }

    /// Istio's TCP metadata exchange, when the connection negotiated its protocol:
    /// our frame is written now and the peer's taken off what is read.
    pub async fn exchange(&mut self, x: &crate::istio::exchange::Exchange) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let Conn::Tls { stream, inbox, .. } = self else {
            x.applies(None);
            return Ok(());
        };
        if !x.applies(stream.get_ref().1.alpn_protocol()) {
            return Ok(());
        }
        stream.write_all(x.our_frame()).await?;
        stream.flush().await?;
        *inbox = Some(Box::new(x.inbox()));
        Ok(())
    }

    /// What Istio's TCP metadata exchange learns of the peer; `None` when the
    /// connection does not exchange.
    pub fn peer_slot(&self) -> Option<crate::istio::peer::PeerSlot> {
        match self {
            Conn::Tls { inbox: Some(i), .. } => Some(i.peer_slot()),
            _ => None,
        }
    }

    pub fn set_nodelay(&self) {
        let s = match self {
            Conn::Plain(s) => s,
            Conn::Tls { stream, .. } => stream.get_ref().0,
        };
        let _ = s.set_nodelay(true);
    }

    /// Whether the client opens with `prefix` (the HTTP/2 preface): peeked on a plain
    /// connection, read and kept for replay on a TLS one. Stops at the first byte that
    /// differs or at end of stream.
    pub async fn starts_with(&mut self, prefix: &[u8]) -> io::Result<bool> {
        match self {
            Conn::Plain(s) => {
                let mut buf = vec![0u8; prefix.len()];
                for _ in 0..1000 {
                    let n = s.peek(&mut buf).await?;
                    if n == 0 || buf[..n] != prefix[..n] {
                        return Ok(false);
                    }
                    if n == prefix.len() {
                        return Ok(true);
                    }
                    // A partial preface: wait for the rest to arrive.
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                Ok(false)
            }
            Conn::Tls {
                stream,
                replay,
                inbox,
                ..
            } => {
                while replay.len() < prefix.len() {
                    let mut byte = [0u8; 64];
                    let want = (prefix.len() - replay.len()).min(byte.len());
                    // Past Istio's metadata exchange frame, when there is one.
                    let n = match inbox {
                        Some(i) => {
                            let mut rb = ReadBuf::new(&mut byte[..want]);
                            std::future::poll_fn(|cx| {
                                i.poll_read(Pin::new(stream.as_mut()), cx, &mut rb)
                            })
                            .await?;
                            rb.filled().len()
                        }
                        None => stream.read(&mut byte[..want]).await?,
                    };
                    if n == 0 {
                        return Ok(false);
                    }
                    replay.extend_from_slice(&byte[..n]);
                    if replay[..] != prefix[..replay.len()] {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls {
                stream,
                replay,
                inbox,
                ..
            } => {
                if !replay.is_empty() {
                    let n = replay.len().min(buf.remaining());
                    buf.put_slice(&replay[..n]);
                    replay.drain(..n);
                    return Poll::Ready(Ok(()));
                }
                match inbox {
                    Some(i) => i.poll_read(Pin::new(stream.as_mut()), cx, buf),
                    None => Pin::new(stream.as_mut()).poll_read(cx, buf),
                }
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls { stream, .. } => stream.is_write_vectored(),
        }
    }
}
