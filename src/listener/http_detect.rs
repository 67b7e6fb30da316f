//! Recognizing HTTP from the first bytes of a connection, as Envoy's `http_inspector`
//! does: `h2c` for the HTTP/2 connection preface, `http/1.1` or `http/1.0` for an
//! HTTP/1 request line. Decides as soon as the bytes allow, so a client-first protocol
//! that is not HTTP is not kept waiting.

#[derive(Debug, PartialEq, Eq)]
pub enum Detected {
    NeedMore,
    NotHttp,
    Http(&'static str),
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A request line longer than this is not taken for HTTP (Envoy reads at most 8 KiB).
pub const MAX_REQUEST_LINE: usize = 8192;

pub fn detect(buf: &[u8]) -> Detected {
    if buf.is_empty() {
        return Detected::NeedMore;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Detected::Http("h2c")
        } else {
            Detected::NeedMore
        };
    }
    request_line(buf)
}

fn request_line(buf: &[u8]) -> Detected {
    let end = buf.iter().position(|&b| b == b'\n');
    let line = &buf[..end.unwrap_or(buf.len())];
    let mut parts = line.splitn(3, |&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    if !method.iter().all(|&b| is_token(b)) {
        return Detected::NotHttp;
    }
    let target = parts.next();
    if target.is_some() && method.is_empty() {
        return Detected::NotHttp;
    }
    if let Some(t) = target
        && !t.iter().all(|&b| b > b' ' && b != 0x7f)
    {
        return Detected::NotHttp;
    }
    let version = parts.next();
    if let Some(v) = version {
        let v = v.strip_suffix(b"\r").unwrap_or(v);
        let known = |full: &[u8]| full.starts_with(v);
        if target.is_some_and(<[u8]>::is_empty) || !(known(b"HTTP/1.1") || known(b"HTTP/1.0")) {
            return Detected::NotHttp;
        }
    }
    match (end, version) {
        (Some(_), Some(v)) => match v.strip_suffix(b"\r").unwrap_or(v) {
            b"HTTP/1.1" => Detected::Http("http/1.1"),
            b"HTTP/1.0" => Detected::Http("http/1.0"),
            _ => Detected::NotHttp,
        },
        (Some(_), None) => Detected::NotHttp,
        (None, _) if buf.len() >= MAX_REQUEST_LINE => Detected::NotHttp,
        (None, _) => Detected::NeedMore,
    }
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        use Detected::*;
        let cases: &[(&[u8], Detected)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Http("http/1.1")),
            (b"POST /x?y=1 HTTP/1.0\r\n", Http("http/1.0")),
            (b"GET / HTTP/1.1\n", Http("http/1.1")),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Http("h2c")),
            (b"PRI * HTTP/2.0\r\n", NeedMore),
            (b"GET / HTTP/1.", NeedMore),
            (b"GET /", NeedMore),
            (b"G", NeedMore),
            (b"", NeedMore),
            (b"GET / HTTP/2.0\r\n", NotHttp),
            (b"GET / HTTP/1.1 extra\r\n", NotHttp),
            (b"GET / XTTP", NotHttp),
            (b"GET\r\n", NotHttp),
            (b" GET / HTTP/1.1\r\n", NotHttp),
            (b"\x16\x03\x01", NotHttp),
            (b"\x00\x00\x00\x01", NotHttp),
            (b"SSH-2.0-OpenSSH_9.6\r\n", NotHttp),
            (b"GET /a\x01b HTTP/1.1\r\n", NotHttp),
        ];
        for (bytes, want) in cases {
            assert_eq!(&detect(bytes), want, "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn an_endless_line_is_not_http() {
        let mut long = b"GET /".to_vec();
        long.resize(MAX_REQUEST_LINE, b'a');
        assert_eq!(detect(&long), Detected::NotHttp);
    }
}
