//! HTTP/2 abuse and limits, pilotfish against Envoy 1.40 on the same bootstrap, with
//! frames written byte by byte: the connection manager's `http2_protocol_options`
//! (streams a client may open, flow-control windows) advertised and enforced as Envoy
//! does, and the floods of the known HTTP/2 attacks (rapid reset, CVE-2023-44487;
//! CONTINUATION, CVE-2024-27316; empty DATA; PING, SETTINGS and PRIORITY floods):
//! the attacker's connection closed or held back by flow control, memory bounded, and
//! everyone else served.
mod common;

use std::time::Duration;

use common::{h2raw::*, *};

/// Control frames sent without reading the replies: far more than any socket buffers
/// hold (9 bytes of reply each).
const FLOOD: usize = 4_000_000;

fn bootstrap(backend: std::net::SocketAddr, hcm_extra: &str) -> String {
    let routes =
        "              - match: { prefix: / }\n                route: { cluster: backend }\n";
    http_bootstrap_logged(
        routes,
        &static_cluster("backend", &[backend], false),
        hcm_extra,
    )
}

/// Writes `frames` (stopping when the server no longer takes them: closed, or not
/// reading for 2 s), then reads what it sent for 3 s or until it closes.
async fn attack(p: &Proxy, frames: impl IntoIterator<Item = Vec<u8>>) -> (usize, Outcome) {
    let mut c = Conn::open(p.listener("http")).await;
    let mut sent = 0;
    let mut frames = frames.into_iter().peekable();
    // A few hundred frames per write: a flood as fast as the server takes it.
    while frames.peek().is_some() {
        let batch: Vec<Vec<u8>> = frames.by_ref().take(256).collect();
        let ok = tokio::time::timeout(Duration::from_secs(2), c.send(&batch.concat())).await;
        if !matches!(ok, Ok(true)) {
            break;
        }
        sent += batch.len();
    }
    c.read_for(Duration::from_secs(3)).await;
    (sent, c.out)
}

/// The settings a test compares (Envoy also sends HEADER_TABLE_SIZE and
/// ENABLE_CONNECT_PROTOCOL, hyper MAX_FRAME_SIZE and MAX_HEADER_LIST_SIZE).
fn limits(o: &Outcome) -> Vec<(u16, u32)> {
    o.settings
        .iter()
        .filter(|(id, _)| *id == 3 || *id == 4)
        .copied()
        .collect()
}

async fn serves(p: &Proxy) -> bool {
    // Over HTTP/2 (a fresh connection) and HTTP/1.1.
    let mut c = Conn::open(p.listener("http")).await;
    c.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &get_headers("/ok", "x"),
    ))
    .await;
    c.read_for(Duration::from_millis(1500)).await;
    let h1 = http_get(p.listener("http"), "/ok").await;
    c.out.answered == [1] && matches!(h1, Ok((200, _)))
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_limits_and_windows_are_advertised_and_enforced_as_envoy_does() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let backend = Upstream::start("backend").await;
    let mut d = Differences::default();
    for (what, extra) in [
        ("defaults", ""),
        (
            "limited",
            "          http2_protocol_options: { max_concurrent_streams: 5, initial_stream_window_size: 65535, initial_connection_window_size: 1048576 }\n",
        ),
    ] {
        let (ours, theirs) = start_both(&envoy, &bootstrap(backend.addr, extra)).await;
        let mut got = Vec::new();
        for p in [&theirs, &ours] {
            // Eight streams held open (no END_STREAM): those past the limit are refused.
            let opened = (0..8u32)
                .map(|i| frame(HEADERS, END_HEADERS, 2 * i + 1, &get_headers("/open", "x")));
            let (_, o) = attack(p, opened).await;
            let refused: Vec<(u32, u32)> = o.resets.iter().filter(|r| r.1 == 7).copied().collect();
            got.push((
                limits(&o),
                o.connection_window_updates.clone(),
                refused,
                o.closed,
            ));
        }
        d.check(format!("{what}: settings"), &got[0].0, &got[1].0);
        d.check(format!("{what}: connection window"), &got[0].1, &got[1].1);
        d.check(format!("{what}: refused streams"), &got[0].2, &got[1].2);
        d.check(format!("{what}: closed"), got[0].3, got[1].3);
        if what == "defaults" {
            // Envoy 1.40's defaults: 1024 streams, 16 MiB per stream, 24 MiB in all.
            assert_eq!(got[1].0, [(3, 1024), (4, 16 << 20)]);
            assert_eq!(got[1].1, [(24 << 20) - 65535]);
        } else {
            assert_eq!(got[1].2, [(11, 7), (13, 7), (15, 7)]);
        }
    }
    d.assert_none();
}

/// A GET whose body follows its HEADERS (no END_STREAM on them) reaches the upstream
/// whole, chunked over HTTP/1.1, as Envoy sends it (hyper alone would drop it).
#[tokio::test(flavor = "multi_thread")]
async fn a_get_body_after_the_headers_is_forwarded_as_envoy_does() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let backend = Upstream::start("backend").await;
    let (ours, theirs) = start_both(&envoy, &bootstrap(backend.addr, "")).await;
    let mut got = Vec::new();
    for p in [&theirs, &ours] {
        let mut c = Conn::open(p.listener("http")).await;
        c.send(&frame(HEADERS, END_HEADERS, 1, &get_headers("/later", "x")))
            .await;
        c.read_for(Duration::from_millis(300)).await;
        c.send(&frame(DATA, END_STREAM, 1, b"hello")).await;
        c.read_for(Duration::from_millis(1500)).await;
        let seen = backend.requests().pop().unwrap();
        got.push((
            String::from_utf8_lossy(&c.out.body).into_owned(),
            seen.headers
                .get("transfer-encoding")
                .map(|v| v.to_str().unwrap().to_owned()),
            c.out.resets.clone(),
        ));
    }
    assert_eq!(
        got[0],
        ("hello".into(), Some("chunked".into()), vec![]),
        "Envoy"
    );
    assert_eq!(got[1], got[0], "pilotfish (right) against Envoy (left)");
}

#[tokio::test(flavor = "multi_thread")]
async fn floods_are_shed_and_others_served() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let backend = Upstream::start("backend").await;
    let (ours, theirs) = start_both(&envoy, &bootstrap(backend.addr, "")).await;
    type Frames = Box<dyn Fn() -> Box<dyn Iterator<Item = Vec<u8>>>>;
    let big = "a".repeat(100);
    let attacks: Vec<(&str, Frames)> = vec![
        (
            // CVE-2023-44487: streams opened and cancelled at once.
            "rapid reset",
            Box::new(|| {
                Box::new((0..5000u32).flat_map(|i| {
                    let id = 2 * i + 1;
                    [
                        frame(
                            HEADERS,
                            END_HEADERS | END_STREAM,
                            id,
                            &get_headers("/r", "x"),
                        ),
                        frame(RST_STREAM, 0, id, &8u32.to_be_bytes()),
                    ]
                }))
            }),
        ),
        (
            // CVE-2024-27316: one header block that never ends.
            "CONTINUATION flood",
            Box::new(move || {
                let big = big.clone();
                Box::new(
                    std::iter::once(frame(HEADERS, 0, 1, &get_headers("/c", "x"))).chain(
                        (0..20_000).map(move |_| frame(CONTINUATION, 0, 1, &literal("x-a", &big))),
                    ),
                )
            }),
        ),
        (
            "empty DATA flood",
            Box::new(|| {
                Box::new(
                    std::iter::once(frame(HEADERS, END_HEADERS, 1, &get_headers("/e", "x")))
                        .chain((0..20_000).map(|_| frame(DATA, 0, 1, &[]))),
                )
            }),
        ),
        (
            "PING flood, replies never read",
            Box::new(|| Box::new((0..FLOOD as u64).map(|i| frame(PING, 0, 0, &i.to_be_bytes())))),
        ),
        (
            "SETTINGS flood, acknowledgements never read",
            Box::new(|| Box::new((0..FLOOD).map(|_| frame(SETTINGS, 0, 0, &[])))),
        ),
        (
            "PRIORITY flood",
            Box::new(|| {
                Box::new(
                    std::iter::once(frame(
                        HEADERS,
                        END_HEADERS | END_STREAM,
                        1,
                        &get_headers("/p", "x"),
                    ))
                    .chain((0..20_000).map(|_| frame(PRIORITY, 0, 1, &[0, 0, 0, 0, 16]))),
                )
            }),
        ),
    ];
    let baseline = ours.rss_kib();
    let mut report = Vec::new();
    for (name, frames) in &attacks {
        let mut outcomes = Vec::new();
        for p in [&theirs, &ours] {
            let (sent, o) = attack(p, frames()).await;
            assert!(serves(p).await, "{name}: not serving others afterwards");
            outcomes.push((sent, o));
        }
        let (e, o) = (&outcomes[0].1, &outcomes[1].1);
        report.push(format!(
            "{name}: Envoy closed={} after {} frames; pilotfish closed={} goaway={:?} after {} frames, RSS {} KiB over baseline",
            e.closed,
            outcomes[0].0,
            o.closed,
            o.goaway,
            outcomes[1].0,
            ours.rss_kib().saturating_sub(baseline)
        ));
        // Envoy closes every one of these connections.
        assert!(e.closed, "{name}: Envoy kept the connection");
        match *name {
            // Closed as by Envoy, with ENHANCE_YOUR_CALM.
            "rapid reset" | "CONTINUATION flood" | "empty DATA flood" => {
                assert!(o.closed && o.goaway == Some(11), "{name}: {o:?}")
            }
            // Replies wait for the client to read them: pilotfish stops reading the
            // connection meanwhile (the writes stall), so nothing piles up.
            "PING flood, replies never read" | "SETTINGS flood, acknowledgements never read" => {
                assert!(
                    o.closed || outcomes[1].0 < FLOOD,
                    "{name}: every frame taken without a reply read"
                )
            }
            // PRIORITY frames are ignored (they build no state here): the stream is
            // answered.
            _ => assert!(o.answered == [1], "{name}: {o:?}"),
        }
    }
    eprintln!("{}", report.join("\n"));
    // Memory stays bounded through all of them.
    let grown = ours.rss_kib().saturating_sub(baseline);
    assert!(
        grown < 64 * 1024,
        "RSS grew {grown} KiB:\n{}",
        report.join("\n")
    );
}

/// An upstream answering every request with a 64 MiB body, written as fast as the
/// proxy takes it.
async fn big_body_upstream() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 67108864\r\n\r\n")
                    .await;
                let chunk = vec![b'x'; 65536];
                for _ in 0..1024 {
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A client that asks for 64 MiB and does not read it: pilotfish holds back (flow
/// control, bounded buffers) instead of taking the body from the upstream into memory;
/// read afterwards, all of it arrives. Over HTTP/1.1 and HTTP/2; Envoy's growth is
/// printed beside it.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_reader_does_not_grow_memory() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let upstream = big_body_upstream().await;
    let (ours, theirs) = start_both(&envoy, &bootstrap(upstream, "")).await;
    for (who, p) in [("Envoy", &theirs), ("pilotfish", &ours)] {
        // HTTP/1.1.
        let before = p.rss_kib();
        let mut s = tokio::net::TcpStream::connect(p.listener("http"))
            .await
            .unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let grown = p.rss_kib().saturating_sub(before);
        let mut total = 0usize;
        let mut buf = vec![0u8; 1 << 20];
        while total < (64 << 20) {
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => total += n,
            }
        }
        assert!(total > 64 << 20, "{who}: HTTP/1.1 body cut at {total}");
        let h1_grown = grown;
        // HTTP/2, a stream whose window (64 KiB) is never opened further.
        let before = p.rss_kib();
        let mut c = Conn::open(p.listener("http")).await;
        c.send(&frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &get_headers("/big", "x"),
        ))
        .await;
        c.read_for(Duration::from_secs(2)).await;
        let grown = p.rss_kib().saturating_sub(before);
        assert_eq!(c.out.statuses, [200], "{who}");
        assert!(c.out.body.len() <= 65535, "{who}: sent past the window");
        eprintln!(
            "{who}: RSS grown with a slow reader: HTTP/1.1 {h1_grown} KiB, HTTP/2 {grown} KiB"
        );
        // Envoy reads ahead up to its buffer limits (18 MiB over HTTP/2 here);
        // pilotfish's bound is its socket and stream buffers.
        if who == "pilotfish" {
            assert!(
                h1_grown < 8 << 10,
                "HTTP/1.1 slow reader grew RSS {h1_grown} KiB"
            );
            assert!(grown < 8 << 10, "HTTP/2 slow reader grew RSS {grown} KiB");
        }
    }
}
