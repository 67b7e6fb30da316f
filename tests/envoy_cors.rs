//! CORS, differentially: a per-route `CorsPolicy` behind the `envoy.filters.http.cors`
//! filter in Envoy 1.40 and pilotfish; preflights, actual requests, refused origins and
//! routes without a policy must be answered the same way and counted the same.
mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

fn bootstrap(a: SocketAddr) -> String {
    let routes = r#"              - match: { prefix: "/cors" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                    allow_origin_string_match: [{ exact: "https://app.example.com" }, { suffix: ".trusted.io" }]
                    allow_methods: "GET, POST"
                    allow_headers: "x-custom, content-type"
                    expose_headers: "x-exposed"
                    max_age: "600"
                    allow_credentials: true
              - match: { prefix: "/strict" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                    allow_origin_string_match: [{ exact: "https://app.example.com" }]
                    forward_not_matching_preflights: false
              - match: { prefix: "/any" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                    allow_origin_string_match: [{ exact: "*" }]
                    allow_methods: "*"
                    allow_headers: "*"
              - match: { prefix: "/" }
                route: { cluster: a }"#;
    http_bootstrap(routes, &static_cluster("a", &[a], false)).replace(
        "          http_filters:\n",
        "          http_filters:\n          - name: envoy.filters.http.cors\n            typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors }\n",
    )
}

struct Case {
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
}

const PRE: &str = "access-control-request-method";

const CASES: &[Case] = &[
    Case {
        method: "OPTIONS",
        path: "/cors",
        headers: &[("origin", "https://app.example.com"), (PRE, "POST")],
    },
    Case {
        method: "OPTIONS",
        path: "/cors",
        headers: &[("origin", "https://x.trusted.io"), (PRE, "PUT")],
    },
    Case {
        method: "OPTIONS",
        path: "/cors",
        headers: &[("origin", "https://evil.com"), (PRE, "POST")],
    },
    Case {
        method: "OPTIONS",
        path: "/cors",
        headers: &[("origin", "https://app.example.com")],
    },
    Case {
        method: "GET",
        path: "/cors",
        headers: &[("origin", "https://app.example.com")],
    },
    Case {
        method: "GET",
        path: "/cors",
        headers: &[("origin", "https://evil.com")],
    },
    Case {
        method: "GET",
        path: "/cors",
        headers: &[],
    },
    Case {
        method: "OPTIONS",
        path: "/strict",
        headers: &[("origin", "https://evil.com"), (PRE, "GET")],
    },
    Case {
        method: "OPTIONS",
        path: "/strict",
        headers: &[("origin", "https://app.example.com"), (PRE, "GET")],
    },
    Case {
        method: "OPTIONS",
        path: "/any",
        headers: &[("origin", "https://whoever.net"), (PRE, "DELETE")],
    },
    Case {
        method: "GET",
        path: "/any",
        headers: &[("origin", "https://whoever.net")],
    },
    Case {
        method: "GET",
        path: "/other",
        headers: &[("origin", "https://app.example.com")],
    },
    Case {
        method: "OPTIONS",
        path: "/other",
        headers: &[("origin", "https://app.example.com"), (PRE, "POST")],
    },
];

#[derive(Debug, PartialEq)]
struct Outcome {
    status: u16,
    reached_upstream: bool,
    cors_headers: Vec<(String, String)>,
}

async fn run(proxy: &Proxy, a: &Upstream, case: &Case) -> Outcome {
    let before = a.requests().len();
    let mut req = Request::builder()
        .method(case.method)
        .uri(case.path)
        .header("host", "svc");
    for (k, v) in case.headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let (status, headers, _) = send(proxy.listener("http"), false, req).await.unwrap();
    let mut cors_headers: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("access-control-"))
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    cors_headers.sort();
    Outcome {
        status: status.as_u16(),
        reached_upstream: a.requests().len() > before,
        cors_headers,
    }
}

#[tokio::test]
async fn cors_matches_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let a = Upstream::start("a").await;
    let yaml = bootstrap(a.addr);
    let ours = Proxy::start(&yaml).await;
    let theirs = Proxy::start_bin(&envoy, &yaml, &["--disable-hot-restart"]).await;
    let mut diffs = Differences::default();
    for case in CASES {
        let want = run(&theirs, &a, case).await;
        let got = run(&ours, &a, case).await;
        diffs.check(
            format!("{} {} {:?}", case.method, case.path, case.headers),
            want,
            got,
        );
    }
    diffs.assert_none();
    assert_same_samples(
        &ours,
        &theirs,
        &[
            "envoy_http_cors_origin_valid{envoy_http_conn_manager_prefix=\"ingress_http\"}",
            "envoy_http_cors_origin_invalid{envoy_http_conn_manager_prefix=\"ingress_http\"}",
        ],
    )
    .await;
}
