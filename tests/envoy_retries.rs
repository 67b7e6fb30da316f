//! Retries, differentially: the same route retry policies in Envoy 1.40 and pilotfish,
//! against an upstream that fails the first attempts of each request in a chosen way
//! (a status, a reset before headers, a stall past the per-try timeout, a gRPC
//! `unavailable`, a refused connection). Both must make the same number of attempts and
//! answer the same status, body, `x-envoy-attempt-count` and access-log flags, and
//! count the same retry stats.
mod common;

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// One attempt the flaky upstream saw.
#[derive(Debug, Clone)]
struct Hit {
    upstream: &'static str,
    attempt_count: Option<String>,
    expected_timeout: Option<String>,
    /// Envoy's control headers the upstream got (other than the two above).
    envoy_headers: Vec<String>,
    body: Bytes,
}

/// Attempts per request id, shared by every flaky upstream of a test.
type Hits = Arc<Mutex<HashMap<String, Vec<Hit>>>>;

/// An upstream that fails the first `n` attempts of request `id` in the way its path
/// says, `…/<mode>/<n>/<id>`, then answers 200 with the request body:
/// - `status-<code>`: answers `<code>` (body `flaky <code>`);
/// - `reset`: drops the connection before answering;
/// - `stall`: answers only after 1 s;
/// - `grpc`: a trailers-only gRPC `unavailable` (`grpc-status: 14`);
/// - `slowfirst`: the first attempt answers `first` after 0.3 s, later ones `second`
///   after 1.5 s (with `n` ≥ 1).
async fn flaky(name: &'static str, hits: Hits) -> SocketAddr {
    accept_each(move |stream| {
        let hits = hits.clone();
        async move {
            let svc = service_fn(move |req| answer(name, hits.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        }
    })
    .await
}

type Body = BoxBody<Bytes, Infallible>;

async fn answer(
    name: &'static str,
    hits: Hits,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let path = req.uri().path().to_owned();
    let header = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
    let attempt_count = header("x-envoy-attempt-count");
    let expected_timeout = header("x-envoy-expected-rq-timeout-ms");
    let mut envoy_headers: Vec<String> = req
        .headers()
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| {
            k.starts_with("x-envoy-")
                && k != "x-envoy-attempt-count"
                && k != "x-envoy-expected-rq-timeout-ms"
        })
        .collect();
    envoy_headers.sort();
    // `early`: the first `n` attempts get 503 (with `retry-after: 5`) as soon as
    // their headers are in, before any of the body is read.
    if let [id, n, "early", _] = path.rsplitn(4, '/').collect::<Vec<_>>()[..] {
        let seen = {
            let mut all = hits.lock().unwrap();
            let list = all.entry(id.to_owned()).or_default();
            list.push(Hit {
                upstream: name,
                attempt_count: attempt_count.clone(),
                expected_timeout: expected_timeout.clone(),
                envoy_headers: envoy_headers.clone(),
                body: Bytes::new(),
            });
            list.len()
        };
        if seen <= n.parse().unwrap() {
            return Ok(Response::builder()
                .status(503)
                .header("retry-after", "5")
                .body(full("early 503"))
                .unwrap());
        }
    }
    let body = req.into_body().collect().await.unwrap().to_bytes();
    // `/<route>/<mode>/<n>/<id>`: the last three segments say what to do.
    let parts: Vec<&str> = path.rsplitn(4, '/').collect();
    let [id, n, mode, _] = parts[..] else {
        return Ok(Response::new(full(body)));
    };
    let seen = {
        let mut all = hits.lock().unwrap();
        let list = all.entry(id.to_owned()).or_default();
        list.push(Hit {
            upstream: name,
            attempt_count,
            expected_timeout,
            envoy_headers,
            body: body.clone(),
        });
        list.len()
    };
    let fail = seen <= n.parse().unwrap();
    let reply = |status: u16, text: String| {
        Response::builder()
            .status(status)
            .header("x-upstream", name)
            .body(full(text))
            .unwrap()
    };
    if !fail {
        return Ok(Response::builder()
            .header("x-upstream", name)
            .body(full(body))
            .unwrap());
    }
    match mode {
        "reset" => Err(std::io::Error::other("reset before headers")),
        "stall" => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(reply(200, "late".into()))
        }
        "slowfirst" if seen == 1 => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(reply(200, "first".into()))
        }
        "slowfirst" => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Ok(reply(200, "second".into()))
        }
        "grpc" => Ok(Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "14")
            .header("grpc-message", "try again")
            .body(full(Bytes::new()))
            .unwrap()),
        status => {
            let code: u16 = status.strip_prefix("status-").unwrap().parse().unwrap();
            Ok(reply(code, format!("flaky {code}")))
        }
    }
}

/// An HTTP/2 upstream that refuses (`REFUSED_STREAM`) the first `n` streams of request
/// `id` (`…/refuse/<n>/<id>`), then answers 200.
async fn refusing(hits: Hits) -> SocketAddr {
    accept_each(move |stream| {
        let hits = hits.clone();
        async move {
            let Ok(mut conn) = h2::server::handshake(stream).await else {
                return;
            };
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                let path = req.uri().path().to_owned();
                let parts: Vec<&str> = path.rsplitn(3, '/').collect();
                let (id, n) = (parts[0].to_owned(), parts[1].parse::<usize>().unwrap_or(0));
                let seen = {
                    let mut all = hits.lock().unwrap();
                    let list = all.entry(id).or_default();
                    list.push(Hit {
                        upstream: "refusing",
                        attempt_count: req
                            .headers()
                            .get("x-envoy-attempt-count")
                            .map(|v| v.to_str().unwrap().to_owned()),
                        expected_timeout: None,
                        envoy_headers: Vec::new(),
                        body: Bytes::new(),
                    });
                    list.len()
                };
                if seen <= n {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                } else {
                    let _ = respond.send_response(Response::new(()), true);
                }
            }
        }
    })
    .await
}

fn full(b: impl Into<Bytes>) -> Body {
    BodyExt::boxed(Full::new(b.into()))
}

/// A route whose `retry_policy` is `policy` (flow-map entries).
fn route(prefix: &str, cluster: &str, extra: &str, policy: &str) -> String {
    format!(
        "              - match: {{ prefix: \"{prefix}\" }}\n                route: {{ cluster: {cluster}{extra}, retry_policy: {{ {policy} }} }}\n"
    )
}

/// The retry policy istiod 1.30 puts on an outbound route (as in
/// tests/data/istio/productpage-1.30.json).
const ISTIO: &str = "retry_on: \"connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes\", num_retries: 2, retry_host_predicate: [{ name: envoy.retry_host_predicates.previous_hosts, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate } }], host_selection_retry_max_attempts: 5";

fn bootstrap(a: SocketAddr, b: SocketAddr, dead: SocketAddr, h2: SocketAddr) -> String {
    let routes = [
        route("/istio/", "a", "", ISTIO),
        route(
            "/istio503/",
            "a",
            "",
            &format!("{ISTIO}, retriable_status_codes: [503]"),
        ),
        route("/5xx/", "a", "", "retry_on: 5xx, num_retries: 3"),
        route("/gw/", "a", "", "retry_on: gateway-error, num_retries: 2"),
        route("/reset/", "a", "", "retry_on: reset, num_retries: 2"),
        route("/4xx/", "a", "", "retry_on: retriable-4xx"),
        route(
            "/codes/",
            "a",
            "",
            "retry_on: retriable-status-codes, retriable_status_codes: [418], num_retries: 1",
        ),
        route(
            "/pertry/",
            "a",
            "",
            "retry_on: 5xx, num_retries: 2, per_try_timeout: 0.2s",
        ),
        route(
            "/spanned/",
            "a",
            ", timeout: 0.5s",
            "retry_on: 5xx, num_retries: 5, per_try_timeout: 0.2s",
        ),
        route(
            "/grpc/",
            "a",
            "",
            "retry_on: \"unavailable,cancelled\", num_retries: 2",
        ),
        route(
            "/tryidle/",
            "a",
            "",
            "retry_on: 5xx, num_retries: 2, per_try_idle_timeout: 0.2s",
        ),
        route(
            "/hdrs/",
            "a",
            "",
            "retry_on: retriable-headers, retriable_headers: [{ name: content-length, string_match: { exact: \"9\" } }]",
        ),
        route(
            "/hedge/",
            "a",
            ", hedge_policy: { hedge_on_per_try_timeout: true }",
            "retry_on: 5xx, num_retries: 1, per_try_timeout: 0.1s",
        ),
        route(
            "/nohedge/",
            "a",
            "",
            "retry_on: 5xx, num_retries: 1, per_try_timeout: 0.1s",
        ),
        route("/dead/", "dead", "", ISTIO),
        route("/refused/", "h2", "", ISTIO),
        route("/refused-5xx/", "h2", "", "retry_on: gateway-error"),
        route(
            "/hosts/",
            "pair",
            "",
            &format!("{ISTIO}, retriable_status_codes: [503]"),
        ),
        route("/tight/", "tight", "", "retry_on: 5xx, num_retries: 2"),
        route(
            "/early/",
            "a",
            "",
            "retry_on: 5xx, num_retries: 2, rate_limited_retry_back_off: { reset_headers: [{ name: retry-after }], max_interval: 10s }",
        ),
        route(
            "/canary/",
            "omit",
            "",
            "retry_on: 5xx, retry_host_predicate: [{ name: envoy.retry_host_predicates.omit_canary_hosts, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.retry.host.omit_canary_hosts.v3.OmitCanaryHostsPredicate } }], host_selection_retry_max_attempts: 3",
        ),
        route(
            "/meta/",
            "omit",
            "",
            "retry_on: 5xx, retry_host_predicate: [{ name: envoy.retry_host_predicates.omit_host_metadata, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.retry.host.omit_host_metadata.v3.OmitHostMetadataConfig, metadata_match: { filter_metadata: { envoy.lb: { version: v1 } } } } }], host_selection_retry_max_attempts: 3",
        ),
        route("/omit-none/", "omit", "", "retry_on: 5xx"),
        route("/budget/", "budget", "", "retry_on: 5xx, num_retries: 2"),
        "              - match: { prefix: \"/\" }\n                route: { cluster: a }\n"
            .to_owned(),
    ]
    .concat();
    let clusters = [
        static_cluster("a", &[a], false),
        static_cluster("dead", &[dead], false),
        static_cluster("h2", &[h2], true),
        static_cluster("pair", &[a, b], false),
        // `a` is the canary, and version v1.
        format!(
            "  - name: omit\n    connect_timeout: 1s\n    type: STATIC\n    load_assignment:\n      cluster_name: omit\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}\n          metadata: {{ filter_metadata: {{ envoy.lb: {{ canary: true, version: v1 }} }} }}\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}\n          metadata: {{ filter_metadata: {{ envoy.lb: {{ version: [v2, v3] }} }} }}\n",
            a.port(),
            b.port()
        ),
        static_cluster("tight", &[a], false)
            + "    circuit_breakers: { thresholds: [{ max_retries: 0 }] }\n",
        static_cluster("budget", &[a], false)
            + "    circuit_breakers: { thresholds: [{ retry_budget: { budget_percent: { value: 0 }, min_retry_concurrency: 0 } }] }\n",
    ]
    .concat();
    let log = stdout_log(
        "%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:PATH)% %RESP(x-envoy-attempt-count)%\\n",
    );
    http_bootstrap_logged(&routes, &clusters, &log)
        .replace(
            "              domains: [\"*\"]\n",
            "              domains: [\"*\"]\n              include_request_attempt_count: true\n              include_attempt_count_in_response: true\n",
        )
        .replacen(
            "    filter_chains:\n",
            "    per_connection_buffer_limit_bytes: 16384\n    filter_chains:\n",
            1,
        )
}

struct Case {
    /// `/<route>/<mode>/<n>`: the request id is added per proxy.
    path: &'static str,
    /// Request body size (a POST when not 0).
    body: usize,
    grpc: bool,
}

const fn get(path: &'static str) -> Case {
    Case {
        path,
        body: 0,
        grpc: false,
    }
}

const CASES: &[Case] = &[
    // istiod's policy: gRPC `unavailable`, connect failures and refused streams; a 503
    // only with `retriable_status_codes`.
    get("/istio/status-503/1"),
    get("/istio503/status-503/1"),
    get("/istio503/status-503/5"),
    get("/istio/reset/1"),
    get("/istio/grpc/1"),
    get("/istio/grpc/5"),
    // 5xx: statuses, resets; the limit.
    get("/5xx/status-500/2"),
    get("/5xx/status-503/9"),
    get("/5xx/reset/1"),
    get("/5xx/status-404/1"),
    // gateway-error: 502-504 only.
    get("/gw/status-502/1"),
    get("/gw/status-500/1"),
    // reset: resets, not statuses.
    get("/reset/reset/2"),
    get("/reset/status-503/1"),
    // retriable-4xx: 409 only; the default of one retry.
    get("/4xx/status-409/1"),
    get("/4xx/status-409/2"),
    get("/4xx/status-404/1"),
    get("/codes/status-418/1"),
    get("/codes/status-503/1"),
    // Per-try timeouts, and the route timeout spanning the attempts.
    get("/pertry/stall/1"),
    get("/pertry/stall/9"),
    get("/spanned/stall/9"),
    // gRPC, in the response headers of a trailers-only answer.
    Case {
        path: "/grpc/grpc/1",
        body: 0,
        grpc: true,
    },
    Case {
        path: "/grpc/grpc/9",
        body: 0,
        grpc: true,
    },
    // A per-try idle timeout is retried like a per-try timeout.
    get("/tryidle/stall/1"),
    // retriable-headers: the failing answer (body `flaky 202`) has content-length 9.
    get("/hdrs/status-202/1"),
    // Hedging: the first attempt, past its per-try timeout, keeps running beside the
    // retry and its answer wins; without hedging it is reset and the retry answers.
    get("/hedge/slowfirst/1"),
    get("/nohedge/slowfirst/1"),
    // A refused connection, retried until the limit.
    get("/dead/status-503/0"),
    // An HTTP/2 stream refused: `refused-stream`, and any reset for `gateway-error`.
    get("/refused/refuse/1"),
    get("/refused/refuse/5"),
    get("/refused-5xx/refuse/1"),
    // A body is replayed byte for byte, up to the buffer limit.
    Case {
        path: "/istio503/status-503/1",
        body: 4000,
        grpc: false,
    },
    Case {
        path: "/istio503/status-503/1",
        body: 64 * 1024,
        grpc: false,
    },
    // The retry breaker at zero, and a budget that allows none.
    get("/tight/status-503/1"),
    get("/budget/status-503/1"),
    // No policy: no retry.
    get("/status-503/1"),
];

#[derive(Debug, PartialEq)]
struct Outcome {
    status: u16,
    /// The local reply's body, or the upstream's.
    body: String,
    attempt_count: Option<String>,
    grpc_status: Option<String>,
    /// Attempts the upstream saw, with their `x-envoy-attempt-count`.
    attempts: Vec<Option<String>>,
    /// Every attempt carried the whole request body.
    bodies_identical: bool,
}

async fn run(proxy: &Proxy, hits: &Hits, tag: &str, i: usize, case: &Case) -> Outcome {
    let id = format!("{tag}{i}");
    let path = format!("{}/{id}", case.path);
    let payload: Bytes = (0..case.body).map(|i| b'a' + (i % 26) as u8).collect();
    let mut req = Request::builder()
        .method(if case.body > 0 { "POST" } else { "GET" })
        .uri(&path)
        .header("host", "svc");
    if case.grpc {
        req = req.header("content-type", "application/grpc");
    }
    let (status, headers, body) = send(
        proxy.listener("http"),
        case.grpc,
        req.body(Full::new(payload.clone())).unwrap(),
    )
    .await
    .unwrap();
    let seen = hits.lock().unwrap().get(&id).cloned().unwrap_or_default();
    let h = |n: &str| headers.get(n).map(|v| v.to_str().unwrap().to_owned());
    Outcome {
        status: status.as_u16(),
        body: if body.len() > 200 {
            format!("{} bytes", body.len())
        } else {
            String::from_utf8_lossy(&body).into_owned()
        },
        attempt_count: h("x-envoy-attempt-count"),
        grpc_status: h("grpc-status"),
        attempts: seen.iter().map(|h| h.attempt_count.clone()).collect(),
        bodies_identical: seen.iter().all(|h| h.body == payload),
    }
}

#[tokio::test]
async fn retries_match_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let hits = Hits::default();
    let a = flaky("a", hits.clone()).await;
    let b = flaky("b", hits.clone()).await;
    // A port bound but not listening: connections are refused, and no other test can
    // take the port while this one runs (a closed listener's port could be reused).
    let dead_socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    dead_socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let dead = dead_socket.local_addr().unwrap().as_socket().unwrap();
    let h2 = refusing(hits.clone()).await;
    let yaml = bootstrap(a, b, dead, h2);
    let (ours, theirs) = start_both(&envoy, &yaml).await;
    let mut diffs = Differences::default();
    for (i, case) in CASES.iter().enumerate() {
        let want = run(&theirs, &hits, "envoy-", i, case).await;
        let got = run(&ours, &hits, "ours-", i, case).await;
        // Not a vacuous agreement: these are retried once.
        if ["/tryidle/", "/hdrs/", "/istio503/status-503/1"]
            .iter()
            .any(|p| case.path.starts_with(p))
            && case.body < 16384
        {
            assert_eq!(got.attempts.len(), 2, "{}", case.path);
        }
        diffs.check(format!("{} ({} bytes)", case.path, case.body), want, got);
    }
    diffs.assert_none();
    // The same flags (URX, UO, UT, UF …) and attempt counts, line by line.
    let (want, got) = (
        theirs.stdout_lines(CASES.len()).await,
        ours.stdout_lines(CASES.len()).await,
    );
    let strip = |lines: Vec<String>| -> Vec<String> {
        lines
            .into_iter()
            .map(|l| l.replace("/envoy-", "/").replace("/ours-", "/"))
            .collect()
    };
    assert_eq!(
        strip(got),
        strip(want),
        "access log lines (pilotfish left, Envoy right)"
    );
    let mut samples = Vec::new();
    for cluster in ["a", "dead", "h2", "tight", "budget"] {
        for stat in [
            "upstream_rq_retry",
            "upstream_rq_retry_success",
            "upstream_rq_retry_limit_exceeded",
            "upstream_rq_retry_overflow",
            "upstream_rq_retry_backoff_exponential",
            "upstream_rq_per_try_timeout",
            "upstream_rq_per_try_idle_timeout",
            "upstream_rq_timeout",
            "retry_or_shadow_abandoned",
            "upstream_rq_total",
        ] {
            samples.push(format!(
                "envoy_cluster_{stat}{{envoy_cluster_name=\"{cluster}\"}}"
            ));
        }
    }
    // Responses that were retried count under `retry.`, once the retry is made.
    samples.extend([
        "envoy_cluster_retry_upstream_rq{envoy_response_code=\"503\",envoy_cluster_name=\"a\"}".to_owned(),
        "envoy_cluster_retry_upstream_rq_xx{envoy_response_code_class=\"5\",envoy_cluster_name=\"a\"}".to_owned(),
        "envoy_cluster_retry_upstream_rq_completed{envoy_cluster_name=\"a\"}".to_owned(),
    ]);
    for code in ["200", "503", "500", "504"] {
        samples.push(format!(
            "envoy_cluster_upstream_rq{{envoy_response_code=\"{code}\",envoy_cluster_name=\"a\"}}"
        ));
    }
    let samples: Vec<&str> = samples.iter().map(String::as_str).collect();
    assert_same_samples(&ours, &theirs, &samples).await;
}

/// `previous_hosts` sends the retry to the other endpoint, whichever the first
/// attempt went to.
#[tokio::test]
async fn a_retry_goes_to_another_host() {
    let hits = Hits::default();
    let a = flaky("a", hits.clone()).await;
    let b = flaky("b", hits.clone()).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = Proxy::start(&bootstrap(a, b, dead, dead)).await;
    for i in 0..6 {
        let id = format!("h{i}");
        let (status, _) = http_get(proxy.listener("http"), &format!("/hosts/status-503/1/{id}"))
            .await
            .unwrap();
        assert_eq!(status, 200);
        let seen = hits.lock().unwrap()[&id].clone();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_ne!(seen[0].upstream, seen[1].upstream, "{seen:?}");
    }
}

/// The upstream is told the time it has: the per-try timeout when one is set.
#[tokio::test]
async fn expected_timeout_is_the_per_try_timeout() {
    let hits = Hits::default();
    let a = flaky("a", hits.clone()).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = Proxy::start(&bootstrap(a, a, dead, dead)).await;
    http_get(proxy.listener("http"), "/pertry/status-500/1/t1")
        .await
        .unwrap();
    let seen = hits.lock().unwrap()["t1"].clone();
    let timeouts: Vec<_> = seen.iter().map(|h| h.expected_timeout.clone()).collect();
    assert_eq!(timeouts, [Some("200".to_owned()), Some("200".to_owned())]);
}

/// Envoy's control headers (`x-envoy-retry-on`, `x-envoy-max-retries`,
/// `x-envoy-retriable-status-codes`, `x-envoy-upstream-rq-timeout-ms`,
/// `x-envoy-upstream-rq-per-try-timeout-ms`) act on a request the connection manager
/// trusts (`internal_address_config`), and are dropped from any other; either way the
/// upstream gets what Envoy sends it.
#[tokio::test]
async fn trusted_control_headers_match_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let hits = Hits::default();
    let a = flaky("a", hits.clone()).await;
    let routes =
        "              - match: { prefix: \"/\" }\n                route: { cluster: a }\n";
    let internal = "          use_remote_address: true\n          internal_address_config: { cidr_ranges: [{ address_prefix: 127.0.0.0, prefix_len: 8 }] }\n";
    let external = "          use_remote_address: true\n";
    const CASES: &[(&str, &[(&str, &str)])] = &[
        ("/status-503/1", &[("x-envoy-retry-on", "5xx")]),
        (
            "/status-503/1",
            &[("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "0")],
        ),
        (
            "/status-418/1",
            &[
                ("x-envoy-retry-on", "retriable-status-codes"),
                ("x-envoy-retriable-status-codes", "418"),
            ],
        ),
        ("/stall/1", &[("x-envoy-upstream-rq-timeout-ms", "200")]),
        (
            "/stall/1",
            &[
                ("x-envoy-retry-on", "5xx"),
                ("x-envoy-upstream-rq-per-try-timeout-ms", "100"),
            ],
        ),
    ];
    let mut diffs = Differences::default();
    for (kind, extra) in [("internal", internal), ("external", external)] {
        let yaml = http_bootstrap_logged(routes, &static_cluster("a", &[a], false), extra);
        let (ours, theirs) = start_both(&envoy, &yaml).await;
        for (i, (path, headers)) in CASES.iter().enumerate() {
            let mut outcomes = Vec::new();
            for (tag, proxy) in [("envoy", &theirs), ("ours", &ours)] {
                let id = format!("{kind}-{tag}-{i}");
                let mut req = Request::get(format!("/x{path}/{id}")).header("host", "svc");
                for (k, v) in *headers {
                    req = req.header(*k, *v);
                }
                let (status, _, body) = send(
                    proxy.listener("http"),
                    false,
                    req.body(Full::new(Bytes::new())).unwrap(),
                )
                .await
                .unwrap();
                let seen = hits.lock().unwrap().get(&id).cloned().unwrap_or_default();
                outcomes.push((
                    status.as_u16(),
                    String::from_utf8_lossy(&body).into_owned(),
                    seen.iter()
                        // The time left differs by the milliseconds each took.
                        .map(|h| (h.envoy_headers.clone(), h.expected_timeout.is_some()))
                        .collect::<Vec<_>>(),
                ));
            }
            let ours = outcomes.pop().unwrap();
            diffs.check(
                format!("{kind} {path} {headers:?}"),
                outcomes.pop().unwrap(),
                ours,
            );
        }
    }
    diffs.assert_none();
}

/// `omit_canary_hosts` and `omit_host_metadata` keep retries off the canary (`a`, also
/// version v1), never the first attempt, in pilotfish as in Envoy. Every other request
/// goes first to `b` (a plain request shifts the round robin), so that the retry's own
/// pick would be `a`: the predicate must turn it down.
#[tokio::test]
async fn host_predicates_keep_retries_off_omitted_hosts() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let hits = Hits::default();
    let a = flaky("a", hits.clone()).await;
    let b = flaky("b", hits.clone()).await;
    let yaml = bootstrap(a, b, b, b);
    let (ours, theirs) = start_both(&envoy, &yaml).await;
    for (tag, proxy) in [("ours", &ours), ("envoy", &theirs)] {
        let mut conn = KeepAlive::open(proxy.listener("http")).await;
        for route in ["canary", "meta", "omit-none"] {
            let mut pairs = Vec::new();
            for i in 0..6 {
                if i % 2 == 1 {
                    conn.get(&format!("/omit-none/ok/0/{tag}-{route}-shift{i}"))
                        .await;
                }
                let id = format!("{tag}-{route}-{i}");
                assert_eq!(conn.get(&format!("/{route}/status-503/1/{id}")).await, 200);
                let seen = hits.lock().unwrap()[&id].clone();
                pairs.push((seen[0].upstream, seen[1].upstream));
            }
            let firsts: Vec<_> = pairs.iter().map(|p| p.0).collect();
            assert!(
                firsts.contains(&"a") && firsts.contains(&"b"),
                "{tag} {route}: {pairs:?}"
            );
            if route == "omit-none" {
                assert!(pairs.contains(&("b", "a")), "{tag} {route}: {pairs:?}");
            } else {
                assert!(pairs.iter().all(|p| p.1 == "b"), "{tag} {route}: {pairs:?}");
            }
        }
    }
}

/// A request body that passes the buffer limit while a retry waits out its back-off
/// ends the request with Envoy's 507 (and closes the HTTP/1.1 connection, the body
/// still arriving); the retry is never made.
#[tokio::test]
async fn body_past_the_limit_during_back_off_is_507() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let hits = Hits::default();
    let a = flaky("a", hits.clone()).await;
    let yaml = bootstrap(a, a, a, a);
    let (ours, theirs) = start_both(&envoy, &yaml).await;
    let mut replies = Vec::new();
    for (tag, proxy) in [("envoy", &theirs), ("ours", &ours)] {
        let id = format!("{tag}-507");
        let mut s = tokio::net::TcpStream::connect(proxy.listener("http"))
            .await
            .unwrap();
        let head = format!(
            "POST /early/early/1/{id} HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(format!("3e8\r\n{}\r\n", "x".repeat(1000)).as_bytes())
            .await
            .unwrap();
        // Once the upstream has answered 503 (the retry then waits 5 s or more), the
        // rest of the body arrives: 40000 bytes against a limit of 16384.
        for _ in 0..200 {
            if hits.lock().unwrap().contains_key(&id) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rest = format!("9c40\r\n{}\r\n0\r\n\r\n", "y".repeat(40000));
        let _ = s.write_all(rest.as_bytes()).await;
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(4), async {
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        assert!(read.is_ok(), "{tag}: the connection stayed open");
        let text = String::from_utf8_lossy(&got).to_lowercase();
        let status = text.lines().next().unwrap_or_default().to_owned();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        replies.push((status, text.contains("connection: close"), body));
        assert_eq!(hits.lock().unwrap()[&id].len(), 1, "{tag}: retried");
    }
    assert_eq!(replies[0].0, "http/1.1 507 insufficient storage");
    assert_eq!(replies[1], replies[0], "pilotfish right, Envoy left");
    let (want, got) = (theirs.stdout_lines(1).await, ours.stdout_lines(1).await);
    assert_eq!(
        got[0].replace("ours-", ""),
        want[0].replace("envoy-", ""),
        "access log (pilotfish left, Envoy right)"
    );
    assert_same_samples(
        &ours,
        &theirs,
        &[
            "envoy_cluster_retry_or_shadow_abandoned{envoy_cluster_name=\"a\"}",
            "envoy_cluster_upstream_rq_retry{envoy_cluster_name=\"a\"}",
            "envoy_cluster_upstream_rq_retry_backoff_ratelimited{envoy_cluster_name=\"a\"}",
            "envoy_cluster_retry_upstream_rq{envoy_response_code=\"503\",envoy_cluster_name=\"a\"}",
        ],
    )
    .await;
}

/// Virtual clusters count a virtual host's requests by class (`vhost.<vh>.vcluster.*`):
/// the first whose headers match, else `other`; attempts, retries, timeouts, final
/// codes and response times, with the same names, labels and values as Envoy's.
#[tokio::test]
async fn virtual_clusters_count_like_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let hits = Hits::default();
    let a = flaky("a", hits.clone()).await;
    let yaml = bootstrap(a, a, a, a).replace(
        "              domains: [\"*\"]\n",
        "              domains: [\"*\"]\n              virtual_clusters:\n              - { name: vc1, headers: [{ name: \":path\", string_match: { prefix: \"/5xx/\" } }] }\n              - { name: vc2, headers: [{ name: \":method\", string_match: { exact: POST } }] }\n",
    );
    let (ours, theirs) = start_both(&envoy, &yaml).await;
    let requests: [(&str, &str); 7] = [
        ("GET", "/5xx/status-503/1"),
        ("GET", "/5xx/status-503/9"),
        ("POST", "/5xx/status-500/0"),
        ("POST", "/codes/ok/0"),
        ("GET", "/spanned/stall/9"),
        ("GET", "/tight/status-503/1"),
        ("GET", "/zzz"),
    ];
    for (tag, proxy) in [("envoy", &theirs), ("ours", &ours)] {
        for (i, (method, path)) in requests.iter().enumerate() {
            let req = Request::builder()
                .method(*method)
                .uri(format!("{path}/{tag}-vc{i}"))
                .header("host", "svc")
                .body(Full::new(Bytes::from_static(b"hello")))
                .unwrap();
            send(proxy.listener("http"), false, req).await.unwrap();
        }
    }
    let mut samples = Vec::new();
    for vc in ["vc1", "vc2", "other"] {
        let labels = format!("envoy_virtual_cluster=\"{vc}\",envoy_virtual_host=\"all\"");
        for stat in [
            "upstream_rq_total",
            "upstream_rq_timeout",
            "upstream_rq_retry",
            "upstream_rq_retry_success",
            "upstream_rq_retry_limit_exceeded",
            "upstream_rq_retry_overflow",
            "upstream_rq_completed",
            "upstream_rq_time_count",
        ] {
            samples.push(format!("envoy_vhost_vcluster_{stat}{{{labels}}}"));
        }
    }
    for (vc, code) in [
        ("vc1", "200"),
        ("vc1", "503"),
        ("vc2", "200"),
        ("other", "200"),
        ("other", "503"),
        ("other", "504"),
    ] {
        samples.push(format!(
            "envoy_vhost_vcluster_upstream_rq{{envoy_response_code=\"{code}\",envoy_virtual_cluster=\"{vc}\",envoy_virtual_host=\"all\"}}"
        ));
    }
    samples.push(
        "envoy_vhost_vcluster_upstream_rq_xx{envoy_response_code_class=\"5\",envoy_virtual_cluster=\"vc1\",envoy_virtual_host=\"all\"}".into(),
    );
    samples.push("envoy_cluster_upstream_rq_time_count{envoy_cluster_name=\"a\"}".into());
    // Envoy shows histograms as of its last stats flush (every 5 s by default).
    let deadline = std::time::Instant::now() + Duration::from_secs(12);
    for sample in samples.iter().filter(|s| s.contains("_time_count")) {
        let want = ours.metric(sample).await;
        assert!(want.is_some_and(|n| n > 0), "{sample}: {want:?}");
        while theirs.metric(sample).await != want && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let samples: Vec<&str> = samples.iter().map(String::as_str).collect();
    assert_same_samples(&ours, &theirs, &samples).await;
    // Not vacuous: vc1 retried and gave up once.
    assert_eq!(
        theirs
            .metric("envoy_vhost_vcluster_upstream_rq_retry_limit_exceeded{envoy_virtual_cluster=\"vc1\",envoy_virtual_host=\"all\"}")
            .await,
        Some(1)
    );
}
