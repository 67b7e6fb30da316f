//! The connection manager's `request_headers_timeout` on HTTP/1.1: from the first byte
//! of a request's headers, the whole header block must arrive within the timeout, or
//! the client gets Envoy's 408 `request header timeout` and the connection closes.
//!
//! hyper's own header timeout also runs while a keep-alive connection sits idle and
//! closes without answering, so the clock lives in the connection's IO instead: it
//! starts when bytes arrive while no request is in progress, and stops when the
//! request reaches the connection manager (its headers are whole).
use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Sleep,
};

/// Whether the connection waits for a request's headers (no request in progress).
#[derive(Debug)]
pub struct Between(AtomicBool);

impl Between {
    pub fn new() -> Arc<Self> {
        Arc::new(Between(AtomicBool::new(true)))
    }

    /// A request's headers are whole: the clock stops until its response ends.
    pub fn request_started(&self) {
        self.0.store(false, Ordering::Relaxed);
    }

    /// Kept by a response until it ends; then the connection waits for the next request.
    pub fn response_guard(self: &Arc<Self>) -> ResponseEnd {
        ResponseEnd(self.clone())
    }
}

/// Marks the connection as between requests when dropped (the response ended).
pub struct ResponseEnd(Arc<Between>);

impl Drop for ResponseEnd {
    fn drop(&mut self) {
        self.0.0.store(true, Ordering::Relaxed);
    }
}

impl super::body::Observer for ResponseEnd {}

/// The reply to send when the clock runs out (made then: it counts and logs).
pub type OnTimeout = Box<dyn FnOnce() -> Bytes + Send>;

/// A connection's IO with the header clock in its reads.
pub struct HeaderClock<IO> {
    io: IO,
    /// `None`: no timeout configured, reads pass straight through.
    between: Option<Arc<Between>>,
    timeout: Duration,
    clock: Option<Pin<Box<Sleep>>>,
    on_timeout: Option<OnTimeout>,
    /// The 408 being written, and how much of it has gone.
    reply: Option<(Bytes, usize)>,
}

impl<IO> HeaderClock<IO> {
    pub fn new(io: IO, between: Arc<Between>, timeout: Duration, on_timeout: OnTimeout) -> Self {
        HeaderClock {
            io,
            between: Some(between),
            timeout,
            clock: None,
            on_timeout: Some(on_timeout),
            reply: None,
        }
    }
}

impl<IO> HeaderClock<IO> {
    /// The IO without a clock.
    pub fn plain(io: IO) -> Self {
        HeaderClock {
            io,
            between: None,
            timeout: Duration::ZERO,
            clock: None,
            on_timeout: None,
            reply: None,
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeaderClock<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(between) = &this.between else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        if this.reply.is_none() {
            let filled = buf.filled().len();
            match Pin::new(&mut this.io).poll_read(cx, buf) {
                Poll::Ready(r) => {
                    let waiting = between.0.load(Ordering::Relaxed);
                    if !waiting {
                        this.clock = None;
                    } else if buf.filled().len() > filled && this.clock.is_none() {
                        this.clock = Some(Box::pin(tokio::time::sleep(this.timeout)));
                    }
                    return Poll::Ready(r);
                }
                Poll::Pending => {
                    if !between.0.load(Ordering::Relaxed) {
                        this.clock = None;
                    }
                    let expired = this
                        .clock
                        .as_mut()
                        .is_some_and(|c| c.as_mut().poll(cx).is_ready());
                    if !expired {
                        return Poll::Pending;
                    }
                    this.clock = None;
                    if let Some(make) = this.on_timeout.take() {
                        this.reply = Some((make(), 0));
                    }
                }
            }
        }
        // Out of time: the 408 goes out, then the connection reads as ended.
        let Some((reply, sent)) = this.reply.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        while *sent < reply.len() {
            match ready!(Pin::new(&mut this.io).poll_write(cx, &reply[*sent..])) {
                Ok(0) | Err(_) => break,
                Ok(n) => *sent += n,
            }
        }
        *sent = reply.len();
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for HeaderClock<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Envoy's 408 for a request whose headers did not arrive in time.
pub fn reply_bytes(server: &str) -> Bytes {
    const BODY: &str = "request header timeout";
    Bytes::from(format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\
         date: {}\r\nserver: {server}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len(),
        httpdate::fmt_http_date(std::time::SystemTime::now()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn clocked(
        io: tokio::io::DuplexStream,
    ) -> (HeaderClock<tokio::io::DuplexStream>, Arc<Between>) {
        let between = Between::new();
        let c = HeaderClock::new(
            io,
            between.clone(),
            Duration::from_secs(1),
            Box::new(|| reply_bytes("envoy")),
        );
        (c, between)
    }

    #[tokio::test(start_paused = true)]
    async fn partial_headers_get_408_then_eof() {
        let (client, server) = tokio::io::duplex(4096);
        let (mut conn, _) = clocked(server);
        let (mut rd, mut wr) = tokio::io::split(client);
        wr.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).await.unwrap();
        assert_eq!(n, 25);
        // Nothing more comes: after the timeout the reply is written and reads end.
        assert_eq!(conn.read(&mut buf).await.unwrap(), 0);
        let mut got = vec![0u8; 512];
        let n = rd.read(&mut got).await.unwrap();
        let text = String::from_utf8_lossy(&got[..n]);
        assert!(
            text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{text}"
        );
        assert!(text.ends_with("connection: close\r\n\r\nrequest header timeout"));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_or_busy_connections_are_not_timed() {
        let (client, server) = tokio::io::duplex(4096);
        let (mut conn, between) = clocked(server);
        let (_rd, mut wr) = tokio::io::split(client);
        let mut buf = [0u8; 64];
        // Idle: no bytes, no clock.
        let idle = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
        assert!(idle.is_err());
        // A request whose headers are whole: the clock stops while it runs.
        wr.write_all(b"POST / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 19);
        between.request_started();
        let busy = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
        assert!(busy.is_err(), "a slow body is not a header timeout");
        // Once the response ended, the next request's first bytes start it again.
        drop(between.response_guard());
        wr.write_all(b"GET").await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 3);
        assert_eq!(conn.read(&mut buf).await.unwrap(), 0);
    }
}
