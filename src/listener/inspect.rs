//! The TLS and HTTP inspectors run together over peeked bytes: nothing is consumed, and
//! the wait ends as soon as every inspector has decided (or the peer closed, or
//! `listener_filters_timeout` passed).
use std::{io, os::fd::AsRawFd, time::Duration};

use nix::sys::socket::{MsgFlags, recv};
use tokio::{io::Interest, net::TcpStream};

use super::{
    http_detect::{self, Detected},
    tls_hello::{self, Hello},
};

/// What the inspectors found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// `tls` when a ClientHello was seen, else Envoy's default `raw_buffer`.
    pub transport: &'static str,
    pub server_name: Option<String>,
    /// From TLS ALPN, or the HTTP inspector's `http/1.1`, `http/1.0`, `h2c`.
    pub application_protocols: Vec<String>,
}

impl Default for Facts {
    fn default() -> Self {
        Facts {
            transport: "raw_buffer",
            server_name: None,
            application_protocols: Vec::new(),
        }
    }
}

/// The most a ClientHello may take (Envoy's `max_client_hello_size` default).
const MAX_PEEK: usize = 64 * 1024;

/// Runs the enabled inspectors. `Err(TimedOut)` when the timeout passed first; the facts
/// are then the defaults, as in Envoy (the inspectors did not finish).
pub async fn inspect(
    stream: &TcpStream,
    tls: bool,
    http: bool,
    timeout: Option<Duration>,
) -> io::Result<Facts> {
    let work = run(stream, tls, http);
    match timeout {
        Some(t) => tokio::time::timeout(t, work)
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
        None => work.await,
    }
}

async fn run(stream: &TcpStream, mut tls: bool, mut http: bool) -> io::Result<Facts> {
    let mut facts = Facts::default();
    let mut buf = vec![0u8; 2048];
    let mut seen = 0;
    while tls || http {
        let (n, closed) = peek_more(stream, &mut buf, seen).await?;
        let data = &buf[..n];
        if tls {
            match tls_hello::parse(data) {
                Hello::NeedMore => {}
                Hello::NotTls => tls = false,
                Hello::Tls { server_name, alpn } => {
                    tls = false;
                    // The HTTP inspector leaves TLS connections alone.
                    http = false;
                    facts.transport = "tls";
                    facts.server_name = server_name;
                    facts.application_protocols = alpn;
                }
            }
        }
        if http && !tls {
            match http_detect::detect(data) {
                Detected::NeedMore => {}
                Detected::NotHttp => http = false,
                Detected::Http(p) => {
                    http = false;
                    facts.application_protocols = vec![p.to_owned()];
                }
            }
        }
        if closed || n == MAX_PEEK {
            break;
        }
        if n == buf.len() {
            buf.resize((buf.len() * 2).min(MAX_PEEK), 0);
        }
        seen = n;
    }
    Ok(facts)
}

/// Waits until more than `seen` bytes can be peeked (or the peer closed its side, or
/// the buffer is full) and returns how many there are and whether the peer closed.
async fn peek_more(stream: &TcpStream, buf: &mut [u8], seen: usize) -> io::Result<(usize, bool)> {
    loop {
        let ready = stream.ready(Interest::READABLE).await?;
        let closed = ready.is_read_closed();
        let fd = stream.as_raw_fd();
        let peeked = stream.try_io(Interest::READABLE, || {
            let n = recv(fd, buf, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT)
                .map_err(io::Error::from)?;
            // Nothing new: report WouldBlock so tokio clears the readiness and the next
            // wait is for new bytes (the socket is edge-triggered).
            if n == seen && n > 0 && n < buf.len() && !closed {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match peeked {
            Ok(n) => return Ok((n, closed || n == 0)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{io::AsyncWriteExt, net::TcpListener};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn a_hello_in_pieces_is_read_without_consuming_it() {
        let (mut client, server) = pair().await;
        let hello = tls_hello::client_hello_bytes(Some("svc.example"), &["h2"], 2);
        let (a, b) = hello.split_at(7);
        let (a, b) = (a.to_vec(), b.to_vec());
        let writer = tokio::spawn(async move {
            client.write_all(&a).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(&b).await.unwrap();
            client
        });
        let facts = inspect(&server, true, true, Some(Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(facts.transport, "tls");
        assert_eq!(facts.server_name.as_deref(), Some("svc.example"));
        assert_eq!(facts.application_protocols, ["h2"]);
        let _client = writer.await.unwrap();
        let mut got = vec![0u8; hello.len()];
        let mut server = server;
        tokio::io::AsyncReadExt::read_exact(&mut server, &mut got)
            .await
            .unwrap();
        assert_eq!(got, hello, "the bytes are still there for the filter chain");
    }

    #[tokio::test]
    async fn http_is_recognized_and_other_bytes_decide_at_once() {
        let (mut client, server) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let facts = inspect(&server, true, true, None).await.unwrap();
        assert_eq!(facts.transport, "raw_buffer");
        assert_eq!(facts.application_protocols, ["http/1.1"]);

        let (mut client, server) = pair().await;
        client.write_all(b"\x00\x01binary").await.unwrap();
        // No timeout: this would hang if the inspectors kept waiting.
        let facts = inspect(&server, true, true, None).await.unwrap();
        assert_eq!(facts, Facts::default());
    }

    #[tokio::test]
    async fn a_silent_client_times_out_and_a_closed_one_ends_inspection() {
        let (_client, server) = pair().await;
        let err = inspect(&server, true, true, Some(Duration::from_millis(50)))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        let (mut client, server) = pair().await;
        client.write_all(b"GET / HT").await.unwrap();
        client.shutdown().await.unwrap();
        let facts = inspect(&server, true, true, None).await.unwrap();
        assert_eq!(facts, Facts::default());
    }
}
