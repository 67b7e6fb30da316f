//! Circuit breaking and outlier ejection against the real Envoy: Istio's bookinfo
//! circuit-breaking walkthrough (`maxConnections: 1`, `http1MaxPendingRequests: 1`,
//! `maxRequestsPerConnection: 1`) overflows with 503 `UO` and `x-envoy-overloaded`,
//! counted where Envoy counts it; a failing endpoint is ejected after
//! `consecutive_5xx` failures and gets nothing more.
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
use http::Request;
use http_body_util::Full;
use tokio::sync::Semaphore;

/// An upstream that holds every request until the test lets it go (one permit per
/// request), answering 200 `held`; counts the requests it has seen.
async fn holding(gate: Arc<Semaphore>, seen: Arc<AtomicUsize>) -> SocketAddr {
    accept_each(move |stream| {
        let (gate, seen) = (gate.clone(), seen.clone());
        async move {
            let svc = hyper::service::service_fn(move |_req| {
                let (gate, seen) = (gate.clone(), seen.clone());
                async move {
                    seen.fetch_add(1, Ordering::SeqCst);
                    gate.acquire().await.unwrap().forget();
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                        "held",
                    ))))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        }
    })
    .await
}

fn bookinfo_cluster(up: SocketAddr) -> String {
    format!(
        r#"  - name: reviews
    connect_timeout: 1s
    type: STATIC
    circuit_breakers: {{ thresholds: [{{ max_connections: 1, max_pending_requests: 1, max_requests: 4294967295, max_retries: 4294967295, track_remaining: true }}] }}
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options: {{ max_requests_per_connection: 1 }}
        explicit_http_config: {{ http_protocol_options: {{}} }}
    load_assignment:
      cluster_name: reviews
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}
"#,
        up.port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_circuit_breaking_overflows_as_envoy_does() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    for which in ["pilotfish", "envoy"] {
        let gate = Arc::new(Semaphore::new(0));
        let seen = Arc::new(AtomicUsize::new(0));
        let up = holding(gate.clone(), seen.clone()).await;
        let yaml = http_bootstrap_logged(
            "              - match: { prefix: / }\n                route: { cluster: reviews }\n",
            &bookinfo_cluster(up),
            &stdout_log("%RESPONSE_CODE% %RESPONSE_FLAGS%\\n"),
        );
        let proxy = match which {
            "pilotfish" => Proxy::start(&yaml).await,
            _ => {
                Proxy::start_bin(
                    &envoy,
                    &yaml,
                    &["--disable-hot-restart", "--file-flush-interval-msec", "50"],
                )
                .await
            }
        };
        let addr = proxy.listener("http");
        let clients = 6;
        let mut running = Vec::new();
        for _ in 0..clients {
            running.push(tokio::spawn(async move {
                send(
                    addr,
                    false,
                    Request::get("/")
                        .header("host", "test")
                        .body(Full::<Bytes>::default())
                        .unwrap(),
                )
                .await
                .unwrap()
            }));
        }
        // Every client is either at the upstream, pending, or already answered 503.
        let overflow = "envoy_cluster_upstream_rq_pending_overflow{envoy_cluster_name=\"reviews\"}";
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let over = proxy.metric(overflow).await.unwrap_or(0) as usize;
            let pending = proxy
                .metric("envoy_cluster_upstream_rq_pending_active{envoy_cluster_name=\"reviews\"}")
                .await
                .unwrap_or(0) as usize;
            if over + pending + seen.load(Ordering::SeqCst) == clients {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{which}: clients never settled"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        gate.add_permits(clients);
        let mut ok = 0;
        let mut overloaded = 0;
        for r in running {
            let (status, headers, body) = r.await.unwrap();
            match status.as_u16() {
                200 => ok += 1,
                503 => {
                    overloaded += 1;
                    assert_eq!(
                        headers
                            .get("x-envoy-overloaded")
                            .map(|v| v.to_str().unwrap()),
                        Some("true"),
                        "{which}"
                    );
                    assert_eq!(
                        body,
                        "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                        "{which}"
                    );
                }
                s => panic!("{which}: status {s}"),
            }
        }
        // At most one connection per worker (2) plus one pending get through.
        assert!(
            overloaded >= clients - 3,
            "{which}: only {overloaded} overflowed"
        );
        assert!(ok >= 1, "{which}");
        assert_eq!(
            proxy.metric(overflow).await,
            Some(overloaded as i64),
            "{which}: overflows counted"
        );
        let lines = proxy.stdout_lines(clients).await;
        let uo = lines.iter().filter(|l| l.as_str() == "503 UO").count();
        assert_eq!(uo, overloaded, "{which}: {lines:?}");
        let pending_total = proxy
            .metric("envoy_cluster_upstream_rq_pending_total{envoy_cluster_name=\"reviews\"}")
            .await
            .unwrap_or(0);
        eprintln!(
            "{which}: ok {ok} overflow {overloaded} pending_total {pending_total} cx_overflow {:?}",
            proxy
                .metric("envoy_cluster_upstream_cx_overflow{envoy_cluster_name=\"reviews\"}")
                .await
        );
        assert!(pending_total >= 1, "{which}: upstream_rq_pending_total");
        for gauge in [
            "envoy_cluster_circuit_breakers_default_cx_open{envoy_cluster_name=\"reviews\"}",
            "envoy_cluster_circuit_breakers_default_rq_pending_open{envoy_cluster_name=\"reviews\"}",
        ] {
            assert!(
                proxy.metric(gauge).await.is_some(),
                "{which}: {gauge} missing"
            );
        }
        assert!(
            proxy
                .metric("envoy_cluster_circuit_breakers_default_remaining_pending{envoy_cluster_name=\"reviews\"}")
                .await
                .is_some(),
            "{which}: remaining_pending missing with track_remaining"
        );
    }
}

/// An upstream that answers every request with `status`.
async fn answering(status: u16) -> SocketAddr {
    accept_each(move |stream| async move {
        let svc = hyper::service::service_fn(move |_req| async move {
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::from(format!("{status}"))))
                    .unwrap(),
            )
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
            .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_after_consecutive_5xx_as_in_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let bad = answering(503).await;
    let good = answering(200).await;
    let dir = tempfile_dir();
    let events = dir.join("outlier.log");
    // svc: one failing and one healthy endpoint, any share may be ejected. pair: both
    // failing, Envoy's default max_ejection_percent (10): none may go.
    let bad2 = answering(503).await;
    let cluster = outlier_cluster("svc", ", max_ejection_percent: 100", &[bad, good]);
    let pair = outlier_cluster("pair", "", &[bad, bad2]);
    let mut yaml = http_bootstrap(
        "              - match: { prefix: /pair }\n                route: { cluster: pair }\n              - match: { prefix: / }\n                route: { cluster: svc }\n",
        &[cluster, pair].concat(),
    );
    yaml.push_str(&format!(
        "cluster_manager: {{ outlier_detection: {{ event_log_path: {} }} }}\n",
        events.display()
    ));
    let (ours, theirs) = start_both(&envoy, &yaml).await;
    let mut diff = Differences::default();
    let mut seqs = Vec::new();
    for proxy in [&theirs, &ours] {
        let addr = proxy.listener("http");
        let mut seq = Vec::new();
        for _ in 0..16 {
            let (status, _) = http_get(addr, "/").await.unwrap();
            seq.push(status);
            // Envoy ejects on its main thread: give it the moment it takes.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seqs.push(seq);
    }
    // On one connection, so that one worker of each proxy alternates the two hosts
    // (Envoy's round robin is per worker).
    for proxy in [&theirs, &ours] {
        let mut c = KeepAlive::open(proxy.listener("http")).await;
        for _ in 0..12 {
            assert_eq!(c.get("/pair").await, 503);
        }
    }
    for stat in [
        "ejections_active",
        "ejections_overflow",
        "ejections_detected_consecutive_5xx",
        "ejections_detected_consecutive_gateway_failure",
        "ejections_enforced_total",
    ] {
        let sample =
            format!("envoy_cluster_outlier_detection_{stat}{{envoy_cluster_name=\"pair\"}}");
        diff.check(
            &sample,
            theirs.metric(&sample).await,
            ours.metric(&sample).await,
        );
    }
    let failed = |s: &Vec<u16>| s.iter().filter(|&&c| c == 503).count();
    diff.check("503s before ejection", failed(&seqs[0]), failed(&seqs[1]));
    diff.check(
        "last 8 all 200",
        seqs[0][8..].iter().all(|&c| c == 200),
        seqs[1][8..].iter().all(|&c| c == 200),
    );
    for sample in [
        "envoy_cluster_outlier_detection_ejections_active{envoy_cluster_name=\"svc\"}",
        "envoy_cluster_outlier_detection_ejections_enforced_total{envoy_cluster_name=\"svc\"}",
        "envoy_cluster_outlier_detection_ejections_enforced_consecutive_5xx{envoy_cluster_name=\"svc\"}",
        "envoy_cluster_outlier_detection_ejections_detected_consecutive_5xx{envoy_cluster_name=\"svc\"}",
        "envoy_cluster_outlier_detection_ejections_overflow{envoy_cluster_name=\"svc\"}",
    ] {
        diff.check(
            sample,
            theirs.metric(sample).await,
            ours.metric(sample).await,
        );
    }
    let flags = |text: String| {
        text.lines()
            .filter(|l| {
                l.starts_with("svc::") && l.contains(&format!(":{}::health_flags", bad.port()))
            })
            .map(|l| l.rsplit("::").next().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    diff.check(
        "/clusters health_flags",
        flags(theirs.admin_get("/clusters").await.1),
        flags(ours.admin_get("/clusters").await.1),
    );
    diff.assert_none();
    assert_eq!(failed(&seqs[1]), 3, "{seqs:?}");
    // Both wrote an EJECT event for the failing endpoint.
    let log = std::fs::read_to_string(&events).unwrap_or_default();
    let ejects: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["action"] == "EJECT")
        .collect();
    assert_eq!(ejects.len(), 2, "{log}");
    // Field for field and in the same order, but for the time.
    let masked: Vec<String> = log
        .lines()
        .map(|l| {
            let (head, rest) = l.split_once("\"timestamp\":\"").unwrap();
            format!("{head}{}", rest.split_once('"').unwrap().1)
        })
        .collect();
    assert_eq!(masked[0], masked[1], "{log}");
    for e in &ejects {
        assert_eq!(e["type"], "CONSECUTIVE_5XX", "{log}");
        assert_eq!(e["cluster_name"], "svc", "{log}");
        assert_eq!(e["num_ejections"], 1, "{log}");
        assert_eq!(e["enforced"], true, "{log}");
    }
}

/// A STATIC cluster over `eps` with outlier detection (3 consecutive 5xx, 1 s interval,
/// 60 s ejections) plus `extra` settings.
fn outlier_cluster(name: &str, extra: &str, eps: &[SocketAddr]) -> String {
    let mut c = static_cluster(name, eps, false);
    c = c.replace(
        "    type: STATIC\n",
        &format!(
            "    type: STATIC\n    outlier_detection: {{ consecutive_5xx: 3, interval: 1s, base_ejection_time: 60s{extra} }}\n"
        ),
    );
    c
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pilotfish-outlier-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _ = std::fs::remove_file(dir.join("outlier.log"));
    dir
}
