//! Request mirroring, differentially: the same `request_mirror_policies` in Envoy 1.40
//! and pilotfish. The mirror must get the same copy (method, path, body, the `-shadow`
//! authority, the same headers), the client only the primary's answer; a stalled or
//! dead mirror must cost the primary nothing; fractions hold within statistical bounds.
mod common;

use std::{
    collections::BTreeSet,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A request a mirror saw.
#[derive(Debug, Clone, PartialEq)]
struct Copy {
    method: String,
    path: String,
    authority: String,
    /// Header names (values such as `x-request-id` differ per request).
    names: BTreeSet<String>,
    forwarded_proto: Option<String>,
    forwarded_for: Option<String>,
    internal: Option<String>,
    body_len: usize,
}

#[derive(Clone, Default)]
struct Mirror {
    seen: Arc<Mutex<Vec<Copy>>>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

fn header(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

impl Mirror {
    /// Serves on a fresh port; `stall` never answers.
    async fn start(stall: bool) -> (Mirror, SocketAddr) {
        let me = Mirror::default();
        let m = me.clone();
        let addr = accept_each(move |stream| {
            let m = m.clone();
            async move {
                let svc = service_fn(move |req| m.clone().record(req, stall));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            }
        })
        .await;
        (me, addr)
    }

    async fn record(
        self,
        req: Request<Incoming>,
        stall: bool,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let copy = Copy {
            method: req.method().to_string(),
            path: req.uri().path().to_owned(),
            authority: authority(&req),
            names: req
                .headers()
                .keys()
                .map(|k| k.as_str().to_owned())
                .filter(|k| k != "host")
                .collect(),
            forwarded_proto: header(&req, "x-forwarded-proto"),
            forwarded_for: header(&req, "x-forwarded-for"),
            internal: header(&req, "x-envoy-internal"),
            body_len: 0,
        };
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let copy = Copy {
            body_len: body.len(),
            ..copy
        };
        self.seen.lock().unwrap().push(copy);
        self.bodies.lock().unwrap().push(body);
        if stall {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Ok(Response::new(Full::new(Bytes::from("mirror"))))
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits (bounded) for the `n`-th copy.
    async fn nth(&self, n: usize) -> Option<Copy> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(c) = self.seen.lock().unwrap().get(n) {
                return Some(c.clone());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }
}

fn route(prefix: &str, mirrors: &str) -> String {
    format!(
        "              - match: {{ prefix: \"{prefix}\" }}\n                route: {{ cluster: a, request_mirror_policies: [{mirrors}] }}\n"
    )
}

fn bootstrap(a: SocketAddr, m: SocketAddr, m2: SocketAddr, s: SocketAddr, d: SocketAddr) -> String {
    let routes = [
        route("/mirror", "{ cluster: m }"),
        route("/two", "{ cluster: m }, { cluster: m2 }"),
        route(
            "/keep",
            "{ cluster: m, disable_shadow_host_suffix_append: true }",
        ),
        route("/by-header", "{ cluster_header: x-mirror }"),
        route(
            "/half",
            "{ cluster: m2, runtime_fraction: { default_value: { numerator: 50 } } }",
        ),
        route(
            "/never",
            "{ cluster: m2, runtime_fraction: { default_value: { numerator: 0 } } }",
        ),
        route("/stalled-h2", "{ cluster: s2 }"),
        route("/stalled", "{ cluster: s }"),
        route("/dead", "{ cluster: d }"),
        "              - match: { prefix: \"/\" }\n                route: { cluster: a }\n"
            .to_owned(),
    ]
    .concat();
    let clusters = [
        static_cluster("a", &[a], false),
        static_cluster("m", &[m], false),
        static_cluster("m2", &[m2], true),
        static_cluster("s", &[s], false),
        static_cluster("s2", &[s], true),
        static_cluster("d", &[d], false),
    ]
    .concat();
    http_bootstrap(&routes, &clusters)
}

struct Case {
    path: &'static str,
    body: usize,
    h2: bool,
    headers: &'static [(&'static str, &'static str)],
}

const CASES: &[Case] = &[
    Case {
        path: "/mirror/get",
        body: 0,
        h2: false,
        headers: &[],
    },
    Case {
        path: "/mirror/post",
        body: 100_000,
        h2: false,
        headers: &[],
    },
    // Past the 1 MiB buffer limits: the copy streams, as Envoy's does.
    Case {
        path: "/mirror/large",
        body: 3 << 20,
        h2: false,
        headers: &[],
    },
    Case {
        path: "/mirror/h2",
        body: 10,
        h2: true,
        headers: &[],
    },
    Case {
        path: "/keep",
        body: 0,
        h2: false,
        headers: &[],
    },
    Case {
        path: "/by-header",
        body: 0,
        h2: false,
        headers: &[("x-mirror", "m")],
    },
];

#[derive(Debug, PartialEq)]
struct Outcome {
    status: u16,
    /// The primary's answer (the echo upstream returns the request body).
    body_len: usize,
    copy: Option<Copy>,
}

async fn run(proxy: &Proxy, m: &Mirror, case: &Case, host: &str) -> Outcome {
    let before = m.count();
    let payload: Bytes = (0..case.body).map(|i| b'a' + (i % 26) as u8).collect();
    let mut req = Request::builder()
        .method(if case.body > 0 { "POST" } else { "GET" })
        .uri(case.path)
        .header("host", host);
    for (k, v) in case.headers {
        req = req.header(*k, *v);
    }
    let (status, _, body) = send(
        proxy.listener("http"),
        case.h2,
        req.body(Full::new(payload.clone())).unwrap(),
    )
    .await
    .unwrap();
    let copy = m.nth(before).await;
    if copy.is_some() {
        assert!(
            m.bodies.lock().unwrap()[before] == payload,
            "{}: the mirror got another body",
            case.path
        );
    }
    Outcome {
        status: status.as_u16(),
        body_len: body.len(),
        copy,
    }
}

#[tokio::test]
async fn mirroring_matches_envoy() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let a = Upstream::start("a").await;
    let (m, m_addr) = Mirror::start(false).await;
    let (m2, m2_addr) = Mirror::start(false).await;
    let (stalled, s_addr) = Mirror::start(true).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let yaml = bootstrap(a.addr, m_addr, m2_addr, s_addr, dead);
    let (ours, theirs) = start_both(&envoy, &yaml).await;

    let mut diffs = Differences::default();
    for case in CASES {
        let want = run(&theirs, &m, case, "svc:8080").await;
        let got = run(&ours, &m, case, "svc:8080").await;
        assert!(got.copy.is_some(), "{}: no copy from pilotfish", case.path);
        diffs.check(case.path, want, got);
    }
    diffs.assert_none();

    for proxy in [&ours, &theirs] {
        // Two policies: a copy to each.
        let (before, before2) = (m.count(), m2.count());
        http_get(proxy.listener("http"), "/two").await.unwrap();
        assert!(m.nth(before).await.is_some() && m2.nth(before2).await.is_some());
        // A stalled mirror: the primary answers while the copy is still held.
        let held = stalled.count();
        let (status, body) = http_get(proxy.listener("http"), "/stalled").await.unwrap();
        assert_eq!((status, body.is_empty()), (200, true));
        assert!(
            stalled.nth(held).await.is_some(),
            "the copy reached the stalled mirror"
        );
        // A dead mirror: the primary is untouched.
        let (status, _) = http_get(proxy.listener("http"), "/dead").await.unwrap();
        assert_eq!(status, 200);
        // Fractions: 0 % never; 50 % of 400 within ±75 (over 7 standard deviations).
        let before = m2.count();
        for _ in 0..20 {
            http_get(proxy.listener("http"), "/never").await.unwrap();
        }
        for _ in 0..400 {
            http_get(proxy.listener("http"), "/half").await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let copies = m2.count() - before;
        assert!(
            (125..=275).contains(&copies),
            "{copies} of 400 mirrored at 50 %"
        );
    }
    // The mirror clusters count the copies as Envoy does.
    assert_same_samples(
        &ours,
        &theirs,
        &[
            "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"m\"}",
            "envoy_cluster_upstream_rq{envoy_response_code=\"200\",envoy_cluster_name=\"m\"}",
            "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"s\"}",
            "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"d\"}",
        ],
    )
    .await;
}

/// Copies are bounded: once the mirror cluster has as many requests active as its
/// `max_requests` threshold (Envoy's default 1024), further copies are dropped and
/// counted, and the primary goes on answering.
#[tokio::test]
async fn a_saturated_mirror_drops_copies() {
    let a = Upstream::start("a").await;
    let (_m, m_addr) = Mirror::start(false).await;
    let (stalled, s_addr) = Mirror::start(true).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = Proxy::start(&bootstrap(a.addr, m_addr, m_addr, s_addr, dead)).await;
    // HTTP/2 to the stalled mirror: one connection, the copies wait on it.
    for _ in 0..1030 {
        let (status, _) = http_get(proxy.listener("http"), "/stalled-h2")
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    let dropped = proxy
        .metric("envoy_cluster_upstream_rq_pending_overflow{envoy_cluster_name=\"s2\"}")
        .await
        .unwrap_or(0);
    let active = proxy
        .metric("envoy_cluster_upstream_rq_active{envoy_cluster_name=\"s2\"}")
        .await;
    assert!(
        dropped >= 6,
        "{dropped} copies dropped, {active:?} active, {} seen",
        stalled.count()
    );
    assert!(stalled.count() <= 1024);
}
