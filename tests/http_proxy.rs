//! HTTP proxying end to end on real sockets: keep-alive, chunked bodies, HTTP/2 prior
//! knowledge on both sides, HTTP/1.1 <-> HTTP/2 translation, and Envoy's local replies.
mod common;

use std::{sync::atomic::Ordering, time::Duration};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

async fn proxy_to(up: &Upstream, h2_upstream: bool) -> Proxy {
    let routes = r#"              - match: { prefix: "/" }
                route: { cluster: backend }"#;
    Proxy::start(&http_bootstrap(
        routes,
        &static_cluster("backend", &[up.addr], h2_upstream),
    ))
    .await
}

/// One HTTP/1.1 keep-alive client connection to the proxy's `http` listener.
async fn h1_client<B>(proxy: &Proxy) -> hyper::client::conn::http1::SendRequest<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(proxy.listener("http")).await.unwrap();
    let (client, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test]
async fn http1_keep_alive_reuses_connections_on_both_sides() {
    let up = Upstream::start("a").await;
    let proxy = proxy_to(&up, false).await;
    let mut client = h1_client(&proxy).await;
    for i in 0..20 {
        client.ready().await.unwrap();
        let req = Request::post(format!("/echo/{i}"))
            .header("host", "svc.local")
            .body(Full::new(Bytes::from(format!("hello {i}"))))
            .unwrap();
        let resp = client.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-upstream"], "a");
        assert_eq!(resp.headers()["server"], "envoy");
        assert!(resp.headers().contains_key("x-envoy-upstream-service-time"));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("hello {i}"));
    }
    // One downstream connection carried all 20 requests, and so did one upstream one.
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    let seen = up.requests();
    assert_eq!(seen.len(), 20);
    assert_eq!(seen[3].path, "/echo/3");
    assert_eq!(seen[3].authority, "svc.local");
    assert_eq!(seen[3].version, Version::HTTP_11);
    assert_eq!(seen[3].headers["x-forwarded-proto"], "http");
    assert_eq!(seen[3].headers["x-envoy-expected-rq-timeout-ms"], "15000");
    assert_eq!(seen[3].headers["x-request-id"].len(), 36);
}

/// A response without a body (HEAD, or an empty one) hands its upstream connection
/// back to the pool as well: the next request reuses it.
#[tokio::test]
async fn bodiless_responses_keep_the_upstream_connection() {
    let up = Upstream::start("a").await;
    let proxy = proxy_to(&up, false).await;
    let mut client = h1_client(&proxy).await;
    for i in 0..10 {
        client.ready().await.unwrap();
        let method = if i % 2 == 0 { "HEAD" } else { "POST" };
        let req = Request::builder()
            .method(method)
            .uri(format!("/echo/{i}"))
            .header("host", "svc.local")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = client.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body.is_empty());
    }
    assert_eq!(up.requests().len(), 10);
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn chunked_bodies_stream_both_ways() {
    let up = Upstream::start("a").await;
    let proxy = proxy_to(&up, false).await;
    // Request body without content-length: sent chunked.
    let chunks = (0..50)
        .map(|i| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(format!("part{i},")))));
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let mut client = h1_client(&proxy).await;
    let resp = client
        .send_request(
            Request::post("/upload")
                .header("host", "x")
                .body(body)
                .unwrap(),
        )
        .await
        .unwrap();
    let want: String = (0..50).map(|i| format!("part{i},")).collect();
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), want);
    assert_eq!(up.requests()[0].headers["transfer-encoding"], "chunked");

    // Chunked response.
    let (status, headers, body) = send(
        proxy.listener("http"),
        false,
        Request::get("/chunked/100")
            .header("host", "x")
            .body(Full::default())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers["transfer-encoding"], "chunked");
    let want: String = (0..100).map(|i| format!("chunk-{i};")).collect();
    assert_eq!(body, want);
}

#[tokio::test]
async fn http2_prior_knowledge_downstream_and_upstream() {
    let up = Upstream::start("a").await;
    let proxy = proxy_to(&up, true).await;
    let (status, headers, body) = send(
        proxy.listener("http"),
        true,
        Request::post("http://grpc.svc:8080/x?y=1")
            .body(Full::new(Bytes::from("h2 body")))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "h2 body");
    assert_eq!(headers["x-seen-version"], "HTTP/2.0");
    let seen = &up.requests()[0];
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.authority, "grpc.svc:8080");
    assert_eq!(seen.path, "/x?y=1");
}

#[tokio::test]
async fn http1_downstream_to_http2_upstream() {
    let up = Upstream::start("a").await;
    let proxy = proxy_to(&up, true).await;
    for _ in 0..5 {
        let (status, headers, body) = send(
            proxy.listener("http"),
            false,
            Request::post("/translate")
                .header("host", "h1.example:81")
                .header("connection", "keep-alive, x-hop")
                .header("x-hop", "drop me")
                .body(Full::new(Bytes::from("up to h2")))
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, "up to h2");
        assert_eq!(headers["x-seen-version"], "HTTP/2.0");
    }
    let seen = &up.requests()[0];
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.authority, "h1.example:81");
    assert!(
        !seen.headers.contains_key("x-hop"),
        "hop-by-hop header named in connection was forwarded"
    );
    assert!(!seen.headers.contains_key("connection"));
    // Five downstream connections share one multiplexed upstream connection per worker
    // (two here), as in Envoy.
    let upstream = up.connections.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&upstream),
        "{upstream} upstream connections"
    );
}

#[tokio::test]
async fn http2_downstream_to_http1_upstream_with_trailers_dropped_cleanly() {
    let up = Upstream::start("a").await;
    let proxy = proxy_to(&up, false).await;
    let (status, headers, body) = send(
        proxy.listener("http"),
        true,
        Request::post("http://h2.example/down")
            .body(Full::new(Bytes::from("down to h1")))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "down to h1");
    assert_eq!(headers["x-seen-version"], "HTTP/1.1");
    let seen = &up.requests()[0];
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.authority, "h2.example");

    // Trailers from an HTTP/2 upstream reach an HTTP/2 client.
    let up2 = Upstream::start("b").await;
    let proxy2 = proxy_to(&up2, true).await;
    let stream = TcpStream::connect(proxy2.listener("http")).await.unwrap();
    let (mut client, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let resp = client
        .send_request(
            Request::get("http://t/trailers")
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["x-trailer"], "done");
    assert_eq!(collected.to_bytes(), "body");
}

#[tokio::test]
async fn local_replies_match_envoy() {
    let up = Upstream::start("a").await;
    // A port with nothing listening: bind, note it, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let routes = r#"              - match: { prefix: "/refused" }
                route: { cluster: refused }
              - match: { prefix: "/empty" }
                route: { cluster: empty }
              - match: { prefix: "/slow" }
                route: { cluster: backend, timeout: 0.3s }
              - match: { path: "/unlimited/slow/400" }
                route: { cluster: backend, timeout: 0s }"#;
    let clusters = format!(
        "{}{}  - name: empty\n    connect_timeout: 1s\n",
        static_cluster("backend", &[up.addr], false),
        static_cluster("refused", &[dead], false)
    );
    let proxy = Proxy::start(&http_bootstrap(routes, &clusters)).await;
    let addr = proxy.listener("http");
    let get = |path: &'static str| async move {
        send(
            addr,
            false,
            Request::get(path)
                .header("host", "x")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap()
    };

    let (status, headers, body) = get("/nothing").await;
    assert_eq!((status, body.len()), (StatusCode::NOT_FOUND, 0));
    assert_eq!(headers["content-length"], "0");

    let (status, headers, body) = get("/empty").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "no healthy upstream");
    assert_eq!(headers["content-type"], "text/plain");

    let (status, _, body) = get("/refused").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
    );

    let (status, _, body) = get("/slow/3000").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body, "upstream request timeout");

    // timeout: 0s disables the route timeout.
    let (status, _, body) = get("/unlimited/slow/400").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"slow done"[..]));

    let stats = proxy.prometheus().await;
    for line in [
        "envoy_http_no_route{envoy_http_conn_manager_prefix=\"ingress_http\"} 1",
        "envoy_cluster_upstream_cx_none_healthy{envoy_cluster_name=\"empty\"} 1",
        "envoy_cluster_upstream_rq{envoy_response_code=\"503\",envoy_cluster_name=\"empty\"} 1",
        "envoy_cluster_upstream_cx_connect_fail{envoy_cluster_name=\"refused\"} 1",
        "envoy_cluster_upstream_rq{envoy_response_code=\"503\",envoy_cluster_name=\"refused\"} 1",
        "envoy_cluster_upstream_rq_timeout{envoy_cluster_name=\"backend\"} 1",
        "envoy_cluster_upstream_rq{envoy_response_code=\"504\",envoy_cluster_name=\"backend\"} 1",
        "envoy_http_downstream_rq_xx{envoy_response_code_class=\"4\",envoy_http_conn_manager_prefix=\"ingress_http\"} 1",
        "envoy_http_downstream_rq_xx{envoy_response_code_class=\"5\",envoy_http_conn_manager_prefix=\"ingress_http\"} 3",
    ] {
        assert!(stats.contains(line), "missing `{line}` in:\n{stats}");
    }
}

#[tokio::test]
async fn upstream_reset_before_headers_is_503_uc() {
    // An upstream that accepts and closes at once.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            drop(s);
        }
    });
    let routes = r#"              - match: { prefix: "/" }
                route: { cluster: closer }"#;
    let proxy = Proxy::start(&http_bootstrap(
        routes,
        &static_cluster("closer", &[addr], false),
    ))
    .await;
    let (status, _, body) = send(
        proxy.listener("http"),
        false,
        Request::get("/")
            .header("host", "x")
            .body(Full::default())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
    );
}

#[tokio::test]
async fn round_robin_spreads_requests_over_static_endpoints() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let routes = r#"              - match: { prefix: "/" }
                route: { cluster: both }"#;
    let proxy = Proxy::start(&http_bootstrap(
        routes,
        &static_cluster("both", &[a.addr, b.addr], false),
    ))
    .await;
    for _ in 0..10 {
        let (status, _, _) = send(
            proxy.listener("http"),
            false,
            Request::get("/")
                .header("host", "x")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(status, 200);
    }
    assert_eq!(a.requests().len(), 5);
    assert_eq!(b.requests().len(), 5);
}

#[tokio::test]
async fn strict_dns_cluster_resolves_names() {
    let up = Upstream::start("dns").await;
    let routes = r#"              - match: { prefix: "/" }
                route: { cluster: named }"#;
    let cluster = format!(
        "  - name: named\n    type: STRICT_DNS\n    dns_lookup_family: V4_ONLY\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: named\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: localhost, port_value: {} }} }} }}\n",
        up.addr.port()
    );
    let proxy = Proxy::start(&http_bootstrap(routes, &cluster)).await;
    let (status, headers, _) = send(
        proxy.listener("http"),
        false,
        Request::get("/")
            .header("host", "x")
            .body(Full::default())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers["x-upstream"], "dns");
    let _ = Duration::from_secs(0);
}

#[tokio::test]
async fn access_logs_in_envoy_default_and_json_formats() {
    let up = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let text_path = dir.path().join("access.log");
    let json_path = dir.path().join("access.json");
    let routes = r#"              - match: { prefix: "/empty" }
                route: { cluster: empty }
              - match: { prefix: "/" }
                route: { cluster: backend }"#;
    let logs = format!(
        r#"          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {}
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {}
              log_format:
                json_format:
                  code: "%RESPONSE_CODE%"
                  flags: "%RESPONSE_FLAGS%"
                  cluster: "%UPSTREAM_CLUSTER%"
                  upstream: "%UPSTREAM_HOST%"
                  bytes: "%BYTES_RECEIVED%/%BYTES_SENT%"
"#,
        text_path.display(),
        json_path.display()
    );
    let clusters = format!(
        "{}  - name: empty\n    connect_timeout: 1s\n",
        static_cluster("backend", &[up.addr], false)
    );
    let proxy = Proxy::start(&http_bootstrap_logged(routes, &clusters, &logs)).await;
    let addr = proxy.listener("http");
    let req = |path: &str, body: &'static str| {
        Request::post(path)
            .header("host", "logged.example")
            .header("user-agent", "test-agent")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    send(addr, false, req("/ok", "12345")).await.unwrap();
    send(addr, false, req("/empty", "")).await.unwrap();

    let lines = wait_lines(&text_path, 2).await;
    // Envoy's default format: [time] "METHOD PATH PROTOCOL" CODE FLAGS RX TX DURATION UPSTREAM_TIME "XFF" "UA" "ID" "AUTHORITY" "UPSTREAM_HOST"
    let ok = &lines[0];
    assert!(
        ok.starts_with('[') && ok.contains("] \"POST /ok HTTP/1.1\" 200 - 5 5 "),
        "{ok}"
    );
    assert!(ok.contains("\"-\" \"test-agent\" \""), "{ok}");
    assert!(
        ok.ends_with(&format!("\"logged.example\" \"{}\"", up.addr)),
        "{ok}"
    );
    let uh = &lines[1];
    assert!(uh.contains("\"POST /empty HTTP/1.1\" 503 UH 0 19 "), "{uh}");
    assert!(uh.ends_with("\"logged.example\" \"-\""), "{uh}");

    let json = wait_lines(&json_path, 2).await;
    let first: serde_json::Value = serde_json::from_str(&json[0]).unwrap();
    assert_eq!(first["code"], 200);
    assert_eq!(first["flags"], "-");
    assert_eq!(first["cluster"], "backend");
    assert_eq!(first["bytes"], "5/5");
    let second: serde_json::Value = serde_json::from_str(&json[1]).unwrap();
    assert_eq!(
        (second["code"].as_u64(), second["flags"].as_str()),
        (Some(503), Some("UH"))
    );
    assert_eq!(second["upstream"], serde_json::Value::Null);
}

async fn wait_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    for _ in 0..250 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} did not get {n} lines", path.display());
}

#[tokio::test]
async fn listener_and_http_stats_after_known_traffic() {
    let up = Upstream::start("a").await;
    let proxy = proxy_to(&up, false).await;
    for _ in 0..3 {
        let stream = TcpStream::connect(proxy.listener("http")).await.unwrap();
        let (mut client, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        for _ in 0..2 {
            client.ready().await.unwrap();
            let resp = client
                .send_request(
                    Request::get("/")
                        .header("host", "x")
                        .body(Full::<Bytes>::default())
                        .unwrap(),
                )
                .await
                .unwrap();
            resp.into_body().collect().await.unwrap();
        }
    }
    proxy
        .wait_metric(
            "envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix=\"ingress_http\"}",
            6,
        )
        .await;
    proxy
        .wait_metric(
            "envoy_http_downstream_cx_total{envoy_http_conn_manager_prefix=\"ingress_http\"}",
            3,
        )
        .await;
    proxy.wait_metric("envoy_http_downstream_rq_xx{envoy_response_code_class=\"2\",envoy_http_conn_manager_prefix=\"ingress_http\"}", 6).await;
    proxy
        .wait_metric(
            "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"backend\"}",
            6,
        )
        .await;
    proxy
        .wait_metric(
            "envoy_cluster_upstream_rq{envoy_response_code=\"200\",envoy_cluster_name=\"backend\"}",
            6,
        )
        .await;
    // Six sequential requests reuse upstream connections; a connection handed back to
    // the pool a moment after the next request starts may add one more under load.
    let total = proxy
        .metric("envoy_cluster_upstream_cx_total{envoy_cluster_name=\"backend\"}")
        .await
        .unwrap();
    assert!(
        (1..=3).contains(&total),
        "{total} upstream connections for 6 requests"
    );
    let active = proxy
        .metric("envoy_cluster_upstream_cx_active{envoy_cluster_name=\"backend\"}")
        .await
        .unwrap();
    assert!((1..=total).contains(&active), "{active} active of {total}");
    let text = proxy.admin_get("/stats").await.1;
    assert!(
        text.contains("cluster.backend.upstream_rq_200: 6\n"),
        "{text}"
    );
    assert!(
        text.contains("http.ingress_http.downstream_rq_total: 6\n"),
        "{text}"
    );
    let prom = proxy.prometheus().await;
    assert!(
        prom.contains("# TYPE envoy_cluster_upstream_rq counter\n"),
        "{prom}"
    );
    assert!(
        prom.contains(
            "envoy_listener_downstream_cx_total{envoy_listener_address=\"127.0.0.1_0\"} 3"
        ),
        "{prom}"
    );
}

/// `max_requests_per_connection` (the deprecated cluster field Istio's bootstrap sets,
/// and `common_http_protocol_options`): an upstream connection carries at most that
/// many requests, HTTP/1.1 and HTTP/2 alike.
#[tokio::test]
async fn upstream_connections_carry_at_most_max_requests_per_connection() {
    for (h2, limit, field) in [
        (false, 1, "    max_requests_per_connection: 1\n"),
        (
            false,
            3,
            "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        common_http_protocol_options: { max_requests_per_connection: 3 }\n        explicit_http_config: { http_protocol_options: {} }\n",
        ),
        (
            true,
            2,
            "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        common_http_protocol_options: { max_requests_per_connection: 2 }\n        explicit_http_config: { http2_protocol_options: {} }\n",
        ),
    ] {
        let up = Upstream::start("a").await;
        let routes = r#"              - match: { prefix: "/" }
                route: { cluster: backend }"#;
        let cluster = static_cluster("backend", &[up.addr], false)
            .replace("    type: STATIC\n", &format!("    type: STATIC\n{field}"));
        let proxy = Proxy::start(&http_bootstrap(routes, &cluster)).await;
        let mut client = h1_client(&proxy).await;
        for i in 0..6 {
            client.ready().await.unwrap();
            let resp = client
                .send_request(
                    Request::get(format!("/echo/{i}"))
                        .header("host", "svc.local")
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap();
        }
        assert_eq!(
            up.connections.load(Ordering::SeqCst),
            6 / limit,
            "h2 {h2}, limit {limit}"
        );
        if h2 {
            assert!(up.requests().iter().all(|r| r.version == Version::HTTP_2));
        }
    }
}

/// Access-log lines wait for Envoy's flush interval (10 s by default), or 64 KiB, and
/// those still waiting are written when the process exits on SIGTERM, as Envoy's.
#[tokio::test]
async fn access_log_lines_still_buffered_are_written_at_exit() {
    let up = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let logs = format!(
        "          access_log: [{{ name: envoy.access_loggers.file, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: {} }} }}]\n",
        path.display()
    );
    let routes =
        "              - match: { prefix: \"/\" }\n                route: { cluster: backend }";
    let mut proxy = Proxy::start_with(
        &http_bootstrap_logged(routes, &static_cluster("backend", &[up.addr], false), &logs),
        &["--file-flush-interval-msec", "600000"],
    )
    .await;
    let addr = proxy.listener("http");
    for _ in 0..3 {
        send(
            addr,
            false,
            Request::get("/held")
                .header("host", "x")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&path).unwrap_or_default(),
        "",
        "nothing written before the interval"
    );
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    proxy
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("pilotfish exits on SIGTERM");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("\"GET /held HTTP/1.1\" 200"))
            .count(),
        3,
        "{text}"
    );
}
