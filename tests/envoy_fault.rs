//! Fault injection, differentially: the same HCM fault filter and per-route
//! `typed_per_filter_config` in Envoy 1.40 and pilotfish; the same requests must be
//! delayed, aborted or passed the same way, with the same replies, flags and stats.
mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

/// One route to cluster `a` whose fault config is `fault` (HTTPFault fields, as YAML
/// flow-map entries).
fn route(prefix: &str, fault: &str) -> String {
    format!(
        r#"              - match: {{ prefix: "{prefix}" }}
                route: {{ cluster: a }}
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    {{ "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault, {fault} }}
"#
    )
}

fn bootstrap(a: SocketAddr) -> String {
    let always = "percentage: { numerator: 100 }";
    let routes = [
        route("/abort", &format!("abort: {{ http_status: 503, {always} }}")),
        route("/no-percentage", "abort: { http_status: 503 }"),
        route("/never", "abort: { http_status: 503, percentage: { numerator: 0 } }"),
        route("/grpc-abort", &format!("abort: {{ grpc_status: 14, {always} }}")),
        route("/by-header", &format!("abort: {{ header_abort: {{}}, {always} }}")),
        route("/delay", &format!("delay: {{ fixed_delay: 0.2s, {always} }}")),
        route(
            "/both",
            &format!(
                "delay: {{ fixed_delay: 0.1s, {always} }}, abort: {{ http_status: 418, {always} }}"
            ),
        ),
        route(
            "/other-cluster",
            &format!("upstream_cluster: b, abort: {{ http_status: 500, {always} }}"),
        ),
        route(
            "/gated",
            &format!(
                "headers: [{{ name: x-fault, present_match: true }}], abort: {{ http_status: 500, {always} }}"
            ),
        ),
        "              - match: { prefix: \"/\" }\n                route: { cluster: a }\n".to_owned(),
    ]
    .concat();
    let log = stdout_log("%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:PATH)%\\n");
    http_bootstrap_logged(&routes, &static_cluster("a", &[a], false), &log).replace(
        "          http_filters:\n",
        "          http_filters:\n          - name: envoy.filters.http.fault\n            typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault }\n",
    )
}

struct Case {
    path: &'static str,
    h2: bool,
    headers: &'static [(&'static str, &'static str)],
}

const fn get(path: &'static str, headers: &'static [(&'static str, &'static str)]) -> Case {
    Case {
        path,
        h2: false,
        headers,
    }
}

const CASES: &[Case] = &[
    get("/abort", &[]),
    get("/no-percentage", &[]),
    get("/never", &[]),
    get("/grpc-abort", &[]),
    Case {
        path: "/grpc-abort",
        h2: true,
        headers: &[("content-type", "application/grpc")],
    },
    Case {
        path: "/abort",
        h2: true,
        headers: &[("content-type", "application/grpc")],
    },
    get("/by-header", &[]),
    get("/by-header", &[("x-envoy-fault-abort-request", "429")]),
    get(
        "/by-header",
        &[
            ("x-envoy-fault-abort-request", "429"),
            ("x-envoy-fault-abort-request-percentage", "0"),
        ],
    ),
    get("/delay", &[]),
    get("/both", &[]),
    get("/other-cluster", &[]),
    get("/gated", &[]),
    get("/gated", &[("x-fault", "1")]),
];

#[derive(Debug, PartialEq)]
struct Outcome {
    status: u16,
    body: String,
    content_type: Option<String>,
    grpc_status: Option<String>,
    grpc_message: Option<String>,
    reached_upstream: bool,
}

async fn run(proxy: &Proxy, a: &Upstream, case: &Case) -> Outcome {
    let before = a.requests().len();
    let mut req = Request::post(case.path).header("host", "svc");
    for (k, v) in case.headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let (status, headers, body) = send(proxy.listener("http"), case.h2, req).await.unwrap();
    let reached_upstream = a.requests().len() > before;
    let h = |n: &str| headers.get(n).map(|v| v.to_str().unwrap().to_owned());
    Outcome {
        status: status.as_u16(),
        body: if reached_upstream {
            String::new()
        } else {
            String::from_utf8_lossy(&body).into_owned()
        },
        content_type: h("content-type").filter(|_| !reached_upstream),
        grpc_status: h("grpc-status"),
        grpc_message: h("grpc-message"),
        reached_upstream,
    }
}

#[tokio::test]
async fn fault_injection_matches_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let a = Upstream::start("a").await;
    let yaml = bootstrap(a.addr);
    let ours = Proxy::start(&yaml).await;
    let theirs = Proxy::start_bin(
        &envoy,
        &yaml,
        &["--disable-hot-restart", "--file-flush-interval-msec", "50"],
    )
    .await;
    let mut diffs = Differences::default();
    for case in CASES {
        let want = run(&theirs, &a, case).await;
        let got = run(&ours, &a, case).await;
        diffs.check(format!("{} {:?}", case.path, case.headers), want, got);
    }
    diffs.assert_none();
    // The same access-log flags (DI, FI, DI,FI) line by line...
    let (want, got) = (
        theirs.stdout_lines(CASES.len()).await,
        ours.stdout_lines(CASES.len()).await,
    );
    assert_eq!(got, want, "access log lines (pilotfish left, Envoy right)");
    // ...and the same fault stats.
    assert_same_samples(
        &ours,
        &theirs,
        &[
            "envoy_http_fault_aborts_injected{envoy_http_conn_manager_prefix=\"ingress_http\"}",
            "envoy_http_fault_delays_injected{envoy_http_conn_manager_prefix=\"ingress_http\"}",
            "envoy_http_fault_faults_overflow{envoy_http_conn_manager_prefix=\"ingress_http\"}",
            "envoy_http_fault_active_faults{envoy_http_conn_manager_prefix=\"ingress_http\"}",
        ],
    )
    .await;
}
