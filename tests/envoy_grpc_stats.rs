//! `envoy.filters.http.grpc_stats`, pilotfish and Envoy 1.40 on the same calls: unary
//! calls that succeed and fail, and a bidirectional stream, counted under the three
//! ways the filter names its stats (Istio's `stats_for_all_methods: false`, all
//! methods, an allowlist).
mod common;

use std::net::SocketAddr;

use common::{grpc_services::*, *};

fn bootstrap(server: SocketAddr, filter: &str) -> String {
    let routes = r#"              - match: { prefix: "/" }
                route: { cluster: grpc }"#;
    http_bootstrap(routes, &static_cluster("grpc", &[server], true)).replace(
        "          http_filters:\n",
        &format!(
            "          http_filters:\n          - name: envoy.filters.http.grpc_stats\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig\n{filter}"
        ),
    )
}

/// Three successful calls, one failed, one stream of four messages each way.
async fn traffic(p: &Proxy) {
    call_three_deny_one_stream_four(p.listener("http")).await;
}

/// The `cluster.grpc.grpc.*` stats, and their Prometheus forms.
async fn grpc_stats(p: &Proxy) -> (Vec<String>, Vec<String>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_, text) = p.admin_get("/stats").await;
        let mut flat: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("cluster.grpc.grpc."))
            .map(str::to_owned)
            .collect();
        flat.sort();
        let prom = p.prometheus().await;
        let mut prom: Vec<String> = prom
            .lines()
            .filter(|l| l.starts_with("envoy_cluster_grpc_"))
            .map(str::to_owned)
            .collect();
        prom.sort();
        // Counted when a call ends, which may be just after the client saw its end.
        if flat.iter().any(|l| l.contains("total: ")) || std::time::Instant::now() > deadline {
            return (flat, prom);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn grpc_calls_are_counted_as_envoy_counts_them() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let server = grpc_server().await;
    let mut diff = Differences::default();
    for filter in [
        // Istio's.
        "              emit_filter_state: true\n              stats_for_all_methods: false\n",
        "              stats_for_all_methods: true\n",
        "              individual_method_stats_allowlist:\n                services:\n                - name: envoy.service.auth.v3.Authorization\n                  method_names: [Check]\n",
    ] {
        let yaml = bootstrap(server, filter);
        let theirs = Proxy::start_bin(&envoy, &yaml, &["--disable-hot-restart"]).await;
        let ours = Proxy::start(&yaml).await;
        traffic(&theirs).await;
        traffic(&ours).await;
        let (e, o) = (grpc_stats(&theirs).await, grpc_stats(&ours).await);
        assert!(!e.0.is_empty(), "Envoy counted nothing for {filter}");
        diff.check(format!("flat stats with\n{filter}"), e.0, o.0);
        diff.check(format!("prometheus with\n{filter}"), e.1, o.1);
    }
    diff.assert_none();
}
