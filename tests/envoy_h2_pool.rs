//! HTTP/2 upstream pools against the real Envoy: streams share a connection up to the
//! peer's SETTINGS_MAX_CONCURRENT_STREAMS (or the cluster's `max_concurrent_streams`),
//! then another connection opens.
mod common;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Semaphore;

/// An HTTP/2 upstream allowing `streams` concurrent streams per connection, holding
/// each request until the test lets it go; counts connections and requests.
async fn limited(
    streams: u32,
    gate: Arc<Semaphore>,
    conns: Arc<AtomicUsize>,
    seen: Arc<AtomicUsize>,
) -> SocketAddr {
    accept_each(move |stream| {
        let (gate, seen) = (gate.clone(), seen.clone());
        conns.fetch_add(1, Ordering::SeqCst);
        async move {
            let svc = hyper::service::service_fn(move |_req| {
                let (gate, seen) = (gate.clone(), seen.clone());
                async move {
                    seen.fetch_add(1, Ordering::SeqCst);
                    gate.acquire().await.unwrap().forget();
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                        "ok",
                    ))))
                }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(streams)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        }
    })
    .await
}

fn cluster(up: SocketAddr, h2_options: &str) -> String {
    format!(
        r#"  - name: h2
    connect_timeout: 1s
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{ {h2_options} }} }}
    load_assignment:
      cluster_name: h2
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}
"#,
        up.port()
    )
}

/// Sends `n` concurrent requests over one HTTP/2 client connection (so one worker of
/// the proxy takes them all), waits until the upstream holds all of them, and returns
/// how many upstream connections carry them.
async fn connections_for(envoy: Option<&str>, streams: u32, h2_options: &str, n: usize) -> usize {
    let gate = Arc::new(Semaphore::new(0));
    let (conns, seen) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let up = limited(streams, gate.clone(), conns.clone(), seen.clone()).await;
    let yaml = http_bootstrap(
        "              - match: { prefix: / }\n                route: { cluster: h2 }\n",
        &cluster(up, h2_options),
    );
    let proxy = match envoy {
        Some(bin) => Proxy::start_bin(bin, &yaml, &["--disable-hot-restart"]).await,
        None => Proxy::start(&yaml).await,
    };
    let stream = tokio::net::TcpStream::connect(proxy.listener("http"))
        .await
        .unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut running = Vec::new();
    for i in 0..n {
        let mut s = sender.clone();
        running.push(tokio::spawn(async move {
            let req = http::Request::get("http://test/")
                .body(Full::<Bytes>::default())
                .unwrap();
            s.send_request(req).await.unwrap().status()
        }));
        // One at a time, each once the last is at the upstream and a new connection's
        // SETTINGS have come in: Envoy (and pilotfish, as Envoy) leaves streams that
        // arrive before a new connection's SETTINGS on it, whatever the peer allows.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while seen.load(Ordering::SeqCst) < i + 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.load(Ordering::SeqCst) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: only {} of {n} requests reached the upstream over {} connections",
            if envoy.is_some() {
                "envoy"
            } else {
                "pilotfish"
            },
            seen.load(Ordering::SeqCst),
            conns.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let used = conns.load(Ordering::SeqCst);
    gate.add_permits(n);
    for r in running {
        assert_eq!(r.await.unwrap(), 200);
    }
    used
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_fill_a_connection_to_the_peers_limit_then_another_opens() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    // The peer allows 2 streams: 5 requests need 3 connections.
    let ours = connections_for(None, 2, "", 5).await;
    let theirs = connections_for(Some(&envoy), 2, "", 5).await;
    assert_eq!((ours, theirs), (3, 3), "pilotfish left, Envoy right");
    // The cluster allows 1 stream per connection, the peer more: 3 requests, 3
    // connections.
    let ours = connections_for(None, 100, "max_concurrent_streams: 1", 3).await;
    let theirs = connections_for(Some(&envoy), 100, "max_concurrent_streams: 1", 3).await;
    assert_eq!((ours, theirs), (3, 3), "pilotfish left, Envoy right");
    // Within both limits, one connection carries them all.
    let ours = connections_for(None, 100, "", 4).await;
    let theirs = connections_for(Some(&envoy), 100, "", 4).await;
    assert_eq!((ours, theirs), (1, 1), "pilotfish left, Envoy right");
}

/// An HTTP/2 "server" that completes the preface (its SETTINGS and the ACK of the
/// client's) and then reads and ignores everything: no PING is ever answered.
async fn deaf() -> SocketAddr {
    accept_each(|mut s| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Empty SETTINGS, then SETTINGS ACK.
        let _ = s
            .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0])
            .await;
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_keepalive_ping_ends_the_connection_as_in_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let up = deaf().await;
    let yaml = http_bootstrap(
        "              - match: { prefix: / }\n                route: { cluster: h2, timeout: 10s }\n",
        &cluster(
            up,
            "connection_keepalive: { interval: 0.3s, timeout: 0.3s }",
        ),
    );
    let (ours, theirs) = start_both(&envoy, &yaml).await;
    for (p, who) in [(&theirs, "envoy"), (&ours, "pilotfish")] {
        let (status, _) = http_get(p.listener("http"), "/").await.unwrap();
        // The PING goes unanswered: the connection is closed and the request reset
        // (503), long before the route's 10 s timeout (504).
        assert_eq!(status, 503, "{who}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sent_goaway_takes_no_new_streams() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let conns = Arc::new(AtomicUsize::new(0));
    // Each connection serves one request, then shuts down gracefully (GOAWAY).
    let counted = conns.clone();
    let up = accept_each(move |stream| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let tx = std::sync::Mutex::new(Some(tx));
            let svc = hyper::service::service_fn(move |_req| {
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                        "ok",
                    ))))
                }
            });
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = rx => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    })
    .await;
    let yaml = http_bootstrap(
        "              - match: { prefix: / }\n                route: { cluster: h2 }\n",
        &cluster(up, ""),
    );
    let (ours, theirs) = start_both(&envoy, &yaml).await;
    for (p, who) in [(&theirs, "envoy"), (&ours, "pilotfish")] {
        let before = conns.load(Ordering::SeqCst);
        let mut c = KeepAlive::open(p.listener("http")).await;
        for i in 0..3 {
            assert_eq!(c.get("/").await, 200, "{who}: request {i}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            conns.load(Ordering::SeqCst) - before,
            3,
            "{who}: one connection per request"
        );
    }
}
