//! Shared harness for integration tests: the pilotfish binary started on a bootstrap
//! with ephemeral ports, echo upstreams on real sockets, and small HTTP clients.
#![allow(dead_code)]

pub mod certs;
pub mod grpc_services;
pub mod h2raw;
pub mod istio;
pub mod load;
pub mod netns;
pub mod pod;
pub mod xds;

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{body::Frame, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

pub const BIN: &str = env!("CARGO_BIN_EXE_pilotfish");

/// A running pilotfish process; killed on drop.
pub struct Proxy {
    pub child: Child,
    pub admin: SocketAddr,
    pub listeners: HashMap<String, SocketAddr>,
    _dir: tempfile::TempDir,
    pub log: PathBuf,
    pub stdout: PathBuf,
}

impl Proxy {
    pub async fn start(yaml: &str) -> Proxy {
        Proxy::start_with(yaml, &[]).await
    }

    /// Starts pilotfish on `yaml` (ports may be 0) and waits until `/ready` is 200.
    pub async fn start_with(yaml: &str, args: &[&str]) -> Proxy {
        Proxy::start_bin(BIN, yaml, args).await
    }

    /// Starts `bin` (pilotfish, or Envoy for differential tests: both take the same
    /// flags used here) on `yaml`.
    pub async fn start_bin(bin: &str, yaml: &str, args: &[&str]) -> Proxy {
        Proxy::launch(bin, yaml, args, true).await
    }

    /// Starts `bin` and returns once its admin answers, ready or not (for tests of
    /// readiness itself, and of listeners that are still warming).
    pub async fn start_unready(bin: &str, yaml: &str, args: &[&str]) -> Proxy {
        Proxy::launch(bin, yaml, args, false).await
    }

    async fn launch(bin: &str, yaml: &str, args: &[&str], ready: bool) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("bootstrap.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        let admin_path = dir.path().join("admin");
        let log = dir.path().join("log");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&cfg)
            .args(["--concurrency", "2", "-l", "debug"])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(args)
            // Access-log lines within 50 ms rather than Envoy's default 10 s.
            .args(
                (!args.contains(&"--file-flush-interval-msec"))
                    .then_some(["--file-flush-interval-msec", "50"])
                    .into_iter()
                    .flatten(),
            )
            .stdout(Stdio::from(
                std::fs::File::create(dir.path().join("stdout")).unwrap(),
            ))
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        let stdout = dir.path().join("stdout");
        let mut p = Proxy {
            child,
            admin: "0.0.0.0:0".parse().unwrap(),
            listeners: HashMap::new(),
            _dir: dir,
            log,
            stdout,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                Instant::now() < deadline,
                "pilotfish did not become ready: {}",
                p.logs()
            );
            if let Some(status) = p.child.try_wait().unwrap() {
                panic!("pilotfish exited with {status}: {}", p.logs());
            }
            if let Ok(a) = std::fs::read_to_string(&admin_path)
                && let Ok(addr) = a.trim().parse()
            {
                p.admin = addr;
                match http_get(addr, "/ready").await {
                    Ok((200, _)) => break,
                    Ok(_) if !ready => break,
                    _ => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        p.refresh_listeners().await;
        p
    }

    /// Re-reads `/listeners` (after LDS changed them).
    pub async fn refresh_listeners(&mut self) {
        let (_, listeners) = http_get(self.admin, "/listeners").await.unwrap();
        self.listeners.clear();
        for line in listeners.lines() {
            let (name, addr) = line.split_once("::").unwrap();
            self.listeners
                .insert(name.to_owned(), addr.parse().unwrap());
        }
    }

    pub fn listener(&self, name: &str) -> SocketAddr {
        let a = self.listeners[name];
        if a.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], a.port()))
        } else {
            a
        }
    }

    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).await.unwrap()
    }

    pub async fn prometheus(&self) -> String {
        self.admin_get("/stats/prometheus").await.1
    }

    /// The Prometheus samples whose line contains `needle`, sorted.
    pub async fn prometheus_lines(&self, needle: &str) -> Vec<String> {
        let mut lines: Vec<String> = self
            .prometheus()
            .await
            .lines()
            .filter(|l| l.contains(needle) && !l.starts_with('#'))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }

    /// `name`'s value in `/stats` (Envoy's flat names), if it exists.
    pub async fn stat(&self, name: &str) -> Option<u64> {
        let (_, text) = self.admin_get(&format!("/stats?filter=^{name}$")).await;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
    }

    /// The value of one Prometheus sample line, e.g. `envoy_cluster_upstream_rq_total{envoy_cluster_name="a"}`.
    pub async fn metric(&self, sample: &str) -> Option<i64> {
        let text = self.prometheus().await;
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(sample)?;
            // Envoy writes unlabeled samples as `name{} value`.
            let rest = rest.strip_prefix("{}").unwrap_or(rest);
            rest.strip_prefix(' ')?.parse().ok()
        })
    }

    /// Waits (bounded) until a sample has the wanted value: stats are recorded when a
    /// connection or request finishes, which may be just after the client saw its end.
    pub async fn wait_metric(&self, sample: &str, want: i64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = self.metric(sample).await;
            if got == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{sample} is {got:?}, want {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process's resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Waits (bounded) until the process has written `n` lines to stdout (access logs).
    pub async fn stdout_lines(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&self.stdout).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Plain HTTP/1.1 GET with a fresh connection; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let (status, _, body) = send(
        addr,
        false,
        Request::get(path)
            .header("host", "test")
            .body(Full::default())
            .unwrap(),
    )
    .await?;
    Ok((status.as_u16(), String::from_utf8_lossy(&body).into_owned()))
}

/// Sends one request on a fresh connection (HTTP/2 prior knowledge if `h2`).
pub async fn send(
    addr: SocketAddr,
    h2: bool,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, http::HeaderMap, Bytes), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let io = TokioIo::new(stream);
    let resp = if h2 {
        let (mut s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = req;
        if req.uri().authority().is_none() {
            let host = req
                .headers()
                .get("host")
                .and_then(|h| h.to_str().ok())
                .unwrap_or("test")
                .to_owned();
            *req.uri_mut() = format!("http://{host}{}", req.uri().path_and_query().unwrap())
                .parse()
                .unwrap();
            req.headers_mut().remove("host");
        }
        s.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut s, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        s.send_request(req).await.map_err(|e| e.to_string())?
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((parts.status, parts.headers, body))
}

/// One HTTP/1.1 keep-alive connection to `addr`: every request on it meets the same
/// worker of the proxy (and so the same upstream pool and round-robin schedule).
pub struct KeepAlive(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl KeepAlive {
    pub async fn open(addr: SocketAddr) -> KeepAlive {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        KeepAlive(s)
    }

    /// GETs `path` (host `test`) and reads the whole answer; returns its status.
    pub async fn get(&mut self, path: &str) -> u16 {
        self.0.ready().await.unwrap();
        let req = Request::get(path)
            .header("host", "test")
            .body(Full::default())
            .unwrap();
        let resp = self.0.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        status
    }
}

/// One request an upstream saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authority: String,
    pub version: Version,
    pub headers: http::HeaderMap,
}

/// An HTTP upstream on a real socket that serves HTTP/1.1 and HTTP/2 (prior knowledge).
///
/// `/slow/<ms>` answers after a delay, `/chunked/<n>` streams n chunks, `/trailers`
/// answers with trailers; anything else echoes the request body with `x-upstream: name`.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub connections: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

type Body = BoxBody<Bytes, Infallible>;

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Upstream {
            addr: listener.local_addr().unwrap(),
            name: name.into(),
            connections: Arc::default(),
            seen: Arc::default(),
        };
        let me = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                me.connections.fetch_add(1, Ordering::SeqCst);
                let me = me.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let me = me.clone();
                        async move { Ok::<_, Infallible>(me.handle(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        up
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let authority = authority(&req);
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        self.seen.lock().unwrap().push(Seen {
            method: req.method().to_string(),
            path: path.clone(),
            authority,
            version: req.version(),
            headers: req.headers().clone(),
        });
        let mut builder = Response::builder().header("x-upstream", &self.name);
        if let Some((_, ms)) = path.split_once("/slow/") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            return builder.body(full("slow done")).unwrap();
        }
        if let Some(n) = path.strip_prefix("/chunked/") {
            let n: usize = n.parse().unwrap();
            let chunks = (0..n)
                .map(|i| Ok::<_, Infallible>(Frame::data(Bytes::from(format!("chunk-{i};")))));
            return builder
                .body(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
                    chunks,
                ))))
                .unwrap();
        }
        if path == "/trailers" {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-trailer", "done".parse().unwrap());
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(Bytes::from("body"))),
                Ok(Frame::trailers(trailers)),
            ];
            return builder
                .body(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
                    frames,
                ))))
                .unwrap();
        }
        builder = builder.header("x-seen-version", format!("{:?}", req.version()));
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        builder.body(full(body)).unwrap()
    }
}

/// A request's `:authority`, else its `host`.
pub fn authority<B>(req: &Request<B>) -> String {
    req.uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get("host")
                .map(|h| h.to_str().unwrap().to_owned())
        })
        .unwrap_or_default()
}

/// Accepts connections on a fresh local port, each handed to `serve` on a task of its
/// own; returns the port's address.
pub async fn accept_each<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

pub fn full(b: impl Into<Bytes>) -> Body {
    BodyExt::boxed(Full::new(b.into()))
}

/// A bootstrap with one HTTP listener (port 0) whose routes are given as YAML lines,
/// plus the given clusters (YAML list items).
pub fn http_bootstrap(routes: &str, clusters: &str) -> String {
    http_bootstrap_logged(routes, clusters, "")
}

/// An access log on stdout with `format`, as HCM `access_log` YAML.
pub fn stdout_log(format: &str) -> String {
    format!(
        r#"          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format: {{ text_format_source: {{ inline_string: "{format}" }} }}
"#
    )
}

/// `http_bootstrap` with extra HCM fields (e.g. `stdout_log`).
pub fn http_bootstrap_logged(routes: &str, clusters: &str, hcm_extra: &str) -> String {
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
{hcm_extra}          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
{routes}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
{clusters}
"#
    )
}

/// A bootstrap with one tcp_proxy listener `tcp` (port 0) to cluster `backend` at
/// `upstream`; `extra` adds TcpProxy fields (indented YAML lines).
pub fn tcp_proxy_bootstrap(upstream: SocketAddr, stat_prefix: &str, extra: &str) -> String {
    tcp_proxy_bootstrap_to(&[upstream], stat_prefix, extra)
}

/// [`tcp_proxy_bootstrap`] with cluster `backend` over several endpoints.
pub fn tcp_proxy_bootstrap_to(upstreams: &[SocketAddr], stat_prefix: &str, extra: &str) -> String {
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: tcp
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {stat_prefix}
          cluster: backend
{extra}
  clusters:
{}"#,
        static_cluster("backend", upstreams, false)
    )
}

/// A STATIC cluster YAML list item; `h2` selects HTTP/2 upstream.
pub fn static_cluster(name: &str, addrs: &[SocketAddr], h2: bool) -> String {
    let endpoints: String = addrs
        .iter()
        .map(|a| {
            format!(
                "\n        - endpoint: {{ address: {{ socket_address: {{ address: \"{}\", port_value: {} }} }} }}",
                a.ip(),
                a.port()
            )
        })
        .collect();
    let proto = if h2 {
        r#"
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }"#
    } else {
        ""
    };
    format!(
        "  - name: {name}\n    connect_timeout: 1s\n    type: STATIC{proto}\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:{endpoints}\n"
    )
}

/// Fails loudly under CI when a prerequisite is missing, skips (with a note) otherwise.
pub fn require(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} is required under CI=true but is missing");
    }
    eprintln!("SKIPPED: {what} is missing (set CI=true to make this a failure)");
    false
}

/// The Envoy binary for differential tests: `$ENVOY_BIN`, else the one `scripts/test`
/// installs into `.venv/`, else `envoy` on PATH.
/// The reference Envoy for differential tests, or `None` when it is missing (the test
/// is then skipped; under `CI=true` it fails instead).
pub fn reference_envoy() -> Option<String> {
    let bin = envoy_bin();
    require(
        "the envoy binary (scripts/test installs it into .venv)",
        bin.is_some(),
    );
    bin
}

/// The newest request any of `ups` received after their request counts were `before`.
pub fn newest_since(ups: &[&Upstream], before: &[usize]) -> Option<Seen> {
    ups.iter()
        .zip(before)
        .find_map(|(u, n)| u.requests().get(*n..).and_then(|r| r.last().cloned()))
}

/// Request counts of `ups`, to pass to [`newest_since`] after a request.
pub fn counts(ups: &[&Upstream]) -> Vec<usize> {
    ups.iter().map(|u| u.requests().len()).collect()
}

/// Collects the cases where pilotfish and Envoy differ, and fails listing all of them.
#[derive(Default)]
pub struct Differences {
    found: Vec<String>,
    pub cases: usize,
}

impl Differences {
    pub fn check<T: PartialEq + std::fmt::Debug>(
        &mut self,
        case: impl std::fmt::Display,
        envoy: T,
        ours: T,
    ) {
        self.cases += 1;
        if std::env::var("SHOW_CASES").is_ok() {
            eprintln!("{case}: {ours:?}");
        }
        if envoy != ours {
            self.found.push(format!(
                "{case}:\n  envoy:     {envoy:?}\n  pilotfish: {ours:?}"
            ));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    pub fn assert_none(self) {
        assert!(
            self.found.is_empty(),
            "{} of {} cases differ:\n{}",
            self.found.len(),
            self.cases,
            self.found.join("\n")
        );
    }
}

/// pilotfish and the reference Envoy started on the same bootstrap (Envoy flushing its
/// access logs every 50 ms), for differential tests.
pub async fn start_both(envoy: &str, yaml: &str) -> (Proxy, Proxy) {
    let ours = Proxy::start(yaml).await;
    let theirs = Proxy::start_bin(
        envoy,
        yaml,
        &["--disable-hot-restart", "--file-flush-interval-msec", "50"],
    )
    .await;
    (ours, theirs)
}

/// Asserts that both proxies report each Prometheus sample, with the same value.
pub async fn assert_same_samples(ours: &Proxy, theirs: &Proxy, samples: &[&str]) {
    for sample in samples {
        let (ours_v, theirs_v) = (ours.metric(sample).await, theirs.metric(sample).await);
        assert!(ours_v.is_some(), "{sample} missing");
        assert_eq!(ours_v, theirs_v, "{sample} (pilotfish left, Envoy right)");
    }
}

pub fn envoy_bin() -> Option<String> {
    if let Ok(p) = std::env::var("ENVOY_BIN") {
        return Some(p);
    }
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/envoy");
    if std::path::Path::new(venv).exists() {
        return Some(venv.into());
    }
    let found = Command::new("envoy")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    found.then(|| "envoy".into())
}

/// Connects to `addr`, sends `bytes` and reads as many back (within 5 s): a round trip
/// through a proxy to an echo server. Returns the open connection.
pub async fn echo_round_trip(addr: SocketAddr, bytes: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut got = vec![0u8; bytes.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .expect("the echo")
        .unwrap();
    assert_eq!(got, bytes);
    s
}

/// A TCP server on 127.0.0.1 that echoes what it reads until the client closes.
pub async fn tcp_echo_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}
