//! Reading SNI and ALPN from the first bytes of a connection, as Envoy's `tls_inspector`
//! does: a TLS ClientHello (possibly spread over several handshake records) is parsed
//! from peeked bytes, nothing is consumed.

/// What the bytes seen so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// Not enough bytes to decide.
    NeedMore,
    /// Not a TLS handshake.
    NotTls,
    /// A ClientHello: its server name (lowercase) and ALPN protocols.
    Tls {
        server_name: Option<String>,
        alpn: Vec<String>,
    },
}

const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;

pub fn parse(buf: &[u8]) -> Hello {
    // Reassemble the handshake bytes from the records seen so far.
    let mut handshake = Vec::new();
    let mut rest = buf;
    loop {
        match rest {
            [] => return Hello::NeedMore,
            [t, ..] if *t != HANDSHAKE => {
                return if handshake.is_empty() {
                    Hello::NotTls
                } else {
                    // Another record type in the middle of a ClientHello: not one
                    // that can be read.
                    tls_unreadable()
                };
            }
            [_, major, ..] if *major != 3 => return Hello::NotTls,
            [_, _, minor, ..] if *minor > 4 => return Hello::NotTls,
            [_, _, _] | [_, _, _, _] | [_] | [_, _] => return Hello::NeedMore,
            [_, _, _, hi, lo, body @ ..] => {
                let len = usize::from(u16::from_be_bytes([*hi, *lo]));
                if len == 0 {
                    return Hello::NotTls;
                }
                if handshake.is_empty() && body.first().is_some_and(|t| *t != CLIENT_HELLO) {
                    return Hello::NotTls;
                }
                let take = len.min(body.len());
                handshake.extend_from_slice(&body[..take]);
                if let Some(message) = whole_message(&handshake) {
                    return client_hello(message);
                }
                if take < len {
                    return Hello::NeedMore;
                }
                rest = &body[take..];
            }
        }
    }
}

/// A TLS connection whose hello cannot be read: still TLS, with nothing known.
fn tls_unreadable() -> Hello {
    Hello::Tls {
        server_name: None,
        alpn: Vec::new(),
    }
}

/// The ClientHello body once the handshake bytes hold all of it.
fn whole_message(handshake: &[u8]) -> Option<&[u8]> {
    let [_, a, b, c, body @ ..] = handshake else {
        return None;
    };
    let len = usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c);
    body.get(..len)
}

fn client_hello(body: &[u8]) -> Hello {
    let mut r = Reader(body);
    let parsed = (|| {
        r.skip(2 + 32)?; // client_version, random
        let n = r.u8()?;
        r.skip(n.into())?; // session_id
        let n = r.u16()?;
        r.skip(n.into())?; // cipher_suites
        let n = r.u8()?;
        r.skip(n.into())?; // compression_methods
        let mut server_name = None;
        let mut alpn = Vec::new();
        if r.0.is_empty() {
            return Some((server_name, alpn));
        }
        let n = r.u16()?;
        let mut exts = Reader(r.take(n.into())?);
        while !exts.0.is_empty() {
            let kind = exts.u16()?;
            let n = exts.u16()?;
            let mut data = Reader(exts.take(n.into())?);
            match kind {
                EXT_SERVER_NAME => {
                    let n = data.u16()?;
                    let mut list = Reader(data.take(n.into())?);
                    while !list.0.is_empty() {
                        let name_type = list.u8()?;
                        let n = list.u16()?;
                        let name = list.take(n.into())?;
                        if name_type == 0 && server_name.is_none() {
                            server_name = Some(String::from_utf8_lossy(name).to_ascii_lowercase());
                        }
                    }
                }
                EXT_ALPN => {
                    let n = data.u16()?;
                    let mut list = Reader(data.take(n.into())?);
                    while !list.0.is_empty() {
                        let n = list.u8()?;
                        alpn.push(String::from_utf8_lossy(list.take(n.into())?).into_owned());
                    }
                }
                _ => {}
            }
        }
        Some((server_name, alpn))
    })();
    match parsed {
        Some((server_name, alpn)) => Hello::Tls { server_name, alpn },
        None => tls_unreadable(),
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

/// A ClientHello with these SNI and ALPN values, in `records` handshake records. Used by
/// tests here and by the capture integration test.
pub fn client_hello_bytes(server_name: Option<&str>, alpn: &[&str], records: usize) -> Vec<u8> {
    let mut exts = Vec::new();
    if let Some(name) = server_name {
        let mut entry = vec![0u8];
        entry.extend((name.len() as u16).to_be_bytes());
        entry.extend(name.as_bytes());
        let mut list = (entry.len() as u16).to_be_bytes().to_vec();
        list.extend(entry);
        exts.extend(EXT_SERVER_NAME.to_be_bytes());
        exts.extend((list.len() as u16).to_be_bytes());
        exts.extend(list);
    }
    if !alpn.is_empty() {
        let mut list = Vec::new();
        for p in alpn {
            list.push(p.len() as u8);
            list.extend(p.as_bytes());
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend(list);
        exts.extend(EXT_ALPN.to_be_bytes());
        exts.extend((data.len() as u16).to_be_bytes());
        exts.extend(data);
    }
    let mut body = vec![3, 3];
    body.extend([7u8; 32]);
    body.push(0); // session id
    body.extend([0, 2, 0x13, 0x01]); // one cipher suite
    body.extend([1, 0]); // null compression
    body.extend((exts.len() as u16).to_be_bytes());
    body.extend(exts);
    let mut message = vec![CLIENT_HELLO];
    message.extend(&(body.len() as u32).to_be_bytes()[1..]);
    message.extend(body);
    let chunk = message.len().div_ceil(records.max(1));
    let mut out = Vec::new();
    for part in message.chunks(chunk) {
        out.extend([HANDSHAKE, 3, 1]);
        out.extend((part.len() as u16).to_be_bytes());
        out.extend(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(sni: Option<&str>, alpn: &[&str]) -> Hello {
        Hello::Tls {
            server_name: sni.map(str::to_owned),
            alpn: alpn.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn reads_sni_and_alpn() {
        let hello = client_hello_bytes(Some("Api.Example.com"), &["h2", "http/1.1"], 1);
        assert_eq!(
            parse(&hello),
            tls(Some("api.example.com"), &["h2", "http/1.1"])
        );
        assert_eq!(parse(&client_hello_bytes(None, &[], 1)), tls(None, &[]));
    }

    #[test]
    fn a_hello_over_several_records_is_reassembled() {
        let hello = client_hello_bytes(Some("a.example"), &["istio"], 3);
        assert_eq!(parse(&hello), tls(Some("a.example"), &["istio"]));
    }

    #[test]
    fn every_prefix_of_a_hello_asks_for_more() {
        let hello = client_hello_bytes(Some("a.example"), &["h2"], 2);
        for n in 0..hello.len() {
            assert_eq!(parse(&hello[..n]), Hello::NeedMore, "prefix of {n} bytes");
        }
    }

    #[test]
    fn other_protocols_are_recognized_from_their_first_bytes() {
        for data in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"G",
            b"PRI * HTTP/2.0",
            b"\x16\x02",
            b"\x16\x03\x09",
            b"\x16\x03\x01\x00\x10\x02", // handshake, but a ServerHello
            b"SSH-2.0-OpenSSH",
        ] {
            assert_eq!(parse(data), Hello::NotTls, "{data:?}");
        }
    }

    #[test]
    fn a_garbled_hello_is_tls_without_names() {
        let mut hello = client_hello_bytes(Some("a.example"), &[], 1);
        // Claim a longer extension block than there is.
        let n = hello.len();
        hello[n - 16] = 0xff;
        assert_eq!(parse(&hello), tls(None, &[]));
    }
}
