//! Active health checks against the real Envoy: HTTP, TCP and gRPC checks mark hosts as
//! Envoy does (a new host's first pass makes it healthy; `unhealthy_threshold` failures
//! take it out), the balancer skips the failing ones, and `/clusters` and the
//! `health_check.*` stats say the same as Envoy's.
mod common;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use common::*;
use http_body_util::Full;

/// An HTTP upstream named `name`: `/healthz` answers 200 while `up` holds, else 503;
/// anything else 200 with `x-upstream: name`.
async fn checked(name: &'static str, up: Arc<AtomicBool>) -> SocketAddr {
    accept_each(move |stream| {
        let up = up.clone();
        async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let up = up.clone();
                    async move {
                        let status = if req.uri().path() == "/healthz" && !up.load(Ordering::SeqCst)
                        {
                            503
                        } else {
                            200
                        };
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(status)
                                .header("x-upstream", name)
                                .body(Full::<Bytes>::default())
                                .unwrap(),
                        )
                    }
                });
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
        }
    })
    .await
}

fn cluster(name: &str, check: &str, eps: &[SocketAddr]) -> String {
    let eps: String = eps
        .iter()
        .map(|a| {
            format!(
                "\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}",
                a.port()
            )
        })
        .collect();
    format!(
        "  - name: {name}\n    connect_timeout: 1s\n    type: STATIC\n    health_checks: [{{ timeout: 1s, interval: 0.2s, no_traffic_interval: 0.2s, unhealthy_threshold: 2, healthy_threshold: 2, {check} }}]\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:{eps}\n"
    )
}

/// The `health_flags` `/clusters` gives the host on `port` of `cluster`.
async fn flags(p: &Proxy, cluster: &str, port: u16) -> String {
    let text = p.admin_get("/clusters").await.1;
    text.lines()
        .find(|l| {
            l.starts_with(&format!("{cluster}::"))
                && l.contains(&format!(":{port}::health_flags::"))
        })
        .map(|l| l.rsplit("::").next().unwrap().to_owned())
        .unwrap_or_default()
}

async fn wait_flags(p: &Proxy, cluster: &str, port: u16, want: &str, who: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = flags(p, cluster, port).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{who}: {cluster} host {port} stayed `{got}`, want `{want}`"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_hosts_out_and_back_as_envoy_does() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let (a_up, b_up) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicBool::new(false)),
    );
    let a = checked("a", a_up.clone()).await;
    let b = checked("b", b_up.clone()).await;
    // A TCP check that sends "ping" and wants "pong", against a responder.
    let pong = accept_each(|mut s| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = [0u8; 4];
        if s.read_exact(&mut buf).await.is_ok() && &buf == b"ping" {
            let _ = s.write_all(b"..pong..").await;
        }
    })
    .await;
    let silent = accept_each(|_s| async move {}).await;
    let clusters = [
        cluster("web", "http_health_check: { path: /healthz }", &[a, b]),
        cluster(
            "tcp",
            "tcp_health_check: { send: { text: \"70696e67\" }, receive: [{ text: \"706f6e67\" }] }",
            &[pong, silent],
        ),
    ]
    .concat();
    let yaml = http_bootstrap(
        "              - match: { prefix: / }\n                route: { cluster: web }\n",
        &clusters,
    );
    let (ours, theirs) = start_both(&envoy, &yaml).await;
    for (p, who) in [(&theirs, "envoy"), (&ours, "pilotfish")] {
        // The first round: a passes, b fails; the TCP responder passes, the silent one not.
        wait_flags(p, "web", a.port(), "healthy", who).await;
        wait_flags(p, "web", b.port(), "/failed_active_hc", who).await;
        wait_flags(p, "tcp", pong.port(), "healthy", who).await;
        wait_flags(p, "tcp", silent.port(), "/failed_active_hc", who).await;
        let addr = p.listener("http");
        for _ in 0..10 {
            let (status, h, _) = send(
                addr,
                false,
                http::Request::get("/")
                    .header("host", "test")
                    .body(Full::<Bytes>::default())
                    .unwrap(),
            )
            .await
            .unwrap();
            assert_eq!(status, 200, "{who}");
            assert_eq!(
                h.get("x-upstream").unwrap(),
                "a",
                "{who}: routed to a failing host"
            );
        }
    }
    // b recovers (two passes), a starts failing (two failures): both proxies follow.
    b_up.store(true, Ordering::SeqCst);
    a_up.store(false, Ordering::SeqCst);
    for (p, who) in [(&theirs, "envoy"), (&ours, "pilotfish")] {
        wait_flags(p, "web", b.port(), "healthy", who).await;
        wait_flags(p, "web", a.port(), "/failed_active_hc", who).await;
        let healthy = p
            .metric("envoy_cluster_membership_healthy{envoy_cluster_name=\"web\"}")
            .await;
        assert_eq!(healthy, Some(1), "{who}");
        for stat in ["attempt", "success", "failure"] {
            let v = p
                .metric(&format!(
                    "envoy_cluster_health_check_{stat}{{envoy_cluster_name=\"web\"}}"
                ))
                .await;
            assert!(v.unwrap_or(0) > 0, "{who}: health_check.{stat} {v:?}");
        }
    }
}

/// A gRPC server whose health service answers `status` (1 SERVING, 2 NOT_SERVING).
async fn grpc_health(status: u8) -> SocketAddr {
    accept_each(move |stream| async move {
        let svc = hyper::service::service_fn(
            move |_req: http::Request<hyper::body::Incoming>| async move {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().unwrap());
                let frames = vec![
                    Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(vec![
                        0, 0, 0, 0, 2, 0x08, status,
                    ]))),
                    Ok(hyper::body::Frame::trailers(trailers)),
                ];
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(http_body_util::StreamBody::new(futures_util::stream::iter(
                            frames,
                        )))
                        .unwrap(),
                )
            },
        );
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
            .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_checks_read_the_serving_status() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let serving = grpc_health(1).await;
    let not = grpc_health(2).await;
    let mut c = cluster(
        "grpc",
        "grpc_health_check: { service_name: reviews }",
        &[serving, not],
    );
    c.push_str(
        "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: { http2_protocol_options: {} }\n",
    );
    let yaml = http_bootstrap(
        "              - match: { prefix: / }\n                route: { cluster: grpc }\n",
        &c,
    );
    let (ours, theirs) = start_both(&envoy, &yaml).await;
    for (p, who) in [(&theirs, "envoy"), (&ours, "pilotfish")] {
        wait_flags(p, "grpc", serving.port(), "healthy", who).await;
        wait_flags(p, "grpc", not.port(), "/failed_active_hc", who).await;
    }
}
