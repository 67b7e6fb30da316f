//! HTTP/1.1 parsing and request smuggling, differentially: raw requests that a lax or
//! confused parser would read differently (Content-Length with Transfer-Encoding,
//! malformed chunks, odd whitespace and control characters, odd request targets,
//! pipelining) sent to Envoy 1.40 and to pilotfish on one bootstrap. Each must answer
//! the same statuses and let the same requests reach the upstream, never one request
//! as two.
mod common;

use std::time::Duration;

use common::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A case: its name and the bytes the client sends.
type Case = (&'static str, Vec<u8>);

fn cases() -> Vec<Case> {
    let mut out: Vec<Case> = vec![
        ("plain GET", b"GET /a HTTP/1.1\r\nhost: svc\r\n\r\n".to_vec()),
        (
            "content-length and chunked",
            b"POST /a HTTP/1.1\r\nhost: svc\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "content-length and identity, chunked",
            b"POST /a HTTP/1.1\r\nhost: svc\r\ncontent-length: 4\r\ntransfer-encoding: identity, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "two equal content-lengths",
            b"POST /a HTTP/1.1\r\nhost: svc\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello".to_vec(),
        ),
        (
            "conflicting content-lengths",
            b"POST /a HTTP/1.1\r\nhost: svc\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!".to_vec(),
        ),
        (
            "content-length list",
            b"POST /a HTTP/1.1\r\nhost: svc\r\ncontent-length: 5, 5\r\n\r\nhello".to_vec(),
        ),
        (
            "negative content-length",
            b"POST /a HTTP/1.1\r\nhost: svc\r\ncontent-length: -1\r\n\r\nhello".to_vec(),
        ),
        (
            "content-length with a plus sign",
            b"POST /a HTTP/1.1\r\nhost: svc\r\ncontent-length: +5\r\n\r\nhello".to_vec(),
        ),
        (
            "chunked not last",
            b"POST /a HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "transfer-encoding identity",
            b"POST /a HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: identity\r\n\r\nhello".to_vec(),
        ),
        (
            "transfer-encoding gzip, chunked",
            b"POST /a HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "transfer-encoding Chunked (case)",
            b"POST /a HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "transfer-encoding chunked, chunked",
            b"POST /a HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "transfer-encoding by obs-fold",
            b"POST /a HTTP/1.1\r\nhost: svc\r\ntransfer-encoding:\r\n chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "space before the colon",
            b"POST /a HTTP/1.1\r\nhost: svc\r\ntransfer-encoding : chunked\r\ncontent-length: 5\r\n\r\nhello".to_vec(),
        ),
        (
            "tab in transfer-encoding value",
            b"POST /a HTTP/1.1\r\nhost: svc\r\ntransfer-encoding:\tchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "chunk size overflow",
            b"POST /a HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffff1\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "junk after the chunk size",
            b"POST /a HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n5x\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "chunk extension",
            b"POST /a HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "bare LF in a chunk extension",
            b"POST /a HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "more data than the chunk size",
            b"POST /a HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "chunk without its CRLF",
            b"POST /a HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloX0\r\n\r\n".to_vec(),
        ),
        (
            "trailers",
            b"POST /a HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-trailer: t\r\n\r\n".to_vec(),
        ),
        (
            "bare LF line endings",
            b"GET /a HTTP/1.1\nhost: svc\n\n".to_vec(),
        ),
        (
            "bare CR in a header value",
            b"GET /a HTTP/1.1\r\nhost: svc\r\nx-a: b\rc\r\n\r\n".to_vec(),
        ),
        (
            "NUL in a header value",
            b"GET /a HTTP/1.1\r\nhost: svc\r\nx-a: b\0c\r\n\r\n".to_vec(),
        ),
        (
            "control character in a header name",
            b"GET /a HTTP/1.1\r\nhost: svc\r\nx-\x01a: b\r\n\r\n".to_vec(),
        ),
        (
            "space in a header name",
            b"GET /a HTTP/1.1\r\nhost: svc\r\nx a: b\r\n\r\n".to_vec(),
        ),
        (
            "underscore in a header name",
            b"GET /a HTTP/1.1\r\nhost: svc\r\nx_a: b\r\n\r\n".to_vec(),
        ),
        (
            "absolute-form target",
            b"GET http://svc/a HTTP/1.1\r\nhost: svc\r\n\r\n".to_vec(),
        ),
        (
            "absolute-form target disagreeing with host",
            b"GET http://other/a HTTP/1.1\r\nhost: svc\r\n\r\n".to_vec(),
        ),
        (
            "asterisk-form OPTIONS",
            b"OPTIONS * HTTP/1.1\r\nhost: svc\r\n\r\n".to_vec(),
        ),
        (
            "authority-form CONNECT",
            b"CONNECT svc:80 HTTP/1.1\r\nhost: svc:80\r\n\r\n".to_vec(),
        ),
        (
            "no host",
            b"GET /a HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "two hosts",
            b"GET /a HTTP/1.1\r\nhost: svc\r\nhost: other\r\n\r\n".to_vec(),
        ),
        (
            "lowercase method",
            b"get /a HTTP/1.1\r\nhost: svc\r\n\r\n".to_vec(),
        ),
        (
            "unknown method",
            b"FROB /a HTTP/1.1\r\nhost: svc\r\n\r\n".to_vec(),
        ),
        (
            "HTTP/1.0 keep-alive, twice",
            b"GET /a HTTP/1.0\r\nhost: svc\r\nconnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\nhost: svc\r\n\r\n".to_vec(),
        ),
        (
            "HTTP/2.0 on an HTTP/1 request line",
            b"GET /a HTTP/2.0\r\nhost: svc\r\n\r\n".to_vec(),
        ),
        (
            "pipelined GETs",
            b"GET /a HTTP/1.1\r\nhost: svc\r\n\r\nGET /b HTTP/1.1\r\nhost: svc\r\n\r\n".to_vec(),
        ),
        (
            "pipelined after a body",
            b"POST /a HTTP/1.1\r\nhost: svc\r\ncontent-length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nhost: svc\r\n\r\n".to_vec(),
        ),
        (
            "expect 100-continue",
            b"POST /a HTTP/1.1\r\nhost: svc\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\nhello".to_vec(),
        ),
        (
            "connection close and an upgrade",
            b"GET /a HTTP/1.1\r\nhost: svc\r\nconnection: close, upgrade\r\nupgrade: websocket\r\n\r\n".to_vec(),
        ),
    ];
    // Oversized: a 70 KiB header, 101 headers, and a 70 KiB request line.
    let big = "a".repeat(70 * 1024);
    out.push((
        "a 70 KiB header",
        format!("GET /a HTTP/1.1\r\nhost: svc\r\nx-big: {big}\r\n\r\n").into_bytes(),
    ));
    let many: String = (0..101).map(|i| format!("x-h{i}: v\r\n")).collect();
    out.push((
        "101 headers",
        format!("GET /a HTTP/1.1\r\nhost: svc\r\n{many}\r\n").into_bytes(),
    ));
    out.push((
        "a 70 KiB request line",
        format!("GET /{big} HTTP/1.1\r\nhost: svc\r\n\r\n").into_bytes(),
    ));
    out
}

/// What the client got (the status of each response on the connection) and what
/// reached the upstream (method and path of each request).
#[derive(Debug, PartialEq)]
struct Outcome {
    statuses: Vec<u16>,
    upstream: Vec<String>,
}

async fn run(proxy: &Proxy, up: &Upstream, bytes: &[u8]) -> Outcome {
    let before = up.requests().len();
    let mut s = TcpStream::connect(proxy.listener("http")).await.unwrap();
    let _ = s.write_all(bytes).await;
    // Read until the proxy closes or goes quiet.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match tokio::time::timeout(Duration::from_millis(400), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&got);
    let statuses = text
        .match_indices("HTTP/1.")
        .filter_map(|(i, _)| {
            let line = &text[i..];
            let code = line.get(9..12)?;
            (line.as_bytes().get(8) == Some(&b' ')).then(|| code.parse().ok())?
        })
        .collect();
    let upstream = up.requests()[before..]
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    Outcome { statuses, upstream }
}

/// Where pilotfish answers differently from Envoy 1.40, on purpose, and the statuses
/// it gives instead. Each is refused, or read the one way RFC 9112 allows.
const DEVIATIONS: &[(&str, &[u16], &str)] = &[
    (
        "content-length and chunked",
        &[200],
        "read as chunked with Content-Length dropped, and the connection closed after \
         the response (RFC 9112 section 6.1); Envoy refuses it 400",
    ),
    (
        "content-length and identity, chunked",
        &[501],
        "the Content-Length is dropped as above, then the coding is refused; Envoy 400",
    ),
    (
        "two equal content-lengths",
        &[200],
        "one length, read once (RFC 9110 section 8.6); Envoy refuses it 400",
    ),
    (
        "chunked not last",
        &[400],
        "hyper refuses it 400; Envoy 501",
    ),
    (
        "transfer-encoding identity",
        &[400],
        "hyper refuses it 400; Envoy 501",
    ),
    (
        "transfer-encoding by obs-fold",
        &[400],
        "obs-fold is refused (RFC 9112 section 5.2); Envoy unfolds it",
    ),
    (
        "more data than the chunk size",
        &[400],
        "a chunk not followed by CRLF is malformed; Envoy forwards it 200",
    ),
    (
        "bare CR in a header value",
        &[400],
        "a bare CR is refused (RFC 9112 section 2.2); Envoy forwards it",
    ),
    (
        "HTTP/2.0 on an HTTP/1 request line",
        &[400],
        "hyper 400; Envoy 426",
    ),
];

#[tokio::test]
async fn http1_parsing_matches_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let (ours_up, theirs_up) = (Upstream::start("a").await, Upstream::start("a").await);
    let routes =
        "              - match: { prefix: \"/\" }\n                route: { cluster: a }\n";
    let yaml_for =
        |up: &Upstream| http_bootstrap_logged(routes, &static_cluster("a", &[up.addr], false), "");
    let ours = Proxy::start(&yaml_for(&ours_up)).await;
    let theirs = Proxy::start_bin(&envoy, &yaml_for(&theirs_up), &["--disable-hot-restart"]).await;
    let mut diffs = Differences::default();
    let (mut refused, mut served) = (0, 0);
    for (name, bytes) in cases() {
        let want = run(&theirs, &theirs_up, &bytes).await;
        let got = run(&ours, &ours_up, &bytes).await;
        // Never one request as two, whatever else happens.
        assert!(
            got.upstream.len() <= got.statuses.len().max(1),
            "{name}: {got:?}"
        );
        if let Some((_, statuses, why)) = DEVIATIONS.iter().find(|d| d.0 == name) {
            diffs.check(format!("{name} ({why})"), statuses.to_vec(), got.statuses);
            continue;
        }
        if want.statuses.iter().all(|s| *s < 400) {
            served += 1;
            diffs.check(name, want, got);
        } else {
            // Refused: the same statuses. A request refused for its body may or may
            // not have reached the upstream by then, in either proxy; at most once.
            refused += 1;
            diffs.check(name, want.statuses, got.statuses);
        }
    }
    eprintln!(
        "{served} served and {refused} refused as Envoy does; {} deviations",
        DEVIATIONS.len()
    );
    diffs.assert_none();
}
