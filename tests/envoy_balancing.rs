//! Load balancing against the real Envoy: consistent hashing sends each key to the same
//! endpoint Envoy does (same ring, same Maglev table), weighted round robin shares by
//! weight, unhealthy endpoints and priorities fail over as Envoy's arithmetic says, and
//! least request steers away from a busy endpoint.
mod common;

use std::{collections::HashMap, net::SocketAddr};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

/// Which upstream answered `path` with these extra request headers.
async fn who(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> String {
    let mut req = Request::get(path).header("host", "test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (status, h, body) = send(addr, false, req.body(Full::<Bytes>::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    h.get("x-upstream")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn endpoint(a: &Upstream, extra: &str) -> String {
    format!(
        "\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}{extra}",
        a.addr.port()
    )
}

fn cluster(name: &str, policy: &str, extra: &str, localities: &str) -> String {
    format!(
        "  - name: {name}\n    connect_timeout: 1s\n    type: STATIC\n    lb_policy: {policy}\n{extra}    load_assignment:\n      cluster_name: {name}\n      endpoints:{localities}\n"
    )
}

fn locality(priority: u32, endpoints: &str) -> String {
    format!("\n      - priority: {priority}\n        lb_endpoints:{endpoints}")
}

fn route(prefix: &str, cluster: &str, action_extra: &str) -> String {
    format!(
        "              - match: {{ prefix: \"{prefix}\" }}\n                route: {{ cluster: {cluster}{action_extra} }}\n"
    )
}

async fn upstreams(n: usize) -> Vec<Upstream> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(Upstream::start(&format!("u{i}")).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_picks_the_endpoint_envoy_picks() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let ups = upstreams(4).await;
    let eps: String = ups.iter().map(|u| endpoint(u, "")).collect();
    let hash = ", hash_policy: [{ header: { header_name: x-user } }]";
    let routes = [
        route("/ring", "ring", hash),
        route("/maglev", "maglev", hash),
        route("/small", "small", hash),
        route(
            "/ip",
            "ip",
            ", hash_policy: [{ connection_properties: { source_ip: true } }]",
        ),
        route("/typed", "typed", hash),
    ]
    .concat();
    // A ring hash as a `load_balancing_policy` extension (which replaces `lb_policy`).
    let typed = concat!(
        "    load_balancing_policy: { policies: [\n",
        "      { typed_extension_config: { name: r, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash, minimum_ring_size: 256 } } } ] }\n",
    );
    let clusters = [
        cluster("ring", "RING_HASH", "", &locality(0, &eps)),
        cluster("maglev", "MAGLEV", "", &locality(0, &eps)),
        cluster(
            "small",
            "RING_HASH",
            "    ring_hash_lb_config: { minimum_ring_size: 64, maximum_ring_size: 128 }\n",
            &locality(0, &eps),
        ),
        cluster(
            "ip",
            "MAGLEV",
            "    maglev_lb_config: { table_size: 257 }\n",
            &locality(0, &eps),
        ),
        cluster("typed", "ROUND_ROBIN", typed, &locality(0, &eps)),
    ]
    .concat();
    let yaml = http_bootstrap(&routes, &clusters);
    let (ours, theirs) = start_both(&envoy, &yaml).await;
    let (a, b) = (ours.listener("http"), theirs.listener("http"));
    let mut diff = Differences::default();
    let mut spread: HashMap<String, usize> = HashMap::new();
    for path in ["/ring", "/maglev", "/small", "/typed"] {
        for k in 0..24 {
            let user = format!("user-{k}");
            let h = [("x-user", user.as_str())];
            let mine = who(a, path, &h).await;
            assert_eq!(mine, who(a, path, &h).await, "{path} {user} moved");
            diff.check(
                format!("{path} {user}"),
                who(b, path, &h).await,
                mine.clone(),
            );
            *spread.entry(mine).or_default() += 1;
        }
    }
    diff.check("/ip", who(b, "/ip", &[]).await, who(a, "/ip", &[]).await);
    diff.assert_none();
    assert_eq!(
        spread.len(),
        4,
        "keys spread over every endpoint: {spread:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_priorities_and_health_as_envoy_applies_them() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let ups = upstreams(3).await;
    let weighted = format!(
        "\n      - lb_endpoints:{}{}",
        endpoint(&ups[0], "\n          load_balancing_weight: 1"),
        endpoint(&ups[1], "\n          load_balancing_weight: 3"),
    );
    // P0's only endpoints are unhealthy and draining: P1 takes everything.
    let failover = [
        locality(
            0,
            &[
                endpoint(&ups[0], "\n          health_status: UNHEALTHY"),
                endpoint(&ups[2], "\n          health_status: DRAINING"),
            ]
            .concat(),
        ),
        locality(1, &endpoint(&ups[1], "")),
    ]
    .concat();
    // P0 half healthy: 50 % × 1.4 = 70 % stays there, 30 % spills to P1.
    let spill = [
        locality(
            0,
            &[
                endpoint(&ups[0], ""),
                endpoint(&ups[2], "\n          health_status: UNHEALTHY"),
            ]
            .concat(),
        ),
        locality(1, &endpoint(&ups[1], "")),
    ]
    .concat();
    let routes = [
        route("/weighted", "weighted", ""),
        route("/failover", "failover", ""),
        route("/spill", "spill", ""),
    ]
    .concat();
    let clusters = [
        cluster("weighted", "ROUND_ROBIN", "", &weighted),
        cluster("failover", "ROUND_ROBIN", "", &failover),
        cluster("spill", "LEAST_REQUEST", "", &spill),
    ]
    .concat();
    let yaml = http_bootstrap(&routes, &clusters);
    let (ours, theirs) = start_both(&envoy, &yaml).await;
    for (proxy, who_) in [(&ours, "pilotfish"), (&theirs, "envoy")] {
        let addr = proxy.listener("http");
        let count = |path: &'static str, n: usize| async move {
            let mut c: HashMap<String, usize> = HashMap::new();
            for _ in 0..n {
                *c.entry(who(addr, path, &[]).await).or_default() += 1;
            }
            c
        };
        let w = count("/weighted", 80).await;
        let heavy = w.get("u1").copied().unwrap_or(0);
        assert!((54..=66).contains(&heavy), "{who_}: weights 1:3 gave {w:?}");
        let f = count("/failover", 20).await;
        assert_eq!(f.get("u1"), Some(&20), "{who_}: failover gave {f:?}");
        let s = count("/spill", 200).await;
        let p0 = s.get("u0").copied().unwrap_or(0);
        assert!((115..=165).contains(&p0), "{who_}: 70/30 spill gave {s:?}");
        assert_eq!(
            s.get("u2"),
            None,
            "{who_}: the unhealthy endpoint was picked"
        );
    }
    // Both count the same membership.
    assert_same_samples(
        &ours,
        &theirs,
        &[
            "envoy_cluster_membership_total{envoy_cluster_name=\"spill\"}",
            "envoy_cluster_membership_healthy{envoy_cluster_name=\"spill\"}",
            "envoy_cluster_membership_healthy{envoy_cluster_name=\"failover\"}",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_steers_away_from_a_busy_endpoint() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let fast = Upstream::start("fast").await;
    // An endpoint that holds every request for 1.5 s: its active requests pile up.
    let slow = accept_each(|stream| async move {
        let svc = hyper::service::service_fn(|_req| async {
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .header("x-upstream", "slow")
                    .body(Full::<Bytes>::default())
                    .unwrap(),
            )
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
            .await;
    })
    .await;
    let eps = format!(
        "{}\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}",
        endpoint(&fast, ""),
        slow.port()
    );
    let yaml = http_bootstrap(
        &route("/", "lr", ", timeout: 5s"),
        &cluster("lr", "LEAST_REQUEST", "", &locality(0, &eps)),
    );
    let (ours, theirs) = start_both(&envoy, &yaml).await;
    for (proxy, name) in [(&ours, "pilotfish"), (&theirs, "envoy")] {
        let addr = proxy.listener("http");
        let mut running = Vec::new();
        for _ in 0..100 {
            running.push(tokio::spawn(async move { who(addr, "/", &[]).await }));
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let mut to_slow = 0;
        for r in running {
            to_slow += usize::from(r.await.unwrap() == "slow");
        }
        // Two random choices pick the busy endpoint only when both land on it (1 in 4);
        // round robin would send it half.
        assert!(
            to_slow < 40,
            "{name}: {to_slow} of 100 went to the busy endpoint"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_tries_another_host_up_to_max_connect_attempts() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let live = accept_each(|mut s| async move {
        use tokio::io::AsyncWriteExt;
        let _ = s.write_all(b"hello").await;
    })
    .await;
    // A port nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let yaml = |attempts: u32| {
        tcp_proxy_bootstrap_to(
            &[dead, live],
            "t",
            &format!("          max_connect_attempts: {attempts}"),
        )
    };
    for attempts in [1, 2] {
        let (ours, theirs) = start_both(&envoy, &yaml(attempts)).await;
        for (p, who) in [(&ours, "pilotfish"), (&theirs, "envoy")] {
            let mut greeted = 0;
            for _ in 0..6 {
                use tokio::io::AsyncReadExt;
                let mut s = tokio::net::TcpStream::connect(p.listener("tcp"))
                    .await
                    .unwrap();
                let mut buf = Vec::new();
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(3),
                    s.read_to_end(&mut buf),
                )
                .await;
                greeted += usize::from(buf == b"hello");
            }
            if attempts == 1 {
                // Round robin sends some connections to the dead host.
                assert!(
                    (1..6).contains(&greeted),
                    "{who}: {greeted} of 6 with one attempt"
                );
            } else {
                assert_eq!(greeted, 6, "{who}: {greeted} of 6 with two attempts");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_priorities_sends_the_retry_to_the_next_priority() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    // P0's only endpoint fails every request; P1's answers.
    let failing = accept_each(|stream| async move {
        let svc = hyper::service::service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(503)
                    .body(Full::<Bytes>::default())
                    .unwrap(),
            )
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
            .await;
    })
    .await;
    let ok = Upstream::start("p1").await;
    let eps = [
        locality(
            0,
            &format!(
                "\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}",
                failing.port()
            ),
        ),
        locality(1, &endpoint(&ok, "")),
    ]
    .concat();
    let retry = |prio: &str| {
        format!(
            ", retry_policy: {{ retry_on: 5xx, num_retries: 1{prio}, retry_back_off: {{ base_interval: 0.001s }} }}"
        )
    };
    let prio = ", retry_priority: { name: envoy.retry_priorities.previous_priorities, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig, update_frequency: 1 } }";
    let routes = [
        route("/prio", "c", &retry(prio)),
        route("/plain", "c", &retry("")),
    ]
    .concat();
    let yaml = http_bootstrap(&routes, &cluster("c", "ROUND_ROBIN", "", &eps));
    let (ours, theirs) = start_both(&envoy, &yaml).await;
    let mut diff = Differences::default();
    for path in ["/prio", "/plain"] {
        for _ in 0..3 {
            let status = |addr| async move { http_get(addr, path).await.unwrap().0 };
            diff.check(
                path,
                status(theirs.listener("http")).await,
                status(ours.listener("http")).await,
            );
        }
    }
    diff.assert_none();
    assert_eq!(
        http_get(ours.listener("http"), "/prio").await.unwrap().0,
        200
    );
    assert_eq!(
        http_get(ours.listener("http"), "/plain").await.unwrap().0,
        503
    );
}
