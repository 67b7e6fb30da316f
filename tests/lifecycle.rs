//! Lifecycle: readiness, health-check fail/ok, drain on SIGTERM with in-flight requests
//! completing (HTTP/1 `connection: close`, HTTP/2 GOAWAY), the drain deadline,
//! `/quitquitquit`, the embedded default's loop refusal, and the workers' listening
//! sockets.
mod common;

use std::{net::SocketAddr, process::Stdio, time::Duration};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use nix::sys::signal::Signal;
use tokio::{io::AsyncReadExt, net::TcpStream};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn slow_proxy(extra: &[&str]) -> (Proxy, Upstream) {
    let up = Upstream::start("slow").await;
    let routes = r#"              - match: { prefix: "/" }
                route: { cluster: backend, timeout: 60s }"#;
    let proxy = Proxy::start_with(
        &http_bootstrap(routes, &static_cluster("backend", &[up.addr], false)),
        extra,
    )
    .await;
    (proxy, up)
}

async fn wait_until<F: AsyncFnMut() -> bool>(mut f: F, what: &str) {
    for _ in 0..250 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn sigterm_drains_http1_in_flight_request_then_exits() {
    let health = free_port();
    let hp = health.to_string();
    let (mut proxy, _up) = slow_proxy(&["--health-port", &hp, "--drain-time-s", "30"]).await;
    let health_addr: SocketAddr = ([127, 0, 0, 1], health).into();
    assert_eq!(
        http_get(health_addr, "/healthz/ready").await.unwrap(),
        (200, "LIVE\n".into())
    );

    // health check fail/ok flips readiness without draining.
    let post = |path: &'static str| {
        let admin = proxy.admin;
        async move {
            send(
                admin,
                false,
                Request::post(path)
                    .header("host", "a")
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap()
            .0
        }
    };
    assert_eq!(post("/healthcheck/fail").await, 200);
    assert_eq!(
        http_get(health_addr, "/healthz/ready").await.unwrap().0,
        503
    );
    assert_eq!(post("/healthcheck/ok").await, 200);
    assert_eq!(
        http_get(health_addr, "/healthz/ready").await.unwrap().0,
        200
    );

    let listener = proxy.listener("http");
    let slow = tokio::spawn(async move {
        send(
            listener,
            false,
            Request::get("/slow/1500")
                .header("host", "x")
                .body(Full::default())
                .unwrap(),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.signal(Signal::SIGTERM);

    wait_until(
        async || {
            http_get(health_addr, "/healthz/ready")
                .await
                .is_ok_and(|r| r.0 == 503)
        },
        "503 while draining",
    )
    .await;
    wait_until(
        async || TcpStream::connect(listener).await.is_err(),
        "listener to stop accepting",
    )
    .await;
    let (status, headers, body) = slow.await.unwrap().unwrap();
    assert_eq!((status.as_u16(), &body[..]), (200, &b"slow done"[..]));
    assert_eq!(headers["connection"], "close");
    let exit = proxy
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits once connections are gone");
    assert!(exit.success(), "{exit}");
}

#[tokio::test]
async fn sigterm_sends_goaway_and_finishes_http2_streams() {
    let (mut proxy, _up) = slow_proxy(&["--drain-time-s", "30"]).await;
    let stream = TcpStream::connect(proxy.listener("http")).await.unwrap();
    let (mut client, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let mut c2 = client.clone();
    let slow = tokio::spawn(async move {
        let resp = c2
            .send_request(
                Request::get("http://x/slow/1500")
                    .body(Full::<Bytes>::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        resp.into_body().collect().await.unwrap().to_bytes()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.signal(Signal::SIGTERM);
    assert_eq!(slow.await.unwrap(), "slow done");
    // After GOAWAY the connection ends and takes no new streams.
    let _ = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("connection closed after GOAWAY");
    assert!(
        client
            .send_request(Request::get("http://x/").body(Full::default()).unwrap())
            .await
            .is_err()
    );
    assert!(
        proxy
            .wait_exit(Duration::from_secs(10))
            .await
            .unwrap()
            .success()
    );
}

#[tokio::test]
async fn drain_deadline_bounds_the_exit() {
    let (mut proxy, _up) = slow_proxy(&["--drain-time-s", "1"]).await;
    let listener = proxy.listener("http");
    let slow = tokio::spawn(async move {
        send(
            listener,
            false,
            Request::get("/slow/30000")
                .header("host", "x")
                .body(Full::default())
                .unwrap(),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.signal(Signal::SIGTERM);
    let exit = proxy
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("exits at the drain deadline");
    assert!(exit.success());
    assert!(
        slow.await.unwrap().is_err(),
        "the 30 s request cannot have completed"
    );
}

#[tokio::test]
async fn quitquitquit_exits_and_requires_post() {
    let (mut proxy, _up) = slow_proxy(&[]).await;
    assert_eq!(proxy.admin_get("/quitquitquit").await.0, 405);
    let (status, _, _) = send(
        proxy.admin,
        false,
        Request::post("/quitquitquit")
            .header("host", "a")
            .body(Full::default())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(
        proxy
            .wait_exit(Duration::from_secs(10))
            .await
            .unwrap()
            .success()
    );
}

/// The embedded default binds the fixed Istio ports; only this test uses them.
#[tokio::test]
async fn embedded_default_serves_sidecar_ports_and_refuses_loops() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut child = std::process::Command::new(BIN)
        .args(["--concurrency", "1"])
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let health: SocketAddr = ([127, 0, 0, 1], 15021).into();
    wait_until(
        async || {
            http_get(health, "/healthz/ready")
                .await
                .is_ok_and(|r| r.0 == 200)
        },
        "embedded default ready",
    )
    .await;
    let logs = std::fs::read_to_string(&log).unwrap();
    for port in ["15000", "15001", "15006", "15090", "15021"] {
        assert!(
            logs.contains(&format!(":{port}")),
            "no start line for {port}: {logs}"
        );
    }

    // A connection straight to 15001 (not redirected) has 15001 as its destination:
    // it must be refused, not forwarded to itself.
    for port in [15001u16, 15006] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    let stats: SocketAddr = ([127, 0, 0, 1], 15090).into();
    let (code, prom) = http_get(stats, "/stats/prometheus").await.unwrap();
    assert_eq!(code, 200);
    assert!(
        prom.contains(
            "pilotfish_listener_loop_refused{envoy_listener_address=\"0.0.0.0_15001\"} 1"
        ),
        "{prom}"
    );
    assert!(
        prom.contains(
            "pilotfish_listener_loop_refused{envoy_listener_address=\"0.0.0.0_15006\"} 1"
        ),
        "{prom}"
    );
    assert!(
        prom.contains(
            "envoy_cluster_upstream_cx_total{envoy_cluster_name=\"PassthroughCluster\"} 0"
        ),
        "{prom}"
    );
    assert!(prom.contains("envoy_server_live{} 1"), "{prom}");
    let (code, dump) = http_get(([127, 0, 0, 1], 15000).into(), "/config_dump")
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(dump.contains("\"name\": \"virtualOutbound\""), "{dump}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
}

#[tokio::test]
async fn a_listener_that_cannot_bind_fails_startup_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let up = Upstream::start("x").await;
    let routes = r#"              - match: { prefix: "/" }
                route: { cluster: backend }"#;
    let yaml = http_bootstrap(routes, &static_cluster("backend", &[up.addr], false)).replace(
        "address: 127.0.0.1, port_value: 0 } }\n    filter_chains",
        &format!("address: 127.0.0.1, port_value: {port} }} }}\n    filter_chains"),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("b.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let out = std::process::Command::new(BIN)
        .arg("-c")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("listener 'http': cannot bind 127.0.0.1:{port}")),
        "{err}"
    );
}

/// Listening sockets on `port` in this network namespace (`/proc/net/tcp`, state 0A).
fn listening_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&local) && f[3] == "0A"
        })
        .count()
}

/// As Envoy, each of the two workers listens on a socket of its own (SO_REUSEPORT), or
/// with `enable_reuse_port: false` they share one; either way every connection is
/// served. Checked against Envoy on the same bootstraps.
#[tokio::test]
async fn each_worker_has_its_own_socket_unless_reuse_port_is_off() {
    let up = Upstream::start("x").await;
    let routes = r#"              - match: { prefix: "/" }
                route: { cluster: backend }"#;
    let on = http_bootstrap(routes, &static_cluster("backend", &[up.addr], false));
    let off = on.replace(
        "port_value: 0 } }\n    filter_chains",
        "port_value: 0 } }\n    enable_reuse_port: false\n    filter_chains",
    );
    assert_ne!(on, off);
    let mut bins = vec![BIN.to_owned()];
    bins.extend(reference_envoy());
    for bin in &bins {
        for (yaml, sockets) in [(&on, 2), (&off, 1)] {
            let p = Proxy::start_bin(bin, yaml, &[]).await;
            let addr = p.listener("http");
            assert_eq!(listening_sockets(addr.port()), sockets, "{bin}\n{yaml}");
            for i in 0..32 {
                let (status, _) = http_get(addr, "/").await.unwrap();
                assert_eq!(status, 200, "{bin}: connection {i}");
            }
        }
    }
}
