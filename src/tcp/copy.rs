//! Byte copying between two sockets for tcp_proxy.
//!
//! Reads go into a per-thread 256 KiB scratch buffer and are written straight on, so a
//! bulk transfer moves large chunks per syscall while an idle connection holds no buffer
//! at all (a fixed per-connection buffer of that size would cost 512 KiB per proxied
//! connection). Only bytes the receiver cannot take yet are copied into a buffer of the
//! connection's own, and nothing more is read from that side until they are written: the
//! slow side's backpressure reaches the sender.
use std::{
    cell::RefCell,
    io::{self, ErrorKind},
    net::Shutdown,
    os::fd::AsFd,
    sync::atomic::{AtomicU64, Ordering},
};

use tokio::net::{TcpStream, UnixStream};

use crate::http::idle::Activity;

/// A stream socket `bidirectional` can copy from and to without buffering of its own:
/// TCP, or a Unix socket (a `pipe` endpoint).
pub trait Socket: AsFd {
    fn readable(&self) -> impl Future<Output = io::Result<()>>;
    fn writable(&self) -> impl Future<Output = io::Result<()>>;
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
}

macro_rules! socket {
    ($t:ty) => {
        impl Socket for $t {
            fn readable(&self) -> impl Future<Output = io::Result<()>> {
                <$t>::readable(self)
            }
            fn writable(&self) -> impl Future<Output = io::Result<()>> {
                <$t>::writable(self)
            }
            fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
                <$t>::try_read(self, buf)
            }
            fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
                <$t>::try_write(self, buf)
            }
        }
    };
}
socket!(TcpStream);
socket!(UnixStream);

const SCRATCH: usize = 256 << 10;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Copies both ways until both sides have closed their sending half, passing each
/// half-close on (`shutdown(SHUT_WR)`) as it comes. Returns the bytes copied `a → b` and
/// `b → a`; an error on either socket ends both directions.
pub async fn bidirectional(a: &impl Socket, b: &impl Socket) -> io::Result<(u64, u64)> {
    let moved = Moved::default();
    tracked(a, b, &moved).await?;
    Ok(moved.totals())
}

/// What a copy has moved so far, readable while it runs (or after it was cut short by
/// a timeout), and when it last moved anything.
#[derive(Debug, Default)]
pub struct Moved {
    a_to_b: AtomicU64,
    b_to_a: AtomicU64,
    pub activity: Option<Activity>,
}

impl Moved {
    pub fn new(activity: Option<Activity>) -> Self {
        Moved {
            activity,
            ..Default::default()
        }
    }

    /// Bytes copied `a → b` and `b → a`.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.a_to_b.load(Ordering::Relaxed),
            self.b_to_a.load(Ordering::Relaxed),
        )
    }
}

/// [`bidirectional`], counting into `moved` as it goes.
pub async fn tracked(a: &impl Socket, b: &impl Socket, moved: &Moved) -> io::Result<()> {
    tokio::try_join!(
        one_way(a, b, &moved.a_to_b, moved.activity.as_ref()),
        one_way(b, a, &moved.b_to_a, moved.activity.as_ref())
    )?;
    Ok(())
}

async fn one_way(
    src: &impl Socket,
    dst: &impl Socket,
    total: &AtomicU64,
    activity: Option<&Activity>,
) -> io::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let mut written = 0;
        while written < pending.len() {
            dst.writable().await?;
            match dst.try_write(&pending[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        // Give the memory back: most transfers never need it again.
        pending = Vec::new();

        src.readable().await?;
        let read = SCRATCH_BUF.with_borrow_mut(|buf| relay(src, dst, buf, &mut pending))?;
        match read {
            Some(0) => {}
            Some(n) => {
                total.fetch_add(n as u64, Ordering::Relaxed);
                if let Some(a) = activity {
                    a.touch();
                }
            }
            None => {
                match socket2::SockRef::from(dst).shutdown(Shutdown::Write) {
                    Err(e) if e.kind() != ErrorKind::NotConnected => return Err(e),
                    _ => {}
                }
                return Ok(());
            }
        }
    }
}

/// [`tracked`] for streams that are not plain sockets (TLS on either side): each
/// direction copies through a buffer of its own; a clean end of stream (or a peer that
/// closed without TLS `close_notify`) is passed on as a half-close.
pub async fn tracked_streams<A, B>(a: A, b: B, moved: &Moved) -> io::Result<()>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    tokio::try_join!(
        pipe(&mut ar, &mut bw, &moved.a_to_b, moved.activity.as_ref()),
        pipe(&mut br, &mut aw, &moved.b_to_a, moved.activity.as_ref())
    )?;
    Ok(())
}

async fn pipe(
    src: &mut (impl tokio::io::AsyncRead + Unpin),
    dst: &mut (impl tokio::io::AsyncWrite + Unpin),
    total: &AtomicU64,
    activity: Option<&Activity>,
) -> io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match src.read(&mut buf).await {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            match dst.shutdown().await {
                Err(e) if e.kind() != ErrorKind::NotConnected => return Err(e),
                _ => return Ok(()),
            }
        }
        dst.write_all(&buf[..n]).await?;
        total.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(a) = activity {
            a.touch();
        }
    }
}

/// One read from `src` and as much of it written to `dst` as it takes without waiting;
/// the rest goes to `pending`. `None` at end of stream.
fn relay(
    src: &impl Socket,
    dst: &impl Socket,
    buf: &mut [u8],
    pending: &mut Vec<u8>,
) -> io::Result<Option<usize>> {
    let n = match src.try_read(buf) {
        Ok(0) => return Ok(None),
        Ok(n) => n,
        Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Some(0)),
        Err(e) => return Err(e),
    };
    let mut written = 0;
    while written < n {
        match dst.try_write(&buf[written..n]) {
            Ok(w) => written += w,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    pending.extend_from_slice(&buf[written..n]);
    Ok(Some(n))
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (c, l.accept().await.unwrap().0)
    }

    /// A receiver that reads slowly forces the pending path; every byte still arrives in
    /// order and the half-close follows the last byte.
    #[tokio::test]
    async fn slow_receiver_gets_every_byte_then_eof() {
        let (mut client, proxy_down) = pair().await;
        let (proxy_up, mut server) = pair().await;
        let copier = tokio::spawn(async move { bidirectional(&proxy_down, &proxy_up).await });
        let data: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        let mut chunk = [0u8; 1000];
        loop {
            let n = server.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
            if got.len() % 7 == 0 {
                tokio::task::yield_now().await;
            }
        }
        assert!(got == data, "bytes differ ({} received)", got.len());
        server.write_all(b"bye").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"bye");
        assert_eq!(copier.await.unwrap().unwrap(), (8 << 20, 3));
    }
}
