//! Connection and stream timeouts, differentially: the connection manager's
//! `stream_idle_timeout` (and a route's `idle_timeout` replacing it), its connection
//! `idle_timeout` and `max_connection_duration`, and tcp_proxy's `idle_timeout` and
//! `max_downstream_connection_duration`, in Envoy 1.40 and pilotfish. What is compared
//! is what the client sees (status, body, the connection closed) and the stats, never
//! how long anything took.
mod common;

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

fn http(a: SocketAddr) -> String {
    let routes = "              - match: { prefix: \"/quiet-route/\" }\n                route: { cluster: a, idle_timeout: 0s }\n              - match: { prefix: \"/\" }\n                route: { cluster: a }\n";
    let log = stdout_log("%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:PATH)%\\n");
    let hcm = format!(
        "          stream_idle_timeout: 0.3s\n          common_http_protocol_options: {{ idle_timeout: 0.5s }}\n          drain_timeout: 0.2s\n{log}"
    );
    http_bootstrap_logged(routes, &static_cluster("a", &[a], false), &hcm)
}

fn http_with_max_duration(a: SocketAddr) -> String {
    let routes =
        "              - match: { prefix: \"/\" }\n                route: { cluster: a }\n";
    let hcm = "          common_http_protocol_options: { max_connection_duration: 0.5s }\n          drain_timeout: 0.2s\n";
    http_bootstrap_logged(routes, &static_cluster("a", &[a], false), hcm)
}

fn tcp(upstream: SocketAddr, extra: &str) -> String {
    tcp_proxy_bootstrap(upstream, "t", extra)
}

/// An upstream that echoes each read and never closes.
async fn echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Echoes one line through the proxy, then waits (bounded) for the proxy to close the
/// connection; `true` when it did.
async fn closed_after_echo(proxy: SocketAddr) -> bool {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    let mut rest = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut rest)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[derive(Debug, PartialEq)]
struct Reply {
    status: u16,
    body: String,
}

async fn get(proxy: &Proxy, path: &str) -> Reply {
    let (status, body) = http_get(proxy.listener("http"), path).await.unwrap();
    Reply {
        status,
        body: if status == 200 { String::new() } else { body },
    }
}

/// An HTTP/1.1 keep-alive connection: one request, then (bounded) wait for the proxy
/// to close the idle connection. `true` when it did.
async fn idle_connection_closed(addr: SocketAddr, h2: bool) -> bool {
    let stream = TcpStream::connect(addr).await.unwrap();
    let io = TokioIo::new(stream);
    let req = || {
        Request::get(if h2 { "http://svc/" } else { "/" })
            .header("host", "svc")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    if h2 {
        let (mut s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let mut r = req();
        r.headers_mut().remove("host");
        let resp = s.send_request(r).await.unwrap();
        resp.into_body().collect().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .is_ok()
    } else {
        let (mut s, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        let conn = tokio::spawn(conn);
        let resp = s.send_request(req()).await.unwrap();
        resp.into_body().collect().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .is_ok()
    }
}

#[tokio::test]
async fn connection_manager_timeouts_match_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let a = Upstream::start("a").await;
    let yaml = http(a.addr);
    let (ours, theirs) = start_both(&envoy, &yaml).await;
    let mut diffs = Differences::default();
    // The stream idle timeout ends a request whose upstream is silent; a route's
    // `idle_timeout: 0s` turns it off; a quick answer is untouched.
    for path in ["/slow/1000", "/quiet-route/slow/1000", "/fast"] {
        diffs.check(path, get(&theirs, path).await, get(&ours, path).await);
    }
    // The connection idle timeout closes an idle keep-alive connection, HTTP/1.1 and
    // HTTP/2 (GOAWAY).
    for h2 in [false, true] {
        diffs.check(
            format!("idle connection closed (h2: {h2})"),
            idle_connection_closed(theirs.listener("http"), h2).await,
            idle_connection_closed(ours.listener("http"), h2).await,
        );
    }
    diffs.assert_none();
    same_log_and_samples(&ours, &theirs, 3, &[
        "envoy_http_downstream_rq_idle_timeout{envoy_http_conn_manager_prefix=\"ingress_http\"}",
        "envoy_http_downstream_cx_idle_timeout{envoy_http_conn_manager_prefix=\"ingress_http\"}",
    ])
    .await;
}

#[tokio::test]
async fn max_connection_duration_matches_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let a = Upstream::start("a").await;
    let yaml = http_with_max_duration(a.addr);
    let (ours, theirs) = start_both(&envoy, &yaml).await;
    for h2 in [false, true] {
        assert!(idle_connection_closed(theirs.listener("http"), h2).await);
        assert!(
            idle_connection_closed(ours.listener("http"), h2).await,
            "h2: {h2}"
        );
    }
    assert_same_samples(
        &ours,
        &theirs,
        &["envoy_http_downstream_cx_max_duration_reached{envoy_http_conn_manager_prefix=\"ingress_http\"}"],
    )
    .await;
}

#[tokio::test]
async fn tcp_proxy_timeouts_match_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let up = echo().await;
    for (extra, stat) in [
        ("          idle_timeout: 0.3s", "idle_timeout"),
        (
            "          max_downstream_connection_duration: 0.3s",
            "max_downstream_connection_duration",
        ),
    ] {
        let yaml = tcp(up, extra);
        let (ours, theirs) = start_both(&envoy, &yaml).await;
        assert!(closed_after_echo(theirs.listener("tcp")).await, "{stat}");
        assert!(closed_after_echo(ours.listener("tcp")).await, "{stat}");
        let sample = format!("envoy_tcp_{stat}{{envoy_tcp_prefix=\"t\"}}");
        assert_same_samples(&ours, &theirs, &[&sample]).await;
        assert_eq!(ours.metric(&sample).await, Some(1), "{sample}");
    }
}

/// An upstream connection that carried no request for the cluster's
/// `common_http_protocol_options.idle_timeout` is closed, HTTP/1.1 and HTTP/2; the next
/// request opens a new one.
#[tokio::test]
async fn upstream_idle_timeout_matches_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    for h2 in [false, true] {
        let a = Upstream::start("a").await;
        let routes =
            "              - match: { prefix: \"/\" }\n                route: { cluster: a }\n";
        let cluster = static_cluster("a", &[a.addr], h2);
        let cluster = if h2 {
            cluster.replace(
                "explicit_http_config:",
                "common_http_protocol_options: { idle_timeout: 0.3s }\n        explicit_http_config:",
            )
        } else {
            cluster.replace(
                "    type: STATIC\n",
                "    type: STATIC\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        common_http_protocol_options: { idle_timeout: 0.3s }\n        explicit_http_config: { http_protocol_options: {} }\n",
            )
        };
        let yaml = http_bootstrap(routes, &cluster);
        for (name, proxy) in [
            ("pilotfish", Proxy::start(&yaml).await),
            (
                "envoy",
                Proxy::start_bin(&envoy, &yaml, &["--disable-hot-restart"]).await,
            ),
        ] {
            let before = a.connections.load(std::sync::atomic::Ordering::SeqCst);
            for _ in 0..2 {
                assert_eq!(http_get(proxy.listener("http"), "/").await.unwrap().0, 200);
                proxy
                    .wait_metric(
                        "envoy_cluster_upstream_cx_active{envoy_cluster_name=\"a\"}",
                        0,
                    )
                    .await;
            }
            let sample = "envoy_cluster_upstream_cx_idle_timeout{envoy_cluster_name=\"a\"}";
            assert_eq!(proxy.metric(sample).await, Some(2), "{name} (h2: {h2})");
            let opened = a.connections.load(std::sync::atomic::Ordering::SeqCst) - before;
            assert_eq!(opened, 2, "{name} (h2: {h2}): one connection per request");
        }
    }
}

/// A route's `max_stream_duration` ends a stream still waiting for its response (504
/// `downstream duration timeout`), and `request_timeout` one whose request body is still
/// arriving (408 `request timeout`, the HTTP/1.1 connection closed); a complete request
/// and a quick answer are untouched.
#[tokio::test]
async fn stream_duration_and_request_timeout_match_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let a = Upstream::start("a").await;
    let routes = "              - match: { prefix: \"/msd/\" }\n                route: { cluster: a, max_stream_duration: { max_stream_duration: 0.3s } }\n              - match: { prefix: \"/\" }\n                route: { cluster: a }\n";
    let log = stdout_log("%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:PATH)%\\n");
    let hcm = format!("          request_timeout: 0.3s\n{log}");
    let yaml = http_bootstrap_logged(routes, &static_cluster("a", &[a.addr], false), &hcm);
    let (ours, theirs) = start_both(&envoy, &yaml).await;
    let mut diffs = Differences::default();
    for path in ["/msd/slow/1000", "/msd/fast", "/slow/500"] {
        diffs.check(path, get(&theirs, path).await, get(&ours, path).await);
    }
    diffs.check(
        "a request body still arriving",
        slow_upload(theirs.listener("http")).await,
        slow_upload(ours.listener("http")).await,
    );
    diffs.assert_none();
    same_log_and_samples(&ours, &theirs, 4, &[
        "envoy_http_downstream_rq_max_duration_reached{envoy_http_conn_manager_prefix=\"ingress_http\"}",
        "envoy_http_downstream_rq_timeout{envoy_http_conn_manager_prefix=\"ingress_http\"}",
    ])
    .await;
}

/// Sends a POST whose body stops after 3 of 10 bytes; returns the status line, the
/// body, and whether the proxy then closed the connection.
async fn slow_upload(addr: SocketAddr) -> (String, String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: svc\r\ncontent-length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let mut out = Vec::new();
    let closed = matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await,
        Ok(Ok(_) | Err(_))
    );
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.lines().next().unwrap_or("").to_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_end_at_max_connection_duration_as_in_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    for which in ["pilotfish", "envoy"] {
        let up = Upstream::start("u").await;
        let cluster = format!(
            r#"  - name: backend
    connect_timeout: 1s
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options: {{ max_connection_duration: 0.5s }}
        explicit_http_config: {{ http_protocol_options: {{}} }}
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}
"#,
            up.addr.port()
        );
        let yaml = http_bootstrap(
            "              - match: { prefix: / }\n                route: { cluster: backend }\n",
            &cluster,
        );
        let proxy = match which {
            "pilotfish" => Proxy::start(&yaml).await,
            _ => Proxy::start_bin(&envoy, &yaml, &["--disable-hot-restart"]).await,
        };
        // On one downstream connection (one worker, one pool): two requests in quick
        // succession share an upstream connection; one after its lifetime gets a new
        // one.
        let mut c = KeepAlive::open(proxy.listener("http")).await;
        for pause in [0, 0, 900] {
            tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            assert_eq!(c.get("/").await, 200, "{which}");
        }
        let conns = up.connections.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(conns, 2, "{which}: upstream connections");
        assert_eq!(
            proxy
                .metric(
                    "envoy_cluster_upstream_cx_max_duration_reached{envoy_cluster_name=\"backend\"}"
                )
                .await,
            Some(1),
            "{which}"
        );
    }
}

/// `request_headers_timeout` on HTTP/1.1, as Envoy 1.40: headers still incomplete that
/// long after their first byte get 408 `request header timeout` and the connection
/// closes (on a fresh connection and on a kept-alive one alike); an idle keep-alive
/// connection and a request whose headers are whole (its body slow) are not timed.
#[tokio::test]
async fn request_headers_timeout_matches_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let a = Upstream::start("a").await;
    let routes =
        "              - match: { prefix: \"/\" }\n                route: { cluster: a }\n";
    let log = stdout_log(
        "%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE_DETAILS% %BYTES_SENT%\\n",
    );
    let hcm = format!("          request_headers_timeout: 0.5s\n{log}");
    let yaml = http_bootstrap_logged(routes, &static_cluster("a", &[a.addr], false), &hcm);
    let (ours, theirs) = start_both(&envoy, &yaml).await;
    let mut diffs = Differences::default();
    for (tag, proxy) in [("envoy", &theirs), ("ours", &ours)] {
        let addr = proxy.listener("http");
        // Partial headers on a fresh connection.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /partial HTTP/1.1\r\nhost: svc\r\n")
            .await
            .unwrap();
        diffs.check(
            format!("{tag}: partial headers"),
            reply_of(&mut s).await,
            expected_408(),
        );
        // A kept-alive connection: idle past the timeout, then a whole request, then a
        // body slower than the timeout, then partial headers.
        let mut s = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
        s.write_all(b"POST /echo HTTP/1.1\r\nhost: svc\r\ncontent-length: 5\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
        s.write_all(b"hello").await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let first = String::from_utf8_lossy(&buf[..n]).into_owned();
        diffs.check(
            format!("{tag}: idle, then a slow body"),
            first.lines().next().unwrap_or("").to_owned(),
            "HTTP/1.1 200 OK".to_owned(),
        );
        tokio::time::sleep(Duration::from_millis(800)).await;
        s.write_all(b"GET /again HTTP/1.1\r\n").await.unwrap();
        diffs.check(
            format!("{tag}: partial on keep-alive"),
            reply_of(&mut s).await,
            expected_408(),
        );
    }
    diffs.assert_none();
    same_log_and_samples(&ours, &theirs, 3, &[
        "envoy_http_downstream_rq_header_timeout{envoy_http_conn_manager_prefix=\"ingress_http\"}",
        "envoy_http_downstream_rq_xx{envoy_response_code_class=\"4\",envoy_http_conn_manager_prefix=\"ingress_http\"}",
        "envoy_http_downstream_rq_time_count{envoy_http_conn_manager_prefix=\"ingress_http\"}",
    ])
    .await;
}

/// Status line, headers (sorted, without `date`) and body of the reply that ends the
/// connection, and whether it ended.
async fn reply_of(s: &mut TcpStream) -> (String, Vec<String>, String, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .is_ok();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap_or("").to_owned();
    let mut headers: Vec<String> = lines
        .filter(|l| !l.starts_with("date:"))
        .map(str::to_owned)
        .collect();
    headers.sort();
    (status, headers, body.to_owned(), closed)
}

fn expected_408() -> (String, Vec<String>, String, bool) {
    (
        "HTTP/1.1 408 Request Timeout".into(),
        vec![
            "connection: close".into(),
            "content-length: 22".into(),
            "content-type: text/plain".into(),
            "server: envoy".into(),
        ],
        "request header timeout".into(),
        true,
    )
}

/// The same access log lines (the last `lines` of each) and the same values of
/// `samples` in pilotfish and Envoy.
async fn same_log_and_samples(ours: &Proxy, theirs: &Proxy, lines: usize, samples: &[&str]) {
    let (want, got) = (
        theirs.stdout_lines(lines).await,
        ours.stdout_lines(lines).await,
    );
    assert_eq!(got, want, "access log lines (pilotfish left, Envoy right)");
    assert_same_samples(ours, theirs, samples).await;
}

/// The connection manager's `common_http_protocol_options.max_requests_per_connection`,
/// as Envoy 1.40: HTTP/1.1 answers the last request with `connection: close` and
/// closes; HTTP/2 drains (GOAWAY) from the last stream on and then closes.
#[tokio::test]
async fn max_requests_per_connection_matches_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let a = Upstream::start("a").await;
    let routes =
        "              - match: { prefix: \"/\" }\n                route: { cluster: a }\n";
    let hcm = "          common_http_protocol_options: { max_requests_per_connection: 2 }\n          drain_timeout: 0.3s\n";
    let yaml = http_bootstrap_logged(routes, &static_cluster("a", &[a.addr], false), hcm);
    let (ours, theirs) = start_both(&envoy, &yaml).await;
    let mut diffs = Differences::default();
    for h2 in [false, true] {
        let want = two_requests_then_closed(theirs.listener("http"), h2).await;
        assert!(want.1, "Envoy kept the connection (h2: {h2})");
        if !h2 {
            assert_eq!(want.0[1], (200, "close".to_owned()));
        }
        diffs.check(
            format!("h2: {h2}"),
            want,
            two_requests_then_closed(ours.listener("http"), h2).await,
        );
    }
    diffs.assert_none();
    assert_same_samples(
        &ours,
        &theirs,
        &["envoy_http_downstream_cx_max_requests_reached{envoy_http_conn_manager_prefix=\"ingress_http\"}"],
    )
    .await;
}

/// Two requests on one connection: their statuses and `connection` headers, and
/// whether the proxy then ended the connection (bounded wait).
async fn two_requests_then_closed(addr: SocketAddr, h2: bool) -> (Vec<(u16, String)>, bool) {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let req = || {
        let mut r = Request::get(if h2 { "http://svc/" } else { "/" })
            .body(Full::new(Bytes::new()))
            .unwrap();
        if !h2 {
            r.headers_mut().insert("host", "svc".parse().unwrap());
        }
        r
    };
    let seen = |r: &http::Response<hyper::body::Incoming>| {
        let connection = r.headers().get("connection");
        (
            r.status().as_u16(),
            connection.map_or("", |v| v.to_str().unwrap()).to_owned(),
        )
    };
    let mut got = Vec::new();
    let conn = if h2 {
        let (mut s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        for _ in 0..2 {
            let resp = s.send_request(req()).await.unwrap();
            got.push(seen(&resp));
            resp.into_body().collect().await.unwrap();
        }
        conn
    } else {
        let (mut s, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        let conn = tokio::spawn(conn);
        for _ in 0..2 {
            s.ready().await.unwrap();
            let resp = s.send_request(req()).await.unwrap();
            got.push(seen(&resp));
            resp.into_body().collect().await.unwrap();
        }
        conn
    };
    let closed = tokio::time::timeout(Duration::from_secs(8), conn)
        .await
        .is_ok();
    (got, closed)
}
