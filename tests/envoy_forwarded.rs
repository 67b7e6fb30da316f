//! `x-forwarded-for` / `-proto` and external-request handling, differentially: four
//! connection-manager settings (`use_remote_address` off and on, `skip_xff_append`,
//! `xff_num_trusted_hops`) in Envoy 1.40 and pilotfish, the same client headers, the
//! same headers at the upstream.
mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

const SETTINGS: &[&str] = &[
    "",
    "          use_remote_address: true\n",
    "          use_remote_address: true\n          skip_xff_append: true\n",
    "          use_remote_address: true\n          xff_num_trusted_hops: 1\n",
    "          use_remote_address: true\n          preserve_external_request_id: true\n",
];

const CLIENT_HEADERS: &[&[(&str, &str)]] = &[
    &[],
    &[("x-forwarded-for", "1.2.3.4")],
    &[("x-forwarded-for", "1.2.3.4, 5.6.7.8")],
    &[("x-forwarded-proto", "https")],
    &[("x-request-id", "abc")],
    &[
        ("x-envoy-upstream-rq-timeout-ms", "5"),
        ("x-envoy-internal", "true"),
    ],
];

const SEEN: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-envoy-external-address",
    "x-envoy-internal",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-downstream-service-node",
];

async fn seen(proxy: &Proxy, up: &Upstream, headers: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut req = Request::get("/").header("host", "svc");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(
        proxy.listener("http"),
        false,
        req.body(Full::new(Bytes::new())).unwrap(),
    )
    .await
    .unwrap();
    let got = up.requests().last().cloned().unwrap();
    let mut out: Vec<(String, String)> = SEEN
        .iter()
        .filter_map(|n| {
            got.headers
                .get(*n)
                .map(|v| (n.to_string(), v.to_str().unwrap().to_owned()))
        })
        .collect();
    // A generated id differs run to run; whether it was kept or generated is the point.
    let id = got
        .headers
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned());
    out.push((
        "x-request-id".into(),
        match id {
            Some(v) if v.len() == 36 => "<generated>".into(),
            Some(v) => v,
            None => "<none>".into(),
        },
    ));
    out
}

#[tokio::test]
async fn forwarded_headers_match_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let up = Upstream::start("a").await;
    for setting in SETTINGS {
        let yaml = http_bootstrap(
            "              - match: { prefix: \"/\" }\n                route: { cluster: a }",
            &static_cluster("a", &[up.addr], false),
        )
        .replace(
            "          stat_prefix: ingress_http\n",
            &format!("          stat_prefix: ingress_http\n{setting}"),
        );
        let ours = Proxy::start(&yaml).await;
        let theirs = Proxy::start_bin(&envoy, &yaml, &["--disable-hot-restart"]).await;
        for headers in CLIENT_HEADERS {
            let want = seen(&theirs, &up, headers).await;
            let got = seen(&ours, &up, headers).await;
            assert_eq!(
                got,
                want,
                "with [{}] and client headers {headers:?}: pilotfish (left) and Envoy (right) differ",
                setting.trim().replace('\n', ",")
            );
        }
    }
}
