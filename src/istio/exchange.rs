//! Istio's TCP metadata exchange (`envoy.tcp.metadataexchange.config.MetadataExchange`,
//! the `istio.metadata_exchange` network filter on inbound chains and cluster filter on
//! outbound clusters). When an mTLS connection negotiated the configured ALPN protocol
//! (istiod: `istio-peer-exchange`, which istio-proxy offers for plain TCP over Istio
//! mTLS), each side opens its stream with a frame describing itself: the magic
//! `0x3D230467` and a length (both 32-bit big-endian), then a `google.protobuf.Any`
//! holding a `Struct` with `x-envoy-peer-metadata` (the same reduced node `Struct` as
//! the HTTP exchange) and `x-envoy-peer-metadata-id` (the node id). Both sides write
//! theirs without waiting for the other's and take the peer's off the front of what
//! they read, so the application bytes reach the app unchanged. Without the exchange an
//! istio-proxy peer's frame would reach the app as data.
//!
//! pilotfish writes its frame as soon as the handshake is done (istio-proxy on its
//! first read or write; the peer cannot tell). A stream that does not open with the
//! magic is passed on untouched (`initial_header_not_found`), as istio-proxy does. The
//! peer's identity goes to the inbox's [`PeerSlot`], where `istio.stats` reads it.
//! Counters `metadata_exchange.{alpn_protocol_found,alpn_protocol_not_found,
//! initial_header_not_found,header_not_found,metadata_added}`, one set per process.
use crate::sync::MutexExt;
use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use serde_json::Value;
use tokio::io::{AsyncRead, ReadBuf};

use super::{
    peer::{self, PeerSlot},
    peer_metadata::{self, Field},
};
use crate::telemetry::stats::{Counter, Store};

pub const TYPE: &str = "envoy.tcp.metadataexchange.config.MetadataExchange";
const MAGIC: u32 = 0x3D23_0467;
/// A peer frame longer than this is not taken as one (istio-proxy sets no bound).
const MAX_FRAME: usize = 1 << 20;

/// The compiled filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeConfig {
    /// The ALPN protocol that turns the exchange on.
    pub protocol: String,
    /// Node labels sent besides Istio's four.
    pub additional_labels: Vec<String>,
}

pub fn compile(json: &Value, path: &str) -> Result<ExchangeConfig, String> {
    let protocol = json["protocol"].as_str().unwrap_or_default();
    if protocol.is_empty() {
        return Err(format!("{path}.protocol: required"));
    }
    Ok(ExchangeConfig {
        protocol: protocol.to_owned(),
        additional_labels: json["additional_labels"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|l| l.as_str().map(str::to_owned))
            .collect(),
    })
}

#[derive(Debug, Clone)]
pub struct ExchangeStats {
    pub alpn_protocol_found: Counter,
    pub alpn_protocol_not_found: Counter,
    pub initial_header_not_found: Counter,
    pub header_not_found: Counter,
    pub metadata_added: Counter,
}

impl ExchangeStats {
    pub fn new(store: &Arc<Store>) -> Self {
        let c = |name: &str| {
            store.counter(
                format!("metadata_exchange.{name}"),
                &format!("envoy_metadata_exchange_{name}"),
                &[],
            )
        };
        ExchangeStats {
            alpn_protocol_found: c("alpn_protocol_found"),
            alpn_protocol_not_found: c("alpn_protocol_not_found"),
            initial_header_not_found: c("initial_header_not_found"),
            header_not_found: c("header_not_found"),
            metadata_added: c("metadata_added"),
        }
    }
}

/// The exchange as configured on a listener chain or a cluster.
#[derive(Debug, Clone)]
pub struct Exchange {
    config: ExchangeConfig,
    frame: Arc<[u8]>,
    stats: ExchangeStats,
}

impl Exchange {
    pub fn new(config: &ExchangeConfig, store: &Arc<Store>) -> Self {
        Exchange {
            frame: shared_frame(&config.additional_labels),
            config: config.clone(),
            stats: ExchangeStats::new(store),
        }
    }

    /// Whether a connection that negotiated `alpn` exchanges (counted either way).
    pub fn applies(&self, alpn: Option<&[u8]>) -> bool {
        if alpn == Some(self.config.protocol.as_bytes()) {
            self.stats.alpn_protocol_found.inc();
            true
        } else {
            self.stats.alpn_protocol_not_found.inc();
            false
        }
    }

    /// Our frame, to write first (counted as metadata added, as istio-proxy counts).
    pub fn our_frame(&self) -> &[u8] {
        self.stats.metadata_added.inc();
        &self.frame
    }

    /// What strips the peer's frame from the stream read.
    pub fn inbox(&self) -> Inbox {
        Inbox {
            acc: Vec::new(),
            state: State::Reading,
            stats: self.stats.clone(),
            peer: PeerSlot::default(),
        }
    }
}

/// One copy of each frame, however many clusters carry the exchange (istiod puts it on
/// every outbound cluster).
fn shared_frame(additional: &[String]) -> Arc<[u8]> {
    type Made = Vec<(Vec<String>, Arc<[u8]>)>;
    static MADE: std::sync::Mutex<Made> = std::sync::Mutex::new(Vec::new());
    let mut made = MADE.locked();
    if let Some((_, f)) = made.iter().find(|(k, _)| k == additional) {
        return f.clone();
    }
    let f: Arc<[u8]> = frame(additional).into();
    made.push((additional.to_vec(), f.clone()));
    f
}

/// This node's frame: magic, length, `Any(Struct)`.
pub fn frame(additional: &[String]) -> Vec<u8> {
    let (id, node) = peer_metadata::local_node(additional);
    let mut outer = std::collections::BTreeMap::new();
    outer.insert("x-envoy-peer-metadata".to_owned(), Field::Struct(node));
    outer.insert("x-envoy-peer-metadata-id".to_owned(), Field::Str(id));
    let value = peer_metadata::encode_struct(&outer);
    let mut any = Vec::new();
    peer_metadata::bytes_field(&mut any, 1, b"type.googleapis.com/google.protobuf.Struct");
    peer_metadata::bytes_field(&mut any, 2, &value);
    let mut out = Vec::with_capacity(8 + any.len());
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&(any.len() as u32).to_be_bytes());
    out.extend_from_slice(&any);
    out
}

/// The read side of an exchange: takes the peer's frame off the front of the stream.
#[derive(Debug)]
pub struct Inbox {
    acc: Vec<u8>,
    state: State,
    stats: ExchangeStats,
    /// The peer, once its frame is read (or known absent).
    peer: PeerSlot,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Reading the frame.
    Reading,
    /// Done with the frame; `acc` holds bytes read past it (or a stream that had
    /// none), served before the stream's.
    Passing,
    Done,
}

impl Inbox {
    /// Where the peer the frame describes is left.
    pub fn peer_slot(&self) -> PeerSlot {
        self.peer.clone()
    }

    /// Reads from `io` into `buf`, the peer's frame first taken off.
    pub fn poll_read<S: AsyncRead + ?Sized>(
        &mut self,
        mut io: Pin<&mut S>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            match self.state {
                State::Done => return io.poll_read(cx, buf),
                State::Passing => {
                    if self.acc.is_empty() {
                        self.state = State::Done;
                        continue;
                    }
                    let n = self.acc.len().min(buf.remaining());
                    buf.put_slice(&self.acc[..n]);
                    self.acc.drain(..n);
                    return Poll::Ready(Ok(()));
                }
                State::Reading => {
                    let mut tmp = [0u8; 4096];
                    let mut rb = ReadBuf::new(&mut tmp);
                    ready!(io.as_mut().poll_read(cx, &mut rb))?;
                    if rb.filled().is_empty() {
                        // The stream ended inside the frame: what came is passed on.
                        if !self.acc.is_empty() {
                            self.stats.header_not_found.inc();
                        }
                        let _ = self.peer.set(None);
                        self.state = State::Passing;
                        continue;
                    }
                    self.acc.extend_from_slice(rb.filled());
                    self.parse();
                }
            }
        }
    }

    fn parse(&mut self) {
        let acc = &self.acc;
        if acc.len() >= 4 && acc[..4] != MAGIC.to_be_bytes() {
            // Not a frame: the peer has no exchange; its bytes are data.
            self.stats.initial_header_not_found.inc();
            let _ = self.peer.set(None);
            self.state = State::Passing;
            return;
        }
        if acc.len() < 8 {
            return;
        }
        let len = u32::from_be_bytes([acc[4], acc[5], acc[6], acc[7]]) as usize;
        if len > MAX_FRAME {
            self.stats.header_not_found.inc();
            let _ = self.peer.set(None);
            self.state = State::Passing;
            return;
        }
        if acc.len() < 8 + len {
            return;
        }
        let found = peer::from_frame(&acc[8..8 + len]);
        if found.is_none() {
            self.stats.header_not_found.inc();
        }
        let _ = self.peer.set(found.map(Arc::new));
        self.acc.drain(..8 + len);
        self.state = State::Passing;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    struct Reader {
        inbox: Inbox,
        io: std::io::Cursor<Vec<u8>>,
    }

    impl AsyncRead for Reader {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.inbox.poll_read(Pin::new(&mut this.io), cx, buf)
        }
    }

    async fn read_through(bytes: Vec<u8>) -> (Vec<u8>, ExchangeStats) {
        let store = Store::new();
        let x = Exchange::new(
            &ExchangeConfig {
                protocol: "istio-peer-exchange".into(),
                additional_labels: vec![],
            },
            &store,
        );
        let mut r = Reader {
            inbox: x.inbox(),
            io: std::io::Cursor::new(bytes),
        };
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        (out, x.stats)
    }

    #[tokio::test]
    async fn the_peers_frame_comes_off_and_the_data_passes() {
        let mut bytes = frame(&[]);
        assert_eq!(bytes[..4], [0x3d, 0x23, 0x04, 0x67]);
        assert_eq!(
            u32::from_be_bytes(bytes[4..8].try_into().unwrap()) as usize,
            bytes.len() - 8
        );
        assert!(peer::from_frame(&bytes[8..]).is_some());
        bytes.extend_from_slice(b"hello");
        let (out, stats) = read_through(bytes).await;
        assert_eq!(out, b"hello");
        assert_eq!(stats.header_not_found.get(), 0);
    }

    #[tokio::test]
    async fn a_stream_without_a_frame_passes_untouched() {
        let (out, stats) = read_through(b"GET / HTTP/1.1\r\n\r\n".to_vec()).await;
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(stats.initial_header_not_found.get(), 1);
        let (out, _) = read_through(b"ab".to_vec()).await;
        assert_eq!(out, b"ab");
        let (out, _) = read_through(Vec::new()).await;
        assert!(out.is_empty());
        // A frame cut short is passed on as it came.
        let f = frame(&[]);
        let (out, stats) = read_through(f[..20].to_vec()).await;
        assert_eq!(out, f[..20]);
        assert_eq!(stats.header_not_found.get(), 1);
    }

    #[test]
    fn the_protocol_is_required() {
        assert_eq!(
            compile(&serde_json::json!({"enable_discovery": true}), "f").unwrap_err(),
            "f.protocol: required"
        );
    }
}
