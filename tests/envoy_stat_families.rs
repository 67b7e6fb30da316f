//! Envoy's stat families that dashboards and pilot-agent read, beside the counters the
//! other differential tests compare: the request-time and connect-time histograms,
//! the per-class response counters and the server's memory gauges, on pilotfish and
//! Envoy 1.40 after the same requests.
mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histograms_and_server_gauges_match_envoys() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let up = Upstream::start("a").await;
    let routes = r#"              - match: { prefix: "/" }
                route: { cluster: backend }"#;
    let yaml = http_bootstrap(routes, &static_cluster("backend", &[up.addr], false));
    let (ours, theirs) = start_both(&envoy, &yaml).await;
    for p in [&ours, &theirs] {
        for i in 0..3 {
            let (status, _) = http_get(p.listener("http"), &format!("/r{i}"))
                .await
                .unwrap();
            assert_eq!(status, 200);
        }
    }
    let histograms = [
        "envoy_http_downstream_rq_time_count{envoy_http_conn_manager_prefix=\"ingress_http\"}",
        "envoy_cluster_upstream_rq_time_count{envoy_cluster_name=\"backend\"}",
    ];
    // Envoy shows histograms as of its last stats flush (every 5 s by default).
    let deadline = std::time::Instant::now() + Duration::from_secs(12);
    for sample in histograms {
        let want = ours.metric(sample).await;
        assert!(want.is_some_and(|n| n > 0), "{sample}: {want:?}");
        while theirs.metric(sample).await != want && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut samples = histograms.to_vec();
    samples.push(
        "envoy_http_downstream_rq_xx{envoy_response_code_class=\"2\",envoy_http_conn_manager_prefix=\"ingress_http\"}",
    );
    samples.push("envoy_cluster_upstream_rq_xx{envoy_response_code_class=\"2\",envoy_cluster_name=\"backend\"}");
    assert_same_samples(&ours, &theirs, &samples).await;
    // One connect time per upstream connection (how many each proxy opens depends on
    // which worker took each request: not compared).
    let connects = "envoy_cluster_upstream_cx_connect_ms_count{envoy_cluster_name=\"backend\"}";
    for (who, p) in [("pilotfish", &ours), ("Envoy", &theirs)] {
        let total = p
            .metric("envoy_cluster_upstream_cx_total{envoy_cluster_name=\"backend\"}")
            .await;
        assert!(total.is_some_and(|n| n > 0), "{who}: {total:?}");
        while p.metric(connects).await != total && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(p.metric(connects).await, total, "{who}");
    }
    // The buckets are Envoy's: the same bounds, `le` last.
    for p in [&ours, &theirs] {
        let text = p.prometheus().await;
        assert!(
            text.contains("envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix=\"ingress_http\",le=\"3600000\"} 3\n"),
            "{text}"
        );
    }
    // The allocator's figures, in bytes: values of their own, but both there.
    for sample in [
        "envoy_server_memory_allocated",
        "envoy_server_memory_heap_size",
    ] {
        for (who, p) in [("pilotfish", &ours), ("Envoy", &theirs)] {
            let v = p.metric(sample).await;
            assert!(v.is_some_and(|v| v > 0), "{who} {sample}: {v:?}");
        }
    }
}
