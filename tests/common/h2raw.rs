//! A raw HTTP/2 client for abuse tests: frames written byte by byte (so a test can
//! send what no well-behaved client would), and what the server sent back read as
//! frames until it closes.
use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// One frame: type, flags, stream, payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK block for `GET <path>` on `authority`, every field a literal without
/// indexing (no dynamic table state to keep).
pub fn get_headers(path: &str, authority: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86]; // :method GET, :scheme http (static table)
    for (name_index, value) in [(4u8, path), (1u8, authority)] {
        b.push(name_index); // literal without indexing, indexed name
        b.push(value.len() as u8);
        b.extend_from_slice(value.as_bytes());
    }
    b
}

/// A literal header field (new name) without indexing.
pub fn literal(name: &str, value: &str) -> Vec<u8> {
    literal_bytes(name.as_bytes(), value.as_bytes())
}

/// [`literal`] with any bytes (uppercase, CR, LF, NUL: what HPACK carries and HTTP/2
/// forbids), lengths of any size.
pub fn literal_bytes(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut b = vec![0x00];
    hpack_int(&mut b, name.len(), 7, 0);
    b.extend_from_slice(name);
    hpack_int(&mut b, value.len(), 7, 0);
    b.extend_from_slice(value);
    b
}

/// A header block of literal fields, in the order given (pseudo-headers included).
pub fn block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    fields
        .iter()
        .flat_map(|(n, v)| literal_bytes(n, v))
        .collect()
}

/// HPACK's integer with an `n`-bit prefix (RFC 7541 §5.1), `flags` in the first byte.
fn hpack_int(out: &mut Vec<u8>, mut v: usize, n: u32, flags: u8) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// What the server did with a connection.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    /// The GOAWAY error code, if it sent one.
    pub goaway: Option<u32>,
    /// Streams it reset, with the codes.
    pub resets: Vec<(u32, u32)>,
    /// Streams that got a response HEADERS frame.
    pub answered: Vec<u32>,
    /// It closed the connection (EOF or reset) before the reading stopped.
    pub closed: bool,
    pub pings_acked: usize,
    pub settings_acked: usize,
    /// The server's SETTINGS (identifier, value), in the order sent.
    pub settings: Vec<(u16, u32)>,
    /// WINDOW_UPDATE increments on the connection (stream 0).
    pub connection_window_updates: Vec<u32>,
    /// DATA payloads, all streams together.
    pub body: Vec<u8>,
    /// The `:status` of each response HEADERS frame (when the block starts with it, as
    /// servers write it), in order.
    pub statuses: Vec<u16>,
    /// Streams the server ended (END_STREAM) or reset.
    pub ended: Vec<u32>,
}

pub struct Conn {
    pub s: TcpStream,
    buf: Vec<u8>,
    pub out: Outcome,
}

impl Conn {
    /// Connects and sends the preface and an empty SETTINGS.
    pub async fn open(addr: SocketAddr) -> Conn {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        Conn {
            s,
            buf: Vec::new(),
            out: Outcome::default(),
        }
    }

    /// Writes bytes; false once the server has closed (a write error).
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.s.write_all(bytes).await.is_ok()
    }

    /// Reads frames for up to `within`, or until the server closes.
    pub async fn read_for(&mut self, within: Duration) {
        self.read_until(within, |_| false).await
    }

    /// Reads frames until `done` says so, the server closes, or `within` passes.
    pub async fn read_until(&mut self, within: Duration, done: impl Fn(&Outcome) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        let mut chunk = vec![0u8; 65536];
        loop {
            if done(&self.out) {
                return;
            }
            let read = tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await;
            match read {
                Err(_) => return,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.out.closed = true;
                    self.parse();
                    return;
                }
                Ok(Ok(n)) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    self.parse();
                }
            }
        }
    }

    fn parse(&mut self) {
        while self.buf.len() >= 9 {
            let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
            if self.buf.len() < 9 + len {
                return;
            }
            let kind = self.buf[3];
            let flags = self.buf[4];
            let stream = u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]])
                & 0x7fff_ffff;
            let p = self.buf[9..9 + len].to_vec();
            self.buf.drain(..9 + len);
            if (kind == DATA || kind == HEADERS) && flags & END_STREAM != 0 || kind == RST_STREAM {
                self.out.ended.push(stream);
            }
            match kind {
                GOAWAY if p.len() >= 8 => {
                    self.out.goaway = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]))
                }
                RST_STREAM if p.len() >= 4 => self
                    .out
                    .resets
                    .push((stream, u32::from_be_bytes([p[0], p[1], p[2], p[3]]))),
                HEADERS => {
                    self.out.answered.push(stream);
                    // PADDED and PRIORITY come before the block.
                    let mut b = &p[..];
                    if flags & 0x8 != 0 && !b.is_empty() {
                        let pad = b[0] as usize;
                        b = &b[1..b.len().saturating_sub(pad)];
                    }
                    if flags & 0x20 != 0 && b.len() >= 5 {
                        b = &b[5..];
                    }
                    if let Some(s) = status(b) {
                        self.out.statuses.push(s);
                    }
                }
                DATA => self.out.body.extend_from_slice(&p),
                PING if flags & 1 == 1 => self.out.pings_acked += 1,
                SETTINGS if flags & 1 == 1 => self.out.settings_acked += 1,
                SETTINGS => self.out.settings.extend(p.chunks_exact(6).map(|c| {
                    (
                        u16::from_be_bytes([c[0], c[1]]),
                        u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                    )
                })),
                WINDOW_UPDATE if stream == 0 && p.len() >= 4 => self
                    .out
                    .connection_window_updates
                    .push(u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff),
                _ => {}
            }
        }
    }
}

/// The `:status` a response header block starts with: an indexed static entry, or a
/// literal with a static `:status` name and a plain or Huffman-coded value.
fn status(b: &[u8]) -> Option<u16> {
    let first = *b.first()?;
    const INDEXED: [u16; 7] = [200, 204, 206, 304, 400, 404, 500];
    if first & 0x80 != 0 {
        let i = (first & 0x7f) as usize;
        return (8..=14).contains(&i).then(|| INDEXED[i - 8]);
    }
    let (index, rest) = if first & 0xc0 == 0x40 {
        (first & 0x3f, &b[1..])
    } else if first & 0xf0 == 0x00 || first & 0xf0 == 0x10 {
        (first & 0x0f, &b[1..])
    } else {
        return None;
    };
    if !(8..=14).contains(&index) {
        return None;
    }
    let len_byte = *rest.first()?;
    let len = (len_byte & 0x7f) as usize;
    let value = rest.get(1..1 + len)?;
    let text = if len_byte & 0x80 != 0 {
        huffman_digits(value)?
    } else {
        String::from_utf8(value.to_vec()).ok()?
    };
    text.parse().ok()
}

/// Decodes a Huffman-coded string of decimal digits (RFC 7541 Appendix B: '0'-'2' are
/// 5 bits, '3'-'9' 6 bits), as a status code is coded.
fn huffman_digits(b: &[u8]) -> Option<String> {
    let bits: Vec<u8> = b
        .iter()
        .flat_map(|byte| (0..8).rev().map(move |i| (byte >> i) & 1))
        .collect();
    let mut out = String::new();
    let mut i = 0;
    let code = |i: usize, n: usize| -> Option<u32> {
        bits.get(i..i + n)
            .map(|s| s.iter().fold(0u32, |a, b| a << 1 | u32::from(*b)))
    };
    while i + 5 <= bits.len() {
        if let Some(c @ 0..=2) = code(i, 5) {
            out.push(char::from(b'0' + c as u8));
            i += 5;
            continue;
        }
        match code(i, 6) {
            Some(c @ 0b011001..=0b011111) => {
                out.push(char::from(b'3' + (c - 0b011001) as u8));
                i += 6;
            }
            // The padding: the most significant bits of EOS, all ones.
            _ if bits[i..].iter().all(|b| *b == 1) => break,
            _ => return None,
        }
    }
    Some(out)
}
