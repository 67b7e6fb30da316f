//! Route matching and rewrites, differentially: one bootstrap with the matchers and
//! actions Istio's VirtualServices compile to, loaded into Envoy 1.40 and pilotfish; the
//! same requests must reach the same upstream with the same path and authority.
mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

fn bootstrap(a: SocketAddr, b: SocketAddr) -> String {
    let routes = r#"              - match:
                  prefix: "/"
                  headers: [{ name: end-user, string_match: { exact: jason } }]
                route: { cluster: b }
              - match:
                  prefix: "/"
                  headers: [{ name: x-tier, string_match: { prefix: gold, ignore_case: true } }]
                route: { cluster: b }
              - match:
                  prefix: "/m"
                  headers: [{ name: ":method", string_match: { exact: POST } }]
                route: { cluster: b }
              - match:
                  prefix: "/range"
                  headers: [{ name: x-n, range_match: { start: 10, end: 20 } }]
                route: { cluster: b }
              - match:
                  prefix: "/absent"
                  headers: [{ name: x-flag, present_match: false }]
                route: { cluster: b }
              - match:
                  prefix: "/inverted"
                  headers: [{ name: x-version, string_match: { exact: v1 }, invert_match: true }]
                route: { cluster: b }
              - match:
                  prefix: "/empty-ok"
                  headers: [{ name: x-e, string_match: { exact: "" }, treat_missing_header_as_empty: true }]
                route: { cluster: b }
              - match:
                  prefix: "/regexh"
                  headers: [{ name: x-id, string_match: { safe_regex: { regex: "[0-9]{3}" } } }]
                route: { cluster: b }
              - match:
                  prefix: "/q"
                  query_parameters: [{ name: debug, present_match: true }]
                route: { cluster: b }
              - match:
                  prefix: "/q"
                  query_parameters: [{ name: v, string_match: { exact: "2" } }]
                route: { cluster: b }
              - match:
                  prefix: "/qabsent"
                  query_parameters: [{ name: x, present_match: false }]
                route: { cluster: b }
              - match: { safe_regex: { regex: "/item/[0-9]+" } }
                route: { cluster: b }
              - match: { safe_regex: { regex: "/re/[a-z]+" } }
                route: { cluster: b, prefix_rewrite: "/new" }
              - match: { path_separated_prefix: "/sep" }
                route: { cluster: b }
              - match: { prefix: "/grpc", grpc: {} }
                route: { cluster: b }
              - match:
                  prefix: "/never"
                  runtime_fraction: { default_value: { numerator: 0 }, runtime_key: never }
                route: { cluster: b }
              - match:
                  prefix: "/always"
                  runtime_fraction: { default_value: { numerator: 100, denominator: HUNDRED } }
                route: { cluster: b }
              - match: { prefix: "/v1/" }
                route: { cluster: b, prefix_rewrite: "/" }
              - match: { path: "/old" }
                route: { cluster: b, prefix_rewrite: "/new" }
              - match: { prefix: "/svc/" }
                route:
                  cluster: b
                  regex_rewrite: { pattern: { regex: "^/svc/([^/]+)/(.*)$" }, substitution: "/\\2/of/\\1" }
              - match: { prefix: "/host" }
                route: { cluster: b, host_rewrite_literal: "reviews.prod.svc.cluster.local" }
              - match: { prefix: "/to-https" }
                redirect: { https_redirect: true }
              - match: { prefix: "/moved" }
                redirect: { host_redirect: "new.example.com", path_redirect: "/landing", response_code: FOUND }
              - match: { prefix: "/port" }
                redirect: { port_redirect: 8443, scheme_redirect: https, strip_query: true }
              - match: { prefix: "/old/" }
                redirect: { prefix_rewrite: "/new/", response_code: PERMANENT_REDIRECT }
              - match: { prefix: "/rx/" }
                redirect: { regex_rewrite: { pattern: { regex: "^/rx/(.*)$" }, substitution: "/y/\\1" }, response_code: SEE_OTHER }
              - match: { prefix: "/direct" }
                direct_response: { status: 200, body: { inline_string: "hello from the route\n" } }
              - match: { prefix: "/unavailable" }
                direct_response: { status: 503 }
              - match: { prefix: "/idle" }
                route: { cluster: a, idle_timeout: 0.3s }
              - match: { prefix: "/by-header" }
                route: { cluster_header: x-target }
              - match: { prefix: "/all-b" }
                route:
                  weighted_clusters:
                    clusters: [{ name: a, weight: 0 }, { name: b, weight: 100 }]
              - match: { prefix: "/split" }
                route:
                  weighted_clusters:
                    clusters: [{ name: a, weight: 75 }, { name: b, weight: 25 }]
              - match: { prefix: "/total" }
                route:
                  weighted_clusters:
                    total_weight: 100
                    clusters: [{ name: a, weight: 0 }, { name: b, weight: 30 }]
              - match: { prefix: "/" }
                route: { cluster: a }"#;
    let clusters = format!(
        "{}{}",
        static_cluster("a", &[a], false),
        static_cluster("b", &[b], false)
    );
    http_bootstrap(routes, &clusters)
}

struct Case {
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
}

const fn get(path: &'static str, headers: &'static [(&'static str, &'static str)]) -> Case {
    Case {
        method: "GET",
        path,
        headers,
    }
}

const CASES: &[Case] = &[
    get("/", &[]),
    get("/", &[("end-user", "jason")]),
    get("/", &[("end-user", "Jason")]),
    get("/", &[("end-user", "jason"), ("end-user", "bob")]),
    get("/", &[("x-tier", "GOLD-plus")]),
    get("/", &[("x-tier", "silver")]),
    get("/", &[("x-tier", "silver"), ("x-tier", "Gold")]),
    get("/inverted", &[("x-version", "v2"), ("x-version", "v1")]),
    get("/range", &[("x-n", "50"), ("x-n", "15")]),
    get("/m", &[]),
    Case {
        method: "POST",
        path: "/m",
        headers: &[],
    },
    get("/range", &[("x-n", "10")]),
    get("/range", &[("x-n", "19")]),
    get("/range", &[("x-n", "20")]),
    get("/range", &[("x-n", "-5")]),
    get("/range", &[("x-n", "ten")]),
    get("/range", &[]),
    get("/absent", &[]),
    get("/absent", &[("x-flag", "1")]),
    get("/inverted", &[]),
    get("/inverted", &[("x-version", "v1")]),
    get("/inverted", &[("x-version", "v2")]),
    get("/empty-ok", &[]),
    get("/empty-ok", &[("x-e", "x")]),
    get("/regexh", &[("x-id", "123")]),
    get("/regexh", &[("x-id", "1234")]),
    get("/regexh", &[("x-id", "a123")]),
    get("/q?debug", &[]),
    get("/q?x=1&debug=true", &[]),
    get("/q?v=2", &[]),
    get("/q?v=3&v=2", &[]),
    get("/q?v=20", &[]),
    get("/q", &[]),
    get("/qabsent", &[]),
    get("/qabsent?x=1", &[]),
    get("/qabsent?y=1", &[]),
    get("/re/abc?z=1", &[]),
    get("/re/abc/d", &[]),
    get("/total", &[]),
    get("/item/42", &[]),
    get("/item/42?x=1", &[]),
    get("/item/42/more", &[]),
    get("/item/", &[]),
    get("/sep", &[]),
    get("/sep/x", &[]),
    get("/sep?x=1", &[]),
    get("/separate", &[]),
    get("/grpc/Svc/M", &[("content-type", "application/grpc")]),
    get("/grpc/Svc/M", &[("content-type", "application/grpc+proto")]),
    get("/grpc/Svc/M", &[("content-type", "text/plain")]),
    get("/never", &[]),
    get("/always", &[]),
    get("/v1/users?id=3", &[]),
    get("/v1/", &[]),
    get("/v1", &[]),
    get("/old", &[]),
    get("/old?q=1", &[]),
    get("/svc/reviews/api/x?y=1", &[]),
    get("/svc/noslash", &[]),
    get("/host/x", &[]),
    get("/all-b/x", &[]),
    get("/by-header", &[("x-target", "b")]),
    get("/by-header", &[("x-target", "a")]),
    get("/by-header", &[("x-target", "nope")]),
    get("/by-header", &[]),
    get("/idle/slow/1500", &[]),
    get("/idle/slow/10", &[]),
    get("/to-https/x?q=1", &[]),
    get("/moved/x?q=1", &[]),
    get("/port/x?q=1", &[]),
    get("/old/a/b?z", &[]),
    get("/rx/abc?k", &[]),
    get("/direct", &[]),
    get("/unavailable", &[]),
];

#[derive(Debug, PartialEq)]
struct Outcome {
    status: u16,
    upstream: Option<String>,
    seen_path: Option<String>,
    seen_authority: Option<String>,
    seen_original_path: Option<String>,
    location: Option<String>,
    content_type: Option<String>,
    /// Only for answers that did not come from an upstream (an upstream's echo carries
    /// per-request ids).
    local_body: Option<String>,
}

async fn run(proxy: &Proxy, a: &Upstream, b: &Upstream, case: &Case) -> Outcome {
    let before = counts(&[a, b]);
    let mut req = Request::builder()
        .method(case.method)
        .uri(case.path)
        .header("host", "reviews:9080");
    for (k, v) in case.headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let (status, headers, body) = send(proxy.listener("http"), false, req).await.unwrap();
    let seen = newest_since(&[a, b], &before);
    let header = |n: &str| headers.get(n).map(|v| v.to_str().unwrap().to_owned());
    Outcome {
        status: status.as_u16(),
        upstream: headers
            .get("x-upstream")
            .map(|v| v.to_str().unwrap().to_owned()),
        seen_path: seen.as_ref().map(|s| s.path.clone()),
        seen_authority: seen.as_ref().map(|s| s.authority.clone()),
        seen_original_path: seen.as_ref().and_then(|s| {
            s.headers
                .get("x-envoy-original-path")
                .map(|v| v.to_str().unwrap().to_owned())
        }),
        location: header("location"),
        content_type: header("content-type").filter(|_| headers.get("x-upstream").is_none()),
        local_body: headers
            .get("x-upstream")
            .is_none()
            .then(|| String::from_utf8_lossy(&body).into_owned()),
    }
}

/// How many of `n` requests to `/split` reached upstream `b`.
async fn split_to_b(proxy: &Proxy, n: usize) -> usize {
    let mut to_b = 0;
    for _ in 0..n {
        let (_, headers, _) = send(
            proxy.listener("http"),
            false,
            Request::get("/split")
                .header("host", "reviews")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
        if headers.get("x-upstream").is_some_and(|v| v == "b") {
            to_b += 1;
        }
    }
    to_b
}

#[tokio::test]
async fn routing_matches_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let yaml = bootstrap(a.addr, b.addr);
    let ours = Proxy::start(&yaml).await;
    let theirs = Proxy::start_bin(&envoy, &yaml, &["--disable-hot-restart"]).await;
    let mut diffs = Differences::default();
    for case in CASES {
        let want = run(&theirs, &a, &b, case).await;
        let got = run(&ours, &a, &b, case).await;
        diffs.check(
            format!("{} {} {:?}", case.method, case.path, case.headers),
            want,
            got,
        );
    }
    diffs.assert_none();

    // A 75/25 split over 2,000 requests: b's share has a standard deviation of about
    // 19 requests, so 400..=600 (more than five deviations each way) never fails by chance.
    for (who, proxy) in [("envoy", &theirs), ("pilotfish", &ours)] {
        let to_b = split_to_b(proxy, 2000).await;
        assert!(
            (400..=600).contains(&to_b),
            "{who}: {to_b} of 2000 went to b"
        );
    }
}

/// Header mutations at all four levels, every append action, removal order, formatted
/// values, and response mutations on upstream responses and on local replies.
fn mutations_bootstrap(a: SocketAddr, dead: SocketAddr) -> String {
    let routes = r#"              - match: { prefix: "/h" }
                request_headers_to_add:
                - header: { key: x-level, value: route }
                  append_action: OVERWRITE_IF_EXISTS_OR_ADD
                - header: { key: x-multi, value: route }
                - header: { key: x-empty, value: "" }
                - header: { key: x-kept-empty, value: "" }
                  keep_empty_value: true
                - header: { key: x-absent, value: route }
                  append_action: ADD_IF_ABSENT
                - header: { key: x-ow, value: route }
                  append_action: OVERWRITE_IF_EXISTS
                - header: { key: x-ow2, value: route }
                  append_action: OVERWRITE_IF_EXISTS
                - header: { key: x-old-append, value: route }
                  append: false
                - header: { key: X-Upper, value: route }
                - header: { key: x-addr, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%" }
                - header: { key: x-copy, value: "from %REQ(x-src)%" }
                - header: { key: x-missing, value: "%REQ(x-none)%" }
                - header: { key: x-pct, value: "100%%" }
                request_headers_to_remove: [x-removed-by-route, x-client-remove]
                response_headers_to_add:
                - header: { key: x-r, value: route }
                - header: { key: x-code, value: "%RESPONSE_CODE%" }
                response_headers_to_remove: [x-upstream]
                route:
                  weighted_clusters:
                    clusters:
                    - name: a
                      weight: 1
                      request_headers_to_add:
                      - header: { key: x-level, value: wc }
                        append_action: OVERWRITE_IF_EXISTS_OR_ADD
                      - header: { key: x-multi, value: wc }
                      response_headers_to_add:
                      - header: { key: x-r, value: wc }
              - match: { prefix: "/dead" }
                response_headers_to_add:
                - header: { key: x-r, value: dead }
                route: { cluster: dead }"#;
    let clusters = format!(
        "{}{}",
        static_cluster("a", &[a], false),
        static_cluster("dead", &[dead], false)
    );
    http_bootstrap(routes, &clusters)
        .replace(
            "            virtual_hosts:\n",
            r#"            request_headers_to_add:
            - header: { key: x-level, value: global }
              append_action: OVERWRITE_IF_EXISTS_OR_ADD
            - header: { key: x-multi, value: global }
            response_headers_to_add:
            - header: { key: x-r, value: global }
            virtual_hosts:
"#,
        )
        .replace(
            "              domains: [\"*\"]\n",
            r#"              domains: ["*"]
              request_headers_to_add:
              - header: { key: x-level, value: vhost }
                append_action: OVERWRITE_IF_EXISTS_OR_ADD
              - header: { key: x-multi, value: vhost }
              - header: { key: x-removed-by-route, value: vhost }
              response_headers_to_add:
              - header: { key: x-r, value: vhost }
"#,
        )
}

#[tokio::test]
async fn header_mutations_match_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let a = Upstream::start("a").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let yaml = mutations_bootstrap(a.addr, dead);
    let ours = Proxy::start(&yaml).await;
    let theirs = Proxy::start_bin(&envoy, &yaml, &["--disable-hot-restart"]).await;
    const SEEN: &[&str] = &[
        "x-level",
        "x-multi",
        "x-empty",
        "x-kept-empty",
        "x-absent",
        "x-ow",
        "x-ow2",
        "x-old-append",
        "x-upper",
        "x-addr",
        "x-copy",
        "x-missing",
        "x-pct",
        "x-removed-by-route",
        "x-client-remove",
    ];
    const RETURNED: &[&str] = &["x-r", "x-code", "x-upstream"];
    let values = |h: &http::HeaderMap, names: &[&str]| -> Vec<(String, Vec<String>)> {
        names
            .iter()
            .map(|n| {
                let vs = h
                    .get_all(*n)
                    .iter()
                    .map(|v| v.to_str().unwrap().to_owned())
                    .collect();
                (n.to_string(), vs)
            })
            .collect()
    };
    let mut outcomes = Vec::new();
    for proxy in [&theirs, &ours] {
        let mut got = Vec::new();
        for path in ["/h", "/dead", "/none"] {
            let req = Request::get(path)
                .header("host", "reviews")
                .header("x-ow2", "client")
                .header("x-absent", "client")
                .header("x-client-remove", "1")
                .header("x-multi", "client")
                .header("x-old-append", "client")
                .header("x-src", "client")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let before = a.requests().len();
            let (status, headers, _) = send(proxy.listener("http"), false, req).await.unwrap();
            let seen = a.requests();
            let seen = (seen.len() > before).then(|| values(&seen.last().unwrap().headers, SEEN));
            got.push((path, status.as_u16(), seen, values(&headers, RETURNED)));
        }
        outcomes.push(got);
    }
    let (want, got) = (&outcomes[0], &outcomes[1]);
    for (w, g) in want.iter().zip(got) {
        assert_eq!(
            g, w,
            "pilotfish (left) and Envoy (right) differ for {}",
            w.0
        );
    }
}

/// `normalize_path` and `merge_slashes` before routing, and `host_rewrite_header`.
#[tokio::test]
async fn path_normalization_matches_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let routes = r#"              - match: { prefix: "/etc" }
                route: { cluster: b }
              - match: { prefix: "/hosthdr" }
                route: { cluster: b, host_rewrite_header: x-host }
              - match: { prefix: "/" }
                route: { cluster: a }"#;
    let clusters = format!(
        "{}{}",
        static_cluster("a", &[a.addr], false),
        static_cluster("b", &[b.addr], false)
    );
    let yaml = http_bootstrap(routes, &clusters).replace(
        "          stat_prefix: ingress_http\n",
        "          stat_prefix: ingress_http\n          normalize_path: true\n          merge_slashes: true\n",
    );
    let ours = Proxy::start(&yaml).await;
    let theirs = Proxy::start_bin(&envoy, &yaml, &["--disable-hot-restart"]).await;
    let cases: &[Case] = &[
        get("/a/./b/../c", &[]),
        get("//x///y", &[]),
        get("/%7Euser/%2e%2e/z", &[]),
        get("/a/%2F/b", &[]),
        get("/a/%2f/b", &[]),
        get("/../../etc/passwd", &[]),
        get("/p%41th?q=/../x", &[]),
        get("/a/b/..", &[]),
        get("/hosthdr", &[("x-host", "rewritten.example")]),
        get("/hosthdr", &[]),
    ];
    for case in cases {
        let want = run(&theirs, &a, &b, case).await;
        let got = run(&ours, &a, &b, case).await;
        assert_eq!(
            got, want,
            "{}: pilotfish (left) and Envoy (right) differ",
            case.path
        );
    }
}

/// `auto_host_rewrite`: a DNS endpoint's name, an endpoint `hostname`, or nothing.
#[tokio::test]
async fn auto_host_rewrite_matches_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let routes = r#"              - match: { prefix: "/dns" }
                route: { cluster: dns, auto_host_rewrite: true }
              - match: { prefix: "/named" }
                route: { cluster: named, auto_host_rewrite: true }
              - match: { prefix: "/" }
                route: { cluster: a, auto_host_rewrite: true }"#;
    let clusters = format!(
        r#"{}  - name: dns
    type: STRICT_DNS
    dns_lookup_family: V4_ONLY
    connect_timeout: 1s
    load_assignment: {{ cluster_name: dns, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: localhost, port_value: {} }} }} }} }}] }}] }}
  - name: named
    connect_timeout: 1s
    load_assignment: {{ cluster_name: named, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ hostname: reviews.example, address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }} }}] }}] }}
"#,
        static_cluster("a", &[a.addr], false),
        b.addr.port(),
        b.addr.port()
    );
    let yaml = http_bootstrap(routes, &clusters);
    let ours = Proxy::start(&yaml).await;
    let theirs = Proxy::start_bin(&envoy, &yaml, &["--disable-hot-restart"]).await;
    for case in [get("/dns", &[]), get("/named", &[]), get("/plain", &[])] {
        let want = run(&theirs, &a, &b, &case).await;
        let got = run(&ours, &a, &b, &case).await;
        assert_eq!(
            got, want,
            "{}: pilotfish (left) and Envoy (right) differ",
            case.path
        );
    }
}
