//! The route and connection-manager fields istiod puts on every route configuration,
//! pilotfish and Envoy 1.40 on the same bootstrap: `ignore_port_in_host_matching`,
//! `include_request_attempt_count` / `include_attempt_count_in_response`,
//! `max_grpc_timeout: 0s` (a gRPC request's `grpc-timeout` is its timeout), `decorator`,
//! `request_id_extension`, and the limit on direct response bodies.
mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

fn bootstrap(up: SocketAddr, slow: SocketAddr, max_body: Option<usize>, body_len: usize) -> String {
    let max = max_body
        .map(|m| format!("            max_direct_response_body_size_bytes: {m}\n"))
        .unwrap_or_default();
    let body = "x".repeat(body_len);
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound_0.0.0.0_9080
          request_id_extension:
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig
              use_request_id_for_trace_sampling: true
          route_config:
            name: "9080"
            validate_clusters: false
            ignore_port_in_host_matching: true
{max}            virtual_hosts:
            - name: reviews.default.svc.cluster.local:9080
              domains: [reviews.default.svc.cluster.local, reviews, 10.96.0.7]
              include_request_attempt_count: true
              include_attempt_count_in_response: true
              routes:
              - name: direct
                match: {{ prefix: /direct }}
                direct_response: {{ status: 200, body: {{ inline_string: "{body}" }} }}
              - name: slow
                match: {{ prefix: /slow }}
                route: {{ cluster: slow, timeout: 60s, max_grpc_timeout: 0s }}
              - name: default
                match: {{ prefix: / }}
                route: {{ cluster: backend, timeout: 0s, max_grpc_timeout: 0s }}
                decorator: {{ operation: "reviews.default.svc.cluster.local:9080/*" }}
            - name: allow_any
              domains: ["*"]
              routes:
              - name: allow_any
                match: {{ prefix: / }}
                direct_response: {{ status: 418 }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
{b}{s}"#,
        b = static_cluster("backend", &[up], false),
        s = static_cluster("slow", &[slow], false),
    )
}

/// An upstream that accepts and never answers.
async fn silent() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

#[tokio::test]
async fn istios_route_fields_behave_as_in_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let up = Upstream::start("reviews").await;
    let slow = silent().await;
    let yaml = bootstrap(up.addr, slow, None, 10);
    let theirs = Proxy::start_bin(&envoy, &yaml, &["--disable-hot-restart"]).await;
    let ours = Proxy::start(&yaml).await;
    let mut diff = Differences::default();
    for host in [
        "reviews:9080",
        "reviews",
        "10.96.0.7:9080",
        "REVIEWS.default.svc.cluster.local:80",
        "other:9080",
    ] {
        let mut answers = Vec::new();
        for p in [&theirs, &ours] {
            let before = up.requests().len();
            let (status, headers, _) = send(
                p.listener("http"),
                false,
                Request::get("/r")
                    .header("host", host)
                    .body(Full::<Bytes>::default())
                    .unwrap(),
            )
            .await
            .unwrap();
            let seen = up.requests().get(before).cloned();
            answers.push((
                status.as_u16(),
                headers
                    .get("x-envoy-attempt-count")
                    .map(|v| v.to_str().unwrap().to_owned()),
                seen.as_ref()
                    .and_then(|s| s.headers.get("x-envoy-attempt-count").cloned()),
                seen.as_ref()
                    .map(|s| s.headers.contains_key("x-envoy-decorator-operation")),
                seen.as_ref().map(|s| s.headers["x-request-id"].len()),
            ));
        }
        diff.check(format!("host {host}"), &answers[0], &answers[1]);
        if host == "reviews:9080" {
            // Not a vacuous agreement: the port was ignored and the attempt counted.
            assert_eq!(
                answers[1],
                (
                    200,
                    Some("1".into()),
                    Some(http::HeaderValue::from_static("1")),
                    Some(false),
                    Some(36)
                )
            );
        }
    }
    // gRPC with max_grpc_timeout 0s: grpc-timeout is the request's timeout (the route
    // says 60 s); without the header there would be none.
    for p in [&theirs, &ours] {
        let (status, headers, _) = send(
            p.listener("http"),
            true,
            Request::post("/slow/pkg.Svc/Call")
                .header("host", "reviews")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("grpc-timeout", "300m")
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await
        .unwrap();
        let grpc_status = headers
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned());
        diff.check(
            format!("grpc-timeout 300m on a 60 s route ({})", p.child.id()),
            (200, Some("14".to_owned())),
            (status.as_u16(), grpc_status),
        );
    }
    diff.assert_none();
}

/// A direct response body above `max_direct_response_body_size_bytes` (4 KiB unless
/// set) is refused by both.
#[test]
fn direct_response_bodies_have_envoys_limit() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let up: SocketAddr = "127.0.0.1:1".parse().unwrap();
    for (max, len, ok) in [
        (None, 4096, true),
        (None, 4097, false),
        (Some(8192), 5000, true),
        (Some(100), 101, false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.yaml");
        std::fs::write(&file, bootstrap(up, up, max, len)).unwrap();
        for bin in [BIN, envoy.as_str()] {
            let out = std::process::Command::new(bin)
                .args(["--mode", "validate", "-c"])
                .arg(&file)
                .output()
                .unwrap();
            assert_eq!(
                out.status.success(),
                ok,
                "{bin} max {max:?} body {len}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
