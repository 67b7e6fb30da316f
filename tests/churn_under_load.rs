//! Churn and faults under load, pilotfish and Envoy 1.40 through the same script, each
//! from its own in-test control plane: 1,000 xDS pushes of every type while requests
//! flow, the control plane killed and restarted mid-load, upstream endpoints killed and
//! revived under Istio's retry policy, SIGTERM with requests in flight, and all of it
//! inside a memory cgroup. Every failed request is counted; pilotfish may fail no more
//! than Envoy. Then pilotfish's memory across ten rounds of pushes: it settles instead
//! of growing.
mod common;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{
    Proxy,
    load::Load,
    reference_envoy, send,
    xds::{CDS, EDS, LDS, RDS, XdsServer, ads_bootstrap, any, cla, from_yaml, listener, tcp},
};
use envoy_types::pb::{
    envoy::config::{cluster::v3::Cluster, route::v3::RouteConfiguration},
    google::protobuf::Any,
};
use http::Request;
use http_body_util::Full;

/// An upstream that can be killed (its listener and every connection gone at once, as
/// a crashed pod) and revived on the same address.
struct Killable {
    addr: SocketAddr,
    tasks: Arc<Mutex<tokio::task::JoinSet<()>>>,
}

impl Killable {
    async fn start() -> Killable {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let k = Killable {
            addr: l.local_addr().unwrap(),
            tasks: Arc::default(),
        };
        k.serve(l);
        k
    }

    fn serve(&self, l: tokio::net::TcpListener) {
        let tasks = self.tasks.clone();
        let name = self.addr.to_string();
        self.tasks.lock().unwrap().spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let name = name.clone();
                tasks.lock().unwrap().spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                        let name = name.clone();
                        let slow = req.uri().path().starts_with("/slow");
                        async move {
                            if slow {
                                tokio::time::sleep(Duration::from_millis(800)).await;
                            }
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .header("x-upstream", name)
                                    .body(Full::new(bytes::Bytes::from_static(b"ok")))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
                });
            }
        });
    }

    fn kill(&self) {
        self.tasks.lock().unwrap().abort_all();
    }

    async fn revive(&self) {
        let l = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.serve(l);
    }
}

/// An EDS cluster with istiod's circuit breakers (every threshold at its maximum, so
/// retries are never refused for their number).
fn cluster(name: &str) -> (String, Any) {
    let c: Cluster = from_yaml(&format!(
        "name: {name}\ntype: EDS\nconnect_timeout: 1s\neds_cluster_config: {{ service_name: {name}, eds_config: {{ ads: {{}}, resource_api_version: V3 }} }}\ncircuit_breakers: {{ thresholds: [{{ max_connections: 4294967295, max_pending_requests: 4294967295, max_requests: 4294967295, max_retries: 4294967295 }}] }}\n"
    ));
    (name.into(), any(&c))
}

/// Routes to `cluster` with istiod's default retry policy (plus `reset`, so that a
/// request caught on a killed connection is retried: Istio's users add it the same
/// way), tagged `tag`.
fn routes(cluster: &str, tag: &str) -> (String, Any) {
    let r: RouteConfiguration = from_yaml(&format!(
        r#"name: r
response_headers_to_add: [{{ header: {{ key: x-route, value: "{tag}" }} }}]
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {{ prefix: / }}
    route:
      cluster: {cluster}
      retry_policy:
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes,reset"
        num_retries: 2
        retry_host_predicate: [{{ name: envoy.retry_host_predicates.previous_hosts, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate }} }}]
        host_selection_retry_max_attempts: 5
"#
    ));
    ("r".into(), any(&r))
}

/// The control plane's initial configuration: listener `http` → routes `r` → EDS
/// cluster `svc` over `ups`.
fn load(x: &XdsServer, ups: &[SocketAddr]) {
    x.set(CDS, vec![cluster("svc")]);
    x.set(EDS, vec![cla("svc", ups)]);
    x.set(LDS, vec![listener("http", 0, "r", "envoy")]);
    x.set(RDS, vec![routes("svc", "0")]);
}

async fn start(bin: &str, x: &XdsServer) -> Proxy {
    let mut p = Proxy::start_bin(
        bin,
        &ads_bootstrap(&tcp(x.addr), "GRPC"),
        &["--disable-hot-restart"],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !p.listeners.contains_key("http") {
        assert!(Instant::now() < deadline, "{bin}: no http listener");
        tokio::time::sleep(Duration::from_millis(50)).await;
        p.refresh_listeners().await;
    }
    p
}

/// `n` pushes: routes every time (alternating clusters' tags), endpoints every 10th,
/// clusters every 50th (one more cluster each time), an unrelated listener added and
/// removed every 100th.
async fn pushes(x: &XdsServer, ups: &[SocketAddr], from: usize, n: usize) {
    for i in from..from + n {
        x.set(RDS, vec![routes("svc", &i.to_string())]);
        if i % 10 == 0 {
            let set = if i % 20 == 0 { ups } else { &ups[..1] };
            x.set(EDS, vec![cla("svc", set)]);
        }
        if i % 50 == 0 {
            x.set(
                CDS,
                vec![cluster("svc"), cluster(&format!("extra{}", i % 7))],
            );
        }
        if i % 100 == 0 {
            let mut ls = vec![listener("http", 0, "r", "envoy")];
            if i % 200 == 0 {
                ls.push(listener("other", 0, "r", "envoy"));
            }
            x.set(LDS, ls);
        }
        tokio::task::yield_now().await;
    }
    x.set(EDS, vec![cla("svc", ups)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn churn_and_faults_fail_no_request_envoy_would_not() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for bin in [envoy.as_str(), common::BIN] {
        let ups = [Killable::start().await, Killable::start().await];
        let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
        let x = XdsServer::start().await;
        load(&x, &addrs);
        let p = start(bin, &x).await;
        let addr = p.listener("http");
        let mut counts = Vec::new();

        // 1,000 pushes under load.
        let l = Load::start(addr, 4);
        pushes(&x, &addrs, 1, 1000).await;
        x.wait_ack(RDS).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        counts.push(("1,000 xDS pushes", l.finish().await));

        // The control plane killed and restarted.
        let l = Load::start(addr, 4);
        x.stop();
        tokio::time::sleep(Duration::from_millis(700)).await;
        x.restart().await;
        x.wait_ack(CDS).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        counts.push(("control plane restart", l.finish().await));

        // Each endpoint killed and revived in turn.
        let l = Load::start(addr, 4);
        for u in &ups {
            tokio::time::sleep(Duration::from_millis(300)).await;
            u.kill();
            tokio::time::sleep(Duration::from_millis(700)).await;
            u.revive().await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        counts.push(("endpoints killed and revived", l.finish().await));

        for (what, (ok, failed)) in &counts {
            report.push(format!(
                "{bin}: {what}: {} failed of {}{}",
                failed.len(),
                ok + failed.len() as u64,
                failed
                    .first()
                    .map(|f| format!(" (first: {f})"))
                    .unwrap_or_default()
            ));
            assert!(*ok > 0, "{bin}: {what}: no request went through");
        }
        failures.push(counts.iter().map(|c| c.1.1.len()).collect::<Vec<_>>());
    }
    eprintln!("{}", report.join("\n"));
    for (i, what) in ["pushes", "restart", "endpoints"].iter().enumerate() {
        assert!(
            failures[1][i] <= failures[0][i],
            "{what}: pilotfish failed more requests than Envoy\n{}",
            report.join("\n")
        );
    }
}

/// pilotfish's resident memory over ten rounds of 100 pushes each under load: after
/// the first rounds it settles (allocator arenas warmed), and the last round ends no
/// higher than a few MiB above the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_settles_across_rounds_of_pushes() {
    let ups = [Killable::start().await, Killable::start().await];
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let x = XdsServer::start().await;
    load(&x, &addrs);
    let p = start(common::BIN, &x).await;
    let l = Load::start(p.listener("http"), 2);
    let mut rss = Vec::new();
    for round in 0..10 {
        pushes(&x, &addrs, round * 100 + 1, 100).await;
        x.wait_ack(RDS).await;
        // Removed resources' stats go a second after the update that removed them.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        rss.push(p.rss_kib());
    }
    let (ok, failed) = l.finish().await;
    assert!(failed.is_empty() && ok > 0, "{} failed", failed.len());
    eprintln!("RSS per round, KiB: {rss:?}");
    assert!(
        rss[9] <= rss[1] + 8 * 1024,
        "RSS kept growing across rounds (KiB): {rss:?}"
    );
}

/// SIGTERM with slow requests in flight: Envoy exits at once (pilot-agent drains it
/// first, through the admin API); pilotfish drains its connections for up to
/// `--drain-time-s` and exits when they are done, so its in-flight requests complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_with_requests_in_flight() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let mut failed = Vec::new();
    for bin in [envoy.as_str(), common::BIN] {
        let ups = [Killable::start().await];
        let x = XdsServer::start().await;
        load(&x, &[ups[0].addr]);
        let mut p = start(bin, &x).await;
        let addr = p.listener("http");
        // Eight HTTP/1.1 requests and two HTTP/2 streams, each on its own connection.
        let inflight: Vec<_> = (0..10)
            .map(|i| {
                tokio::spawn(async move {
                    let req = Request::get("/slow")
                        .header("host", "test")
                        .body(Full::default())
                        .unwrap();
                    matches!(send(addr, i >= 8, req).await, Ok((s, _, _)) if s == 200)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        p.signal(nix::sys::signal::Signal::SIGTERM);
        let mut n = 0;
        for t in inflight {
            if !t.await.unwrap() {
                n += 1;
            }
        }
        assert!(
            p.wait_exit(Duration::from_secs(20)).await.is_some(),
            "{bin} did not exit after SIGTERM"
        );
        failed.push(n);
    }
    eprintln!(
        "in-flight requests failed on SIGTERM: Envoy {}, pilotfish {}",
        failed[0], failed[1]
    );
    assert_eq!(
        failed[1], 0,
        "pilotfish failed in-flight requests on SIGTERM"
    );
    assert!(failed[1] <= failed[0]);
}

/// A memory cgroup (v1) for one proxy, removed on drop.
struct MemCgroup(std::path::PathBuf);

impl MemCgroup {
    fn new(name: &str, limit: u64) -> Option<MemCgroup> {
        let dir = std::path::Path::new("/sys/fs/cgroup/memory").join(name);
        std::fs::create_dir_all(&dir).ok()?;
        std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string()).ok()?;
        Some(MemCgroup(dir))
    }

    /// A launcher that joins the cgroup, then becomes `bin`.
    fn wrap(&self, bin: &str, dir: &std::path::Path) -> String {
        let path = dir.join(format!(
            "in-cgroup-{}",
            std::path::Path::new(bin)
                .file_name()
                .unwrap()
                .to_string_lossy()
        ));
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho $$ > {}/cgroup.procs\nexec {bin} \"$@\"\n",
                self.0.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_string_lossy().into_owned()
    }

    fn peak_mib(&self) -> u64 {
        std::fs::read_to_string(self.0.join("memory.max_usage_in_bytes"))
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
            >> 20
    }

    fn oom_kills(&self) -> u64 {
        std::fs::read_to_string(self.0.join("memory.oom_control"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Pushes and load with each proxy confined to a 128 MiB memory cgroup (a sidecar's
/// usual limit is of that order): neither is killed, and pilotfish fails no request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_a_memory_limit() {
    let Some(envoy) = reference_envoy() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut report = Vec::new();
    let mut failed = Vec::new();
    for bin in [envoy.as_str(), common::BIN] {
        let name = format!("pilotfish-test-{}", std::process::id());
        let cg = MemCgroup::new(&name, 128 << 20);
        if !common::require(
            "a writable memory cgroup (root, cgroup v1 memory controller)",
            cg.is_some(),
        ) {
            return;
        }
        let cg = cg.unwrap();
        let ups = [Killable::start().await, Killable::start().await];
        let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
        let x = XdsServer::start().await;
        load(&x, &addrs);
        let mut p = start(&cg.wrap(bin, dir.path()), &x).await;
        let l = Load::start(p.listener("http"), 4);
        pushes(&x, &addrs, 1, 300).await;
        x.wait_ack(RDS).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (ok, f) = l.finish().await;
        assert!(ok > 0);
        let alive = p.child.try_wait().unwrap().is_none();
        report.push(format!(
            "{bin}: {} failed of {}, peak {} MiB, OOM kills {}, alive {alive}",
            f.len(),
            ok + f.len() as u64,
            cg.peak_mib(),
            cg.oom_kills()
        ));
        assert!(alive, "{bin} died under the memory limit");
        failed.push(f.len());
        drop(p);
        drop(cg);
    }
    eprintln!("{}", report.join("\n"));
    assert_eq!(failed[1], 0, "{}", report.join("\n"));
    assert!(failed[1] <= failed[0]);
}
