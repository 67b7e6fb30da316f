//! Learns an HTTP/2 upstream's SETTINGS_MAX_CONCURRENT_STREAMS by watching the frames
//! it sends as they pass (hyper's client does not expose the peer's settings), so the
//! pool can open another connection when one is full, as Envoy does. The bytes are
//! passed through untouched; only frame headers and SETTINGS payloads are looked at.
use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const FRAME_HEADER: usize = 9;
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;
const MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// The peer's stream limit as last announced (`u32::MAX` until it says).
#[derive(Debug, Clone)]
pub struct PeerLimit(Arc<Limit>);

#[derive(Debug)]
struct Limit {
    value: AtomicU32,
}

impl Default for PeerLimit {
    fn default() -> Self {
        PeerLimit(Arc::new(Limit {
            value: AtomicU32::new(u32::MAX),
        }))
    }
}

impl PeerLimit {
    pub fn get(&self) -> u32 {
        self.0.value.load(Ordering::Relaxed)
    }
}

/// Where the scan is in the peer's frame stream.
#[derive(Debug, Default)]
struct Scan {
    header: [u8; FRAME_HEADER],
    have: usize,
    /// Payload bytes of the current frame still to come.
    remaining: usize,
    /// The current frame is a SETTINGS frame (not an ACK): its payload is kept.
    settings: Option<Vec<u8>>,
}

impl Scan {
    fn feed(&mut self, mut bytes: &[u8], limit: &PeerLimit) {
        while !bytes.is_empty() {
            if self.remaining == 0 && self.settings.is_none() && self.have < FRAME_HEADER {
                let n = (FRAME_HEADER - self.have).min(bytes.len());
                self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have < FRAME_HEADER {
                    return;
                }
                let h = self.header;
                let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                self.remaining = len;
                self.have = 0;
                if h[3] == SETTINGS && h[4] & ACK == 0 {
                    self.settings = Some(Vec::with_capacity(len.min(1024)));
                }
                if len == 0 {
                    self.finish(limit);
                }
                continue;
            }
            let n = self.remaining.min(bytes.len());
            if let Some(buf) = &mut self.settings {
                // SETTINGS payloads are small; a huge one is not looked into.
                if buf.len() + n <= 64 * 1024 {
                    buf.extend_from_slice(&bytes[..n]);
                }
            }
            self.remaining -= n;
            bytes = &bytes[n..];
            if self.remaining == 0 {
                self.finish(limit);
            }
        }
    }

    fn finish(&mut self, limit: &PeerLimit) {
        if let Some(payload) = self.settings.take() {
            for entry in payload.chunks_exact(6) {
                let id = u16::from_be_bytes([entry[0], entry[1]]);
                if id == MAX_CONCURRENT_STREAMS {
                    let v = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
                    limit.0.value.store(v, Ordering::Relaxed);
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// An upstream stream whose incoming HTTP/2 frames are watched for SETTINGS.
    pub struct Watched<T> {
        #[pin]
        inner: T,
        scan: Scan,
        limit: PeerLimit,
    }
}

impl<T> Watched<T> {
    pub fn new(inner: T) -> (Self, PeerLimit) {
        let limit = PeerLimit::default();
        (
            Watched {
                inner,
                scan: Scan::default(),
                limit: limit.clone(),
            },
            limit,
        )
    }
}

impl<T: AsyncRead> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res {
            this.scan.feed(&buf.filled()[before..], this.limit);
        }
        res
    }
}

impl<T: AsyncWrite> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ty: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            ty,
            flags,
            0,
            0,
            0,
            0,
        ];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn reads_the_stream_limit_across_split_reads() {
        let mut stream = frame(0x0, 0, b"some data frame");
        // SETTINGS: header table size 4096, max concurrent streams 7.
        stream.extend(frame(SETTINGS, 0, &[0, 1, 0, 0, 16, 0, 0, 3, 0, 0, 0, 7]));
        stream.extend(frame(SETTINGS, ACK, &[]));
        let limit = PeerLimit::default();
        let mut scan = Scan::default();
        for chunk in stream.chunks(5) {
            scan.feed(chunk, &limit);
        }
        assert_eq!(limit.get(), 7);
        // A later SETTINGS frame changes it.
        scan.feed(&frame(SETTINGS, 0, &[0, 3, 0, 0, 0, 100]), &limit);
        assert_eq!(limit.get(), 100);
        // An ACK or another frame type with such bytes does not.
        scan.feed(&frame(0x8, 0, &[0, 3, 0, 0, 0, 1]), &limit);
        assert_eq!(limit.get(), 100);
    }
}
